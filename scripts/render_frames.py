"""Render the first frames of a few pick_place seeds (scene + wrist) into an npz, to compare renderers:
`python scripts/render_frames.py OUT.npz` on each machine, then diff the arrays (docs/benchmarks/gpu.md)."""
import sys

import numpy as np

from wam_control.sim.arm import SimArm

out = {}
for seed in range(100000, 100005):
    with SimArm(task="pick_place", seed=seed, image_hw=(96, 96), cameras=("scene", "wrist"), hand=True) as arm:
        for k in range(3):
            for cam in ("scene", "wrist"):
                out[f"{seed}_{k}_{cam}"] = arm.render(cam)
            for _ in range(200):  # 0.4 s of holding still between the frames
                arm.step(arm.command())
np.savez_compressed(sys.argv[1], **out)
print("render dump", len(out), "frames")
