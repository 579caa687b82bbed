"""`wam-control train`: train the WAM on recorded demonstrations (the sim recorder's bags).

    wam-control train --data demos/ --out runs/bc --steps 3000 --seed 0 [--device cuda --batch-size 256]

Three terms, one optimiser step each:
- action chunk: the head's normalised residuals against the recorded commands at t + k * action_dt
  (k = 0..H-1), on the steps the prefix did not commit;
- world model: the latents the model predicts `latent_offsets` steps ahead, given the chunk that was
  really executed, against the latents of the observations found there, computed by a slowly updated
  (EMA) copy of the encoder with no gradient (the JEPA/BYOL recipe: a moving target that cannot
  collapse onto the online encoder's shortcuts). One offset per sample per step keeps the target
  encoder to one extra forward pass per sample;
- prefix conditioning: every sample gets a random prefix length 0..max_prefix with its ground-truth
  prefix, so the head learns to continue a committed prefix (the graph then copies it exactly).

Contract v2 models: `--gripper-joint fr3_finger_joint1` adds the extra DOF "gripper" (that finger's
position in the state, the gripper setpoint in the actions); `--instruction-tokens L` adds a prompt
input, with a word-level tokenizer over the sim's prompts and the data's (model/prompt.py); every
observation is trained with its episode's prompt. Several `--data` folders make one dataset (several
tasks).

Bags are decoded once into `<out>/dataset.npz` and training runs from memory. `--resume` continues
from `<out>/train_state.pt` (weights, EMA target, optimiser, step, RNG state). The result is
`<out>/model.pt` (the torch checkpoint the backends read), `<out>/training_report.json` and, with
`--export`, `<out>/model.onnx`.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from wam_control.model.data import Dataset, SampleSpec, load_dataset
from wam_control.model.wam import (
    WAMConfig,
    WorldActionModel,
    build_model,
    load_checkpoint,
    load_training_heads,
    save_checkpoint,
)

STATE_FILE = "train_state.pt"
STATE_FORMAT = "wam_control.train-state"

# Architectures by name. "compact" is the bundled model: a narrow conv stack and 256-wide heads, ~6 MB
# of FP32 weights, a few ms per chunk on one CPU core; "base" is WAMConfig's default (~21 MB).
PRESETS: dict[str, dict[str, Any]] = {
    "compact": {
        "conv_channels": (8, 16, 32, 64),
        "image_feature_dim": 128,
        "hidden_dim": 256,
        "head_blocks": 2,
        "latent_dim": 128,
    },
    "base": {},
}

FR3_JOINTS = tuple(f"fr3_joint{i}" for i in range(1, 8))


@dataclass
class TrainConfig:
    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    min_lr_fraction: float = 0.05
    ema: float = 0.995
    wm_weight: float = 1.0
    prefix_zero_prob: float = 0.3  # share of samples trained without a prefix (the first chunk of a run)
    grad_clip: float = 1.0
    seed: int = 0
    val_fraction: float = 0.05
    ckpt_every: int = 250
    device: str = "cpu"
    threads: int = 1
    shift_pixels: int = 0  # random-shift augmentation of the model's input images (edge-padded), 0: off
    keyframe_weight: float = 0.0  # auxiliary loss: predict the arm at the episode's next keyframe (0: off)
    # A keyframe head that starts untrained (no head in the --init checkpoint) learns on a detached latent
    # for this many steps: its random early gradients would otherwise reshape a trained encoder.
    keyframe_warmup_steps: int = 200
    colour_swap: float = 0.0  # share of pick_place samples with the cubes' colours permuted (model/augment.py)
    # Weight of the extra DOFs' action columns (the gripper setpoint) against each arm joint's: at 1 the
    # gripper's switch (close, open) is one column of eight (models/MODEL_CARD.md, "Seventh run").
    gripper_weight: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    model: WorldActionModel
    report: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)
    heads: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # training-only heads, by name


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available in this torch build/machine")
    if name != "cpu" and not name.startswith("cuda"):
        raise ValueError(f"--device must be cpu, cuda[:N] or auto, got {name!r}")
    return torch.device(name)


def normalization_from(
    ds: Dataset, num_arm_joints: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-joint state mean/std and the RMS of action - state over the chunk (the residual scale).

    The floors keep a joint that barely moves in the data (e.g. the wrist roll) from getting a tiny
    scale that would turn its noise into large normalised targets. Columns after the first
    `num_arm_joints` (extra DOFs: a finger, in metres over a 4 cm stroke) get floors 10x smaller."""
    n = ds.state.shape[1] if num_arm_joints is None else num_arm_joints
    std_floor = np.where(np.arange(ds.state.shape[1]) < n, 0.05, 0.005)
    res_floor = np.where(np.arange(ds.state.shape[1]) < n, 0.01, 0.001)
    mean = ds.state.mean(axis=0)
    std = np.maximum(ds.state.std(axis=0), std_floor)
    res = ds.actions - ds.state[:, None, :]
    scale = np.maximum(np.sqrt((res**2).mean(axis=(0, 1))), res_floor)
    return mean.astype(np.float32), std.astype(np.float32), scale.astype(np.float32)


GRIPPER_DOF = "gripper"


