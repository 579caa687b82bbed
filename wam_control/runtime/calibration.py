"""Nominal statistics of the world-model error: what the surprise monitor's z-scores are measured against.

The file lives next to the model (`models/<name>.surprise.json`, part of the model card) and holds, for
each latent offset (action steps ahead), the distribution of the distance between the predicted latent
and the latent later observed, measured on nominal closed-loop runs:

    {"offsets": [8, 16], "mean": [...], "std": [...], "p95": [...], "p99": [...],
     "metric": "l2/sqrt(C)", "episodes": 40, "seeds": [...], "weights_sha256": "..."}

`metric` is the RMS difference ||pred - obs||_2 / sqrt(C). `weights_sha256` (optional) ties the file to
one model: a calibration of another model's latent space is meaningless, so it is refused. Extra keys
are kept but not interpreted (score statistics, thresholds suggested by the calibration run).

Two optional sections (files without them work as before, with those channels off):

    "ramp_in": {"offsets": [8, 16], "mean": [...], "std": [...], "p95": [...], "p99": [...]}
        the same statistics for predictions made while the safety filter ramps in (after start or
        re-arm the arm cannot follow the plan the world head conditioned on, so their nominal error is
        several times larger); without it such predictions are not scored.
    "frame": {"mean": m, "std": s, "p95": ..., "p99": ..., "camera": "scene", "samples": n}
        nominal statistics of `frame_error` (policy.frame_check: decoded latent vs camera frame).

Only successful nominal episodes are calibration data: a nominal run in which the task failed is not
what "nominal" means, and its errors would widen the scale.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wam_control.policy.contract import ModelContract

METRIC = "l2/sqrt(C)"
# Names other tools use for the same quantity (RMS of the latent difference).
_METRIC_ALIASES = frozenset(
    {METRIC, "l2_over_sqrt_c", "l2/sqrt(c)", "normalized_l2", "normalised_l2", "rms", "normalised l2"}
)
MIN_SAMPLES = 20
"""Fewer matched predictions than this for an offset give no usable spread: that offset is left out."""


class CalibrationError(ValueError):
    """A calibration file is missing, malformed, or belongs to another model."""


@dataclass(frozen=True)
class ErrorStats:
    """Nominal distribution of one error quantity: per offset (latent channels) or one value (frame)."""

    mean: np.ndarray
    std: np.ndarray
    p95: np.ndarray
    p99: np.ndarray
    samples: tuple[int, ...] = ()

    @classmethod
    def of(cls, groups: Sequence[Sequence[float]]) -> ErrorStats:
        stats: dict[str, list[float]] = {k: [] for k in ("mean", "std", "p95", "p99")}
        for vals in groups:
            v = np.asarray(vals, np.float64)
            stats["mean"].append(float(v.mean()))
            # A floor keeps one near-deterministic quantity from turning rounding noise into huge z-scores.
            stats["std"].append(max(float(v.std(ddof=1)), 1e-3 * max(float(v.mean()), 1e-6), 1e-9))
            stats["p95"].append(float(np.percentile(v, 95)))
            stats["p99"].append(float(np.percentile(v, 99)))
        return cls(**{k: np.asarray(v) for k, v in stats.items()}, samples=tuple(len(g) for g in groups))

    def validate(self, n: int, what: str) -> None:
        for name in ("mean", "std", "p95", "p99"):
            arr = getattr(self, name)
            if arr.shape != (n,) or not np.all(np.isfinite(arr)):
                raise CalibrationError(
                    f"calibration field '{what}{name}' must be {n} finite numbers (one per offset), "
                    f"got {arr.tolist()}"
                )
        if np.any(self.std <= 0.0) or np.any(self.mean < 0.0):
            raise CalibrationError(
                f"calibration needs {what}mean >= 0 and {what}std > 0, got mean {self.mean.tolist()} "
                f"std {self.std.tolist()}"
            )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: [float(v) for v in getattr(self, k)] for k in ("mean", "std", "p95", "p99")}
        if self.samples:
            out["samples"] = list(self.samples)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any], n: int | None, what: str) -> ErrorStats:
        try:
            arrays = {
                k: np.asarray(data[k], dtype=np.float64).reshape(-1) for k in ("mean", "std", "p95", "p99")
            }
            samples = tuple(int(x) for x in np.asarray(data.get("samples", ()), dtype=np.int64).reshape(-1))
        except KeyError as exc:
            raise CalibrationError(f"calibration section '{what.rstrip('.')}' misses field {exc}") from None
        except (TypeError, ValueError) as exc:
            raise CalibrationError(
                f"calibration section '{what.rstrip('.')}': numbers expected ({exc})"
            ) from None
        st = cls(**arrays, samples=samples)
        st.validate(len(st.mean) if n is None else n, what)
        return st


@dataclass(frozen=True)
class FrameStats:
    """Nominal `frame_error` of the decoder's camera."""

    stats: ErrorStats
    camera: str

    @property
    def mean(self) -> float:
        return float(self.stats.mean[0])

    @property
    def std(self) -> float:
        return float(self.stats.std[0])

    def to_json(self) -> dict[str, Any]:
        out = self.stats.to_json()
        out = {k: v[0] for k, v in out.items()}  # one quantity: scalars, not one-element lists
        out["camera"] = self.camera
        return out

    @classmethod
    def from_json(cls, data: Any, source: str) -> FrameStats:
        if not isinstance(data, Mapping):
            raise CalibrationError(f"{source}: section 'frame' must be an object")
        wrapped = {
            k: [v] if not isinstance(v, (list, tuple)) else v for k, v in data.items() if k != "camera"
        }
        return cls(ErrorStats.from_json(wrapped, 1, "frame."), str(data.get("camera", "")))


