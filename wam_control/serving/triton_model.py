"""The WAM model as a Triton Python-backend model: ONNX Runtime inside Triton's backend stub process.

This file is written as `<repository>/<name>/1/model.py` by `wam-control serve --runtime direct` and by
`wam-control triton-repo --platform python`; Triton's Python backend imports it in its stub process
(`triton_python_backend_stub`, one per model instance) and calls `execute()` with the requests of one
dynamic batch. The model runs in that process: no further hop (pytriton runs the user's function in yet
another process, reached over ZMQ and shared memory, ~8 ms per request on a 2-core CPU).

Parameters of the model config (string values):
    onnx_path          the model file (default: `model.onnx` next to this file, in the version folder)
    providers          ONNX Runtime providers: auto|cpu|cuda|tensorrt (default auto)
    intra_op_threads   ONNX Runtime intra-op threads (default 1)

With wam_control importable in the stub's Python environment (as under `wam-control serve`), the
session is `OnnxRuntimeBackend`'s, the very one a robot runs in-process (same providers, options,
TensorRT EP cache), so remote and in-process outputs are equal. Otherwise (a stock Triton container
with onnxruntime installed) a plain session with the same options.

Not imported by wam_control itself: `triton_python_backend_utils` exists only inside the stub.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np


def _plain_session(path: str, providers: str, threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    available = ort.get_available_providers()
    order = {
        "auto": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
        "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
        "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
        "cpu": ["CPUExecutionProvider"],
    }.get(providers, ["CPUExecutionProvider"])
    return ort.InferenceSession(path, so, providers=[p for p in order if p in available])


class TritonPythonModel:
    """Triton's Python-backend model interface: initialize / execute / finalize."""

    def initialize(self, args: dict[str, str]) -> None:
        import triton_python_backend_utils as pb_utils

        self._pb = pb_utils
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in (config.get("parameters") or {}).items()}
        here = os.path.join(args["model_repository"], args["model_version"])
        path = params.get("onnx_path") or os.path.join(here, "model.onnx")
        providers = params.get("providers") or "auto"
        threads = int(params.get("intra_op_threads") or 1)
        try:
            from wam_control.policy.onnxruntime_backend import OnnxRuntimeBackend
        except ImportError:
            self.session = _plain_session(path, providers, threads)
            what = f"onnxruntime {self.session.get_providers()}"
        else:
            backend = OnnxRuntimeBackend(path, providers=providers, intra_op_threads=threads)
            self.session = backend.session
            what = backend.describe()
        # Inputs the model takes, in the config's order; per-request scalars (prefix_len: dims [1], or [] by
        # reshape) are flattened to the model's [B].
        model_inputs = {i.name for i in self.session.get_inputs()}
        self.inputs = [i["name"] for i in config["input"] if i["name"] in model_inputs]
        self.scalars = {i["name"] for i in config["input"] if [int(d) for d in i.get("dims", [])] == [1]}
        # Output names and dtypes as the config declares them (the order of the session's run()).
        self.outputs = [o["name"] for o in config["output"]]
        self.dtypes = [pb_utils.triton_string_to_numpy(o["data_type"]) for o in config["output"]]
        self.executions = 0
        print(f"wam model {config.get('name')!r}: {path}, {what}", flush=True)

    def execute(self, requests: list[Any]) -> list[Any]:
        pb = self._pb
        get = pb.get_input_tensor_by_name
        # One request per robot; Triton's dynamic batcher hands over what queued while the model ran.
        per_request = [[get(r, n).as_numpy() for n in self.inputs] for r in requests]
        sizes = [int(arrays[0].shape[0]) for arrays in per_request]
        if len(per_request) == 1:
            batch = per_request[0]
        else:
            batch = [np.concatenate(parts) for parts in zip(*per_request, strict=True)]
        feeds = {
            n: (a.reshape(-1) if n in self.scalars else a) for n, a in zip(self.inputs, batch, strict=True)
        }
        try:
            outs = self.session.run(self.outputs, feeds)
        except Exception as exc:  # a bad batch fails its requests, not the server
            return [pb.InferenceResponse(output_tensors=[], error=pb.TritonError(str(exc))) for _ in requests]
        self.executions += 1
        responses = []
        start = 0
        for n in sizes:
            tensors = [
                pb.Tensor(name, np.ascontiguousarray(out[start : start + n], dtype=dt))
                for name, out, dt in zip(self.outputs, outs, self.dtypes, strict=True)
            ]
            responses.append(pb.InferenceResponse(output_tensors=tensors))
            start += n
        return responses

    def finalize(self) -> None:
        self.session = None
