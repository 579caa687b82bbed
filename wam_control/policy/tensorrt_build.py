"""Build a TensorRT engine from a contract ONNX (10.x and 11.x), and `wam-control build-engine`.

TensorRT and cuda-python are imported lazily; without them this module still imports and the CLI says
which package is missing. Device queries and memory go through cuda-python (`cuda.bindings.runtime`,
or `cuda.cudart` on older releases): a few MB of bindings instead of torch's ~2 GB, which keeps a
TensorRT deployment free of PyTorch.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

from wam_control.policy.contract import ModelContract, read_contract
from wam_control.policy.engine_cache import EngineCache, EngineError, EngineKey, atomic_write, onnx_sha256

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'wam_control[tensorrt]' (TensorRT wheels come from NVIDIA's package index; on Jetson use JetPack's python3-libnvinfer)"
# cuda-python 13.x needs a CUDA 13 driver (R580+); JetPack 6 and other CUDA 12 hosts need 12.x.
CUDA12_HINT = "on a CUDA 12 driver install pip install 'cuda-python>=12.0,<13'"


class GpuInfo(NamedTuple):
    """What an engine is tied to besides the TensorRT version."""

    name: str
    compute_capability: str
    sm_count: int = 0
    memory_gib: int = 0


class Fp16ModelMissing(EngineError):
    """TensorRT 11 was asked for FP16 but there is no FP16 ONNX beside the model (an engine problem, so
    `auto` falls back to the next backend instead of stopping)."""


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
        raise RuntimeError(f"CUDA error {getattr(err, 'name', '')} ({int(err)})".replace(" ()", ""))
    if not rest:
        return None
    return rest[0] if len(rest) == 1 else rest


def trt_major(trt: Any) -> int:
    return int(str(trt.__version__).split(".")[0])


def cuda_python_version() -> str:
    for dist in ("cuda-bindings", "cuda-python"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return ""


def cuda_driver_hint(cudart: Any) -> str:
    """Why CUDA calls fail when cuda-python is newer than the driver (13.x bindings on a CUDA 12 driver)."""
    try:
        driver = int(cuda_check(cudart.cudaDriverGetVersion()))
    except Exception:
        return ""
    bindings = cuda_python_version()
    if not driver or not bindings:
        return ""
    driver_major, bindings_major = driver // 1000, int(bindings.split(".")[0])
    if bindings_major > driver_major:
        return (
            f"cuda-python {bindings} needs a CUDA {bindings_major} driver, this driver supports CUDA "
            f"{driver_major}.{driver % 1000 // 10}: {CUDA12_HINT}"
        )
    return ""


def gpu_identity(cudart: Any, device: int = 0) -> GpuInfo:
    props = cuda_check(cudart.cudaGetDeviceProperties(device))
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return GpuInfo(
        name.strip("\x00 "),
        f"{props.major}.{props.minor}",
        int(props.multiProcessorCount),
        int(round(int(props.totalGlobalMem) / 2**30)),
    )


def timing_cache_path(directory: Path, trt_version: str, gpu: tuple) -> Path:
    """Timing caches are specific to the TensorRT version and the device: key the file on both, in full."""
    info = GpuInfo(*gpu)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", info.name).strip("-").lower() or "gpu"
    ident = hashlib.sha256(repr(tuple(info)).encode()).hexdigest()[:8]
    return Path(directory) / f"timing-{trt_version}-{slug}-cc{info.compute_capability}-{ident}.cache"


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
    raise Fp16ModelMissing(
        f"TensorRT {major}.x builds FP16 only from an FP16 ONNX; {candidate} not found "
        "(write it with `wam-control export --fp16`, or use --precision fp32)"
    )


def make_key(
    onnx_path: str,
    trt_version: str,
    gpu: tuple,
    precision: str,
    profile: tuple,
    workspace_bytes: int,
) -> EngineKey:
    info = GpuInfo(*gpu)
    return EngineKey(
        onnx_sha256=onnx_sha256(onnx_path),
        tensorrt_version=str(trt_version),
        gpu_name=info.name,
        compute_capability=info.compute_capability,
        precision=precision,
        profile_shapes=profile,
        workspace_bytes=int(workspace_bytes),
        sm_count=int(info.sm_count),
        memory_gib=int(info.memory_gib),
    )


def lint_for_tensorrt(onnx_path: str) -> None:
    """Run the TensorRT compatibility lint before TensorRT sees the file (TrtCompatError on errors).

    Needs the `onnx` package (part of the tensorrt extra); without it the parser is the only check."""
    try:
        from wam_control.policy.trt_lint import lint_onnx
    except ImportError:  # pragma: no cover - trt_lint imports onnx lazily
        return
    try:
        import onnx  # noqa: F401
    except ImportError:
        log.warning("onnx not installed: skipping the TensorRT compatibility lint of %s", onnx_path)
        return
    report = lint_onnx(onnx_path)
    for finding in report.warnings:
        log.warning("%s", finding)
    report.raise_for_errors()


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
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        # TF32 is on by default: an "fp32" engine would run its matmuls/convs with 10-bit mantissas.
        config.clear_flag(trt.BuilderFlag.TF32)
    opt = builder.create_optimization_profile()
    for name, lo, mid, hi in profile:
        opt.set_shape(name, lo, mid, hi)
    config.add_optimization_profile(opt)
    use_cache = timing_cache_path is not None and _attach_timing_cache(config, timing_cache_path)
    if progress:
        config.progress_monitor = _progress_monitor(trt, sys.stderr)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        return None
    if use_cache and timing_cache_path is not None:
        _save_timing_cache(config, timing_cache_path)  # never loses the plan: failures are logged
    return bytes(plan)


def _checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _read_timing_cache(path: Path) -> bytes:
    """The cache bytes if the file and its checksum agree; b"" (start fresh) for a missing, truncated or
    corrupt cache, which is moved aside so the next build does not trip over it again."""
    if not path.is_file():
        return b""
    try:
        blob = path.read_bytes()
        want = _checksum_path(path).read_text().strip()
    except OSError as exc:
        log.warning("timing cache %s unreadable (%s); starting a fresh one", path, exc)
        want, blob = "", b""
    if blob and hashlib.sha256(blob).hexdigest() == want:
        return blob
    log.warning("timing cache %s fails its checksum (truncated or corrupt); starting a fresh one", path)
    for p in (path, _checksum_path(path)):
        with contextlib.suppress(OSError):
            p.unlink()
    return b""


def _attach_timing_cache(config: Any, path: Path) -> bool:
    """Give the builder the cached timings (or a fresh cache); False when TensorRT takes no cache at all."""
    blob = _read_timing_cache(path)
    for data in (blob, b"") if blob else (b"",):
        try:
            cache = config.create_timing_cache(data)
        except Exception as exc:
            log.warning("TensorRT could not read timing cache %s (%s)", path, exc)
            continue
        if cache is not None and config.set_timing_cache(cache, False):
            return True
        log.warning(
            "TensorRT refused the %s timing cache %s%s",
            "stored" if data else "fresh",
            path,
            "; retrying with a fresh one" if data else "",
        )
    log.warning("building without a timing cache")
    return False


def _save_timing_cache(config: Any, path: Path) -> None:
    try:
        cache = config.get_timing_cache()
        if cache is None:
            log.warning("TensorRT returned no timing cache after the build; %s not updated", path)
            return
        blob = bytes(cache.serialize())
        atomic_write(path, blob)
        atomic_write(_checksum_path(path), hashlib.sha256(blob).hexdigest().encode())
    except Exception as exc:
        log.warning("could not save timing cache %s (%s); the engine is unaffected", path, exc)


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
    if args.max_batch < 1:
        print("wam-control build-engine: --max-batch must be >= 1", file=sys.stderr)
        return 2
    try:
        contract = read_contract(args.model)
        # Before TensorRT is imported or invoked: a clear list of what its parser would refuse.
        lint_for_tensorrt(args.model)
        trt = import_tensorrt()
        cudart = import_cudart()
        cuda_check(cudart.cudaSetDevice(args.device))
        onnx_path = engine_onnx_for(args.model, contract, args.precision, trt_major(trt))
        if onnx_path != args.model:
            lint_for_tensorrt(onnx_path)
        gpu = gpu_identity(cudart, args.device)
        profile = profile_shapes(contract, args.max_batch)
        workspace = args.workspace_mib << 20
        key = make_key(onnx_path, trt.__version__, gpu, args.precision, profile, workspace)
        cache = EngineCache(args.cache_dir or default_cache_dir(), stem=Path(args.model).stem)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        timing = timing_cache_path(cache.directory, trt.__version__, gpu)
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
        # ValueError covers ContractError, ModelFileError and the lint's TrtCompatError;
        # RuntimeError covers EngineError (build failed, no FP16 ONNX for TensorRT 11).
        print(f"wam-control build-engine: {exc}", file=sys.stderr)
        return 1
    plan_path = cache.paths(key)[0]
    print(
        f"engine={plan_path} how={how} tensorrt={trt.__version__} gpu={gpu.name!r} cc={gpu.compute_capability} "
        f"sms={gpu.sm_count} memory_gib={gpu.memory_gib} precision={args.precision} max_batch={args.max_batch} "
        f"seconds={time.perf_counter() - t0:.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
