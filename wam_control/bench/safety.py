"""`wam-control bench safety`: seeded adversarial target streams through the safety filter.

Many independent streams run at once through `BatchCore` (the filter's arithmetic over arrays; the
per-tick `SafetyFilter` is tested to produce identical commands). Every emitted command is checked
the way the robot checks it: backward differences of consecutive commanded positions at the control
period give velocity, acceleration and jerk, compared with the limits (position with margins).
Streams mix: smooth motions faster than the limits, random steps far outside the range, white
noise, fast oscillation around a position limit, targets held behind a limit while moving fast, and
on top NaN/Inf targets, starvation (no target), stale or offset measurements and sudden velocity
scale changes.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np

from wam_control.config import load_config, preset_path
from wam_control.config.schema import RobotConfig
from wam_control.runtime.safety import BatchCore

# Relative tolerance for "inside the limit": float rounding of triple differences is ~1e-10 here.
VIOLATION_TOL = 1e-6
N_MODES = 5  # smooth, steps, noise, oscillate at a limit, behind a limit


@dataclass
class Result:
    steps: int
    violations: int
    max_ratio_pos: float
    max_ratio_vel: float
    max_ratio_acc: float
    max_ratio_jerk: float
    holding_fraction: float
    envelope_brakes: int
    seconds: float


def run_preset(
    config: RobotConfig, steps: int, seed: int, batch: int = 1000, hz: float | None = None
) -> Result:
    """Drive `steps` filter ticks (batch rows x ticks) of adversarial streams; check every command."""
    rng = np.random.default_rng(seed)
    limits = config.limit_arrays()
    dt = 1.0 / (hz or config.control_hz)
    core = BatchCore(limits, config.safety, dt, batch)
    n = limits.dof
    ticks = max(1, -(-steps // batch))
    lo, hi = core.lo, core.hi
    center, half = 0.5 * (lo + hi), 0.5 * (hi - lo)
    vm, am, jm = core.vm, core.am, core.jm

    q0 = rng.uniform(lo, hi, size=(batch, n))
    core.reset(q0)
    q_prev = q0.copy()
    v_prev = np.zeros((batch, n))
    a_prev = np.zeros((batch, n))

    mode = np.zeros(batch, dtype=np.int64)
    seg_end = np.zeros(batch)
    amp = np.zeros((batch, n))
    omega = np.zeros((batch, n))
    phase = np.zeros((batch, n))
    level = np.zeros((batch, n))
    step_every = np.ones(batch)
    starve_until = np.zeros(batch)
    offset = np.zeros((batch, n))

    worst = np.zeros(4)
    violations = 0
    holding = 0
    t_start = time.perf_counter()
    for k in range(ticks):
        t = k * dt
        # New segment for rows whose segment ended: pick a mode and its parameters.
        new = seg_end <= k
        if new.any():
            idx = np.nonzero(new)[0]
            m = len(idx)
            mode[idx] = rng.integers(0, N_MODES, m)
            seg_end[idx] = k + rng.integers(20, 600, m)
            amp[idx] = rng.uniform(0.0, 1.5, (m, n)) * half
            omega[idx] = rng.uniform(0.5, 40.0, (m, n))
            phase[idx] = rng.uniform(0.0, 2 * np.pi, (m, n))
            side = rng.random((m, n)) < 0.5
            beyond = rng.uniform(-0.05, 2.0, (m, n))
            level[idx] = np.where(side, hi + beyond, lo - beyond)
            step_every[idx] = rng.integers(1, 15, m)
            core.velocity_scale[idx] = np.where(rng.random(m) < 0.3, rng.uniform(0.05, 1.0, m), 1.0)
            offset[idx] = np.where(rng.random((m, 1)) < 0.05, rng.normal(0.0, 0.3, (m, n)), 0.0)
        smooth = center + amp * np.sin(omega * t + phase)
        resample = (k % step_every == 0)[:, None] & (rng.random((batch, 1)) < 0.5)
        steps_t = np.where(resample, rng.uniform(lo - 1.0, hi + 1.0, (batch, n)), level)
        noise = rng.uniform(lo - 1.0, hi + 1.0, (batch, n))
        flip = ((k // step_every) % 2 == 0)[:, None]
        oscillate = np.where(flip, level, np.where(level > center, hi - 0.05, lo + 0.05))
        md = mode[:, None]
        target = np.where(
            md == 0,
            smooth,
            np.where(md == 1, steps_t, np.where(md == 2, noise, np.where(md == 3, oscillate, level))),
        )
        # Overlays: rejected (non-finite) targets, starvation, stale or offset measurements.
        bad = rng.random(batch) < 0.003
        target[bad, rng.integers(0, n)] = np.nan
        start_starve = rng.random(batch) < 0.002
        starve_until[start_starve] = k + rng.integers(1, 100, int(start_starve.sum()))
        stale = rng.random(batch) < 0.002
        usable = ~bad & (starve_until <= k) & ~stale & np.isfinite(target).all(axis=1)
        measured = core.q + offset + rng.normal(0.0, 1e-4, (batch, n))

        q = core.step(target, measured, usable)
        holding += int(np.count_nonzero(core.holding))

        # The robot's view: backward differences of consecutive commands.
        v = (q - q_prev) / dt
        a = (v - v_prev) / dt
        j = (a - a_prev) / dt
        r_pos = np.abs(q - center) / half
        r_vel = np.abs(v) / vm
        r_acc = np.abs(a) / am
        r_jerk = np.abs(j) / jm
        row_worst = np.maximum(np.maximum(r_pos, r_vel), np.maximum(r_acc, r_jerk)).max(axis=1)
        violations += int(np.count_nonzero(~(row_worst <= 1.0 + VIOLATION_TOL)))
        worst = np.maximum(worst, (r_pos.max(), r_vel.max(), r_acc.max(), r_jerk.max()))
        q_prev[:] = q
        v_prev[:] = v
        a_prev[:] = a
    seconds = time.perf_counter() - t_start
    total = ticks * batch
    return Result(
        steps=total,
        violations=violations,
        max_ratio_pos=float(worst[0]),
        max_ratio_vel=float(worst[1]),
        max_ratio_acc=float(worst[2]),
        max_ratio_jerk=float(worst[3]),
        holding_fraction=holding / total,
        envelope_brakes=core.envelope_brakes,
        seconds=seconds,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wam-control bench safety", description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1_000_000, help="filter ticks in total (all presets)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", choices=("fr3", "panda", "both"), default="both")
    parser.add_argument("--batch", type=int, default=200, help="independent streams run side by side")
    parser.add_argument("--hz", type=float, default=None, help="control rate (default: the preset's)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch < 1:
        parser.error("--steps and --batch must be >= 1")
    presets = ("fr3", "panda") if args.preset == "both" else (args.preset,)
    per = -(-args.steps // len(presets))
    results = []
    for i, name in enumerate(presets):
        config = load_config(preset_path(name))
        res = run_preset(config, per, args.seed * 1000 + i, batch=min(args.batch, per), hz=args.hz)
        results.append(res)
        print(
            f"preset={name} hz={args.hz or config.control_hz:g} steps={res.steps} violations={res.violations} "
            f"max_ratio_pos={res.max_ratio_pos:.9f} max_ratio_vel={res.max_ratio_vel:.9f} "
            f"max_ratio_acc={res.max_ratio_acc:.9f} max_ratio_jerk={res.max_ratio_jerk:.9f} "
            f"holding_fraction={res.holding_fraction:.3f} envelope_brakes={res.envelope_brakes} "
            f"steps_per_s={res.steps / res.seconds:.0f}",
            flush=True,
        )
    steps = sum(r.steps for r in results)
    seconds = sum(r.seconds for r in results)
    print(
        f"steps={steps} violations={sum(r.violations for r in results)} "
        f"max_ratio_pos={max(r.max_ratio_pos for r in results):.9f} "
        f"max_ratio_vel={max(r.max_ratio_vel for r in results):.9f} "
        f"max_ratio_acc={max(r.max_ratio_acc for r in results):.9f} "
        f"max_ratio_jerk={max(r.max_ratio_jerk for r in results):.9f} "
        f"seconds={seconds:.1f} steps_per_s={steps / seconds:.0f} seed={args.seed}"
    )
    return 0 if all(r.violations == 0 for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
