"""Tick-indexed action chunks: interpolation, delay tracking, prefix, seams (DESIGN.md §4).

A chunk computed from the observation of tick t0 holds action k for tick t0 + k * s, where
s = action_dt * control_hz ticks per action step (a whole number for a valid deployment; a fractional
s still works because every lookup is done by time, not by index).

Between action steps the target follows a natural cubic spline through the action points. The spline
is C2 (continuous acceleration), so the target's jerk is bounded and piecewise constant; linear
interpolation would put a velocity step at every action point, i.e. an acceleration impulse of
dv/dt every s ticks, which the safety filter would then have to clip (and count) all the time.

The delay d of a chunk is the number of ticks that actually elapsed between its observation and its
arrival. A windowed high percentile of d, excluding warm-up chunks, sizes the prefix and triggers the
next request so that it lands before the current chunk runs out.

At a switch the new chunk's target is compared with the plan being executed. Prefix conditioning keeps
that gap small; when it is still above a threshold, a quintic correction that starts at the old plan's
position, velocity and acceleration and decays to zero is added to the new chunk, so the emitted target
stays C2 across the seam and the correction's own acceleration and jerk are bounded.

Nothing here allocates per tick beyond a few scalars: chunks are stored as polynomial coefficients in
preallocated arrays and evaluated with in-place Horner steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from wam_control.config.schema import InferenceConfig

SchedulerMode = Literal["prefix", "naive", "fixed_blend"]
Interpolation = Literal["cubic", "linear"]


@dataclass(frozen=True)
class SchedulerParams:
    """Knobs of the chunk scheduler; the defaults are what the controller uses."""

    mode: SchedulerMode = "prefix"
    """prefix: prefix conditioning + C2 seam correction when needed (the product);
    naive: switch to the newest chunk as is; fixed_blend: average old and new chunk with fixed weights
    while they overlap (the two baselines of `wam-control bench scheduler`)."""
    interpolation: Interpolation = "cubic"
    trigger_margin_ticks: int = 2
    """Request the next chunk when the current one has at most delay_estimate + this many ticks left."""
    replan_fraction: float = 0.5
    """Steady cadence: also request once this fraction of a chunk's duration has passed since the last
    request (0 disables: requests then come only from the remaining-horizon trigger)."""
    prefix_extra_steps: int = 1
    """Committed action steps beyond the one containing the expected arrival tick."""
    seam_acc_threshold: float = 1.0
    """A switch is made without correction only when the step it would put into the target's
    acceleration, |dp|/dt^2 + |dv|/dt + |da| on the worst joint, stays below this (rad/s^2). At a
    control rate of 500 Hz a 1 mrad position gap alone is a 250 rad/s^2 step, so in practice only
    seams that prefix conditioning made (almost) exact go through unblended."""
    blend_max_acc: float = 2.5
    """Acceleration the seam correction may add (rad/s^2), on every DOF without its own value below."""
    blend_max_jerk: float = 500.0
    """Jerk the seam correction may add (rad/s^3), on every DOF without its own value below."""
    blend_max_acc_per_dof: tuple[float, ...] = ()
    """Per DOF, in that DOF's own units (a gripper finger's m/s^2 beside the arm's rad/s^2); () means
    blend_max_acc for every DOF. One limit for all would compare a finger's metres with a joint's
    radians."""
    blend_max_jerk_per_dof: tuple[float, ...] = ()
    """Per DOF, as blend_max_acc_per_dof; () means blend_max_jerk for every DOF."""
    blend_min_s: float = 0.01
    blend_max_s: float = 0.5
    fixed_blend_weight: float = 0.5
    """Weight of the older chunk in fixed_blend mode."""

    def __post_init__(self) -> None:
        if self.mode not in ("prefix", "naive", "fixed_blend"):
            raise ValueError(f"SchedulerParams.mode must be prefix|naive|fixed_blend, got {self.mode!r}")
        if self.interpolation not in ("cubic", "linear"):
            raise ValueError(
                f"SchedulerParams.interpolation must be cubic|linear, got {self.interpolation!r}"
            )
        if not 0.0 <= self.replan_fraction <= 1.0:
            raise ValueError(f"SchedulerParams.replan_fraction must be in [0, 1], got {self.replan_fraction}")
        if self.trigger_margin_ticks < 0 or self.prefix_extra_steps < 0:
            raise ValueError("SchedulerParams.trigger_margin_ticks and prefix_extra_steps must be >= 0")
        if not (self.blend_max_acc > 0 and self.blend_max_jerk > 0):
            raise ValueError("SchedulerParams.blend_max_acc and blend_max_jerk must be > 0")
        for name in ("blend_max_acc_per_dof", "blend_max_jerk_per_dof"):
            if not all(v > 0 and math.isfinite(v) for v in getattr(self, name)):
                raise ValueError(f"SchedulerParams.{name} must be finite and > 0, got {getattr(self, name)}")
        if not 0 < self.blend_min_s <= self.blend_max_s:
            raise ValueError("SchedulerParams: need 0 < blend_min_s <= blend_max_s")


def _natural_spline_matrix(n: int) -> np.ndarray:
    """P (n x n) with M = P @ y: second derivatives of the natural cubic spline through n unit-spaced
    points. Solved once per horizon so that fitting a chunk is one matrix product."""
    p = np.zeros((n, n))
    if n < 3:
        return p
    m = n - 2
    a = np.diag(np.full(m, 4.0)) + np.diag(np.ones(m - 1), 1) + np.diag(np.ones(m - 1), -1)
    b = np.zeros((m, n))
    for i in range(m):
        b[i, i : i + 3] = (6.0, -12.0, 6.0)
    p[1:-1] = np.linalg.solve(a, b)
    return p


class _Chunk:
    """One chunk as per-segment cubic coefficients: p(tau) = c0 + c1 tau + c2 tau^2 + c3 tau^3."""

    def __init__(self, horizon: int, dof: int) -> None:
        self.n = horizon
        self.nseg = max(horizon - 1, 1)
        self.actions = np.zeros((horizon, dof))
        self.coef = np.zeros((4, self.nseg, dof))
        self._m = np.zeros((horizon, dof))
        self.t0 = 0
        self.obs_tick = 0
        """Tick of the observation it was computed from (t0 unless it was started at its arrival)."""
        self.s = 1.0
        self.end = 0.0
        self.version = 0

    def fit(self, t0: int, s: float, actions: np.ndarray, spline: np.ndarray | None, version: int) -> None:
        self.t0, self.s, self.version = int(t0), float(s), version
        np.copyto(self.actions, actions)
        y = self.actions
        c = self.coef
        if self.n == 1:
            # A one-step chunk holds its only action for one step.
            c[:] = 0.0
            c[0, 0] = y[0]
            self.end = self.t0 + self.s
            return
        self.end = self.t0 + (self.n - 1) * self.s
        if spline is None:
            self._m[:] = 0.0
        else:
            np.matmul(spline, y, out=self._m)
        m = self._m
        c[0] = y[:-1]
        c[1] = y[1:] - y[:-1] - m[:-1] / 3.0 - m[1:] / 6.0
        c[2] = m[:-1] / 2.0
        c[3] = (m[1:] - m[:-1]) / 6.0

    def covers(self, tick: float) -> bool:
        return self.t0 <= tick <= self.end + 1e-9

    def _locate(self, tick: float) -> tuple[int, float]:
        u = (tick - self.t0) / self.s
        k = min(max(int(u), 0), self.nseg - 1)
        return k, u - k

    def position(self, tick: float, out: np.ndarray) -> None:
        k, tau = self._locate(tick)
        c = self.coef
        np.copyto(out, c[3, k])
        out *= tau
        out += c[2, k]
        out *= tau
        out += c[1, k]
        out *= tau
        out += c[0, k]

    def pva(self, tick: float, dt: float, p: np.ndarray, v: np.ndarray, a: np.ndarray) -> None:
        """Position, velocity (rad/s) and acceleration (rad/s^2) at a tick (not on the hot path)."""
        k, tau = self._locate(tick)
        c = self.coef
        self.position(tick, p)
        step_s = self.s * dt
        v[:] = (c[1, k] + 2.0 * c[2, k] * tau + 3.0 * c[3, k] * tau * tau) / step_s
        a[:] = (2.0 * c[2, k] + 6.0 * c[3, k] * tau) / (step_s * step_s)


class _SeamCorrection:
    """e(t) added to a new chunk after a switch: starts at the (old - new) position, velocity and
    acceleration difference and reaches zero with zero velocity and acceleration after T seconds."""

    # |d^3/dsigma^3| and |d^2/dsigma^2| maxima of the quintic basis for position, velocity*T, acc*T^2.
    _JERK = (60.0, 36.0, 9.0)
    _ACC = (5.774, 3.94)

    def __init__(self, dof: int) -> None:
        self.coef = np.zeros((6, dof))
        self.start = 0
        self.ticks = 0
        self.duration = 0.0
        self.active = False

    @classmethod
    def duration_for(
        cls,
        dp: np.ndarray,
        dv: np.ndarray,
        da: np.ndarray,
        max_acc: np.ndarray,
        max_jerk: np.ndarray,
        t_min: float,
        t_max: float,
    ) -> float:
        """The shortest T (1.1x steps from t_min, at most t_max) at which the correction's acceleration
        and jerk stay within every DOF's own limits; dp, dv, da are the per-DOF gap magnitudes."""
        # Each gap term is bounded by its worst DOF relative to that DOF's limit (conservative: the
        # worst DOFs of the three terms need not be the same one).
        pj, vj, aj = float(np.max(dp / max_jerk)), float(np.max(dv / max_jerk)), float(np.max(da / max_jerk))
        pa, va = float(np.max(dp / max_acc)), float(np.max(dv / max_acc))
        # The acceleration gap itself is not added by the correction (at t=0 the target keeps the old
        # plan's acceleration), so only the parts that grow as T shrinks are bounded.
        t = t_min
        while t < t_max:
            jerk = cls._JERK[0] * pj / t**3 + cls._JERK[1] * vj / t**2 + cls._JERK[2] * aj / t
            acc = cls._ACC[0] * pa / t**2 + cls._ACC[1] * va / t
            if jerk <= 1.0 and acc <= 1.0:
                return t
            t *= 1.1
        return t_max

    def set(
        self, start: int, duration: float, dt: float, dp: np.ndarray, dv: np.ndarray, da: np.ndarray
    ) -> None:
        self.ticks = max(1, int(math.ceil(duration / dt - 1e-9)))
        t = self.ticks * dt
        vt = dv * t
        at2 = da * t * t
        c = self.coef
        c[0] = dp
        c[1] = vt
        c[2] = 0.5 * at2
        c[3] = -10.0 * dp - 6.0 * vt - 1.5 * at2
        c[4] = 15.0 * dp + 8.0 * vt + 1.5 * at2
        c[5] = -6.0 * dp - 3.0 * vt - 0.5 * at2
        self.start = start
        self.duration = t
        self.active = True

    def add_to(self, tick: int, out: np.ndarray, scratch: np.ndarray) -> None:
        k = tick - self.start
        if k >= self.ticks:
            self.active = False
            return
        sigma = k / self.ticks
        c = self.coef
        np.copyto(scratch, c[5])
        for i in (4, 3, 2, 1, 0):
            scratch *= sigma
            scratch += c[i]
        out += scratch

    def pva(self, tick: float, p: np.ndarray, v: np.ndarray, a: np.ndarray) -> None:
        """Its position, velocity and acceleration at a tick (zero once finished)."""
        k = tick - self.start
        if not self.active or k >= self.ticks or k < 0:
            p[:] = 0.0
            v[:] = 0.0
            a[:] = 0.0
            return
        sg = k / self.ticks
        t = self.duration
        c = self.coef
        p[:] = c[0] + sg * (c[1] + sg * (c[2] + sg * (c[3] + sg * (c[4] + sg * c[5]))))
        v[:] = (c[1] + sg * (2 * c[2] + sg * (3 * c[3] + sg * (4 * c[4] + sg * 5 * c[5])))) / t
        a[:] = (2 * c[2] + sg * (6 * c[3] + sg * (12 * c[4] + sg * 20 * c[5]))) / (t * t)


