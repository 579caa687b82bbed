"""The surprise monitor: how far reality departs from what the world model expected.

Every inference result carries `latent` (the model's latent of the observation at `obs_tick`) and
`latent_pred[i]` (its prediction of the latent `latent_offsets[i]` action steps later, conditioned on the
chunk it proposes). The monitor keeps those predictions in a preallocated ring, keyed by the absolute
tick they refer to (`obs_tick + offset * ticks_per_step`). When a later result brings the latent of an
observation at tick T, each earlier request's prediction nearest to T (within `match_tolerance_steps`)
is compared with it:

    d = ||pred - obs|| / sqrt(C)            (the calibrated metric, see runtime.calibration)
    z = (d - mean[offset]) / std[offset]    (nominal statistics from closed-loop runs)
    raw = mean z over the predictions that targeted T
    latent score = smoothing * raw + (1 - smoothing) * latent score

A second channel, when the calibration has a `frame` section and the backend runs the frame check
(policy.frame_check): the result's `frame_error` (the model's latent decoded to the camera frame vs the
frame itself) is z-scored the same way, smoothed the same way, and

    score = max(latent score, frame score)

The latent channel sees what the model represents but did not predict (an object moved, a joint that
does not follow); the frame channel sees what the model does not represent at all (a camera knocked
off its mount, an occluder): its latent of a shifted view is the latent of the usual view, so the
prediction error stays nominal while the decoded view no longer matches the camera.

Timing of the predictions: `latent_pred` assumes the proposed chunk starts executing at `obs_tick`
(the async scheduler executes it that way, the in-flight part given to the model as its prefix). A
chunk that arrives while the arm holds still (start-up, after a stop or a starvation) is started at
its arrival instead, i.e. `delay` ticks later than the model assumed: keyed from `obs_tick`, every
prediction of that chunk would be compared with an observation `delay` ticks too early in the motion,
which at 200 ms of inference delay looks like a z of 5-8 on nominal runs. So the predictions are keyed
from `start_tick` when the caller knows it, and otherwise a result that arrives while the attached
filter is holding stores no predictions (its latent is still scored against earlier ones): the
comparison is always prediction-for-tick-T against the latent of the observation taken at tick T.

Predictions made while the safety filter ramps in (after start or re-arm, reduced limits) describe a
plan the arm cannot follow yet; their nominal error is several times the steady one. They are scored
against their own statistics (the calibration's `ramp_in` section), or not at all without it.

Responses, on the safety filter the controller attaches: score >= `slow_threshold` scales the velocity
envelope down linearly, from 1 at `slow_threshold` to `min_scale` at `stop_threshold`; score >=
`stop_threshold` brakes to hold and latches ("surprise", re-arm required). Predictions whose target
passes without an observation near it expire (counted); a missing result simply means fewer matches.

Cost: nothing per control tick. Per inference result, O(ring * K) scalar work and K vector
differences into one preallocated buffer; no allocation beyond a few scalars (the reason string of a
latch is a constant).
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

from wam_control.config.schema import SurpriseConfig
from wam_control.policy.contract import ModelContract
from wam_control.runtime.calibration import SurpriseCalibration

LATCH_REASON = "surprise: world-model prediction error above stop_threshold"


class _Filter(Protocol):
    fault: str | None
    holding: bool

    @property
    def ramp(self) -> float: ...

    def set_velocity_scale(self, scale: float) -> None: ...

    def latch(self, reason: str) -> None: ...


class SurpriseMonitor:
    """See the module docstring. `calibration=None` measures distances only (calibration runs):
    score stays 0 and nothing is slowed or latched; give `record` a dict to collect distances."""

    def __init__(
        self,
        contract: ModelContract,
        control_hz: float,
        calibration: SurpriseCalibration | None,
        config: SurpriseConfig | None = None,
        *,
        record: dict[int, list[float]] | None = None,
        record_ramp: dict[int, list[float]] | None = None,
        record_frame: list[float] | None = None,
    ) -> None:
        self.config = cfg = config or SurpriseConfig()
        self.contract = contract
        if calibration is not None:
            calibration.check(contract)
        self.calibration = calibration
        k, c = contract.latent_steps, contract.latent_dim
        self.k, self.c = k, c
        self.ticks_per_step = contract.action_dt * float(control_hz)
        self._offset_ticks = np.array(
            [int(round(o * self.ticks_per_step)) for o in contract.latent_offsets], np.int64
        )
        self.tolerance_ticks = int(math.floor(cfg.match_tolerance_steps * self.ticks_per_step + 1e-9))
        # Per contract offset: calibrated mean/std, or NaN where the calibration has no entry.
        self._mean = np.full(k, math.nan)
        self._std = np.full(k, math.nan)
        if calibration is not None:
            for j, o in enumerate(calibration.offsets):
                i = contract.latent_offsets.index(o)
                self._mean[i] = calibration.mean[j]
                self._std[i] = calibration.std[j]
        self._scored = np.isfinite(self._mean)
        self._ramp_mean = np.full(k, math.nan)
        self._ramp_std = np.full(k, math.nan)
        if calibration is not None and calibration.ramp is not None:
            for j, o in enumerate(calibration.ramp_offsets):
                i = contract.latent_offsets.index(o)
                self._ramp_mean[i] = calibration.ramp.mean[j]
                self._ramp_std[i] = calibration.ramp.std[j]
        self._ramp_scored = np.isfinite(self._ramp_mean)
        self._keep_ramp = bool(self._ramp_scored.any()) or record_ramp is not None
        frame = calibration.frame if calibration is not None else None
        self._frame_mean = frame.mean if frame is not None else math.nan
        self._frame_std = frame.std if frame is not None else math.nan
        self.frame_calibrated = frame is not None
        r = cfg.ring_requests
        self._pred = np.zeros((r, k, c), np.float32)
        self._target = np.zeros((r, k), np.int64)
        self._live = np.zeros((r, k), bool)
        self._ramp_row = np.zeros(r, bool)
        self._diff = np.zeros(c, np.float32)
        self._z_last = np.full(k, math.nan)
        self._next = 0
        self._last_obs_tick = -(2**62)
        self._scale_span = cfg.stop_threshold - cfg.slow_threshold
        self._filter: _Filter | None = None
        self._record = record
        self._record_ramp = record_ramp
        self._record_frame = record_frame
        self.score = 0.0
        self.latent_score = 0.0
        self.frame_score = 0.0
        self.raw = math.nan
        self.frame_error = math.nan
        self.frame_z = math.nan
        self.velocity_scale = 1.0
        self.peak_score = 0.0
        self.tripped = False
        self.last_update_tick = -1
        self.counters: dict[str, int] = {
            "observations": 0,
            "observations_scored": 0,
            "matches": 0,
            "expired": 0,
            "overwritten": 0,
            "bad_outputs": 0,
            "unanchored": 0,
            "ramp_in": 0,
            "frames_scored": 0,
            "frames_missing": 0,
            "slowdowns": 0,
            "trips": 0,
        }

    # ------------------------------------------------------------------ wiring

    def attach(self, safety_filter: _Filter) -> None:
        """The filter whose velocity envelope is scaled and which is latched on a trip."""
        self._filter = safety_filter

    def reset(self) -> None:
        """Forget pending predictions and the score (a new motion starts: start or re-arm)."""
        self.forget_predictions()
        self.score = 0.0
        self.latent_score = 0.0
        self.frame_score = 0.0
        self.raw = math.nan
        self.tripped = False
        self._set_scale(1.0)

    def forget_predictions(self) -> None:
        """Drop pending predictions (the motion they were made for was abandoned, e.g. by a fault) but
        keep the score, the trip and the velocity scale: what the monitor acted on stays visible."""
        self._live[:] = False
        self._last_obs_tick = -(2**62)

    # ------------------------------------------------------------------ per inference result

    def on_result(
        self,
        obs_tick: int,
        latent: np.ndarray,
        latent_pred: np.ndarray,
        start_tick: int | None = None,
        frame_error: float = math.nan,
    ) -> float:
        """Score the observation of `obs_tick` against earlier predictions, then store this result's
        predictions; apply the response. Returns the (smoothed) score.

        `start_tick`: the tick at which the chunk's step 0 executes, when the caller knows it (default:
        `obs_tick`, unless the attached filter is holding, see the module docstring). `frame_error`:
        the frame check of this observation (NaN: none ran)."""
        k, c = self.k, self.c
        if (
            not isinstance(latent, np.ndarray)
            or not isinstance(latent_pred, np.ndarray)
            or latent.shape != (c,)
            or latent_pred.shape != (k, c)
        ):
            self.counters["bad_outputs"] += 1
            return self.score
        self.counters["observations"] += 1
        if obs_tick <= self._last_obs_tick:
            # Observations arrive in order; an older one would match predictions already expired.
            self.counters["bad_outputs"] += 1
            return self.score
        self._last_obs_tick = obs_tick
        updated = self._match(obs_tick, latent)
        updated = self._frame(frame_error) or updated
        if updated:
            self.score = max(self.latent_score, self.frame_score)
            self.last_update_tick = obs_tick
            if self.score > self.peak_score:
                self.peak_score = self.score
            self._respond()
        ramp = self._filter is not None and self._filter.ramp < 1.0
        if ramp:
            # The world head predicts the future *given the planned chunk*. While the filter ramps in
            # (reduced limits after start or re-arm) the arm cannot execute that plan: such predictions
            # are scored against their own nominal statistics, or not at all.
            self.counters["ramp_in"] += 1
            if not self._keep_ramp:
                return self.score
        if start_tick is not None:
            self._store(int(start_tick), latent_pred, ramp)
        elif self._filter is not None and self._filter.holding:
            # The chunk will start at its arrival, a tick this monitor does not see.
            self.counters["unanchored"] += 1
        else:
            self._store(obs_tick, latent_pred, ramp)
        return self.score

    def _frame(self, e: float) -> bool:
        if not math.isfinite(e):
            if self.frame_calibrated:
                self.counters["frames_missing"] += 1
            return False
        self.frame_error = e
        if self._record_frame is not None:
            self._record_frame.append(float(e))
        if not self.frame_calibrated:
            return False
        self.counters["frames_scored"] += 1
        self.frame_z = z = (e - self._frame_mean) / self._frame_std
        a = self.config.smoothing
        self.frame_score = a * z + (1.0 - a) * self.frame_score
        return True

    def _match(self, t: int, latent: np.ndarray) -> bool:
        tol = self.tolerance_ticks
        live, target, zl = self._live, self._target, self._z_last
        zl[:] = math.nan
        total = 0.0
        n = 0
        for r in range(live.shape[0]):
            best = -1
            best_gap = tol + 1
            for i in range(self.k):
                if not live[r, i]:
                    continue
                gap = int(target[r, i]) - t
                if gap < -tol:
                    live[r, i] = False  # its target has passed with no observation near it
                    self.counters["expired"] += 1
                elif abs(gap) < best_gap:
                    best, best_gap = i, abs(gap)
            if best < 0:
                continue
            live[r, best] = False
            np.subtract(self._pred[r, best], latent, out=self._diff)
            d = math.sqrt(float(np.dot(self._diff, self._diff)) / self.c)
            if not math.isfinite(d):
                self.counters["bad_outputs"] += 1
                continue
            self.counters["matches"] += 1
            offset = int(self.contract.latent_offsets[best])
            if self._ramp_row[r]:
                if self._record_ramp is not None:
                    self._record_ramp.setdefault(offset, []).append(d)
                mean, std, scored = self._ramp_mean[best], self._ramp_std[best], self._ramp_scored[best]
            else:
                if self._record is not None:
                    self._record.setdefault(offset, []).append(d)
                mean, std, scored = self._mean[best], self._std[best], self._scored[best]
            if scored:
                z = (d - mean) / std
                zl[best] = z if math.isnan(zl[best]) else max(zl[best], z)
                total += z
                n += 1
        if n == 0:
            return False
        self.counters["observations_scored"] += 1
        self.raw = total / n
        a = self.config.smoothing
        self.latent_score = a * self.raw + (1.0 - a) * self.latent_score
        return True

    def _store(self, start_tick: int, latent_pred: np.ndarray, ramp: bool = False) -> None:
        r = self._next
        self._next = (r + 1) % self._live.shape[0]
        if self._live[r].any():
            self.counters["overwritten"] += int(self._live[r].sum())
        self._pred[r] = latent_pred
        self._ramp_row[r] = ramp
        np.add(self._offset_ticks, start_tick, out=self._target[r])
        self._live[r] = True

    def _respond(self) -> None:
        cfg = self.config
        s = self.score
        if s < cfg.slow_threshold:
            self._set_scale(1.0)
            return
        x = min(1.0, (s - cfg.slow_threshold) / self._scale_span)
        self._set_scale(1.0 - (1.0 - cfg.min_scale) * x)
        if s >= cfg.stop_threshold and cfg.latch and not self.tripped:
            self.tripped = True
            self.counters["trips"] += 1
            if self._filter is not None and self._filter.fault is None:
                self._filter.latch(LATCH_REASON)

    def _set_scale(self, scale: float) -> None:
        if scale < 1.0 and self.velocity_scale >= 1.0:
            self.counters["slowdowns"] += 1
        if scale != self.velocity_scale:
            self.velocity_scale = scale
            if self._filter is not None:
                self._filter.set_velocity_scale(scale)

    # ------------------------------------------------------------------ diagnostics

    def values(self) -> dict[str, float | int | str]:
        """Diagnostics (the controller adds them to its status under `surprise.`)."""
        out: dict[str, float | int | str] = {
            "surprise.score": float(self.score),
            "surprise.raw": float(self.raw),
            "surprise.latent_score": float(self.latent_score),
            "surprise.frame_score": float(self.frame_score),
            "surprise.frame_error": float(self.frame_error),
            "surprise.peak": float(self.peak_score),
            "surprise.velocity_scale": float(self.velocity_scale),
            "surprise.tripped": int(self.tripped),
            "surprise.calibrated": int(self.calibration is not None),
        }
        for name, v in self.counters.items():
            out[f"surprise.{name}"] = v
        for i, o in enumerate(self.contract.latent_offsets):
            if self._scored[i]:
                out[f"surprise.z_offset{o}"] = float(self._z_last[i])
        return out

    def warning(self) -> str | None:
        """A one-line status warning while the monitor is slowing the arm, else None."""
        if self.velocity_scale >= 1.0:
            return None
        return (
            f"surprise score {self.score:.1f} >= slow_threshold {self.config.slow_threshold:g}: "
            f"velocity scaled to {self.velocity_scale:.2f}"
        )


def build_monitor(
    config: SurpriseConfig,
    contract: ModelContract,
    control_hz: float,
    model_path: str = "",
) -> SurpriseMonitor | None:
    """The monitor a deployment asks for, or None when `enabled` is false. An enabled monitor without
    its calibration file is an error (CalibrationError naming the file), never silently off; so is a
    frame check without its decoder or without the calibration's `frame` section."""
    if not config.enabled:
        return None
    from wam_control.runtime.calibration import CalibrationError, default_calibration_path

    path = config.calibration or (str(default_calibration_path(model_path)) if model_path else "")
    if not path:
        raise ValueError("surprise.calibration is empty and no model path was given to place it beside")
    cal = SurpriseCalibration.load(path, contract)
    if config.frame_check:
        decoder = frame_check_decoder(config, contract, model_path)
        if cal.frame is None:
            raise CalibrationError(
                f"surprise.frame_check is true but the calibration {path} has no 'frame' section: "
                "recalibrate with `wam-control bench surprise --calibrate-only` (the configuration's "
                "frame_check on), or set surprise.frame_check: false"
            )
        from wam_control.policy.decoder_meta import read_decoder_metadata

        camera = str(read_decoder_metadata(decoder).get("camera", ""))
        if cal.frame.camera and cal.frame.camera != camera:
            raise CalibrationError(
                f"calibration {path}: its 'frame' section is for camera {cal.frame.camera!r}, the decoder "
                f"{decoder} decodes {camera!r}"
            )
    return SurpriseMonitor(contract, control_hz, cal, config)


def frame_check_decoder(config: SurpriseConfig, contract: ModelContract, model_path: str = "") -> str:
    """The decoder file the frame check uses (`surprise.decoder`, else beside the model), checked
    against the model; DecoderError naming the file when it is missing or made for another model."""
    from wam_control.policy.decoder_meta import (
        DecoderError,
        check_decoder,
        default_decoder_path,
        read_decoder_metadata,
    )

    if config.decoder:
        decoder = config.decoder
    elif model_path:
        decoder = str(default_decoder_path(model_path))
    else:
        raise DecoderError(
            "surprise.frame_check is true but surprise.decoder is empty and no model path was given"
        )
    try:
        meta = read_decoder_metadata(decoder)
    except DecoderError as exc:
        raise DecoderError(
            f"surprise.frame_check: {exc} (train it with `wam-control train-decoder`, or set "
            "surprise.frame_check: false)"
        ) from None
    check_decoder(meta, contract, decoder)
    return decoder