def distance(pred: np.ndarray, obs: np.ndarray) -> float:
    """The calibrated metric: ||pred - obs|| / sqrt(C) (float64 accumulation)."""
    diff = np.asarray(pred, np.float64) - np.asarray(obs, np.float64)
    return float(math.sqrt(float(diff @ diff) / diff.size))


@dataclass(frozen=True)
class SurpriseCalibration:
    offsets: tuple[int, ...]
    mean: np.ndarray
    std: np.ndarray
    p95: np.ndarray
    p99: np.ndarray
    metric: str = METRIC
    episodes: int = 0
    seeds: tuple[int, ...] = ()
    weights_sha256: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    ramp_offsets: tuple[int, ...] = ()
    ramp: ErrorStats | None = None
    """Statistics of predictions made during the filter's ramp-in, per `ramp_offsets` (optional)."""
    frame: FrameStats | None = None
    """Statistics of `frame_error` (optional)."""

    def __post_init__(self) -> None:
        if self.ramp is not None:
            self.ramp.validate(len(self.ramp_offsets), "ramp_in.")
        if not self.offsets:
            raise CalibrationError("calibration has no offsets")
        ErrorStats(self.mean, self.std, self.p95, self.p99).validate(len(self.offsets), "")

    def check(self, contract: ModelContract, source: str = "calibration") -> None:
        """Refuse a calibration made for another model (offsets or weights differ)."""
        unknown = [o for o in (*self.offsets, *self.ramp_offsets) if o not in contract.latent_offsets]
        if unknown:
            raise CalibrationError(
                f"{source}: offsets {unknown} are not among the model's latent_offsets "
                f"{list(contract.latent_offsets)}"
            )
        if self.weights_sha256 and self.weights_sha256 != contract.weights_sha256:
            raise CalibrationError(
                f"{source}: weights_sha256 {self.weights_sha256[:12]}... is for another model "
                f"(this one is {contract.weights_sha256[:12]}...): recalibrate with "
                "`wam-control bench surprise --calibrate-only`"
            )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        out.update(
            {
                "offsets": list(self.offsets),
                "mean": [float(v) for v in self.mean],
                "std": [float(v) for v in self.std],
                "p95": [float(v) for v in self.p95],
                "p99": [float(v) for v in self.p99],
                "metric": self.metric,
                "episodes": int(self.episodes),
                "seeds": list(self.seeds),
            }
        )
        if self.weights_sha256:
            out["weights_sha256"] = self.weights_sha256
        if self.ramp is not None:
            out["ramp_in"] = {"offsets": list(self.ramp_offsets), **self.ramp.to_json()}
        if self.frame is not None:
            out["frame"] = self.frame.to_json()
        return out

    def save(self, path: str | os.PathLike[str]) -> Path:
        p = Path(path)
        tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n")
        os.replace(tmp, p)
        return p

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str = "calibration") -> SurpriseCalibration:
        if not isinstance(data, Mapping):
            raise CalibrationError(f"{source}: expected a JSON object, got {type(data).__name__}")
        missing = [k for k in ("offsets", "mean", "std", "p95", "p99", "metric") if k not in data]
        if missing:
            raise CalibrationError(f"{source}: missing field(s) {missing}")
        metric = str(data["metric"])
        if metric.strip().lower() not in {m.lower() for m in _METRIC_ALIASES}:
            raise CalibrationError(
                f"{source}: field 'metric' is {metric!r}; the monitor computes {METRIC!r} "
                "(RMS of the latent difference)"
            )
        try:
            offsets = tuple(int(o) for o in data["offsets"])
            arrays = {
                k: np.asarray(data[k], dtype=np.float64).reshape(-1) for k in ("mean", "std", "p95", "p99")
            }
        except (TypeError, ValueError) as exc:
            raise CalibrationError(
                f"{source}: offsets/mean/std/p95/p99 must be lists of numbers ({exc})"
            ) from None
        seeds = data.get("seeds", ())
        extra = {
            k: v
            for k, v in data.items()
            if k
            not in {
                "offsets",
                "mean",
                "std",
                "p95",
                "p99",
                "metric",
                "episodes",
                "seeds",
                "weights_sha256",
                "ramp_in",
                "frame",
            }
        }
        ramp_offsets: tuple[int, ...] = ()
        ramp = None
        frame = None
        try:
            if data.get("ramp_in") is not None:
                r = data["ramp_in"]
                if not isinstance(r, Mapping) or "offsets" not in r:
                    raise CalibrationError("section 'ramp_in' must be an object with 'offsets'")
                try:
                    ramp_offsets = tuple(int(o) for o in r["offsets"])
                except (TypeError, ValueError):
                    raise CalibrationError("ramp_in.offsets must be a list of integers") from None
                ramp = ErrorStats.from_json(r, len(ramp_offsets), "ramp_in.")
            if data.get("frame") is not None:
                frame = FrameStats.from_json(data["frame"], source)
        except CalibrationError as exc:
            raise CalibrationError(f"{source}: {exc}") from None
        try:
            return cls(
                offsets=offsets,
                mean=arrays["mean"],
                std=arrays["std"],
                p95=arrays["p95"],
                p99=arrays["p99"],
                metric=METRIC,
                episodes=int(data.get("episodes", 0) or 0),
                seeds=tuple(int(s) for s in seeds) if isinstance(seeds, (list, tuple)) else (),
                weights_sha256=str(data.get("weights_sha256", "") or ""),
                extra=extra,
                ramp_offsets=ramp_offsets,
                ramp=ramp,
                frame=frame,
            )
        except CalibrationError as exc:
            raise CalibrationError(f"{source}: {exc}") from None

    @classmethod
    def load(cls, path: str | os.PathLike[str], contract: ModelContract | None = None) -> SurpriseCalibration:
        p = Path(path)
        if not p.is_file():
            raise CalibrationError(
                f"surprise calibration {p} does not exist: create it with "
                "`wam-control bench surprise --calibrate-only --model <model.onnx>` "
                "or set surprise.enabled: false"
            )
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError) as exc:
            raise CalibrationError(f"surprise calibration {p} is not readable JSON: {exc}") from None
        cal = cls.from_json(data, source=str(p))
        if contract is not None:
            cal.check(contract, source=str(p))
        return cal

    @classmethod
    def from_samples(
        cls,
        samples: Mapping[int, Sequence[float]],
        *,
        ramp_samples: Mapping[int, Sequence[float]] | None = None,
        frame_samples: Sequence[float] = (),
        frame_camera: str = "",
        episodes: int = 0,
        seeds: Sequence[int] = (),
        weights_sha256: str = "",
        extra: Mapping[str, Any] | None = None,
    ) -> SurpriseCalibration:
        """Statistics per offset from matched distances; offsets with < MIN_SAMPLES samples are left out
        (so are the optional ramp-in and frame sections when they have too few)."""
        used = sorted(o for o, v in samples.items() if len(v) >= MIN_SAMPLES)
        if not used:
            counts = {o: len(v) for o, v in samples.items()}
            raise CalibrationError(
                f"calibration needs >= {MIN_SAMPLES} matched predictions for at least one offset, got {counts}: "
                "run more nominal episodes"
            )
        st = ErrorStats.of([samples[o] for o in used])
        ext = dict(extra or {})
        ext["samples"] = list(st.samples)
        ramp_used = sorted(o for o, v in (ramp_samples or {}).items() if len(v) >= MIN_SAMPLES)
        frame = None
        if len(frame_samples) >= MIN_SAMPLES:
            frame = FrameStats(ErrorStats.of([frame_samples]), frame_camera)
        return cls(
            offsets=tuple(used),
            mean=st.mean,
            std=st.std,
            p95=st.p95,
            p99=st.p99,
            episodes=int(episodes),
            seeds=tuple(int(s) for s in seeds),
            weights_sha256=weights_sha256,
            extra=ext,
            ramp_offsets=tuple(ramp_used),
            ramp=ErrorStats.of([ramp_samples[o] for o in ramp_used]) if ramp_samples and ramp_used else None,
            frame=frame,
        )


def default_calibration_path(model_path: str | os.PathLike[str]) -> Path:
    """`models/wam_reach.onnx` -> `models/wam_reach.surprise.json`."""
    p = Path(model_path)
    stem = p.name[: -len(".onnx")] if p.name.endswith(".onnx") else p.stem
    return p.with_name(f"{stem}.surprise.json")
