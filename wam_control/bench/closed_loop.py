"""`wam-control bench closed-loop`: task success and time, async (this runtime) vs sync execution.

    wam-control bench closed-loop --episodes 50 --seed 100000 --delay-ms 200 --mode both

Each episode runs the sim arm, the real controller and the real model in lockstep on a simulated
clock. Inference latency = nominal compute time (`--compute-ms`) + injected delay (`--delay-ms`),
rounded up to whole control ticks and applied by the replay `ScriptedWorker` around the real backend,
so a run is deterministic and does not depend on the machine's load (the real compute time is
measured and printed alongside).

- async: the runtime Controller; chunks execute while the next one is computed, with the committed
  prefix handed to the model and seams corrected where needed.
- sync: observe, hold still while the model thinks, execute the whole chunk, repeat (the openpi /
  ALOHA default).

Both modes see the same seeds (evaluation seeds start at 100000; training data used 0-9999). An
episode succeeds when the task's success condition holds for 0.5 s within the task horizon; its time
is when that held success began. The final line holds the async numbers and, with `--mode both`, the
sync ones prefixed `sync_`.

Tasks reach, push and pick_place (`--task`; pick_place defaults to `--config fr3_hand`). With the
hand (the task needs it, or the model or the config has a gripper) the joint state carries the finger
joints and the command's gripper column drives the sim's fingers. A model with a prompt input gets
each episode's task prompt (the sim's, drawn by the seed) through the path `~/instruction` takes;
`--prompt TEXT` gives it TEXT instead (the wrong-prompt control: success is still the task's check).
pick_place adds what was done with the cubes to the final line: `task_target_*` (the cube the task
wants), `prompt_target_*` (the cube the prompt given names) `lifted_rate` (its bottom > 2 cm above the
table at some time) and `in_zone_rate` (its centre inside the zone at the end), `other_lifted_rate`
and `nothing_moved_rate` (no cube lifted or moved 2 cm). `--policy oracle` plays reach and pick_place
with the privileged expert (pick_place: with the config's gripper added to the model's contract).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from wam_control.closedloop import EVAL_SEED_BASE, EpisodeResult, extras_summary, summarize

DEFAULT_COMPUTE_MS = 5.0


def run(
    spec: Any,
    backend: Any,
    *,
    episodes: int,
    seed: int,
    delay_ms: float,
    compute_ms: float,
    modes: tuple[str, ...],
    task: str = "reach",
    horizon_s: float | None = None,
    progress: bool = False,
    prompt: str | None = None,
) -> tuple[dict[str, list[EpisodeResult]], list[float], int]:
    """Run `episodes` seeds in every mode; (results per mode, measured compute times s, latency ticks).

    `spec` (runtime.builder.resolve): config, contract and whether the async controller runs a surprise
    monitor. `backend` None: the privileged expert oracle (wam_control/sim/oracle.py) plays the policy.
    A model with a prompt input gets each episode's task prompt, or `prompt` (the wrong-prompt control)."""
    from wam_control.closedloop import (
        BackendModel,
        describe_extras,
        latency_ticks,
        make_arm,
        run_lockstep_episodes,
    )

    config, contract = spec.config, spec.contract
    lat = latency_ticks(compute_ms, delay_ms, config.control_hz)
    arm = make_arm(config, contract, task, camera_hz=15.0)
    if backend is None:
        from wam_control.closedloop import make_oracle

        backend = make_oracle(arm, spec)
    model = BackendModel(backend)
    row: list[str] = []

    def line(s: int, mode: str, r: EpisodeResult) -> None:
        how = f"ok {r.task_time_s:.2f} s" if r.success else f"FAIL ({r.final_distance_m * 100:.1f} cm off)"
        extra = describe_extras(r.extras)
        row.append(f"{mode} {how}" + (f" {extra}" if extra else ""))
        if mode == modes[-1]:
            if progress:
                print(f"  seed {s}: " + ", ".join(row), flush=True)
            row.clear()

    try:
        out = run_lockstep_episodes(
            arm, spec, model, range(seed, seed + episodes), modes=modes, lat_ticks=lat, horizon_s=horizon_s,
            on_result=line, prompt=prompt,
        )  # fmt: skip
    finally:
        arm.close()
    return out, model.compute_s, lat


def _remote_split(backend: Any) -> float:
    """Mean server-side compute per request (ms) from Triton's statistics; the rest of the round trip is
    transport, serialisation and queueing."""
    st = getattr(backend, "inner", backend).server_statistics()  # under the frame check wrapper
    return st.get("compute_infer_ns", 0.0) / max(1.0, st.get("inference_count", 0.0)) / 1e6


