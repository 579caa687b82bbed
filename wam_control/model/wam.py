"""The distilled World-Action Model (PyTorch), shaped exactly like the ONNX contract (DESIGN.md §3).

    images uint8 [B,N,H,W,3] ─► ImageEncoder (per camera, shared; FiLM by the prompt) ─┐
    state  float32 [B,D] ─► normalise ─► Linear ──────────────────────────────────────┤
    instruction_tokens int64 [B,L] ─► embedding, masked mean ─► prompt feature ───────┴► fuse MLP ─► latent z [B,C]
    z + masked prefix (residuals to state, mask channel) ─► ActionHead MLP ─► residuals [B,H,D]
        actions = state + residual * residual_scale, then steps < prefix_len := action_prefix (in-graph)
    z + actions (relative to state, normalised) ─► WorldHead MLP ─► latent_pred [B,K,C]

Why this shape: a strided conv stack (96x96 -> 6x6) keeps spatial layout for manipulation and is a
handful of fused Conv+ReLU nodes for ONNX Runtime; the heads are MLPs (one pass, no diffusion steps),
so batch-1 latency is dominated by ~10 MMACs of convolution. The action head predicts residuals to the
measured state, so an untrained or uncertain model stays near where the arm is. The prefix is fed as
residuals times a 0/1 mask plus the mask itself, so "no prefix" is distinguishable from "prefix equals
the state" (never zero-padding semantics), and the first prefix_len output steps are overwritten with
the prefix in-graph so the contract "continue the committed actions" holds exactly, not approximately.

Contract v2 parts (optional, off by default so the bundled v1 models are unchanged):
- extra DOFs (`extra_dofs`, e.g. ("gripper",)): appended to the arm joints in `state` and `actions`
  (D = len(joint_names) + len(extra_dofs)); exported as `state_names` / `action_names`.
- language prompt (`max_instruction_tokens` > 0, `vocab_size`): token ids from the word-level
  tokenizer beside the model (model/prompt.py). Pad id 0 is masked out of a mean of embeddings: for
  the handful of task/colour words a prompt carries here, a bag of words is what matters, and it is
  two ONNX ops. The prompt feature enters the fuse MLP and scales/shifts the last conv features per
  channel (FiLM), so "which colour" can select image features before they are flattened.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, NamedTuple

import torch
from torch import nn

from wam_control.policy.contract import ModelContract

CHECKPOINT_FORMAT = "wam_control.wam-checkpoint"
CHECKPOINT_VERSION = 1

# ImageNet statistics: the usual choice for RGB encoders, and harmless for a network trained from scratch.
_RGB_MEAN = (0.485, 0.456, 0.406)
_RGB_STD = (0.229, 0.224, 0.225)


def default_latent_offsets(horizon: int) -> tuple[int, ...]:
    """Powers of two below the horizon plus the horizon itself: (2, 4, 8, 16) for H_act = 16."""
    offs = [o for o in (2, 4, 8, 16, 32, 64, 128) if o < horizon]
    return tuple([*offs, horizon])


@dataclass
class WAMConfig:
    joint_names: tuple[str, ...] = ("joint1", "joint2", "joint3", "joint4", "joint5", "joint6", "joint7")
    camera_names: tuple[str, ...] = ("scene",)
    image_height: int = 96
    image_width: int = 96
    horizon: int = 16
    action_dt: float = 0.05
    max_prefix: int = 8
    latent_dim: int = 128
    latent_offsets: tuple[int, ...] = ()  # empty -> default_latent_offsets(horizon)
    conv_channels: tuple[int, ...] = (32, 64, 96, 128)
    image_feature_dim: int = 256
    hidden_dim: int = 512
    head_blocks: int = 2  # residual MLP blocks in the action head (world head: half, at least 1)
    model_name: str = "wam-small"
    extra_dofs: tuple[str, ...] = ()  # contract v2 action/state DOFs after the arm joints (a gripper)
    max_instruction_tokens: int = 0  # L of instruction_tokens; 0: no prompt input (contract v1 shape)
    vocab_size: int = 0  # tokenizer vocabulary (pad id 0), with max_instruction_tokens
    instruction_dim: int = 64
    keypoints: int = 0  # spatial-softmax keypoints per camera (x, y each) beside the flattened features

    def __post_init__(self) -> None:
        self.joint_names = tuple(self.joint_names)
        self.camera_names = tuple(self.camera_names)
        self.conv_channels = tuple(self.conv_channels)
        self.extra_dofs = tuple(self.extra_dofs)
        if self.max_instruction_tokens < 0 or (self.max_instruction_tokens > 0) != (self.vocab_size > 1):
            raise ValueError(
                f"max_instruction_tokens {self.max_instruction_tokens} and vocab_size {self.vocab_size}: "
                "a prompt input needs both (> 0 and > 1), no prompt neither"
            )
        self.latent_offsets = tuple(self.latent_offsets) or default_latent_offsets(self.horizon)
        if max(self.latent_offsets) > self.horizon:
            raise ValueError(f"latent_offsets {self.latent_offsets} reach past horizon {self.horizon}")
        if self.keypoints < 0:
            raise ValueError(f"keypoints {self.keypoints} must be >= 0")
        if not 0 <= self.max_prefix < self.horizon:
            raise ValueError(f"max_prefix {self.max_prefix} must be in [0, horizon-1]")

    @property
    def num_joints(self) -> int:
        """Width of `state` and `actions`: the arm joints and the extra DOFs."""
        return len(self.joint_names) + len(self.extra_dofs)

    @property
    def action_names(self) -> tuple[str, ...]:
        return (*self.joint_names, *self.extra_dofs)

    @property
    def has_instruction(self) -> bool:
        return self.max_instruction_tokens > 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WAMConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown WAMConfig keys {unknown}")
        return cls(**dict(d))


class WAMTrainOutput(NamedTuple):
    actions: torch.Tensor  # [B,H,D] absolute, prefix steps overwritten (what the contract outputs)
    actions_raw: torch.Tensor  # [B,H,D] absolute, before the prefix overwrite (for the loss on all steps)
    residual: torch.Tensor  # [B,H,D] normalised residual the head produced (unit-scale loss target space)
    latent: torch.Tensor  # [B,C]
    latent_pred: torch.Tensor  # [B,K,C]
    prefix_mask: torch.Tensor  # [B,H] bool, True where the prefix was committed


class ImageEncoder(nn.Module):
    """uint8 RGB [B,N,H,W,3] -> features [B, N*F]; one conv stack shared by all cameras.

    With `keypoints` K > 0 each camera also yields K spatial-softmax keypoints (the expected image
    position of each of K learned feature maps, x and y in [-1, 1]): an explicit "where" for a small
    object, which a linear layer over the flattened map has to learn per position from few examples.
    The keypoint maps are computed after FiLM, so the prompt can choose what they track.
    """

    pix_scale: torch.Tensor
    pix_shift: torch.Tensor
    keypoint_grid: torch.Tensor

    def __init__(self, cfg: WAMConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for i, cout in enumerate(cfg.conv_channels):
            k = 5 if i == 0 else 3
            layers += [nn.Conv2d(cin, cout, k, stride=2, padding=k // 2), nn.ReLU()]
            cin = cout
        self.convs = nn.Sequential(*layers)
        # Folded normalisation: x/255 then (x - mean)/std == x * scale + shift, one Mul+Add in-graph.
        std = torch.tensor(_RGB_STD)
        self.register_buffer("pix_scale", (1.0 / (255.0 * std)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pix_shift", (-torch.tensor(_RGB_MEAN) / std).view(1, 3, 1, 1), persistent=False)
        with torch.no_grad():
            h, w = self.convs(torch.zeros(1, 3, cfg.image_height, cfg.image_width)).shape[-2:]
        self.linear = nn.Linear(cin * h * w, cfg.image_feature_dim)
        self.num_cameras = len(cfg.camera_names)
        self.keypoint = nn.Conv2d(cin, cfg.keypoints, 1) if cfg.keypoints > 0 else None
        # Cell centres in [-1, 1], [h*w, 2] (x, y): expected position = softmax(map) @ grid.
        ys, xs = torch.meshgrid(torch.linspace(-1.0, 1.0, h), torch.linspace(-1.0, 1.0, w), indexing="ij")
        self.register_buffer("keypoint_grid", torch.stack([xs, ys], dim=-1).reshape(h * w, 2), persistent=False)
        self.out_dim = self.num_cameras * (cfg.image_feature_dim + 2 * cfg.keypoints)

        self.channels = cin

    def forward(self, images: torch.Tensor, film: torch.Tensor | None = None) -> torch.Tensor:
        """`film` [B, 2*channels] (the prompt's gamma, beta), or None."""
        b, n, h, w, c = images.shape
        dtype = self.linear.weight.dtype
        # Cast first: the uint8 input must go straight into a Cast node. TensorRT's ONNX parser takes
        # UINT8 only as a network input or output, so a uint8 Reshape/Transpose before the cast makes
        # the graph unbuildable (policy.trt_lint checks this on every export).
        x = images.to(dtype).reshape(b * n, h, w, c).permute(0, 3, 1, 2)
        x = x * self.pix_scale.to(dtype) + self.pix_shift.to(dtype)
        x = self.convs(x)
        if film is not None:
            gamma, beta = film.to(dtype).repeat_interleave(n, dim=0).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)
            x = torch.relu(x * (1.0 + gamma) + beta)
        feat = torch.relu(self.linear(x.flatten(1)))
        if self.keypoint is not None:
            attention = torch.softmax(self.keypoint(x).flatten(2), dim=-1)  # [B*N, K, h*w]
            points = attention @ self.keypoint_grid.to(dtype)  # [B*N, K, 2]
            feat = torch.cat([feat, points.flatten(1)], dim=-1)
        return feat.reshape(b, -1)


