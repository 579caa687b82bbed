"""Scripted expert for the SimArm tasks: damped-least-squares IK with a jerk-limited joint command.

Each call to `act()` (once per control period) does:
1. Kinematics of the expert's own last *command* (not the measured state): the command sequence is
   then a smooth function of the plan, free of servo lag and contact noise.
2. A Cartesian goal from the task planner (reach: the target; push: a small state machine that
   approaches behind the puck, descends, pushes along the puck->goal line, and backs off to
   re-approach when the puck slides off the pusher; pick_place: approach above the prompted cube
   with the fingers open and turned square to it, descend, close, lift, move over the zone, descend,
   open, retreat; back to approach, open, if the cube is lost on the way).
3. A 5-D task velocity: tool position (P gain, speed cap) plus tool axis pointing down (rotation
   about the tool axis is left free; pick_place adds it as a sixth row, to turn the fingers square to
   the cube), mapped to joint velocity with damped least squares on `mj_jacSite`, plus a null-space
   pull towards the home posture.
4. A per-joint limiter: |v| <= v_max, |a| <= a_max, |jerk| <= j_max, acceleration bounded by
   sqrt(2 j_max |dv|) so it can ramp to zero without overshoot, and velocity bounded by the speed
   from which it can stop before the joint range (minus a margin).

Defaults are well inside the FR3 limits (reference/limits.md), measured as the robot measures them
(backward differences of consecutive commands): v <= 50% of FR3 v_max and of Franka's conservative
box, a <= 4 rad/s^2 (FR3: 10), jerk <= 200 rad/s^3 (FR3: 5000).

With the hand, `expert.gripper` is the finger setpoint (m per finger) to send with each `act()`
(`arm.step(expert.act(), gripper=expert.gripper)`): it moves at <= 90 % of the hand's 0.05 m/s and
<= GRIPPER_A_MAX, so it passes the safety filter with config/fr3_hand.yaml's finger limits.
"""

from __future__ import annotations

import math

import numpy as np

from wam_control.sim.arm import FINGER_MAX_SPEED, GRIPPER_OPEN, HOME_Q, SimArm, mujoco

# Franka's conservative "rectangular" velocity limits (rad/s), halved.
DEFAULT_V_MAX = 0.5 * np.array([2.0, 1.0, 1.5, 1.25, 3.0, 1.5, 3.0])
DEFAULT_A_MAX = 4.0
DEFAULT_J_MAX = 200.0
JOINT_MARGIN = 0.08  # rad kept clear of each joint limit

_DOWN = np.array([0.0, 0.0, -1.0])
GRIPPER_V_MAX = 0.9 * FINGER_MAX_SPEED
GRIPPER_A_MAX = 0.4  # m/s^2 per finger (config/fr3_hand.yaml: 0.5)
PICK_HOVER_M = 0.10  # pick_place: the approach ends this far above the cube, the descent starts there
PICK_CARRY_Z_M = 0.15  # pick_place: the cube is carried (and the arm retreats) at this height
# pick_place, resynced below the hover point but off the cube's centre (a student that stopped part-way
# down): re-centre at that height instead of going back up. Within this radius of the centre...
RECENTER_RADIUS_M = 0.05
# ...and no lower than this above the cube's top while moving sideways: the finger pads reach 8.4 mm
# below the tool point, so they pass 6.6 mm over the cube.
RECENTER_CLEARANCE_M = 0.015
RECENTER_YAW_GATE = 0.1  # rad: the descent squares the fingers on the way down (the grasp squares the cube)
PUSH_RECENTER_RADIUS_M = 0.04
"""push: below the hover point and this close (xy) to the pre-push point, a resynced teacher moves
across at that height and descends, instead of climbing back to the hover point. 4 cm keeps the
sideways path clear of the puck (the pre-push point is the standoff + 4.5 cm behind its centre)."""
# pick_place, resynced holding the cube low over the zone: place from there when the tool is this far
# inside the region where the cube's centre counts as in the zone (per axis)
PLACE_SLACK_M = 0.005
# ...and holding it low just outside that region, within this distance of the place point: across to
# it at that height, then down. "lift" (back up to the carry height, across, down again) against the
# demonstrations' straight descent left students hovering a few cm off the zone, the cube held 2-3 cm
# over the table (kc7, kc8). Other cubes' centres are >= 12 cm from the zone's centre (the task's
# min_zone_gap), so this sideways path keeps the held cube >= 6 cm from them.
PLACE_SHIFT_RADIUS_M = 0.06
PLACE_SHIFT_CLEARANCE_M = 0.01  # the held cube's bottom stays this high over the table while moving across
# pick_place with `place_spread_m` > 0: the place point's offset from the zone's centre is drawn per
# episode from this stream of the episode's seed (the task's own draws use the seed itself).
_PLACE_SEED_OFFSET = 7_919
_MISS_SEED_OFFSET = 7_927  # the same for `descent_miss_m`'s draw
# The fingers close along this direction of the hand frame (fr3_hand_base is -45 deg about the tool axis).
_FINGER_AXIS_HAND = np.array([math.sqrt(0.5), math.sqrt(0.5), 0.0])


