"""Recorder round trip: a short bag written by BagRecorder reads back into equal arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wam_control.sim.bag import BagRecorder, CameraSpec, read_bag

NAMES = tuple(f"fr3_joint{i}" for i in range(1, 8))


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_round_trip_synthetic(tmp_path: Path, storage: str) -> None:
    rng = np.random.default_rng(0)
    spec = {"scene": CameraSpec(12, 16, 20.0, 20.0, 8.0, 6.0, "scene_camera_optical_frame")}
    t = np.arange(30) * 0.01
    q = rng.normal(size=(30, 7))
    qd = rng.normal(size=(30, 7))
    cmd = rng.normal(size=(30, 7))
    frames = rng.integers(0, 256, size=(5, 12, 16, 3), dtype=np.uint8)
    path = tmp_path / "ep"
    with BagRecorder(path, NAMES, spec, storage=storage, metadata={"task": "reach"}) as rec:
        for k in range(30):
            rec.write_clock(t[k])
            rec.write_joint_state(t[k], q[k], qd[k])
            rec.write_command(t[k], cmd[k])
            if k % 6 == 0:
                rec.write_image("scene", t[k], frames[k // 6])
        rec.set_metadata("success", "true")
    demo = read_bag(path)
    assert demo.joint_names == NAMES
    assert np.array_equal(demo.joint_t, t) or np.allclose(demo.joint_t, t, atol=1e-9)
    assert np.array_equal(demo.joint_q, q) and np.array_equal(demo.joint_qd, qd)
    assert np.allclose(demo.command_t, t, atol=1e-9) and np.array_equal(demo.command_q, cmd)
    assert np.allclose(demo.clock_t, t, atol=1e-9)
    cam = demo.images["camera"]
    assert np.array_equal(cam.frames, frames)
    assert np.allclose(cam.t, t[::6], atol=1e-9)
    assert cam.k == pytest.approx(np.array([[20, 0, 8], [0, 20, 6], [0, 0, 1.0]]))
    assert demo.metadata["task"] == "reach" and demo.metadata["success"] == "true"
    assert demo.metadata["joint_names"].split(",") == list(NAMES)
    # zero-order hold alignment
    assert np.array_equal(demo.state_at(0.035), q[3])
    assert np.array_equal(demo.command_at([0.0, 0.289]), cmd[[0, 28]])
    with pytest.raises(ValueError, match="before the first sample"):
        demo.state_at(-0.5)


def test_reader_matches_joints_by_name(tmp_path: Path) -> None:
    path = tmp_path / "shuffled"
    with BagRecorder(path, NAMES, {}) as rec:
        rec.write_joint_state(0.0, np.arange(7.0), np.zeros(7))
        # a publisher that lists the same joints in another order (joint_state_broadcaster may)
        rec.joint_names = list(NAMES[::-1])
        rec.write_joint_state(0.01, np.arange(7.0)[::-1], np.zeros(7))
        rec.joint_names = list(NAMES[:6])
        rec.write_joint_state(0.02, np.arange(6.0), np.zeros(6))
    with pytest.raises(ValueError, match=r"lacks joints \['fr3_joint7'\]"):
        read_bag(path)
    path2 = tmp_path / "shuffled2"
    with BagRecorder(path2, NAMES, {}) as rec:
        rec.write_joint_state(0.0, np.arange(7.0), np.zeros(7))
        rec.joint_names = list(NAMES[::-1])
        rec.write_joint_state(0.01, np.arange(7.0)[::-1], np.zeros(7))
    demo = read_bag(path2)
    assert demo.joint_names == NAMES
    assert np.array_equal(demo.joint_q, np.stack([np.arange(7.0), np.arange(7.0)]))


def test_recorder_rejects_bad_input(tmp_path: Path) -> None:
    spec = {"scene": CameraSpec(4, 4, 1.0, 1.0, 2.0, 2.0, "f")}
    with BagRecorder(tmp_path / "b", NAMES, spec) as rec:
        with pytest.raises(ValueError, match="command must have 7"):
            rec.write_command(0.0, np.zeros(6))
        with pytest.raises(ValueError, match="camera 'scene'"):
            rec.write_image("scene", 0.0, np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="storage"):
        BagRecorder(tmp_path / "c", NAMES, {}, storage="rosbag1")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_bag(tmp_path / "missing")


def test_record_cli_writes_readable_expert_demos(tmp_path: Path) -> None:
    pytest.importorskip("mujoco")
    from wam_control.sim.gl import RenderUnavailableError
    from wam_control.sim.record import main

    out = tmp_path / "demos"
    try:
        rc = main(
            ["--task", "reach", "--episodes", "1", "--seed", "3", "--out", str(out), "--camera-hz", "10"]
        )
    except RenderUnavailableError as exc:
        pytest.skip(f"no offscreen GL backend: {exc}")
    assert rc == 0
    demo = read_bag(out / "reach_seed3")
    assert demo.metadata["task"] == "reach" and demo.metadata["success"] == "true"
    n = len(demo.joint_t)
    assert n > 50 and demo.command_q.shape == (n - 1, 7)
    # the command at tick k was sent at the time of joint state k
    assert np.allclose(demo.command_t, demo.joint_t[:-1])
    assert set(demo.images) == {"camera", "wrist_camera"}
    scene = demo.images["camera"]
    assert scene.frames.shape[1:] == (96, 96, 3) and scene.t[0] == 0.0
    assert np.allclose(np.diff(scene.t), 0.1, atol=1e-6)
    # the recorded command sequence starts at the measured pose and moves smoothly
    assert np.max(np.abs(demo.command_q[0] - demo.joint_q[0])) < 0.01
