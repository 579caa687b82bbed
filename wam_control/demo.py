"""`wam-control demo`: the MuJoCo arm, the controller and the bundled model, closed loop, one machine.

    wam-control demo                        # 5 reach episodes, real time, plots under out/demo/
    wam-control demo --episodes 2 --record  # also write each episode as a ROS 2 bag

What runs (default `--clock realtime`): one process. The runtime `Controller` is ticked by the real
`FixedRateLoop` at the configured control rate on the monotonic clock; the model runs in the real
asynchronous `ThreadWorker`, so chunks execute while the next one is computed; the sim is stepped
to the control clock each tick, its joint states and camera frames go in through
`Controller.on_joint_state` / `on_image` (the calls the DDS and rclpy adapters make), and the
commands it gets back drive its position servos. A camera thread renders frames from snapshots of the
sim, so the loop never waits for a render. Only message serialization is left out; the DDS product
path is `wam-control sim` + `wam-control run` in two processes.

`--clock lockstep` runs the same episodes on a simulated clock instead (deterministic, needs no spare
CPU): the real model is called through the replay `ScriptedWorker`, and its measured latency is
mapped to a fixed number of ticks.

Evaluation seeds start at 100000; training data uses seeds 0-9999.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from wam_control.closedloop import (
    EVAL_SEED_BASE,
    EpisodeResult,
    percentile,
    summarize,
    surprise_factory,
    surprise_summary,
)

DEFAULT_OUT = Path("out/demo")


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="wam-control demo", description=__doc__.split("\n")[0])
    ap.add_argument("--episodes", type=int, default=5, help="closed-loop episodes (default 5)")
    ap.add_argument(
        "--seed", type=int, default=EVAL_SEED_BASE, help="seed of the first episode; episode i uses seed+i"
    )
    ap.add_argument("--task", choices=("reach", "push"), default="reach")
    ap.add_argument("--config", default="fr3", help="deployment YAML or preset name (default fr3)")
    ap.add_argument("--model", help="ONNX model (default: inference.model of the config, the bundled model)")
    ap.add_argument("--backend", default=None, help="auto|onnxruntime|tensorrt|torch (default: the config's)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder for plots and bags")
    ap.add_argument(
        "--transport",
        choices=("inproc",),
        default="inproc",
        help="inproc: sim and controller in one process (for DDS use `wam-control sim` + `wam-control run`)",
    )
    ap.add_argument("--clock", choices=("realtime", "lockstep"), default="realtime")
    ap.add_argument(
        "--horizon-s", type=float, default=None, help="episode length limit (default: the task's)"
    )
    ap.add_argument(
        "--record", action="store_true", help="write every episode as a ROS 2 bag under OUT/bags/"
    )
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument(
        "--no-surprise",
        action="store_true",
        help="run without the world-model surprise monitor even when the config enables it and the "
        "model has a calibration file (<model>.surprise.json)",
    )
    args = ap.parse_args(argv)
    if args.episodes < 1:
        ap.error("--episodes must be >= 1")
    return args


def _say(msg: str) -> None:
    print(msg, flush=True)


class _Progress:
    """One status line per episode, rewritten in place on a terminal."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.tty = sys.stdout.isatty()
        self.i = 0

    def __call__(self, ep: Any) -> None:
        if not self.tty:
            return
        info = ep.arm.task.info()
        line = (
            f"  episode {self.i + 1}/{self.n}  t={ep.last_tick * ep.dt:5.2f} s  "
            f"distance={float(info.get('distance', math.nan)) * 100:5.1f} cm  chunks={ep.c.scheduler.version}"
        )
        print("\r" + line, end="", flush=True)

    def done(self, r: EpisodeResult) -> None:
        end = "\r" if self.tty else ""
        how = (
            f"success at {r.task_time_s:.2f} s"
            if r.success
            else f"failed (distance {r.final_distance_m * 100:.1f} cm)"
        )
        print(
            f"{end}  episode {self.i + 1}/{self.n} seed={r.seed}: {how}; {r.chunks} chunks, "
            f"{r.interventions_total} filter interventions, {r.starvation_events} starvations" + " " * 10,
            flush=True,
        )
        self.i += 1


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    t_start = time.perf_counter()
    from wam_control.config import load_config, preset_path
    from wam_control.policy import check_contract, read_contract

    config = load_config(preset_path(args.config))
    model_path = Path(args.model or config.inference.model)
    if not model_path.is_file():
        print(
            f"wam-control demo: model file {model_path} not found. The bundled model ships as "
            f"models/wam_reach.onnx (inference.model in {config.source}); pass --model PATH to use another.",
            file=sys.stderr,
        )
        return 2
    contract = read_contract(model_path)
    check_contract(contract, config)
    backend = args.backend or config.inference.backend
    surprise, surprise_off = None, "off"
    if not args.no_surprise:
        try:
            surprise = surprise_factory(config, contract, model_path)
        except ValueError as exc:  # CalibrationError: the file beside the model does not fit it
            # The demo is the product's first command: run it, but say loudly what is missing.
            surprise_off = f"OFF: unusable calibration ({exc})"
    _say(
        f"wam-control demo: {args.episodes} {args.task} episode(s), seeds {args.seed}..{args.seed + args.episodes - 1} "
        f"(evaluation seeds; training used 0-9999)\n"
        f"  model {model_path} ({contract.model_name}: {contract.horizon} actions x {contract.action_dt * 1e3:g} ms, "
        f"cameras {list(contract.camera_names)} {contract.image_height}x{contract.image_width})\n"
        f"  controller at {config.control_hz:g} Hz, {config.source}\n"
        f"  surprise monitor: "
        + (
            f"on (calibration {surprise.path}, slow from score {config.surprise.slow_threshold:g}, "
            f"stop at {config.surprise.stop_threshold:g})"
            if surprise is not None
            else surprise_off
        )
    )
    if args.clock == "realtime":
        _say(
            "  one process, real time: FixedRateLoop -> Controller.tick, model in an async ThreadWorker, "
            "sim stepped to the control clock, inputs via on_joint_state/on_image (no serialization)"
        )
        results, describe, model_note = _run_realtime(args, config, contract, model_path, backend, surprise)
    else:
        _say(
            "  one process, lockstep: simulated clock, real model through a ScriptedWorker with a fixed "
            "latency in ticks (deterministic)"
        )
        results, describe, model_note = _run_lockstep(args, config, contract, model_path, backend, surprise)

    summary = summarize(results)
    args.out.mkdir(parents=True, exist_ok=True)
    lines = _summary_lines(args, config, results, summary, describe, model_note)
    plots: list[Path] = []
    if not args.no_plots:
        plots = _plots(args, config, contract, model_path, backend, results)
    bags: list[Path] = []
    if args.record:
        bags = _record(args, config, contract, results)
    _say("")
    for line in lines:
        _say(line)
    if plots:
        _say(f"plots: {', '.join(str(p) for p in plots)}")
    if bags:
        _say(f"bags: {', '.join(str(p) for p in bags)}")
    _say(f"wall time {time.perf_counter() - t_start:.1f} s")
    (args.out / "summary.txt").write_text("\n".join(lines) + "\n")
    return 0