def finger_axis_xy(rot: np.ndarray) -> np.ndarray:
    """The unit direction the fingers travel along, in the table plane, for the hand's rotation `rot`."""
    f = (rot @ _FINGER_AXIS_HAND)[:2]
    return f / max(float(np.linalg.norm(f)), 1e-9)


_X = np.array([1.0, 0.0, 0.0])
_Y = np.array([0.0, 1.0, 0.0])


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """3-vector cross product (np.cross's axis handling costs ~50 us per call, 3 calls per tick)."""
    return np.array([a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]])


class Expert:
    """Scripted controller for `arm.task`; call `reset()` after `arm.reset()`, then `act()` per tick."""

    def __init__(
        self,
        arm: SimArm,
        *,
        v_max: np.ndarray | float = DEFAULT_V_MAX,
        a_max: float = DEFAULT_A_MAX,
        j_max: float = DEFAULT_J_MAX,
        damping: float = 0.05,
        place_spread_m: float = 0.0,
        descent_miss_m: float = 0.0,
    ) -> None:
        """`place_spread_m` (pick_place): put the cube down at a point drawn per episode (seeded by the
        arm's episode seed) up to this far from the zone's centre per axis, instead of at the centre,
        so demonstrations show the release wherever it still counts as in the zone; the resync then
        places straight down from anywhere within that spread.

        `descent_miss_m` (pick_place): the first descent ends at the cube's height beside it, between
        half and all of this far off its centre across the finger axis (drawn per episode), and the
        grasp is made from there as the resynced expert makes it (sideways between the open pads):
        demonstrations of the recovery a student needs when it comes down off the cube."""
        self.arm = arm
        if place_spread_m < 0.0 or descent_miss_m < 0.0:
            raise ValueError(f"Expert: place_spread_m and descent_miss_m must be >= 0, got {place_spread_m}, {descent_miss_m}")
        self.place_spread_m = float(place_spread_m)
        self.descent_miss_m = float(descent_miss_m)
        self._miss_pending = False
        self._miss_xy = np.zeros(2)
        self._place_off = np.zeros(2)  # pick_place: the place point, from the zone's centre
        self.model = arm.model
        self._kin = mujoco.MjData(arm.model)
        self._site = arm.model.site("ee").id
        self._qadr = arm._qadr
        self.dt = arm.control_period
        n = len(arm.joint_names)
        self.v_max = np.broadcast_to(np.asarray(v_max, float), (n,)).copy()
        self.a_max = float(a_max)
        self.j_max = float(j_max)
        self.damping = float(damping)
        self.q_lo = arm.joint_range[:, 0] + JOINT_MARGIN
        self.q_hi = arm.joint_range[:, 1] - JOINT_MARGIN
        self._jacp = np.zeros((3, arm.model.nv))
        self._jacr = np.zeros((3, arm.model.nv))
        self._dof = arm._dadr
        self.q = np.zeros(n)
        self.v = np.zeros(n)
        self.a = np.zeros(n)
        self.phase = "approach"
        self._u = np.array([1.0, 0.0])
        self._lo = self.q_lo.copy()
        self._hi = self.q_hi.copy()
        self.gripper = GRIPPER_OPEN
        self._grip_target = GRIPPER_OPEN
        self._grip_v = 0.0
        self._phase_t = 0.0
        self._hold = np.zeros(3)
        self.reset()

    def reset(self) -> None:
        """Seed from the measured joint state at rest (as a real robot requires)."""
        _, q, _ = self.arm.joint_state()
        self.q[:] = q
        # A start outside the margin band must not jump inside it: widen the band to include it.
        self._lo = np.minimum(self.q_lo, q)
        self._hi = np.maximum(self.q_hi, q)
        self.v[:] = 0.0
        self.a[:] = 0.0
        self.phase = "approach"
        self._phase_t = 0.0
        if self.arm.has_hand:
            self.gripper = float(np.mean(self.arm.gripper_command()))
        self._grip_target = self.gripper
        self._grip_v = 0.0
        if self.arm.task.name == "pick_place":
            self.sync_phase()
            self._miss_pending = self.descent_miss_m > 0.0

    def _miss_offset(self, rot: np.ndarray) -> np.ndarray:
        """`descent_miss_m`: across the finger axis (the cube then passes between the open pads), by a
        length and side drawn from the episode's seed."""
        f = finger_axis_xy(rot)
        rng = np.random.default_rng([self.arm.seed, _MISS_SEED_OFFSET])
        length = rng.uniform(0.5, 1.0) * self.descent_miss_m
        side = 1.0 if rng.random() < 0.5 else -1.0
        return side * length * np.array([-f[1], f[0]])

    def _place_offset(self) -> np.ndarray:
        if self.place_spread_m == 0.0:
            return np.zeros(2)
        rng = np.random.default_rng([self.arm.seed, _PLACE_SEED_OFFSET])
        return rng.uniform(-self.place_spread_m, self.place_spread_m, 2)

    # ------------------------------------------------------------------ planner state
    def sync_phase(self) -> str:
        """Set the phase from what the sim shows now (reach has none; push: `_sync_phase_other`).
        pick_place: set the phase from what the sim shows now (a DAgger teacher labelling a state the
        student reached, or a restart mid-task): in the zone and resting -> open while the fingers
        touch it (held or not), then retreat / done; the cube held between closed fingers -> lift /
        move / place by where it is (lowered inside the zone: place from there); over the cube
        below the hover point -> descend, or close at grasp height; well below it and a few cm off ->
        descend when the cube lies between the open pads, else recenter (sideways at that height,
        over the cube's top, then descend); otherwise approach. Below the hover point and within
        5 cm of the cube nothing goes back up to it (at most over the cube's top). The finger setpoint
        starts from the one in force. Returns the phase."""
        task = self.arm.task
        p, rot = self.arm.ee_pose()
        if task.name != "pick_place":
            return self._sync_phase_other(p)
        cube, zone = task.cube(), task.zone()  # type: ignore[attr-defined]
        self._place_off = self._place_offset()
        half = task.cube_half  # type: ignore[attr-defined]
        fingers = float(np.mean(self.arm.gripper_state()[1]))
        self.gripper = float(np.mean(self.arm.gripper_command()))
        self._grip_target, self._grip_v, self._phase_t = self.gripper, 0.0, 0.0
        self._hold = p.copy()
        z_carry = PICK_CARRY_Z_M
        held = (
            np.linalg.norm(cube - p) < 0.03 and half - 0.006 < fingers < half + 0.004 and task.touching()  # type: ignore[attr-defined]
        )
        if task.in_zone() and task.resting():  # type: ignore[attr-defined]
            # placed (held or not): fingers still on it -> let go; clear of it -> up and wait
            self._grip_target = GRIPPER_OPEN
            if task.touching():  # type: ignore[attr-defined]
                self.phase = "open"
            else:
                self.phase = "done" if p[2] > z_carry - 0.01 else "retreat"
            return self.phase
        if held:
            self._grip_target = 0.0  # carrying squeezes, whatever setpoint the student had
            # Lowered inside the zone (with room to spare), "lift" would label the way back up to the
            # carry height and over the centre: the "back up" that stalled the students over the cube,
            # now over the zone. Place from there instead, at the place point: here when within the
            # spread of the zone's centre, else the square's nearest point (the descent re-centres).
            spread = self.place_spread_m
            self._place_off = np.clip(p[:2] - zone[:2], -spread, spread)
            room = task.zone_half - task.zone_margin - PLACE_SLACK_M  # type: ignore[attr-defined]
            inside = bool(np.all(np.abs(p[:2] - zone[:2]) <= room))
            if np.linalg.norm(p[:2] - zone[:2] - self._place_off) < 0.006 or (inside and p[2] < z_carry - 0.01):
                self.phase = "place"
            elif p[2] > z_carry - 0.01:
                self.phase = "move"
            elif np.linalg.norm(p[:2] - zone[:2] - self._place_off) < PLACE_SHIFT_RADIUS_M:
                self.phase = "shift"
            else:
                self.phase = "lift"
            return self.phase
        self._grip_target = GRIPPER_OPEN
        # Not held. Over the cube and below the hover point is the descent (or, at grasp height, the
        # grasp) under way: carry on with it. Reading every un-held state as "approach" sent each
        # chunk back up to the hover point with open fingers, so a teacher that resyncs every chunk
        # never grasped (a DAgger label followed at the runtime's cadence failed every pick_place).
        off = float(np.linalg.norm(p[:2] - cube[:2]))
        z_hover = cube[2] + PICK_HOVER_M
        if off < 0.01 and p[2] < z_hover + 0.02:  # at or below the hover band, where approach ends
            if off < 0.006 and p[2] < cube[2] + 0.008:
                self.phase = "close"
                self._grip_target = 0.0
            else:
                self.phase = "descend"
        elif off < RECENTER_RADIUS_M and p[2] < z_hover - 0.015:
            # Part-way down and a few cm off: "approach" would label the way back up to the hover point,
            # while the demonstrations descend from a centimetre off; a student between the two hovers
            # where it averages them (the fifth run's stalls, models/MODEL_CARD.md). With the cube
            # between the open pads the straight line to the grasp point is clear: descend along it.
            # Otherwise re-centre first (over the cube's top when low), then descend.
            between = self._cube_between_pads(p, rot, fingers)
            self.phase = "descend" if between else "recenter"
        else:
            self.phase = "approach"
        return self.phase

    def _sync_phase_other(self, p: np.ndarray) -> str:
        """reach: no phase. push: low behind the puck and facing the goal -> push (or done when it is
        there), low elsewhere -> retreat, above the pre-push point -> descend, part-way down and a few cm
        off it -> recenter (across at that height, then descend), else approach; the fingers keep
        the setpoint in force (push closes them again on the next act)."""
        if self.arm.has_hand:
            self.gripper = float(np.mean(self.arm.gripper_command()))
        self._grip_target, self._grip_v, self._phase_t = self.gripper, 0.0, 0.0
        self._hold = p.copy()
        self.phase = "approach"
        if self.arm.task.name != "push":
            return self.phase
        obj, goal, u, standoff, pre, z_hover, z_push, dist = self._push_geometry()
        self._u = u
        low = abs(p[2] - z_push) < 0.015
        off = float(np.linalg.norm(p[:2] - pre))  # from the pre-push point, xy
        if low and self._behind_puck(obj - p[:2], u, standoff):
            self.phase = "done" if dist < 0.008 else "push"
        elif low:
            self.phase = "retreat"
        elif off < 0.01 and p[2] < z_hover + 0.03:  # at or below the hover point
            self.phase = "descend"
        elif off < PUSH_RECENTER_RADIUS_M and p[2] < z_hover - 0.015:
            # Part-way down and a few cm off the pre-push point: "approach" would label the way back up
            # to the hover point, and a centimetre closer "descend" labels the way down; a student
            # between the two hovers where it averages them (the thirteenth run's push stalls,
            # docs/benchmarks/closed_loop.md). Across at this height, then down, as pick_place does.
            self.phase = "recenter"
        return self.phase

    @staticmethod
    def _behind_puck(rel: np.ndarray, u: np.ndarray, standoff: float) -> bool:
        """Whether the pusher (puck minus pusher = `rel`, xy) is close behind the puck and within 35
        degrees of the push direction `u`: pushing goes on; otherwise it retreats and re-approaches."""
        dist = float(np.linalg.norm(rel))
        return dist <= standoff + 0.08 and float(rel @ u) / max(dist, 1e-9) >= math.cos(math.radians(35.0))

    def _push_geometry(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, np.ndarray, float, float, float]:
        """(puck xy, goal xy, push direction, standoff, pre-push point, hover z, push z, puck-goal distance)."""
        task = self.arm.task
        info = task.info()
        obj = np.asarray(info["object"])[:2]
        goal = np.asarray(info["goal"])[:2]
        d = goal - obj
        dist = float(np.linalg.norm(d))
        u = d / dist if dist > 1e-3 else self._u
        # puck + pusher radius (the rod; with the hand, the closed fingers' half-diagonal) + clearance
        standoff = task.puck_radius + (0.019 if self.arm.has_hand else 0.012) + 0.004  # type: ignore[attr-defined]
        pre = obj - u * (standoff + 0.045)
        return obj, goal, u, standoff, pre, 0.09, 0.018, dist

    def snapshot(self) -> dict[str, object]:
        """The planner's whole state (command, limiter, phase, gripper), for `restore` after imagining
        a chunk ahead (a teacher labelling the student's state must not advance the real plan)."""
        return {
            "q": self.q.copy(), "v": self.v.copy(), "a": self.a.copy(), "phase": self.phase,
            "phase_t": self._phase_t, "hold": self._hold.copy(), "u": self._u.copy(),
            "gripper": self.gripper, "grip_target": self._grip_target, "grip_v": self._grip_v,
        }  # fmt: skip

    def restore(self, state: dict[str, object]) -> None:
        self.q[:] = state["q"]  # type: ignore[index]
        self.v[:] = state["v"]  # type: ignore[index]
        self.a[:] = state["a"]  # type: ignore[index]
        self.phase = str(state["phase"])
        self._phase_t = float(state["phase_t"])  # type: ignore[arg-type]
        self._hold = np.array(state["hold"], dtype=float)
        self._u = np.array(state["u"], dtype=float)
        self.gripper = float(state["gripper"])  # type: ignore[arg-type]
        self._grip_target = float(state["grip_target"])  # type: ignore[arg-type]
        self._grip_v = float(state["grip_v"])  # type: ignore[arg-type]

    # ------------------------------------------------------------------ kinematics
    def _fk(self) -> tuple[np.ndarray, np.ndarray]:
        self._kin.qpos[self._qadr] = self.q
        mujoco.mj_kinematics(self.model, self._kin)
        mujoco.mj_comPos(self.model, self._kin)
        return self._kin.site_xpos[self._site].copy(), self._kin.site_xmat[self._site].reshape(3, 3).copy()

    def tool_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """Tool position and rotation at the expert's current command."""
        return self._fk()

    # ------------------------------------------------------------------ planners
    def _plan_reach(self, p: np.ndarray) -> tuple[np.ndarray, float]:
        return self.arm.task.info()["target"], 0.25  # type: ignore[return-value]

    def _plan_push(self, p: np.ndarray) -> tuple[np.ndarray, float]:
        obj, goal, u, standoff, pre, z_hover, z_push, dist = self._push_geometry()
        self._u = u
        rel = obj - p[:2]
        if self.phase == "approach":
            if np.linalg.norm(p[:2] - pre) < 0.01 and abs(p[2] - z_hover) < 0.03:
                self.phase = "descend"
            return np.array([pre[0], pre[1], z_hover]), 0.25
        if self.phase == "recenter":  # only ever entered by `sync_phase`
            if np.linalg.norm(p[:2] - pre) < 0.01:
                self.phase = "descend"
            return np.array([pre[0], pre[1], max(self._hold[2], z_push)]), 0.12  # at the resync height
        if self.phase == "descend":
            if abs(p[2] - z_push) < 0.006:
                self.phase = "push"
            return np.array([pre[0], pre[1], z_push]), 0.12
        if self.phase == "push":
            if dist < 0.008:
                self.phase = "done"
            if not self._behind_puck(rel, u, standoff):
                self.phase = "retreat"
            contact = obj - u * standoff
            lead = min(0.02, dist)
            tgt = contact + u * lead
            return np.array([tgt[0], tgt[1], z_push]), 0.06
        if self.phase == "retreat":
            if abs(p[2] - z_hover) < 0.02:
                self.phase = "approach"
            back = p[:2] - u * 0.01
            return np.array([back[0], back[1], z_hover]), 0.15
        # done: hold just behind the puck; resume if it drifted off the goal
        if dist > 0.02:
            self.phase = "retreat"
        hold = obj - u * (standoff + 0.01)
        return np.array([hold[0], hold[1], z_push]), 0.05

    def _set_phase(self, phase: str) -> None:
        self.phase = phase
        self._phase_t = 0.0

    def _finger_yaw_error(self, rot: np.ndarray, cube_yaw: float) -> float:
        """Rotation about world z that turns the finger axis square to the cube's faces (rad)."""
        f = rot @ _FINGER_AXIS_HAND
        phi = math.atan2(f[1], f[0])
        return (cube_yaw - phi + math.pi / 4) % (math.pi / 2) - math.pi / 4

    def _cube_between_pads(self, p: np.ndarray, rot: np.ndarray, fingers: float) -> bool:
        """pick_place: whether the cube's extent along the finger axis (turned by the yaw error) lies
        between the pads' inner faces (each `fingers` m from the tool axis), with 4 mm to spare: the
        hand can then move toward the grasp point at any height without a pad meeting the cube."""
        task = self.arm.task
        f = finger_axis_xy(rot)
        along = abs(float((task.cube()[:2] - p[:2]) @ f))  # type: ignore[attr-defined]
        yaw = self._finger_yaw_error(rot, task.cube_yaw())  # type: ignore[attr-defined]
        extent = task.cube_half * (abs(math.cos(yaw)) + abs(math.sin(yaw)))  # type: ignore[attr-defined]
        return along + extent < fingers - 0.004

    def _plan_pick_place(self, p: np.ndarray, rot: np.ndarray) -> tuple[np.ndarray, float, float]:
        task = self.arm.task
        cube = task.cube()  # type: ignore[attr-defined]
        zone = task.zone()  # type: ignore[attr-defined]
        half = task.cube_half  # type: ignore[attr-defined]
        z_hover, z_carry = cube[2] + PICK_HOVER_M, PICK_CARRY_Z_M
        self._phase_t += self.dt
        yaw_err = 0.0
        if self.phase == "approach":
            self._grip_target = GRIPPER_OPEN
            yaw_err = self._finger_yaw_error(rot, task.cube_yaw())  # type: ignore[attr-defined]
            if (
                np.linalg.norm(p[:2] - cube[:2]) < 0.006
                and abs(p[2] - z_hover) < 0.02
                and abs(yaw_err) < 0.03
                and self.gripper >= GRIPPER_OPEN - 1e-6
            ):
                if self._miss_pending:
                    self._miss_xy = cube[:2] + self._miss_offset(rot)
                    self._set_phase("miss")
                else:
                    self._set_phase("descend")
            return np.array([cube[0], cube[1], z_hover]), 0.25, yaw_err
        if self.phase == "miss":  # only with descent_miss_m, once per episode
            yaw_err = self._finger_yaw_error(rot, task.cube_yaw())  # type: ignore[attr-defined]
            goal = np.array([self._miss_xy[0], self._miss_xy[1], cube[2]])
            if np.linalg.norm(p - goal) < 0.005:
                self._miss_pending = False
                self.sync_phase()  # from beside the cube: across to the grasp point, as the teacher labels it
                return p.copy(), 0.05, 0.0
            return goal, 0.08, yaw_err
        if self.phase == "recenter":  # only ever entered by `sync_phase`
            self._grip_target = GRIPPER_OPEN
            yaw_err = self._finger_yaw_error(rot, task.cube_yaw())  # type: ignore[attr-defined]
            z_clear = cube[2] + half + RECENTER_CLEARANCE_M
            if p[2] < z_clear - 0.005:  # beside the cube: straight up before any sideways move
                return np.array([p[0], p[1], z_clear]), 0.08, yaw_err
            if (
                np.linalg.norm(p[:2] - cube[:2]) < 0.006
                and abs(yaw_err) < RECENTER_YAW_GATE
                and self.gripper >= GRIPPER_OPEN - 1e-6
            ):
                self._set_phase("descend")
            return np.array([cube[0], cube[1], max(p[2], z_clear)]), 0.1, yaw_err
        if self.phase == "descend":
            yaw_err = self._finger_yaw_error(rot, task.cube_yaw())  # type: ignore[attr-defined]
            # aim a little below the cube's centre: the P loop slows down near the goal
            if p[2] < cube[2] + 0.004 and np.linalg.norm(p[:2] - cube[:2]) < 0.005:
                self._hold = p.copy()
                self._set_phase("close")
            return np.array([cube[0], cube[1], cube[2] - 0.004]), 0.08, yaw_err
        if self.phase == "close":
            self._grip_target = 0.0
            if self.gripper <= 0.0 and self._phase_t > 1.2:
                self._set_phase("lift")
            return self._hold.copy(), 0.05, 0.0
        held = np.linalg.norm(cube - p) < 0.03
        if self.phase in ("lift", "move", "shift") and not held:
            self._set_phase("approach")  # dropped: start again
            return p.copy(), 0.1, 0.0
        if self.phase == "lift":
            if p[2] > z_carry - 0.01:
                self._set_phase("move")
            return np.array([self._hold[0], self._hold[1], z_carry]), 0.15, 0.0
        place = zone[:2] + self._place_off
        if self.phase == "shift":  # only ever entered by `sync_phase`
            if np.linalg.norm(p[:2] - place) < 0.006:
                self._set_phase("place")
            z_low = p[2] - (cube[2] - half) + PLACE_SHIFT_CLEARANCE_M  # the tool height that keeps the cube clear
            return np.array([place[0], place[1], max(p[2], z_low)]), 0.08, 0.0
        if self.phase == "move":
            if np.linalg.norm(p[:2] - place) < 0.006:
                self._set_phase("place")
            return np.array([place[0], place[1], z_carry]), 0.25, 0.0
        if self.phase == "place":
            z_place = half + 0.002
            if p[2] < z_place + 0.004:
                self._set_phase("open")
            return np.array([place[0], place[1], z_place]), 0.08, 0.0
        if self.phase == "open":
            self._grip_target = GRIPPER_OPEN
            if self.gripper >= GRIPPER_OPEN - 1e-6 and self._phase_t > 0.3:
                self._hold = p.copy()
                self._set_phase("retreat")
            return p.copy(), 0.05, 0.0
        # retreat, then done: straight up and hold; start again if the cube is not in place
        if self.phase == "retreat" and p[2] > z_carry - 0.01:
            self._set_phase("done")
        if self.phase == "done" and not task.in_zone() and self._phase_t > 1.0:  # type: ignore[attr-defined]
            self._set_phase("approach")
        return np.array([self._hold[0], self._hold[1], z_carry]), 0.15, 0.0

    def _step_gripper(self) -> None:
        err = self._grip_target - self.gripper
        a_max = GRIPPER_A_MAX
        dv_max = a_max * self.dt
        if abs(err) < 1e-6 and abs(self._grip_v) <= dv_max:  # arrived: stop within one step's dv
            self.gripper, self._grip_v = self._grip_target, 0.0
            return
        # brake at half the acceleration limit so the discrete profile never needs more than a_max
        v_des = math.copysign(min(GRIPPER_V_MAX, math.sqrt(a_max * abs(err))), err)
        self._grip_v += float(np.clip(v_des - self._grip_v, -dv_max, dv_max))
        nxt = self.gripper + self._grip_v * self.dt
        if (self._grip_target - nxt) * err < 0:  # would pass the target: land on it
            nxt = self._grip_target
        self.gripper = float(np.clip(nxt, 0.0, GRIPPER_OPEN))

    # ------------------------------------------------------------------ control
    def act(self) -> np.ndarray:
        """Next joint position target (rad, joint order of JOINT_NAMES); a fresh array. With the hand,
        `self.gripper` is then the finger setpoint to send with it."""
        p, rot = self._fk()
        yaw_err: float | None = None
        if self.arm.task.name == "reach":
            goal, speed = self._plan_reach(p)
        elif self.arm.task.name == "push":
            goal, speed = self._plan_push(p)
            if self.arm.has_hand:  # push with the fingers closed
                self._grip_target = 0.0
                self._step_gripper()
        elif self.arm.task.name == "pick_place":
            goal, speed, yaw_err = self._plan_pick_place(p, rot)
            self._step_gripper()
        else:
            raise ValueError(f"expert has no planner for task {self.arm.task.name!r}")

        err = goal - p
        vel = 4.0 * err
        norm = float(np.linalg.norm(vel))
        if norm > speed:
            vel *= speed / norm
        axis = rot[:, 2]
        omega = 3.0 * _cross(axis, _DOWN)
        # Two directions orthogonal to the tool axis: rotation about the axis itself stays free.
        e1 = _cross(axis, _X if abs(axis[0]) < 0.9 else _Y)
        e1 /= np.linalg.norm(e1)
        e2 = _cross(axis, e1)

        mujoco.mj_jacSite(self.model, self._kin, self._jacp, self._jacr, self._site)
        jp = self._jacp[:, self._dof]
        jr = self._jacr[:, self._dof]
        if yaw_err is None:
            jac = np.vstack([jp, e1 @ jr, e2 @ jr])
            twist = np.concatenate([vel, [e1 @ omega, e2 @ omega]])
        else:  # the sixth row: rotation about the tool axis (world z turned by the yaw error)
            omega = omega + np.clip(3.0 * yaw_err, -1.0, 1.0) * np.array([0.0, 0.0, 1.0])
            jac = np.vstack([jp, e1 @ jr, e2 @ jr, axis @ jr])
            twist = np.concatenate([vel, [e1 @ omega, e2 @ omega, axis @ omega]])
        # Damped least squares through MuJoCo's Cholesky, not np.linalg.inv: OpenBLAS's threaded
        # LAPACK took ~4 ms for this 6x6 inverse on a loaded 2-core machine (40 us single-threaded),
        # which made the expert, the recorder and every teacher 50x slower than the physics.
        jjt = jac @ jac.T + (self.damping**2) * np.eye(jac.shape[0])
        mujoco.mju_cholFactor(jjt, 0.0)
        y = np.empty(jac.shape[0])
        mujoco.mju_cholSolve(y, jjt, twist)
        dq = jac.T @ y
        # Null-space pull: (I - J^T (J J^T + d^2 I)^-1 J) r.
        # (pick_place: a weaker pull, which otherwise leaks through the damped inverse as a few mm
        # of steady-state error at the table)
        null_gain = 1.0 if yaw_err is None else 0.1
        r = null_gain * (HOME_Q - self.q)
        mujoco.mju_cholSolve(y, jjt, jac @ r)
        dq += r - jac.T @ y
        return self._limit(dq)

    def _limit(self, v_des: np.ndarray) -> np.ndarray:
        dt, a_max, j_max = self.dt, self.a_max, self.j_max
        v_des = np.clip(v_des, -self.v_max, self.v_max)
        # Speed from which the joint can still stop inside its range at a_max / 2.
        room_hi = np.maximum(self._hi - self.q, 0.0)
        room_lo = np.maximum(self.q - self._lo, 0.0)
        v_des = np.minimum(v_des, np.sqrt(a_max * room_hi))
        v_des = np.maximum(v_des, -np.sqrt(a_max * room_lo))
        dv = v_des - self.v
        a_des = np.sign(dv) * np.minimum.reduce(
            [np.full_like(dv, a_max), np.abs(dv) / dt, np.sqrt(2 * j_max * np.abs(dv))]
        )
        a_new = self.a + np.clip(a_des - self.a, -j_max * dt, j_max * dt)
        self.v += a_new * dt
        self.a = a_new
        self.q = np.clip(self.q + self.v * dt, self._lo, self._hi)
        return self.q.copy()


def run_expert_episode(arm: SimArm, expert: Expert, seed: int, settle_s: float = 0.5) -> tuple[bool, float]:
    """Reset to `seed`, run the expert until success held `settle_s` or the horizon; (success, time)."""
    arm.reset(seed)
    expert.reset()
    held = 0.0
    while arm.time < arm.task.horizon_s:
        q = expert.act()
        arm.step(q, gripper=expert.gripper if arm.has_hand else None)
        held = held + arm.control_period if arm.task.success() else 0.0
        if held >= settle_s:
            return True, arm.time
    return arm.task.success(), arm.time
