"""Tasks for SimArm: seeded initial conditions and a success test.

- "reach": a red sphere (no collision) at a random point of a box in front of the arm, inside the
  scene camera's view. Success: the tool-centre point is within `tolerance` (3 cm) of it.
- "push": a blue puck (r = 3 cm) on the table and a green goal disc 10-18 cm away in a random
  direction. Success: the puck's centre is within `tolerance` (3 cm) of the goal's centre, in xy.
- "pick_place" (needs the hand, assets/fr3_hand_scene.xml): three 4 cm cubes (red, green, blue) at
  random places and yaws on the table and a yellow 10 cm square zone; the prompt names one cube.
  Success: that cube's centre is inside the zone (at least `zone_margin` from its edges, in xy), it
  rests on the table (not lifted, slower than 2 cm/s) and no finger touches it.

Every task has prompts (`task.prompt`, a few phrasings): reach and push pick one by the seed (seed
modulo the number of phrasings), so their draws from the Generator are the ones they always were;
pick_place draws its cube and phrasing from the Generator, after the poses.

Every task draws from the numpy Generator SimArm.reset() seeds, in a fixed order, so a seed fixes
the episode. `info()` returns plain numpy values (positions in metres, world frame).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from wam_control.sim.arm import SimArm

TASKS = ("reach", "push", "pick_place")
HAND_TASKS = ("pick_place",)
CUBE_COLOURS = ("red", "green", "blue")
# The cubes' diffuse colours (linear RGB, the rgba of cube_<colour> in assets/fr3_hand_scene.xml), in
# CUBE_COLOURS order: training re-colours the cubes with them (model/augment.py).
CUBE_RGB = ((0.9, 0.12, 0.1), (0.15, 0.75, 0.2), (0.12, 0.3, 0.9))
PROMPTS: dict[str, tuple[str, ...]] = {
    "reach": ("reach the red ball", "move the gripper to the red sphere", "touch the red ball"),
    "push": (
        "push the blue puck onto the green circle",
        "slide the blue disc to the green target",
        "push the puck to the green goal",
    ),
    # {colour} is the cube to move
    "pick_place": (
        "pick up the {colour} cube and place it in the yellow square",
        "put the {colour} cube on the yellow square",
        "move the {colour} block into the yellow zone",
        "place the {colour} cube in the marked zone",
    ),
}
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
        self.prompt = ""

    def _pick_prompt_by_seed(self) -> None:
        phrasings = PROMPTS[self.name]
        self.prompt = phrasings[self.arm.seed % len(phrasings)]

    def _hide_hand_scene_objects(self) -> None:
        """In the hand scene, reach and push park the cubes off the table and hide the zone."""
        if not getattr(self.arm, "has_hand", False):
            return
        model = self.arm.model
        model.geom_rgba[model.geom("zone").id, 3] = 0.0
        for colour in CUBE_COLOURS:
            model.geom_rgba[model.geom(f"cube_{colour}").id, 3] = 0.0
            model.body_gravcomp[model.body(f"cube_{colour}").id] = 1.0  # parked ones float, never fall
        self._cube_qadr = [model.joint(f"cube_{c}").qposadr[0] for c in CUBE_COLOURS]

    def _park_cubes(self) -> None:
        if getattr(self.arm, "has_hand", False):
            for i, a in enumerate(self._cube_qadr):
                self.arm.data.qpos[a : a + 3] = (2.0, 2.5 + 0.2 * i, -0.7)

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
        self._hide_hand_scene_objects()

    def reset(self, rng: np.random.Generator) -> None:
        self._reset_arm(rng)
        self.arm.data.mocap_pos[self._mocap] = rng.uniform(self.low, self.high)
        self.arm.data.qpos[self._puck_qadr : self._puck_qadr + 3] = (2.0, 2.0, -0.7)
        self._park_cubes()
        self._pick_prompt_by_seed()

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
        self._hide_hand_scene_objects()

    def reset(self, rng: np.random.Generator) -> None:
        self._reset_arm(rng)
        self._park_cubes()
        self._pick_prompt_by_seed()
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


class PickPlaceTask(Task):
    name = "pick_place"
    horizon_s = 25.0
    start_noise = 0.10
    cube_half = 0.02
    zone_half = 0.05
    zone_margin = 0.015  # the cube's centre must be this far inside the zone's edges
    cube_low = np.array([0.38, -0.20])
    cube_high = np.array([0.60, 0.20])
    zone_low = np.array([0.36, -0.26])
    zone_high = np.array([0.62, 0.26])
    min_cube_gap = 0.09  # between cube centres
    min_zone_gap = 0.12  # between the zone's centre and any cube's centre
    rest_speed = 0.02

    def __init__(self, arm: SimArm) -> None:
        super().__init__(arm)
        if not getattr(arm, "has_hand", False):
            raise ValueError("task 'pick_place' needs the hand scene (SimArm(..., hand=True))")
        model = arm.model
        model.geom_rgba[model.geom("target").id, 3] = 0.0
        model.geom_rgba[model.geom("goal").id, 3] = 0.0
        model.geom_rgba[model.geom("puck").id, 3] = 0.0
        self._puck_qadr = model.joint("puck").qposadr[0]
        self._zone = model.body("zone").mocapid[0]
        self._cube_qadr = [model.joint(f"cube_{c}").qposadr[0] for c in CUBE_COLOURS]
        self._cube_dadr = [model.joint(f"cube_{c}").dofadr[0] for c in CUBE_COLOURS]
        self._cube_geom = [model.geom(f"cube_{c}").id for c in CUBE_COLOURS]
        self._finger_geoms = {model.geom(g).id for g in ("pad1", "pad2", "finger1", "finger2")}
        self.target_index = 0
        self.phrasing = PROMPTS[self.name][0]  # this episode's, with "{colour}" for the cube

    def reset(self, rng: np.random.Generator) -> None:
        self._reset_arm(rng)
        self.arm.data.qpos[self._puck_qadr : self._puck_qadr + 3] = (2.0, 2.0, -0.7)
        cubes: list[np.ndarray] = []
        for _ in range(1000):
            c = rng.uniform(self.cube_low, self.cube_high)
            if all(np.linalg.norm(c - o) >= self.min_cube_gap for o in cubes):
                cubes.append(c)
                if len(cubes) == len(CUBE_COLOURS):
                    break
        else:
            raise RuntimeError("pick_place: could not place the cubes apart after 1000 draws")
        yaws = rng.uniform(-math.pi / 4, math.pi / 4, len(CUBE_COLOURS))
        for _ in range(1000):
            zone = rng.uniform(self.zone_low, self.zone_high)
            if all(np.linalg.norm(zone - c) >= self.min_zone_gap for c in cubes):
                break
        else:
            raise RuntimeError("pick_place: no zone clear of the cubes after 1000 draws")
        target = int(rng.integers(len(CUBE_COLOURS)))
        self.phrasing = PROMPTS[self.name][int(rng.integers(len(PROMPTS[self.name])))]
        self.set_target(target)
        for i, (c, yaw) in enumerate(zip(cubes, yaws)):
            self._place_cube(i, np.array([c[0], c[1], self.cube_half + 0.0005]), float(yaw))
        self.arm.data.mocap_pos[self._zone] = (zone[0], zone[1], 0.0005)

    @property
    def colour(self) -> str:
        return CUBE_COLOURS[self.target_index]

    def prompt_naming(self, i: int) -> str:
        """This episode's phrasing with cube `i`'s colour (the prompt as if cube `i` were the task's)."""
        return self.phrasing.format(colour=CUBE_COLOURS[i])

    def set_target(self, i: int) -> None:
        """Make cube `i` the task's (after reset): the same scene and phrasing, its colour in the prompt."""
        if not 0 <= i < len(CUBE_COLOURS):
            raise ValueError(
                f"pick_place target cube {i}: expected 0..{len(CUBE_COLOURS) - 1} ({CUBE_COLOURS})"
            )
        self.target_index = int(i)
        self.prompt = self.prompt_naming(self.target_index)

    def _place_cube(self, i: int, pos: np.ndarray, yaw: float = 0.0) -> None:
        a, d = self._cube_qadr[i], self._cube_dadr[i]
        self.arm.data.qpos[a : a + 3] = pos
        self.arm.data.qpos[a + 3 : a + 7] = (math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2))
        self.arm.data.qvel[d : d + 6] = 0.0

    def cube(self, i: int | None = None) -> np.ndarray:
        a = self._cube_qadr[self.target_index if i is None else i]
        return self.arm.data.qpos[a : a + 3].copy()

    def cube_yaw(self, i: int | None = None) -> float:
        a = self._cube_qadr[self.target_index if i is None else i]
        w, x, y, z = self.arm.data.qpos[a + 3 : a + 7]
        return math.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))

    def cube_speed(self, i: int | None = None) -> float:
        d = self._cube_dadr[self.target_index if i is None else i]
        return float(np.linalg.norm(self.arm.data.qvel[d : d + 3]))

    def zone(self) -> np.ndarray:
        return self.arm.data.mocap_pos[self._zone].copy()

    def touching(self, i: int | None = None) -> bool:
        """Whether a finger touches cube `i` (default: the prompted one)."""
        g = self._cube_geom[self.target_index if i is None else i]
        data = self.arm.data
        for k in range(data.ncon):
            c = data.contact[k]
            if (c.geom1 == g and c.geom2 in self._finger_geoms) or (
                c.geom2 == g and c.geom1 in self._finger_geoms
            ):
                return True
        return False

    def in_zone(self) -> bool:
        d = np.abs(self.cube()[:2] - self.zone()[:2])
        return bool(np.all(d <= self.zone_half - self.zone_margin))

    def resting(self) -> bool:
        return bool(self.cube()[2] < self.cube_half + 0.005 and self.cube_speed() < self.rest_speed)

    def success(self) -> bool:
        return self.in_zone() and self.resting() and not self.touching()

    def info(self) -> dict[str, np.ndarray | float]:
        cube, zone = self.cube(), self.zone()
        return {
            "object": cube,
            "goal": zone,
            "zone": zone,
            "ee": self.ee(),
            "distance": float(np.linalg.norm(cube[:2] - zone[:2])),
            "target_index": float(self.target_index),
            "cubes": np.array([self.cube(i) for i in range(len(CUBE_COLOURS))]),
        }

    def teleport(self, pos: np.ndarray) -> None:
        self._place_cube(self.target_index, pos, self.cube_yaw())


def make_task(name: str, arm: SimArm) -> Task:
    if name == "reach":
        return ReachTask(arm)
    if name == "push":
        return PushTask(arm)
    if name == "pick_place":
        return PickPlaceTask(arm)
    raise ValueError(f"unknown task {name!r}; expected one of {list(TASKS)}")