class InstructionEncoder(nn.Module):
    """int64 token ids [B,L] (pad id 0) -> prompt feature [B,E]: the mean of the non-pad embeddings."""

    def __init__(self, cfg: WAMConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.instruction_dim)
        self.proj = nn.Sequential(nn.Linear(cfg.instruction_dim, cfg.instruction_dim), nn.ReLU())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        dtype = self.embed.weight.dtype
        mask = (tokens != 0).to(dtype).unsqueeze(-1)
        e = (self.embed(tokens) * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)
        return self.proj(e)


class ObservationEncoder(nn.Module):
    """(images, normalised state[, prompt tokens]) -> latent z [B,C]. Copy this module for a target
    (EMA) encoder."""

    def __init__(self, cfg: WAMConfig) -> None:
        super().__init__()
        self.image = ImageEncoder(cfg)
        self.state = nn.Sequential(nn.Linear(cfg.num_joints, 64), nn.ReLU())
        self.instruction = InstructionEncoder(cfg) if cfg.has_instruction else None
        self.film = nn.Linear(cfg.instruction_dim, 2 * self.image.channels) if cfg.has_instruction else None
        if self.film is not None:  # start as the identity: the prompt earns its influence
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)
        prompt_dim = cfg.instruction_dim if cfg.has_instruction else 0
        self.fuse_in = nn.Linear(self.image.out_dim + 64 + prompt_dim, cfg.hidden_dim)
        self.fuse = nn.Sequential(
            nn.ReLU(),
            nn.Linear(cfg.hidden_dim, cfg.latent_dim),
            nn.LayerNorm(cfg.latent_dim),
        )

    def forward(
        self, images: torch.Tensor, state_norm: torch.Tensor, tokens: torch.Tensor | None = None
    ) -> torch.Tensor:
        dtype = self.fuse_in.weight.dtype
        parts = [self.state(state_norm.to(dtype))]
        film = None
        if self.instruction is not None and self.film is not None:
            if tokens is None:
                raise ValueError("this model takes instruction_tokens")
            prompt = self.instruction(tokens)
            film = self.film(prompt)
            parts.append(prompt)
        return self.fuse(self.fuse_in(torch.cat([self.image(images, film), *parts], dim=-1)))


