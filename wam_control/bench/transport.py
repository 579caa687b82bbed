"""`wam-control bench transport`: loopback DDS latency through the transport into the runtime and out.

Two processes on one machine, Cyclone DDS pinned to loopback:
- robot side (a child process): publishes a 7-joint JointState at --joint-hz and a 640x480 rgb8 Image
  at --image-hz, each stamped with the send time (CLOCK_MONOTONIC, shared by all processes), and
  subscribes to the command topic;
- controller side (this process): the same subscriptions, converters and `ControllerIO` as
  `wam-control run`, storing into a real `ObservationBuffers`; latency = the time the value is in the
  buffers minus its send time. It also publishes one JointTrajectory command per tick at --control-hz
  (built by `ControllerIO.command_msg`, as the node does); the robot side measures tick -> arrival
  (the tick time rides in the first position value: the message has the size of a real command).

Final line: `image_p50_us=... joint_p50_us=... command_p50_us=...` followed by the p99 values.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

JOINTS = tuple(f"fr3_joint{i}" for i in range(1, 8))
COMMAND_TOPIC = "/joint_trajectory_controller/joint_trajectory"


def _robot(out: Path, seconds: float, joint_hz: float, image_hz: float, hw: tuple[int, int]) -> None:
    from wam_control.transport import dds_types as d
    from wam_control.transport import messages as M
    from wam_control.transport.dds import DdsNode

    T = M.dds_msg_types()
    node = DdsNode("bench_robot")
    arrivals: list[float] = []

    def on_cmd(msg) -> None:  # type: ignore[no-untyped-def]
        arrivals.append(time.monotonic() - msg.points[0].positions[0])

    node.subscription(COMMAND_TOPIC, d.JointTrajectory_, on_cmd, "reliable")
    js = node.publisher("/joint_states", d.JointState_, "joint_states")
    img = node.publisher("/camera/image_raw", d.Image_, "sensor_data")
    end = time.monotonic() + 10.0
    while (js.matched() == 0 or img.matched() == 0) and time.monotonic() < end:
        time.sleep(0.01)
    time.sleep(0.5)  # let the peer's readers finish matching before the first sample
    frame = np.random.default_rng(0).integers(0, 255, (*hw, 3), dtype=np.uint8)
    q = np.linspace(-0.5, 0.5, len(JOINTS))
    t0 = time.monotonic()
    next_js, next_img = t0, t0
    while time.monotonic() - t0 < seconds:
        now = time.monotonic()
        if now >= next_js:
            next_js += 1.0 / joint_hz
            js.publish(M.joint_state_msg(T, JOINTS, q, q * 0, None, stamp_s=time.monotonic()))
        if now >= next_img:
            next_img += 1.0 / image_hz
            img.publish(M.image_msg(T, frame, "rgb8", stamp_s=time.monotonic()))
        time.sleep(max(0.0, min(next_js, next_img) - time.monotonic()))
    time.sleep(0.3)
    out.write_text(json.dumps({"command_s": arrivals}))
    node.close()


class _Ingest:
    """The controller's input side (`Controller.on_*` stores into the buffers exactly like this)."""

    def __init__(self, config, buffers) -> None:  # type: ignore[no-untyped-def]
        self.config = config
        self.buffers = buffers
        self.joint_s: list[float] = []
        self.image_s: list[float] = []

    def on_joint_state(self, names, positions, velocities, stamp_s):  # type: ignore[no-untyped-def]
        why = self.buffers.put_joint_state(names, positions, velocities, stamp_s)
        self.joint_s.append(time.monotonic() - stamp_s)
        return why

    def on_image(self, camera, rgb, stamp_s):  # type: ignore[no-untyped-def]
        why = self.buffers.put_image(camera, rgb, stamp_s)
        self.image_s.append(time.monotonic() - stamp_s)
        return why


