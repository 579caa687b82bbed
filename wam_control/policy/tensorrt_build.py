"""Build a TensorRT engine from a contract ONNX (10.x and 11.x), and `wam-control build-engine`.

TensorRT and cuda-python are imported lazily; without them this module still imports and the CLI says
which package is missing. Device queries and memory go through cuda-python (`cuda.bindings.runtime`,
or `cuda.cudart` on older releases): a few MB of bindings instead of torch's ~2 GB, which keeps a
TensorRT deployment free of PyTorch.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from wam_control.policy.contract import ModelContract, read_contract
from wam_control.policy.engine_cache import EngineCache, EngineKey, atomic_write, file_sha256

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'wam_control[tensorrt]' (TensorRT wheels come from NVIDIA's package index; on Jetson use JetPack's python3-libnvinfer)"


def default_cache_dir() -> Path:
    env = os.environ.get("WAM_ENGINE_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "wam_control" / "engines"


def import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise ImportError(f"the TensorRT backend needs the tensorrt package: {INSTALL_HINT}") from exc
    return trt


def import_cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError as exc:
            raise ImportError(
                f"the TensorRT backend needs cuda-python for device memory: {INSTALL_HINT}"
            ) from exc
    return cudart


def cuda_check(result: Any) -> Any:
    """cuda-python calls return (err, *values); raise on an error, unwrap the values."""
    if not isinstance(result, tuple):
        result = (result,)
    err, rest = result[0], result[1:]
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    if not rest:
        return None
    return rest[0] if len(rest) == 1 else rest


def trt_major(trt: Any) -> int:
    return int(str(trt.__version__).split(".")[0])


def gpu_identity(cudart: Any, device: int = 0) -> tuple[str, str]:
    props = cuda_check(cudart.cudaGetDeviceProperties(device))
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return name.strip("\x00 "), f"{props.major}.{props.minor}"


def profile_shapes(contract: ModelContract, max_batch: int = 1) -> tuple:
    """Optimisation profile: batch 1 (the control loop) up to max_batch, every other dim static."""
    shapes = []
    for name, shape in sorted(contract.input_shapes(batch=1).items()):
        lo = tuple(shape)
        hi = (max_batch, *shape[1:])
        shapes.append((name, lo, lo, hi))
    return tuple(shapes)


def engine_onnx_for(model_path: str, contract: ModelContract, precision: str, major: int) -> str:
    """TensorRT 11 networks are strongly typed: FP16 has to be in the ONNX graph already."""
    if precision != "fp16" or major < 11 or contract.training_data.get("precision") == "fp16":
        return model_path
    root, _ = os.path.splitext(model_path)
    candidate = root + ".fp16.onnx"
    if os.path.isfile(candidate):
        return candidate
    raise FileNotFoundError(
        f"TensorRT {major}.x builds FP16 only from an FP16 ONNX; {candidate} not found "
        "(write it with `wam-control export --fp16`, or use --precision fp32)"
    )


def make_key(
    onnx_path: str,
    trt_version: str,
    gpu: tuple[str, str],
    precision: str,
    profile: tuple,
    workspace_bytes: int,
) -> EngineKey:
    return EngineKey(
        onnx_sha256=file_sha256(onnx_path),
        tensorrt_version=str(trt_version),
        gpu_name=gpu[0],
        compute_capability=gpu[1],
        precision=precision,
        profile_shapes=profile,
        workspace_bytes=int(workspace_bytes),
    )


def _progress_monitor(trt: Any, stream: Any) -> Any:
    class Progress(trt.IProgressMonitor):  # type: ignore[misc,name-defined]
        """Text progress for the build phases (builds take tens of seconds to minutes)."""

        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.steps: dict[str, int] = {}
            self.depth: dict[str, int] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self.steps[phase_name] = max(1, num_steps)
            self.depth[phase_name] = self.depth.get(parent_phase or "", -1) + 1 if parent_phase else 0

        def step_complete(self, phase_name: str, step: int) -> bool:
            n = self.steps.get(phase_name, 1)
            done = int(20 * (step + 1) / n)
            pad = "  " * self.depth.get(phase_name, 0)
            stream.write(f"\r{pad}{phase_name[:40]:<40} [{'#' * done}{'.' * (20 - done)}] {step + 1}/{n}")
            stream.flush()
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            stream.write("\n")
            stream.flush()

    return Progress()


def build_serialized(
    trt: Any,
    onnx_path: str,
    *,
    precision: str,
    workspace_bytes: int,
    profile: tuple,
    timing_cache_path: Path | None,
    progress: bool = True,
) -> bytes | None:
    """Parse the ONNX, configure and build; returns the plan bytes or None (errors are logged)."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # 10.x: explicit batch is the only mode (flag deprecated); 11.x: the flag is gone, typing is strong.
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    # parse_from_file (not parse(bytes)) so external weights next to the file would resolve too.
    if not parser.parse_from_file(onnx_path):
        for i in range(parser.num_errors):
            log.error("TensorRT ONNX parser: %s", parser.get_error(i))
        return None
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    if precision == "fp16" and trt_major(trt) < 11:
        config.set_flag(trt.BuilderFlag.FP16)
    opt = builder.create_optimization_profile()
    for name, lo, mid, hi in profile:
        opt.set_shape(name, lo, mid, hi)
    config.add_optimization_profile(opt)
    if timing_cache_path is not None:
        blob = timing_cache_path.read_bytes() if timing_cache_path.is_file() else b""
        config.set_timing_cache(config.create_timing_cache(blob), False)
    if progress:
        config.progress_monitor = _progress_monitor(trt, sys.stderr)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        return None
    if timing_cache_path is not None:
        atomic_write(timing_cache_path, bytes(config.get_timing_cache().serialize()))
    return bytes(plan)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="wam-control build-engine", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="contract ONNX file")
    p.add_argument("--cache-dir", default=None, help=f"engine cache (default {default_cache_dir()})")
    p.add_argument("--precision", choices=("fp16", "fp32"), default="fp16")
    p.add_argument("--workspace-mib", type=int, default=1024)
    p.add_argument("--max-batch", type=int, default=1)
    p.add_argument("--rebuild", action="store_true", help="ignore a cached engine and build again")
    p.add_argument("--device", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        contract = read_contract(args.model)
        trt = import_tensorrt()
        cudart = import_cudart()
        cuda_check(cudart.cudaSetDevice(args.device))
        onnx_path = engine_onnx_for(args.model, contract, args.precision, trt_major(trt))
        gpu = gpu_identity(cudart, args.device)
        profile = profile_shapes(contract, args.max_batch)
        workspace = args.workspace_mib << 20
        key = make_key(onnx_path, trt.__version__, gpu, args.precision, profile, workspace)
        cache = EngineCache(args.cache_dir or default_cache_dir(), stem=Path(args.model).stem)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        timing = cache.directory / f"timing-{trt.__version__}-{gpu[1]}.cache"
        t0 = time.perf_counter()
        _, how = cache.get_or_build(
            key,
            build=lambda: build_serialized(
                trt,
                onnx_path,
                precision=args.precision,
                workspace_bytes=workspace,
                profile=profile,
                timing_cache_path=timing,
            ),
            load=runtime.deserialize_cuda_engine,
            force_rebuild=args.rebuild,
        )
    except (ImportError, ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"wam-control build-engine: {exc}", file=sys.stderr)
        return 1
    plan_path = cache.paths(key)[0]
    print(
        f"engine={plan_path} how={how} tensorrt={trt.__version__} gpu={gpu[0]!r} cc={gpu[1]} "
        f"precision={args.precision} seconds={time.perf_counter() - t0:.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
