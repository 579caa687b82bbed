"""`wam-control run`: the controller speaking ROS 2 wire format over Cyclone DDS, without a ROS install.

The same Controller, converters and topic/QoS choices as the rclpy node (`ros_node.py`); only the
plumbing differs. ROS 2 tools see its topics (`ros2 topic echo /joint_trajectory_controller/...`) but
not a node (`ros2 node list`): a plain DDS participant is not a ROS node.

Topics (names from the config's `topics:`; `~` expands to /<namespace>/<node name>):
  in   /joint_states (JointState, reliable/10), /camera/image_raw + /camera/camera_info (sensor data),
       ~/estop (std_msgs/Bool, reliable), ~/rearm (std_msgs/Bool: `true` requests a re-arm, because DDS
       without ROS has no services; the rclpy node offers std_srvs/Trigger on the same name),
       /clock (with --use-sim-time: stamps follow sim time),
       ~/instruction (std_msgs/String, the task prompt; latched reader and volatile reader, for a model
       that takes a prompt)
  out  the command topic (JointTrajectory or Float64MultiArray, reliable), each extra DOF's command topic
       (extra_dofs: a gripper's controller, JointTrajectory or Float64MultiArray), ~/predicted_chunk (on change),
       /diagnostics (about 1 Hz), ~/rearm_result (std_msgs/Bool, the answer to each re-arm request),
       ~/surprise (std_msgs/Float64, the surprise score, 20 Hz; when surprise.enabled),
       imagination.topic (sensor_msgs/Image rgb8, the decoded predicted frame, at most
       imagination.max_rate_hz and only while someone subscribes; when imagination.enabled)
"""

from __future__ import annotations

import argparse
import functools
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from wam_control.transport import qos
from wam_control.transport.adapter import ControllerIO, ControlRunner, build_runtime
from wam_control.transport.endpoints import ControllerEndpoints

log = logging.getLogger("wam_control.run")


class DdsControllerNode:
    """The DDS shim: creates `ControllerEndpoints` on a `DdsNode`, plus the DDS-only re-arm topics."""

    def __init__(
        self,
        controller: Any,
        node: Any,
        use_sim_time: bool = False,
        diagnostics_period_s: float = 1.0,
        *,
        surprise: Any = None,
        imagination: Any = None,
        tokenizer: Any = None,
    ) -> None:
        from wam_control.transport import dds_types as d
        from wam_control.transport.messages import bool_msg, dds_msg_types

        self.controller = controller
        self.node = node
        self.io = ControllerIO(controller, dds_msg_types(), node.name, surprise=surprise, imagination=imagination)
        self.io.tokenizer = tokenizer
        self.endpoints = ControllerEndpoints(self.io, clock=use_sim_time)  # DDS stamps with /clock itself
        latest: list[Any] = []
        self.subscriptions = []
        for e in self.endpoints.subscriptions:
            sub = node.subscription(e.topic, getattr(d, e.kind + "_"), e.handler, e.profile)
            self.subscriptions.append(sub)
            if e.handler is None:
                latest.append(_Polled(sub))
        publishers = {p.key: node.publisher(p.topic, getattr(d, p.kind + "_"), p.profile)
                      for p in self.endpoints.publications}  # fmt: skip
        self.endpoints.bind({k: pub.publish for k, pub in publishers.items()}, latest)
        self.command_pub = publishers["command"]
        self.imagination_pub = publishers.get("imagination")
        # DDS without ROS has no services: re-arm is a Bool request topic with a Bool answer topic.
        t = controller.config.topics
        self.subscriptions.append(node.subscription(t.rearm_service, d.Bool_, self._on_rearm, qos.RELIABLE))
        self.rearm_result_pub = node.publisher(t.rearm_service + "_result", d.Bool_, qos.RELIABLE)
        self._bool_msg = functools.partial(bool_msg, self.io.T)
        self._diag_period = diagnostics_period_s
        self.last_rearm = ""
        self.runner = ControlRunner(controller, self.endpoints.publish_command, self._aux, name=f"{node.name}-loop")

    def _on_rearm(self, msg: Any) -> None:
        if not msg.data:
            return
        ok, message = self.io.rearm()
        self.last_rearm = f"{'ok' if ok else 'refused'}: {message}"
        self.rearm_result_pub.publish(self._bool_msg(ok))

    def _aux(self) -> None:
        subscribers = self.imagination_pub.subscription_count if self.imagination_pub is not None else None
        self.endpoints.side_duties(self._diag_period, self.transport_values, subscribers)

    def transport_values(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "domain_id": self.node.domain_id,
            "command_publish_failures": self.command_pub.failed,
            **self.runner.transport_values(),
        }
        if self.command_pub.last_error:
            out["command_publish_last_error"] = self.command_pub.last_error
        if self.last_rearm:
            out["rearm.last"] = self.last_rearm
        return out

    def start(self) -> None:
        self.runner.start()

    def stop(self) -> Any:
        stats = self.runner.stop()
        self.io.imagination_off()
        return stats