class DelayTracker:
    """Windowed high percentile of the chunk delay in ticks, excluding warm-up chunks.

    Until the first post-warm-up sample arrives, the estimate is the latest warm-up delay (never a
    running maximum: a slow first call must not size every later prefix).
    """

    def __init__(self, window: int, percentile: float, warmup: int) -> None:
        if window < 1:
            raise ValueError(f"inference.delay_window must be >= 1, got {window}")
        if not 0.0 < percentile <= 100.0:
            raise ValueError(f"inference.delay_percentile must be in (0, 100], got {percentile}")
        if warmup < 0:
            raise ValueError(f"inference.warmup_chunks must be >= 0, got {warmup}")
        self.window = np.zeros(window)
        self.percentile = float(percentile)
        self.warmup = int(warmup)
        self.count = 0
        self.samples = 0
        self.warmup_left = self.warmup
        self.last = 0
        self.estimate = 0
        self.warmup_excluded = 0

    def restart_warmup(self) -> None:
        """A fresh model (worker restart) is slow again for a few calls."""
        self.warmup_left = self.warmup

    def add(self, delay_ticks: int) -> None:
        self.last = int(delay_ticks)
        if self.warmup_left > 0:
            self.warmup_left -= 1
            self.warmup_excluded += 1
            if self.count == 0:
                self.estimate = self.last
            return
        self.window[self.samples % self.window.shape[0]] = delay_ticks
        self.samples += 1
        self.count = min(self.count + 1, self.window.shape[0])
        self.estimate = int(
            math.ceil(float(np.percentile(self.window[: self.count], self.percentile)) - 1e-9)
        )

    def quantiles(self) -> tuple[float, float]:
        """(p50, p95) of the window, NaN before any post-warm-up sample."""
        if self.count == 0:
            return math.nan, math.nan
        w = self.window[: self.count]
        return float(np.percentile(w, 50)), float(np.percentile(w, 95))


