"""Scripted expert: solves seeded episodes with commands well inside the FR3 limits."""

from __future__ import annotations

import numpy as np
import pytest

from wam_control.sim.arm import SimArm
from wam_control.sim.expert import Expert, run_expert_episode

FR3_V_MAX = np.array([2.62, 2.62, 2.62, 2.62, 5.26, 4.18, 5.26])


def _commands(arm: SimArm, expert: Expert, seed: int) -> tuple[bool, np.ndarray]:
    arm.reset(seed)
    expert.reset()
    cmds = [arm.joint_state()[1]]
    while arm.time < arm.task.horizon_s and not arm.task.success():
        cmds.append(expert.act())
        arm.step(cmds[-1])
    return arm.task.success(), np.array(cmds)


@pytest.mark.parametrize("seed", [11, 12, 13, 14])
def test_expert_solves_reach_with_smooth_commands(seed: int) -> None:
    with SimArm(control_hz=100.0, task="reach", cameras=()) as arm:
        expert = Expert(arm)
        ok, cmds = _commands(arm, expert, seed)
        assert ok, arm.task.info()
        dt = arm.control_period
        v = np.diff(cmds, axis=0) / dt
        a = np.diff(v, axis=0) / dt
        j = np.diff(a, axis=0) / dt
        # measured like the robot: backward differences, starting from the measured pose at rest
        assert np.all(np.abs(v) <= FR3_V_MAX * 0.5 + 1e-9)
        assert np.max(np.abs(a)) <= 4.0 + 1e-6
        assert np.max(np.abs(j)) <= 200.0 + 1e-3
        lo, hi = arm.joint_range[:, 0], arm.joint_range[:, 1]
        assert np.all(cmds >= lo) and np.all(cmds <= hi)


def test_expert_solves_push() -> None:
    with SimArm(control_hz=100.0, task="push", cameras=()) as arm:
        expert = Expert(arm)
        ok, when = run_expert_episode(arm, expert, seed=21)
        assert ok, arm.task.info()
        assert when < arm.task.horizon_s


def test_expert_stops_at_joint_limits_without_overshoot() -> None:
    # A target far outside the workspace drives joints to their limits: the command must stay in range.
    with SimArm(control_hz=100.0, task="reach", cameras=()) as arm:
        expert = Expert(arm)
        arm.reset(0)
        expert.reset()
        arm.teleport_object(np.array([0.0, 0.0, 2.0]))
        for _ in range(400):
            q = expert.act()
            assert np.all(q >= arm.joint_range[:, 0] + 0.08 - 1e-9)
            assert np.all(q <= arm.joint_range[:, 1] - 0.08 + 1e-9)
            arm.step(q)
        assert not arm.task.success()
