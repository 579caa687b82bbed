"""The worker protocol and its values: `InferenceRequest`, `InferenceResult`, `InferenceWorker`, and the
shape checks and input copy both modes share."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from wam_control.policy import ModelContract, PolicyOutput

WorkerMode = Literal["thread", "process"]
_INPUTS = ("images", "state", "action_prefix", "instruction_tokens")
_IN_DTYPES = {"images": "u1", "state": "<f4", "action_prefix": "<f4", "instruction_tokens": "<i8"}
_OUTPUTS = ("actions", "latent", "latent_pred")


@dataclass
class InferenceRequest:
    """One observation to run. The worker copies the arrays in `submit`; the caller may reuse them."""

    request_id: int
    obs_tick: int
    images: np.ndarray  # uint8 [N_cam, H, W, 3]
    state: np.ndarray  # float32 [D]
    action_prefix: np.ndarray  # float32 [H_act, D]; rows >= prefix_len are ignored by the model
    prefix_len: int
    instruction_tokens: np.ndarray | None = None
    """int64 [L]: the prompt's token ids, for a model that takes them (copied like the other inputs)."""


@dataclass
class InferenceResult:
    """The answer to one request. `output` arrays are owned by the receiver (copies, never reused)."""

    request_id: int
    obs_tick: int
    output: PolicyOutput | None
    error: str | None
    compute_s: float
    """Model time measured inside the worker (s); for an abandoned request, time it was in flight."""


class InferenceWorker(Protocol):
    busy: bool

    def start(self) -> None: ...

    def close(self) -> None: ...

    def submit(self, request: InferenceRequest) -> bool: ...

    def poll(self) -> InferenceResult | None: ...

    def check(self, now: float) -> None: ...

    @property
    def restarts(self) -> int:
        """Restarts so far: cheap, so the control loop can watch it every tick (health() allocates)."""
        ...

    @property
    def last_error(self) -> str: ...

    def health(self) -> dict[str, float | int | str]: ...


def _output_shapes(contract: ModelContract) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v[1:]) for k, v in contract.output_shapes(batch=1).items()}


def _input_shapes(contract: ModelContract) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v[1:]) for k, v in contract.input_shapes(batch=1).items() if k in _INPUTS}


def _output_error(out: Any, shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """Why a backend's output cannot be used (shape or type); None if it can. Values are not judged here."""
    if not isinstance(out, PolicyOutput):
        return f"backend returned {type(out).__name__}, expected PolicyOutput"
    for name, shape in shapes.items():
        arr = getattr(out, name)
        if not isinstance(arr, np.ndarray) or arr.shape != shape:
            got = list(arr.shape) if isinstance(arr, np.ndarray) else type(arr).__name__
            return f"model output {name!r} has shape {got}, expected {list(shape)}"
    return None


def _describe_exc(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"



def _copy_inputs(dst: Mapping[str, np.ndarray], request: InferenceRequest) -> None:
    for name in dst:
        src = getattr(request, name)
        buf = dst[name]
        if not isinstance(src, np.ndarray) or src.shape != buf.shape:
            got = list(src.shape) if isinstance(src, np.ndarray) else type(src).__name__
            raise ValueError(f"InferenceRequest.{name}: expected shape {list(buf.shape)}, got {got}")
        np.copyto(buf, src, casting="same_kind")
