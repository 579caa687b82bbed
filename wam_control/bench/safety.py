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
import dataclasses
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


# Transparency and tightness (issue 15): what the filter does to motion that needs no filtering, and
# how close to time-optimal it reaches a target that cannot be reached in one tick.
TRANSPARENCY_FRACTION = 0.5  # smooth streams at up to this fraction of every v / a / jerk limit
SETTLE_TOL_RAD = 1e-4  # "arrived": within this of the target from then on


def smooth_streams(
    config: RobotConfig,
    rng: np.random.Generator,
    rows: int,
    ticks: int,
    dt: float,
    fraction: float,
    start_s: float = 0.0,
) -> np.ndarray:
    """(ticks, rows, n) random smooth targets (three sines per joint, 0.1-3 Hz) scaled so that their
    backward differences at dt stay within `fraction` of every velocity, acceleration and jerk limit
    and their positions within 70 % of each half range around the centre. With start_s > 0 a stream
    starts at rest and blends in its motion over start_s (quintic smoothstep), as a policy's first
    chunk does from a robot at rest."""
    la = config.limit_arrays()
    n = la.dof
    lo, hi = la.q_min, la.q_max
    center, half = 0.5 * (lo + hi), 0.5 * (hi - lo)
    am = np.minimum(la.a_max, la.d_max)
    t = np.arange(ticks + 3)[:, None, None] * dt
    freq = rng.uniform(0.1, 3.0, (3, rows, n)) * 2.0 * np.pi
    amp = rng.uniform(0.2, 1.0, (3, rows, n))
    phase = rng.uniform(0.0, 2.0 * np.pi, (3, rows, n))
    x = sum(amp[m] * np.sin(freq[m] * t + phase[m]) for m in range(3))
    if start_s > 0.0:
        s = np.clip((t - 2.0 * dt) / start_s, 0.0, 1.0)
        x = x[2] + (x - x[2]) * (s * s * s * (10.0 + s * (6.0 * s - 15.0)))
    v = np.diff(x, axis=0) / dt
    a = np.diff(v, axis=0) / dt
    j = np.diff(a, axis=0) / dt
    scale = np.minimum.reduce(
        [
            0.7 * half / np.abs(x).max(axis=0),
            fraction * la.v_max / np.abs(v).max(axis=0),
            fraction * am / np.abs(a).max(axis=0),
            fraction * la.j_max / np.abs(j).max(axis=0),
        ]
    )
    return np.asarray(center + scale * x)[3:]


def transparency(
    config: RobotConfig,
    seed: int,
    rows: int = 64,
    seconds: float = 3.0,
    fraction: float = TRANSPARENCY_FRACTION,
) -> float:
    """Largest |command - target| (rad) over smooth feasible streams, after the ramp-in."""
    rng = np.random.default_rng(seed)
    dt = config.control_period
    ramp_ticks = int(round(config.safety.ramp_in_s / dt))
    ticks = ramp_ticks + int(round(seconds / dt))
    targets = smooth_streams(config, rng, rows, ticks + 1, dt, fraction, start_s=config.safety.ramp_in_s)
    core = BatchCore(config.limit_arrays(), config.safety, dt, rows)
    core.reset(targets[0])
    usable = np.ones(rows, dtype=bool)
    worst = 0.0
    for k in range(1, ticks + 1):
        q = core.step(targets[k], core.q.copy(), usable)
        if k > ramp_ticks:
            worst = max(worst, float(np.abs(q - targets[k]).max()))
    return worst


def ruckig_arrival(distance: float, v_max: float, a_max: float, j_max: float, tol: float = 0.0) -> float:
    """When the time-optimal jerk-limited rest-to-rest motion over `distance` (Ruckig, one joint, the
    same limits) comes within `tol` of its target (tol 0: its duration)."""
    import ruckig  # dev extra (the test oracle)

    otg = ruckig.Ruckig(1)
    inp = ruckig.InputParameter(1)
    inp.current_position, inp.target_position = [0.0], [distance]
    inp.max_velocity, inp.max_acceleration, inp.max_jerk = [v_max], [a_max], [j_max]
    traj = ruckig.Trajectory(1)
    otg.calculate(inp, traj)
    lo, hi = 0.0, float(traj.duration)
    if tol <= 0.0 or distance <= tol:
        return hi if tol <= 0.0 else 0.0
    for _ in range(60):  # the rest-to-rest position is monotone: bisect for distance - tol
        mid = 0.5 * (lo + hi)
        if traj.at_time(mid)[0][0] < distance - tol:
            lo = mid
        else:
            hi = mid
    return hi


