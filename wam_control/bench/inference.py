"""`wam-control bench inference`: latency of each available policy backend, side by side in one run.

Backends are timed round-robin on the same inputs (one call each per round) so that a noisy neighbour
hurts all of them alike; warm-up calls are excluded. `--device cpu` compares ONNX Runtime CPU with
PyTorch eager CPU at the same thread count; `--device cuda` compares PyTorch eager, CUDA graphs and
torch.compile on the GPU (plus ONNX Runtime GPU / TensorRT when installed) and needs only torch + CUDA.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from wam_control.policy.base import PolicyInput, example_input

log = logging.getLogger(__name__)


def _candidates(model: str, device: str, threads: int, compile_: bool) -> list[tuple[str, Callable[[], Any]]]:
    from wam_control.policy.loader import _construct

    out: list[tuple[str, Callable[[], Any]]] = []
    if device == "cpu":
        out.append(
            (
                "ort_cpu",
                lambda: _construct("onnxruntime", model, {"providers": ["cpu"], "intra_op_threads": threads}),
            )
        )
        out.append(("torch_cpu", lambda: _construct("torch", model, {"device": "cpu", "threads": threads})))
        if compile_:
            out.append(
                (
                    "torch_compile_cpu",
                    lambda: _construct(
                        "torch", model, {"device": "cpu", "threads": threads, "compile": True}
                    ),
                )
            )
        return out
    out.append(
        ("torch_cuda_eager", lambda: _construct("torch", model, {"device": "cuda", "cuda_graphs": False}))
    )
    out.append(
        ("torch_cuda_graph", lambda: _construct("torch", model, {"device": "cuda", "cuda_graphs": True}))
    )
    if compile_:
        out.append(
            ("torch_compile_cuda", lambda: _construct("torch", model, {"device": "cuda", "compile": True}))
        )

    def ort_gpu() -> Any:
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeError("onnxruntime build has no CUDA EP (install onnxruntime-gpu)")
        return _construct("onnxruntime", model, {"providers": ["cuda"], "intra_op_threads": threads})

    out.append(("ort_cuda", ort_gpu))

    def trt() -> Any:
        from wam_control.policy.tensorrt_backend import tensorrt_usable

        ok, why = tensorrt_usable()
        if not ok:
            raise RuntimeError(why)
        return _construct("tensorrt", model, {})

    out.append(("tensorrt", trt))
    return out


def run_bench(
    model: str, device: str, runs: int, warmup: int, threads: int, compile_: bool
) -> dict[str, Any]:
    backends: list[tuple[str, Any]] = []
    for label, make in _candidates(model, device, threads, compile_):
        try:
            b = make()
            t0 = time.perf_counter()
            b.warmup(warmup)
            print(f"{label:<20} {b.describe()}  (warm-up {warmup} calls: {time.perf_counter() - t0:.2f} s)")
            backends.append((label, b))
        except Exception as exc:  # a missing optional backend is a line in the report, not a failure
            print(f"{label:<20} unavailable: {exc}")
    if not backends:
        raise RuntimeError("no backend could run")
    contract = backends[0][1].contract
    inputs: list[PolicyInput] = [example_input(contract, seed=s) for s in range(16)]
    times: dict[str, list[float]] = {label: [] for label, _ in backends}
    for i in range(runs):
        inp = inputs[i % len(inputs)]
        for label, b in backends:
            t0 = time.perf_counter()
            b.infer(inp)
            times[label].append(time.perf_counter() - t0)
    # Same inputs, so the backends must agree; a large gap means one of them is not running the model.
    ref = backends[0][1].infer(inputs[0]).actions
    result: dict[str, Any] = {}
    for label, b in backends:
        ms = np.array(times[label]) * 1e3
        err = float(np.max(np.abs(b.infer(inputs[0]).actions - ref)))
        result[f"{label}_p50_ms"] = float(np.percentile(ms, 50))
        result[f"{label}_p99_ms"] = float(np.percentile(ms, 99))
        print(
            f"{label:<20} p50={np.percentile(ms, 50):7.3f} ms  p90={np.percentile(ms, 90):7.3f} ms  "
            f"p99={np.percentile(ms, 99):7.3f} ms  max={ms.max():7.3f} ms  |actions-{backends[0][0]}|max={err:.2e}"
        )
        b.close()
    if "ort_cpu_p50_ms" in result and "torch_cpu_p50_ms" in result:
        result["speedup_ort_vs_torch"] = result["torch_cpu_p50_ms"] / result["ort_cpu_p50_ms"]
    if "torch_cuda_graph_p50_ms" in result and "torch_cuda_eager_p50_ms" in result:
        result["speedup_graph_vs_eager"] = (
            result["torch_cuda_eager_p50_ms"] / result["torch_cuda_graph_p50_ms"]
        )
    if "torch_compile_cuda_p50_ms" in result and "torch_cuda_eager_p50_ms" in result:
        result["speedup_compile_vs_eager"] = (
            result["torch_cuda_eager_p50_ms"] / result["torch_compile_cuda_p50_ms"]
        )
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="wam-control bench inference", description=__doc__.splitlines()[0])
    p.add_argument("--model", help="contract ONNX (with its .pt beside it); default: a fresh test model")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--runs", type=int, default=500, help="timed calls per backend")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads for ORT and torch (CPU)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (slow to start)")
    p.add_argument(
        "--preset",
        default="base",
        help="architecture of the random-init model when no --model is given: base, or compact (the bundled one)",
    )
    p.add_argument("--cameras", default="scene", help="cameras of the random-init model, comma-separated")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as td:
        model = args.model
        if model is None:
            from wam_control.model.export import make_test_model
            from wam_control.model.train import PRESETS

            if args.preset not in PRESETS:
                p.error(f"--preset: expected one of {', '.join(PRESETS)}, got {args.preset!r}")
            cameras = tuple(c for c in args.cameras.split(",") if c)
            t0 = time.perf_counter()
            model = str(
                make_test_model(Path(td) / "wam-test.onnx", camera_names=cameras, **PRESETS[args.preset])
            )
            print(
                f"model: random-init, '{args.preset}' architecture, cameras {list(cameras)}, "
                f"exported in {time.perf_counter() - t0:.1f} s"
            )
        else:
            print(f"model: {model}")
        try:
            result = run_bench(model, args.device, args.runs, args.warmup, args.threads, args.compile)
        except RuntimeError as exc:
            print(f"wam-control bench inference: {exc}", file=sys.stderr)
            return 1
    line = " ".join(f"{k}={v:.3f}" for k, v in result.items())
    print(f"device={args.device} runs={args.runs} threads={args.threads} {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