class ResidualMLP(nn.Module):
    """Pre-LayerNorm residual MLP block: x + W2 gelu(W1 LN(x)). Stable to train deep, cheap to run."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, 2 * dim)
        self.down = nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(nn.functional.gelu(self.up(self.norm(x))))


def _trunk(dim: int, blocks: int) -> nn.Sequential:
    return nn.Sequential(*[ResidualMLP(dim) for _ in range(blocks)], nn.LayerNorm(dim))


class ActionHead(nn.Module):
    """(z, masked prefix residuals, mask) -> normalised residuals [B,H,D], one pass."""

    def __init__(self, cfg: WAMConfig) -> None:
        super().__init__()
        self.h, self.d = cfg.horizon, cfg.num_joints
        self.first = nn.Linear(cfg.latent_dim + cfg.horizon * (cfg.num_joints + 1), cfg.hidden_dim)
        self.trunk = _trunk(cfg.hidden_dim, cfg.head_blocks)
        self.out = nn.Linear(cfg.hidden_dim, cfg.horizon * cfg.num_joints)

    def forward(self, z: torch.Tensor, prefix_res: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b = z.shape[0]
        x = torch.cat([z, prefix_res.reshape(b, -1), mask.reshape(b, -1)], dim=-1)
        return self.out(self.trunk(self.first(x))).reshape(b, self.h, self.d)


class WorldHead(nn.Module):
    """(z, normalised action residuals [B,H,D]) -> predicted latents [B,K,C] at latent_offsets."""

    def __init__(self, cfg: WAMConfig) -> None:
        super().__init__()
        self.k, self.c = len(cfg.latent_offsets), cfg.latent_dim
        self.first = nn.Linear(cfg.latent_dim + cfg.horizon * cfg.num_joints, cfg.hidden_dim)
        self.trunk = _trunk(cfg.hidden_dim, max(1, cfg.head_blocks // 2))
        self.out = nn.Linear(cfg.hidden_dim, self.k * self.c)

    def forward(self, z: torch.Tensor, action_res: torch.Tensor) -> torch.Tensor:
        b = z.shape[0]
        x = torch.cat([z, action_res.reshape(b, -1)], dim=-1)
        # Predict the change of latent, so "nothing moves" is the easy default.
        delta = self.out(self.trunk(self.first(x))).reshape(b, self.k, self.c)
        return z.unsqueeze(1) + delta


class WorldActionModel(nn.Module):
    """forward(images uint8, state, action_prefix, prefix_len) -> (actions, latent, latent_pred)."""

    state_mean: torch.Tensor
    state_std: torch.Tensor
    residual_scale: torch.Tensor
    steps: torch.Tensor

    def __init__(self, cfg: WAMConfig) -> None:
        super().__init__()
        self.config = cfg
        d = cfg.num_joints
        self.encoder = ObservationEncoder(cfg)
        self.action_head = ActionHead(cfg)
        self.world_head = WorldHead(cfg)
        # Data statistics; a trainer sets them with set_normalization(). Kept fp32 even in FP16 exports.
        self.register_buffer("state_mean", torch.zeros(d))
        self.register_buffer("state_std", torch.ones(d))
        self.register_buffer("residual_scale", torch.full((d,), 0.1))
        self.register_buffer("steps", torch.arange(cfg.horizon), persistent=False)
        self.tokenizer_json: str | None = None
        """The prompt tokenizer (model/prompt.py) of a model with a prompt input; saved with it."""

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.action_head.first.weight.dtype

    def set_normalization(
        self, state_mean: torch.Tensor, state_std: torch.Tensor, residual_scale: torch.Tensor
    ) -> None:
        """Per-joint statistics (radians): state mean/std, and the typical |action - state| per joint."""
        with torch.no_grad():
            self.state_mean.copy_(torch.as_tensor(state_mean, dtype=torch.float32))
            self.state_std.copy_(torch.as_tensor(state_std, dtype=torch.float32).clamp_min(1e-6))
            self.residual_scale.copy_(torch.as_tensor(residual_scale, dtype=torch.float32).clamp_min(1e-6))

    def normalize_state(self, state: torch.Tensor) -> torch.Tensor:
        return (state - self.state_mean) / self.state_std

    def encode(
        self, images: torch.Tensor, state: torch.Tensor, tokens: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Latent of an observation (float32 [B,C]); what a target encoder computes for future frames."""
        return self.encoder(images, self.normalize_state(state), tokens).float()

    def prefix_mask(self, prefix_len: torch.Tensor) -> torch.Tensor:
        plen = prefix_len.clamp(0, self.config.horizon)
        return self.steps.unsqueeze(0) < plen.unsqueeze(1)

    def predict_latents(
        self, latent: torch.Tensor, state: torch.Tensor, actions: torch.Tensor
    ) -> torch.Tensor:
        """World-model head on any action chunk (e.g. the demonstration's, for teacher forcing)."""
        dt = self.compute_dtype
        res = (actions - state.unsqueeze(1)) / self.residual_scale
        return self.world_head(latent.to(dt), res.to(dt)).float()

    def forward_train(
        self,
        images: torch.Tensor,
        state: torch.Tensor,
        action_prefix: torch.Tensor,
        prefix_len: torch.Tensor,
        instruction_tokens: torch.Tensor | None = None,
    ) -> WAMTrainOutput:
        dt = self.compute_dtype
        z = self.encoder(images, self.normalize_state(state), instruction_tokens)
        mask = self.prefix_mask(prefix_len)
        maskf = mask.to(torch.float32).unsqueeze(-1)
        prefix_res = (action_prefix - state.unsqueeze(1)) / self.residual_scale * maskf
        residual = self.action_head(z, prefix_res.to(dt), maskf.to(dt)).float()
        actions_raw = state.unsqueeze(1) + residual * self.residual_scale
        actions = torch.where(mask.unsqueeze(-1), action_prefix, actions_raw)
        res_out = (actions - state.unsqueeze(1)) / self.residual_scale
        latent_pred = self.world_head(z, res_out.to(dt)).float()
        return WAMTrainOutput(actions, actions_raw, residual, z.float(), latent_pred, mask)

    def forward(
        self,
        images: torch.Tensor,
        state: torch.Tensor,
        action_prefix: torch.Tensor,
        prefix_len: torch.Tensor,
        instruction_tokens: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.forward_train(images, state, action_prefix, prefix_len, instruction_tokens)
        return out.actions, out.latent, out.latent_pred

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build_model(
    config: WAMConfig | Mapping[str, Any] | None = None, seed: int | None = 0
) -> WorldActionModel:
    """A WorldActionModel in eval mode; `seed` makes the random init reproducible (None: leave RNG alone)."""
    cfg = config if isinstance(config, WAMConfig) else WAMConfig.from_dict(config or {})
    if seed is None:
        return WorldActionModel(cfg).eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return WorldActionModel(cfg).eval()


def state_dict_sha256(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(repr(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def contract_for(
    model: WorldActionModel, weights_sha256: str, training_data: Mapping[str, Any] | None = None
) -> ModelContract:
    cfg = model.config
    # The v1 architecture has every part a version 1 file has; a prompt or extra DOFs need version 2.
    v2 = cfg.has_instruction or bool(cfg.extra_dofs)
    return ModelContract(
        contract_version=2 if v2 else 1,
        model_name=cfg.model_name,
        joint_names=tuple(cfg.joint_names),
        camera_names=tuple(cfg.camera_names),
        image_height=cfg.image_height,
        image_width=cfg.image_width,
        action_dt=float(cfg.action_dt),
        horizon=cfg.horizon,
        latent_steps=len(cfg.latent_offsets),
        latent_offsets=tuple(cfg.latent_offsets),
        max_prefix=cfg.max_prefix,
        latent_dim=cfg.latent_dim,
        weights_sha256=weights_sha256,
        training_data=dict(training_data or {}),
        max_instruction_tokens=cfg.max_instruction_tokens,
        action_names=cfg.action_names if cfg.extra_dofs else (),
        state_names=cfg.action_names if cfg.extra_dofs else (),
    )


@dataclass
class Checkpoint:
    config: WAMConfig
    state_dict: dict[str, torch.Tensor]
    training_data: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(
    model: WorldActionModel,
    path: str,
    training_data: Mapping[str, Any] | None = None,
    training_heads: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
) -> None:
    """Write {format, version, config, state_dict, training_data[, training_heads]}: loadable with
    torch.load(weights_only=True). `training_heads`: heads that only training uses (the keyframe head),
    kept so that a fine-tune from this checkpoint continues them; never exported."""
    import os

    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "training_data": dict(training_data or {}),
        "tokenizer": model.tokenizer_json or "",
    }
    if training_heads:
        payload["training_heads"] = {
            name: {k: v.detach().cpu() for k, v in sd.items()} for name, sd in training_heads.items()
        }
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _read_checkpoint(path: str) -> dict[str, Any]:
    import os

    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"checkpoint {path} is not readable (corrupt or truncated?): {exc}") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint {path} is not a {CHECKPOINT_FORMAT} file")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"checkpoint {path} has version {payload.get('version')}, expected {CHECKPOINT_VERSION}"
        )
    return payload


def load_training_heads(path: str) -> dict[str, dict[str, torch.Tensor]]:
    """The training-only heads saved with a checkpoint, by name ({} for checkpoints without any)."""
    heads = _read_checkpoint(path).get("training_heads") or {}
    return {str(name): dict(sd) for name, sd in heads.items()}


def load_checkpoint(path: str) -> tuple[WorldActionModel, dict[str, Any]]:
    """Rebuild the model from a checkpoint written by save_checkpoint; returns (model in eval, training_data)."""
    payload = _read_checkpoint(path)
    model = build_model(WAMConfig.from_dict(payload["config"]), seed=None)
    model.load_state_dict(payload["state_dict"])
    model.tokenizer_json = payload.get("tokenizer") or None
    return model.eval(), dict(payload.get("training_data") or {})
