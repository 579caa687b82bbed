"""An rclpy participant that talks *to* the controller node: what a launch file, an operator or a robot
does. Used by `wam-control demo --transport ros`, `wam-control bench ros-node` and the tests; needs rclpy.

    with RclpyPeer("operator") as peer:
        life = peer.lifecycle("/wam_controller")
        life.change("configure"); life.change("activate")      # what robot.launch.py's events do
        cmds = peer.record("/joint_trajectory_controller/joint_trajectory", JointTrajectory)

The peer has its own rclpy context and spins it on a background thread with a single-threaded
executor, so the caller's thread can block on a service answer or a recorded message.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import rclpy
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.signals import SignalHandlerOptions

from wam_control.transport import qos
from wam_control.transport.dds import configure_fast_dds

TRANSITIONS = {
    "configure": Transition.TRANSITION_CONFIGURE,
    "cleanup": Transition.TRANSITION_CLEANUP,
    "activate": Transition.TRANSITION_ACTIVATE,
    "deactivate": Transition.TRANSITION_DEACTIVATE,
}


class Recorder:
    """Messages of one topic with their arrival time (time.monotonic()), newest last."""

    def __init__(self, maxlen: int | None = None) -> None:
        self._lock = threading.Lock()
        self._items: deque[tuple[float, Any]] = deque(maxlen=maxlen)
        self.count = 0

    def __call__(self, msg: Any) -> None:
        with self._lock:
            self._items.append((time.monotonic(), msg))
            self.count += 1

    def items(self) -> list[tuple[float, Any]]:
        with self._lock:
            return list(self._items)

    def latest(self) -> Any | None:
        with self._lock:
            return self._items[-1][1] if self._items else None

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def wait(self, predicate: Callable[[Any], bool] = lambda m: True, timeout_s: float = 10.0) -> Any | None:
        """The first message from now on (or already kept) that satisfies `predicate`, else None."""
        deadline = time.monotonic() + timeout_s
        seen = 0
        while time.monotonic() < deadline:
            items = self.items()
            for _, msg in items[seen:]:
                if predicate(msg):
                    return msg
            seen = len(items)
            time.sleep(0.02)
        return None


class LifecycleClient:
    """ChangeState / GetState of a managed node, as `ros2 lifecycle set/get` and launch_ros use them."""

    def __init__(self, peer: RclpyPeer, node_fqn: str) -> None:
        self.peer = peer
        self.node_fqn = node_fqn.rstrip("/")
        self._change = peer.node.create_client(ChangeState, f"{self.node_fqn}/change_state")
        self._get = peer.node.create_client(GetState, f"{self.node_fqn}/get_state")

    def wait_for_service(self, timeout_s: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout_s
        for client in (self._change, self._get):
            if not client.wait_for_service(timeout_sec=max(0.0, deadline - time.monotonic())):
                return False
        return True

    def state(self, timeout_s: float = 10.0) -> str:
        """The node's current state label ('unconfigured', 'inactive', 'active', 'finalized')."""
        resp = self.peer.call(self._get, GetState.Request(), timeout_s)
        return str(resp.current_state.label)

    def change(self, transition: str, timeout_s: float = 60.0) -> bool:
        """Request a transition by name (configure, activate, deactivate, cleanup, shutdown); True on
        SUCCESS. `shutdown` is resolved by label in the node's current state, as `ros2 lifecycle` does."""
        req = ChangeState.Request()
        if transition == "shutdown":
            req.transition.label = "shutdown"
        else:
            req.transition.id = TRANSITIONS[transition]
        return bool(self.peer.call(self._change, req, timeout_s).success)


class RclpyPeer:
    """A node in its own rclpy context, spun on a background thread."""

    def __init__(self, name: str, domain_id: int | None = None, namespace: str = "") -> None:
        configure_fast_dds()
        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain_id, signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node(name, namespace=namespace, context=self.context)
        self._executor = SingleThreadedExecutor(context=self.context)
        self._executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, name=f"{name}-spin", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while self.context.ok():
            try:
                self._executor.spin_once(timeout_sec=0.05)
            except Exception:  # context shut down between ok() and the wait
                if self.context.ok():
                    raise
                return

    def __enter__(self) -> RclpyPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.context.ok():
            self.context.try_shutdown()
        self._thread.join(timeout=5.0)
        self._executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()

    # -- topics and services ----------------------------------------------------------------------

    def record(self, topic: str, msg_type: Any, profile: qos.QosProfile | str = qos.RELIABLE,
               maxlen: int | None = 100_000) -> Recorder:  # fmt: skip
        rec = Recorder(maxlen)
        self.node.create_subscription(msg_type, topic, rec, qos.to_rclpy(profile))
        return rec

    def publisher(self, topic: str, msg_type: Any, profile: qos.QosProfile | str = qos.RELIABLE) -> Any:
        return self.node.create_publisher(msg_type, topic, qos.to_rclpy(profile))

    def call(self, client: Any, request: Any, timeout_s: float = 10.0) -> Any:
        if not client.wait_for_service(timeout_sec=timeout_s):
            raise TimeoutError(f"service {client.srv_name} not available after {timeout_s:g} s")
        done = threading.Event()
        future = client.call_async(request)
        future.add_done_callback(lambda _f: done.set())
        if not done.wait(timeout_s):
            raise TimeoutError(f"service {client.srv_name}: no answer within {timeout_s:g} s")
        return future.result()

    def lifecycle(self, node_fqn: str) -> LifecycleClient:
        return LifecycleClient(self, node_fqn)

    def wait_for_publisher(self, topic: str, timeout_s: float = 20.0) -> bool:
        """True once some participant publishes `topic` (discovery done, whatever its vendor)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.node.count_publishers(topic) > 0:
                return True
            time.sleep(0.05)
        return False
