"""Transport-independent glue between ROS 2 messages and the runtime `Controller`.

Both front ends (`dds_node` over Cyclone DDS, `ros_node` over rclpy) are thin: they create
subscriptions that hand messages to `ControllerIO.on_*`, and a `ControlRunner` that ticks the controller
on its own thread and hands each `JointCommand` to a publish function. Everything in between, message
checks, the command message, the predicted chunk, the diagnostics, lives here once, and so do the WAM
extras (docs/surprise.md): `build_runtime` attaches the surprise monitor and the imagination preview when
the config enables them; `ControllerIO.surprise_msg` is what both nodes publish on ~/surprise from the
auxiliary thread, and `ControllerIO.poll_imagination(subscriber_count)` starts and stops the preview.

Command message (DESIGN.md §6). JointTrajectory: header.stamp = 0 ("start now") and the filtered
setpoint as the first point at t = one control period, with velocities and accelerations, so
joint_trajectory_controller's spline follows the filter's own (q, v, a) and every message supersedes the
previous one. With `command_horizon_points` = 1 that is all: one point streams exactly what the safety
filter checked, nothing the filter has not seen is ever sent. With N > 1 the remaining points are a
stop: each joint decelerates from the setpoint's velocity at its deceleration limit (times the brake
fraction) to rest, inside the position limits. The controller still only executes the first few
milliseconds of each message, but if this node dies, joint_trajectory_controller (which has no command
timeout by default) runs the tail and brings the arm to rest instead of stopping dead at a moving
point. Float64MultiArray: exactly the configured joints, in the configured order.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from wam_control.config import RobotConfig
from wam_control.policy.instruction import InstructionInput
from wam_control.transport import messages as M

if TYPE_CHECKING:
    from wam_control.runtime.builder import RuntimeParts

log = logging.getLogger(__name__)


def braking_tail(
    q: np.ndarray,
    v: np.ndarray,
    decel: np.ndarray,
    q_min: np.ndarray,
    q_max: np.ndarray,
    n: int,
    t0: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`n` points after (t0, q, v) in which every joint stops at constant deceleration `decel`.

    Returns (times [n], positions [n, D], velocities [n, D]); the last point is at rest. Points are
    spread evenly up to the slowest joint's stop time (at least one period apart). Joints with an
    infinite deceleration limit stop at once (they hold q).
    """
    d = np.where(np.isfinite(decel) & (decel > 0), decel, np.inf)
    t_stop = np.abs(v) / d
    horizon = float(np.max(t_stop)) if t_stop.size else 0.0
    times = t0 + np.linspace(0.0, max(horizon, t0 * n), n + 1)[1:]
    tau = np.minimum((times - t0)[:, None], t_stop[None, :])
    sign = np.sign(v)[None, :]
    dec = np.where(np.isfinite(d), d, 0.0)[None, :]
    pos = q[None, :] + v[None, :] * tau - 0.5 * sign * dec * tau**2
    vel = v[None, :] - sign * dec * tau
    vel[-1] = 0.0
    return times, np.clip(pos, q_min, q_max), vel


@dataclass
class _Camera:
    name: str
    topic: str
    info: M.CameraInfoValue | None = None


