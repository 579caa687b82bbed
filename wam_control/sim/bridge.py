"""`wam-control sim`: the MuJoCo arm speaking the ROS 2 topics of a Gazebo + ros_gz_bridge +
gz_ros2_control setup, over Cyclone DDS (no ROS 2 install) or rclpy (when ROS 2 is sourced).

    wam-control sim --task reach --clock lockstep         # then, elsewhere: wam-control run --use-sim-time ...

Publishes
  /clock                                 rosgraph_msgs/Clock, every control period (best effort, depth 1)
  /joint_states                          sensor_msgs/JointState fr3_joint1..7, then fr3_finger_joint1/2
                                         with the hand (reliable, depth 10)
  /camera/image_raw, /camera/camera_info scene camera, rgb8, at --camera-hz (sensor data QoS)
  /wrist_camera/image_raw, .../camera_info  wrist camera, same
Consumes (reliable, depth 10)
  /forward_position_controller/commands  std_msgs/Float64MultiArray: exactly 7 positions, joint order
                                         fr3_joint1..7 (like forward_command_controller; others rejected)
  /joint_trajectory_controller/joint_trajectory  trajectory_msgs/JointTrajectory, joints matched by
                                         name; header.stamp 0 = start now; sampled like
                                         joint_trajectory_controller (cubic Hermite when velocities are
                                         given, linear otherwise, from the command in force at the start;
                                         holds the last point). Accelerations are not used.
A new message on either topic replaces the command in force. Every stamp is sim time.
With the hand (`--task pick_place`, or `--hand`), also (reliable, depth 10), as a gz_ros2_control
gripper controller takes them and as the runtime's extra-DOF output sends them (config/fr3_hand.yaml):
  /gripper_controller/commands           std_msgs/Float64MultiArray: 1 or 2 finite finger positions, m
                                         from the centre (0 closed, 0.04 open): one for both fingers, or
                                         fr3_finger_joint1, fr3_finger_joint2; others rejected
  /gripper_trajectory_controller/joint_trajectory  trajectory_msgs/JointTrajectory naming
                                         fr3_finger_joint1 (fr3_finger_joint2 optional: it mimics joint1),
                                         sampled like the arm's
Finger positions are clamped to the finger range and approached at the hand's finger speed (SimArm).
Gripper messages never advance the lockstep clock: each applies at the next step, so a gripper command
published with the arm's for the same tick may take effect one period later.

Clock modes
  realtime  the sim steps on a wall-clock grid of 1/control_hz (late steps run at once, no bursts).
  lockstep  the sim advances one control period per command message received, so sim time runs
            exactly as fast as the controller ticks and a run is deterministic. While no command
            comes, it re-publishes the latest observation every 0.1 s (wall) so late joiners start.
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import signal
import sys
import threading
import time
from typing import Any

import numpy as np

from wam_control.sim.arm import FINGER_NAMES, JOINT_NAMES, SimArm
from wam_control.sim.bag import CAMERA_NAMESPACES
from wam_control.sim.tasks import TASKS
from wam_control.transport import messages as M
from wam_control.transport import qos

log = logging.getLogger("wam_control.sim")

TOPIC_FORWARD = "/forward_position_controller/commands"
TOPIC_TRAJECTORY = "/joint_trajectory_controller/joint_trajectory"
TOPIC_GRIPPER_FORWARD = "/gripper_controller/commands"
TOPIC_GRIPPER_TRAJECTORY = "/gripper_trajectory_controller/joint_trajectory"
FRAME_IDS = {"scene": "scene_camera_optical_frame", "wrist": "wrist_camera_optical_frame"}


class TrajectoryCommand:
    """A received JointTrajectory resolved to the sim's joint order and an absolute start time.

    `joints`: the joints it must name, in the order sampled; `mimic`: joints that may be left out and
    then follow another (a parallel gripper's second finger)."""

    def __init__(
        self,
        value: M.TrajectoryValue,
        t_start: float,
        q0: np.ndarray,
        v0: np.ndarray,
        joints: tuple[str, ...] = JOINT_NAMES,
        mimic: dict[str, str] | None = None,
    ) -> None:
        index = {n: i for i, n in enumerate(value.joint_names)}
        for follower, leader in (mimic or {}).items():
            if follower not in index and leader in index:
                index[follower] = index[leader]
        missing = [j for j in joints if j not in index]
        if missing:
            raise M.MessageError(f"joint_names lacks {missing}")
        if len(value.times) == 0:
            raise M.MessageError("trajectory has no points")
        pick = [index[j] for j in joints]
        # Knot 0 is the command in force when the trajectory starts (what JTC interpolates from).
        self.t = np.concatenate([[t_start], t_start + value.times])
        self.q = np.vstack([q0, value.positions[:, pick]])
        if value.velocities is not None:
            self.v: np.ndarray | None = np.vstack([v0, value.velocities[:, pick]])
        else:
            self.v = None

    def sample(self, t: float) -> np.ndarray:
        if t <= self.t[0]:
            return self.q[0].copy()
        if t >= self.t[-1]:
            return self.q[-1].copy()
        k = int(np.searchsorted(self.t, t, side="right")) - 1
        h = self.t[k + 1] - self.t[k]
        s = (t - self.t[k]) / h
        if self.v is None:
            return self.q[k] + s * (self.q[k + 1] - self.q[k])
        h00, h10 = 2 * s**3 - 3 * s**2 + 1, s**3 - 2 * s**2 + s
        h01, h11 = -2 * s**3 + 3 * s**2, s**3 - s**2
        return h00 * self.q[k] + h10 * h * self.v[k] + h01 * self.q[k + 1] + h11 * h * self.v[k + 1]


class SimBridge:
    """Publishes a SimArm's topics through `node` and applies the commands it receives.

    `node` needs `publisher(topic, msg_type, qos) -> obj.publish(msg)` and
    `subscription(topic, msg_type, callback, qos)` (DdsNode, or `RclpyNodeShim` below); `types` is the
    matching `MsgTypes` bundle.
    """

    def __init__(self, arm: SimArm, node: Any, types: M.MsgTypes, clock_mode: str = "lockstep") -> None:
        if clock_mode not in ("lockstep", "realtime"):
            raise ValueError(f"clock_mode must be 'lockstep' or 'realtime', got {clock_mode!r}")
        self.arm = arm
        self.T = types
        self.clock_mode = clock_mode
        self._lock = threading.Lock()
        self._new_command = threading.Condition(self._lock)
        self._pending: tuple[str, Any] | None = None
        self._traj: TrajectoryCommand | None = None
        self._q_cmd = arm.joint_state()[1]
        self._v_cmd = np.zeros(len(JOINT_NAMES))
        self._pending_gripper: tuple[str, Any] | None = None
        self._grip_traj: TrajectoryCommand | None = None
        self._g_cmd = arm.gripper_command()
        self._g_v = np.zeros(len(arm.finger_names))
        self.steps = 0
        self.commands = 0
        """Command messages received, arm and gripper."""
        self.gripper_commands = 0
        """Of those, gripper messages (/gripper_controller/commands, the gripper trajectory topic)."""
        self.rejected: dict[str, int] = {}
        self.last_error = ""
        self.pub_clock = node.publisher("/clock", types.Clock, qos.CLOCK)
        self.pub_joints = node.publisher("/joint_states", types.JointState, qos.JOINT_STATES)
        self.pub_image = {
            c: node.publisher(CAMERA_NAMESPACES[c] + "/image_raw", types.Image, qos.SENSOR_DATA)
            for c in arm.cameras
        }
        self.pub_info = {
            c: node.publisher(CAMERA_NAMESPACES[c] + "/camera_info", types.CameraInfo, qos.SENSOR_DATA)
            for c in arm.cameras
        }
        self._k = {}
        for c in arm.cameras:
            fx, fy, cx, cy = arm.camera_intrinsics(c)
            self._k[c] = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
        node.subscription(
            TOPIC_FORWARD, types.Float64MultiArray, functools.partial(self._on_msg, "forward"), qos.RELIABLE
        )
        node.subscription(
            TOPIC_TRAJECTORY,
            types.JointTrajectory,
            functools.partial(self._on_msg, "trajectory"),
            qos.RELIABLE,
        )
        if arm.has_hand:
            node.subscription(
                TOPIC_GRIPPER_FORWARD,
                types.Float64MultiArray,
                functools.partial(self._on_gripper_msg, "forward"),
                qos.RELIABLE,
            )
            node.subscription(
                TOPIC_GRIPPER_TRAJECTORY,
                types.JointTrajectory,
                functools.partial(self._on_gripper_msg, "trajectory"),
                qos.RELIABLE,
            )

    def reset(self, seed: int) -> None:
        """A new episode: reset the arm and task with `seed`; the command in force becomes holding the
        new pose and any unapplied command is dropped. Call while `run` is not running."""
        with self._lock:
            self.arm.reset(seed)
            self._pending = None
            self._traj = None
            self._q_cmd = self.arm.joint_state()[1]
            self._v_cmd[:] = 0.0
            self._pending_gripper = None
            self._grip_traj = None
            self._g_cmd = self.arm.gripper_command()
            self._g_v[:] = 0.0

    # ------------------------------------------------------------------ receive (transport thread)
    def _on_msg(self, kind: str, msg: Any) -> None:
        with self._new_command:
            self._pending = (kind, msg)
            self.commands += 1
            self._new_command.notify_all()

    def _on_gripper_msg(self, kind: str, msg: Any) -> None:
        with self._lock:  # no notify: a gripper message never advances the lockstep clock
            self._pending_gripper = (kind, msg)
            self.commands += 1
            self.gripper_commands += 1

    def _apply_pending_gripper(self, pending: tuple[str, Any] | None) -> None:
        if pending is None:
            return
        kind, msg = pending
        n = len(FINGER_NAMES)
        try:
            if kind == "forward":
                values = M.float64_multi_array_from_msg(msg).reshape(-1)
                if values.shape not in ((1,), (n,)) or not np.all(np.isfinite(values)):
                    raise M.MessageError(
                        f"expected 1 or {n} finite finger positions (m; order {list(FINGER_NAMES)}), got {values.tolist()}"
                    )
                self._grip_traj = None
                self._g_cmd = np.broadcast_to(values, (n,)).copy()
                self._g_v[:] = 0.0
            else:
                value = M.joint_trajectory_from_msg(msg)
                start = value.stamp_s if value.stamp_s > 0 else self.arm.time
                self._grip_traj = TrajectoryCommand(
                    value, start, self._g_cmd.copy(), self._g_v.copy(), joints=FINGER_NAMES,
                    mimic={FINGER_NAMES[1]: FINGER_NAMES[0]},
                )  # fmt: skip
        except (M.MessageError, ValueError) as exc:
            self._reject(TOPIC_GRIPPER_FORWARD if kind == "forward" else TOPIC_GRIPPER_TRAJECTORY, str(exc))

    def _reject(self, topic: str, problem: str) -> None:
        self.rejected[topic] = self.rejected.get(topic, 0) + 1
        self.last_error = f"{topic}: {problem}"
        if self.rejected[topic] in (1, 10, 100, 1000):  # rate-limited: never a log line per tick
            log.warning("rejected %s message (%d so far): %s", topic, self.rejected[topic], problem)

    def _apply_pending(self, pending: tuple[str, Any] | None) -> None:
        if pending is None:
            return
        kind, msg = pending
        try:
            if kind == "forward":
                values = M.float64_multi_array_from_msg(msg).reshape(-1)
                if values.shape != (len(JOINT_NAMES),) or not np.all(np.isfinite(values)):
                    raise M.MessageError(
                        f"expected {len(JOINT_NAMES)} finite positions in order {list(JOINT_NAMES)}, got {values.tolist()}"
                    )
                self._traj = None
                self._q_cmd = values.copy()
                self._v_cmd[:] = 0.0
            else:
                value = M.joint_trajectory_from_msg(msg)
                start = value.stamp_s if value.stamp_s > 0 else self.arm.time
                self._traj = TrajectoryCommand(value, start, self._q_cmd.copy(), self._v_cmd.copy())
        except (M.MessageError, ValueError) as exc:
            self._reject(TOPIC_FORWARD if kind == "forward" else TOPIC_TRAJECTORY, str(exc))

    # ------------------------------------------------------------------ publish
    def publish_observation(self, cameras: tuple[str, ...] | None = None) -> None:
        """Publish /clock and /joint_states at the current sim time, plus frames of `cameras`."""
        t = self.arm.time
        T = self.T
        self.pub_clock.publish(M.clock_msg(T, t))
        names, q, qd = self.arm.all_joint_state()
        self.pub_joints.publish(M.joint_state_msg(T, names, q, qd, stamp_s=t))
        for cam in self.arm.cameras if cameras is None else cameras:
            image, stamp = self.arm.frame(cam)
            if not math.isfinite(stamp):
                continue
            h, w = self.arm.image_hw
            self.pub_image[cam].publish(M.image_msg(T, image, "rgb8", stamp, FRAME_IDS[cam]))
            self.pub_info[cam].publish(M.camera_info_msg(T, w, h, self._k[cam], stamp, FRAME_IDS[cam]))

    # ------------------------------------------------------------------ step
    def advance(self) -> None:
        """Apply the newest command message (if any arrived) and step one control period."""
        with self._lock:
            pending, self._pending = self._pending, None
        self._step(pending)

    def _step(self, pending: tuple[str, Any] | None) -> None:
        self._apply_pending(pending)
        gripper = None
        if self.arm.has_hand:
            with self._lock:
                pending_gripper, self._pending_gripper = self._pending_gripper, None
            self._apply_pending_gripper(pending_gripper)
        t_next = self.arm.time + self.arm.control_period
        if self._traj is not None:
            q_new = self._traj.sample(t_next)
            self._v_cmd = (q_new - self._q_cmd) / self.arm.control_period
            self._q_cmd = q_new
        if self._grip_traj is not None:
            g_new = self._grip_traj.sample(t_next)
            self._g_v = (g_new - self._g_cmd) / self.arm.control_period
            self._g_cmd = g_new
        if self.arm.has_hand:
            gripper = self._g_cmd  # SimArm clamps it to the finger range
        rendered = self.arm.step(
            np.clip(self._q_cmd, self.arm.joint_range[:, 0], self.arm.joint_range[:, 1]), gripper=gripper
        )
        self.steps += 1
        self.publish_observation(rendered)

    def spin_once(self, timeout_s: float = 0.1) -> bool:
        """Lockstep: wait up to `timeout_s` for a command; apply it and step. False if none came."""
        with self._new_command:
            if self._pending is None:
                self._new_command.wait(timeout_s)
            pending, self._pending = self._pending, None
        if pending is None:
            return False
        self._step(pending)
        return True

    def run(self, stop: threading.Event, duration_s: float = 0.0) -> None:
        """Run until `stop` is set or `duration_s` of sim time passed (0: no limit)."""
        self.publish_observation()
        t_end = self.arm.time + duration_s if duration_s > 0 else math.inf
        if self.clock_mode == "lockstep":
            while not stop.is_set() and self.arm.time < t_end - 1e-9:
                if not self.spin_once(0.1):
                    self.publish_observation()  # nobody commanding yet: keep late joiners fed
            return
        period = self.arm.control_period
        start = time.monotonic()
        k = 0
        while not stop.is_set() and self.arm.time < t_end - 1e-9:
            self.advance()
            k += 1
            now = time.monotonic()
            # next slot on the original grid; if late, run now once and skip the missed slots
            k = max(k, int((now - start) / period))
            delay = start + k * period - time.monotonic()
            if delay > 0:
                stop.wait(delay)

    @property
    def gripper_setpoint(self) -> np.ndarray:
        """The finger setpoints the gripper messages asked for (m per finger; the reset's until one came),
        before the sim's finger speed limit (`arm.gripper_command()` is after it)."""
        return np.asarray(self._g_cmd, dtype=float).copy()

    def stats(self) -> dict[str, Any]:
        return {
            "sim_time_s": round(self.arm.time, 6),
            "steps": self.steps,
            "commands": self.commands,
            "rejected": dict(self.rejected),
            "last_error": self.last_error,
        }


class RclpyNodeShim:
    """The two methods SimBridge needs, on an rclpy Node (only used when ROS 2 is sourced), spun by its
    own executor on a background thread. `close` stops that thread before the node and the context go:
    an executor still waiting when the context is shut down raises "context is not valid"."""

    def __init__(self, name: str = "wam_sim") -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from rclpy.signals import SignalHandlerOptions

        from wam_control.transport.dds import configure_fast_dds

        configure_fast_dds()
        if not rclpy.ok():
            # The sim's own SIGINT/SIGTERM handlers end the run in order; rclpy's would shut the context
            # down under the spinning executor.
            rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
        self.node = Node(name)
        self._subs: list[Any] = []
        self._executor = SingleThreadedExecutor()
        self._executor.add_node(self.node)
        self._spinning = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._spinning.set()
        self._thread = threading.Thread(target=self._spin, name="wam_sim-spin", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while self._spinning.is_set():
            self._executor.spin_once(timeout_sec=0.05)

    def publisher(self, topic: str, msg_type: Any, profile: Any) -> Any:
        return self.node.create_publisher(msg_type, topic, qos.to_rclpy(profile))

    def subscription(self, topic: str, msg_type: Any, callback: Any, profile: Any) -> Any:
        sub = self.node.create_subscription(msg_type, topic, callback, qos.to_rclpy(profile))
        self._subs.append(sub)
        return sub

    def close(self) -> None:
        self._spinning.clear()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self._executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="wam-control sim", description=__doc__.split("\n")[0])
    ap.add_argument("--task", choices=TASKS, default="reach")
    ap.add_argument(
        "--hand", action="store_true", help="the scene with the gripper (default for pick_place only)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clock", choices=("lockstep", "realtime"), default="lockstep")
    ap.add_argument("--control-hz", type=float, default=500.0, help="default: control_hz of config/fr3.yaml")
    ap.add_argument("--camera-hz", type=float, default=15.0)
    ap.add_argument("--image-hw", type=int, nargs=2, default=(96, 96), metavar=("H", "W"))
    ap.add_argument("--cameras", default="scene,wrist", help="comma-separated subset of scene,wrist")
    ap.add_argument("--transport", choices=("auto", "dds", "rclpy"), default="auto")
    ap.add_argument("--domain-id", type=int, help="DDS domain (default: ROS_DOMAIN_ID, else 0)")
    ap.add_argument(
        "--duration", type=float, default=0.0, help="stop after this much sim time, s (0: Ctrl-C)"
    )
    ap.add_argument("--no-loopback", action="store_true", help="do not pin DDS to loopback")
    ap.add_argument("--log-level", default="INFO")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    transport = args.transport
    if transport == "auto":
        try:
            import rclpy

            transport = "rclpy"
        except ImportError:
            transport = "dds"
    arm = SimArm(
        task=args.task,
        seed=args.seed,
        control_hz=args.control_hz,
        camera_hz=args.camera_hz,
        image_hw=tuple(args.image_hw),
        cameras=tuple(c for c in args.cameras.split(",") if c),
        hand=True if args.hand else None,
    )
    if transport == "rclpy":
        node: Any = RclpyNodeShim()
        types = M.rclpy_msg_types()
    else:
        from wam_control.transport.dds import DdsNode

        node = DdsNode("wam_sim", domain_id=args.domain_id, loopback=not args.no_loopback)
        types = M.dds_msg_types()
    bridge = SimBridge(arm, node, types, clock_mode=args.clock)
    if transport == "rclpy":
        node.start()  # once every publisher and subscription exists
    stop = threading.Event()

    def _on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _on_signal)
    log.info(
        "sim %s (seed %d%s) over %s, %s clock, %g Hz control, cameras %s at %g Hz; prompt %r",
        args.task, args.seed, ", with the hand" if arm.has_hand else "", transport, args.clock,
        args.control_hz, list(arm.cameras), args.camera_hz, arm.task.prompt,
    )  # fmt: skip
    try:
        bridge.run(stop, args.duration)
    finally:
        node.close()
        arm.close()
        if transport == "rclpy":
            import rclpy

            rclpy.try_shutdown()
    log.info("stopped: %s; task success=%s", bridge.stats(), arm.task.success())
    return 0


if __name__ == "__main__":
    sys.exit(main())
