"""Tasks for SimArm: seeded initial conditions and a success test.

- "reach": a red sphere (no collision) at a random point of a box in front of the arm, inside the
  scene camera's view. Success: the tool-centre point is within `tolerance` (3 cm) of it.
- "push": a blue puck (r = 3 cm) on the table and a green goal disc 10-18 cm away in a random
  direction. Success: the puck's centre is within `tolerance` (3 cm) of the goal's centre, in xy.

Every task draws from the numpy Generator SimArm.reset() seeds, in a fixed order, so a seed fixes
the episode. `info()` returns plain numpy values (positions in metres, world frame).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from wam_control.sim.arm import SimArm

TASKS = ("reach", "push")
# The arm's home pose (sim.arm exports it): defined here, which sim.arm imports, so that the task's
# start-pose draw needs no import of sim.arm back (no import circle).
HOME_Q = np.array([0.0, -math.pi / 4, 0.0, -3 * math.pi / 4, 0.0, math.pi / 2, math.pi / 4])
_JOINT_MARGIN = 0.05  # keep random starts clear of the limits the safety filter enforces


class Task:
    """Base class: owns the initial arm pose draw and the tool-point helpers."""

    name = ""
    horizon_s = 10.0
    tolerance = 0.03
    start_noise = 0.15  # rad, uniform around HOME_Q

    def __init__(self, arm: SimArm) -> None:
        self.arm = arm

    def _reset_arm(self, rng: np.random.Generator) -> None:
        lo = self.arm.joint_range[:, 0] + _JOINT_MARGIN
        hi = self.arm.joint_range[:, 1] - _JOINT_MARGIN
        q = np.clip(HOME_Q + rng.uniform(-self.start_noise, self.start_noise, HOME_Q.shape), lo, hi)
        self.arm.data.qpos[self.arm._qadr] = q

    def ee(self) -> np.ndarray:
        return self.arm.data.site_xpos[self.arm._ee_site].copy()

    def reset(self, rng: np.random.Generator) -> None:
        raise RuntimeError(f"task {self.name!r} does not define reset()")

    def success(self) -> bool:
        raise RuntimeError(f"task {self.name!r} does not define success()")

    def info(self) -> dict[str, np.ndarray | float]:
        raise RuntimeError(f"task {self.name!r} does not define info()")

    def teleport(self, pos: np.ndarray) -> None:
        raise RuntimeError(f"task {self.name!r} has no object to teleport")


class ReachTask(Task):
    name = "reach"
    horizon_s = 6.0
    # Workspace box (m, world): in front of the arm, above the table, seen by the scene camera.
    low = np.array([0.35, -0.25, 0.08])
    high = np.array([0.62, 0.25, 0.35])

    def __init__(self, arm: SimArm) -> None:
        super().__init__(arm)
        self._mocap = arm.model.body("target").mocapid[0]
        arm.model.geom_rgba[arm.model.geom("puck").id, 3] = 0.0
        arm.model.geom_rgba[arm.model.geom("goal").id, 3] = 0.0
        # The puck is unused here: park it far off the table so it never interferes.
        self._puck_qadr = arm.model.joint("puck").qposadr[0]

    def reset(self, rng: np.random.Generator) -> None:
        self._reset_arm(rng)
        self.arm.data.mocap_pos[self._mocap] = rng.uniform(self.low, self.high)
        self.arm.data.qpos[self._puck_qadr : self._puck_qadr + 3] = (2.0, 2.0, -0.7)

    def target(self) -> np.ndarray:
        return self.arm.data.mocap_pos[self._mocap].copy()

    def success(self) -> bool:
        return bool(np.linalg.norm(self.ee() - self.target()) < self.tolerance)

    def info(self) -> dict[str, np.ndarray | float]:
        ee, target = self.ee(), self.target()
        return {"target": target, "ee": ee, "distance": float(np.linalg.norm(ee - target))}

    def teleport(self, pos: np.ndarray) -> None:
        self.arm.data.mocap_pos[self._mocap] = pos


class PushTask(Task):
    name = "push"
    horizon_s = 20.0
    start_noise = 0.10
    puck_low = np.array([0.42, -0.15])
    puck_high = np.array([0.55, 0.15])
    goal_low = np.array([0.32, -0.25])
    goal_high = np.array([0.65, 0.25])
    puck_radius = 0.03
    puck_half_height = 0.02

    def __init__(self, arm: SimArm) -> None:
        super().__init__(arm)
        self._goal = arm.model.body("goal").mocapid[0]
        self._qadr = arm.model.joint("puck").qposadr[0]
        self._dadr = arm.model.joint("puck").dofadr[0]
        arm.model.geom_rgba[arm.model.geom("target").id, 3] = 0.0

    def reset(self, rng: np.random.Generator) -> None:
        self._reset_arm(rng)
        puck = rng.uniform(self.puck_low, self.puck_high)
        for _ in range(100):
            angle = rng.uniform(0.0, 2 * np.pi)
            goal = puck + rng.uniform(0.10, 0.18) * np.array([np.cos(angle), np.sin(angle)])
            if np.all(goal >= self.goal_low) and np.all(goal <= self.goal_high):
                break
        else:  # unreachable for these boxes, kept so a bad edit fails loudly instead of looping
            raise RuntimeError("push task: no goal inside the goal box after 100 draws")
        self._place_puck(np.array([puck[0], puck[1], self.puck_half_height + 0.0005]))
        self.arm.data.mocap_pos[self._goal] = (goal[0], goal[1], 0.0005)

    def _place_puck(self, pos: np.ndarray) -> None:
        a = self._qadr
        self.arm.data.qpos[a : a + 3] = pos
        self.arm.data.qpos[a + 3 : a + 7] = (1.0, 0.0, 0.0, 0.0)
        self.arm.data.qvel[self._dadr : self._dadr + 6] = 0.0

    def object(self) -> np.ndarray:
        return self.arm.data.qpos[self._qadr : self._qadr + 3].copy()

    def goal(self) -> np.ndarray:
        return self.arm.data.mocap_pos[self._goal].copy()

    def success(self) -> bool:
        return bool(np.linalg.norm(self.object()[:2] - self.goal()[:2]) < self.tolerance)

    def info(self) -> dict[str, np.ndarray | float]:
        obj, goal = self.object(), self.goal()
        return {
            "object": obj,
            "goal": goal,
            "ee": self.ee(),
            "distance": float(np.linalg.norm(obj[:2] - goal[:2])),
        }

    def teleport(self, pos: np.ndarray) -> None:
        self._place_puck(pos)


def make_task(name: str, arm: SimArm) -> Task:
    if name == "reach":
        return ReachTask(arm)
    if name == "push":
        return PushTask(arm)
    raise ValueError(f"unknown task {name!r}; expected one of {list(TASKS)}")
