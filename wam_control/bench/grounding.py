"""`wam-control bench grounding`: does the model go for the cube its prompt names?

The scripted expert drives pick_place (seeds S .. S+N-1) from the start to the grasp, so the model
sees the states a good policy passes through. Every --every-s seconds the model is asked for a chunk
from the same observation once per cube colour (the task's own phrasing with that colour), without a
committed prefix (nothing of the expert's motion leaks in), and the tool position at the chunk's end
(forward kinematics of its last arm command) is compared with the three cubes, in the table plane.

The first query is at rest, before the expert moves: there only the word says which cube
(`start_*`); later ones also show where the expert is heading.
A model that grounds the prompt sends the tool toward whichever cube is named, in the same scene:
`named_toward_rate` (the named cube is the one the chunk brings the tool closest to, i.e. whose
distance drops most) near 1; one that ignores the colour heads the same way whatever the word (1/3 by
chance with three cubes), and one that averages between cubes lands between them (`named_err_cm_p50`
large). `named_nearest_rate` asks more: the chunk's end is nearest the named cube. A 0.8 s chunk from
rest does not get there (the expert's own chunks: 0.57 at rest, 0.82 overall on seeds 100000-100009,
against 0.90 / 0.96 toward), so `--policy teacher` prints that ceiling for the seeds asked: the
lookahead expert labelled for each named cube, as the counterfactual-prompt labels are made.
`task_nearest_rate` is the rate on the task's own prompt only.

Separates "which cube" from "how to grasp it": the closed loop mixes both (bench closed-loop).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wam_control.closedloop import EVAL_SEED_BASE

ChunkEnd = Callable[[np.ndarray, np.ndarray, str], np.ndarray]
"""(images [N,H,W,3], state [D], prompt) -> tool position [3] at the end of the model's chunk."""


@dataclass
class Query:
    seed: int
    t: float
    task_colour: int
    named: int
    nearest: int
    err_m: float  # tool at the chunk's end to the named cube, in the table plane
    toward: int  # the cube whose distance from the tool (table plane) the chunk reduces most


def grounding_queries(
    arm: Any, chunk_end: ChunkEnd, cameras: tuple[str, ...], seed: int, every_s: float = 0.5
) -> list[Query]:
    """Run the expert on `seed` until it closes the fingers; query `chunk_end` every `every_s` s for
    each cube colour named in the task's phrasing."""
    from wam_control.sim.expert import Expert
    from wam_control.sim.tasks import CUBE_COLOURS

    arm.reset(seed)
    expert = Expert(arm)
    task = arm.task
    out: list[Query] = []
    next_t = 0.0  # the first query at rest, where only the prompt says which cube
    while arm.time < task.horizon_s and expert.phase in ("approach", "descend"):
        if arm.time + 1e-9 < next_t:
            q = expert.act()
            arm.step(q, gripper=expert.gripper)
            continue
        next_t += every_s
        images = np.stack([arm.frame(c)[0] for c in cameras])
        state = np.append(arm.joint_state()[1], arm.gripper_state()[1][0]).astype(np.float32)
        cubes = np.array([task.cube(i)[:2] for i in range(len(CUBE_COLOURS))])
        d_now = np.linalg.norm(cubes - task.ee()[None, :2], axis=1)
        for named in range(len(CUBE_COLOURS)):
            end = chunk_end(images, state, task.prompt_naming(named))
            d = np.linalg.norm(cubes - end[None, :2], axis=1)
            out.append(
                Query(seed, arm.time, task.target_index, named, int(np.argmin(d)), float(d[named]),
                      int(np.argmax(d_now - d)))
            )  # fmt: skip
    return out


def summarise(queries: list[Query]) -> dict[str, float]:
    if not queries:
        raise ValueError("no queries: the expert never approached a cube")
    named = np.array([q.nearest == q.named for q in queries])
    toward = np.array([q.toward == q.named for q in queries])
    own = np.array([q.named == q.task_colour for q in queries])
    start = np.array([q.t == 0.0 for q in queries])
    err = np.array([q.err_m for q in queries]) * 100.0
    return {
        "queries": float(len(queries)),
        "start_named_toward_rate": float(toward[start].mean()) if start.any() else float("nan"),
        "named_toward_rate": float(toward.mean()),
        "start_named_nearest_rate": float(named[start].mean()) if start.any() else float("nan"),
        "named_nearest_rate": float(named.mean()),
        "task_nearest_rate": float(named[own].mean()),
        "named_err_cm_p50": float(np.median(err)),
        "task_err_cm_p50": float(np.median(err[own])),
    }


def tool_position(arm: Any) -> Callable[[np.ndarray], np.ndarray]:
    """Forward kinematics of a command (its arm joints) to the tool point (site "ee"), on a scratch
    MjData: the sim's own state is not touched."""
    import mujoco

    kin = mujoco.MjData(arm.model)
    site = arm.model.site("ee").id
    qadr = arm._qadr

    def at(command: np.ndarray) -> np.ndarray:
        kin.qpos[qadr] = command[: len(qadr)]
        mujoco.mj_kinematics(arm.model, kin)
        return np.asarray(kin.site_xpos[site], float).copy()

    return at


