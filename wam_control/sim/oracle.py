"""A privileged "oracle" policy: the scripted expert packaged as a policy backend.

It knows the task's state (privileged) and produces an action chunk with the model contract's
semantics: step k is for t_obs + k * action_dt, absolute joint positions (and, for a contract with a
gripper column, the expert's finger setpoint). It honours the prefix the way a model trained with
prefix conditioning should: steps < prefix_len are the prefix, bit for bit, and the rest is the
expert's plan continued from the last prefix action (position, and the velocity the prefix implies).
Without a prefix the plan starts at the measured state.

Its purpose is to separate the runtime from the learned model: with a perfect, self-consistent
policy, any loss of success or smoothness that appears under inference delay is the runtime's
(scheduler, harness) fault, not the model's.

Tasks:

- reach: stateless; every chunk is planned afresh from the prefix (or the measured state).
- pick_place (a contract with a gripper column, the hand scene): the expert is a state machine
  (approach, descend, close, lift, move, place, open, retreat), and its phase cannot be read back from
  a prefix, so the oracle keeps the planner state of every step it planned (`Expert.snapshot`) and
  continues a new chunk from the state of the step the prefix ends on (the latest one planned at or
  before it; sync execution: the last step of the chunk that ran). The first chunk of an episode, or
  one after the cube was dropped, starts from the phase the sim shows (`Expert.sync_phase`). While it
  plans a chunk ahead the sim stays frozen at the observation, so the planner sees a carried cube
  move with its fingers (the grasp offset measured at the observation) instead of being left behind.
- push: not supported (its planner re-approaches on what the puck does, which a frozen sim cannot
  show ahead).
"""

from __future__ import annotations

import bisect
from typing import Any

import numpy as np

from wam_control.policy.base import PolicyInput, PolicyOutput
from wam_control.policy.contract import ModelContract
from wam_control.sim.arm import GRIPPER_OPEN, SimArm
from wam_control.sim.expert import Expert

TASKS = ("reach", "pick_place")
_CARRY = ("lift", "move", "place")
"""pick_place phases in which the planner holds the cube."""
_HELD_M = 0.03
"""The expert's own "held" distance (cube centre to tool point)."""


class _ImaginedTask:
    """The arm's task as the oracle's expert sees it while planning ahead (`imagining`): the prompted
    cube, while carried, is at the planned tool point plus the grasp offset of the observation; once
    put down it stays where it was put. Everything else is the real task."""

    def __init__(self, task: Any) -> None:
        self._task = task
        self.expert: Expert | None = None
        self.imagining = False
        self.offset = np.zeros(3)
        self.released: np.ndarray | None = None

    def begin(self, ee: np.ndarray) -> None:
        self.offset = self._task.cube() - ee
        self.released = None
        self.imagining = True

    def cube(self, i: int | None = None) -> np.ndarray:
        real: np.ndarray = self._task.cube(i)
        e = self.expert
        if not self.imagining or e is None or (i is not None and i != self._task.target_index):
            return real
        if e.phase in _CARRY:
            pos: np.ndarray = e._kin.site_xpos[e._site] + self.offset
            self.released = pos.copy()
            return pos
        return real if self.released is None else self.released.copy()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._task, name)


class _ArmView:
    """The arm with `_ImaginedTask` as its task (what the oracle's expert is given)."""

    def __init__(self, arm: SimArm, task: _ImaginedTask) -> None:
        self._arm = arm
        self.task = task

    def __getattr__(self, name: str) -> Any:
        return getattr(self._arm, name)


