"""`wam-control bench sim`: simulator throughput and real-time factor.

Measures, side by side in one run:
- control steps/s with physics only (no cameras);
- control steps/s rendering one camera on every step;
- render time per frame (p50, p90) of the scene camera at --image-hw;
- real-time factor in lockstep at --control-hz with one camera rendered at --camera-hz (the default
  configuration the demo runs): sim seconds advanced per wall second, driven by a smooth command.
Final line: `... realtime_factor=... render_ms_p50=...`.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def _commands(arm: object, n: int) -> np.ndarray:
    from wam_control.sim.arm import HOME_Q

    t = np.arange(n)[:, None] * arm.control_period  # type: ignore[attr-defined]
    # 0.2 rad sinusoids at different frequencies: moving, in range, never hitting a limit
    return HOME_Q + 0.2 * np.sin(2 * np.pi * t * np.linspace(0.2, 0.5, 7))


def _steps_per_s(arm: object, cmds: np.ndarray) -> float:
    arm.reset(0)  # type: ignore[attr-defined]
    start = time.perf_counter()
    for q in cmds:
        arm.step(q)  # type: ignore[attr-defined]
    return len(cmds) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="wam-control bench sim", description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="sim seconds per measurement")
    ap.add_argument("--control-hz", type=float, default=500.0, help="default: control_hz of config/fr3.yaml")
    ap.add_argument("--camera-hz", type=float, default=15.0)
    ap.add_argument("--image-hw", type=int, nargs=2, default=(96, 96), metavar=("H", "W"))
    ap.add_argument("--task", default="reach")
    args = ap.parse_args(argv)

    from wam_control.sim import gl
    from wam_control.sim.arm import SimArm

    hw = tuple(args.image_hw)
    n = max(10, int(round(args.seconds * args.control_hz)))
    physics = SimArm(task=args.task, control_hz=args.control_hz, cameras=())
    every = SimArm(task=args.task, control_hz=args.control_hz, camera_hz=args.control_hz, image_hw=hw)
    lockstep = SimArm(task=args.task, control_hz=args.control_hz, camera_hz=args.camera_hz, image_hw=hw)
    cmds = _commands(physics, n)
    try:
        physics_sps = _steps_per_s(physics, cmds)
        render_n = min(n, 400)
        every_sps = _steps_per_s(every, cmds[:render_n])

        render_ms = []
        for q in cmds[:200]:
            every.step(q)
        for _ in range(200):
            t0 = time.perf_counter()
            every.render("scene")
            render_ms.append((time.perf_counter() - t0) * 1e3)

        lockstep.reset(0)
        start = time.perf_counter()
        for q in cmds:
            lockstep.step(q)
        wall = time.perf_counter() - start
        rtf = lockstep.time / wall
    finally:
        for arm in (physics, every, lockstep):
            arm.close()

    p50, p90 = np.percentile(render_ms, [50, 90])
    print(
        f"gl_backend={gl.prepare()} physics_dt_ms={physics.model.opt.timestep * 1e3:.3f} substeps={physics.substeps}"
    )
    print(
        f"physics only: {physics_sps:.0f} control steps/s = {physics_sps * physics.substeps:.0f} physics steps/s"
    )
    print(f"rendering {hw[0]}x{hw[1]} every step: {every_sps:.0f} control steps/s")
    print(f"render {hw[0]}x{hw[1]}: p50 {p50:.2f} ms, p90 {p90:.2f} ms")
    print(
        f"lockstep {args.control_hz:g} Hz control + 1 camera at {args.camera_hz:g} Hz: {lockstep.time:.1f} sim s in {wall:.2f} s"
    )
    print(
        f"control_hz={args.control_hz:g} camera_hz={args.camera_hz:g} physics_steps_per_s={physics_sps * physics.substeps:.0f} "
        f"control_steps_per_s={physics_sps:.0f} render_steps_per_s={every_sps:.0f} render_ms_p90={p90:.2f} "
        f"realtime_factor={rtf:.2f} render_ms_p50={p50:.2f}"
    )
    return 0