def tightness(
    config: RobotConfig, seed: int, rows: int = 64, max_seconds: float = 8.0
) -> tuple[float, float]:
    """(worst, median) over joints and moves of the time the command takes to arrive (within
    SETTLE_TOL_RAD of the target, for good) divided by the time Ruckig's time-optimal motion with the
    same limits takes to come as close. Point-to-point moves from rest, after the ramp-in, every joint
    a log-uniform distance from 1 mrad to the whole range."""
    rng = np.random.default_rng(seed)
    la = config.limit_arrays()
    dt = config.control_period
    n = la.dof
    lo, hi = la.q_min + 1e-3, la.q_max - 1e-3
    q0 = rng.uniform(lo, hi, (rows, n))
    span = np.where(rng.random((rows, n)) < 0.5, hi - q0, lo - q0)
    dist = np.abs(span)
    frac = 10.0 ** rng.uniform(np.log10(np.minimum(1e-3 / np.maximum(dist, 1e-3), 1.0)), 0.0)
    q1 = q0 + span * frac
    dist = np.abs(q1 - q0)
    core = BatchCore(la, config.safety, dt, rows)
    core.reset(q0)
    usable = np.ones(rows, dtype=bool)
    for _ in range(int(round(config.safety.ramp_in_s / dt)) + 1):
        core.step(q0, core.q.copy(), usable)
    arrived = np.zeros((rows, n))  # first command index from which the joint stays within tolerance
    for k in range(1, int(round(max_seconds / dt)) + 1):
        q = core.step(q1, core.q.copy(), usable)
        off = np.abs(q - q1) > SETTLE_TOL_RAD
        arrived = np.where(off, 0.0, np.where(arrived == 0.0, k, arrived))
    arrived = np.where(arrived == 0.0, np.inf, arrived)
    am = np.minimum(la.a_max, la.d_max)
    ratios = []
    for r in range(rows):
        for i in range(n):
            t_opt = ruckig_arrival(
                float(dist[r, i]), float(la.v_max[i]), float(am[i]), float(la.j_max[i]), SETTLE_TOL_RAD
            )
            ratios.append(arrived[r, i] * dt / t_opt)
    return float(np.max(ratios)), float(np.median(ratios))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wam-control bench safety", description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1_000_000, help="filter ticks in total (all presets)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", choices=("fr3", "panda", "both"), default="both")
    parser.add_argument("--batch", type=int, default=200, help="independent streams run side by side")
    parser.add_argument("--hz", type=float, default=None, help="control rate (default: the preset's)")
    parser.add_argument(
        "--quality-rows",
        type=int,
        default=64,
        help="smooth streams and point-to-point moves per preset for transparency and tightness (0: skip)",
    )
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch < 1 or args.quality_rows < 0:
        parser.error("--steps and --batch must be >= 1")
    presets = ("fr3", "panda") if args.preset == "both" else (args.preset,)
    per = -(-args.steps // len(presets))
    results = []
    transparency_err: list[float] = []
    tight: list[float] = []
    if args.quality_rows and not _have_ruckig():
        print("ruckig is not installed (pip install ruckig): no tightness_ratio_vs_ruckig", flush=True)
    for i, name in enumerate(presets):
        config = load_config(preset_path(name))
        res = run_preset(config, per, args.seed * 1000 + i, batch=min(args.batch, per), hz=args.hz)
        results.append(res)
        quality = ""
        if args.quality_rows:
            if args.hz:
                config = dataclasses.replace(config, control_hz=args.hz)
            err = transparency(config, args.seed * 1000 + i, rows=args.quality_rows)
            transparency_err.append(err)
            quality = f" transparency_max_err_rad={err:.3e}"
            if _have_ruckig():
                worst, median = tightness(config, args.seed * 1000 + i, rows=args.quality_rows)
                tight.append(worst)
                quality += f" tightness_ratio_vs_ruckig={worst:.3f} tightness_median={median:.3f}"
        print(
            f"preset={name} hz={args.hz or config.control_hz:g} steps={res.steps} violations={res.violations} "
            f"max_ratio_pos={res.max_ratio_pos:.9f} max_ratio_vel={res.max_ratio_vel:.9f} "
            f"max_ratio_acc={res.max_ratio_acc:.9f} max_ratio_jerk={res.max_ratio_jerk:.9f} "
            f"holding_fraction={res.holding_fraction:.3f} envelope_brakes={res.envelope_brakes} "
            f"steps_per_s={res.steps / res.seconds:.0f}{quality}",
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
        + (f"transparency_max_err_rad={max(transparency_err):.3e} " if transparency_err else "")
        + (f"tightness_ratio_vs_ruckig={max(tight):.3f} " if tight else "")
        + f"seconds={seconds:.1f} steps_per_s={steps / seconds:.0f} seed={args.seed}"
    )
    return 0 if all(r.violations == 0 for r in results) else 1


def _have_ruckig() -> bool:
    try:
        import ruckig  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    raise SystemExit(main())
