"""ONNX Runtime backend: TensorRT EP -> CUDA EP -> CPU, reporting the providers that really run."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from wam_control.policy.base import InputChecker, PolicyInput, PolicyOutput, example_input
from wam_control.policy.contract import ModelFileError, contract_from_session

log = logging.getLogger(__name__)

TRT_EP = "TensorrtExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"
PREFERENCE = (TRT_EP, CUDA_EP, CPU_EP)
_ALIASES = {"tensorrt": TRT_EP, "trt": TRT_EP, "cuda": CUDA_EP, "cpu": CPU_EP}


def _import_ort() -> Any:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ImportError(
            "the onnxruntime backend needs onnxruntime: pip install 'wam_control[onnx]' "
            "(or onnxruntime-gpu for the CUDA / TensorRT execution providers)"
        ) from exc
    return ort


def choose_providers(requested: str | Sequence[str], available: Sequence[str]) -> list[str]:
    """Providers to ask for, best first, always ending with CPU.

    "auto" takes every preferred provider the wheel was built with; an explicit list keeps its order
    but drops (with a warning) what the wheel lacks. Whether a provider actually *works* is only known
    after the session is created (see OnnxRuntimeBackend.providers).
    """
    if isinstance(requested, str):
        wanted = list(PREFERENCE) if requested == "auto" else [requested]
    else:
        wanted = list(requested)
    wanted = [_ALIASES.get(p.lower(), p) for p in wanted]
    unknown = [p for p in wanted if p not in PREFERENCE]
    if unknown:
        raise ValueError(f"unknown execution provider(s) {unknown}; expected some of {list(PREFERENCE)}")
    chosen = []
    for p in wanted:
        if p in available:
            chosen.append(p)
        elif requested != "auto":
            log.warning("onnxruntime: %s requested but this onnxruntime build lacks it", p)
    if CPU_EP not in chosen:
        chosen.append(CPU_EP)
    return chosen


class OnnxRuntimeBackend:
    name = "onnxruntime"
    releases_gil = True  # session.run releases the GIL for the whole graph

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        providers: str | Sequence[str] = "auto",
        intra_op_threads: int = 1,
        device_id: int = 0,
        fp16: bool = True,
        trt_cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        ort = _import_ort()
        self._ort = ort
        self.model_path = os.fspath(model_path)
        if not os.path.isfile(self.model_path):
            raise ModelFileError(f"model file {self.model_path} does not exist")
        self.intra_op_threads = int(intra_op_threads)

        so = ort.SessionOptions()
        # Latency over throughput: one small fixed pool, no inter-op parallelism, all graph fusions.
        so.intra_op_num_threads = self.intra_op_threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning workers burn a core between calls; the control loop needs that core.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.log_severity_level = 3

        wanted = choose_providers(providers, ort.get_available_providers())
        cache = (
            os.fspath(trt_cache_dir)
            if trt_cache_dir
            else os.path.join(os.path.dirname(self.model_path) or ".", ".ort_trt_cache")
        )
        options: dict[str, dict[str, Any]] = {
            TRT_EP: {
                "device_id": device_id,
                "trt_fp16_enable": bool(fp16),
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": cache,
                "trt_timing_cache_enable": True,
                "trt_timing_cache_path": cache,
            },
            CUDA_EP: {"device_id": device_id, "cudnn_conv_algo_search": "HEURISTIC"},
            CPU_EP: {},
        }
        try:
            self.session = ort.InferenceSession(
                self.model_path, sess_options=so, providers=[(p, options[p]) for p in wanted]
            )
        except Exception as exc:
            if wanted == [CPU_EP]:
                raise ModelFileError(
                    f"model file {self.model_path} could not be loaded by onnxruntime (corrupt or truncated?): {exc}"
                ) from None
            log.warning("onnxruntime: session with %s failed (%s); falling back to CPU", wanted, exc)
            self.session = ort.InferenceSession(self.model_path, sess_options=so, providers=[CPU_EP])
        # What the session really uses (a provider that failed to initialise is silently dropped).
        self.providers: list[str] = list(self.session.get_providers())
        dropped = [p for p in wanted if p not in self.providers]
        if dropped:
            log.warning("onnxruntime: requested %s but the session runs on %s", dropped, self.providers)
        self.contract = contract_from_session(self.session, self.model_path)
        self._checker = InputChecker(self.contract)
        self._plen = np.zeros(1, dtype=np.int64)  # preallocated batch buffer for the scalar input
        c = self.contract
        # Optional parts of contract v2: only the tensors the model has are fed / fetched.
        self._output_names = ["actions", "latent", "latent_pred"] if c.has_world_model else ["actions"]
        self._no_latent = np.zeros(0, np.float32)
        self._no_latent_pred = np.zeros((0, 0), np.float32)
        self._calls = 0

    @property
    def provider(self) -> str:
        return self.providers[0]

    def describe(self) -> str:
        extra = f"intra_op_threads={self.intra_op_threads}"
        if self.provider == TRT_EP:
            extra += " (TensorRT EP; falls back per node to " + ",".join(self.providers[1:]) + ")"
        return f"onnxruntime {self._ort.__version__} {self.provider} {extra}"

    def warmup(self, n: int = 3) -> None:
        for i in range(max(1, n)):
            self.infer(example_input(self.contract, seed=1000 + i))

    def infer(self, inp: PolicyInput) -> PolicyOutput:
        self._checker.check(inp)
        self._plen[0] = inp.prefix_len
        # [None] adds the batch dimension as a view: the caller's contiguous arrays are fed uncopied.
        feeds = {"images": inp.images[None], "state": inp.state[None]}
        c = self.contract
        if c.has_prefix:
            feeds["action_prefix"] = inp.action_prefix[None]
            feeds["prefix_len"] = self._plen
        if c.has_instruction:
            assert inp.instruction_tokens is not None  # InputChecker
            feeds["instruction_tokens"] = inp.instruction_tokens[None]
        outs = self.session.run(self._output_names, feeds)
        self._calls += 1
        if not c.has_world_model:
            return PolicyOutput(actions=outs[0][0], latent=self._no_latent, latent_pred=self._no_latent_pred)
        actions, latent, latent_pred = outs
        return PolicyOutput(actions=actions[0], latent=latent[0], latent_pred=latent_pred[0])

    def close(self) -> None:
        self.session = None
