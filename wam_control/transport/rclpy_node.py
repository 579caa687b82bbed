"""The controller as an rclpy lifecycle node. Imported only where rclpy is (see `ros_node.main`).

A thin adapter over the same Controller, converters and QoS profiles as `wam-control run`
(`adapter.py`); only subscriptions, publishers, parameters, the service and the lifecycle are rclpy's.

Threads. The control loop runs in its own thread on monotonic deadlines (`ControlRunner`), never in an
rclpy timer (timers follow the ROS clock and jitter with the executor). The node is spun by one
executor thread: every callback only stores the latest value, so one thread serves them all, and no
executor thread pool competes with the control thread for the GIL (measured with the multi-threaded
executor: ~11 commands/s instead of 500). Which one (parameter `executor`): rclpy's EventsExecutor
where this rclpy has it (`rclpy.experimental`, Kilted), which does its waiting and dispatch in C++
and so holds the GIL least (p99 command interval 3.1-3.5 ms vs 4.2-4.7 ms with the
SingleThreadedExecutor, same run, docs/benchmarks/ros_node.md); else the SingleThreadedExecutor.

Shutdown. rclpy's own signal handler would shut the context down while the control thread still
publishes. `main` installs its own SIGINT/SIGTERM handlers instead: the spin loop ends, the node brakes
to hold while its publishers are still enabled, the lifecycle's shutdown transition runs, and only then
is the context shut down. Exit code 0.
"""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
from pathlib import Path
from typing import Any

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import Node as LifecycleNode
from rclpy.lifecycle import State, TransitionCallbackReturn
from rclpy.signals import SignalHandlerOptions
from std_srvs.srv import Trigger

from wam_control.transport import qos
from wam_control.transport.adapter import ControllerIO, ControlRunner, build_runtime
from wam_control.transport.dds import configure_fast_dds
from wam_control.transport.endpoints import ControllerEndpoints
from wam_control.transport.launch_params import NODE_NAME
from wam_control.transport.messages import rclpy_msg_types
from wam_control.transport.ros_params import deep_merge, nest, schema_parameter_names

SPIN_TIMEOUT_S = 0.1
"""How often the spin loop looks at the stop flag (Python runs signal handlers between waits)."""