class _Polled:
    """A keep-the-latest DDS reader for `side_duties`. A transient-local reader's historical samples
    (a prompt written before it matched) arrive without a data event in cyclonedds-python: poll first."""

    def __init__(self, sub: Any) -> None:
        self.sub = sub

    def take_latest(self) -> Any:
        self.sub.poll()
        return self.sub.take_latest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="wam-control run",
        description="Run the WAM controller over Cyclone DDS (ROS 2 wire format, no ROS 2 install needed).",
    )
    parser.add_argument("--config", required=True, help="deployment YAML, or a preset name (fr3, panda)")
    parser.add_argument("--model", help="ONNX model (default: inference.model of the config)")
    parser.add_argument("--backend", help="auto | onnxruntime | tensorrt | torch (default: from the config)")
    parser.add_argument(
        "--worker", choices=("thread", "process"), help="inference worker (default: from the config)"
    )
    parser.add_argument("--command-interface", choices=("joint_trajectory", "forward_position"))
    parser.add_argument("--node-name", default="wam_controller", help="name used to expand ~/ topics")
    parser.add_argument("--namespace", default="", help="ROS namespace for relative and ~/ topics")
    parser.add_argument("--domain-id", type=int, help="DDS domain (default: ROS_DOMAIN_ID, else 0)")
    parser.add_argument("--use-sim-time", action="store_true", help="stamp messages with /clock time")
    parser.add_argument(
        "--duration", type=float, default=0.0, help="stop after this many seconds (0: run until Ctrl-C)"
    )
    parser.add_argument(
        "--no-loopback",
        action="store_true",
        help="do not pin DDS to the loopback interface (default pins it unless CYCLONEDDS_URI is set)",
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    from wam_control.config import ConfigError, load_config, preset_path

    try:
        config_path = Path(args.config) if Path(args.config).exists() else preset_path(args.config)
        overrides: dict[str, Any] = {}
        if args.command_interface:
            overrides["command_interface"] = args.command_interface
        config = load_config(config_path, overrides)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"wam-control run: {exc}", file=sys.stderr)
        return 2
    try:
        runtime = build_runtime(config, args.model, args.backend, args.worker)
    except (ValueError, FileNotFoundError, ImportError) as exc:  # incl. CalibrationError, DecoderError
        print(f"wam-control run: {exc}", file=sys.stderr)
        return 2

    from wam_control.transport.dds import DdsNode

    node = DdsNode(args.node_name, args.namespace, args.domain_id, loopback=not args.no_loopback)
    controller = runtime.controller
    runner = DdsControllerNode(
        controller,
        node,
        use_sim_time=args.use_sim_time,
        surprise=runtime.surprise,
        imagination=runtime.imagination,
        tokenizer=runtime.tokenizer,
    )
    topic = runner.command_pub.topic
    log.info(
        "%s on DDS domain %d: %s -> %s (%s, %g Hz, %d point(s))",
        node.resolve("~"), node.domain_id, config.topics.joint_states, topic, config.command_interface,
        config.control_hz, config.command_horizon_points,
    )  # fmt: skip

    stop = threading.Event()

    def _on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _on_signal)
    runner.start()
    try:
        stop.wait(args.duration if args.duration > 0 else None)
    finally:
        stats = runner.stop()
        status = controller.status()
        runtime.close()
        node.close()
    loop_line = stats.line() if stats is not None else "loop not started"
    log.info(
        "stopped: %s; commands published %d; %s", status.message, runner.command_pub.published, loop_line
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