def _fmt(v: float, nd: int = 3) -> str:
    return "nan" if not math.isfinite(v) else f"{v:.{nd}f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="wam-control bench closed-loop", description=__doc__.split("\n")[0])
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--seed", type=int, default=EVAL_SEED_BASE, help="first seed (evaluation seeds: 100000+)")
    ap.add_argument("--delay-ms", type=float, default=0.0, help="inference delay injected on top of compute")
    ap.add_argument(
        "--compute-ms",
        type=float,
        default=DEFAULT_COMPUTE_MS,
        help="nominal model compute time in the simulated latency (fixed for determinism)",
    )
    ap.add_argument("--mode", choices=("async", "sync", "both"), default="both")
    ap.add_argument("--task", choices=("reach", "push", "pick_place"), default="reach")
    ap.add_argument(
        "--config",
        default=None,
        help="deployment YAML or preset name (default: fr3_hand for pick_place, else fr3)",
    )
    ap.add_argument(
        "--prompt",
        default=None,
        help="the prompt every episode gives a prompted model instead of the task's own (the wrong-prompt "
        "control; success is still the task's check)",
    )
    ap.add_argument("--model", help="ONNX model (default: inference.model of the config, the bundled model)")
    ap.add_argument(
        "--backend",
        default="auto",
        help="auto|onnxruntime|tensorrt|torch|triton (triton: a local Triton server runs the model, "
        "`wam-control serve`; the round trip is reported beside the server's compute time)",
    )
    ap.add_argument(
        "--policy",
        choices=("model", "oracle"),
        default="model",
        help="model: the ONNX model; oracle: the privileged scripted expert with the model's contract "
        "(separates runtime problems from model problems)",
    )
    ap.add_argument("--horizon-s", type=float, default=None, help="episode time limit (default: the task's)")
    ap.add_argument(
        "--min-prefix-steps",
        type=int,
        default=None,
        help="inference.min_prefix_steps for this run (default: the config's): commit at least this many "
        "action steps at each request, whatever the latency",
    )
    ap.add_argument("--quiet", action="store_true", help="no per-episode lines")
    ap.add_argument(
        "--no-surprise",
        action="store_true",
        help="no surprise monitor in async mode even when the config enables it and <model>.surprise.json exists",
    )
    args = ap.parse_args(argv)
    if args.episodes < 1:
        ap.error("--episodes must be >= 1")
    if args.delay_ms < 0 or args.compute_ms < 0:
        ap.error("--delay-ms and --compute-ms must be >= 0")
    if args.seed < EVAL_SEED_BASE:
        print(
            f"warning: seed {args.seed} < {EVAL_SEED_BASE} may overlap the training seeds (0-9999)",
            file=sys.stderr,
        )

    from wam_control.config import load_config, preset_path
    from wam_control.runtime.builder import Overrides, resolve

    config = load_config(preset_path(args.config or ("fr3_hand" if args.task == "pick_place" else "fr3")))
    if args.min_prefix_steps is not None:
        if args.min_prefix_steps < 0:
            ap.error("--min-prefix-steps must be >= 0")
        config = dataclasses.replace(
            config, inference=dataclasses.replace(config.inference, min_prefix_steps=args.min_prefix_steps)
        )
    model_path = Path(args.model or config.inference.model)
    if not model_path.is_file():
        print(f"bench closed-loop: model file {model_path} not found (pass --model PATH)", file=sys.stderr)
        return 2
    modes = ("async", "sync") if args.mode == "both" else (args.mode,)
    from wam_control.closedloop import surprise_summary

    # The monitor runs when the config enables it and its calibration file exists (explicitly optional
    # here: the bench also measures models without one); a file that does not fit the model is reported.
    surprise_mode = "if_calibrated" if args.policy == "model" and not args.no_surprise else "off"
    overrides = Overrides(backend=args.backend, surprise=surprise_mode, imagination=False)  # type: ignore[arg-type]
    if args.policy == "oracle":
        # The expert plays the model's contract (cameras, horizon, prefix), with the config's gripper
        # where the task has the hand; it takes no prompt.
        from wam_control.closedloop import oracle_contract
        from wam_control.policy import read_contract

        if args.prompt is not None:
            ap.error("--prompt: the expert oracle takes no prompt (it knows the task); use --policy model")
        spec = resolve(config, model_path, overrides, contract=oracle_contract(config, read_contract(model_path), args.task))
        spec.surprise_note = "off (expert oracle)"
    else:
        try:
            spec = resolve(config, model_path, overrides)
        except ValueError as exc:  # CalibrationError / DecoderError: a file that does not fit the model
            spec = resolve(config, model_path, Overrides(backend=args.backend, surprise="off", imagination=False))
            spec.surprise_note = f"OFF: {exc}"
    contract = spec.contract
    if args.prompt is not None and spec.tokenizer is None:
        print(f"bench closed-loop: --prompt given but model {model_path.name} takes no language prompt", file=sys.stderr)
        return 2
    if args.policy == "model" and args.task == "pick_place" and not contract.extra_actions:
        print(
            f"bench closed-loop: pick_place needs a model with a gripper output (contract v2 action_names); "
            f"{model_path.name} has {list(contract.actions)} (or use --policy oracle)",
            file=sys.stderr,
        )
        return 2
    surprise_note = (
        f"surprise monitor on in async mode ({spec.calibration})"
        if spec.calibration is not None
        else f"surprise monitor {spec.surprise_note}"
    )
    server = None
    extra: dict[str, Any] = {}
    if args.backend == "triton" and args.policy == "model":
        from wam_control.serving.server import LocalServer

        server = LocalServer(model_path).start()
        extra.update(server=server.url)
    try:
        backend = spec.load_backend(**extra) if args.policy == "model" else None
    except BaseException:
        if server is not None:
            server.close()
        raise
    print(
        f"closed-loop {args.task}: {args.episodes} episodes x {list(modes)}, seeds {args.seed}..{args.seed + args.episodes - 1}, "
        f"model {model_path.name} ({contract.horizon} x {contract.action_dt * 1e3:g} ms), "
        f"{backend.describe() if backend is not None else 'expert oracle'}, "
        f"{config.control_hz:g} Hz lockstep, latency = {args.compute_ms:g} ms compute + {args.delay_ms:g} ms injected, "
        f"committed prefix >= {config.inference.min_prefix_steps} steps; "
        f"{surprise_note}",
        flush=True,
    )
    if contract.extra_actions:
        print(f"extra DOFs: {', '.join(f'{n}->{config.extra_joint(n)}' for n in contract.extra_actions)}")
    if spec.tokenizer is not None:
        print(f"prompt: {args.prompt!r} (override) in every episode" if args.prompt is not None
              else "prompt: each episode's task prompt (sim task.prompt, by seed)")  # fmt: skip
    t0 = time.perf_counter()
    try:
        results, compute_s, lat = run(
            spec, backend, episodes=args.episodes, seed=args.seed, delay_ms=args.delay_ms,
            compute_ms=args.compute_ms, modes=modes, task=args.task, horizon_s=args.horizon_s,
            progress=not args.quiet, prompt=args.prompt,
        )  # fmt: skip
        remote = _remote_split(backend) if server is not None else None
    finally:
        if backend is not None:
            backend.close()
        if server is not None:
            server.close()
    wall = time.perf_counter() - t0
    comp = np.asarray(compute_s) * 1e3
    print(
        f"latency {lat} ticks ({lat * config.control_period * 1e3:g} ms); measured compute p50 "
        f"{np.percentile(comp, 50):.2f} ms p99 {np.percentile(comp, 99):.2f} ms over {comp.size} calls; wall {wall:.1f} s"
    )
    sums = {m: summarize(results[m]) for m in modes}
    print(f"{'mode':<6} {'success':>8} {'mean_t_s':>9} {'seam_jump_p99_mrad':>19} {'seam_jerk_p99':>14} "
          f"{'interventions':>13} {'starvations':>11} {'held_for_model_s':>16}")  # fmt: skip
    for m in modes:
        s = sums[m]
        held = sum(r.waiting_ticks for r in results[m]) * config.control_period / len(results[m])
        # Sync execution has no seams while moving (every chunk starts from rest): not measured.
        jump = f"{s['seam_jump_p99'] * 1e3:.3f}" if m == "async" else "n/a"
        jerk = _fmt(s["seam_jerk_p99"], 1) if m == "async" else "n/a"
        print(
            f"{m:<6} {s['success_rate']:>8.3f} {_fmt(s['mean_time_s'], 2):>9} {jump:>19} "
            f"{jerk:>14} {int(s['interventions']):>13} {int(s['starvations']):>11} {held:>16.2f}"
        )
    line = surprise_summary(results.get("async", []))
    if line is not None:
        print(f"surprise (async): {line}")
    main_mode = "async" if "async" in modes else "sync"
    s = sums[main_mode]
    keys = [
        ("mode", args.mode),
        ("policy", args.policy),
        ("episodes", args.episodes),
        ("delay_ms", f"{args.delay_ms:g}"),
        ("latency_ticks", lat),
        ("min_prefix_steps", config.inference.min_prefix_steps),
        ("success_rate", _fmt(s["success_rate"])),
        ("mean_time_s", _fmt(s["mean_time_s"])),
        ("seam_jump_p99", _fmt(s["seam_jump_p99"], 6)),
        ("interventions", int(s["interventions"])),
        ("starvations", int(s["starvations"])),
    ]
    if main_mode == "async" and "sync" in sums:
        keys += [
            ("sync_success_rate", _fmt(sums["sync"]["success_rate"])),
            ("sync_mean_time_s", _fmt(sums["sync"]["mean_time_s"])),
        ]
    # Per-task outcome (pick_place: what was done with which cube), in the main mode, then sync_.
    for m in (main_mode, *(["sync"] if main_mode == "async" and "sync" in sums else [])):
        prefix = "" if m == main_mode else "sync_"
        keys += [(prefix + k, _fmt(v)) for k, v in extras_summary(results[m]).items()]
    keys.append(("compute_p50_ms", f"{np.percentile(comp, 50):.3f}"))
    if remote is not None:  # compute_p50_ms above is the round trip; the server's own compute beside it
        print(
            f"triton: round trip p50 {np.percentile(comp, 50):.2f} ms, server compute {remote:.2f} ms per request"
        )
        keys.append(("server_compute_ms", f"{remote:.3f}"))
    print(" ".join(f"{k}={v}" for k, v in keys))
    return 0


if __name__ == "__main__":
    sys.exit(main())
