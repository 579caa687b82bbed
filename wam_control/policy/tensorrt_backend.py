"""Native TensorRT backend (10.x / 11.x): cached engine, name-based tensor API, execute_async_v3.

Everything that touches TensorRT or CUDA sits behind `TrtApi` so the decisions around it (cache key,
rebuild on a rejected plan, fall back when no engine can be had) are tested with a fake API on machines
without a GPU. The real API is thin and follows ../shared/reference/apis.md; it is untested here.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import os
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from wam_control.policy.base import InputChecker, PolicyInput, PolicyOutput, example_input
from wam_control.policy.contract import ModelContract, read_contract
from wam_control.policy.engine_cache import EngineCache, EngineKey
from wam_control.policy.tensorrt_build import (
    INSTALL_HINT,
    GpuInfo,
    build_serialized,
    cuda_check,
    cuda_driver_hint,
    default_cache_dir,
    engine_onnx_for,
    gpu_identity,
    import_cudart,
    import_tensorrt,
    lint_for_tensorrt,
    make_key,
    profile_shapes,
    timing_cache_path,
    trt_major,
)

log = logging.getLogger(__name__)

# How often the inference thread looks at the stream while the GPU works (see _CudaRunner._wait).
POLL_S = 50e-6


def tensorrt_usable() -> tuple[bool, str]:
    """(True, "") when tensorrt and cuda-python are importable and a CUDA device is visible."""
    if importlib.util.find_spec("tensorrt") is None:
        return False, f"tensorrt not installed: {INSTALL_HINT}"
    if importlib.util.find_spec("cuda") is None:
        return False, f"cuda-python not installed: {INSTALL_HINT}"
    cudart = None
    try:
        cudart = import_cudart()
        count = cuda_check(cudart.cudaGetDeviceCount())
    except Exception as exc:
        hint = cuda_driver_hint(cudart) if cudart is not None else ""
        return False, f"CUDA not usable: {exc}" + (f" ({hint})" if hint else "")
    if not count:
        return False, "no CUDA device visible"
    return True, ""


class EngineRunner(Protocol):
    def run(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...

    def close(self) -> None: ...


class TrtApi(Protocol):
    version: str

    def gpu(self) -> tuple: ...

    def build(
        self, onnx_path: str, precision: str, workspace_bytes: int, profile: tuple, cache_dir: Path
    ) -> bytes | None: ...

    def deserialize(self, plan: bytes) -> Any: ...

    def runner(self, engine: Any, contract: ModelContract, cuda_graph: bool) -> EngineRunner: ...


class RealTrtApi:
    def __init__(self, device: int = 0) -> None:
        self.trt = import_tensorrt()
        self.cudart = import_cudart()
        self.device = device
        cuda_check(self.cudart.cudaSetDevice(device))
        self.version = str(self.trt.__version__)
        self._runtime = self.trt.Runtime(self.trt.Logger(self.trt.Logger.WARNING))

    def gpu(self) -> GpuInfo:
        return gpu_identity(self.cudart, self.device)

    def build(
        self, onnx_path: str, precision: str, workspace_bytes: int, profile: tuple, cache_dir: Path
    ) -> bytes | None:
        return build_serialized(
            self.trt,
            onnx_path,
            precision=precision,
            workspace_bytes=workspace_bytes,
            profile=profile,
            timing_cache_path=timing_cache_path(cache_dir, self.version, self.gpu()),
        )

    def deserialize(self, plan: bytes) -> Any:
        # None for a plan from another TensorRT version or GPU (or corrupt): the cache rebuilds.
        return self._runtime.deserialize_cuda_engine(plan)

    def runner(self, engine: Any, contract: ModelContract, cuda_graph: bool) -> EngineRunner:
        return _CudaRunner(self.trt, self.cudart, engine, contract, cuda_graph)


class _CudaRunner:
    """Pinned host buffers + device buffers at fixed addresses; a dedicated non-blocking stream.

    Shapes: inputs are set from the contract (batch 1) and each `set_input_shape` is checked; every
    buffer is then sized from the execution context (`get_tensor_shape` after the inputs are set), and an
    output whose shape disagrees with the contract is refused by name.

    CUDA graph (optional): the first run enqueues once (warm-up), waits for it, then captures one
    `execute_async_v3` and instantiates it; later runs launch the graph. Addresses and shapes never change
    here; `recapture()` drops the graph for code that changes them. `close()` destroys both graph objects.
    """

    def __init__(
        self,
        trt: Any,
        cudart: Any,
        engine: Any,
        contract: ModelContract,
        cuda_graph: bool,
        poll_s: float = POLL_S,
    ) -> None:
        self.cudart = cudart
        self.engine = engine
        self.poll_s = poll_s
        self.dev: dict[str, int] = {}
        self._host_ptrs: list[int] = []
        self._graph: Any = None
        self._graph_exec: Any = None
        self.cuda_graph = cuda_graph
        self.context = engine.create_execution_context()
        if self.context is None:
            raise RuntimeError("TensorRT could not create an execution context (out of device memory?)")
        self.stream = cuda_check(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking))
        try:
            self._allocate(trt, contract)
        except BaseException:
            self.close()
            raise

    def _allocate(self, trt: Any, contract: ModelContract) -> None:
        engine, ctx, cudart = self.engine, self.context, self.cudart
        want_in, want_out = contract.input_shapes(1), contract.output_shapes(1)
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        for name, want, have in (("inputs", want_in, self.inputs), ("outputs", want_out, self.outputs)):
            if set(have) != set(want):
                raise RuntimeError(f"engine {name} {sorted(have)} differ from the model contract's {sorted(want)}")
        for name in self.inputs:
            if not ctx.set_input_shape(name, want_in[name]):
                raise RuntimeError(
                    f"TensorRT refused input shape {list(want_in[name])} for {name} (outside the engine's "
                    "optimisation profile: rebuild the engine for this model)"
                )
        missing = ctx.infer_shapes()
        if missing:
            raise RuntimeError(f"TensorRT could not infer shapes for {missing}")
        self.host: dict[str, np.ndarray] = {}
        for name in names:
            shape = tuple(int(d) for d in ctx.get_tensor_shape(name))
            expected = want_in.get(name, want_out.get(name))
            if shape != expected:
                raise RuntimeError(
                    f"engine tensor {name} has shape {list(shape)} at batch 1, the model contract says "
                    f"{list(expected or ())}"
                )
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            nbytes = max(1, int(np.prod(shape)) * dtype.itemsize)
            hptr = int(cuda_check(cudart.cudaMallocHost(nbytes)))
            self._host_ptrs.append(hptr)
            buf = (ctypes.c_byte * nbytes).from_address(hptr)
            self.host[name] = np.frombuffer(memoryview(buf), dtype=dtype, count=int(np.prod(shape))).reshape(shape)
            self.dev[name] = int(cuda_check(cudart.cudaMalloc(nbytes)))
            if not ctx.set_tensor_address(name, self.dev[name]):
                raise RuntimeError(f"TensorRT refused the device address for {name}")

    def _h2d(self, name: str) -> None:
        a = self.host[name]
        cuda_check(
            self.cudart.cudaMemcpyAsync(
                self.dev[name],
                a.ctypes.data,
                a.nbytes,
                self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice,
                self.stream,
            )
        )

    def _d2h(self, name: str) -> None:
        a = self.host[name]
        cuda_check(
            self.cudart.cudaMemcpyAsync(
                a.ctypes.data,
                self.dev[name],
                a.nbytes,
                self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                self.stream,
            )
        )

    def _enqueue(self) -> None:
        if self._graph_exec is not None:
            cuda_check(self.cudart.cudaGraphLaunch(self._graph_exec, self.stream))
            return
        if not self.context.execute_async_v3(int(self.stream)):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        if self.cuda_graph:
            self._capture()

    def _capture(self) -> None:
        cr = self.cudart
        # Let the warm-up enqueue finish (TensorRT may allocate or initialise lazily in it) before capturing.
        cuda_check(cr.cudaStreamSynchronize(self.stream))
        cuda_check(
            cr.cudaStreamBeginCapture(self.stream, cr.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal)
        )
        ok = self.context.execute_async_v3(int(self.stream))
        # End the capture whatever happened, so the stream leaves capture mode.
        end = cr.cudaStreamEndCapture(self.stream)
        err, graph = end[0], (end[1] if len(end) > 1 else None)
        if not ok or int(err) != 0:
            if graph is not None and int(err) == 0:
                cr.cudaGraphDestroy(graph)
            why = "execute_async_v3 returned False" if not ok else f"cudaStreamEndCapture: {err}"
            raise RuntimeError(f"CUDA graph capture of the TensorRT engine failed ({why})")
        self._graph = graph
        try:
            self._graph_exec = cuda_check(cr.cudaGraphInstantiate(graph, 0))
        except BaseException:
            self._drop_graph()
            raise

    def _drop_graph(self) -> None:
        cr = self.cudart
        if self._graph_exec is not None:
            cr.cudaGraphExecDestroy(self._graph_exec)
            self._graph_exec = None
        if self._graph is not None:
            cr.cudaGraphDestroy(self._graph)
            self._graph = None

    def recapture(self) -> None:
        """Forget the captured graph; the next run enqueues directly and captures again."""
        self._wait()
        self._drop_graph()

    def _wait(self) -> None:
        """Wait for the stream by polling cudaStreamQuery and sleeping in between: time.sleep releases the
        GIL whatever the cuda-python version (a blocking cudaStreamSynchronize releases it only where
        cuda-bindings does), so the control loop keeps running while the GPU works."""
        cr = self.cudart
        not_ready = int(cr.cudaError_t.cudaErrorNotReady)
        while True:
            res = cr.cudaStreamQuery(self.stream)
            err = res[0] if isinstance(res, tuple) else res
            if int(err) != not_ready:
                cuda_check(res)
                return
            time.sleep(self.poll_s)

    def run(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        for name in self.inputs:
            np.copyto(self.host[name], feeds[name], casting="same_kind")
            self._h2d(name)
        self._enqueue()
        for name in self.outputs:
            self._d2h(name)
        self._wait()
        return (
            self.host["actions"][0].copy(),
            self.host["latent"][0].copy(),
            self.host["latent_pred"][0].copy(),
        )

    def close(self) -> None:
        cr = self.cudart
        if getattr(self, "stream", None) is None:
            return
        cr.cudaStreamSynchronize(self.stream)
        self._drop_graph()
        for ptr in self.dev.values():
            cr.cudaFree(ptr)
        for ptr in self._host_ptrs:
            cr.cudaFreeHost(ptr)
        self.dev.clear()
        self._host_ptrs.clear()
        cr.cudaStreamDestroy(self.stream)
        self.stream = None


class TensorRTBackend:
    name = "tensorrt"
    # TensorRT's binding releases the GIL inside execute_async_v3; the wait for the stream polls with
    # time.sleep (see _CudaRunner._wait), which releases it too, whatever cuda-python's version. The
    # copies and the polling itself are short calls that hold it.
    releases_gil = True

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        precision: str = "fp16",
        workspace_mib: int = 1024,
        cuda_graph: bool = False,
        device: int = 0,
        force_rebuild: bool = False,
        max_batch: int = 1,
        api: TrtApi | None = None,
    ) -> None:
        if precision not in ("fp16", "fp32"):
            raise ValueError(f"precision must be fp16 or fp32, got {precision!r}")
        path = os.fspath(model_path)
        self.contract = read_contract(path)
        self.api: TrtApi = api if api is not None else RealTrtApi(device)
        major = int(self.api.version.split(".")[0])
        onnx_path = engine_onnx_for(path, self.contract, precision, major)
        self.precision = precision
        self.gpu = GpuInfo(*self.api.gpu())
        profile = profile_shapes(self.contract, max_batch)
        workspace = int(workspace_mib) << 20
        want = make_key(onnx_path, self.api.version, self.gpu, precision, profile, workspace)
        self.cache = EngineCache(cache_dir or default_cache_dir(), stem=Path(path).stem)
        # An engine built ahead of time with `build-engine --max-batch N` serves batch 1 too: use it.
        self.key: EngineKey = want if force_rebuild else self.cache.find_covering(want)
        key = self.key

        def build() -> bytes | None:
            lint_for_tensorrt(onnx_path)  # a clear list of problems instead of a parser error
            return self.api.build(onnx_path, precision, workspace, key.profile_shapes, self.cache.directory)

        engine, self.how = self.cache.get_or_build(
            self.key, build=build, load=self.api.deserialize, force_rebuild=force_rebuild
        )
        log.info("tensorrt: engine %s (%s)", self.cache.paths(self.key)[0], self.how)
        self.cuda_graph = cuda_graph
        self._runner = self.api.runner(engine, self.contract, cuda_graph)
        self._checker = InputChecker(self.contract)
        self._plen = np.zeros(1, dtype=np.int64)

    def describe(self) -> str:
        graph = " + CUDA graph" if self.cuda_graph else ""
        return (
            f"tensorrt {self.api.version} {self.precision}{graph} on {self.gpu.name} "
            f"(cc {self.gpu.compute_capability}), engine {self.how}"
        )

    def warmup(self, n: int = 3) -> None:
        for i in range(max(1, n)):
            self.infer(example_input(self.contract, seed=1000 + i))

    def infer(self, inp: PolicyInput) -> PolicyOutput:
        self._checker.check(inp)
        self._plen[0] = inp.prefix_len
        actions, latent, latent_pred = self._runner.run(
            {
                "images": inp.images[None],
                "state": inp.state[None],
                "action_prefix": inp.action_prefix[None],
                "prefix_len": self._plen,
            }
        )
        return PolicyOutput(actions=actions, latent=latent, latent_pred=latent_pred)

    def close(self) -> None:
        self._runner.close()


__all__ = ["EngineRunner", "RealTrtApi", "TensorRTBackend", "TrtApi", "tensorrt_usable", "trt_major"]