def spec_for(cfg: WAMConfig, obs_dt: float, gripper_joint: str = "") -> SampleSpec:
    if cfg.extra_dofs and (cfg.extra_dofs != (GRIPPER_DOF,) or not gripper_joint):
        raise ValueError(
            f"extra DOFs {list(cfg.extra_dofs)}: the data knows one, {GRIPPER_DOF!r}, with its finger joint "
            "(--gripper-joint)"
        )
    return SampleSpec(
        joint_names=tuple(cfg.joint_names),
        camera_names=tuple(cfg.camera_names),
        image_hw=(cfg.image_height, cfg.image_width),
        horizon=cfg.horizon,
        action_dt=cfg.action_dt,
        latent_offsets=tuple(cfg.latent_offsets),
        obs_dt=obs_dt,
        gripper_joint=gripper_joint if cfg.extra_dofs else "",
    )


def episode_tokens(model: WorldActionModel, ds: Dataset) -> np.ndarray | None:
    """int64 [episodes, L]: each episode's prompt tokenized for `model` (None: it takes no prompt)."""
    cfg = model.config
    if not cfg.has_instruction:
        return None
    if not model.tokenizer_json:
        raise ValueError("the model takes a prompt but has no tokenizer")
    from wam_control.model.prompt import PromptEncoder

    enc = PromptEncoder(model.tokenizer_json, cfg.max_instruction_tokens)
    missing = [i for i, e in enumerate(ds.episodes) if not e.get("prompt")]
    if missing:
        raise ValueError(f"{len(missing)} episodes have no prompt (first: {ds.episodes[missing[0]]})")
    return np.stack([enc.encode(str(e["prompt"])) for e in ds.episodes])


