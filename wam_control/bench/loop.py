"""`wam-control bench loop`: fixed-rate loop lateness, bare loop vs the controller tick.

Two loops at the same rate, alternating in one-second blocks so that machine noise hits both alike:
a bare loop (empty tick) and the control tick (safety filter step for the preset's joints + building
the outgoing command into preallocated arrays). Per variant the median over blocks of each block's
lateness percentile is reported, with the tick's own compute time.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np

from wam_control.config import load_config, preset_path
from wam_control.config.schema import RobotConfig
from wam_control.runtime.loop import FixedRateLoop
from wam_control.runtime.safety import SafetyFilter
from wam_control.runtime.stats import summary_us


class CommandTick:
    """The control tick minus inference: filter the next target, build the joint command.

    Targets come from a precomputed smooth stream (what the chunk scheduler would hand over); the
    "robot" reports the previous command as its measured position.
    """

    def __init__(self, config: RobotConfig, hz: float, period_s: float = 8.0) -> None:
        n = config.dof
        limits = config.limit_arrays()
        self.filter = SafetyFilter(limits, config.safety, 1.0 / hz, config.joint_names)
        center = 0.5 * (limits.q_min + limits.q_max)
        half = 0.5 * (limits.q_max - limits.q_min)
        # One full period of a slow sine per joint: the stream wraps around without a jump.
        samples = int(round(period_s * hz))
        t = np.arange(samples)[:, None] / samples
        self.targets = center + 0.5 * half * np.sin(2 * np.pi * t + np.arange(n))
        self.filter.reset(self.targets[0])
        self.measured = self.targets[0].copy()
        self.positions = np.zeros(n)
        self.velocities = np.zeros(n)
        self.accelerations = np.zeros(n)
        self.count = 0
        self._len = len(self.targets)

    def __call__(self, tick: int) -> None:
        f = self.filter
        self.count += 1
        q = f.step(self.targets[self.count % self._len], self.measured, 0.0)
        self.positions[:] = q
        self.velocities[:] = f.v
        self.accelerations[:] = f.a
        self.measured[:] = q


def _noop(tick: int) -> None:
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wam-control bench loop", description=__doc__.split("\n")[0])
    parser.add_argument("--hz", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=10.0, help="total run time (both variants)")
    parser.add_argument("--preset", default="fr3")
    parser.add_argument("--block", type=float, default=0.5, help="seconds per alternating block")
    args = parser.parse_args(argv)
    if args.hz <= 0 or args.seconds <= 0 or args.block <= 0:
        parser.error("--hz, --seconds and --block must be positive")
    config = load_config(preset_path(args.preset))
    blocks = max(1, int(round(args.seconds / (2 * args.block))))
    ticks_per_block = max(1, int(args.block * args.hz))
    tick = CommandTick(config, hz=args.hz)

    late: dict[str, list[float]] = {"baseline": [], "loop": []}
    late_all: dict[str, list[np.ndarray]] = {"baseline": [], "loop": []}
    misses = {"baseline": 0, "loop": 0}
    compute: list[np.ndarray] = []
    for b in range(blocks):
        # Alternate which variant goes first so that neither always follows the other.
        order = ("baseline", "loop") if b % 2 == 0 else ("loop", "baseline")
        for variant in order:
            fn = _noop if variant == "baseline" else tick
            runner = FixedRateLoop(args.hz, fn, loop=config.loop, name=f"bench-{variant}")
            stats = runner.run(max_ticks=ticks_per_block)
            lat = runner.lateness_s()
            late[variant].append(float(np.percentile(lat, 99) * 1e6))
            late_all[variant].append(lat)
            misses[variant] += stats.misses
            if variant == "loop":
                compute.append(runner.compute_s())
    base_p50, base_p99_all, base_max = summary_us(np.concatenate(late_all["baseline"]))
    loop_p50, loop_p99_all, loop_max = summary_us(np.concatenate(late_all["loop"]))
    tick_p50, tick_p99, tick_max = summary_us(np.concatenate(compute))
    base_p99 = statistics.median(late["baseline"])
    loop_p99 = statistics.median(late["loop"])
    print(
        f"blocks={blocks} ticks_per_block={ticks_per_block} joints={config.dof} "
        f"baseline_p50_late_us={base_p50:.1f} loop_p50_late_us={loop_p50:.1f} "
        f"baseline_pooled_p99_late_us={base_p99_all:.1f} loop_pooled_p99_late_us={loop_p99_all:.1f} "
        f"baseline_max_late_us={base_max:.1f} loop_max_late_us={loop_max:.1f} tick_max_us={tick_max:.1f} "
        f"baseline_misses={misses['baseline']} interventions={sum(tick.filter.interventions().values())}"
    )
    print(
        f"hz={args.hz:g} baseline_p99_late_us={base_p99:.1f} loop_p99_late_us={loop_p99:.1f} "
        f"late_ratio={loop_p99 / base_p99 if base_p99 > 0 else float('nan'):.3f} "
        f"tick_p50_us={tick_p50:.1f} tick_p99_us={tick_p99:.1f} misses={misses['loop']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
