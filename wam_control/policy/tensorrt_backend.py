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
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from wam_control.policy.base import InputChecker, PolicyInput, PolicyOutput, example_input
from wam_control.policy.contract import ModelContract, read_contract
from wam_control.policy.engine_cache import EngineCache, EngineKey
from wam_control.policy.tensorrt_build import (
    INSTALL_HINT,
    build_serialized,
    cuda_check,
    default_cache_dir,
    engine_onnx_for,
    gpu_identity,
    import_cudart,
    import_tensorrt,
    make_key,
    profile_shapes,
    trt_major,
)

log = logging.getLogger(__name__)


def tensorrt_usable() -> tuple[bool, str]:
    """(True, "") when tensorrt and cuda-python are importable and a CUDA device is visible."""
    if importlib.util.find_spec("tensorrt") is None:
        return False, f"tensorrt not installed: {INSTALL_HINT}"
    if importlib.util.find_spec("cuda") is None:
        return False, f"cuda-python not installed: {INSTALL_HINT}"
    try:
        cudart = import_cudart()
        count = cuda_check(cudart.cudaGetDeviceCount())
    except Exception as exc:
        return False, f"CUDA not usable: {exc}"
    if not count:
        return False, "no CUDA device visible"
    return True, ""


class EngineRunner(Protocol):
    def run(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...

    def close(self) -> None: ...


class TrtApi(Protocol):
    version: str

    def gpu(self) -> tuple[str, str]: ...

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

    def gpu(self) -> tuple[str, str]:
        return gpu_identity(self.cudart, self.device)

    def build(
        self, onnx_path: str, precision: str, workspace_bytes: int, profile: tuple, cache_dir: Path
    ) -> bytes | None:
        timing = cache_dir / f"timing-{self.version}-{self.gpu()[1]}.cache"
        return build_serialized(
            self.trt,
            onnx_path,
            precision=precision,
            workspace_bytes=workspace_bytes,
            profile=profile,
            timing_cache_path=timing,
        )

    def deserialize(self, plan: bytes) -> Any:
        # None for a plan from another TensorRT version or GPU (or corrupt): the cache rebuilds.
        return self._runtime.deserialize_cuda_engine(plan)

    def runner(self, engine: Any, contract: ModelContract, cuda_graph: bool) -> EngineRunner:
        return _CudaRunner(self.trt, self.cudart, engine, contract, cuda_graph)


class _CudaRunner:
    """Pinned host buffers + device buffers at fixed addresses; a dedicated non-blocking stream."""

    def __init__(self, trt: Any, cudart: Any, engine: Any, contract: ModelContract, cuda_graph: bool) -> None:
        self.cudart = cudart
        self.engine = engine
        self.context = engine.create_execution_context()
        self.stream = cuda_check(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking))
        shapes = {**contract.input_shapes(1), **contract.output_shapes(1)}
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.host: dict[str, np.ndarray] = {}
        self.dev: dict[str, int] = {}
        self._host_ptrs: list[int] = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if name not in shapes:
                raise RuntimeError(f"engine tensor {name} is not in the model contract")
            shape = shapes[name]
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            nbytes = int(np.prod(shape)) * dtype.itemsize
            hptr = int(cuda_check(cudart.cudaMallocHost(nbytes)))
            self._host_ptrs.append(hptr)
            buf = (ctypes.c_byte * nbytes).from_address(hptr)
            self.host[name] = np.frombuffer(buf, dtype=dtype).reshape(shape)
            self.dev[name] = int(cuda_check(cudart.cudaMalloc(nbytes)))
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.inputs.append(name)
                self.context.set_input_shape(name, shape)
            else:
                self.outputs.append(name)
            self.context.set_tensor_address(name, self.dev[name])
        missing = self.context.infer_shapes()
        if missing:
            raise RuntimeError(f"TensorRT could not infer shapes for {missing}")
        self.cuda_graph = cuda_graph
        self._graph_exec: Any = None

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
            # Capture after the first (warm-up) enqueue; shapes and addresses are fixed from here on.
            cr = self.cudart
            cuda_check(
                cr.cudaStreamBeginCapture(
                    self.stream, cr.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
                )
            )
            self.context.execute_async_v3(int(self.stream))
            graph = cuda_check(cr.cudaStreamEndCapture(self.stream))
            self._graph_exec = cuda_check(cr.cudaGraphInstantiate(graph, 0))

    def run(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        for name in self.inputs:
            np.copyto(self.host[name], feeds[name], casting="same_kind")
            self._h2d(name)
        self._enqueue()
        for name in self.outputs:
            self._d2h(name)
        cuda_check(self.cudart.cudaStreamSynchronize(self.stream))
        return (
            self.host["actions"][0].copy(),
            self.host["latent"][0].copy(),
            self.host["latent_pred"][0].copy(),
        )

    def close(self) -> None:
        cr = self.cudart
        for ptr in self.dev.values():
            cr.cudaFree(ptr)
        for ptr in self._host_ptrs:
            cr.cudaFreeHost(ptr)
        self.dev.clear()
        self._host_ptrs.clear()
        cr.cudaStreamDestroy(self.stream)


class TensorRTBackend:
    name = "tensorrt"
    releases_gil = True  # execute_async_v3 and the stream sync run without the GIL

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
        self.gpu = self.api.gpu()
        profile = profile_shapes(self.contract)
        workspace = int(workspace_mib) << 20
        self.key: EngineKey = make_key(onnx_path, self.api.version, self.gpu, precision, profile, workspace)
        self.cache = EngineCache(cache_dir or default_cache_dir(), stem=Path(path).stem)
        engine, self.how = self.cache.get_or_build(
            self.key,
            build=lambda: self.api.build(onnx_path, precision, workspace, profile, self.cache.directory),
            load=self.api.deserialize,
            force_rebuild=force_rebuild,
        )
        log.info("tensorrt: engine %s (%s)", self.cache.paths(self.key)[0], self.how)
        self.cuda_graph = cuda_graph
        self._runner = self.api.runner(engine, self.contract, cuda_graph)
        self._checker = InputChecker(self.contract)
        self._plen = np.zeros(1, dtype=np.int64)

    def describe(self) -> str:
        graph = " + CUDA graph" if self.cuda_graph else ""
        return (
            f"tensorrt {self.api.version} {self.precision}{graph} on {self.gpu[0]} (cc {self.gpu[1]}), "
            f"engine {self.how}"
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