class ExpertOracle:
    """`PolicyBackend`-compatible: `infer(PolicyInput) -> PolicyOutput`, reading the arm it was given.

    The arm must be in the state of the observation when `infer` runs: true in the lockstep harness,
    where the scripted worker calls the model at the observation tick. `gripper_index`: the action
    column of the gripper (default: the first extra action DOF of the contract, if any).
    """

    name = "expert-oracle"
    releases_gil = False

    def __init__(
        self,
        arm: SimArm,
        contract: ModelContract,
        control_hz: float,
        *,
        honour_prefix: bool = True,
        gripper_index: int | None = None,
        gripper_range: tuple[float, float] | None = None,
    ) -> None:
        task = arm.task.name
        if task not in TASKS:
            raise ValueError(f"ExpertOracle supports the tasks {list(TASKS)}, got task {task!r}")
        if tuple(contract.joint_names) != tuple(arm.joint_names):
            raise ValueError(
                f"contract joints {list(contract.joint_names)} differ from the arm's {list(arm.joint_names)}"
            )
        nj = contract.num_joints
        if gripper_index is None and contract.action_dim > nj:
            gripper_index = nj
        if gripper_index is not None and not nj <= gripper_index < contract.action_dim:
            raise ValueError(f"gripper_index {gripper_index} is not an extra action column of {list(contract.actions)}")
        if gripper_index is not None and not arm.has_hand:
            raise ValueError("the contract has a gripper column but the arm has no hand (SimArm(..., hand=True))")
        if task == "pick_place" and gripper_index is None:
            raise ValueError(
                f"pick_place needs a gripper action column; the contract's actions are {list(contract.actions)}"
            )
        steps = contract.action_dt * control_hz
        self.ticks_per_step = int(round(steps))
        if self.ticks_per_step < 1 or abs(steps - self.ticks_per_step) > 1e-6:
            raise ValueError(f"action_dt * control_hz must be a whole number of ticks, got {steps}")
        self.arm = arm
        self.contract = contract
        self.action_dt = float(contract.action_dt)
        self.gripper_index = gripper_index
        lo, hi = (0.0, GRIPPER_OPEN) if gripper_range is None else (float(gripper_range[0]), float(gripper_range[1]))
        if not 0.0 <= lo < hi <= GRIPPER_OPEN:
            raise ValueError(f"gripper_range must be within [0, {GRIPPER_OPEN}] m, got {gripper_range!r}")
        lo, hi = lo + 1e-4, hi - 1e-4  # inside the filter's parking gap at either limit too
        self._grip_lo, self._grip_scale = lo, (hi - lo) / GRIPPER_OPEN
        """The expert's finger setpoint (0 closed .. GRIPPER_OPEN) is sent mapped linearly onto
        `gripper_range` (the safety filter's envelope, its position margin inside the finger limits), so
        the filter has nothing to clamp; closed still squeezes a cube, open still clears one."""
        self.stateful = task == "pick_place"
        """The planner's phase is carried from chunk to chunk (see the module docstring)."""
        self._task = _ImaginedTask(arm.task)
        self.expert = Expert(_ArmView(arm, self._task))  # type: ignore[arg-type]
        self._task.expert = self.expert
        self.honour_prefix = bool(honour_prefix)
        """False: plan from the measured state and ignore the prefix (a policy without prefix
        conditioning); the runtime's seam handling then has to absorb every disagreement."""
        self.calls = 0
        self.resyncs = 0
        """Chunks whose planner state came from the sim (`sync_phase`), not from an earlier plan."""
        self._plan_t: list[float] = []
        self._plan_state: list[dict[str, object]] = []
        self._episode: tuple[int, float] = (-1, -1.0)
        self._latent = np.zeros(contract.latent_dim, np.float32)
        self._latent_pred = np.zeros((contract.latent_steps, contract.latent_dim), np.float32)

    def warmup(self, n: int = 3) -> None:
        """Nothing to warm up: no model, no lazy initialisation."""

    def describe(self) -> str:
        grip = "" if self.gripper_index is None else ", gripper column"
        return f"expert oracle (privileged scripted expert, {self.ticks_per_step} ticks per action step{grip})"

    def close(self) -> None:
        """Holds no resources of its own (the arm belongs to the caller)."""

    def start_state(self, inp: PolicyInput) -> tuple[np.ndarray, np.ndarray, int]:
        """(arm position, velocity rad/s, first step to plan) the continuation starts from."""
        n = int(inp.prefix_len)
        nj = self.contract.num_joints
        p = inp.action_prefix[:, :nj].astype(float)
        if n >= 3:
            # Second-order backward difference: the velocity at the last prefix point, not half a
            # step before it.
            v = (3.0 * p[n - 1] - 4.0 * p[n - 2] + p[n - 3]) / (2.0 * self.action_dt)
            return p[n - 1].copy(), v, n
        if n == 2:
            return p[1].copy(), (p[1] - p[0]) / self.action_dt, n
        if n == 1:
            return p[0].copy(), self.arm.joint_state()[2], n
        return inp.state[:nj].astype(float), self.arm.joint_state()[2], 1

    def _gripper_out(self, g: float) -> float:
        return self._grip_lo + self._grip_scale * g

    def _gripper_in(self, sent: float) -> float:
        """The expert's setpoint that `_gripper_out` sent as `sent` (the ends exact: the planner waits
        for fully open / fully closed)."""
        g = (sent - self._grip_lo) / self._grip_scale
        if g < 1e-6:
            return 0.0
        return GRIPPER_OPEN if g > GRIPPER_OPEN - 1e-6 else g

    # ------------------------------------------------------------------ planner state (pick_place)
    def _new_episode(self) -> bool:
        """The arm was reset since the last call (sim time went back, or another seed)."""
        key = (int(self.arm.seed), float(self.arm.time))
        new = key[0] != self._episode[0] or key[1] < self._episode[1]
        self._episode = key
        return new

    def _planner_at(self, t: float) -> None:
        """Set the expert to its planned state at sim time `t` (the latest step planned at or before
        it), or from what the sim shows when there is none or the planned grasp was lost."""
        e = self.expert
        i = bisect.bisect_right(self._plan_t, t + 1e-9) - 1
        if i < 0:
            e.reset()  # seeds the command from the measured state and the phase from the sim
            self.resyncs += 1
            return
        e.restore(self._plan_state[i])
        if e.phase in ("lift", "move"):
            ee = self.arm.ee_pose()[0]
            if np.linalg.norm(self.arm.task.cube() - ee) >= _HELD_M:  # type: ignore[attr-defined]
                e.sync_phase()  # dropped: the phase the sim shows (approach)
                self.resyncs += 1

    def _keep(self, t: float) -> None:
        self._plan_t.append(t)
        self._plan_state.append(self.expert.snapshot())

    # ------------------------------------------------------------------ inference
    def infer(self, inp: PolicyInput) -> PolicyOutput:
        self.calls += 1
        h = self.contract.horizon
        nj = self.contract.num_joints
        n = int(inp.prefix_len)
        if not 0 <= n <= h:
            raise ValueError(f"prefix_len must be in [0, {h}], got {n}")
        if not self.honour_prefix:
            n = 0
            inp = PolicyInput(inp.images, inp.state, inp.action_prefix, 0)
        actions = np.empty((h, self.contract.action_dim), np.float32)
        q0, v0, first = self.start_state(inp)
        e = self.expert
        gi = self.gripper_index
        t_obs = self.arm.time
        t_start = t_obs + (first - 1) * self.action_dt
        if self.stateful:
            if self._new_episode():
                self._plan_t.clear()
                self._plan_state.clear()
            self._planner_at(t_start)
            # This chunk replaces what was planned from its start on; older steps stay (a later
            # request may start from one of them), the ones before the observation go.
            i = bisect.bisect_left(self._plan_t, t_start - 1e-9)
            lo = bisect.bisect_left(self._plan_t, t_obs - 2.0 * self.action_dt)
            del self._plan_t[i:], self._plan_state[i:]
            del self._plan_t[: min(lo, i)], self._plan_state[: min(lo, i)]
        else:
            e.reset()  # joint-range band from the measured state; then overwrite the command state
        e.q[:] = q0
        e.v[:] = v0
        e.a[:] = 0.0
        if gi is not None and self.stateful:
            # The finger setpoint continues from the one sent: the prefix's last, or (no prefix: sync
            # execution held still while it planned, so from rest) the one the sim's servos track.
            sent = inp.action_prefix[n - 1, gi] if n > 0 else float(np.mean(self.arm.gripper_command()))
            e.gripper = self._gripper_in(float(sent))
            if n == 0:
                e._grip_v = 0.0
        if n > 0:
            actions[:n] = inp.action_prefix[:n]
        else:
            actions[0] = 0.0
            actions[0, :nj] = q0
            if gi is not None:
                actions[0, gi] = self._gripper_out(e.gripper)
        actions[first:, nj:] = actions[first - 1, nj:]  # extra DOFs the expert does not plan: held
        if self.stateful:
            self._keep(t_start)
            self._task.begin(self.arm.ee_pose()[0])
        try:
            for k in range(first, h):
                for _ in range(self.ticks_per_step):
                    e.act()
                actions[k, :nj] = e.q
                if gi is not None:
                    actions[k, gi] = self._gripper_out(e.gripper)
                if self.stateful:
                    self._keep(t_obs + k * self.action_dt)
        finally:
            self._task.imagining = False
        return PolicyOutput(actions, self._latent.copy(), self._latent_pred.copy())
