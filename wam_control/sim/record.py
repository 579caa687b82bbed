"""`wam-control record`: record scripted-expert demonstrations from the sim as ROS 2 bags.

    wam-control record --task reach --episodes 20 --seed 0 --out demos/

writes one bag directory per episode, `<out>/<task>_seed<seed>` (MCAP by default; with `--every-cube`,
one per cube as the target: `<out>/pick_place_seed<seed>_<colour>`), with the topics of
wam_control.sim.bag. `record_episode()` records any controller (a callable returning the next joint
position target), not only the expert. Every bag starts with the task's prompt on /instruction (also
in the metadata as `prompt`); with the hand (task pick_place), /joint_states carries the finger joints
and the gripper setpoint goes on /gripper_controller/commands (both fingers), as the runtime sends it
with config/fr3_hand.yaml.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from wam_control.sim.arm import SimArm
from wam_control.sim.bag import BagRecorder, CameraSpec
from wam_control.sim.tasks import CUBE_COLOURS, TASKS

FRAME_IDS = {"scene": "scene_camera_optical_frame", "wrist": "wrist_camera_optical_frame"}


def camera_specs(arm: SimArm) -> dict[str, CameraSpec]:
    height, width = arm.image_hw
    specs = {}
    for cam in arm.cameras:
        fx, fy, cx, cy = arm.camera_intrinsics(cam)
        specs[cam] = CameraSpec(height, width, fx, fy, cx, cy, FRAME_IDS[cam])
    return specs


def record_episode(
    arm: SimArm,
    controller: Callable[[], np.ndarray],
    recorder: BagRecorder,
    max_time_s: float,
    stop_after_success_s: float | None = 0.5,
    gripper: Callable[[], float] | None = None,
) -> bool:
    """Run `controller` on the (already reset) arm, writing every tick to `recorder`; return success.

    Per tick at sim time t: /clock, /joint_states (measured at t), the command computed at t, then
    the step; images are written at the sim time they were rendered (including the one at reset).
    `gripper` (with the hand): called after `controller` each tick for the finger setpoint (m per
    finger), which is written and applied with the joint command. The task's prompt is written first.
    """
    if gripper is not None and not arm.has_hand:
        raise ValueError("record_episode: gripper given but the arm has no hand")
    if arm.task.prompt:
        recorder.write_instruction(arm.time, arm.task.prompt)

    def observe(rendered: tuple[str, ...]) -> None:
        t = arm.time
        recorder.write_clock(t)
        _, q, qd = arm.all_joint_state()
        recorder.write_joint_state(t, q, qd)
        for cam in rendered:
            image, stamp = arm.frame(cam)
            recorder.write_image(cam, stamp, image)

    observe(tuple(c for c in arm.cameras if arm.frame(c)[1] == arm.time))
    held = 0.0
    while arm.time < max_time_s - 1e-9:
        command = controller()
        recorder.write_command(arm.time, command)
        if gripper is not None:
            g = float(gripper())
            recorder.write_gripper_command(arm.time, g)
            observe(arm.step(command, gripper=g))
        else:
            observe(arm.step(command))
        if stop_after_success_s is not None:
            held = held + arm.control_period if arm.task.success() else 0.0
            if held >= stop_after_success_s - 1e-9:
                break
    return arm.task.success()


def main(argv: list[str] | None = None) -> int:
    from wam_control.sim.expert import Expert

    ap = argparse.ArgumentParser(prog="wam-control record", description=__doc__.split("\n")[0])
    ap.add_argument("--task", choices=TASKS, default="reach")
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0, help="seed of the first episode; episode i uses seed+i")
    ap.add_argument("--out", type=Path, required=True, help="directory for the bags (created)")
    ap.add_argument("--control-hz", type=float, default=500.0, help="default: control_hz of config/fr3.yaml")
    ap.add_argument("--camera-hz", type=float, default=15.0)
    ap.add_argument("--image-hw", type=int, nargs=2, default=(96, 96), metavar=("H", "W"))
    ap.add_argument("--cameras", default="scene,wrist", help="comma-separated subset of scene,wrist")
    ap.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    ap.add_argument(
        "--hand",
        action="store_true",
        help="reach/push in the scene with the gripper (pick_place always has it)",
    )
    ap.add_argument(
        "--place-spread",
        type=float,
        default=0.0,
        metavar="M",
        help="pick_place: the expert puts the cube down up to M from the zone's centre per axis (drawn per "
        "episode) instead of at it; the bags' controller is then scripted_expert_spread",
    )
    ap.add_argument(
        "--descent-miss",
        type=float,
        default=0.0,
        metavar="M",
        help="pick_place: the expert's first descent ends at the cube's height M/2-M beside it, and it grasps "
        "from there (the recovery a policy needs); the bags' controller gets the suffix _miss",
    )
    ap.add_argument(
        "--after-success-s",
        type=float,
        default=0.5,
        metavar="S",
        help="seconds recorded once the task has succeeded (held), the expert holding where the task ended "
        "(default 0.5); longer teaches a policy to stay at the target instead of drifting off it",
    )
    ap.add_argument(
        "--every-cube",
        action="store_true",
        help="pick_place: record each seed once per cube as the task's target (bags <task>_seed<S>_<colour>): "
        "the same scene and phrasing with each colour in the prompt, so the same first images go with three "
        "prompts and three motions; the bags' controller gets the suffix _cubes",
    )
    ap.add_argument("--keep-failures", action="store_true", help="keep bags of episodes the expert failed")
    args = ap.parse_args(argv)
    if args.episodes < 1:
        ap.error("--episodes must be >= 1")
    cameras = tuple(c for c in args.cameras.split(",") if c)
    if args.place_spread < 0 or args.descent_miss < 0:
        ap.error(
            f"--place-spread and --descent-miss are distances >= 0, got {args.place_spread}, {args.descent_miss}"
        )
    if not args.after_success_s > 0:
        ap.error(f"--after-success-s is a duration > 0, got {args.after_success_s}")
    if (args.place_spread or args.descent_miss or args.every_cube) and args.task != "pick_place":
        ap.error(
            f"--place-spread, --descent-miss and --every-cube are for task pick_place, not {args.task!r}"
        )

    args.out.mkdir(parents=True, exist_ok=True)
    arm = SimArm(
        task=args.task,
        seed=args.seed,
        control_hz=args.control_hz,
        camera_hz=args.camera_hz,
        image_hw=tuple(args.image_hw),
        cameras=cameras,
        hand=True if args.hand else None,
    )
    expert = Expert(arm, place_spread_m=args.place_spread, descent_miss_m=args.descent_miss)
    # the controller names the data's source (train --source-share): each expert variant is told apart
    controller = (
        "scripted_expert"
        + ("_spread" if args.place_spread else "")
        + ("_miss" if args.descent_miss else "")
        + ("_cubes" if args.every_cube else "")
    )
    # (seed, target cube or None for the seed's own): one episode each
    episodes = [
        (args.seed + i, cube)
        for i in range(args.episodes)
        for cube in (range(len(CUBE_COLOURS)) if args.every_cube else (None,))
    ]
    kept = successes = 0
    start = time.perf_counter()
    try:
        for seed, cube in episodes:
            name = f"{args.task}_seed{seed}" + ("" if cube is None else f"_{CUBE_COLOURS[cube]}")
            path = args.out / name
            if path.exists():
                print(f"record: {path} exists already; not overwriting", file=sys.stderr)
                return 1
            arm.reset(seed)
            if cube is not None:
                arm.task.set_target(cube)
            expert.reset()
            meta = {
                "task": args.task,
                "seed": str(seed),
                "controller": controller,
                "control_hz": str(arm.control_hz),
                "camera_hz": str(arm.camera_hz),
                "cameras": ",".join(cameras),
                "prompt": arm.task.prompt,
                "hand": str(arm.has_hand).lower(),
            }
            if args.place_spread:
                meta["place_spread_m"] = str(args.place_spread)
            if cube is not None:
                meta["target_cube"] = CUBE_COLOURS[cube]
            if args.descent_miss:
                meta["descent_miss_m"] = str(args.descent_miss)
            meta["after_success_s"] = str(args.after_success_s)
            with BagRecorder(
                path,
                arm.joint_names,
                camera_specs(arm),
                storage=args.storage,
                metadata=meta,
                state_names=arm.all_joint_state()[0],
                gripper_joints=arm.finger_names,
            ) as rec:
                ok = record_episode(
                    arm,
                    expert.act,
                    rec,
                    arm.task.horizon_s,
                    stop_after_success_s=args.after_success_s,
                    gripper=(lambda: expert.gripper) if arm.has_hand else None,
                )
                rec.set_metadata("success", str(ok).lower())
                rec.set_metadata("duration_s", f"{arm.time:.3f}")
            successes += ok
            if ok or args.keep_failures:
                kept += 1
            else:
                _remove_bag(path)
            target = "" if cube is None else f" cube={CUBE_COLOURS[cube]}"
            print(f"episode seed={seed}{target} success={str(ok).lower()} duration_s={arm.time:.2f}")
    finally:
        arm.close()
    wall = time.perf_counter() - start
    print(
        f"episodes={len(episodes)} kept={kept} success_rate={successes / len(episodes):.3f} wall_s={wall:.1f} "
        f"out={args.out}"
    )
    return 0


def _remove_bag(path: Path) -> None:
    for child in sorted(path.iterdir()):
        child.unlink()
    path.rmdir()


if __name__ == "__main__":
    sys.exit(main())