class WamControllerNode(LifecycleNode):  # type: ignore[misc]
    """`wam_controller`: parameters = the deployment YAML's keys (config/fr3.yaml is a ROS 2 parameter
    file), plus `config_dir`, `config_file`, `autostart`, `diagnostics_period_s`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self._T = rclpy_msg_types()
        self._declare("config_file", "", "deployment YAML read before this node's own parameters, which "
                      "override its keys (for YAML files that are not ROS 2 parameter files)")  # fmt: skip
        self._declare("config_dir", "", "folder that relative paths in the parameters are relative to "
                      "(default: the package's config/)")  # fmt: skip
        self._declare("autostart", False, "configure and activate right after start (ros2 run)")
        self._declare("diagnostics_period_s", 1.0, "period of /diagnostics in seconds")
        self._declare("executor", "auto", "auto | events | single: rclpy's EventsExecutor (auto: where "
                      "available) or SingleThreadedExecutor")  # fmt: skip
        self.runtime: Any = None
        self.controller: Any = None
        self.io: Any = None
        self.runner: Any = None
        self._subs: list[Any] = []
        self._pubs: list[Any] = []
        self._srv: Any = None
        self.endpoints: Any = None
        self._command_pub: Any = None
        self._imagination_pub: Any = None

    def _declare(self, name: str, default: Any, description: str, dynamic: bool = False) -> Any:
        if self.has_parameter(name):  # configure after cleanup: declared the first time round
            return self.get_parameter(name)
        desc = ParameterDescriptor(description=description, read_only=True, dynamic_typing=dynamic)
        return self.declare_parameter(name, default, desc)

    # -- configuration ----------------------------------------------------------------------------

    def _read_config(self) -> Any:
        from wam_control.config import config_from_dict, read_config_data
        from wam_control.config.presets import share_dir
        from wam_control.config.schema import JointLimits

        # Declared as "no value" with dynamic typing: only keys given (YAML, -p) get a value, the
        # schema's defaults apply to the rest, and the loader does the type checking.
        flat: dict[str, Any] = {}

        def given(name: str, description: str) -> None:
            value = self._declare(name, None, description, dynamic=True).value
            if value is not None:
                flat[name] = value

        for name, description in schema_parameter_names():
            given(name, description)
        for joint in flat.get("joints", []):
            for f in dataclasses.fields(JointLimits):
                given(f"joint_limits.{joint}.{f.name}", f"ros2_control joint_limits: {f.name}")
        for camera in flat.get("cameras", ["scene"]):
            given(f"topics.camera_images.{camera}", "image topic")
        # Extra DOFs (a gripper) are keyed by the model's names for them: declare the ones given.
        overrides = getattr(self, "_parameter_overrides", {}) or {}
        for name in sorted(n for n in overrides if n.startswith("extra_dofs.")):
            given(name, "extra DOF (config/schema.py ExtraDofConfig)")
        for name in {n.split(".")[1] for n in overrides if n.startswith("extra_dofs.")}:
            joint = flat.get(f"extra_dofs.{name}.joint") or name
            for f in dataclasses.fields(JointLimits):
                given(f"joint_limits.{joint}.{f.name}", f"ros2_control joint_limits: {f.name}")

        fqn = self.get_fully_qualified_name()
        config_file = str(self.get_parameter("config_file").value)
        config_dir = str(self.get_parameter("config_dir").value)
        if config_file:
            data = deep_merge(read_config_data(config_file), nest(flat))
            source, base = f"{config_file} + parameters of {fqn}", Path(config_file).parent
        else:
            data = nest(flat)
            source, base = f"parameters of {fqn}", Path(config_dir) if config_dir else share_dir() / "config"
        return config_from_dict(data, source=source, base_dir=base)

    def on_configure(self, state: State) -> TransitionCallbackReturn:
        try:
            config = self._read_config()
            self.runtime = build_runtime(config)
            self.controller = self.runtime.controller
            self._warm_up(config.timeouts.startup_s)
        except Exception as exc:  # any reason: log it with the file/key it names, stay unconfigured
            self.get_logger().error(f"configure failed: {exc}")
            self._release()
            return TransitionCallbackReturn.FAILURE
        self.io = ControllerIO(self.controller, self._T, self.get_name(), now=self._ros_now,
                               surprise=self.runtime.surprise, imagination=self.runtime.imagination)  # fmt: skip
        self.io.tokenizer = self.runtime.tokenizer
        self._create_entities(config)
        self.runner = ControlRunner(
            self.controller, self.endpoints.publish_command, self._aux, name=f"{self.get_name()}-loop"
        )
        self.get_logger().info(
            f"configured: {len(config.joint_names)} joints at {config.control_hz:g} Hz, "
            f"{config.command_interface} on {self._command_pub.topic_name}, model {self.runtime.model_path}"
        )
        return TransitionCallbackReturn.SUCCESS

    def _ros_now(self) -> float:
        """Stamps follow the node's ROS clock: /clock time with use_sim_time, else wall time."""
        return float(self.get_clock().now().nanoseconds) * 1e-9

    def _warm_up(self, timeout_s: float) -> None:
        worker = self.controller.worker
        worker.start()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            worker.check(self.controller.clock.now())
            if worker.health().get("state") == "ready":
                return
            time.sleep(0.05)
        raise TimeoutError(f"inference worker not ready after {timeout_s:g} s: {worker.health()}")

    def _create_entities(self, config: Any) -> None:
        """The endpoints every controller node has (endpoints.py), as rclpy entities; plus the re-arm
        service, which only rclpy can offer. No /clock subscription: rclpy's time source has it."""
        T = self._T
        self.endpoints = ControllerEndpoints(self.io)
        latest: list[Any] = []
        for e in self.endpoints.subscriptions:
            callback: Any = e.handler
            if callback is None:
                callback = _Latest()
                latest.append(callback)
            self._subs.append(self.create_subscription(getattr(T, e.kind), e.topic, callback, qos.to_rclpy(e.profile)))
        publishers = {p.key: self.create_lifecycle_publisher(getattr(T, p.kind), p.topic, qos.to_rclpy(p.profile))
                      for p in self.endpoints.publications}  # fmt: skip
        self._pubs = list(publishers.values())
        self._command_pub = publishers["command"]
        self._imagination_pub = publishers.get("imagination")
        self.endpoints.bind({k: pub.publish for k, pub in publishers.items()}, latest)
        self._srv = self.create_service(Trigger, config.topics.rearm_service, self._on_rearm)

    # -- runtime ----------------------------------------------------------------------------------

    def _aux(self) -> None:
        subscribers = self._imagination_pub.get_subscription_count if self._imagination_pub is not None else None
        period = float(self.get_parameter("diagnostics_period_s").value)
        self.endpoints.side_duties(period, self.runner.transport_values, subscribers)

    def _on_rearm(self, request: Any, response: Any) -> Any:
        if self.io is None:
            response.success, response.message = False, "not configured"
            return response
        ok, message = self.io.rearm()
        response.success = ok
        response.message = message
        return response

    # -- lifecycle --------------------------------------------------------------------------------

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        result = super().on_activate(state)  # enables the lifecycle publishers
        self.runner.start()
        self.get_logger().info("active: control loop running")
        return result

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        stats = self.runner.stop()  # brakes to hold while the publishers are still enabled
        self.io.imagination_off()  # its publisher is disabled next
        self.get_logger().info(f"inactive: holding; loop {stats.line() if stats is not None else '-'}")
        return super().on_deactivate(state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: State) -> TransitionCallbackReturn:
        self.get_logger().error("error transition: stopping and releasing everything")
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def brake_and_shut_down(self) -> None:
        """Signal or end of spin: brake to hold while still publishing, then the lifecycle shutdown."""
        if self.runner is not None and self.runner.running:
            stats = self.runner.stop()
            self.get_logger().info(f"stopping: braked to hold; loop {stats.line() if stats else '-'}")
        label = self._state_machine.current_state[1]
        if label in ("unconfigured", "inactive", "active"):
            self.trigger_shutdown()
        else:
            self._release()

    def _release(self) -> None:
        if self.runner is not None and self.runner.running:
            self.runner.stop()
        if self.io is not None:
            self.io.imagination_off()  # no frame may reach a destroyed publisher
        for sub in self._subs:
            self.destroy_subscription(sub)
        for pub in self._pubs:
            self.destroy_lifecycle_publisher(pub)
        if self._srv is not None:
            self.destroy_service(self._srv)
        self._subs, self._pubs, self._srv = [], [], None
        self._command_pub = self._imagination_pub = self.endpoints = None
        if self.runtime is not None:
            self.runtime.close()
        self.runtime = self.controller = self.io = self.runner = None


