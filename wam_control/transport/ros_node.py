"""`wam_controller`: the controller as an rclpy lifecycle node (`ros2 run wam_control wam_controller`).

A thin adapter over the same Controller, converters and QoS profiles as `wam-control run` (see
`adapter.py`); only subscriptions, publishers, parameters and the lifecycle are rclpy's.

Lifecycle:
  configure   read parameters -> RobotConfig, load the model (contract checked), start the inference
              worker and wait for its warm-up, create subscriptions (they only store the latest value),
              lifecycle publishers and the `~/rearm` std_srvs/Trigger service
  activate    enable publishers, start the control thread (FixedRateLoop on monotonic deadlines; not an
              rclpy timer, which follows the ROS clock and jitters with the executor)
  deactivate  brake to hold while still publishing, stop the control thread, disable publishers
  cleanup     release the model, worker, subscriptions, publishers and service
  shutdown    deactivate + cleanup from any state

WAM extras (docs/surprise.md), as in `wam-control run`: with surprise.enabled, configure fails unless
the calibration file exists, and the score goes out on ~/surprise (std_msgs/Float64, 20 Hz from the
auxiliary thread); with imagination.enabled, configure checks the decoder file, and the auxiliary thread
polls the image publisher's subscription count: the decoder is loaded and its thread started when the
first subscriber appears, stopped when the last one leaves (and on deactivate).

Parameters: every key of the deployment YAML (config/fr3.yaml is a ROS 2 parameter file) is declared
with a descriptor and read back into the same typed RobotConfig the DDS path uses; or `config_file`
names such a YAML directly. `model`, `backend`, `worker`, `command_interface` override the file.
`autostart` configures and activates the node right after it starts (for `ros2 run`; the launch file
drives the lifecycle with events instead). `use_sim_time` is honoured for every outgoing stamp.

rclpy is imported lazily so that this module imports (and type-checks) on machines without ROS 2.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import time
from typing import Any

from wam_control.transport import qos

NODE_NAME = "wam_controller"
# Nested sections of RobotConfig (every field whose type is a dataclass), flattened as ROS 2 does.
_SECTIONS = ("topics", "timeouts", "safety", "inference", "loop", "surprise", "imagination")
_OVERRIDES = ("model", "backend", "worker", "command_interface")


def schema_parameter_names() -> list[tuple[str, str]]:
    """(parameter name, description) for every fixed key of the deployment YAML, flattened as ROS 2
    flattens nested YAML (`topics.joint_states`). Per-joint limits and per-camera topics depend on
    `joints` / `cameras` and are declared after those are read."""
    from wam_control.config import schema

    out: list[tuple[str, str]] = []
    for f in dataclasses.fields(schema.RobotConfig):
        if f.name in ("joint_limits", "source") or f.name in _SECTIONS:
            continue
        out.append((f.name, f"RobotConfig.{f.name} (wam_control/config/schema.py)"))
    for section in _SECTIONS:
        cls = {f.name: f.type for f in dataclasses.fields(schema.RobotConfig)}[section]
        section_cls = getattr(schema, cls) if isinstance(cls, str) else cls
        for f in dataclasses.fields(section_cls):
            if section == "topics" and f.name == "camera_images":
                continue
            out.append(
                (f"{section}.{f.name}", f"{section_cls.__name__}.{f.name} (wam_control/config/schema.py)")
            )
    return out


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """{"a.b": 1} -> {"a": {"b": 1}} (the inverse of ROS 2's YAML flattening)."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        parts = key.split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def _node_class() -> type:
    from rcl_interfaces.msg import ParameterDescriptor
    from rclpy.lifecycle import Node as LifecycleNode
    from rclpy.lifecycle import State, TransitionCallbackReturn
    from std_srvs.srv import Trigger

    from wam_control.transport.adapter import ControllerIO, ControlRunner, build_runtime, camera_info_topic
    from wam_control.transport.messages import rclpy_msg_types

    class WamControllerNode(LifecycleNode):  # type: ignore[misc, valid-type]
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(NODE_NAME, **kwargs)
            self._T = rclpy_msg_types()
            self._declare(
                "config_file",
                "",
                "deployment YAML to load instead of this node's own parameters",
                read_only=True,
            )
            for name, default, description in (
                ("model", "", "ONNX model path (overrides inference.model)"),
                ("backend", "", "auto | onnxruntime | tensorrt | torch (overrides inference.backend)"),
                ("worker", "", "thread | process (overrides inference.worker)"),
                ("command_interface", "", "joint_trajectory | forward_position (overrides the config)"),
            ):
                self._declare(name, default, description, read_only=True)
            self._declare("autostart", False, "configure and activate right after start", read_only=True)
            self._declare("diagnostics_period_s", 1.0, "period of /diagnostics", read_only=True)
            self.runtime: Any = None
            self.controller: Any = None
            self.io: Any = None
            self.runner: Any = None
            self._subs: list[Any] = []
            self._pubs: list[Any] = []
            self._srv: Any = None
            self._surprise_pub: Any = None
            self._imagination_pub: Any = None
            self._next_diag = 0.0

        def _declare(
            self, name: str, default: Any, description: str, read_only: bool = True, dynamic: bool = False
        ) -> Any:
            if self.has_parameter(name):  # configure after cleanup: declared the first time round
                return self.get_parameter(name)
            desc = ParameterDescriptor(description=description, read_only=read_only, dynamic_typing=dynamic)
            return self.declare_parameter(name, default, desc)

        # -- configuration ------------------------------------------------------------------------

        def _read_config(self) -> Any:
            from wam_control.config import config_from_dict, load_config
            from wam_control.config.presets import share_dir
            from wam_control.config.schema import JointLimits

            overrides = {k: self.get_parameter(k).value for k in _OVERRIDES}
            top: dict[str, Any] = {}
            if overrides.pop("command_interface"):
                top["command_interface"] = self.get_parameter("command_interface").value
            config_file = self.get_parameter("config_file").value
            if config_file:
                config = load_config(config_file, top or None)
            else:
                # Declared as "no value" with dynamic typing: only keys present in the YAML get a value,
                # the schema's defaults apply to the rest, and the loader does the type checking.
                flat: dict[str, Any] = {}
                for name, description in schema_parameter_names():
                    value = self._declare(name, None, description, dynamic=True).value
                    if value is not None:
                        flat[name] = value
                for joint in flat.get("joints", []):
                    for f in dataclasses.fields(JointLimits):
                        value = self._declare(
                            f"joint_limits.{joint}.{f.name}",
                            None,
                            f"ros2_control joint_limits: {f.name}",
                            dynamic=True,
                        ).value
                        if value is not None:
                            flat[f"joint_limits.{joint}.{f.name}"] = value
                for camera in flat.get("cameras", ["scene"]):
                    value = self._declare(
                        f"topics.camera_images.{camera}", None, "image topic", dynamic=True
                    ).value
                    if value is not None:
                        flat[f"topics.camera_images.{camera}"] = value
                data = nest(flat)
                data.update(top)
                # Relative model paths in the shipped YAML point from config/ into the package's models/.
                config = config_from_dict(data, source=f"parameters of {self.get_fully_qualified_name()}",
                                          base_dir=share_dir() / "config")  # fmt: skip
            model = overrides["model"] or config.inference.model
            return config, model, overrides["backend"] or None, overrides["worker"] or None

        def on_configure(self, state: State) -> TransitionCallbackReturn:
            try:
                config, model, backend, worker = self._read_config()
                self.runtime = build_runtime(config, model, backend, worker)
                self.controller = self.runtime.controller
                self._warm_up(config.timeouts.startup_s)
            except Exception as exc:
                self.get_logger().error(f"configure failed: {exc}")
                self._release()
                return TransitionCallbackReturn.FAILURE
            ros_now = functools.partial(lambda clock: clock.now().nanoseconds * 1e-9, self.get_clock())
            self.io = ControllerIO(self.controller, self._T, self.get_name(), now=ros_now,
                                   surprise=self.runtime.surprise, imagination=self.runtime.imagination)  # fmt: skip
            self._create_entities(config)
            self.runner = ControlRunner(
                self.controller, self._publish_command, self._aux, name=f"{self.get_name()}-loop"
            )
            self.get_logger().info(
                f"configured: {len(config.joint_names)} joints at {config.control_hz:g} Hz, "
                f"{config.command_interface} on {self._command_pub.topic_name}, model {model}"
            )
            return TransitionCallbackReturn.SUCCESS

        def _warm_up(self, timeout_s: float) -> None:
            worker = self.controller.worker
            worker.start()
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                worker.check(self.controller.clock.now())
                health = worker.health()
                if health.get("state") == "ready":
                    return
                time.sleep(0.05)
            raise TimeoutError(f"inference worker not ready after {timeout_s:g} s: {worker.health()}")

        def _create_entities(self, config: Any) -> None:
            t, io, T = config.topics, self.io, self._T
            self._subs = [
                self.create_subscription(T.JointState, t.joint_states,
                                         functools.partial(io.on_joint_state, topic=t.joint_states),
                                         qos.to_rclpy(qos.JOINT_STATES)),
                self.create_subscription(T.Bool, t.estop, functools.partial(io.on_estop, topic=t.estop),
                                         qos.to_rclpy(qos.RELIABLE)),
            ]  # fmt: skip
            for camera, topic in t.camera_images.items():
                self._subs.append(
                    self.create_subscription(
                        T.Image, topic, functools.partial(io.on_image, camera), qos.to_rclpy(qos.SENSOR_DATA)
                    )  # fmt: skip
                )
                self._subs.append(
                    self.create_subscription(
                        T.CameraInfo,
                        camera_info_topic(topic),
                        functools.partial(io.on_camera_info, camera),
                        qos.to_rclpy(qos.SENSOR_DATA),
                    )  # fmt: skip
                )
            if config.command_interface == "forward_position":
                self._command_pub = self.create_lifecycle_publisher(
                    T.Float64MultiArray, t.forward_command, qos.to_rclpy(qos.RELIABLE)
                )
            else:
                self._command_pub = self.create_lifecycle_publisher(
                    T.JointTrajectory, t.trajectory_command, qos.to_rclpy(qos.RELIABLE)
                )
            self._chunk_pub = self.create_lifecycle_publisher(
                T.JointTrajectory, t.predicted_chunk, qos.to_rclpy(qos.PREDICTED_CHUNK)
            )
            self._diag_pub = self.create_lifecycle_publisher(
                self._T.DiagnosticArray, t.diagnostics, qos.to_rclpy(qos.DIAGNOSTICS)
            )
            self._pubs = [self._command_pub, self._chunk_pub, self._diag_pub]
            if io.surprise is not None:
                self._surprise_pub = self.create_lifecycle_publisher(
                    T.Float64, t.surprise, qos.to_rclpy(qos.PREVIEW)
                )
                self._pubs.append(self._surprise_pub)
            if io.imagination is not None:
                self._imagination_pub = self.create_lifecycle_publisher(
                    T.Image, config.imagination.topic, qos.to_rclpy(qos.PREVIEW)
                )
                self._pubs.append(self._imagination_pub)
                io.bind_imagination(self._imagination_pub.publish)
            self._srv = self.create_service(Trigger, t.rearm_service, self._on_rearm)

        # -- runtime ------------------------------------------------------------------------------

        def _publish_command(self, cmd: Any) -> None:
            self._command_pub.publish(self.io.command_msg(cmd))

        def _aux(self) -> None:
            chunk = self.io.predicted_chunk_msg()
            if chunk is not None:
                self._chunk_pub.publish(chunk)
            if self._surprise_pub is not None:
                self._surprise_pub.publish(self.io.surprise_msg())
            if self._imagination_pub is not None:
                self.io.poll_imagination(self._imagination_pub.get_subscription_count())
            now = time.monotonic()
            if now >= self._next_diag:
                self._next_diag = now + float(self.get_parameter("diagnostics_period_s").value)
                extra = {"tick_errors": self.runner.tick_errors}
                stats = self.runner.loop_stats()
                if stats is not None:
                    for key in ("late_p50_us", "late_p99_us", "misses", "overruns"):
                        if hasattr(stats, key):
                            extra[f"loop.{key}"] = getattr(stats, key)
                self._diag_pub.publish(self.io.diagnostics_msg(extra))

        def _on_rearm(self, request: Any, response: Any) -> Any:
            ok, message = self.io.rearm()
            response.success = ok
            response.message = message
            return response

        # -- lifecycle ----------------------------------------------------------------------------

        def on_activate(self, state: State) -> TransitionCallbackReturn:
            result = super().on_activate(state)  # enables the lifecycle publishers
            self.runner.start()
            self.get_logger().info("active: control loop running")
            return result

        def on_deactivate(self, state: State) -> TransitionCallbackReturn:
            stats = self.runner.stop()  # brakes to hold while the publishers are still enabled
            self.io.imagination_off()  # its publisher is disabled next
            self.get_logger().info(f"inactive: holding; loop {stats}")
            return super().on_deactivate(state)

        def on_cleanup(self, state: State) -> TransitionCallbackReturn:
            self._release()
            return TransitionCallbackReturn.SUCCESS

        def on_shutdown(self, state: State) -> TransitionCallbackReturn:
            if self.runner is not None and self.runner.running:
                self.runner.stop()
            self._release()
            return TransitionCallbackReturn.SUCCESS

        def on_error(self, state: State) -> TransitionCallbackReturn:
            self.get_logger().error("error transition: stopping and releasing everything")
            return self.on_shutdown(state)

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
            self._surprise_pub = self._imagination_pub = None
            if self.runtime is not None:
                self.runtime.close()
            self.runtime = self.controller = self.io = self.runner = None

    return WamControllerNode


def main(args: list[str] | None = None) -> int:
    try:
        import rclpy
        from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
    except ImportError as exc:
        print(
            f"wam_controller needs ROS 2's rclpy ({exc}). Source your ROS 2 installation "
            "(source /opt/ros/<distro>/setup.bash) and your workspace, or run the same controller "
            "without ROS 2: wam-control run --config <yaml> --model <onnx>",
            file=sys.stderr,
        )
        return 1
    rclpy.init(args=args)
    node = _node_class()()
    if node.get_parameter("autostart").value:
        node.trigger_configure()
        node.trigger_activate()
    executor = MultiThreadedExecutor()
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.on_shutdown(None)
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
