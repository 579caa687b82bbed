"""A privileged "oracle" policy: the scripted expert packaged as a policy backend.

It knows the task's target (privileged) and produces an action chunk with the model contract's
semantics: step k is for t_obs + k * action_dt, absolute joint positions. It honours the prefix the
way a model trained with prefix conditioning should: steps < prefix_len are the prefix, bit for bit,
and the rest is the expert's plan continued from the last prefix action (position, and the velocity
the prefix implies). Without a prefix the plan starts at the measured state.

Its purpose is to separate the runtime from the learned model: with a perfect, self-consistent
policy, any loss of success or smoothness that appears under inference delay is the runtime's
(scheduler, harness) fault, not the model's.

Reach only: the push planner is a state machine whose phase cannot be recovered from a prefix.
"""

from __future__ import annotations

import numpy as np

from wam_control.policy.base import PolicyInput, PolicyOutput
from wam_control.policy.contract import ModelContract
from wam_control.sim.arm import SimArm
from wam_control.sim.expert import Expert


class ExpertOracle:
    """`PolicyBackend`-compatible: `infer(PolicyInput) -> PolicyOutput`, reading the arm it was given.

    The arm must be in the state of the observation when `infer` runs: true in the lockstep harness,
    where the scripted worker calls the model at the observation tick.
    """

    name = "expert-oracle"
    releases_gil = False

    def __init__(
        self, arm: SimArm, contract: ModelContract, control_hz: float, *, honour_prefix: bool = True
    ) -> None:
        if arm.task.name != "reach":
            raise ValueError(f"ExpertOracle supports the reach task only, got task {arm.task.name!r}")
        if tuple(contract.joint_names) != tuple(arm.joint_names):
            raise ValueError(
                f"contract joints {list(contract.joint_names)} differ from the arm's {list(arm.joint_names)}"
            )
        steps = contract.action_dt * control_hz
        self.ticks_per_step = int(round(steps))
        if self.ticks_per_step < 1 or abs(steps - self.ticks_per_step) > 1e-6:
            raise ValueError(f"action_dt * control_hz must be a whole number of ticks, got {steps}")
        self.arm = arm
        self.contract = contract
        self.action_dt = float(contract.action_dt)
        self.expert = Expert(arm)
        self.honour_prefix = bool(honour_prefix)
        """False: plan from the measured state and ignore the prefix (a policy without prefix
        conditioning); the runtime's seam handling then has to absorb every disagreement."""
        self.calls = 0
        self._latent = np.zeros(contract.latent_dim, np.float32)
        self._latent_pred = np.zeros((contract.latent_steps, contract.latent_dim), np.float32)

    def warmup(self, n: int = 3) -> None:
        """Nothing to warm up: no model, no lazy initialisation."""

    def describe(self) -> str:
        return f"expert oracle (privileged scripted expert, {self.ticks_per_step} ticks per action step)"

    def close(self) -> None:
        """Holds no resources of its own (the arm belongs to the caller)."""

    def start_state(self, inp: PolicyInput) -> tuple[np.ndarray, np.ndarray, int]:
        """(position, velocity rad/s, first step to plan) the continuation starts from."""
        n = int(inp.prefix_len)
        p = inp.action_prefix.astype(float)
        if n >= 3:
            # Second-order backward difference: the velocity at the last prefix point, not half a
            # step before it.
            v = (3.0 * p[n - 1] - 4.0 * p[n - 2] + p[n - 3]) / (2.0 * self.action_dt)
            return p[n - 1].copy(), v, n
        if n == 2:
            return p[1].copy(), (p[1] - p[0]) / self.action_dt, n
        if n == 1:
            return p[0].copy(), self.arm.joint_state()[2], n
        return inp.state.astype(float), self.arm.joint_state()[2], 1

    def infer(self, inp: PolicyInput) -> PolicyOutput:
        self.calls += 1
        h = self.contract.horizon
        n = int(inp.prefix_len)
        if not 0 <= n <= h:
            raise ValueError(f"prefix_len must be in [0, {h}], got {n}")
        if not self.honour_prefix:
            n = 0
            inp = PolicyInput(inp.images, inp.state, inp.action_prefix, 0)
        actions = np.empty((h, self.contract.num_joints), np.float32)
        q0, v0, first = self.start_state(inp)
        if n > 0:
            actions[:n] = inp.action_prefix[:n]
        else:
            actions[0] = q0
        e = self.expert
        e.reset()  # joint-range band from the measured state; then overwrite the command state
        e.q[:] = q0
        e.v[:] = v0
        e.a[:] = 0.0
        for k in range(first, h):
            for _ in range(self.ticks_per_step):
                e.act()
            actions[k] = e.q
        return PolicyOutput(actions, self._latent.copy(), self._latent_pred.copy())