class _Latest:
    """A subscription callback that keeps the latest message for the auxiliary thread."""

    def __init__(self) -> None:
        self._msg: Any = None

    def __call__(self, msg: Any) -> None:
        self._msg = msg  # one reference store: atomic under the GIL

    def take_latest(self) -> Any:
        msg, self._msg = self._msg, None
        return msg


def make_executor(kind: str, context: Any = None) -> Any:
    """`events`: rclpy's EventsExecutor (experimental in Kilted; C++ wait and dispatch); `single`:
    SingleThreadedExecutor; `auto`: events where this rclpy has it."""
    if kind not in ("auto", "events", "single"):
        raise ValueError(f"parameter executor: expected auto, events or single, got {kind!r}")
    if kind != "single":
        try:
            from rclpy.experimental import EventsExecutor
        except ImportError:
            if kind == "events":
                raise ValueError("parameter executor: events, but this rclpy has no EventsExecutor") from None
        else:
            return EventsExecutor(context=context)
    return SingleThreadedExecutor(context=context)


def run(args: list[str] | None = None) -> int:
    """`wam_controller` (ros2 run / the launch file): spin until SIGINT/SIGTERM, then stop in order."""
    configure_fast_dds()  # before the participant exists (see fastdds_profile.xml)
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    node = WamControllerNode()
    try:
        executor = make_executor(str(node.get_parameter("executor").value))
    except ValueError as exc:
        node.get_logger().error(str(exc))
        node.destroy_node()
        rclpy.try_shutdown()
        return 2
    executor.add_node(node)
    try:
        autostart = bool(node.get_parameter("autostart").value)
        if autostart and node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            node.trigger_activate()
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=SPIN_TIMEOUT_S)
    finally:
        node.brake_and_shut_down()
        executor.remove_node(node)
        node.destroy_node()
        rclpy.try_shutdown()
    return 0
