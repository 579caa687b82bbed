"""Sim core: model, limits, tasks, disturbance hooks, rendering."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("mujoco")  # imported first on purpose: rendering must not depend on import order

from wam_control.config import load_config, preset_path
from wam_control.sim.arm import HOME_Q, JOINT_NAMES, RenderUnavailableError, SimArm


def _fr3_limits() -> dict[int, tuple[float, float]]:
    """FR3 position limits from the shipped preset (itself transcribed from Franka's published table)."""
    config = load_config(preset_path("fr3"))
    return {
        i + 1: (config.joint_limits[j].min_position, config.joint_limits[j].max_position)
        for i, j in enumerate(config.joints)
    }


@pytest.fixture(scope="module")
def arm() -> SimArm:
    a = SimArm(control_hz=100.0, task="reach", seed=0, cameras=())
    yield a
    a.close()


def test_model_joints_and_limits_match_fr3(arm: SimArm) -> None:
    assert arm.joint_names == tuple(f"fr3_joint{i}" for i in range(1, 8))
    limits = _fr3_limits()
    assert len(limits) == 7
    for i, name in enumerate(JOINT_NAMES):
        lo, hi = limits[i + 1]
        assert arm.joint_range[i] == pytest.approx([lo, hi], abs=1e-6), name
        act = arm.model.actuator(name)
        assert act.ctrlrange == pytest.approx([lo, hi], abs=1e-6)


def test_home_pose_points_tool_down_in_front_of_base() -> None:
    with SimArm(control_hz=100.0, task="reach", seed=0, cameras=()) as a:
        a.data.qpos[a._qadr] = HOME_Q
        import mujoco

        mujoco.mj_forward(a.model, a.data)
        pos, rot = a.ee_pose()
    # FR3 with its hand at home: TCP ~ (0.307, 0, 0.487) m, tool z axis pointing down
    assert pos == pytest.approx([0.307, 0.0, 0.487], abs=0.01)
    assert rot[:, 2] == pytest.approx([0.0, 0.0, -1.0], abs=1e-6)


def test_position_servo_tracks_a_step_and_holds(arm: SimArm) -> None:
    arm.reset(1)
    _, q0, _ = arm.joint_state()
    target = q0 + np.array([0.1, -0.1, 0.1, 0.1, 0.2, -0.2, 0.2])
    for _ in range(100):  # 1 s
        arm.step(target)
    _, q, qd = arm.joint_state()
    assert np.max(np.abs(q - target)) < 2e-3
    assert np.max(np.abs(qd)) < 1e-2
    assert arm.time == pytest.approx(1.0)


def test_step_rejects_bad_targets(arm: SimArm) -> None:
    arm.reset(0)
    with pytest.raises(ValueError, match="shape"):
        arm.step(np.zeros(6))
    with pytest.raises(ValueError, match="finite"):
        arm.step(np.array([0, 0, 0, np.nan, 0, 1, 0.0]))


@pytest.mark.parametrize("task", ["reach", "push"])
def test_tasks_reproducible_by_seed(task: str) -> None:
    with (
        SimArm(control_hz=100.0, task=task, seed=5, cameras=()) as a,
        SimArm(control_hz=100.0, task=task, seed=5, cameras=()) as b,
    ):
        cmd = HOME_Q + 0.05
        for _ in range(20):
            a.step(cmd)
            b.step(cmd)
        for key, value in a.task.info().items():
            assert np.array_equal(value, b.task.info()[key]), key
        assert np.array_equal(a.joint_state()[1], b.joint_state()[1])
        first = a.task.info()
        a.reset(6)
        other = a.task.info()
        a.reset(5)
        again = a.task.info()
    key = "target" if task == "reach" else "goal"
    assert not np.allclose(first[key], other[key])
    assert np.array_equal(
        again[key], SimArm(control_hz=100.0, task=task, seed=5, cameras=()).task.info()[key]
    )


def test_reach_targets_cover_workspace_and_start_unsolved() -> None:
    with SimArm(control_hz=100.0, task="reach", seed=0, cameras=()) as a:
        targets = []
        for seed in range(30):
            a.reset(seed)
            assert not a.task.success()
            targets.append(a.task.info()["target"])
            u, v, depth = a.project(a.task.info()["target"])
            assert depth > 0 and 0 <= u < 96 and 0 <= v < 96, seed
    spread = np.ptp(np.array(targets), axis=0)
    assert np.all(spread > 0.1)


def test_push_puck_rests_on_table_and_goal_is_apart() -> None:
    with SimArm(control_hz=100.0, task="push", seed=3, cameras=()) as a:
        start = a.task.info()
        for _ in range(50):
            a.step(a.joint_state()[1])
        info = a.task.info()
    assert info["object"][2] == pytest.approx(0.02, abs=2e-3)
    assert np.linalg.norm(info["object"][:2] - start["object"][:2]) < 2e-3
    assert 0.1 <= info["distance"] <= 0.18 + 1e-6


def test_block_joint_and_teleport(arm: SimArm) -> None:
    arm.reset(2)
    _, q0, _ = arm.joint_state()
    arm.block_joint("fr3_joint2", True)
    target = q0 + 0.2
    for _ in range(50):
        arm.step(target)
    _, q, _ = arm.joint_state()
    assert abs(q[1] - q0[1]) < 2e-3  # blocked joint stayed
    assert abs(q[0] - target[0]) < 5e-3  # the others followed
    arm.block_joint(1, False)
    for _ in range(50):
        arm.step(target)
    assert abs(arm.joint_state()[1][1] - target[1]) < 5e-3
    arm.teleport_object(np.array([0.5, 0.1, 0.2]))
    assert arm.task.info()["target"] == pytest.approx([0.5, 0.1, 0.2])
    with pytest.raises(ValueError, match="block_joint"):
        arm.block_joint("elbow", True)


# ---------------------------------------------------------------- rendering
@pytest.fixture(scope="module")
def seen() -> SimArm:
    try:
        a = SimArm(
            control_hz=100.0,
            task="reach",
            seed=4,
            camera_hz=10.0,
            image_hw=(96, 96),
            cameras=("scene", "wrist"),
        )
    except RenderUnavailableError as exc:
        pytest.skip(f"no offscreen GL backend: {exc}")
    yield a
    a.close()


def _red(img: np.ndarray) -> np.ndarray:
    rgb = img.astype(int)
    return (rgb[..., 0] > 150) & (rgb[..., 1] < 80) & (rgb[..., 2] < 80)


def test_scene_camera_shows_the_target(seen: SimArm) -> None:
    seen.reset(4)
    img, stamp = seen.frame("scene")
    assert img.dtype == np.uint8 and img.shape == (96, 96, 3)
    assert stamp == 0.0
    assert img.std() > 10  # not a constant image
    u, v, _ = seen.project(seen.task.info()["target"])
    ys, xs = np.nonzero(_red(img))
    assert len(xs) >= 2, "no red target pixels in the scene image"
    assert abs(xs.mean() - u) < 3 and abs(ys.mean() - v) < 3
    # moving the target moves the red blob
    seen.teleport_object(seen.task.info()["target"] + np.array([0.0, 0.15, 0.0]))
    moved = seen.render("scene")
    ys2, xs2 = np.nonzero(_red(moved))
    assert abs(xs2.mean() - xs.mean()) > 5


def test_frames_render_only_when_due_and_buffers_are_reused(seen: SimArm) -> None:
    seen.reset(4)
    buffer = seen.frame("scene")[0]
    rendered_at = []
    for _ in range(100):  # 1 s at 100 Hz, camera at 10 Hz
        if seen.step(HOME_Q):
            rendered_at.append(round(seen.time, 6))
    assert rendered_at == pytest.approx([0.1 * k for k in range(1, 11)])
    assert seen.frame("scene")[0] is not None and np.shares_memory(seen.frame("scene")[0], buffer)
    assert seen.frame("wrist")[1] == pytest.approx(1.0)
    assert not seen.frame("scene")[0].flags.writeable


def test_occluder_and_camera_move_change_the_image(seen: SimArm) -> None:
    seen.reset(4)
    base = seen.render("scene").copy()
    seen.set_occluder(True)
    occluded = seen.render("scene").copy()
    seen.set_occluder(False)
    assert np.mean(np.abs(occluded.astype(int) - base.astype(int)).sum(-1) > 30) > 0.05
    assert np.array_equal(seen.render("scene"), base)
    seen.move_camera(np.array([0.0, 0.0, 0.1]))
    shifted = seen.render("scene").copy()
    seen.move_camera(np.array([0.0, 0.0, -0.1]))
    assert not np.array_equal(shifted, base)
    assert np.array_equal(seen.render("scene"), base)


def test_a_program_that_never_closes_its_arm_exits_cleanly() -> None:
    """The renderers are freed at exit before the GL backend tears its display down (mujoco.egl
    registers that on its first context); before, such a program ended with EGL_BAD_DISPLAY."""
    import subprocess
    import sys

    # Offscreen GL is installed by scripts/setup.sh: a missing backend fails here rather than skipping.
    script = (
        "from wam_control.sim.arm import SimArm\n"
        "arm = SimArm(task='reach', seed=1, cameras=('scene',), image_hw=(32, 32))\n"
        "arm.render('scene')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Exception ignored" not in proc.stderr and "Error" not in proc.stderr, proc.stderr