# ---------------------------------------------------------------------------------------------------


def _backend_options(backend: str, config: Any) -> dict[str, Any]:
    # ONNX Runtime's thread count (the "auto" loader drops options a candidate does not take).
    return {"intra_op_threads": config.inference.threads} if backend in ("auto", "onnxruntime") else {}


def _run_realtime(
    args: argparse.Namespace, config: Any, contract: Any, model_path: Path, backend: str, surprise: Any
) -> tuple[list[EpisodeResult], str, str]:
    from wam_control.closedloop import RecordingWorker, make_arm, run_realtime_episode
    from wam_control.runtime.clock import MonotonicClock
    from wam_control.runtime.controller import Controller
    from wam_control.runtime.worker import make_worker

    clock = MonotonicClock()
    worker = make_worker(
        "thread", model_path, contract, clock,
        deadline_s=config.timeouts.inference_deadline_s, backend=backend,
        backend_options=_backend_options(backend, config),
    )  # fmt: skip
    rec = RecordingWorker(worker, contract, clock)
    rec.start()
    if not worker.wait_ready(120.0):
        raise RuntimeError(f"inference worker not ready: {worker.health().get('last_error', '')}")
    describe = str(worker.health().get("backend", ""))
    _say(
        f"  inference: {describe} (thread worker, releases GIL: {bool(worker.health().get('releases_gil'))})"
    )
    arm = make_arm(config, contract, args.task, camera_hz=0.0)
    progress = _Progress(args.episodes)
    results = []
    try:
        for i in range(args.episodes):
            monitor = surprise() if surprise is not None else None
            controller = Controller(config, contract, rec, clock, surprise_monitor=monitor)
            controller.start()
            r = run_realtime_episode(
                arm,
                controller,
                rec,
                args.seed + i,
                horizon_s=args.horizon_s,
                keep_images=True,
                progress=progress,
            )
            controller.stop()
            if worker.busy:  # a request of this episode must not land in the next one
                worker.wait_result(config.timeouts.inference_deadline_s)
            progress.done(r)
            results.append(r)
    finally:
        rec.close()
        arm.close()
    return results, describe, "thread worker, real compute time"


