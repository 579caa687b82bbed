"""In-process, lockstep closed-loop rollouts of a WAM in the sim (for distillation and evaluation).

No runtime, no DDS: the sim is stepped at its control rate and the model is called synchronously every
`replan_steps` action steps, with the previous chunk's next `prefix_len` actions as its committed
prefix (what the runtime's scheduler does when inference takes about that long). Between action steps
the command is interpolated linearly. Observations are taken on the action grid (every action_dt):
the latest camera frame (zero-order hold, as the runtime sees it) and the measured joint positions.

Used by `wam-control distill` (DAgger: a labeler gives the teacher's chunk at every observation) and
for the bundled model's evaluation and surprise calibration (`record_latents`: the model is also run
at every observation so that the latent actually observed at t + offset is known for each prediction).

A model with the gripper DOF (`RolloutConfig.gripper`): the state carries the first finger's position
after the arm joints and the last action column is the finger setpoint (`arm.step(q, gripper=g)`), as
the runtime's command vector with config/fr3_hand.yaml. A prompted model gets the task's prompt
(`arm.task.prompt`, or `RolloutConfig.prompt` to override it) through `prompt_encoder`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from wam_control.model.data import SampleSpec, episode_arrays


class Policy(Protocol):
    """images uint8 [N,H,W,3], state float32 [D], prefix float32 [H,D], prefix_len[, tokens int64 [L]]
    -> (actions, latent, latent_pred)."""

    def __call__(
        self,
        images: np.ndarray,
        state: np.ndarray,
        prefix: np.ndarray,
        prefix_len: int,
        tokens: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


class TorchPolicy:
    """A WorldActionModel in eval mode, batch 1, no autograd."""

    def __init__(self, model: Any) -> None:
        import torch

        self._torch = torch
        self.model = model.eval()

    def __call__(
        self,
        images: np.ndarray,
        state: np.ndarray,
        prefix: np.ndarray,
        prefix_len: int,
        tokens: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        torch = self._torch
        with torch.no_grad():
            a, z, zp = self.model(
                torch.from_numpy(np.ascontiguousarray(images)[None]),
                torch.from_numpy(state[None]),
                torch.from_numpy(prefix[None]),
                torch.tensor([prefix_len], dtype=torch.int64),
                None if tokens is None else torch.from_numpy(tokens[None]),
            )
        return a[0].numpy(), z[0].numpy(), zp[0].numpy()


class BackendPolicy:
    """Any wam_control PolicyBackend (ONNX Runtime, TensorRT, torch) behind the Policy call."""

    def __init__(self, backend: Any) -> None:
        from wam_control.policy.base import PolicyInput

        self._input = PolicyInput
        self.backend = backend

    def __call__(
        self,
        images: np.ndarray,
        state: np.ndarray,
        prefix: np.ndarray,
        prefix_len: int,
        tokens: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        out = self.backend.infer(
            self._input(images, state, prefix, int(prefix_len), instruction_tokens=tokens)
        )
        return out.actions, out.latent, out.latent_pred


Labeler = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]
"""(images, measured q, commanded q, commanded velocity) -> teacher chunk [H, D]."""


@dataclass
class RolloutConfig:
    horizon: int = 16
    action_dt: float = 0.05
    cameras: tuple[str, ...] = ("scene",)
    replan_steps: int = 4
    prefix_len: int = 2
    settle_s: float = 0.5  # success must hold this long (as in `wam-control bench expert`)
    max_time_s: float | None = None  # None: the task's horizon
    record_latents: bool = False
    gripper: bool = False  # the model's last state/action column is the gripper (first finger, m)
    prompt_encoder: Callable[[str], np.ndarray] | None = None  # a prompted model: text -> token ids
    prompt: str | None = None  # None: the task's own prompt


@dataclass
class Episode:
    seed: int
    success: bool
    time_s: float
    frames: np.ndarray  # uint8 [F, N, H, W, 3]
    frame_t: np.ndarray  # [F]
    obs_t: np.ndarray  # [S]
    obs_q: np.ndarray  # [S, D] measured
    cmd_t: np.ndarray  # [T] every control tick
    cmd_q: np.ndarray  # [T, D] the commands sent
    labels: np.ndarray | None = None  # [S, H, D] teacher chunks
    counterfactual: dict[int, np.ndarray] = field(default_factory=dict)  # other cube -> [S_i, H, D] labels
    latents: np.ndarray | None = None  # [S, C] (record_latents)
    predictions: dict[int, np.ndarray] = field(default_factory=dict)  # obs index -> latent_pred [K, C]


class ExpertLabeler:
    """The privileged scripted expert as a teacher: its chunk from the commanded state the student is in.

    The expert plans from its own last command (not the measured state), so it is seeded with the
    student's current command and velocity and run forward in imagination (its own kinematics copy;
    the sim is not touched). `label_dt` > the control period integrates the same planner and limiter
    on a coarser grid: 5x cheaper at 10 ms and within a few mrad of the 2 ms plan for these gains.
    Made for the reach task: the push planner's phase would advance during the imagined chunk.
    """

    def __init__(self, arm: Any, horizon: int, action_dt: float, label_dt: float = 0.01) -> None:
        from wam_control.sim.expert import Expert

        self.expert = Expert(arm)
        self.expert.dt = float(label_dt)
        ratio = action_dt / label_dt
        if abs(ratio - round(ratio)) > 1e-6:
            raise ValueError(f"label_dt {label_dt} must divide action_dt {action_dt}")
        self.per_step = round(ratio)
        self.horizon = horizon
        self._out = np.zeros((horizon, len(arm.joint_names)), np.float32)

    def reset(self) -> None:
        self.expert.reset()

    def __call__(self, images: np.ndarray, q: np.ndarray, q_cmd: np.ndarray, v_cmd: np.ndarray) -> np.ndarray:
        e = self.expert
        e.q[:] = q_cmd
        e.v[:] = np.clip(v_cmd, -e.v_max, e.v_max)
        e.a[:] = 0.0
        self._out[0] = q_cmd
        for k in range(1, self.horizon):
            for _ in range(self.per_step):
                e.act()
            self._out[k] = e.q
        return self._out.copy()


class LookaheadLabeler:
    """The privileged expert as a teacher for tasks whose planner is a state machine (pick_place, and
    any task with the gripper column): from the state the student reached, the expert takes the arm over
    in the physics itself for one chunk (its phase read from the sim, `Expert.sync_phase`), and its
    commands (arm joints, then the finger setpoint) are the label. The sim is saved before and restored
    after, bit for bit, with no rendering in between, so the student's episode is untouched. Costs one
    chunk of physics per observation (~15x the episode's own simulation)."""

    gripper = True

    def __init__(self, arm: Any, horizon: int, action_dt: float, place_spread_m: float = 0.0) -> None:
        import mujoco

        from wam_control.sim.expert import Expert

        if not arm.has_hand:
            raise ValueError("LookaheadLabeler: the arm has no hand")
        self._mujoco = mujoco
        self.arm = arm
        self.expert = Expert(arm, place_spread_m=place_spread_m)
        self.horizon = horizon
        ticks = action_dt * arm.control_hz
        self.per_step = round(ticks)
        if self.per_step < 1 or abs(ticks - self.per_step) > 1e-6:
            raise ValueError(f"action_dt {action_dt} is not a whole number of sim ticks")
        self._saved = mujoco.MjData(arm.model)
        self._out = np.zeros((horizon, len(arm.joint_names) + 1), np.float32)
        self.phase = ""  # the expert's phase read from the sim for the last label

    def reset(self) -> None:
        return None

    def __call__(self, images: np.ndarray, q: np.ndarray, q_cmd: np.ndarray, v_cmd: np.ndarray) -> np.ndarray:
        arm, e, mj = self.arm, self.expert, self._mujoco
        na = len(arm.joint_names)
        mj.mj_copyData(self._saved, arm.model, arm.data)
        internals = (arm._cmd.copy(), arm._grip_target.copy(), arm._grip_cmd.copy(), arm._blocked.copy(),
                     arm._held.copy(), arm.camera_hz)  # fmt: skip
        try:
            arm.camera_hz = 0.0  # no rendering while looking ahead
            e.q[:] = q_cmd[:na]
            e.v[:] = np.clip(v_cmd[:na], -e.v_max, e.v_max)
            e.a[:] = 0.0
            self.phase = e.sync_phase()
            self._out[0, :na] = q_cmd[:na]
            self._out[0, na] = q_cmd[na]
            for k in range(1, self.horizon):
                for _ in range(self.per_step):
                    arm.step(e.act(), gripper=e.gripper)
                self._out[k, :na] = e.q
                self._out[k, na] = e.gripper
        finally:
            mj.mj_copyData(arm.data, arm.model, self._saved)
            (
                arm._cmd[:],
                arm._grip_target[:],
                arm._grip_cmd[:],
                arm._blocked[:],
                arm._held[:],
                arm.camera_hz,
            ) = internals
        return self._out.copy()

    def label_for_cube(
        self, cube: int, images: np.ndarray, q: np.ndarray, q_cmd: np.ndarray, v_cmd: np.ndarray
    ) -> np.ndarray:
        """pick_place: the label as if the prompt had named cube `cube` (the task's target switched for
        the lookahead, then put back)."""
        task = self.arm.task
        real = task.target_index
        task.set_target(cube)
        try:
            return self(images, q, q_cmd, v_cmd)
        finally:
            task.set_target(real)


class CounterfactualLabels:
    """The teacher's labels for the prompts an episode did not get (pick_place: the other cubes).

    From each state the student reaches in the first `window_s` seconds, the lookahead teacher also
    labels the chunk toward every other cube, as if the prompt had named it. The same images and
    state then carry three labels that only the colour word tells apart: the one signal that makes a
    student read the word instead of following where its arm already heads (`bench grounding`). A
    colour's labels stop at the first state where its expert would not be approaching or descending to
    that cube (something grasped): what to do with a wrong cube in hand is not taught here.

    Call after the real label, with that label's phase (`LookaheadLabeler.phase`); the labeler restores
    the sim bit for bit, and the task's target is put back after each counterfactual label."""

    LABELLED_PHASES = ("approach", "recenter", "descend")

    def __init__(self, labeler: LookaheadLabeler, window_s: float) -> None:
        if window_s <= 0:
            raise ValueError(f"counterfactual window must be > 0 s, got {window_s}")
        self.labeler = labeler
        self.window_s = float(window_s)
        self.labels: dict[int, list[np.ndarray]] = {}
        self._open: set[int] = set()

    def reset(self) -> None:
        from wam_control.sim.tasks import CUBE_COLOURS

        task = self.labeler.arm.task
        others = [i for i in range(len(CUBE_COLOURS)) if i != task.target_index]
        self.labels = {i: [] for i in others}
        self._open = set(others)

    def __call__(self, images: np.ndarray, q: np.ndarray, q_cmd: np.ndarray, v_cmd: np.ndarray, t: float,
                 real_phase: str) -> None:  # fmt: skip
        if t > self.window_s + 1e-9 or real_phase not in self.LABELLED_PHASES:
            self._open.clear()
        for i in sorted(self._open):
            label = self.labeler.label_for_cube(i, images, q, q_cmd, v_cmd)
            if self.labeler.phase in self.LABELLED_PHASES:
                self.labels[i].append(label)
            else:
                self._open.discard(i)


class ModelLabeler:
    """A (larger) WAM as the teacher: its chunk for the observation, without a prefix."""

    def __init__(self, policy: Policy, horizon: int, num_joints: int) -> None:
        self.policy = policy
        self._prefix = np.zeros((horizon, num_joints), np.float32)

    def reset(self) -> None:
        return None

    def __call__(self, images: np.ndarray, q: np.ndarray, q_cmd: np.ndarray, v_cmd: np.ndarray) -> np.ndarray:
        return np.asarray(self.policy(images, q.astype(np.float32), self._prefix, 0)[0], np.float32).copy()


def run_episode(
    arm: Any,
    policy: Policy,
    seed: int,
    cfg: RolloutConfig,
    labeler: Any | None = None,
    counterfactual: CounterfactualLabels | None = None,
) -> Episode:
    """One closed-loop episode of `policy` on `arm` (a SimArm whose task is set); see the module doc.
    `counterfactual` (with a LookaheadLabeler as `labeler`) also labels the states for the other cubes."""
    arm.reset(seed)
    if labeler is not None:
        labeler.reset()
    if counterfactual is not None:
        if counterfactual.labeler is not labeler:
            raise ValueError("counterfactual labels must come from the episode's own labeler")
        counterfactual.reset()
    tps = round(cfg.action_dt * arm.control_hz)
    if abs(cfg.action_dt * arm.control_hz - tps) > 1e-6 or tps < 1:
        raise ValueError(
            f"action_dt {cfg.action_dt} s is not a whole number of sim ticks at {arm.control_hz} Hz"
        )
    h = cfg.horizon
    max_t = arm.task.horizon_s if cfg.max_time_s is None else cfg.max_time_s
    if cfg.gripper and not arm.has_hand:
        raise ValueError("RolloutConfig.gripper: the arm has no hand")
    if cfg.gripper and labeler is not None and not getattr(labeler, "gripper", False):
        raise ValueError("this teacher gives no gripper column; use LookaheadLabeler")
    na = len(arm.joint_names)

    def measured() -> np.ndarray:
        q = arm.joint_state()[1]
        return np.append(q, arm.gripper_state()[1][0]) if cfg.gripper else q

    tokens = None
    if cfg.prompt_encoder is not None:
        tokens = np.asarray(
            cfg.prompt_encoder(arm.task.prompt if cfg.prompt is None else cfg.prompt), np.int64
        )
    q = measured()
    d = len(q)
    frames: list[np.ndarray] = []
    frame_t: list[float] = []
    obs_t: list[float] = []
    obs_q: list[np.ndarray] = []
    cmd_t: list[float] = []
    cmd_q: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    latents: list[np.ndarray] = []
    predictions: dict[int, np.ndarray] = {}

    def grab() -> None:
        frames.append(np.stack([arm.frame(c)[0] for c in cfg.cameras]).copy())
        frame_t.append(arm.frame(cfg.cameras[0])[1])

    grab()
    chunk = np.repeat(q[None].astype(np.float32), h, axis=0)
    chunk_tick = 0
    prefix = np.zeros((h, d), np.float32)
    last_cmd = q.copy()
    prev_cmd = q.copy()
    tick = 0
    held = 0.0
    while arm.time < max_t - 1e-9:
        if tick % tps == 0:
            q = measured()
            images = frames[-1]
            state = q.astype(np.float32)
            obs_t.append(arm.time)
            obs_q.append(state)
            if labeler is not None:
                v_cmd = (last_cmd - prev_cmd) * arm.control_hz
                labels.append(labeler(images, q, last_cmd, v_cmd))
                if counterfactual is not None:
                    counterfactual(images, q, last_cmd, v_cmd, arm.time, labeler.phase)
            replan = tick == 0 or (tick - chunk_tick) >= cfg.replan_steps * tps
            if replan or cfg.record_latents:
                p = 0
                if tick > 0 and replan:
                    start = (tick - chunk_tick) // tps
                    p = max(0, min(cfg.prefix_len, h - start))
                    prefix[:p] = chunk[start : start + p]
                actions, latent, latent_pred = policy(images, state, prefix, p if replan else 0, tokens)
                if cfg.record_latents:
                    latents.append(np.asarray(latent, np.float32).copy())
                if replan:
                    chunk = np.asarray(actions, np.float32).copy()
                    chunk_tick = tick
                    if cfg.record_latents:
                        predictions[len(obs_t) - 1] = np.asarray(latent_pred, np.float32).copy()
        u = (tick - chunk_tick) / tps
        i = min(int(u), h - 1)
        frac = min(u - i, 1.0) if i < h - 1 else 0.0
        cmd = chunk[i] + frac * (chunk[min(i + 1, h - 1)] - chunk[i])
        prev_cmd, last_cmd = last_cmd, cmd.astype(np.float64)
        cmd_t.append(arm.time)
        cmd_q.append(last_cmd)
        rendered = arm.step(last_cmd[:na], gripper=float(last_cmd[na])) if cfg.gripper else arm.step(last_cmd)
        if rendered:
            grab()
        tick += 1
        held = held + arm.control_period if arm.task.success() else 0.0
        if held >= cfg.settle_s - 1e-9:
            break
    return Episode(
        seed=seed,
        success=bool(arm.task.success() and held >= cfg.settle_s - 1e-9),
        time_s=arm.time,
        frames=np.stack(frames),
        frame_t=np.asarray(frame_t),
        obs_t=np.asarray(obs_t),
        obs_q=np.asarray(obs_q, np.float32),
        cmd_t=np.asarray(cmd_t),
        cmd_q=np.asarray(cmd_q),
        labels=np.stack(labels).astype(np.float32) if labels else None,
        counterfactual={
            i: np.stack(v).astype(np.float32) for i, v in (counterfactual.labels if counterfactual else {}).items() if v
        },
        latents=np.stack(latents) if latents else None,
        predictions=predictions,
    )


def episode_samples(ep: Episode, spec: SampleSpec) -> dict[str, np.ndarray]:
    """Training arrays of a labelled rollout: the teacher's chunks as targets, the commands the
    student really sent as `executed` (what the world model must predict the consequences of)."""
    if ep.labels is None:
        raise ValueError(f"episode seed {ep.seed} has no teacher labels")
    if abs(spec.obs_dt - spec.action_dt) > 1e-9:
        raise ValueError("rollout observations are on the action grid: spec.obs_dt must equal action_dt")
    arrays = episode_arrays(
        spec, ep.obs_t, ep.frame_t, ep.obs_t, ep.obs_q, ep.cmd_t, ep.cmd_q, ep.cmd_t, ep.cmd_q
    )
    arrays["actions"] = ep.labels
    return arrays


def counterfactual_samples(ep: Episode, spec: SampleSpec, cube: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(frames, training arrays) of the episode's first observations labelled for `cube`: the episode
    cut where those labels stop (the world model's targets stay inside the cut, as at an episode's end)."""
    labels = ep.counterfactual[cube]
    n = len(labels)
    last_frame = int(np.searchsorted(ep.frame_t, ep.obs_t[n - 1] + 1e-9, side="right"))
    cut = replace(ep, obs_t=ep.obs_t[:n], obs_q=ep.obs_q[:n], labels=labels, frames=ep.frames[:last_frame],
                  frame_t=ep.frame_t[:last_frame])  # fmt: skip
    return cut.frames, episode_samples(cut, spec)


def evaluate(
    arm: Any,
    policy: Policy,
    seeds: Sequence[int],
    cfg: RolloutConfig,
    progress: bool = True,
    desc: str = "eval",
) -> tuple[dict[str, Any], list[Episode]]:
    """Closed-loop success over `seeds`; returns (summary, episodes)."""
    eps: list[Episode] = []
    it: Any = seeds
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(seeds, desc=desc, unit="ep", dynamic_ncols=True)
        it = bar
    ok = 0
    for n, s in enumerate(it, 1):
        ep = run_episode(arm, policy, int(s), cfg)
        eps.append(ep)
        ok += ep.success
        if bar is not None:
            bar.set_postfix(success=f"{ok / n:.3f}")
    times = [e.time_s for e in eps if e.success]
    summary = {
        "episodes": len(eps),
        "successes": ok,
        "success_rate": ok / max(1, len(eps)),
        "mean_time_s": float(np.mean(times)) if times else None,
        "failed_seeds": [e.seed for e in eps if not e.success],
        "seeds": [int(seeds[0]), int(seeds[-1])] if len(seeds) else [],
    }
    return summary, eps


def surprise_statistics(eps: Sequence[Episode], offsets: Sequence[int]) -> dict[str, Any]:
    """Nominal world-model error: ||latent_pred_i(t) - latent(t + offset_i)|| / sqrt(C) per offset,
    over every prediction whose target observation happened before the episode ended."""
    per: list[list[float]] = [[] for _ in offsets]
    for ep in eps:
        if ep.latents is None:
            raise ValueError("surprise statistics need rollouts with record_latents=True")
        n = len(ep.latents)
        c = ep.latents.shape[1]
        for i, pred in ep.predictions.items():
            for k, off in enumerate(offsets):
                j = i + int(off)
                if j < n:
                    per[k].append(float(np.linalg.norm(pred[k] - ep.latents[j]) / np.sqrt(c)))
    stats: dict[str, Any] = {"offsets": [int(o) for o in offsets], "count": [len(v) for v in per]}
    for name, fn in (
        ("mean", np.mean),
        ("std", np.std),
        ("p50", lambda v: np.percentile(v, 50)),
        ("p95", lambda v: np.percentile(v, 95)),
        ("p99", lambda v: np.percentile(v, 99)),
        ("max", np.max),
    ):
        stats[name] = [round(float(fn(np.asarray(v))), 5) if v else None for v in per]
    return stats