def model_chunk_end(model_path: Path, arm: Any, backend: str = "onnxruntime") -> tuple[ChunkEnd, tuple[str, ...]]:
    """The model (through the runtime's backend and tokenizer) as a ChunkEnd, and its cameras."""
    from wam_control.policy import load_backend, read_contract
    from wam_control.policy.base import PolicyInput
    from wam_control.policy.instruction import InstructionTokenizer

    contract = read_contract(model_path)
    if not contract.has_instruction or not contract.extra_actions:
        raise ValueError(
            f"bench grounding: {model_path.name} needs a prompt input and a gripper output (contract v2)"
        )
    tokenizer = InstructionTokenizer(model_path, contract)
    policy = load_backend(model_path, backend=backend, warmup=1)
    horizon, dofs = contract.horizon, len(contract.actions)
    prefix = np.zeros((horizon, dofs), np.float32)
    tool_at = tool_position(arm)

    def chunk_end(images: np.ndarray, state: np.ndarray, prompt: str) -> np.ndarray:
        out = policy.infer(PolicyInput(images, state, prefix, 0, instruction_tokens=tokenizer.encode(prompt)))
        return tool_at(out.actions[-1])

    return chunk_end, tuple(contract.camera_names)


def teacher_chunk_end(arm: Any, horizon: int = 16, action_dt: float = 0.05) -> ChunkEnd:
    """The lookahead expert (model/rollout.LookaheadLabeler, as for the counterfactual-prompt labels)
    sent to the cube the prompt names, from the measured state at rest velocity: what a student that
    fits those labels would answer. The sim is restored after each chunk."""
    from wam_control.model.rollout import LookaheadLabeler
    from wam_control.sim.tasks import CUBE_COLOURS

    labeler = LookaheadLabeler(arm, horizon, action_dt)
    tool_at = tool_position(arm)

    def chunk_end(images: np.ndarray, state: np.ndarray, prompt: str) -> np.ndarray:
        named = next(i for i in range(len(CUBE_COLOURS)) if arm.task.prompt_naming(i) == prompt)
        q = state.astype(float)
        return tool_at(labeler.label_for_cube(named, images, q, q, np.zeros_like(q))[-1])

    return chunk_end


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="wam-control bench grounding", description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="prompted pick_place model (.onnx, contract v2)")
    ap.add_argument(
        "--policy",
        choices=("model", "teacher"),
        default="model",
        help="teacher: the lookahead expert labelled for each named cube instead of a model (the ceiling)",
    )
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--seed", type=int, default=EVAL_SEED_BASE)
    ap.add_argument("--every-s", type=float, default=0.5, help="seconds between queries")
    ap.add_argument("--quiet", action="store_true", help="no per-episode lines")
    args = ap.parse_args(argv)
    if args.episodes < 1 or args.every_s <= 0:
        ap.error("--episodes must be >= 1 and --every-s > 0")
    if (args.policy == "model") != bool(args.model):
        ap.error("--model is needed with --policy model, and only there")
    from wam_control.sim.arm import SimArm
    from wam_control.sim.tasks import CUBE_COLOURS

    if args.policy == "teacher":
        name, hw, cameras = "teacher", (16, 16), ("scene",)  # the teacher reads the sim, not the images
    else:
        from wam_control.policy import read_contract

        model_path = Path(args.model)
        if not model_path.is_file():
            print(f"bench grounding: model file {model_path} not found", file=sys.stderr)
            return 2
        contract = read_contract(model_path)
        name, hw, cameras = model_path.name, (contract.image_height, contract.image_width), tuple(contract.camera_names)
    with SimArm(task="pick_place", seed=args.seed, image_hw=hw, cameras=cameras, hand=True) as arm:
        if args.policy == "teacher":
            chunk_end = teacher_chunk_end(arm)
        else:
            try:
                chunk_end, cameras = model_chunk_end(model_path, arm)
            except ValueError as exc:
                print(exc, file=sys.stderr)
                return 2
        queries: list[Query] = []
        for seed in range(args.seed, args.seed + args.episodes):
            mine = grounding_queries(arm, chunk_end, cameras, seed, args.every_s)
            queries += mine
            if not args.quiet and mine:
                hits = [q for q in mine if q.nearest == q.named]
                toward = [q for q in mine if q.toward == q.named]
                own = [q for q in mine if q.named == q.task_colour]
                print(
                    f"  seed {seed} ({CUBE_COLOURS[mine[0].task_colour]}): toward the named cube "
                    f"{len(toward)}/{len(mine)}, named cube nearest "
                    f"{len(hits)}/{len(mine)}, task prompt {sum(q.nearest == q.named for q in own)}/{len(own)}, "
                    f"task prompt err p50 {100 * np.median([q.err_m for q in own]):.1f} cm"
                )
    s = summarise(queries)
    print(
        f"model={name} episodes={args.episodes} queries={int(s['queries'])} "
        f"start_named_toward_rate={s['start_named_toward_rate']:.3f} named_toward_rate={s['named_toward_rate']:.3f} "
        f"start_named_nearest_rate={s['start_named_nearest_rate']:.3f} named_nearest_rate={s['named_nearest_rate']:.3f} task_nearest_rate={s['task_nearest_rate']:.3f} "
        f"named_err_cm_p50={s['named_err_cm_p50']:.2f} task_err_cm_p50={s['task_err_cm_p50']:.2f}"
    )
    return 0
