"""`wam-control bench ros-node`: the controller in a real ROS 2 graph, rclpy node vs `wam-control run`.

This process is the robot: an rclpy node (Fast DDS, ROS 2's default middleware) that publishes
/joint_states at 200 Hz (a first-order arm following the commands) and two 96x96 rgb8 cameras at 15 Hz,
and records every command it receives. Against it, one after the other:

  ros  `wam_controller` (the rclpy lifecycle node) in its own process, started with the parameters
       robot.launch.py gives it and configured/activated through its lifecycle services;
  dds  `wam-control run` in its own process (Cyclone DDS, ROS 2 wire format), same config and model.

Each is measured over the same window after a warm-up: command rate and the p99 interval between
commands (at the robot), observation-to-chunk delay and starvations (from the controller's
/diagnostics). Goal (issue: ROS 2 for real): rate >= 0.99 x control_hz, p99 interval <= 2 periods,
0 starvations, and the rclpy node within 10 % of the DDS path. The surprise monitor is off: the
robot's camera frames are noise, not a scene the model knows.

Final line: ros_* and dds_* figures, then ratios.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

JOINT_HZ = 200.0
CAMERA_HZ = 15.0
IMAGE_HW = (96, 96)


@dataclass
class Measurement:
    command_rate_hz: float
    interval_p50_ms: float
    interval_p99_ms: float
    obs_to_chunk_p50_ms: float
    starvations: int
    commands: int
    exit_code: int | None


class Robot:
    """The rclpy robot: publishes joint states and camera frames on its own thread, records commands."""

    def __init__(self, peer: Any, config: Any, command_topic: str) -> None:
        from sensor_msgs.msg import Image, JointState
        from trajectory_msgs.msg import JointTrajectory

        from wam_control.transport import messages as M
        from wam_control.transport import qos

        self.peer = peer
        self.config = config
        self.T = M.rclpy_msg_types()
        self.M = M
        self.joints = list(config.joint_names)
        lim = config.limit_arrays()
        self.q = np.clip(np.zeros(len(self.joints)), lim.q_min + 0.3, lim.q_max - 0.3)
        self.commands = peer.record(command_topic, JointTrajectory, qos.RELIABLE, maxlen=None)
        self.pub_js = peer.publisher(config.topics.joint_states, JointState, qos.JOINT_STATES)
        self.pub_img = [
            peer.publisher(topic, Image, qos.SENSOR_DATA) for topic in config.topics.camera_images.values()
        ]
        rng = np.random.default_rng(0)
        self.frame = rng.integers(0, 255, (*IMAGE_HW, 3), dtype=np.uint8)
        self.joint_states_sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="robot", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)

    def _run(self) -> None:
        M, T = self.M, self.T
        period = 1.0 / JOINT_HZ
        start = time.monotonic()
        next_img = start
        k = 0
        while not self._stop.is_set():
            last = self.commands.latest()
            if last is not None and last.points:
                target = np.asarray(last.points[0].positions)
                if target.shape == self.q.shape:
                    self.q += (target - self.q) * min(1.0, period / 0.02)
            now = time.monotonic()
            self.pub_js.publish(M.joint_state_msg(T, self.joints, self.q, stamp_s=time.time()))
            self.joint_states_sent += 1
            if now >= next_img:
                next_img += 1.0 / CAMERA_HZ
                for pub in self.pub_img:
                    pub.publish(M.image_msg(T, self.frame, "rgb8", stamp_s=time.time()))
            k += 1
            delay = start + k * period - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:  # late: keep the grid, no burst
                k = int((time.monotonic() - start) / period)


def bench_config(config_path: Path, model: str | None, out_dir: Path) -> Path:
    """The deployment YAML with absolute paths and the surprise monitor off, as a ROS 2 parameter file
    both controllers can take (`--config` and `--params-file`)."""
    import yaml

    from wam_control.config import load_config, read_config_data

    data = read_config_data(config_path)
    resolved = load_config(config_path)
    inference = dict(data.get("inference", {}))
    inference["model"] = str(Path(model).resolve()) if model else str(resolved.inference.model)
    data["inference"] = inference
    data["surprise"] = {**data.get("surprise", {}), "enabled": False}
    data["imagination"] = {**data.get("imagination", {}), "enabled": False}
    path = out_dir / "bench_ros_node.yaml"
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": data}}, sort_keys=False))
    return path


def _diag_value(rec: Any, suffix: str, key: str) -> float:
    msg = rec.latest()
    if msg is None:
        return math.nan
    for status in msg.status:
        if status.name.endswith(suffix):
            for kv in status.values:
                if kv.key == key:
                    try:
                        return float(kv.value)
                    except ValueError:
                        return math.nan
    return math.nan


def measure(robot: Robot, diag: Any, proc: subprocess.Popen[bytes], period: float, warmup_s: float,
            seconds: float, startup_timeout_s: float) -> Measurement:  # fmt: skip
    """Wait for the first command, warm up, then measure `seconds` of commands at the robot."""
    deadline = time.monotonic() + startup_timeout_s
    while robot.commands.count == 0:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"no command from the controller (exit code {proc.poll()})")
        time.sleep(0.05)
    time.sleep(warmup_s)
    starv0 = _diag_value(diag, ": controller", "scheduler.starvation_events")
    t0 = time.monotonic()
    time.sleep(seconds)
    t1 = time.monotonic()
    # The controller publishes /diagnostics about once a second: wait for one from after the window.
    diag.clear()
    diag.wait(timeout_s=3.0)
    arrivals = np.array([t for t, _ in robot.commands.items() if t0 <= t <= t1])
    intervals = np.diff(arrivals) * 1e3 if arrivals.size > 1 else np.array([math.nan])
    starv1 = _diag_value(diag, ": controller", "scheduler.starvation_events")
    delay_ticks = _diag_value(diag, ": controller", "scheduler.delay_ticks_p50")
    return Measurement(
        command_rate_hz=arrivals.size / (t1 - t0),
        interval_p50_ms=float(np.percentile(intervals, 50)),
        interval_p99_ms=float(np.percentile(intervals, 99)),
        obs_to_chunk_p50_ms=delay_ticks * period * 1e3,
        starvations=int(starv1 - starv0) if math.isfinite(starv1 - starv0) else -1,
        commands=int(arrivals.size),
        exit_code=None,
    )


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGINT, timeout_s: float = 15.0) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5.0)
    return int(proc.returncode)


def child_env(domain: int) -> dict[str, str]:
    """Both controllers on the robot's domain, DDS on loopback (unless the user configured otherwise)."""
    from wam_control.transport.dds import configure_fast_dds

    env = dict(os.environ)
    env["ROS_DOMAIN_ID"] = str(domain)
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env["PYTHONUNBUFFERED"] = "1"
    configure_fast_dds(env)
    return env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="wam-control bench ros-node", description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="fr3", help="deployment YAML or preset name (default fr3)")
    ap.add_argument("--model", help="ONNX model (default: the config's)")
    ap.add_argument("--seconds", type=float, default=10.0, help="measurement window per controller")
    ap.add_argument("--warmup-s", type=float, default=3.0)
    ap.add_argument("--startup-timeout-s", type=float, default=60.0)
    ap.add_argument("--only", choices=("ros", "dds"), help="measure one path only")
    ap.add_argument("--ros-executor", choices=("auto", "events", "single"), default="auto",
                    help="the rclpy node's `executor` parameter (default auto: EventsExecutor where available)")
    ap.add_argument("--domain-id", type=int, help="default: a private one, 100 + pid %% 100")
    ap.add_argument("--out", type=Path, help="folder for the controllers' logs (default: a temp folder)")
    args = ap.parse_args(argv)

    try:
        import rclpy  # noqa: F401
    except ImportError:
        print("bench ros-node needs rclpy: pip install 'wam_control[ros]' (see README)", file=sys.stderr)
        return 2
    from trajectory_msgs.msg import JointTrajectory  # noqa: F401

    from wam_control.config import load_config, preset_path
    from wam_control.transport.dds import pin_loopback
    from wam_control.transport.launch_params import controller_parameters, ros_arguments
    from wam_control.transport.ros_peer import RclpyPeer

    config_path = Path(args.config) if Path(args.config).exists() else preset_path(args.config)
    out = args.out or Path(tempfile.mkdtemp(prefix="wam_bench_ros_node_"))
    out.mkdir(parents=True, exist_ok=True)
    cfg_file = bench_config(config_path, args.model, out)
    config = load_config(cfg_file)
    domain = args.domain_id if args.domain_id is not None else 100 + os.getpid() % 100
    env = child_env(domain)
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    pin_loopback(env)  # the `wam-control run` child: loopback + the Fast DDS compatibility setting
    period = config.control_period
    topic = config.topics.trajectory_command

    results: dict[str, Measurement] = {}
    with RclpyPeer("wam_bench_robot", domain_id=domain) as peer:
        from diagnostic_msgs.msg import DiagnosticArray

        from wam_control.transport import qos

        robot = Robot(peer, config, topic)
        diag = peer.record(config.topics.diagnostics, DiagnosticArray, qos.DIAGNOSTICS, maxlen=10)
        robot.start()
        try:
            for path in ("ros", "dds"):
                if args.only and args.only != path:
                    continue
                robot.commands.clear()
                robot.commands.count = 0
                diag.clear()
                log = open(out / f"{path}.log", "wb")  # noqa: SIM115 (closed below, after the process)
                if path == "ros":
                    cmd = [sys.executable, "-m", "wam_control.transport.ros_node",  # = the wam_controller script
                           *ros_arguments([*controller_parameters(str(cfg_file)), {"executor": args.ros_executor}],
                                          params_dir=out)]  # fmt: skip
                else:
                    cmd = [sys.executable, "-m", "wam_control.transport.dds_node", "--config", str(cfg_file),
                           "--domain-id", str(domain)]  # fmt: skip
                print(f"[{path}] {' '.join(cmd)}", flush=True)
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
                try:
                    if path == "ros":
                        life = peer.lifecycle("/wam_controller")
                        if not life.wait_for_service(args.startup_timeout_s):
                            raise RuntimeError("wam_controller's lifecycle services did not appear")
                        if not (life.change("configure") and life.change("activate")):
                            raise RuntimeError(f"configure/activate failed; see {out / 'ros.log'}")
                    m = measure(robot, diag, proc, period, args.warmup_s, args.seconds, args.startup_timeout_s)
                finally:
                    rc = stop_process(proc)
                    log.close()
                m.exit_code = rc
                results[path] = m
                print(
                    f"[{path}] {m.commands} commands: {m.command_rate_hz:.1f} Hz, interval p50 "
                    f"{m.interval_p50_ms:.2f} ms p99 {m.interval_p99_ms:.2f} ms, obs->chunk p50 "
                    f"{m.obs_to_chunk_p50_ms:.1f} ms, starvations {m.starvations}, exit code {rc}",
                    flush=True,
                )
        finally:
            robot.stop()  # before the peer goes: its thread publishes

    fields = []
    for path, m in results.items():
        fields += [
            f"{path}_command_rate_hz={m.command_rate_hz:.1f}",
            f"{path}_interval_p99_ms={m.interval_p99_ms:.2f}",
            f"{path}_obs_to_chunk_p50_ms={m.obs_to_chunk_p50_ms:.1f}",
            f"{path}_starvations={m.starvations}",
            f"{path}_exit_code={m.exit_code}",
        ]
    if len(results) == 2:
        r, d = results["ros"], results["dds"]
        fields += [
            f"rate_ratio_ros_vs_dds={r.command_rate_hz / d.command_rate_hz:.3f}",
            f"interval_p99_ratio_ros_vs_dds={r.interval_p99_ms / d.interval_p99_ms:.3f}",
        ]
    fields.append(f"ros_executor={args.ros_executor} control_hz={config.control_hz:g}")
    print(" ".join(fields))
    return 0


if __name__ == "__main__":
    sys.exit(main())