def _run_lockstep(
    args: argparse.Namespace, config: Any, contract: Any, model_path: Path, backend: str, surprise: Any
) -> tuple[list[EpisodeResult], str, str]:
    from wam_control.closedloop import BackendModel, latency_ticks, make_arm, run_lockstep_episode
    from wam_control.policy import load_backend

    be = load_backend(model_path, backend, **_backend_options(backend, config))
    describe = be.describe()
    model = BackendModel(be)
    from wam_control.policy import example_input

    t = []
    for j in range(30):  # measure the compute time once; it then is a fixed number of ticks
        t0 = time.perf_counter()
        be.infer(example_input(contract, seed=j))
        t.append(time.perf_counter() - t0)
    t = t[10:]
    compute_ms = float(np.median(t) * 1e3)
    lat = latency_ticks(compute_ms, 0.0, config.control_hz)
    _say(f"  inference: {describe}; measured {compute_ms:.2f} ms per call -> latency {lat} tick(s)")
    arm = make_arm(config, contract, args.task, camera_hz=15.0)
    progress = _Progress(args.episodes)
    results = []
    try:
        for i in range(args.episodes):
            n_calls = len(model.compute_s)
            r = run_lockstep_episode(
                arm, config, contract, model, args.seed + i, lat_ticks=lat, horizon_s=args.horizon_s,
                keep_trace=True, keep_images=True, progress=progress, surprise=surprise,
            )  # fmt: skip
            r.compute_s = np.asarray(model.compute_s[n_calls:])
            progress.done(r)
            results.append(r)
    finally:
        be.close()
        arm.close()
    return results, describe, f"lockstep, {lat} tick(s) per inference"