class ChunkScheduler:
    """Tick-indexed action buffer: which target to send at each tick, when to ask for the next chunk,
    and which committed actions to hand the model as its prefix.

    Single-threaded: the controller calls it from the control tick only.
    """

    def __init__(
        self,
        horizon: int,
        dof: int,
        ticks_per_step: float,
        max_prefix: int,
        dt: float,
        inference: InferenceConfig | None = None,
        params: SchedulerParams | None = None,
    ) -> None:
        if horizon < 1 or dof < 1:
            raise ValueError(f"ChunkScheduler: horizon and dof must be >= 1, got {horizon}, {dof}")
        if not (ticks_per_step > 0 and math.isfinite(ticks_per_step)):
            raise ValueError(f"ChunkScheduler: ticks_per_step must be > 0, got {ticks_per_step}")
        if not 0 <= max_prefix < horizon:
            raise ValueError(f"ChunkScheduler: max_prefix must be in [0, {horizon - 1}], got {max_prefix}")
        inference = inference or InferenceConfig()
        self.params = params or SchedulerParams()
        self.horizon = horizon
        self.dof = dof
        rounded = round(ticks_per_step)
        self.s = float(rounded) if abs(ticks_per_step - rounded) < 1e-6 else float(ticks_per_step)
        self.max_prefix = max_prefix
        self.dt = float(dt)
        self.chunk_ticks = (horizon - 1) * self.s if horizon > 1 else self.s
        self.replan_ticks = int(round(self.params.replan_fraction * self.chunk_ticks))
        self.delay = DelayTracker(inference.delay_window, inference.delay_percentile, inference.warmup_chunks)
        # a floor above max_prefix is refused with the model (policy.contract.check_contract); here it
        # is capped like any other prefix that outgrows the model
        self.min_prefix = inference.min_prefix_steps
        spline = _natural_spline_matrix(horizon) if self.params.interpolation == "cubic" else None
        self._spline = spline
        self._cur: _Chunk | None = None
        self._prev: _Chunk | None = None  # fixed_blend mode: the older chunk while it overlaps
        self._spare = [_Chunk(horizon, dof), _Chunk(horizon, dof), _Chunk(horizon, dof)]
        self._seam = _SeamCorrection(dof)
        self._blend_acc = self._per_dof(self.params.blend_max_acc_per_dof, self.params.blend_max_acc, dof)
        self._blend_jerk = self._per_dof(self.params.blend_max_jerk_per_dof, self.params.blend_max_jerk, dof)
        self._target = np.zeros(dof)
        self._scratch = np.zeros(dof)
        self._row = np.zeros(dof)
        self._p0, self._v0, self._a0 = np.zeros(dof), np.zeros(dof), np.zeros(dof)
        self._p1, self._v1, self._a1 = np.zeros(dof), np.zeros(dof), np.zeros(dof)
        self._pe, self._ve, self._ae = np.zeros(dof), np.zeros(dof), np.zeros(dof)
        # Last three emitted targets (ring) for the seam jump / jerk metrics.
        self._hist = np.zeros((3, dof))
        self._hist_tick = -10
        self._hist_n = 0
        self._seam_window = 0
        self._seam_tick = -1
        self._version = 0
        self._last_request_tick: int | None = None
        self._had_chunk = False
        self._starving = False
        self.counters: dict[str, int] = {
            "requests": 0,
            "chunks_accepted": 0,
            "chunks_stale": 0,
            "chunks_expired": 0,
            "chunks_started_at_arrival": 0,
            "actions_dropped": 0,
            "starved_ticks": 0,
            "starvation_events": 0,
            "seams": 0,
            "seams_blended": 0,
            "prefix_overflows": 0,
        }
        self.prefix_len_last = 0
        self.prefix_needed_last = 0
        self.seam_gap_last = 0.0
        self.seam_gap_max = 0.0
        self.seam_acc_step_last = 0.0
        self.seam_jump_last = 0.0
        self.seam_jump_max = 0.0
        self.seam_jerk_last = 0.0
        self.seam_jerk_max = 0.0
        self.blend_ticks_last = 0
        self.switch_tick_last = -1

    # ------------------------------------------------------------------ lifecycle

    @staticmethod
    def _per_dof(values: tuple[float, ...], default: float, dof: int) -> np.ndarray:
        if not values:
            return np.full(dof, float(default))
        if len(values) != dof:
            raise ValueError(f"ChunkScheduler: {len(values)} per-DOF seam limits for {dof} DOFs")
        return np.asarray(values, dtype=float)

    def reset(self) -> None:
        """Drop every chunk and any seam correction (start, stop, e-stop, re-arm). The delay statistics
        describe the model and worker, not the motion, so they are kept."""
        if self._cur is not None:
            self._spare.append(self._cur)
        if self._prev is not None:
            self._spare.append(self._prev)
        self._cur = None
        self._prev = None
        self._seam.active = False
        self._hist_n = 0
        self._seam_window = 0
        self._last_request_tick = None
        self._had_chunk = False
        self._starving = False

    # ------------------------------------------------------------------ queries

    @property
    def version(self) -> int:
        """Version of the chunk currently executed (0: none yet)."""
        return self._cur.version if self._cur is not None else 0

    @property
    def current_obs_tick(self) -> int | None:
        return self._cur.obs_tick if self._cur is not None else None

    @property
    def delay_estimate(self) -> int:
        return self.delay.estimate

    @property
    def blending(self) -> bool:
        return self._seam.active

    @property
    def starving(self) -> bool:
        return self._starving

    def remaining_ticks(self, tick: int) -> float:
        """Ticks of the current chunk left after this one (negative once it has run out)."""
        return (self._cur.end - tick) if self._cur is not None else -math.inf

    def want_request(self, tick: int) -> bool:
        """Whether a new observation should be sent to the model at this tick."""
        cur = self._cur
        if cur is None or not cur.covers(tick):
            return True
        if cur.end - tick <= self.delay.estimate + self.params.trigger_margin_ticks:
            return True
        last = self._last_request_tick
        return self.replan_ticks > 0 and (last is None or tick - last >= self.replan_ticks)

    def on_request(self, tick: int) -> None:
        """A request with the observation of `tick` was handed to the worker."""
        self._last_request_tick = tick
        self.counters["requests"] += 1

    def on_request_failed(self) -> None:
        """The last request produced no usable chunk: the cadence must not wait for it, ask again now."""
        self._last_request_tick = None

    def fill_prefix(self, tick: int, out: np.ndarray, fallback: np.ndarray) -> int:
        """Write the action prefix for a request observed at `tick` into `out` [H, D]; return prefix_len.

        The prefix is the plan that will execute while the model thinks: steps 0 .. floor(d/s) + extra
        of the new chunk (at least `inference.min_prefix_steps`), evaluated on the plan now being
        executed (chunk + seam correction). Rows past prefix_len repeat the last committed action (or
        `fallback`, the measured state, when there is none): zero rows would decode to the training
        set's mean pose in a model that ignores the mask.
        """
        n = 0
        cur = self._cur
        if self.params.mode == "prefix" and cur is not None and cur.covers(tick) and self.max_prefix > 0:
            need = max(int(self.delay.estimate // self.s) + 1 + self.params.prefix_extra_steps, self.min_prefix)
            self.prefix_needed_last = need
            if need > self.max_prefix:
                self.counters["prefix_overflows"] += 1
            covered = int((cur.end - tick) // self.s) + 1
            n = max(0, min(need, self.max_prefix, covered, self.horizon))
            for k in range(n):
                self._plan_position(tick + k * self.s, self._row)
                out[k] = self._row
        if n == 0:
            out[:] = fallback
        else:
            out[n:] = out[n - 1]
        self.prefix_len_last = n
        return n

    def _plan_position(self, tick: float, out: np.ndarray) -> None:
        cur = self._cur
        if cur is None:
            raise RuntimeError("ChunkScheduler: no current chunk")
        cur.position(tick, out)
        if self._seam.active:
            k = tick - self._seam.start
            if 0 <= k < self._seam.ticks:
                # Not on a whole tick in general (prefix points): evaluate the quintic directly.
                self._seam.pva(tick, self._pe, self._ve, self._ae)
                out += self._pe
        if self._prev is not None and self._prev.covers(tick):
            w = self.params.fixed_blend_weight
            self._prev.position(tick, self._scratch)
            out *= 1.0 - w
            out += w * self._scratch

    # ------------------------------------------------------------------ arrival

    def accept(
        self,
        obs_tick: int,
        actions: np.ndarray,
        now_tick: int,
        hold: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
        *,
        start_at_arrival: bool = False,
    ) -> str | None:
        """Install a chunk computed from the observation of `obs_tick`, arriving at `now_tick`.

        `actions` must already be validated (finite, [H, D]). `hold` is the commanded (q, v, a) of the
        safety filter: the seam reference when no chunk covers `now_tick` (after starvation or a hold).
        `start_at_arrival`: the arm stood still from the observation until now (start-up, the sync
        baseline), so the chunk's step 0 is placed at `now_tick` instead of `obs_tick` and nothing is
        dropped; the delay is still measured from `obs_tick`.
        Returns None when installed, else why it was dropped.
        """
        delay = int(now_tick - obs_tick)
        self.delay.add(max(delay, 0))
        cur = self._cur
        if cur is not None and obs_tick <= cur.obs_tick:
            self.counters["chunks_stale"] += 1
            return f"chunk from tick {obs_tick} is not newer than the one executing (tick {cur.obs_tick})"
        t0 = obs_tick
        if start_at_arrival:
            t0 = now_tick
            self.counters["chunks_started_at_arrival"] += 1
        new = self._spare.pop()
        new.fit(t0, self.s, actions, self._spline, self._version + 1)
        new.obs_tick = int(obs_tick)
        if not new.covers(now_tick):
            self._spare.append(new)
            self.counters["chunks_expired"] += 1
            return f"chunk from tick {obs_tick} ended before it arrived at tick {now_tick} (delay {delay})"
        self._version += 1
        self.counters["chunks_accepted"] += 1
        self.counters["actions_dropped"] += min(self.horizon, int(math.ceil((now_tick - t0) / self.s - 1e-9)))

        have_ref = cur is not None and cur.covers(now_tick)
        if have_ref:
            self._plan_pva(now_tick, self._p0, self._v0, self._a0)
        elif hold is not None:
            np.copyto(self._p0, hold[0])
            np.copyto(self._v0, hold[1])
            np.copyto(self._a0, hold[2])
        new.pva(now_tick, self.dt, self._p1, self._v1, self._a1)
        has_seam = have_ref or hold is not None
        dp_v = self._p0 - self._p1
        dv_v = self._v0 - self._v1
        da_v = self._a0 - self._a1
        adp, adv, ada = np.abs(dp_v), np.abs(dv_v), np.abs(da_v)
        gap = float(np.max(adp)) if has_seam else 0.0
        dt = self.dt
        acc_step = float(np.max(adp / (dt * dt) + adv / dt + ada)) if has_seam else 0.0

        # Retire the old chunk(s).
        if self.params.mode == "fixed_blend":
            if self._prev is not None:
                self._spare.append(self._prev)
            self._prev = cur if have_ref else None
            if cur is not None and not have_ref:
                self._spare.append(cur)
        elif cur is not None:
            self._spare.append(cur)
        self._cur = new
        self._had_chunk = True

        self._seam.active = False
        blend_ticks = 0
        p = self.params
        if p.mode == "prefix" and has_seam and acc_step > p.seam_acc_threshold:
            t_max = max(p.blend_min_s, min(p.blend_max_s, (new.end - now_tick) * self.dt))
            t = _SeamCorrection.duration_for(
                adp, adv, ada, self._blend_acc, self._blend_jerk, p.blend_min_s, t_max
            )
            self._seam.set(now_tick, t, self.dt, dp_v, dv_v, da_v)
            blend_ticks = self._seam.ticks
            self.counters["seams_blended"] += 1
        if has_seam:
            self.counters["seams"] += 1
            self.seam_acc_step_last = acc_step
            self.seam_gap_last = gap
            self.seam_gap_max = max(self.seam_gap_max, gap)
            self._seam_window = 3
            self._seam_tick = now_tick
        self.blend_ticks_last = blend_ticks
        self.switch_tick_last = now_tick
        self.seam_jerk_last = 0.0
        return None

    def _plan_pva(self, tick: int, p: np.ndarray, v: np.ndarray, a: np.ndarray) -> None:
        cur = self._cur
        if cur is None:
            raise RuntimeError("ChunkScheduler: no current chunk")
        cur.pva(tick, self.dt, p, v, a)
        if self._seam.active:
            self._seam.pva(tick, self._pe, self._ve, self._ae)
            p += self._pe
            v += self._ve
            a += self._ae
        if self._prev is not None and self._prev.covers(tick):
            w = self.params.fixed_blend_weight
            self._prev.pva(tick, self.dt, self._pe, self._ve, self._ae)
            p *= 1.0 - w
            p += w * self._pe
            v *= 1.0 - w
            v += w * self._ve
            a *= 1.0 - w
            a += w * self._ae

    # ------------------------------------------------------------------ per tick

    def target(self, tick: int) -> np.ndarray | None:
        """The target for this tick (the scheduler's own buffer: copy it to keep it), or None when no
        chunk covers the tick (starvation: the caller brakes to hold)."""
        cur = self._cur
        if cur is None or not cur.covers(tick):
            if self._had_chunk:
                self.counters["starved_ticks"] += 1
                if not self._starving:
                    self.counters["starvation_events"] += 1
            self._starving = self._had_chunk
            self._hist_n = 0
            return None
        self._starving = False
        out = self._target
        cur.position(tick, out)
        if self._seam.active:
            self._seam.add_to(tick, out, self._scratch)
        prev = self._prev
        if prev is not None:
            if prev.covers(tick):
                w = self.params.fixed_blend_weight
                prev.position(tick, self._scratch)
                out *= 1.0 - w
                self._scratch *= w
                out += self._scratch
            else:
                self._spare.append(prev)
                self._prev = None
        self._track_seam(tick, out)
        return out

    def _track_seam(self, tick: int, q: np.ndarray) -> None:
        """Emitted jump (second difference) and jerk (third difference) in the ticks around a switch."""
        if tick != self._hist_tick + 1:
            self._hist_n = 0
        h = self._hist
        if self._seam_window > 0 and self._hist_n >= 2:
            i1, i2, i3 = (tick - 1) % 3, (tick - 2) % 3, (tick - 3) % 3
            if tick == self._seam_tick:
                s = self._scratch
                np.subtract(q, h[i1], out=s)
                s -= h[i1]
                s += h[i2]
                self.seam_jump_last = float(np.max(np.abs(s)))
                self.seam_jump_max = max(self.seam_jump_max, self.seam_jump_last)
            if self._hist_n >= 3:
                s = self._scratch
                np.subtract(q, h[i3], out=s)
                s += 3.0 * (h[i2] - h[i1])
                jerk = float(np.max(np.abs(s))) / self.dt**3
                self.seam_jerk_last = max(self.seam_jerk_last, jerk)
                self.seam_jerk_max = max(self.seam_jerk_max, jerk)
            self._seam_window -= 1
        elif self._seam_window > 0:
            self._seam_window -= 1
        np.copyto(h[tick % 3], q)
        self._hist_n = min(self._hist_n + 1, 3)
        self._hist_tick = tick

    # ------------------------------------------------------------------ outputs

    def predicted(self, tick: int) -> tuple[int, np.ndarray, np.ndarray] | None:
        """(version, seconds from `tick` to each action step, action points [H, D]) of the current chunk."""
        cur = self._cur
        if cur is None:
            return None
        t = (cur.t0 + np.arange(cur.n) * cur.s - tick) * self.dt
        return cur.version, t, cur.actions.copy()

    def metrics(self) -> dict[str, float | int]:
        p50, p95 = self.delay.quantiles()
        values: dict[str, float | int] = dict(self.counters)
        values.update(
            {
                "delay_ticks_last": self.delay.last,
                "delay_ticks_estimate": self.delay.estimate,
                "delay_ticks_p50": p50,
                "delay_ticks_p95": p95,
                "delay_ms_p50": p50 * self.dt * 1e3,
                "delay_ms_p95": p95 * self.dt * 1e3,
                "delay_warmup_excluded": self.delay.warmup_excluded,
                "prefix_len_last": self.prefix_len_last,
                "prefix_needed_last": self.prefix_needed_last,
                "seam_gap_last_rad": self.seam_gap_last,
                "seam_gap_max_rad": self.seam_gap_max,
                "seam_acc_step_last": self.seam_acc_step_last,
                "seam_jump_last_rad": self.seam_jump_last,
                "seam_jump_max_rad": self.seam_jump_max,
                "seam_jerk_last": self.seam_jerk_last,
                "seam_jerk_max": self.seam_jerk_max,
                "blend_ticks_last": self.blend_ticks_last,
                "chunk_version": self.version,
                "ticks_per_step": self.s,
            }
        )
        return values