class ControllerIO:
    """Messages in -> `Controller.on_*` (checked, counted); controller outputs -> messages.

    `T` is the message implementation to build (`messages.dds_msg_types()` or `rclpy_msg_types()`).
    Input methods are called from subscription threads; `command_msg` from the control thread;
    `predicted_chunk_msg` and `diagnostics_msg` from a low-rate auxiliary thread.
    """

    def __init__(
        self,
        controller: Any,
        T: M.MsgTypes,
        node_name: str = "wam_controller",
        now: Callable[[], float] | None = None,
        *,
        surprise: Any = None,
        imagination: Any = None,
    ) -> None:
        self.controller = controller
        self.surprise = surprise
        self.imagination = imagination
        self.imagination_error = ""
        self._now = now
        self.config: RobotConfig = controller.config
        self.T = T
        self.node_name = node_name
        self.monitor = M.InputMonitor(logger=logging.getLogger(f"wam_control.{node_name}"))
        self.joint_names = tuple(self.config.joint_names)
        # Joints read from /joint_states: the arm joints and any extra DOF's joint (a gripper).
        self.state_joints = tuple(getattr(controller, "tracked_joints", self.joint_names))
        self.prompt = InstructionInput(controller)
        """The prompt path to the controller (tokenized once per change; the controller applies it).
        Its tokenizer, `tokenizer` here, is set by the node for a model that takes a language prompt."""
        self.extra_outputs = extra_command_outputs(controller)
        self.cameras = {
            name: _Camera(name, topic) for name, topic in self.config.topics.camera_images.items()
        }
        self.estop_engaged = False
        self.sim_time_s: float | None = None
        self.command_count = 0
        self._chunk_version: int | None = None
        # Command message constants, computed once (the control thread builds one message per tick).
        self._dt = self.config.control_period
        self._tail = max(0, int(self.config.command_horizon_points) - 1)
        limits = self.config.limit_arrays()
        self._decel = limits.d_max * self.config.safety.brake_deceleration_fraction
        self._q_min, self._q_max = limits.q_min, limits.q_max

    @property
    def tokenizer(self) -> Any:
        """InstructionTokenizer of a model that takes a language prompt (set by the node); None: none."""
        return self.prompt.tokenizer

    @tokenizer.setter
    def tokenizer(self, tokenizer: Any) -> None:
        self.prompt.tokenizer = tokenizer

    @property
    def instruction(self) -> str:
        """The last prompt accepted ("" before any)."""
        return self.prompt.text

    # -- inputs ---------------------------------------------------------------------------------------

    def _reject(self, topic: str, problem: str) -> None:
        self.monitor.reject(topic, problem)

    def on_joint_state(self, msg: Any, topic: str = "/joint_states") -> None:
        try:
            js = M.joint_state_from_msg(msg, required=self.state_joints)
        except M.MessageError as exc:
            return self._reject(topic, str(exc))
        problem = self.monitor.check_stamp(topic, js.stamp_s)
        if problem is None:
            problem = self.controller.on_joint_state(js.names, js.positions, js.velocities, js.stamp_s)
        if problem:
            return self._reject(topic, problem)
        self.monitor.accept(topic)

    def on_image(self, camera: str, msg: Any) -> None:
        cam = self.cameras[camera]
        try:
            img = M.image_from_msg(msg)
        except M.MessageError as exc:
            return self._reject(cam.topic, str(exc))
        problem = self.monitor.check_stamp(cam.topic, img.stamp_s)
        if problem is None:
            problem = self.controller.on_image(camera, img.rgb, img.stamp_s)
        if problem:
            return self._reject(cam.topic, problem)
        self.monitor.accept(cam.topic)

    def on_camera_info(self, camera: str, msg: Any) -> None:
        topic = camera_info_topic(self.cameras[camera].topic)
        try:
            self.cameras[camera].info = M.camera_info_from_msg(msg)
        except M.MessageError as exc:
            return self._reject(topic, str(exc))
        self.monitor.accept(topic)

    def on_instruction(self, msg: Any, topic: str = "~/instruction") -> None:
        """A new task prompt (std_msgs/String). Runs on the subscription thread: the prompt is tokenized
        here, once per change (the latched and the volatile subscription may both deliver it), never on
        the control path; the controller applies it to its next request."""
        try:
            text = M.string_from_msg(msg).strip()
        except M.MessageError as exc:
            return self._reject(topic, str(exc))
        problem = self.prompt.set(text)
        if problem:
            return self._reject(topic, problem)
        self.monitor.accept(topic)

    def on_estop(self, msg: Any, topic: str = "~/estop") -> None:
        engaged = M.bool_from_msg(msg)
        if engaged != self.estop_engaged:
            log.warning("e-stop %s (%s)", "ENGAGED" if engaged else "released", topic)
        self.estop_engaged = engaged
        self.controller.on_estop(engaged)
        self.monitor.accept(topic)

    def rearm(self) -> tuple[bool, str]:
        ok, message = self.controller.rearm()
        log.warning("re-arm %s: %s", "accepted" if ok else "refused", message)
        return bool(ok), str(message)

    def on_clock(self, msg: Any) -> None:
        self.sim_time_s = M.clock_from_msg(msg)

    def ros_time(self) -> float:
        """Stamp for outgoing messages: the node's ROS clock if given (rclpy honours use_sim_time), else
        /clock time once seen (DDS node with --use-sim-time), else wall time."""
        if self._now is not None:
            return self._now()
        return self.sim_time_s if self.sim_time_s is not None else time.time()

    # -- outputs --------------------------------------------------------------------------------------

    def command_msg(self, cmd: Any) -> Any:
        """The command message for one tick (JointTrajectory or Float64MultiArray, per the config)."""
        self.command_count += 1
        T = self.T
        n = len(self.joint_names)  # the arm joints lead the command vector; extra DOFs have their own topics
        if self.config.command_interface == "forward_position":
            return M.float64_multi_array_msg(T, cmd.positions[:n], label=None)
        q = np.asarray(cmd.positions[:n], dtype=np.float64)
        v = np.asarray(cmd.velocities[:n], dtype=np.float64)
        a = np.asarray(cmd.accelerations[:n], dtype=np.float64)
        first = T.JointTrajectoryPoint(
            positions=T.floats(q),
            velocities=T.floats(v),
            accelerations=T.floats(a),
            effort=T.floats(np.zeros(0)),
            time_from_start=M.duration_msg(T, self._dt),
        )
        points = [first]
        if self._tail:
            times, pos, vel = braking_tail(q, v, self._decel, self._q_min, self._q_max, self._tail, self._dt)
            zeros = T.floats(np.zeros(0))
            for i in range(self._tail):
                points.append(
                    T.JointTrajectoryPoint(
                        positions=T.floats(pos[i]),
                        velocities=T.floats(vel[i]),
                        accelerations=zeros,
                        effort=zeros,
                        time_from_start=M.duration_msg(T, float(times[i])),
                    )
                )
        return T.JointTrajectory(
            header=M.header_msg(T, 0.0), joint_names=list(self.joint_names), points=points
        )

    def extra_command_msgs(self, cmd: Any) -> list[tuple[Any, Any]]:
        """(output, message) for each extra DOF with a command output (a gripper's controller): the same
        filtered setpoint as the arm's, as a Float64MultiArray (one value per command joint) or a
        one-point JointTrajectory. Empty for a model without extra action DOFs."""
        out = []
        T = self.T
        for o in self.extra_outputs:
            q = float(cmd.positions[o.index])
            if o.interface == "forward_position":
                msg = M.float64_multi_array_msg(T, np.full(len(o.joints), q), label=None)
            else:
                k = len(o.joints)
                point = T.JointTrajectoryPoint(
                    positions=T.floats(np.full(k, q)),
                    velocities=T.floats(np.full(k, float(cmd.velocities[o.index]))),
                    accelerations=T.floats(np.full(k, float(cmd.accelerations[o.index]))),
                    effort=T.floats(np.zeros(0)),
                    time_from_start=M.duration_msg(T, self._dt),
                )
                msg = T.JointTrajectory(header=M.header_msg(T, 0.0), joint_names=list(o.joints), points=[point])
            out.append((o, msg))
        return out

    def predicted_chunk_msg(self) -> Any | None:
        """The controller's raw chunk as a JointTrajectory stamped now, or None if unchanged/absent."""
        chunk = self.controller.predicted_chunk()
        if chunk is None:
            return None
        version, t_from_now, positions = chunk
        positions = np.asarray(positions)[:, : len(self.joint_names)]  # the arm's chunk (RViz draws the arm)
        if version == self._chunk_version:
            return None
        self._chunk_version = version
        t = np.asarray(t_from_now, dtype=np.float64)
        keep = t >= 0.0  # actions already in the past are not drawn
        times, pos = t[keep], np.asarray(positions)[keep]
        if times.size > 1:  # strictly increasing, as trajectory consumers require
            order = np.concatenate([[True], np.diff(times) > 0])
            times, pos = times[order], pos[order]
        return M.joint_trajectory_msg(self.T, self.joint_names, times, pos, stamp_s=self.ros_time())

    def surprise_msg(self) -> Any | None:
        """std_msgs/Float64 with the monitor's current (smoothed) score; None without a monitor.

        Read on the auxiliary thread: the score is one float the control thread rebinds, so reading it
        needs no lock and costs the control path nothing."""
        if self.surprise is None:
            return None
        return M.float64_msg(self.T, self.surprise.score)

    # -- imagination preview (docs/surprise.md) ----------------------------------------------------------

    def bind_imagination(self, publish_msg: Callable[[Any], object]) -> None:
        """Route the preview's frames to `publish_msg(sensor_msgs/Image)` (called on the preview thread)."""
        if self.imagination is not None:
            self.imagination.publish = lambda rgb, tick, horizon_s: publish_msg(
                self.imagination_msg(rgb, tick, horizon_s)
            )

    def imagination_msg(self, rgb: np.ndarray, obs_tick: int, horizon_s: float) -> Any:
        """The decoded frame as rgb8, stamped when it is published (not with the future instant it
        depicts, `horizon_s` after the observation: a stamp in the future trips up time-synchronising
        viewers), in the first camera's frame when its camera_info has been seen."""
        cam = next(iter(self.cameras.values()), None)
        frame_id = cam.info.frame_id if cam is not None and cam.info is not None else ""
        return M.image_msg(self.T, rgb, "rgb8", stamp_s=self.ros_time(), frame_id=frame_id)

    def poll_imagination(self, subscribers: int) -> None:
        """Auxiliary thread: run the preview while the image topic has subscribers, stop it when the last
        one leaves. A decoder that cannot be loaded is reported once (log, diagnostics) and not retried:
        the file will not fix itself while the node runs."""
        p = self.imagination
        if p is None or self.imagination_error:
            return
        want = subscribers > 0
        if want == p.subscribed:
            return
        try:
            p.set_subscribed(want)
        except Exception as exc:  # DecoderError or onnxruntime's own: the preview is off, control is not
            self.imagination_error = f"{type(exc).__name__}: {exc}"
            log.error("imagination preview disabled: %s", self.imagination_error)
            return
        log.info("imagination preview %s", "started (subscriber present)" if want else "stopped")

    def imagination_off(self) -> None:
        """Stop the preview thread (node deactivating: its publisher is about to go away)."""
        if self.imagination is not None and self.imagination.subscribed:
            self.imagination.set_subscribed(False)

    def diagnostics_values(self, extra: dict[str, Any] | None = None) -> list[M.DiagnosticValue]:
        status = self.controller.status()
        hw = self.config.robot
        transport: dict[str, Any] = {"commands_published": self.command_count, "estop": self.estop_engaged}
        transport.update(self.monitor.counters())
        for cam in self.cameras.values():
            if cam.info is not None:
                transport[f"camera.{cam.name}.info"] = f"{cam.info.width}x{cam.info.height}"
        if self.imagination is not None:
            transport.update(self.imagination.values())
            if self.imagination_error:
                transport["imagination.error"] = self.imagination_error
            elif self.imagination.last_error:
                transport["imagination.last_error"] = self.imagination.last_error
        if extra:
            transport.update(extra)
        rejected = sum(self.monitor.rejected.values())
        return [
            M.DiagnosticValue(
                int(status.level),
                f"{self.node_name}: controller",
                str(status.message),
                hw,
                dict(status.values),
            ),  # fmt: skip
            M.DiagnosticValue(
                M.WARN if rejected else M.OK,
                f"{self.node_name}: transport",
                f"{rejected} message(s) rejected" if rejected else "ok",
                hw,
                transport,
            ),
        ]

    def diagnostics_msg(self, extra: dict[str, Any] | None = None) -> Any:
        return M.diagnostic_array_msg(self.T, self.ros_time(), self.diagnostics_values(extra))


