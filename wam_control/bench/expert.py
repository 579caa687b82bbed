"""`wam-control bench expert`: success rate of the scripted expert over seeded episodes.

Runs --episodes seeded episodes of each task (seeds S .. S+N-1), physics only (the expert does not
look at images). Also reports the command's peak velocity / acceleration / jerk as fractions of the
FR3 limits, measured the way the robot measures them: backward differences of consecutive commands
at the control period. Final line ends with `success_rate=...` over all episodes run.

`--task pick_place` runs the hand scene (docs/sim.md); it also reports the finger setpoint's peak
velocity and acceleration as fractions of config/fr3_hand.yaml's finger limits (0.05 m/s, 0.5 m/s^2).
`--task all` is reach and push (the published line in docs/benchmarks/expert.md). `--hand` runs reach
and push in the hand scene too (the expert pushes with the fingers closed).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

FR3_V_MAX = np.array([2.62, 2.62, 2.62, 2.62, 5.26, 4.18, 5.26])
FR3_A_MAX = 10.0
FR3_J_MAX = 5000.0
FINGER_V_MAX = 0.05  # m/s per finger, config/fr3_hand.yaml
FINGER_A_MAX = 0.5


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="wam-control bench expert", description=__doc__.split("\n")[0])
    ap.add_argument("--episodes", type=int, default=50, help="episodes per task")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--task", choices=("reach", "push", "pick_place", "all"), default="all")
    ap.add_argument("--control-hz", type=float, default=500.0, help="default: control_hz of config/fr3.yaml")
    ap.add_argument("--hand", action="store_true", help="reach/push in the scene with the gripper")
    args = ap.parse_args(argv)
    if args.episodes < 1:
        ap.error("--episodes must be >= 1")

    from wam_control.sim.arm import SimArm
    from wam_control.sim.expert import Expert

    tasks = ("reach", "push") if args.task == "all" else (args.task,)
    keys = []
    total_ok = total = 0
    peak = np.zeros(3)
    grip_peak = np.zeros(2)
    any_hand = False
    for task in tasks:
        arm = SimArm(
            task=task,
            seed=args.seed,
            control_hz=args.control_hz,
            cameras=(),
            hand=True if args.hand else None,
        )
        expert = Expert(arm)
        dt = arm.control_period
        oks, durations = [], []
        start = time.perf_counter()
        for i in range(args.episodes):
            seed = args.seed + i
            arm.reset(seed)
            expert.reset()
            # the robot requires starting at rest from the measured position: include it
            cmds = [arm.joint_state()[1]]
            grips = [expert.gripper]
            held = 0.0
            while arm.time < arm.task.horizon_s - 1e-9:
                q = expert.act()
                cmds.append(q)
                if arm.has_hand:
                    grips.append(expert.gripper)
                    arm.step(q, gripper=expert.gripper)
                else:
                    arm.step(q)
                held = held + dt if arm.task.success() else 0.0
                if held >= 0.5 - 1e-9:
                    break
            ok = arm.task.success()
            oks.append(ok)
            durations.append(arm.time)
            c = np.asarray(cmds)
            v = np.diff(c, axis=0) / dt
            a = np.diff(v, axis=0) / dt
            j = np.diff(a, axis=0) / dt
            peak = np.maximum(
                peak,
                [np.max(np.abs(v) / FR3_V_MAX), np.max(np.abs(a)) / FR3_A_MAX, np.max(np.abs(j)) / FR3_J_MAX],
            )
            if arm.has_hand:
                any_hand = True
                gv = np.diff(np.asarray(grips)) / dt
                ga = np.diff(gv) / dt
                grip_peak = np.maximum(
                    grip_peak, [np.max(np.abs(gv)) / FINGER_V_MAX, np.max(np.abs(ga)) / FINGER_A_MAX]
                )
            if not ok:
                print(
                    f"{task} seed={seed} FAILED distance_m={arm.task.info()['distance']:.4f} phase={expert.phase}"
                )
        wall = time.perf_counter() - start
        rate = float(np.mean(oks))
        print(
            f"{task}: {sum(oks)}/{len(oks)} solved, episode {np.median(durations):.2f} s median "
            f"(max {np.max(durations):.2f} s), {wall:.1f} s wall"
        )
        keys.append(f"{task}_success_rate={rate:.3f} {task}_episode_s_p50={np.median(durations):.2f}")
        total_ok += sum(oks)
        total += len(oks)
        arm.close()
    print(
        f"command peaks vs FR3 limits (backward differences at {args.control_hz:g} Hz): "
        f"velocity {peak[0]:.1%}, acceleration {peak[1]:.1%}, jerk {peak[2]:.2%}"
    )
    if any_hand:
        print(
            f"gripper setpoint peaks vs finger limits: velocity {grip_peak[0]:.1%}, acceleration {grip_peak[1]:.1%}"
        )
        keys.append(f"gripper_peak_v_frac={grip_peak[0]:.3f} gripper_peak_a_frac={grip_peak[1]:.3f}")
    print(
        f"episodes={total} {' '.join(keys)} peak_v_frac={peak[0]:.3f} peak_a_frac={peak[1]:.3f} "
        f"peak_jerk_frac={peak[2]:.4f} success_rate={total_ok / total:.3f}"
    )
    return 0
