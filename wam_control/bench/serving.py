"""`wam-control bench serving`: many robots per Triton server vs the in-process model, in one run.

    wam-control bench serving --robots 1,4 --seconds 20 [--model M] [--max-batch 8] [--out out/bench]

One local Triton server (`wam-control serve`, `--runtime direct` by default: the nvidia-pytriton wheel's
tritonserver, ONNX Runtime on the CPU inside its Python backend stub, dynamic batching)
serves the model. For each robot count N, N independent robot processes each run the real runtime: a
`FixedRateLoop` at the configured control rate ticking a `Controller` with its own `ThreadWorker` and the
`triton` backend, fed replayed inputs (a still arm's joint state every tick, camera frames at 15 Hz), so
each requests chunks at its natural cadence (the scheduler's). In the same run, one robot with the model
in-process (ONNX Runtime, thread worker) is the baseline.

Per request the robot records the worker-measured model time: for `triton` the round trip (serialise,
gRPC, Triton's queue and batcher, the model, back), for in-process ONNX Runtime the compute. The server's
own statistics (Triton's statistics extension) give the batches it formed and its compute time, so the
round trip is reported separately from compute. The final line:

    remote_overhead_p50_ms  remote p50 - in-process p50, one robot
    p50_ms_N / p99_ms_N     remote per-request latency with N robots (all robots' requests)
    p99_ratio_4_vs_1        p99 with the largest N over p99 with the smallest
    server_batch_mean       requests per model execution on the server at the largest N
    starvations             starvation events of all robots (a tick without a chunk to execute)
    loop_misses_N           control-loop deadline misses of all N robots (is the machine oversubscribed?)
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def _robot(
    idx: int, backend: str, model: str, config_name: str, seconds: float, options: dict[str, Any], out: Any
) -> None:
    """One robot: the real runtime on replayed inputs for `seconds`; sends its numbers to `out`."""
    try:
        from wam_control.closedloop import RecordingWorker
        from wam_control.config import load_config, preset_path
        from wam_control.runtime.builder import Overrides, build, resolve
        from wam_control.runtime.clock import MonotonicClock
        from wam_control.runtime.loop import FixedRateLoop
        from wam_control.runtime.worker import make_worker

        config = load_config(preset_path(config_name))
        # Inference only: no surprise monitor or preview, whatever the preset enables.
        spec = resolve(config, model, Overrides(backend=backend, worker="thread", surprise="off",
                                                imagination=False, backend_options=options))  # fmt: skip
        contract = spec.contract
        clock = MonotonicClock()
        worker = make_worker(
            "thread", spec.model_path, contract, clock, deadline_s=config.timeouts.inference_deadline_s,
            backend=spec.backend, backend_options=dict(spec.backend_options), warmup=3,
        )  # fmt: skip
        # The recording wrapper (compute time per request) is the worker the controller is built with.
        rec = RecordingWorker(worker, contract, clock, capacity=int(seconds * 100) + 100)
        rec.start()
        if not worker.wait_ready(120.0):
            raise RuntimeError(f"worker not ready: {worker.health().get('last_error')}")
        controller = build(spec, clock, rec).controller
        rng = np.random.default_rng(idx)
        q = np.array([0.0, -0.3, 0.0, -2.0, 0.0, 1.8, 0.8]) + rng.normal(0, 0.05, 7)
        frames = [
            rng.integers(0, 256, (contract.image_height, contract.image_width, 3), np.uint8)
            for _ in config.cameras
        ]
        every = max(1, int(round(config.control_hz / 15.0)))

        def tick(i: int) -> None:
            now = clock.now()
            controller.on_joint_state(config.joints, q, None, now)
            if i % every == 0:
                for cam, img in zip(config.cameras, frames, strict=True):
                    controller.on_image(cam, img, now)
            controller.tick(i)

        controller.start()
        loop = FixedRateLoop(config.control_hz, tick, clock, config.loop, name=f"robot-{idx}")
        stats = loop.run(max_ticks=int(seconds * config.control_hz))
        v = controller.status().values
        controller.close()
        n = rec.n
        out.put(
            {
                "idx": idx,
                "latency_s": rec.compute_s[:n].copy(),
                "starvations": int(v.get("scheduler.starvation_events", 0)),
                "chunks": int(v.get("scheduler.chunks_accepted", 0)),
                "faults": str(v.get("fault", "")),
                "crashes": int(v.get("worker.crashes", 0)),
                "misses": int(stats.misses),
                "late_p99_us": float(stats.late_p99_us),
                "backend": str(v.get("worker.backend", "")),
            }
        )
    except BaseException as exc:  # report, so the parent does not wait forever
        out.put({"idx": idx, "error": f"{type(exc).__name__}: {exc}"})
        raise


def run_phase(
    n: int, backend: str, model: str, config_name: str, seconds: float, options: dict[str, Any]
) -> list[dict[str, Any]]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [
        ctx.Process(target=_robot, args=(i, backend, model, config_name, seconds, options, q), daemon=True)
        for i in range(n)
    ]
    for p in procs:
        p.start()
    results = []
    deadline = time.monotonic() + seconds + 180.0
    while len(results) < n and time.monotonic() < deadline:
        try:
            results.append(q.get(timeout=1.0))
        except Exception:
            if not any(p.is_alive() for p in procs) and q.empty():
                break
    for p in procs:
        p.join(10.0)
        if p.is_alive():
            p.kill()
    errors = [r["error"] for r in results if "error" in r]
    if errors or len(results) < n:
        raise RuntimeError(f"{backend} x{n}: robots failed: {errors or 'no answer'}")
    return results


def _stats_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="wam-control bench serving", description=__doc__.split("\n")[0])
    ap.add_argument("--robots", default="1,4", help="comma-separated robot counts (default 1,4)")
    ap.add_argument("--seconds", type=float, default=20.0, help="run time per phase")
    ap.add_argument("--config", default="fr3")
    ap.add_argument("--model", help="ONNX model (default: inference.model of the config)")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--queue-delay-us", type=int, default=0)
    ap.add_argument(
        "--runtime",
        choices=("direct", "pytriton"),
        default="direct",
        help="the server's runtime (serve --runtime)",
    )
    ap.add_argument("--out", type=Path, default=Path("out/bench"), help="folder for the plot")
    args = ap.parse_args(argv)
    robots = sorted({int(x) for x in args.robots.split(",") if x.strip()})
    if not robots or robots[0] < 1:
        ap.error("--robots must be positive counts, e.g. 1,4")

    from wam_control.config import load_config, preset_path
    from wam_control.policy.triton_backend import TritonBackend
    from wam_control.serving.server import LocalServer

    config = load_config(preset_path(args.config))
    model = str(args.model or config.inference.model)
    print(
        f"bench serving: robots {robots}, {args.seconds:g} s each, model {Path(model).name}, "
        f"{config.control_hz:g} Hz controllers (own processes, replayed inputs), local Triton server "
        f"(runtime {args.runtime}, max batch {args.max_batch}, queue delay {args.queue_delay_us} us); baseline: "
        "in-process ONNX Runtime",
        flush=True,
    )
    rows: dict[str, dict[str, float]] = {}
    with LocalServer(
        model, max_batch=args.max_batch, queue_delay_us=args.queue_delay_us, runtime=args.runtime
    ) as server:
        probe = TritonBackend(model, server=server.url)
        try:
            base = run_phase(1, "onnxruntime", model, args.config, args.seconds, {"intra_op_threads": 1})
            lat = np.concatenate([r["latency_s"] for r in base]) * 1e3
            rows["inproc_1"] = _row(lat, base, {})
            print(_line("in-process x1", rows["inproc_1"], base[0]["backend"]), flush=True)
            for n in robots:
                s0 = probe.server_statistics()
                res = run_phase(n, "triton", model, args.config, args.seconds, {"server": server.url})
                st = _stats_delta(s0, probe.server_statistics())
                lat = np.concatenate([r["latency_s"] for r in res]) * 1e3
                rows[f"triton_{n}"] = _row(lat, res, st)
                print(_line(f"triton x{n}", rows[f"triton_{n}"], res[0]["backend"]), flush=True)
        finally:
            probe.close()
    lo, hi = robots[0], robots[-1]
    r_lo, r_hi, base_row = rows[f"triton_{lo}"], rows[f"triton_{hi}"], rows["inproc_1"]
    plot = _plot(args.out, robots, rows)
    if plot is not None:
        print(f"plot: {plot}")
    one = rows.get("triton_1", r_lo)
    keys: list[tuple[str, Any]] = [
        ("robots", ",".join(map(str, robots))),
        ("seconds", f"{args.seconds:g}"),
        ("inproc_p50_ms", f"{base_row['p50']:.2f}"),
        ("remote_overhead_p50_ms", f"{one['p50'] - base_row['p50']:.2f}"),
    ]
    for n in robots:
        keys += [
            (f"p50_ms_{n}", f"{rows[f'triton_{n}']['p50']:.2f}"),
            (f"p99_ms_{n}", f"{rows[f'triton_{n}']['p99']:.2f}"),
        ]
    keys += [
        (f"p99_ratio_{hi}_vs_{lo}", f"{r_hi['p99'] / r_lo['p99']:.2f}"),
        ("server_batch_mean", f"{r_hi['batch_mean']:.2f}"),
        ("server_compute_ms", f"{r_hi['server_compute_ms']:.2f}"),
        ("server_queue_ms", f"{r_hi['server_queue_ms']:.2f}"),
        ("starvations", int(sum(rows[f"triton_{n}"]["starvations"] for n in robots))),
        ("inproc_starvations", int(base_row["starvations"])),
        ("runtime", args.runtime),
        *[(f"loop_misses_{n}", int(rows[f"triton_{n}"]["misses"])) for n in robots],
        ("loop_ticks_per_robot", int(args.seconds * config.control_hz)),
        ("worker_crashes", int(sum(rows[f"triton_{n}"]["crashes"] for n in robots))),
    ]
    print(" ".join(f"{k}={v}" for k, v in keys))
    return 0


def _row(lat: np.ndarray, res: list[dict[str, Any]], st: dict[str, float]) -> dict[str, float]:
    execs = st.get("execution_count", 0.0)
    infs = st.get("inference_count", 0.0)
    return {
        "p50": float(np.percentile(lat, 50)) if lat.size else float("nan"),
        "p99": float(np.percentile(lat, 99)) if lat.size else float("nan"),
        "requests": float(lat.size),
        "starvations": float(sum(r["starvations"] for r in res)),
        "crashes": float(sum(r["crashes"] for r in res)),
        "misses": float(sum(r["misses"] for r in res)),
        "batch_mean": infs / execs if execs else float("nan"),
        "server_compute_ms": st.get("compute_infer_ns", 0.0) / execs / 1e6 if execs else float("nan"),
        "server_queue_ms": st.get("queue_ns", 0.0) / max(1.0, st.get("queue_count", 0.0)) / 1e6,
    }


def _line(what: str, r: dict[str, float], backend: str) -> str:
    extra = ""
    if np.isfinite(r["batch_mean"]):
        extra = (
            f"; server: batch mean {r['batch_mean']:.2f}, compute {r['server_compute_ms']:.2f} ms per execution, "
            f"queue {r['server_queue_ms']:.2f} ms"
        )
    return (
        f"  {what:<14} {int(r['requests'])} requests, latency p50 {r['p50']:.2f} ms p99 {r['p99']:.2f} ms, "
        f"starvations {int(r['starvations'])}, loop misses {int(r['misses'])}{extra}  [{backend}]"
    )


def _plot(out: Path, robots: list[int], rows: dict[str, dict[str, float]]) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for key, style in (("p50", "o-"), ("p99", "s--")):
        ax.plot(robots, [rows[f"triton_{n}"][key] for n in robots], style, label=f"Triton {key}")
        ax.axhline(
            rows["inproc_1"][key], color="gray", ls=":" if key == "p50" else "-.", label=f"in-process {key}"
        )
    ax.set_xlabel("robots on one server")
    ax.set_ylabel("request latency (ms)")
    ax.set_xticks(robots)
    ax.set_title("Model round trip vs robots per Triton server (2-core CPU)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "serving_latency.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.exit(main())