def random_shift(frames: np.ndarray, pad: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 [B,N,H,W,3] -> the same shape, each image shifted by up to `pad` pixels in x and y
    (borders repeated). The usual augmentation for behaviour cloning from pixels with few
    demonstrations (DrQ, Diffusion Policy): the policy cannot key on exact pixel positions of the
    background, only on where things are relative to each other."""
    b, n, h, w, c = frames.shape
    flat = frames.reshape(b * n, h, w, c)
    padded = np.pad(flat, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    oy = rng.integers(0, 2 * pad + 1, size=b * n)
    ox = rng.integers(0, 2 * pad + 1, size=b * n)
    # One slice copy per image: ~9x faster than one fancy-indexed gather over the batch, which made
    # the shift most of a GPU training step (docs/benchmarks/gpu.md).
    out = np.empty_like(flat)
    for i, (y, x) in enumerate(zip(oy.tolist(), ox.tolist())):
        out[i] = padded[i, y : y + h, x : x + w]
    return out.reshape(b, n, h, w, c)


def colour_swap_for(
    model: WorldActionModel, ds: Dataset, ep_tokens: np.ndarray | None, prob: float
) -> tuple[Any | None, np.ndarray]:
    """The cube-colour swap for `model` (None when off) and, per episode, whether it applies: a
    pick_place episode whose prompt names exactly one cube colour."""
    eligible = np.zeros(len(ds.episodes), bool)
    if prob <= 0:
        return None, eligible
    if not 0 < prob <= 1:
        raise ValueError(f"colour swap share must be in (0, 1], got {prob}")
    if ep_tokens is None or not model.tokenizer_json:
        raise ValueError("the colour swap renames the colour in the prompt: the model takes no prompt")
    from wam_control.model.augment import CubeColourSwap
    from wam_control.sim.tasks import CUBE_COLOURS, CUBE_RGB

    vocab = json.loads(model.tokenizer_json)["model"]["vocab"]
    swap = CubeColourSwap(vocab, CUBE_COLOURS, CUBE_RGB)
    for e, info in enumerate(ds.episodes):
        eligible[e] = info.get("task") == "pick_place" and swap.names_one_colour(ep_tokens[e])
    return swap, eligible


def parse_source_shares(items: list[str]) -> dict[str, float]:
    """["dagger_counterfactual=0.1", "dagger=0", ...] -> {source: share}; each share in [0, 1), named
    once. A share of 0 leaves that source out (labels from a teacher since corrected)."""
    shares: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            share = float(value) if sep and name else math.nan
        except ValueError:
            share = math.nan
        if not 0.0 <= share < 1.0:
            raise ValueError(f"--source-share {item!r}: expected SOURCE=SHARE with 0 <= SHARE < 1")
        if name in shares:
            raise ValueError(f"--source-share: source {name!r} given twice")
        shares[name] = share
    if sum(shares.values()) >= 1.0:
        raise ValueError(f"--source-share: the shares add up to {sum(shares.values()):g}, expected < 1")
    return shares


def source_weights(ds: Dataset, shares: Mapping[str, float]) -> np.ndarray:
    """Per-observation sampling weights that give the episodes of each named source (the episode's
    `source`: scripted_expert, dagger, dagger_counterfactual, ...) that share of every batch; the
    other observations share the rest in proportion to their numbers (as without weights).

    A name SOURCE/TASK (scripted_expert/push) names that source's episodes of one task. It takes
    them before a bare SOURCE does, so `scripted_expert=0.3 scripted_expert/push=0.2` gives the push
    demonstrations 0.2 and the other demonstrations 0.3: one task's part of a batch can be held while
    other sources' shares grow."""
    source = np.array([str(e.get("source", "?")) for e in ds.episodes])[ds.episode]
    task = np.array([str(e.get("task", "?")) for e in ds.episodes])[ds.episode]
    weights = np.zeros(len(source))
    claimed = np.zeros(len(source), dtype=bool)
    for name in sorted(shares, key=lambda n: "/" not in n):  # SOURCE/TASK before SOURCE
        src, _, tsk = name.partition("/")
        mine = (source == src) & (task == tsk if tsk else True) & ~claimed
        if not mine.any() and (source == src).any() and not tsk:
            raise ValueError(f"--source-share: every episode of {name!r} is already given a SOURCE/TASK share")
        if not mine.any():
            present = sorted({f"{a}/{b}" for a, b in zip(source, task)} if tsk else set(source.tolist()))
            raise ValueError(f"--source-share: no episode has source {name!r} (the data has {present})")
        weights[mine] = shares[name] / mine.sum()
        claimed |= mine
    if not claimed.all():
        weights[~claimed] = (1.0 - sum(shares.values())) / (~claimed).sum()
    return weights


def keyframe_targets(ds: Dataset, num_arm: int) -> tuple[np.ndarray, np.ndarray]:
    """Per observation: the arm joints at its episode's next keyframe, and a 0/1 weight.

    Keyframes of a demonstration are where the gripper setpoint switches (the grasp, the release) and
    the last observation (the goal reached). Before the grasp the target is the grasp configuration,
    which says where the object is to the centimetre; between grasp and release it is where the object
    goes. Predicting it from the latent makes the encoder localise the prompted object and the goal
    (the expert knew them; the images show them). Student rollouts (DAgger samples) have no
    keyframes of the expert's (nor their counterfactual-prompt copies): weight 0."""
    from wam_control.sim.arm import GRIPPER_OPEN  # the data's gripper is the sim's hand

    target = np.array(ds.state[:, :num_arm], dtype=np.float32, copy=True)
    weight = np.zeros(len(ds), np.float32)
    has_gripper = ds.actions.shape[-1] > num_arm
    for e, info in enumerate(ds.episodes):
        obs = np.flatnonzero(ds.episode == e)
        if len(obs) == 0 or str(info.get("source", "")).startswith("dagger"):
            continue
        keys = [len(obs) - 1]
        if has_gripper:  # the setpoint crosses half the stroke: the fingers close / open
            closed = ds.actions[obs, 0, num_arm] < 0.5 * GRIPPER_OPEN
            keys = sorted({*np.flatnonzero(closed[1:] != closed[:-1]).tolist(), len(obs) - 1})
        nxt = np.searchsorted(np.asarray(keys), np.arange(len(obs)))  # first keyframe at or after each obs
        target[obs] = ds.state[obs[np.asarray(keys)[nxt]], :num_arm]
        weight[obs] = 1.0
    return target, weight


class Trainer:
    """One model, its EMA target encoder and optimiser, stepping on batches drawn from a Dataset."""

    def __init__(
        self,
        model: WorldActionModel,
        ds: Dataset,
        train_idx: np.ndarray,
        cfg: TrainConfig,
        sample_weights: np.ndarray | None = None,
        heads: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    ) -> None:
        """`heads`: training-only heads of the checkpoint this model comes from (`training_heads`),
        so that a fine-tune continues them instead of starting them from random weights."""
        if len(train_idx) == 0:
            raise ValueError("no training observations (is the dataset empty?)")
        torch.set_num_threads(max(1, cfg.threads))
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        if self.device.type == "cuda":
            # Fixed batch shapes: let cuDNN pick its fastest convolutions once; TF32 tensor cores for
            # the matrix products (10-bit mantissa inputs, fp32 accumulation: the usual for training).
            torch.backends.cudnn.benchmark = True
            torch.set_float32_matmul_precision("high")
        self.model = model.to(self.device).train()
        self.target = copy.deepcopy(model.encoder).to(self.device).eval()
        for p in self.target.parameters():
            p.requires_grad_(False)
        # The keyframe head is a training aid on the latent: it is not part of the model (nor its ONNX).
        na = len(model.config.joint_names)
        if cfg.gripper_weight <= 0:
            raise ValueError(f"gripper weight must be > 0, got {cfg.gripper_weight}")
        n_act = na + len(model.config.extra_dofs)
        self.column_weights = torch.ones(n_act, device=self.device)
        self.column_weights[na:] = cfg.gripper_weight
        self.keyframe_head: nn.Module | None = None
        self.keyframe: tuple[np.ndarray, np.ndarray] | None = None
        if cfg.keyframe_weight > 0:
            self.keyframe_head = nn.Sequential(
                nn.Linear(model.config.latent_dim, 256), nn.ReLU(), nn.Linear(256, na)
            ).to(self.device)
            self.keyframe = keyframe_targets(ds, na)
            if heads and "keyframe_head" in heads:
                try:
                    self.keyframe_head.load_state_dict(heads["keyframe_head"])
                except RuntimeError as exc:
                    raise ValueError(f"the checkpoint's keyframe_head does not fit this model: {exc}") from None
                self.keyframe_detach_until = 0
            else:
                self.keyframe_detach_until = cfg.keyframe_warmup_steps
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        named = list(self.model.named_parameters())
        if self.keyframe_head is not None:
            named += [(f"keyframe_head.{n}", p) for n, p in self.keyframe_head.named_parameters()]
        for name, p in named:
            (no_decay if p.ndim < 2 or "norm" in name else decay).append(p)
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr,
        )
        self.ds = ds
        self.train_idx = np.asarray(train_idx)
        self.p: np.ndarray | None = None
        if sample_weights is not None:
            w = np.asarray(sample_weights, dtype=np.float64)[self.train_idx]
            self.p = w / w.sum()
        self.rng = np.random.default_rng(cfg.seed)
        self.step_count = 0
        self.input_s = 0.0  # host time spent assembling image batches (gather, shift, copy to device)
        self.ep_tokens = episode_tokens(model, ds)
        self.colour_swap, self.swap_ok = colour_swap_for(model, ds, self.ep_tokens, cfg.colour_swap)

    # ------------------------------------------------------------------ batches
    def _obs(
        self, idx: np.ndarray, augment: bool = False, swap: np.ndarray | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        t0 = time.perf_counter()
        frames = self.ds.frames[self.ds.obs_frame[idx]]
        if swap is not None and self.colour_swap is not None:
            frames = self.colour_swap.images(frames, swap)
        if augment and self.cfg.shift_pixels > 0:
            frames = random_shift(frames, self.cfg.shift_pixels, self.rng)
        images = torch.from_numpy(frames).to(self.device)
        state = torch.from_numpy(self.ds.state[idx]).to(self.device)
        self.input_s += time.perf_counter() - t0
        return images, state

    def _tokens(self, idx: np.ndarray, swap: np.ndarray | None = None) -> torch.Tensor | None:
        if self.ep_tokens is None:
            return None
        tokens = self.ep_tokens[self.ds.episode[idx]]
        if swap is not None and self.colour_swap is not None:
            tokens = self.colour_swap.tokens(tokens, swap)
        return torch.from_numpy(tokens).to(self.device)

    def losses(
        self, idx: np.ndarray, plen: np.ndarray, wm_k: np.ndarray | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of one batch. `wm_k`: the latent offset index per sample (None: all offsets)."""
        m = self.model
        # One colour permutation per sample, shared by its input and its world-model targets (the same
        # scene, re-coloured); the action and keyframe labels do not change with it.
        swap = None
        if m.training and self.colour_swap is not None:
            swap = self.colour_swap.draw(self.rng, self.swap_ok[self.ds.episode[idx]], self.cfg.colour_swap)
        images, state = self._obs(idx, augment=m.training, swap=swap)
        actions = torch.from_numpy(self.ds.actions[idx]).to(self.device)
        executed = torch.from_numpy(self.ds.executed[idx]).to(self.device)
        plen_t = torch.from_numpy(plen.astype(np.int64)).to(self.device)
        tokens = self._tokens(idx, swap)
        out = m.forward_train(images, state, actions, plen_t, tokens)
        target_res = (actions - state.unsqueeze(1)) / m.residual_scale
        free = (~out.prefix_mask).unsqueeze(-1).float()
        w = self.column_weights  # all ones: the plain mean over the free steps' columns
        act_loss = ((out.residual - target_res) ** 2 * free * w).sum() / (free.sum() * w.sum()).clamp_min(1)

        pred = m.predict_latents(out.latent, state, executed)  # [B,K,C]
        rows = np.arange(len(idx))
        if wm_k is None:
            fut = self.ds.future[idx]  # [B,K]
            f_swap = None if swap is None else np.repeat(swap, fut.shape[1])
            f_img, f_state = self._obs(fut.reshape(-1), swap=f_swap)
            with torch.no_grad():
                tgt = self.target(f_img, m.normalize_state(f_state), self._tokens(fut.reshape(-1), f_swap))
                tgt = tgt.float().reshape(pred.shape)
            wm_loss = ((pred - tgt) ** 2).mean()
        else:
            fut = self.ds.future[idx, wm_k]
            f_img, f_state = self._obs(fut, swap=swap)
            with torch.no_grad():
                tgt = self.target(f_img, m.normalize_state(f_state), self._tokens(fut, swap)).float()
            wm_loss = ((pred[torch.from_numpy(rows), torch.from_numpy(wm_k)] - tgt) ** 2).mean()
        total = act_loss + self.cfg.wm_weight * wm_loss
        parts = {"loss": total, "action": act_loss, "wm": wm_loss}
        if self.keyframe_head is not None and self.keyframe is not None:
            na = len(m.config.joint_names)
            key_q, key_w = (torch.from_numpy(a[idx]).to(self.device) for a in self.keyframe)
            std = m.state_std[:na]
            target = (key_q - state[:, :na]) / std
            latent = out.latent.detach() if self.step_count < self.keyframe_detach_until else out.latent
            err = ((self.keyframe_head(latent) - target) ** 2).mean(dim=-1)
            key_loss = (err * key_w).sum() / key_w.sum().clamp_min(1.0)
            total = total + self.cfg.keyframe_weight * key_loss
            parts.update(loss=total, keyframe=key_loss)
        return total, parts

    def _lr(self, step: int) -> float:
        c = self.cfg
        if step < c.warmup_steps:
            return c.lr * (step + 1) / c.warmup_steps
        frac = (step - c.warmup_steps) / max(1, c.steps - c.warmup_steps)
        frac = min(1.0, frac)
        return c.lr * (c.min_lr_fraction + (1 - c.min_lr_fraction) * 0.5 * (1 + math.cos(math.pi * frac)))

    def step(self) -> dict[str, float]:
        c = self.cfg
        idx = self.rng.choice(
            self.train_idx, size=min(c.batch_size, len(self.train_idx)), replace=False, p=self.p
        )
        max_prefix = self.model.config.max_prefix
        plen = self.rng.integers(0, max_prefix + 1, size=len(idx))
        plen[self.rng.random(len(idx)) < c.prefix_zero_prob] = 0
        wm_k = self.rng.integers(0, len(self.model.config.latent_offsets), size=len(idx))
        for g in self.opt.param_groups:
            g["lr"] = self._lr(self.step_count)
        self.model.train()
        loss, parts = self.losses(idx, plen, wm_k)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if c.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
        self.opt.step()
        with torch.no_grad():
            for pt, po in zip(self.target.parameters(), self.model.encoder.parameters()):
                pt.lerp_(po, 1.0 - c.ema)
        self.step_count += 1
        return {k: float(v.detach()) for k, v in parts.items()}

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, idx: np.ndarray, batch: int = 256) -> dict[str, Any]:
        """Offline metrics on `idx`: action RMSE (rad) without and with a max-length prefix, and the
        world-model error per offset next to the "nothing changes" baseline (latent_pred = latent)."""
        if len(idx) == 0:
            return {}
        m = self.model.eval()
        h, k = m.config.horizon, len(m.config.latent_offsets)
        na = len(m.config.joint_names)  # arm joints (rad); extra DOFs (a finger, m) reported apart
        se_extra = torch.zeros((), dtype=torch.float64)
        se = torch.zeros(h, dtype=torch.float64)
        se_prefix = torch.zeros((), dtype=torch.float64)
        n_prefix = 0
        wm = torch.zeros(k, dtype=torch.float64)
        wm_copy = torch.zeros(k, dtype=torch.float64)
        n = 0
        p = m.config.max_prefix
        for s in range(0, len(idx), batch):
            b = idx[s : s + batch]
            images, state = self._obs(b)
            actions = torch.from_numpy(self.ds.actions[b]).to(self.device)
            zeros = torch.zeros(len(b), dtype=torch.int64, device=self.device)
            tokens = self._tokens(b)
            out = m.forward_train(images, state, actions, zeros, tokens)
            se += ((out.actions - actions)[..., :na] ** 2).mean(dim=2).sum(dim=0).double().cpu()
            if actions.shape[-1] > na:
                se_extra += ((out.actions - actions)[..., na:] ** 2).mean(dim=(1, 2)).sum().double().cpu()
            if p > 0:
                outp = m.forward_train(images, state, actions, zeros + p, tokens)
                se_prefix += (
                    (outp.actions[:, p:, :na] - actions[:, p:, :na]) ** 2
                ).mean().double().cpu() * len(b)
                n_prefix += len(b)
            executed = torch.from_numpy(self.ds.executed[b]).to(self.device)
            pred = m.predict_latents(out.latent, state, executed)
            f_img, f_state = self._obs(self.ds.future[b].reshape(-1))
            obs = m.encode(f_img, f_state, self._tokens(self.ds.future[b].reshape(-1))).reshape(pred.shape)
            wm += ((pred - obs) ** 2).mean(dim=2).sum(dim=0).double().cpu()
            wm_copy += ((out.latent.unsqueeze(1) - obs) ** 2).mean(dim=2).sum(dim=0).double().cpu()
            n += len(b)
        rmse = torch.sqrt(se / n)
        return {
            "observations": int(n),
            "action_rmse_rad": float(torch.sqrt(se.sum() / (n * h))),
            "action_rmse_rad_per_step": [round(float(v), 5) for v in rmse],
            "action_rmse_rad_with_prefix": float(torch.sqrt(se_prefix / max(1, n_prefix))) if p > 0 else None,
            "extra_dof_rmse": float(torch.sqrt(se_extra / n)) if m.config.extra_dofs else None,
            "wm_mse_per_offset": [round(float(v), 5) for v in wm / n],
            "wm_mse_copy_baseline_per_offset": [round(float(v), 5) for v in wm_copy / n],
        }

    # ------------------------------------------------------------------ resume
    def state(self) -> dict[str, Any]:
        rng_state = self.rng.bit_generator.state
        return {
            "format": STATE_FORMAT,
            "step": self.step_count,
            "config": self.model.config.to_dict(),
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "target": {k: v.detach().cpu() for k, v in self.target.state_dict().items()},
            "keyframe_head": self.heads().get("keyframe_head"),
            "opt": self.opt.state_dict(),
            "rng": json.dumps(rng_state),
            "torch_rng": torch.get_rng_state(),
            "train_config": json.dumps(self.cfg.to_dict()),
            "tokenizer": self.model.tokenizer_json or "",
        }

    def save_state(self, path: Path) -> None:
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        torch.save(self.state(), tmp)
        os.replace(tmp, path)

    def heads(self) -> dict[str, dict[str, torch.Tensor]]:
        """The training-only heads (saved with the checkpoint as `training_heads`, not exported)."""
        if self.keyframe_head is None:
            return {}
        return {"keyframe_head": {k: v.detach().cpu() for k, v in self.keyframe_head.state_dict().items()}}

    def load_state(self, st: dict[str, Any]) -> None:
        self.model.load_state_dict(st["model"])
        self.target.load_state_dict(st["target"])
        if self.keyframe_head is not None and st.get("keyframe_head"):
            self.keyframe_head.load_state_dict(st["keyframe_head"])
        self.opt.load_state_dict(st["opt"])
        self.rng.bit_generator.state = json.loads(st["rng"])
        torch.set_rng_state(st["torch_rng"])
        self.step_count = int(st["step"])


def read_train_state(path: Path) -> dict[str, Any]:
    try:
        st = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"training state {path} is not readable (corrupt or truncated?): {exc}") from None
    if not isinstance(st, dict) or st.get("format") != STATE_FORMAT:
        raise ValueError(f"{path} is not a {STATE_FORMAT} file")
    return st


def fit(
    model: WorldActionModel,
    ds: Dataset,
    cfg: TrainConfig,
    out_dir: Path,
    *,
    resume: bool = False,
    progress: bool = True,
    desc: str = "train",
    sample_weights: np.ndarray | None = None,
    heads: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
) -> TrainResult:
    """Train `model` on `ds` for cfg.steps steps (total, counting resumed ones); checkpoints in out_dir.
    `heads`: the init checkpoint's training-only heads (wam.load_training_heads)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    train_idx, val_idx = ds.split_episodes(cfg.val_fraction, cfg.seed)
    if sample_weights is not None:  # a source left out (share 0) is not held out either
        val_idx = val_idx[np.asarray(sample_weights)[val_idx] > 0]
    trainer = Trainer(model, ds, train_idx, cfg, sample_weights, heads)
    state_path = out_dir / STATE_FILE
    if resume:
        if not state_path.is_file():
            raise FileNotFoundError(f"--resume: no training state at {state_path}")
        st = read_train_state(state_path)
        if st["config"] != model.config.to_dict():
            raise ValueError(f"--resume: model config in {state_path} differs from this run's")
        trainer.load_state(st)
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    start_step = trainer.step_count
    trainer.input_s = 0.0
    running: dict[str, float] = {}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=start_step, desc=desc, unit="step", dynamic_ncols=True)
    try:
        while trainer.step_count < cfg.steps:
            parts = trainer.step()
            for k, v in parts.items():
                running[k] = v if k not in running else 0.98 * running[k] + 0.02 * v
            if trainer.step_count % 50 == 0 or trainer.step_count == cfg.steps:
                history.append({"step": trainer.step_count, **{k: round(v, 5) for k, v in running.items()}})
            if bar is not None:
                bar.update(1)
                if trainer.step_count % 10 == 0:
                    bar.set_postfix(act=f"{running['action']:.4f}", wm=f"{running['wm']:.4f}")
            if cfg.ckpt_every > 0 and trainer.step_count % cfg.ckpt_every == 0:
                trainer.save_state(state_path)
    finally:
        if bar is not None:
            bar.close()
    trainer.save_state(state_path)
    wall = time.perf_counter() - t0
    input_s = trainer.input_s  # before evaluate() adds its own batches
    trained = trainer.step_count - start_step
    model = trainer.model.eval()
    val = trainer.evaluate(val_idx)
    report = {
        "steps": trainer.step_count,
        "steps_this_run": trained,
        "wall_s": round(wall, 1),
        "steps_per_s": round(trained / wall, 3) if wall > 0 else None,
        # Share of the loop's wall time spent assembling inputs on the host: near 1, a faster device
        # buys nothing (docs/benchmarks/gpu.md).
        "input_share": round(input_s / wall, 3) if wall > 0 else None,
        "final_running_loss": {k: round(v, 5) for k, v in running.items()},
        "val": val,
        "val_episodes": int(len(set(ds.episode[val_idx].tolist()))) if len(val_idx) else 0,
        "train_observations": int(len(train_idx)),
        "train_config": cfg.to_dict(),
        "device": str(trainer.device),
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
    }
    return TrainResult(model.cpu(), report, history, trainer.heads())


def print_summary(report: dict[str, Any], prefix: str = "train") -> None:
    val = report.get("val") or {}
    line = (
        f"{prefix}: steps={report['steps']} wall_s={report['wall_s']} device={report['device']} "
        f"steps_per_s={report.get('steps_per_s')} input_share={report.get('input_share')} "
        f"loss_action={report['final_running_loss'].get('action', float('nan')):.4f} "
        f"loss_wm={report['final_running_loss'].get('wm', float('nan')):.4f}"
    )
    if val:
        wm = val["wm_mse_per_offset"]
        base = val["wm_mse_copy_baseline_per_offset"]
        line += (
            f" val_action_rmse_rad={val['action_rmse_rad']:.4f}"
            f" val_action_rmse_prefix_rad={val['action_rmse_rad_with_prefix'] or float('nan'):.4f}"
            f" val_wm_mse={float(np.mean(wm)):.4f} val_wm_copy_baseline_mse={float(np.mean(base)):.4f}"
        )
    print(line)


def load_datasets(
    data: list[str], spec: SampleSpec, out: Path, successful_only: bool, progress: bool
) -> Dataset:
    """One dataset from one or several folders of bags / .npz files (each folder cached in `out`);
    the whole is cached as `<out>/dataset.npz` (what `wam-control distill --data` takes)."""
    from wam_control.model.data import DatasetBuilder, save_dataset

    if len(data) == 1:
        return load_dataset(
            data[0], spec, cache=out / "dataset.npz", successful_only=successful_only, progress=progress
        )
    # Only the builder holds each folder's dataset, so build() can let each go once it is copied.
    builder = DatasetBuilder()
    for d in data:
        builder.add_dataset(
            load_dataset(
                d, spec, cache=out / f"dataset.{Path(d).name}.npz", successful_only=successful_only, progress=progress
            )
        )
    ds = builder.build()
    save_dataset(ds, out / "dataset.npz", {"spec": spec.to_dict(), "sources": [str(d) for d in data]})
    return ds


def model_from_args(
    preset: str,
    init: str | None,
    joint_names: tuple[str, ...],
    cameras: tuple[str, ...],
    overrides: dict[str, Any],
    seed: int,
) -> WorldActionModel:
    if init:
        model, _ = load_checkpoint(init)
        return model
    if preset not in PRESETS:
        raise ValueError(f"--preset must be one of {sorted(PRESETS)}, got {preset!r}")
    kw = {**PRESETS[preset], **overrides, "joint_names": joint_names, "camera_names": cameras}
    return build_model(WAMConfig(**kw), seed=seed)


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def add_common_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0, help="seeds init, batch order, prefix lengths, splits")
    ap.add_argument("--device", default="cpu", help="cpu, cuda[:N] or auto")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: on a shared 2-core machine, 2 OpenMP threads spin against "
        "other processes and run several times slower; use 2+ on an idle machine)",
    )
    ap.add_argument("--wm-weight", type=float, default=1.0, help="weight of the world-model loss")
    ap.add_argument("--ema", type=float, default=0.995, help="EMA decay of the target encoder per step")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    ap.add_argument(
        "--augment-shift",
        type=int,
        default=0,
        help="random-shift augmentation of the input images by up to this many pixels (0: off; 4 is "
        "usual at 96x96)",
    )
    ap.add_argument(
        "--keyframe-weight",
        type=float,
        default=0.0,
        help="weight of the auxiliary loss predicting the arm at the demonstration's next keyframe (the "
        "grasp, the release, the goal) from the latent; a training aid, not in the model (0: off)",
    )
    ap.add_argument(
        "--keyframe-warmup-steps",
        type=int,
        default=200,
        help="steps a keyframe head that starts untrained (none in the --init checkpoint) learns on a "
        "detached latent before its loss reaches the encoder",
    )
    ap.add_argument(
        "--gripper-weight",
        type=float,
        default=1.0,
        help="weight of the gripper setpoint's action column against each arm joint's (default 1)",
    )
    ap.add_argument(
        "--augment-colour-swap",
        type=float,
        default=0.0,
        help="share of pick_place samples whose cube colours are permuted, the prompt's colour word "
        "renamed to match (teaches which cube the prompt means; 0: off)",
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="wam-control train", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data", required=True, nargs="+", help="folder(s) of recorded bags, or dataset .npz file(s)"
    )
    ap.add_argument(
        "--gripper-joint",
        default="",
        help="add the extra DOF 'gripper': this finger joint (fr3_finger_joint1)",
    )
    ap.add_argument(
        "--instruction-tokens", type=int, default=0, help="add a language prompt input of this many tokens"
    )
    ap.add_argument("--out", required=True, type=Path, help="output folder (checkpoints, report, model)")
    steps = ap.add_mutually_exclusive_group()
    steps.add_argument("--steps", type=int, help="optimiser steps (default 3000)")
    steps.add_argument(
        "--epochs", type=float, help="passes over the training observations instead of --steps"
    )
    ap.add_argument("--resume", action="store_true", help=f"continue from <out>/{STATE_FILE}")
    ap.add_argument("--preset", default="compact", help=f"architecture: {', '.join(PRESETS)}")
    ap.add_argument("--init", help="start from this checkpoint (.pt) instead of a fresh model")
    ap.add_argument("--model-name", default="wam-reach")
    ap.add_argument("--cameras", default="scene", help="comma-separated model cameras (sim names)")
    ap.add_argument("--horizon", type=int, default=16)
    ap.add_argument("--action-dt", type=float, default=0.05)
    ap.add_argument("--max-prefix", type=int, default=8)
    ap.add_argument(
        "--keypoints", type=int, default=0, help="spatial-softmax keypoints per camera (0: none)"
    )
    ap.add_argument("--obs-dt", type=float, default=0.025, help="observation grid in the bags (s)")
    ap.add_argument("--val-fraction", type=float, default=0.05, help="share of episodes held out")
    ap.add_argument("--ckpt-every", type=int, default=250)
    ap.add_argument("--all-episodes", action="store_true", help="also train on episodes the expert failed")
    ap.add_argument(
        "--source-share",
        action="append",
        default=[],
        metavar="SOURCE=SHARE",
        help="draw this share of every batch from the episodes of SOURCE (e.g. dagger_counterfactual=0.1; "
        "0 leaves SOURCE out; SOURCE/TASK, e.g. scripted_expert/push, names one task's episodes of it); "
        "repeatable; the other episodes share the rest at their natural proportions",
    )
    ap.add_argument("--export", action="store_true", help="also write <out>/model.onnx")
    add_common_args(ap)
    args = ap.parse_args(argv)

    try:
        device = resolve_device(args.device)
        # checked before the data is read (minutes for a large set); source_weights checks the names later
        shares = parse_source_shares(args.source_share) if args.source_share else None
    except ValueError as exc:
        print(f"wam-control train: {exc}", file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, args.threads))
    args.out.mkdir(parents=True, exist_ok=True)
    overrides: dict[str, Any] = {
        "horizon": args.horizon,
        "action_dt": args.action_dt,
        "max_prefix": args.max_prefix,
        "model_name": args.model_name,
        "keypoints": args.keypoints,
    }
    tokenizer_json = None
    if args.gripper_joint:
        overrides["extra_dofs"] = (GRIPPER_DOF,)
    if args.instruction_tokens > 0:
        from wam_control.model.prompt import PromptEncoder, build_tokenizer, task_prompts

        tokenizer_json = build_tokenizer(task_prompts())
        overrides["max_instruction_tokens"] = args.instruction_tokens
        overrides["vocab_size"] = PromptEncoder(tokenizer_json, 1).vocab_size
    cameras = tuple(c for c in args.cameras.split(",") if c)
    resume_state = None
    if args.resume:
        state_path = args.out / STATE_FILE
        if not state_path.is_file():
            print(f"wam-control train: --resume: no training state at {state_path}", file=sys.stderr)
            return 2
        resume_state = read_train_state(state_path)
        model = build_model(WAMConfig.from_dict(resume_state["config"]), seed=None)
        model.tokenizer_json = resume_state.get("tokenizer") or tokenizer_json
    else:
        try:
            model = model_from_args(args.preset, args.init, FR3_JOINTS, cameras, overrides, args.seed)
        except (ValueError, FileNotFoundError) as exc:
            print(f"wam-control train: {exc}", file=sys.stderr)
            return 2
        if model.config.has_instruction and not model.tokenizer_json:
            model.tokenizer_json = tokenizer_json
    t0 = time.perf_counter()
    try:
        spec = spec_for(model.config, args.obs_dt, args.gripper_joint)
        ds = load_datasets(args.data, spec, args.out, not args.all_episodes, not args.no_progress)
        episode_tokens(model, ds)  # every episode has a prompt, if the model takes one
    except (FileNotFoundError, ValueError) as exc:
        print(f"wam-control train: {exc}", file=sys.stderr)
        return 2
    decode_s = time.perf_counter() - t0
    try:
        weights = source_weights(ds, shares) if shares is not None else None
    except ValueError as exc:
        print(f"wam-control train: {exc}", file=sys.stderr)
        return 2
    if not args.resume and not args.init:
        norm = normalization_from(ds, len(model.config.joint_names))
        model.set_normalization(*(torch.from_numpy(a) for a in norm))
    if args.epochs is not None:
        n_train = len(ds.split_episodes(args.val_fraction, args.seed)[0])
        n_steps = max(1, math.ceil(args.epochs * n_train / args.batch_size))
    else:
        n_steps = args.steps if args.steps is not None else 3000
    if resume_state is not None:
        prev = json.loads(resume_state["train_config"])
        if args.steps is None and args.epochs is None:
            n_steps = int(prev["steps"])
    cfg = TrainConfig(
        steps=n_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        ema=args.ema,
        wm_weight=args.wm_weight,
        seed=args.seed,
        val_fraction=args.val_fraction,
        ckpt_every=args.ckpt_every,
        device=str(device),
        threads=args.threads,
        shift_pixels=args.augment_shift,
        keyframe_weight=args.keyframe_weight,
        keyframe_warmup_steps=args.keyframe_warmup_steps,
        colour_swap=args.augment_colour_swap,
        gripper_weight=args.gripper_weight,
    )
    heads = load_training_heads(args.init) if args.init and not args.resume else None
    print(
        f"train: {len(ds)} observations from {len(ds.episodes)} episodes ({decode_s:.1f} s to load), "
        f"model {model.config.model_name} {model.num_parameters()} params, {n_steps} steps on {device}"
    )
    try:
        res = fit(
            model,
            ds,
            cfg,
            args.out,
            resume=args.resume,
            progress=not args.no_progress,
            sample_weights=weights,
            heads=heads,
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"wam-control train: {exc}", file=sys.stderr)
        return 2
    summary = ds.summary()
    training_data = {
        "kind": "behaviour cloning + world model on recorded demonstrations",
        "data": " ".join(str(d) for d in args.data),
        **{k: v for k, v in summary.items() if v is not None},
        "obs_dt": args.obs_dt,
        "steps": res.report["steps"],
        "seed": args.seed,
    }
    save_checkpoint(res.model, str(args.out / "model.pt"), training_data, training_heads=res.heads)
    report = {
        "command": "wam-control train " + " ".join(sys.argv[1:] if argv is None else argv),
        "model": model.config.to_dict(),
        "parameters": model.num_parameters(),
        "data": {**summary, "source": [str(d) for d in args.data], "decode_s": round(decode_s, 1)},
        **res.report,
        "history": res.history,
    }
    if args.export:
        from wam_control.model.export import export_onnx

        r = export_onnx(
            res.model, args.out / "model.onnx", training_data=training_data, write_checkpoint=False
        )
        report["onnx"] = {"path": str(r.path), "bytes": r.path.stat().st_size, "parity": r.parity}
    write_json(args.out / "training_report.json", report)
    print_summary(report)
    print(f"wrote {args.out / 'model.pt'} and {args.out / 'training_report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