def _pct_us(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1e6, q)) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="wam-control bench transport", description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--joint-hz", type=float, default=500.0)
    ap.add_argument("--image-hz", type=float, default=30.0)
    ap.add_argument("--control-hz", type=float, default=500.0)
    ap.add_argument("--image-hw", default="480x640", help="camera HxW (rgb8)")
    ap.add_argument("--model-hw", default="", help="buffer HxW (the model's input); default: no resize")
    ap.add_argument("--role", default="controller", help=argparse.SUPPRESS)
    ap.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    hw = tuple(int(x) for x in args.image_hw.lower().split("x"))
    if args.role == "robot":
        _robot(Path(args.out), args.seconds, args.joint_hz, args.image_hz, (hw[0], hw[1]))
        return 0

    import tempfile

    from wam_control.config import load_config, preset_path
    from wam_control.runtime.buffers import ObservationBuffers
    from wam_control.runtime.clock import MonotonicClock
    from wam_control.runtime.controller import JointCommand
    from wam_control.transport import dds_types as d
    from wam_control.transport import qos
    from wam_control.transport.adapter import ControllerIO
    from wam_control.transport.dds import DdsNode, pin_loopback
    from wam_control.transport.messages import dds_msg_types

    pin_loopback()
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(100, 200)))
    config = load_config(preset_path("fr3"))
    model_hw = tuple(int(x) for x in args.model_hw.lower().split("x")) if args.model_hw else hw
    buffers = ObservationBuffers(config.joint_names, config.cameras, (model_hw[0], model_hw[1]), MonotonicClock(),
                                 config.timeouts)  # fmt: skip
    ingest = _Ingest(config, buffers)
    io = ControllerIO(ingest, dds_msg_types(), "wam_controller")
    node = DdsNode("wam_controller")
    node.subscription(config.topics.joint_states, d.JointState_, io.on_joint_state, qos.JOINT_STATES)
    node.subscription("/camera/image_raw", d.Image_, lambda m: io.on_image("scene", m), qos.SENSOR_DATA)
    cmd_pub = node.publisher(COMMAND_TOPIC, d.JointTrajectory_, qos.RELIABLE)

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "robot.json"
        robot = subprocess.Popen(
            [sys.executable, "-m", "wam_control.bench.transport", "--role", "robot", "--out", str(out),
             "--seconds", str(args.seconds), "--joint-hz", str(args.joint_hz), "--image-hz", str(args.image_hz),
             "--image-hw", args.image_hw],
            env=dict(os.environ),
        )  # fmt: skip
        end = time.monotonic() + 10.0
        while cmd_pub.matched() == 0 and time.monotonic() < end:
            time.sleep(0.01)
        cmd = JointCommand(0, np.zeros(len(JOINTS)), np.zeros(len(JOINTS)), np.zeros(len(JOINTS)))
        period = 1.0 / args.control_hz
        deadline = time.monotonic()
        tick = 0
        while robot.poll() is None:
            deadline += period
            tick += 1
            cmd.tick = tick
            cmd.positions[0] = time.monotonic()  # the tick time, read back by the robot side
            cmd_pub.publish(io.command_msg(cmd))
            time.sleep(max(0.0, deadline - time.monotonic()))
        robot.wait()
        command_s = json.loads(out.read_text())["command_s"] if out.exists() else []
    node.close()

    rejected = sum(io.monitor.rejected.values())
    print(f"samples: joint={len(ingest.joint_s)} image={len(ingest.image_s)} command={len(command_s)} "
          f"rejected={rejected} image={hw[0]}x{hw[1]} rgb8 buffers={model_hw[0]}x{model_hw[1]}")  # fmt: skip
    for name, values in (("image", ingest.image_s), ("joint", ingest.joint_s), ("command", command_s)):
        print(f"  {name:<8} p50 {_pct_us(values, 50):9.0f} us  p90 {_pct_us(values, 90):9.0f} us  "
              f"p99 {_pct_us(values, 99):9.0f} us")  # fmt: skip
    print(
        f"image_p50_us={_pct_us(ingest.image_s, 50):.0f} joint_p50_us={_pct_us(ingest.joint_s, 50):.0f} "
        f"command_p50_us={_pct_us(command_s, 50):.0f} image_p99_us={_pct_us(ingest.image_s, 99):.0f} "
        f"joint_p99_us={_pct_us(ingest.joint_s, 99):.0f} command_p99_us={_pct_us(command_s, 99):.0f}"
    )
    return 0 if ingest.joint_s and ingest.image_s and command_s else 1


if __name__ == "__main__":
    sys.exit(main())
