"""Cross-vendor interop with ROS 2's default middleware, no user configuration: an rclpy robot node
(Fast DDS) drives `wam-control run` (Cyclone DDS, ROS 2 wire format); rclpy's graph API sees the DDS
controller's topics with their ROS types; and `wam-control sim` / `wam-control run` stop cleanly on
SIGINT and SIGTERM. (The Cyclone sim driving the rclpy node is in test_ros_node.py.)"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="rclpy (ROS 2): scripts/setup.sh installs it from PyPI")

from diagnostic_msgs.msg import DiagnosticArray

from wam_control.bench.ros_node import Robot, bench_config
from wam_control.config import load_config
from wam_control.transport import qos
from wam_control.transport.ros_peer import RclpyPeer

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def _wait(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")


def _env(domain: int) -> dict[str, str]:
    # PYTHONFAULTHANDLER: a process that does not stop dumps every thread's stack on the SIGABRT below
    env = {**os.environ, "ROS_DOMAIN_ID": str(domain), "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"}
    env.pop("CYCLONEDDS_URI", None)  # `wam-control run` configures Cyclone itself: no user configuration
    return env


def _stop(proc: subprocess.Popen[bytes], sig: int) -> tuple[int, str]:
    proc.send_signal(sig)
    try:
        out, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)  # where it hangs, in the output (seen once in CI: not reproduced)
        try:
            out, _ = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        raise AssertionError(f"no exit within 20 s of signal {sig}:\n{out.decode(errors='replace')}") from None
    return proc.returncode, out.decode(errors="replace")


def test_rclpy_robot_drives_wam_control_run(tmp_path: Path) -> None:
    cfg_file = bench_config(REPO / "config" / "fr3.yaml", None, tmp_path)  # surprise off: noise frames
    config = load_config(cfg_file)
    domain = random.randint(100, 200)
    with RclpyPeer("rclpy_robot", domain_id=domain) as peer:
        robot = Robot(peer, config, config.topics.trajectory_command)
        diag = peer.record("/diagnostics", DiagnosticArray, qos.DIAGNOSTICS, maxlen=20)
        robot.start()
        proc = subprocess.Popen(
            [sys.executable, "-m", "wam_control.cli", "run", "--config", str(cfg_file)],
            env=_env(domain), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            _wait(lambda: robot.commands.count > 0 or proc.poll() is not None, 60.0, "the first command")
            assert proc.poll() is None
            n0, t0 = robot.commands.count, time.monotonic()
            time.sleep(2.0)
            rate = (robot.commands.count - n0) / (time.monotonic() - t0)
            assert rate > 0.2 * config.control_hz, f"{rate:.0f} commands/s"  # per tick; the rate: bench ros-node

            # rclpy's graph API sees the plain DDS participant's topics with their ROS 2 types.
            topics = dict(peer.node.get_topic_names_and_types())
            assert topics[config.topics.trajectory_command] == ["trajectory_msgs/msg/JointTrajectory"]
            assert topics["/wam_controller/predicted_chunk"] == ["trajectory_msgs/msg/JointTrajectory"]
            assert "diagnostic_msgs/msg/DiagnosticArray" in topics["/diagnostics"]
            assert diag.wait(lambda m: any(s.name == "wam_controller: controller" for s in m.status), 5.0)

            # Limits hold on what the robot received.
            lim = config.limit_arrays()
            msgs = [m for _, m in robot.commands.items()]
            q = np.array([m.points[0].positions for m in msgs])
            v = np.array([m.points[0].velocities for m in msgs])
            assert q.shape[1] == config.dof and list(msgs[-1].joint_names) == list(config.joint_names)
            assert np.all(np.abs(v) <= lim.v_max + 1e-9)
            assert np.all(q >= lim.q_min - 1e-9) and np.all(q <= lim.q_max + 1e-9)

            # The robot goes silent: the controller keeps publishing and brakes to hold.
            robot.stop()
            stopped = robot.commands.count
            time.sleep(1.5)
            tail = [m for _, m in robot.commands.items()[-20:]]
            assert robot.commands.count > stopped + 100  # still commanding, every tick
            assert all(np.allclose(m.points[0].velocities, 0.0, atol=1e-9) for m in tail)
            held = np.array([m.points[0].positions for m in tail])
            assert np.ptp(held, axis=0).max() < 1e-9
        finally:
            robot.stop()
            rc, out = _stop(proc, signal.SIGINT)
    assert rc == 0 and "Traceback" not in out, out[-3000:]
    assert "stopped:" in out


@pytest.mark.parametrize(
    ("transport", "sig"), [("dds", signal.SIGINT), ("rclpy", signal.SIGTERM), ("rclpy", signal.SIGINT)]
)
def test_wam_control_sim_stops_cleanly_on_signals(transport: str, sig: int) -> None:
    domain = random.randint(100, 200)
    proc = subprocess.Popen(
        [sys.executable, "-m", "wam_control.cli", "sim", "--transport", transport, "--clock", "realtime",
         "--cameras", "scene"],
        env=_env(domain), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    with RclpyPeer("sim_watcher", domain_id=domain) as peer:
        assert peer.wait_for_publisher("/joint_states", 60.0), "the sim never published"
    time.sleep(0.5)
    rc, out = _stop(proc, sig)
    assert rc == 0 and "Traceback" not in out, out[-3000:]
    assert "stopped:" in out