def _summary_lines(
    args: argparse.Namespace, config: Any, results: list[EpisodeResult], s: dict[str, float], describe: str,
    model_note: str,
) -> list[str]:  # fmt: skip
    n_ok = sum(r.success for r in results)
    delays = np.concatenate([r.delay_ticks for r in results]) * config.control_period * 1e3
    lines = [
        f"summary ({args.task}, {len(results)} episodes, {args.clock} clock, {args.transport}):",
        f"  success rate        {n_ok}/{len(results)} = {s['success_rate']:.2f}"
        + (f"; mean time to success {s['mean_time_s']:.2f} s" if n_ok else ""),
        f"  inference           {describe}; {model_note}",
        f"                      compute p50 {s['compute_ms_p50']:.2f} ms, p99 {s['compute_ms_p99']:.2f} ms; "
        f"observation->chunk p50 {percentile(delays, 50):.1f} ms, p99 {percentile(delays, 99):.1f} ms; "
        f"{int(s['chunks'])} chunks",
    ]
    loops = [r.loop for r in results if r.loop is not None]
    if loops:
        ticks = sum(st.ticks for st in loops)
        misses = sum(st.misses for st in loops)
        lines.append(
            f"  loop timing         {config.control_hz:g} Hz, {ticks} ticks; lateness p50 "
            f"{np.median([st.late_p50_us for st in loops]):.0f} us, p99 {max(st.late_p99_us for st in loops):.0f} us "
            f"(worst episode), max {max(st.late_max_us for st in loops) / 1e3:.1f} ms; misses {misses}; "
            f"tick compute p99 {max(st.tick_p99_us for st in loops):.0f} us"
        )
    else:
        lines.append("  loop timing         lockstep (simulated clock): no wall-clock lateness to report")
    lines += [
        f"  seams               jump p99 {s['seam_jump_p99'] * 1e3:.3f} mrad, jerk p99 {s['seam_jerk_p99']:.1f} rad/s^3",
        f"  safety filter       {int(s['interventions'])} interventions ({_top_interventions(results)})",
        f"  starvations         {int(s['starvations'])} ({int(s['starved_ticks'])} ticks without a chunk)",
        f"  surprise monitor    {surprise_summary(results) or 'off'}",
        f"success_rate={s['success_rate']:.3f} mean_time_s={s['mean_time_s']:.3f} "
        f"compute_p50_ms={s['compute_ms_p50']:.3f} compute_p99_ms={s['compute_ms_p99']:.3f} "
        + (
            f"late_p99_us={max(st.late_p99_us for st in loops):.1f} misses={sum(st.misses for st in loops)} "
            if loops
            else ""
        )
        + f"seam_jump_p99={s['seam_jump_p99']:.6f} seam_jerk_p99={s['seam_jerk_p99']:.2f} "
        f"interventions={int(s['interventions'])} starvations={int(s['starvations'])}",
    ]
    return lines


def _top_interventions(results: list[EpisodeResult]) -> str:
    total: dict[str, int] = {}
    for r in results:
        for k, v in r.interventions.items():
            total[k] = total.get(k, 0) + v
    if not total:
        return "none"
    top = sorted(total.items(), key=lambda kv: -kv[1])[:3]
    return ", ".join(f"{k} {v}" for k, v in top)


def _encoder(contract: Any, model_path: Path, backend: str, config: Any) -> Any:
    from wam_control.policy import load_backend

    return load_backend(model_path, backend, **_backend_options(backend, config))


def _plots(
    args: argparse.Namespace, config: Any, contract: Any, model_path: Path, backend: str,
    results: list[EpisodeResult],
) -> list[Path]:  # fmt: skip
    from wam_control import plots
    from wam_control.closedloop import latent_prediction_errors

    out = args.out
    # The episode shown in detail: the first successful one, else the first.
    shown = next((r for r in results if r.success), results[0])
    tr = shown.trace
    assert tr is not None
    lim = config.limit_arrays()
    margin = config.safety.position_margin
    title = f"{args.task} seed {shown.seed} ({'success' if shown.success else 'failure'}), {config.control_hz:g} Hz"
    paths = [
        plots.joint_trajectories(
            out / "joint_trajectories.png", tr.t, tr.q_cmd, tr.q_meas, config.joint_names,
            lim.q_min - margin, lim.q_max + margin, margin, title,
        ),
        plots.latency_histogram(
            out / "inference_latency.png",
            np.concatenate([r.compute_s for r in results]) * 1e3,
            np.concatenate([r.delay_ticks for r in results]) * config.control_period * 1e3,
            results[0].status.get("worker.backend", "") or model_path.name,  # type: ignore[arg-type]
        ),
        plots.chunk_seams(
            out / "chunk_seams.png", tr.t, tr.q_cmd, tr.version, config.control_period,
            np.concatenate([r.seam_jumps for r in results]), np.concatenate([r.seam_jerks for r in results]),
            title,
        ),
    ]  # fmt: skip
    be = _encoder(contract, model_path, backend, config)
    try:
        ts, ks, err, base = [], [], [], []
        for r in results:
            encode = _observation_encoder(r, be, contract, config)
            t, k, e, b = latent_prediction_errors(r, contract, config.control_hz, encode)
            ts.append(t)
            ks.append(k)
            err.append(e)
            base.append(b)
        offsets_s = [o * contract.action_dt for o in contract.latent_offsets]
        paths.append(
            plots.latent_prediction(
                out / "latent_prediction.png", np.concatenate(ts), np.concatenate(ks), np.concatenate(err),
                np.concatenate(base), offsets_s,
                "world-model head: predicted future latent vs the latent observed then (all episodes)",
            )
        )  # fmt: skip
    finally:
        be.close()
    return paths