@dataclass(frozen=True)
class ExtraOutput:
    """Where one extra action DOF (contract v2 action_names beyond the arm, e.g. a gripper) is sent."""

    name: str
    """The model's name for it."""
    index: int
    """Its index in the command vector."""
    interface: str
    """forward_position (Float64MultiArray) or joint_trajectory (JointTrajectory)."""
    topic: str
    joints: tuple[str, ...]


def extra_command_outputs(controller: Any) -> list[ExtraOutput]:
    contract = getattr(controller, "contract", None)
    if contract is None or not getattr(contract, "extra_actions", ()):
        return []
    cfg = controller.config
    out = []
    for i, name in enumerate(contract.extra_actions):
        dof = cfg.extra_dofs[name]
        joint = cfg.extra_joint(name)
        out.append(ExtraOutput(name, contract.num_joints + i, dof.command_interface, dof.command_topic,
                               tuple(dof.command_joints) or (joint,)))  # fmt: skip
    return out


def camera_info_topic(image_topic: str) -> str:
    """`/camera/image_raw` -> `/camera/camera_info` (image_transport's sibling convention)."""
    head, _, _ = image_topic.rpartition("/")
    return f"{head}/camera_info"


class ControlRunner:
    """Ticks the controller on a FixedRateLoop thread and publishes; runs low-rate work on a second thread.

    `publish_command(cmd)` is called on the control thread for every tick that produced a command;
    `aux()` every `aux_period_s` on the auxiliary thread (predicted chunk, diagnostics). Exceptions
    in either are logged and counted, never allowed to stop the loop.
    """

    def __init__(
        self,
        controller: Any,
        publish_command: Callable[[Any], None],
        aux: Callable[[], None] | None = None,
        aux_period_s: float = 0.05,
        name: str = "wam-control-loop",
    ) -> None:
        self.controller = controller
        self._publish = publish_command
        self._aux = aux
        self._aux_period = aux_period_s
        self._name = name
        self._loop: Any = None
        self._aux_thread: threading.Thread | None = None
        self._stop_aux = threading.Event()
        self.tick_errors = 0
        self.aux_errors = 0
        self.last_error = ""

    @property
    def running(self) -> bool:
        return self._loop is not None

    def loop_stats(self) -> Any:
        return self._loop.stats if self._loop is not None else None

    def transport_values(self) -> dict[str, Any]:
        """What both nodes report under `transport` in /diagnostics about the loop and its errors."""
        out: dict[str, Any] = {"tick_errors": self.tick_errors, "aux_errors": self.aux_errors}
        if self.last_error:
            out["last_error"] = self.last_error
        stats = self.loop_stats()
        if stats is not None:
            for key in ("late_p50_us", "late_p99_us", "misses", "overruns"):
                if hasattr(stats, key):
                    out[f"loop.{key}"] = getattr(stats, key)
        return out

    def _tick(self, tick: int) -> None:
        try:
            cmd = self.controller.tick(tick)
            if cmd is not None:
                self._publish(cmd)
        except Exception as exc:  # never let one bad tick kill the control thread; counted, logged once
            self.tick_errors += 1
            if self.tick_errors == 1:
                log.exception("control tick %d failed", tick)
            self.last_error = f"{type(exc).__name__}: {exc}"

    def _aux_run(self) -> None:
        while not self._stop_aux.wait(self._aux_period):
            if self._aux is None:
                continue
            try:
                self._aux()
            except Exception as exc:
                self.aux_errors += 1
                if self.aux_errors == 1:
                    log.exception("auxiliary publishing failed")
                self.last_error = f"{type(exc).__name__}: {exc}"

    def start(self) -> None:
        from wam_control.runtime.loop import FixedRateLoop

        if self._loop is not None:
            return
        cfg = self.controller.config
        self.controller.start()
        self._loop = FixedRateLoop(cfg.control_hz, self._tick, loop=cfg.loop, name=self._name)
        self._loop.start()
        self._stop_aux.clear()
        self._aux_thread = threading.Thread(target=self._aux_run, name=f"{self._name}-aux", daemon=True)
        self._aux_thread.start()

    def stop(self, brake_timeout_s: float = 2.0) -> Any:
        """Brake to hold (the loop keeps ticking and publishing while the controller stops), then stop."""
        if self._loop is None:
            return None
        self.controller.stop()
        deadline = time.monotonic() + brake_timeout_s
        while time.monotonic() < deadline and not _is_holding(self.controller):
            time.sleep(0.01)
        stats = self._loop.stop()
        self._loop = None
        self._stop_aux.set()
        if self._aux_thread is not None:
            self._aux_thread.join(timeout=2.0)
            self._aux_thread = None
        return stats


def _is_holding(controller: Any) -> bool:
    """At rest: the filter's commanded velocity is zero (`holding` alone is also true while braking)."""
    f = getattr(controller, "filter", None)
    if f is None:
        return True
    return bool(getattr(f, "holding", True)) and float(np.max(np.abs(f.v), initial=0.0)) < 1e-9


def build_runtime(
    config: RobotConfig,
    model_path: str | os.PathLike[str] | None = None,
    backend: str | None = None,
    worker: str | None = None,
) -> RuntimeParts:
    """The runtime Controller for `config` with its model (contract checked), inference worker, and the
    surprise monitor / imagination preview when the config enables them, from the runtime builder
    (`wam_control.runtime.builder`, the one place a controller is assembled). Every file is checked
    before the worker starts, so a bad deployment fails with the file's name and nothing left running."""
    from wam_control.runtime.builder import Overrides
    from wam_control.runtime.builder import build_runtime as build

    _, parts = build(config, model_path, Overrides(backend=backend, worker=worker, surprise="required"))
    return parts
