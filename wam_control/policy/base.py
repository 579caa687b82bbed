"""Backend interface: one model call without a batch dimension.

What every backend implements and imports (PolicyBackend, PolicyInput, PolicyOutput, InputChecker,
BackendUnavailable, example_input) and the backend names `BACKENDS`. The loader that picks and builds a
backend is `policy.loader` (`load_backend`); this module imports no backend, so a backend importing it
closes no circle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from wam_control.policy.contract import ModelContract

BACKENDS = ("auto", "onnxruntime", "tensorrt", "torch", "triton")


class BackendUnavailable(RuntimeError):
    """The backend itself is gone (a remote server unreachable, lost or too slow), not just this call:
    the inference worker handles it like a crashed backend (abandon, restart with backoff)."""


@dataclass(slots=True)
class PolicyInput:
    """One observation. Arrays are owned by the caller; backends read them and keep no reference."""

    images: np.ndarray  # uint8 [N_cam, H, W, 3], RGB, cameras in contract order
    state: np.ndarray  # float32 [D_state], radians, contract.states order
    action_prefix: np.ndarray  # float32 [H_act, D_act]; only the first prefix_len rows are read
    prefix_len: int
    """0 always for a model without the prefix inputs (they are not fed)."""
    request_id: int = 0
    """The worker's request id (0: none); a remote backend sends it with the request."""
    obs_tick: int = -1
    """The control tick of the observation (-1: unknown); a remote backend sends it with the request."""
    instruction_tokens: np.ndarray | None = None
    """int64 [L] token ids of the prompt (padded), for a model with `instruction_tokens`; else None."""


@dataclass(slots=True)
class PolicyOutput:
    actions: np.ndarray  # float32 [H_act, D_act], step k at t_obs + k * action_dt (absolute or delta: contract)
    latent: np.ndarray  # float32 [C] (C = 0 without a world-model head)
    latent_pred: np.ndarray  # float32 [K, C], at contract.latent_offsets action steps ahead (K = 0 without)
    frame_error: float = math.nan
    """Decoded latent vs the camera frame (policy.frame_check); NaN when no frame check runs."""


@runtime_checkable
class PolicyBackend(Protocol):
    contract: ModelContract
    name: str
    # True when infer() spends its time outside the GIL, so a worker thread does not stall the loop.
    releases_gil: bool

    def warmup(self, n: int = 3) -> None: ...

    def infer(self, inp: PolicyInput) -> PolicyOutput: ...

    def describe(self) -> str: ...

    def close(self) -> None: ...


class InputChecker:
    """Per-call shape/dtype checks; precomputed so the hot path does a few tuple compares."""

    def __init__(self, contract: ModelContract) -> None:
        self.contract = contract
        shapes = contract.input_shapes(batch=1)
        self.images_shape = shapes["images"][1:]
        self.state_shape = shapes["state"][1:]
        self.prefix_shape = shapes["action_prefix"][1:]
        self.tokens_shape = shapes["instruction_tokens"][1:] if contract.has_instruction else None

    def check(self, inp: PolicyInput) -> None:
        if inp.images.dtype != np.uint8 or inp.images.shape != self.images_shape:
            raise ValueError(
                f"images must be uint8 {list(self.images_shape)} (cameras {list(self.contract.camera_names)}), "
                f"got {inp.images.dtype} {list(inp.images.shape)}"
            )
        if inp.state.dtype != np.float32 or inp.state.shape != self.state_shape:
            raise ValueError(
                f"state must be float32 {list(self.state_shape)}, got {inp.state.dtype} {list(inp.state.shape)}"
            )
        if inp.action_prefix.dtype != np.float32 or inp.action_prefix.shape != self.prefix_shape:
            raise ValueError(
                f"action_prefix must be float32 {list(self.prefix_shape)}, got "
                f"{inp.action_prefix.dtype} {list(inp.action_prefix.shape)}"
            )
        if not 0 <= int(inp.prefix_len) <= self.contract.horizon:
            raise ValueError(f"prefix_len must be in [0, {self.contract.horizon}], got {inp.prefix_len}")
        if not self.contract.has_prefix and inp.prefix_len:
            raise ValueError(f"the model takes no action prefix, got prefix_len {inp.prefix_len}")
        if self.tokens_shape is not None:
            t = inp.instruction_tokens
            if t is None or t.dtype != np.int64 or t.shape != self.tokens_shape:
                got = "none" if t is None else f"{t.dtype} {list(t.shape)}"
                raise ValueError(f"instruction_tokens must be int64 {list(self.tokens_shape)}, got {got}")


def example_input(contract: ModelContract, seed: int = 0, prefix_len: int | None = None) -> PolicyInput:
    """A random, non-degenerate input (never zeros): for warm-up, benchmarks and parity checks."""
    rng = np.random.default_rng(seed)
    state = rng.uniform(-1.0, 1.0, contract.state_dim).astype(np.float32)
    steps = np.cumsum(rng.normal(0, 0.01, (contract.horizon, contract.action_dim)), axis=0)
    base = np.resize(state, contract.action_dim)  # the arm joints lead both vectors
    if prefix_len is None:
        prefix_len = int(rng.integers(0, contract.max_prefix + 1)) if contract.has_prefix else 0
    return PolicyInput(
        images=rng.integers(
            0, 256, (contract.num_cameras, contract.image_height, contract.image_width, 3), np.uint8
        ),
        state=state,
        action_prefix=(base + steps).astype(np.float32),
        prefix_len=prefix_len,
        # Token id 0 (padding in the usual tokenizers): random ids could lie outside the vocabulary.
        instruction_tokens=np.zeros(contract.max_instruction_tokens, np.int64) if contract.has_instruction else None,
    )