def _observation_encoder(r: EpisodeResult, be: Any, contract: Any, config: Any) -> Any:
    """tick -> the model's latent of the observation the controller had at that tick."""
    from wam_control.policy import PolicyInput

    tr = r.trace
    assert tr is not None
    cams = list(contract.camera_names)
    frames = {c: [(t, img) for t, cam, img in tr.images if cam == c] for c in cams}
    stamps = {c: np.array([t for t, _ in frames[c]]) for c in cams}
    images = np.zeros((len(cams), contract.image_height, contract.image_width, 3), np.uint8)
    prefix = np.zeros((contract.horizon, contract.num_joints), np.float32)
    dt = config.control_period

    def encode(tick: int) -> np.ndarray | None:
        if tick > r.ticks - 1 or not np.isfinite(tr.q_meas[tick, 0]):
            return None
        for i, c in enumerate(cams):
            j = int(np.searchsorted(stamps[c], tick * dt + 1e-9, side="right")) - 1
            if j < 0:
                return None
            images[i] = frames[c][j][1]
        state = tr.q_meas[tick].astype(np.float32)
        prefix[:] = state
        return np.asarray(be.infer(PolicyInput(images, state, prefix, 0)).latent).copy()

    return encode


def _record(args: argparse.Namespace, config: Any, contract: Any, results: list[EpisodeResult]) -> list[Path]:
    from wam_control.sim.arm import SimArm
    from wam_control.sim.bag import BagRecorder
    from wam_control.sim.record import camera_specs

    arm = SimArm(
        task=args.task, seed=args.seed, control_hz=config.control_hz, camera_hz=0.0,
        image_hw=(contract.image_height, contract.image_width), cameras=tuple(contract.camera_names),
    )  # fmt: skip
    specs = camera_specs(arm)
    arm.close()
    paths = []
    for r in results:
        tr = r.trace
        assert tr is not None
        path = args.out / "bags" / f"{args.task}_seed{r.seed}"
        if path.exists():
            import shutil

            shutil.rmtree(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "task": args.task, "seed": str(r.seed), "controller": f"wam-control demo ({args.clock})",
            "model": contract.model_name, "control_hz": str(config.control_hz),
            "cameras": ",".join(contract.camera_names), "success": str(r.success).lower(),
            "duration_s": f"{r.duration_s:.3f}",
        }  # fmt: skip
        images = sorted(tr.images, key=lambda e: e[0])
        with BagRecorder(path, config.joint_names, specs, metadata=meta) as bag:
            j = 0
            for i in range(r.ticks):
                t = float(tr.t[i])
                while j < len(images) and images[j][0] <= t + 1e-9:
                    bag.write_image(images[j][1], images[j][0], images[j][2])
                    j += 1
                if not np.isfinite(tr.q_meas[i, 0]):
                    continue
                bag.write_clock(t)
                bag.write_joint_state(t, tr.q_meas[i], tr.qd_meas[i])
                bag.write_command(t, tr.q_cmd[i])
        paths.append(path)
    return paths


if __name__ == "__main__":
    sys.exit(main())
