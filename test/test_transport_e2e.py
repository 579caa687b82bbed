"""End-to-end over real DDS (loopback), three processes plus `wam-control run`.

- plant: a first-order arm that follows the commands, publishing /joint_states (200 Hz) and
  /camera/image_raw and /wrist_camera/image_raw (bgr8, 15 Hz) until it has followed commands for a few seconds, then goes silent;
- controller: `wam-control run` as a subprocess with a small random model (make_test_model);
- checker: records every command, predicted chunk and diagnostics message.

Asserted: commands arrive at >= 50 % of the configured rate (a correctness test, not a timing test),
respect the limits (the filter's v and a fields, positions inside the margins, backward differences
of positions bounded by v_max over the elapsed ticks), and when the inputs stop the controller keeps
publishing and brakes to hold: velocity reaches zero and the position settles.

This file is also the peer program: `python test_transport_e2e.py plant|checker ...`.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

HZ = 200.0  # configured control rate for this test (a loaded 2-core CI box keeps up with it)
POSE = [0.0, -0.3, 0.0, -2.0, 0.0, 1.8, 0.8]
ACTIVE_S = 4.0  # plant follows commands this long after the first one, then stops publishing
HOLD_S = 2.5  # controller keeps running this long after the plant stopped


def _plant(out: Path, joints: list[str], timeout_s: float) -> None:
    from wam_control.transport import dds_types as d
    from wam_control.transport import messages as M
    from wam_control.transport.dds import DdsNode

    T = M.dds_msg_types()
    node = DdsNode("plant")
    cmd = node.subscription(
        "/joint_trajectory_controller/joint_trajectory", d.JointTrajectory_, None, "reliable"
    )
    js_pub = node.publisher("/joint_states", d.JointState_, "joint_states")
    img_pubs = [
        node.publisher(t, d.Image_, "sensor_data") for t in ("/camera/image_raw", "/wrist_camera/image_raw")
    ]
    q = np.array(POSE)
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)
    t0 = time.monotonic()
    first_cmd = None
    next_img = t0
    dt = 1 / 200.0
    while True:
        now = time.monotonic()
        msg = cmd.latest
        if msg is not None and msg.points:
            if first_cmd is None:
                first_cmd = now
            target = np.asarray(msg.points[0].positions)
            q += (target - q) * min(1.0, dt / 0.02)
        if first_cmd is not None and now - first_cmd > ACTIVE_S:
            break
        if now - t0 > timeout_s:
            break
        js_pub.publish(M.joint_state_msg(T, joints + ["gripper"], np.append(q, 0.0), stamp_s=time.time()))
        if now >= next_img:
            next_img = now + 1 / 15.0
            for img_pub in img_pubs:
                img_pub.publish(M.image_msg(T, frame, "bgr8", stamp_s=time.time()))
        time.sleep(max(0.0, dt - (time.monotonic() - now)))
    out.write_text(json.dumps({"stop_time": time.time(), "first_cmd": first_cmd is not None}))
    node.close()


def _checker(out: Path, duration_s: float, stop_file: Path) -> None:
    from wam_control.transport import dds_types as d
    from wam_control.transport import messages as M
    from wam_control.transport.dds import DdsNode

    rows: list[list[float]] = []
    chunks: list[int] = []
    diags: list[dict] = []

    def on_cmd(msg) -> None:
        p = msg.points[0]
        rows.append(
            [
                time.time(),
                *p.positions,
                *p.velocities,
                *p.accelerations,
                len(msg.points),
                msg.header.stamp.sec,
            ]
        )

    def on_diag(msg) -> None:
        _, statuses = M.diagnostic_array_from_msg(msg)
        diags.extend({"name": s.name, "level": s.level, "message": s.message} for s in statuses)

    node = DdsNode("checker")
    node.subscription("/joint_trajectory_controller/joint_trajectory", d.JointTrajectory_, on_cmd, "reliable")
    node.subscription("/wam_controller/predicted_chunk", d.JointTrajectory_, lambda m: chunks.append(len(m.points)),
                      "predicted_chunk")  # fmt: skip
    node.subscription("/diagnostics", d.DiagnosticArray_, on_diag, "diagnostics")
    deadline = time.monotonic() + duration_s
    while time.monotonic() < deadline and not stop_file.exists():
        time.sleep(0.05)
    node.close()
    np.save(out.with_suffix(".npy"), np.array(rows, dtype=np.float64).reshape(len(rows), -1))
    out.write_text(json.dumps({"chunks": chunks, "diagnostics": diags}))


@pytest.fixture
def e2e_config(tmp_path: Path, fr3_config_path: Path) -> Path:
    text = fr3_config_path.read_text().replace("control_hz: 500.0", f"control_hz: {HZ}")
    assert f"control_hz: {HZ}" in text
    # A random-init model has no surprise calibration; ~/surprise is covered by test_transport_surprise.
    on = "surprise:\n      enabled: auto"
    assert on in text
    text = text.replace(on, "surprise:\n      enabled: false")
    path = tmp_path / "fr3_e2e.yaml"
    path.write_text(text)
    return path


def test_commands_over_dds_respect_limits_and_brake_when_inputs_stop(
    tmp_path: Path, e2e_config: Path, test_model_path: Path
) -> None:
    pytest.importorskip("cyclonedds", reason="cyclonedds (pip install 'wam_control[dds]') is not installed")
    pytest.importorskip("onnxruntime", reason="onnxruntime is needed to run the test model")
    from wam_control.config import load_config

    config = load_config(e2e_config)
    env = dict(os.environ, ROS_DOMAIN_ID=str(random.randint(100, 200)), PYTHONUNBUFFERED="1")
    env.pop("CYCLONEDDS_URI", None)  # every process pins itself to loopback (DdsNode default)
    me = str(Path(__file__).resolve())
    py = sys.executable
    stop_file = tmp_path / "stop"
    checker = subprocess.Popen(
        [py, me, "checker", str(tmp_path / "checker.json"), "40", str(stop_file)], env=env
    )
    plant = subprocess.Popen(
        [py, me, "plant", str(tmp_path / "plant.json"), ",".join(config.joint_names), "25"], env=env
    )
    ctrl = subprocess.Popen(
        [py, "-m", "wam_control.cli", "run", "--config", str(e2e_config), "--model", str(test_model_path),
         "--worker", "thread", "--log-level", "WARNING"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        plant.wait(timeout=35)
        time.sleep(HOLD_S)
    finally:
        ctrl.terminate()  # SIGTERM: the controller brakes, stops its loop and exits 0
        ctrl_out, _ = ctrl.communicate(timeout=15)
        stop_file.touch()
        checker.wait(timeout=15)
        plant.kill()
    assert ctrl.returncode == 0, ctrl_out
    assert checker.returncode == 0
    plant_info = json.loads((tmp_path / "plant.json").read_text())
    assert plant_info["first_cmd"], f"the plant never received a command\n{ctrl_out}"
    _check_results(tmp_path, config, plant_info["stop_time"], ctrl_out)


def _check_results(tmp_path: Path, config, stop_time: float, ctrl_out: str) -> None:
    rows = np.load(tmp_path / "checker.npy")
    info = json.loads((tmp_path / "checker.json").read_text())
    d = config.dof
    t, q, v, a = rows[:, 0], rows[:, 1 : 1 + d], rows[:, 1 + d : 1 + 2 * d], rows[:, 1 + 2 * d : 1 + 3 * d]
    assert len(t) > 100, f"only {len(t)} commands\n{ctrl_out}"
    assert np.all(rows[:, -1] == 0), "header.stamp must be zero (start now)"
    assert np.all(rows[:, -2] == config.command_horizon_points)

    # Rate: loosely, over the window in which commands flowed.
    span = t[-1] - t[0]
    assert len(t) / span >= 0.5 * HZ, f"{len(t)} commands in {span:.2f} s at {HZ} Hz configured"

    lim = config.limit_arrays()
    tol = 1e-6
    assert np.all(np.abs(v) <= lim.v_max * (1 + 1e-3) + tol)
    assert np.all(np.abs(a) <= lim.a_max * (1 + 1e-3) + tol)
    assert np.all(q >= lim.q_min - tol) and np.all(q <= lim.q_max + tol)
    # Backward differences: at most v_max per elapsed tick; the elapsed ticks are bounded by the receive
    # gap plus two periods of delivery jitter (a skipped loop slot widens both alike).
    dt = 1.0 / HZ
    gaps = np.diff(t)[:, None] + 2 * dt
    assert np.all(np.abs(np.diff(q, axis=0)) <= lim.v_max * np.maximum(gaps, dt) * 1.05 + tol)

    # Inference ran (the predicted chunk is published on change) and diagnostics flowed.
    assert info["chunks"], "no predicted chunk: inference never produced a chunk"
    names = {s["name"] for s in info["diagnostics"]}
    assert "wam_controller: controller" in names and "wam_controller: transport" in names

    # Inputs stopped at stop_time: commands keep coming, velocity reaches zero, position settles.
    after = t > stop_time + 1.0
    assert after.sum() > 0.5 * HZ * (HOLD_S - 1.5), "commands stopped when the inputs stopped"
    tail = t > t[-1] - 0.3
    assert np.all(np.abs(v[tail]) < 1e-9), "not holding: velocity is not zero"
    assert np.ptp(q[tail], axis=0).max() < 1e-9, "not holding: position still moves"


if __name__ == "__main__":
    role = sys.argv[1]
    if role == "plant":
        _plant(Path(sys.argv[2]), sys.argv[3].split(","), float(sys.argv[4]))
    elif role == "checker":
        _checker(Path(sys.argv[2]), float(sys.argv[3]), Path(sys.argv[4]))
    else:
        raise SystemExit(f"unknown role {role!r}")
