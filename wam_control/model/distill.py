"""`wam-control distill`: train the compact student from a teacher on the states the student visits.

    wam-control distill --teacher expert --init runs/bc/model.pt --data runs/bc/dataset.npz \\
        --student-out runs/student --iterations 4 --episodes 40 --steps 400 --export

DAgger (Ross et al., 2011): each iteration rolls the current student out in the sim (in-process,
lockstep; wam_control.model.rollout), labels every observation it visits with the teacher's action
chunk, adds those samples to the aggregate (with the demonstrations, if given) and trains on the
aggregate. The student therefore sees, and learns to leave, the states its own mistakes lead to,
which plain behaviour cloning never shows it.

Teachers:
- `expert`: the privileged scripted expert (it knows the target position); it plans from the
  student's current command, so its chunk says how to recover from exactly there;
- a WAM file (`.onnx` through ONNX Runtime, or `.pt` through PyTorch): a larger/slower model whose
  one-shot chunk is the label.

The world-model term is trained on what the student actually executed (its consequences are what
the sim showed). Per iteration the report gives the student's success rate on that iteration's
(training) seeds; at the end the student is evaluated on separate evaluation seeds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wam_control.model.data import Dataset, DatasetBuilder, SampleSpec, concat, load_dataset, save_dataset
from wam_control.model.rollout import (
    BackendPolicy,
    CounterfactualLabels,
    ExpertLabeler,
    LookaheadLabeler,
    ModelLabeler,
    RolloutConfig,
    TorchPolicy,
    counterfactual_samples,
    episode_samples,
    evaluate,
    run_episode,
    surprise_statistics,
)
from wam_control.model.train import (
    FR3_JOINTS,
    PRESETS,
    TrainConfig,
    add_common_args,
    fit,
    model_from_args,
    normalization_from,
    parse_source_shares,
    resolve_device,
    source_weights,
    spec_for,
    write_json,
)
from wam_control.model.wam import WorldActionModel, load_training_heads, save_checkpoint
from wam_control.sim.tasks import TASKS

EVAL_SEED_DEFAULT = 100000  # evaluation seeds start here; training/DAgger seeds stay below 10000


def load_teacher(spec: str, horizon: int, num_joints: int) -> tuple[Any | None, str]:
    """'expert' -> (None, 'expert'); a model file -> (a ModelLabeler, description)."""
    if spec == "expert":
        return None, "scripted expert (privileged: knows the target position)"
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"--teacher {spec}: expected 'expert' or an existing .onnx/.pt model file")
    if path.suffix == ".onnx":
        from wam_control.policy import load_backend

        backend = load_backend(path, backend="onnxruntime", warmup=1)
        if backend.contract.horizon != horizon or len(backend.contract.joint_names) != num_joints:
            raise ValueError(
                f"--teacher {spec}: horizon {backend.contract.horizon} / {len(backend.contract.joint_names)} joints "
                f"differ from the student's {horizon} / {num_joints}"
            )
        return ModelLabeler(BackendPolicy(backend), horizon, num_joints), f"WAM {path.name} (onnxruntime)"
    if path.suffix == ".pt":
        from wam_control.model.wam import load_checkpoint

        model, _ = load_checkpoint(str(path))
        if model.config.horizon != horizon or model.config.num_joints != num_joints:
            raise ValueError(f"--teacher {spec}: horizon/joints differ from the student's")
        return ModelLabeler(TorchPolicy(model), horizon, num_joints), f"WAM {path.name} (torch)"
    raise ValueError(f"--teacher {spec}: unknown model type {path.suffix!r}; expected .onnx or .pt")


@dataclass(frozen=True)
class CollectSetup:
    """What a process needs to roll the student out on one task and label it: the sim, the teacher and
    the rollout settings. Picklable, so collection workers build the same thing the parent does."""

    task: str
    teacher: str  # 'expert' or a teacher model file
    rollout: RolloutConfig  # without prompt_encoder in a worker (rebuilt from the student's tokenizer)
    spec: SampleSpec
    label_dt: float = 0.01
    replan_choices: tuple[int, ...] = ()  # per episode, by seed; () -> rollout.replan_steps
    prefix_choices: tuple[int, ...] = ()  # per episode, by seed; () -> rollout.prefix_len
    counterfactual_s: float = 0.0  # pick_place: also label the first seconds for the other cubes (0: off)
    source: str = "dagger"  # the episodes' `source` (their counterfactual copies: <source>_counterfactual)
    place_spread_m: float = 0.0  # pick_place: the expert teacher's place spread (Expert.place_spread_m)


def make_arm(task: str, cfg: Any, seed: int) -> Any:
    from wam_control.sim.arm import SimArm

    return SimArm(
        task=task,
        seed=seed,
        image_hw=(cfg.image_height, cfg.image_width),
        cameras=cfg.camera_names,
        hand=True if cfg.extra_dofs else None,
    )


def make_labeler(
    arm: Any, task: str, teacher: Any | None, cfg: Any, label_dt: float, place_spread_m: float = 0.0
) -> Any:
    """The teacher for rollouts on `arm`: a teacher model if given, else the scripted expert (through
    the physics for a gripper model or pick_place, in imagination for an arm-only reach/push)."""
    if teacher is not None:
        return teacher
    if cfg.extra_dofs or task == "pick_place":
        return LookaheadLabeler(arm, cfg.horizon, cfg.action_dt, place_spread_m)
    return ExpertLabeler(arm, cfg.horizon, cfg.action_dt, label_dt)


def episode_config(setup: CollectSetup, seed: int) -> RolloutConfig:
    """The cadence and committed prefix of one DAgger episode, drawn from the choices by its seed, so
    the data does not depend on how episodes are dealt to workers."""
    replan = setup.replan_choices or (setup.rollout.replan_steps,)
    prefix = setup.prefix_choices or (setup.rollout.prefix_len,)
    return replace(
        setup.rollout,
        replan_steps=replan[seed % len(replan)],
        prefix_len=prefix[(seed // len(replan)) % len(prefix)],
    )


Labelled = tuple[np.ndarray, dict[str, np.ndarray], dict[str, Any]]  # frames, samples, episode info


def make_counterfactual(labeler: Any, setup: CollectSetup) -> CounterfactualLabels | None:
    if setup.counterfactual_s <= 0:
        return None
    if setup.task != "pick_place" or not isinstance(labeler, LookaheadLabeler):
        raise ValueError("counterfactual prompts need pick_place and the expert teacher (--teacher expert)")
    return CounterfactualLabels(labeler, setup.counterfactual_s)


def _labelled_episode(
    arm: Any, policy: Any, labeler: Any, setup: CollectSetup, seed: int, counterfactual: Any = None
) -> list[Labelled]:
    """The student's episode with the teacher's labels, then (with `counterfactual`) one episode per
    other cube: the same first observations, labelled for that cube, its colour in the prompt."""
    rcfg = episode_config(setup, seed)
    ep = run_episode(arm, policy, seed, rcfg, labeler=labeler, counterfactual=counterfactual)
    info = {
        "source": setup.source,
        "seed": seed,
        "task": arm.task.name,
        "success": ep.success,
        "duration_s": round(ep.time_s, 3),
        "prompt": arm.task.prompt,
        "replan_steps": rcfg.replan_steps,
        "prefix_len": rcfg.prefix_len,
    }
    out = [(ep.frames, episode_samples(ep, setup.spec), info)]
    if ep.counterfactual:
        for cube in sorted(ep.counterfactual):
            frames, samples = counterfactual_samples(ep, setup.spec, cube)
            out.append((frames, samples, {**info, "source": f"{setup.source}_counterfactual",
                        "prompt": arm.task.prompt_naming(cube), "success": False,
                        "duration_s": round(float(ep.obs_t[len(samples["state"]) - 1]), 3)}))  # fmt: skip
    return out


_WORKER: dict[str, Any] = {}


def _worker_init(student: str, setup: CollectSetup) -> None:
    """A collection process: its own student (from the checkpoint the parent wrote), sim and teacher.
    One torch thread each: the processes are the parallelism."""
    import atexit

    from wam_control.model.wam import load_checkpoint

    torch.set_num_threads(1)
    model, _ = load_checkpoint(student)
    cfg = model.config
    teacher, _ = load_teacher(setup.teacher, cfg.horizon, cfg.num_joints)
    arm = make_arm(setup.task, cfg, 0)
    atexit.register(arm.close)
    if cfg.has_instruction:
        from wam_control.model.prompt import PromptEncoder

        encoder = PromptEncoder(model.tokenizer_json, cfg.max_instruction_tokens).encode
        setup = replace(setup, rollout=replace(setup.rollout, prompt_encoder=encoder))
    labeler = make_labeler(arm, setup.task, teacher, cfg, setup.label_dt, setup.place_spread_m)
    _WORKER.update(
        arm=arm,
        policy=TorchPolicy(model),
        labeler=labeler,
        counterfactual=make_counterfactual(labeler, setup),
        setup=setup,
    )


def _worker_episode(seed: int) -> list[Labelled]:
    w = _WORKER
    return _labelled_episode(w["arm"], w["policy"], w["labeler"], w["setup"], seed, w["counterfactual"])


def collect(
    arm: Any,
    model: WorldActionModel,
    labeler: Any,
    seeds: list[int],
    setup: CollectSetup,
    progress: bool,
    desc: str,
    workers: int = 1,
) -> tuple[Dataset, dict[str, Any]]:
    """Roll the student out on `seeds`, label with the teacher; (new samples, stats).

    workers > 1: the episodes run in that many processes (spawned: MuJoCo's GL context and torch's
    thread pools do not survive a fork), each with its own sim, teacher and copy of the student; the
    episodes come back in seed order, so the data is the same for any number of workers."""
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(seeds), desc=desc, unit="ep", dynamic_ncols=True)
    results: list[Labelled] = []  # the student's episodes
    extra: list[Labelled] = []  # their counterfactual-prompt copies

    def done(r: list[Labelled]) -> None:
        results.append(r[0])
        extra.extend(r[1:])
        if bar is not None:
            bar.update(1)
            bar.set_postfix(success=f"{sum(x[2]['success'] for x in results) / len(results):.3f}")

    try:
        if workers <= 1:
            policy = TorchPolicy(model)
            counterfactual = make_counterfactual(labeler, setup)
            for s in seeds:
                done(_labelled_episode(arm, policy, labeler, setup, s, counterfactual))
        else:
            import multiprocessing
            import tempfile
            from concurrent.futures import ProcessPoolExecutor

            with tempfile.TemporaryDirectory(prefix="wam-distill-") as td:
                student = str(Path(td) / "student.pt")
                save_checkpoint(model, student)
                picklable = replace(setup, rollout=replace(setup.rollout, prompt_encoder=None))
                with ProcessPoolExecutor(
                    max_workers=min(workers, len(seeds)),
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_worker_init,
                    initargs=(student, picklable),
                ) as pool:
                    for r in pool.map(_worker_episode, seeds):
                        done(r)
    finally:
        if bar is not None:
            bar.close()
    builder = DatasetBuilder()
    for frames, samples, info in results + extra:
        builder.add(frames, samples, info)
    ds = builder.build()
    n_cf = sum(len(x[1]["state"]) for x in extra)
    return ds, {
        "episodes": len(seeds),
        "seeds": [seeds[0], seeds[-1]],
        "student_success_rate": sum(r[2]["success"] for r in results) / len(seeds),
        "mean_episode_s": round(float(np.mean([r[2]["duration_s"] for r in results])), 3),
        "observations": len(ds),
        "counterfactual_observations": n_cf,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="wam-control distill", description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", required=True, help="'expert' or a teacher WAM (.onnx or .pt)")
    ap.add_argument("--student-out", required=True, type=Path, help="output folder")
    ap.add_argument("--init", help="student checkpoint to start from (e.g. wam-control train's model.pt)")
    ap.add_argument(
        "--preset", default="compact", help=f"fresh student architecture if no --init: {', '.join(PRESETS)}"
    )
    ap.add_argument(
        "--data",
        nargs="+",
        help="data kept in the aggregate: bag folders or dataset .npz files (demonstrations, or the "
        "dagger.npz of an earlier distill run to continue it)",
    )
    ap.add_argument("--data-obs-dt", type=float, default=0.025, help="observation grid for --data bags (s)")
    ap.add_argument(
        "--dagger-share", type=float, default=0.5, help="share of each batch drawn from DAgger samples"
    )
    ap.add_argument(
        "--source-share",
        action="append",
        default=[],
        metavar="SOURCE=SHARE",
        help="instead of --dagger-share: this share of every batch from the episodes of SOURCE (dagger, "
        "dagger_counterfactual, scripted_expert; 0 leaves it out; SOURCE/TASK names one task's episodes "
        "of it), the rest at natural proportions; repeatable",
    )
    ap.add_argument(
        "--dagger-source",
        default="dagger",
        metavar="NAME",
        help="the `source` recorded for this run's episodes (default dagger; must start with 'dagger'): "
        "a corrected teacher's labels can then be told from an earlier one's (--source-share dagger=0)",
    )
    ap.add_argument(
        "--place-spread",
        type=float,
        default=0.0,
        metavar="M",
        help="pick_place, expert teacher: place the cube straight down when it is carried within M of "
        "the zone's centre per axis (as demonstrations recorded with record --place-spread M do)",
    )
    ap.add_argument(
        "--task",
        default="reach",
        help="the student's rollouts: reach, push, pick_place, or several comma-separated (each "
        "iteration's episodes dealt round-robin; evaluation and surprise calibration on the first); a "
        "model with the gripper column is labelled by the expert taking over the physics for each chunk "
        "(LookaheadLabeler)",
    )
    ap.add_argument("--iterations", type=int, default=4)
    ap.add_argument("--episodes", type=int, default=40, help="student rollouts per iteration")
    ap.add_argument("--steps", type=int, default=400, help="optimiser steps per iteration")
    ap.add_argument(
        "--seed-start", type=int, default=1000, help="first rollout seed (training seeds: < 10000)"
    )
    ap.add_argument("--eval-episodes", type=int, default=100)
    ap.add_argument("--eval-seed", type=int, default=EVAL_SEED_DEFAULT)
    ap.add_argument(
        "--replan-steps",
        type=int,
        default=4,
        help="action steps executed before the next inference (evaluation and calibration)",
    )
    ap.add_argument(
        "--collect-replan-steps",
        default="",
        help="comma-separated choices drawn per DAgger episode (e.g. 2,4,8: visit the states other "
        "execution cadences lead to); default: --replan-steps",
    )
    ap.add_argument("--prefix-len", type=int, default=2, help="committed prefix at each replan")
    ap.add_argument(
        "--collect-prefix-lens",
        default="",
        help="comma-separated committed-prefix lengths drawn per DAgger episode: the runtime's async "
        "mode commits the steps until the next chunk arrives (+1), so 2 is ~0 ms of inference and 6 "
        "~200 ms at action_dt 0.05 s; default: --prefix-len",
    )
    ap.add_argument(
        "--counterfactual-prompts-s",
        type=float,
        default=0.0,
        help="pick_place with the expert teacher: for the first this many seconds of each episode, also "
        "label every state for the other cubes, each with its colour in the prompt (teaches the student "
        "to read the colour word; ~3x the labelling cost in that window; 0: off)",
    )
    ap.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes that collect DAgger episodes in parallel (one sim, teacher and student copy "
        "each; the data does not depend on the number)",
    )
    ap.add_argument("--max-time-s", type=float, help="cut episodes short (default: the task's horizon)")
    ap.add_argument(
        "--collect-settle-s",
        type=float,
        help="DAgger rollouts end once success has held this long (default: the evaluation's 0.5 s). "
        "Longer keeps the student going at the goal, so its drift off a reached target is labelled, "
        "as `record --after-success-s` does for demonstrations",
    )
    ap.add_argument("--label-dt", type=float, default=0.01, help="expert teacher's integration step (s)")
    ap.add_argument("--export", action="store_true", help="write <student-out>/model.onnx (+ surprise stats)")
    ap.add_argument("--surprise-episodes", type=int, default=50, help="nominal rollouts for surprise stats")
    add_common_args(ap)
    ap.set_defaults(lr=3e-4)
    args = ap.parse_args(argv)
    try:
        replan_choices = [int(v) for v in args.collect_replan_steps.split(",") if v.strip()]
    except ValueError:
        ap.error(
            f"--collect-replan-steps must be comma-separated integers, got {args.collect_replan_steps!r}"
        )
    try:
        prefix_choices = [int(v) for v in args.collect_prefix_lens.split(",") if v.strip()]
    except ValueError:
        ap.error(f"--collect-prefix-lens must be comma-separated integers, got {args.collect_prefix_lens!r}")
    if args.collect_settle_s is not None and not args.collect_settle_s > 0:
        ap.error(f"--collect-settle-s is a duration > 0, got {args.collect_settle_s}")
    if any(v < 0 for v in prefix_choices) or args.prefix_len < 0:
        ap.error("prefix lengths must be >= 0")
    if args.workers < 1:
        ap.error(f"--workers must be >= 1, got {args.workers}")
    if args.counterfactual_prompts_s < 0:
        ap.error(f"--counterfactual-prompts-s must be >= 0, got {args.counterfactual_prompts_s}")
    tasks = [t.strip() for t in args.task.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if not tasks or unknown or len(set(tasks)) != len(tasks):
        ap.error(f"--task must be distinct names from {', '.join(TASKS)}, comma-separated; got {args.task!r}")
    if any(v < 1 for v in replan_choices) or args.replan_steps < 1:
        ap.error("replan steps must be >= 1")
    if args.iterations < 1 or args.episodes < 1:
        ap.error("--iterations and --episodes must be >= 1")
    if args.eval_episodes < 1:  # checked now, not after the collection: the report evaluates what it trained
        ap.error(f"--eval-episodes must be >= 1, got {args.eval_episodes}")
    if args.seed_start + args.iterations * args.episodes > args.eval_seed:
        ap.error(
            "rollout seeds would reach the evaluation seeds; lower --seed-start/--episodes or raise --eval-seed"
        )

    try:
        resolve_device(args.device)
    except ValueError as exc:
        print(f"wam-control distill: {exc}", file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, args.threads))
    out: Path = args.student_out
    out.mkdir(parents=True, exist_ok=True)
    try:
        model = model_from_args(
            args.preset, args.init, FR3_JOINTS, ("scene",), {"model_name": "wam-reach"}, args.seed
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"wam-control distill: {exc}", file=sys.stderr)
        return 2
    cfg = model.config
    gripper = bool(cfg.extra_dofs)
    gripper_joint = "fr3_finger_joint1" if gripper else ""
    spec = spec_for(cfg, cfg.action_dt, gripper_joint)
    base: Dataset | None = None
    if args.data:
        try:
            base = concat(
                load_dataset(d, spec_for(cfg, args.data_obs_dt, gripper_joint), cache=out / f"data{i}.npz")
                for i, d in enumerate(args.data)
            )
        except (FileNotFoundError, ValueError) as exc:
            print(f"wam-control distill: {exc}", file=sys.stderr)
            return 2
    if args.place_spread < 0 or (args.place_spread and args.teacher != "expert"):
        print(f"wam-control distill: --place-spread {args.place_spread}: expected >= 0 m, and only with "
              "--teacher expert", file=sys.stderr)  # fmt: skip
        return 2
    try:
        teacher, teacher_desc = load_teacher(args.teacher, cfg.horizon, cfg.num_joints)
    except (FileNotFoundError, ValueError) as exc:
        print(f"wam-control distill: {exc}", file=sys.stderr)
        return 2

    # One sim (and expert labeller bound to it) per task; the first task's also evaluates.
    arms: dict[str, Any] = {}
    labelers: dict[str, Any] = {}
    for task in tasks:
        arms[task] = make_arm(task, cfg, args.seed_start)
        labelers[task] = make_labeler(arms[task], task, teacher, cfg, args.label_dt, args.place_spread)
    arm = arms[tasks[0]]
    prompt_encoder = None
    if cfg.has_instruction:
        from wam_control.model.prompt import PromptEncoder

        if not model.tokenizer_json:
            print("wam-control distill: the student takes a prompt but has no tokenizer", file=sys.stderr)
            return 2
        prompt_encoder = PromptEncoder(model.tokenizer_json, cfg.max_instruction_tokens).encode
    rcfg = RolloutConfig(
        horizon=cfg.horizon,
        action_dt=cfg.action_dt,
        cameras=tuple(cfg.camera_names),
        replan_steps=args.replan_steps,
        prefix_len=min(args.prefix_len, cfg.max_prefix),
        max_time_s=args.max_time_s,
        gripper=gripper,
        prompt_encoder=prompt_encoder,
    )
    setups = {
        task: CollectSetup(
            task=task,
            teacher=args.teacher,
            rollout=rcfg if args.collect_settle_s is None else replace(rcfg, settle_s=args.collect_settle_s),
            spec=spec,
            label_dt=args.label_dt,
            replan_choices=tuple(replan_choices),
            prefix_choices=tuple(min(v, cfg.max_prefix) for v in prefix_choices),
            counterfactual_s=args.counterfactual_prompts_s if task == "pick_place" else 0.0,
            source=args.dagger_source,
            place_spread_m=args.place_spread,
        )
        for task in tasks
    }
    if args.init is None:
        if base is None:
            print(
                "wam-control distill: a fresh student (no --init) needs --data for its normalisation",
                file=sys.stderr,
            )
            return 2
        norm = normalization_from(base, len(cfg.joint_names))
        model.set_normalization(*(torch.from_numpy(a) for a in norm))
    try:
        source_shares = parse_source_shares(args.source_share)
    except ValueError as exc:
        print(f"wam-control distill: {exc}", file=sys.stderr)
        return 2
    # Checked before collecting (an hour of rollouts must not end in a sampling error).
    if not args.dagger_source.startswith("dagger"):  # train.keyframe_targets skips them by this prefix
        print(f"wam-control distill: --dagger-source {args.dagger_source!r}: expected a name starting "
              "with 'dagger'", file=sys.stderr)  # fmt: skip
        return 2
    produced = {args.dagger_source} | (
        {f"{args.dagger_source}_counterfactual"} if args.counterfactual_prompts_s > 0 else set()
    )
    present = produced | ({str(e.get("source", "?")) for e in base.episodes} if base is not None else set())
    missing = sorted({n.partition("/")[0] for n in source_shares} - present)
    if missing:
        print(
            f"wam-control distill: --source-share: no episode will have source {missing} "
            f"(the data and this run give {sorted(present)})",
            file=sys.stderr,
        )
        return 2
    # Training-only heads continue from the student's checkpoint and from one iteration to the next.
    heads = load_training_heads(args.init) if args.init else {}

    t_start = time.perf_counter()
    iterations: list[dict[str, Any]] = []
    dagger_parts: list[Dataset] = []
    progress = not args.no_progress
    try:
        for it in range(args.iterations):
            t0 = time.perf_counter()
            seeds = list(
                range(args.seed_start + it * args.episodes, args.seed_start + (it + 1) * args.episodes)
            )
            stats: dict[str, Any] = {"episodes": len(seeds), "seeds": [seeds[0], seeds[-1]]}
            rates = []
            for j, task in enumerate(tasks):
                task_seeds = seeds[j :: len(tasks)]
                if not task_seeds:
                    continue
                new, task_stats = collect(
                    arms[task],
                    model,
                    labelers[task],
                    task_seeds,
                    setups[task],
                    progress,
                    f"dagger {it + 1}/{args.iterations} {task} rollouts",
                    workers=args.workers,
                )
                dagger_parts.append(new)
                stats[task] = task_stats
                rates += [task_stats["student_success_rate"]] * len(task_seeds)
            stats["student_success_rate"] = float(np.mean(rates))
            collect_s = time.perf_counter() - t0
            builder = DatasetBuilder()
            for part in dagger_parts:
                builder.add_dataset(part)
            n_dagger = sum(len(p) for p in dagger_parts)
            if base is not None:
                builder.add_dataset(base)
            agg = builder.build()
            weights = None
            if args.source_share:
                weights = source_weights(agg, source_shares)
            elif base is not None and len(base) > 0:
                share = min(max(args.dagger_share, 0.0), 1.0)
                weights = np.empty(len(agg))
                weights[:n_dagger] = share / n_dagger
                weights[n_dagger:] = (1 - share) / len(base)
            tcfg = TrainConfig(
                steps=args.steps,
                batch_size=args.batch_size,
                lr=args.lr,
                warmup_steps=min(50, max(1, args.steps // 10)),
                ema=args.ema,
                wm_weight=args.wm_weight,
                seed=args.seed + it,
                val_fraction=0.0,
                ckpt_every=0,
                device=args.device,
                threads=args.threads,
                shift_pixels=args.augment_shift,
                keyframe_weight=args.keyframe_weight,
                keyframe_warmup_steps=args.keyframe_warmup_steps,
                colour_swap=args.augment_colour_swap,
                gripper_weight=args.gripper_weight,
            )
            t1 = time.perf_counter()
            res = fit(
                model,
                agg,
                tcfg,
                out / f"iter{it}",
                progress=progress,
                desc=f"dagger {it + 1}/{args.iterations} train",
                sample_weights=weights,
                heads=heads,
            )
            model, heads = res.model, res.heads
            rec = {
                "iteration": it,
                **stats,
                "aggregate_observations": len(agg),
                "dagger_observations": n_dagger,
                "train_loss": res.report["final_running_loss"],
                "collect_s": round(collect_s, 1),
                "train_s": round(time.perf_counter() - t1, 1),
            }
            iterations.append(rec)
            print(
                f"dagger iteration {it + 1}: student_success_rate={stats['student_success_rate']:.3f} "
                f"(seeds {seeds[0]}-{seeds[-1]}) aggregate={len(agg)} obs loss_action={rec['train_loss']['action']:.4f} "
                f"loss_wm={rec['train_loss']['wm']:.4f} collect_s={rec['collect_s']} train_s={rec['train_s']}"
            )
            save_checkpoint(
                model,
                str(out / "model.pt"),
                {"kind": "dagger student", "iterations_done": it + 1},
                training_heads=heads,
            )
        distill_s = time.perf_counter() - t_start
        save_dataset(
            concat(dagger_parts), out / "dagger.npz", {"spec": spec.to_dict(), "teacher": args.teacher}
        )
        eval_seeds = list(range(args.eval_seed, args.eval_seed + args.eval_episodes))
        summary_base = base.summary() if base is not None else None
        training_data = {
            "kind": "DAgger distillation" + (" + demonstrations" if base is not None else ""),
            "teacher": args.teacher,
            "task": ",".join(tasks),
            "demonstrations": summary_base,
            "dagger_episodes": args.iterations * args.episodes,
            "dagger_seeds": [args.seed_start, args.seed_start + args.iterations * args.episodes - 1],
            "eval_seeds": [eval_seeds[0], eval_seeds[-1]],
        }
        report: dict[str, Any] = {
            "command": "wam-control distill " + " ".join(sys.argv[1:] if argv is None else argv),
            "teacher": teacher_desc,
            "model": cfg.to_dict(),
            "parameters": model.num_parameters(),
            "rollout": {
                "replan_steps": rcfg.replan_steps,
                "collect_replan_steps": replan_choices or [rcfg.replan_steps],
                "prefix_len": rcfg.prefix_len,
                "collect_prefix_lens": prefix_choices or [rcfg.prefix_len],
                "workers": args.workers,
                "settle_s": rcfg.settle_s,
                "collect_settle_s": setups[tasks[0]].rollout.settle_s,
                "control_hz": arm.control_hz,
                "camera_hz": arm.camera_hz,
            },
            "iterations": iterations,
            "distill_wall_s": round(distill_s, 1),
        }
        if args.export:
            # Evaluate what ships: the exported ONNX through ONNX Runtime.
            report.update(
                export_and_calibrate(model, out, training_data, arm, rcfg, eval_seeds, args, progress)
            )
            ev = report["eval_onnx"]
        else:
            ev, _ = evaluate(
                arm, TorchPolicy(model), eval_seeds, rcfg, progress=progress, desc="eval (torch)"
            )
            report["eval_torch"] = ev
        training_data["eval_success_rate"] = ev["success_rate"]
        save_checkpoint(model, str(out / "model.pt"), training_data, training_heads=heads)
        write_json(out / "distill_report.json", report)
    finally:
        for a in arms.values():
            a.close()
    print(
        f"distill: iterations={args.iterations} distill_s={report['distill_wall_s']} "
        f"eval_success_rate={ev['success_rate']:.3f} eval_seeds={eval_seeds[0]}-{eval_seeds[-1]}"
        + (" (onnx)" if "eval_onnx" in report else " (torch)")
    )
    return 0


def export_and_calibrate(
    model: WorldActionModel,
    out: Path,
    training_data: dict[str, Any],
    arm: Any,
    rcfg: RolloutConfig,
    eval_seeds: list[int],
    args: argparse.Namespace,
    progress: bool,
) -> dict[str, Any]:
    """Export the ONNX, evaluate it closed loop (what ships), and calibrate the nominal surprise."""
    from wam_control.model.export import export_onnx
    from wam_control.policy import load_backend

    onnx_path = out / "model.onnx"
    res = export_onnx(model, onnx_path, training_data=training_data, write_checkpoint=False)
    backend = load_backend(onnx_path, backend="onnxruntime", warmup=2)
    policy = BackendPolicy(backend)
    ev, _ = evaluate(arm, policy, eval_seeds, rcfg, progress=progress, desc="eval (onnx)")
    training_data["eval_success_rate"] = ev["success_rate"]
    _set_training_data(onnx_path, training_data)
    cal_seeds = list(range(eval_seeds[-1] + 1, eval_seeds[-1] + 1 + args.surprise_episodes))
    cal_cfg = replace(rcfg, record_latents=True)
    _, eps = evaluate(arm, policy, cal_seeds, cal_cfg, progress=progress, desc="surprise calibration")
    stats = surprise_statistics(eps, model.config.latent_offsets)
    surprise = {
        **stats,
        "metric": "l2/sqrt(C)",
        "metric_description": "||latent_pred[k] made at t - latent observed at t + offsets[k] * action_dt||_2 "
        "/ sqrt(latent_dim), the latent being the model's own output for that later observation",
        "latent_dim": model.config.latent_dim,
        "action_dt": model.config.action_dt,
        "episodes": len(eps),
        "seeds": cal_seeds,
        "nominal_success_rate": sum(e.success for e in eps) / len(eps),
        "rollout": f"in-process lockstep, replan every {rcfg.replan_steps} action steps, prefix {rcfg.prefix_len}",
        "model": onnx_path.name,
        "weights_sha256": res.contract.weights_sha256,
    }
    write_json(out / "model.surprise.json", surprise)
    print(
        "surprise: offsets="
        + json.dumps(stats["offsets"])
        + " mean="
        + json.dumps(stats["mean"])
        + " p99="
        + json.dumps(stats["p99"])
    )
    return {
        "onnx": {"path": str(onnx_path), "bytes": onnx_path.stat().st_size, "parity": res.parity},
        "eval_onnx": ev,
        "surprise": surprise,
    }


def _set_training_data(path: Path, training_data: dict[str, Any]) -> None:
    """Rewrite the contract's training_data (e.g. with the closed-loop result, known only after export).
    The weights hash covers the initializers only, so it stays valid; read back to prove it."""
    import dataclasses
    import os

    import onnx

    from wam_control.policy.contract import read_contract

    contract = read_contract(path)
    proto = onnx.load(str(path))
    merged = {**contract.training_data, **training_data}
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, dataclasses.replace(contract, training_data=merged).to_metadata())
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(proto, str(tmp))
    tok = None
    if contract.has_instruction:  # the read-back checks the tokenizer beside the file it reads
        import shutil

        from wam_control.policy.contract import tokenizer_path

        tok = Path(tokenizer_path(tmp))
        shutil.copyfile(tokenizer_path(path), tok)
    try:
        read_contract(tmp, verify_weights=True)
    finally:
        if tok is not None:
            tok.unlink(missing_ok=True)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
