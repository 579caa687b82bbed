"""The backend loader: `load_backend(path, backend, **options)` picks, builds and warms up a backend.

Backends are found by name in `BACKEND_CLASSES` ("module:Class") and imported only when chosen, so
importing the policy layer needs only numpy and no backend class is an import of this module; each
backend imports the interface (`policy.base`), never this module. The PyTorch backend runs the model layer's
network and so lives in that layer (`wam_control.model.torch_backend`; the model layer imports the
policy layer, never the reverse).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
from typing import Any

from wam_control.policy.base import BACKENDS, PolicyBackend
from wam_control.policy.contract import ContractError, ModelFileError

log = logging.getLogger(__name__)

BACKEND_CLASSES = {
    "onnxruntime": "wam_control.policy.onnxruntime_backend:OnnxRuntimeBackend",
    "tensorrt": "wam_control.policy.tensorrt_backend:TensorRTBackend",
    "triton": "wam_control.policy.triton_backend:TritonBackend",
    "torch": "wam_control.model.torch_backend:TorchBackend",
}
assert set(BACKEND_CLASSES) == set(BACKENDS) - {"auto"}, "BACKENDS and BACKEND_CLASSES disagree"


def load_backend(model_path: str | os.PathLike[str], backend: str = "auto", **options: Any) -> PolicyBackend:
    """Load a model file with the requested backend and warm it up (`warmup=N`, 0 to skip).

    "triton" calls a model served by Triton Inference Server (policy.triton_backend; options `server`,
    `model_name`, ...); "auto" never picks it. "auto" tries native TensorRT where it is installed and a GPU is visible, then ONNX Runtime (whose
    own provider choice is TensorRT EP -> CUDA EP -> CPU), then PyTorch. A failure of a preferred
    backend is logged and the next one is tried; an explicitly named backend fails loudly.

    `frame_check=<decoder.onnx>` wraps the backend so every output carries `frame_error`
    (policy.frame_check); the decoder is checked against the model here, before the first call.
    """
    warmup = int(options.pop("warmup", 3))
    frame_check = str(options.pop("frame_check", "") or "")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {list(BACKENDS)}")
    path = os.fspath(model_path)
    if backend == "auto":
        impl = _load_auto(path, options)
    else:
        impl = _construct(backend, path, options)
    if frame_check:
        from wam_control.policy.frame_check import FrameCheckBackend

        try:
            impl = FrameCheckBackend(impl, frame_check)
        except BaseException:
            impl.close()
            raise
    if warmup > 0:
        impl.warmup(warmup)
    return impl


def _backend_class(backend: str) -> Any:
    module, _, cls = BACKEND_CLASSES[backend].partition(":")
    return getattr(importlib.import_module(module), cls)


_THREADS_OPTION = {"onnxruntime": "intra_op_threads", "torch": "threads", "tensorrt": "", "triton": ""}


def _construct(backend: str, path: str, options: dict[str, Any], *, lenient: bool = False) -> PolicyBackend:
    cls = _backend_class(backend)
    options = dict(options)
    # `threads` is one knob for every backend; each spells its CPU thread count its own way.
    threads = options.pop("threads", None)
    if threads is not None and _THREADS_OPTION[backend]:
        options.setdefault(_THREADS_OPTION[backend], int(threads))
    if lenient:
        # "auto" hands each candidate only the options it understands (e.g. intra_op_threads is ORT's).
        accepted = inspect.signature(cls).parameters
        options = {k: v for k, v in options.items() if k in accepted}
    return cls(path, **options)  # type: ignore[no-any-return]


def _load_auto(path: str, options: dict[str, Any]) -> PolicyBackend:
    order = []
    if path.endswith(".onnx"):
        from wam_control.policy.tensorrt_backend import tensorrt_usable

        usable, why = tensorrt_usable()
        if usable:
            order.append("tensorrt")
        else:
            log.info("auto backend: skipping native TensorRT (%s)", why)
        order.append("onnxruntime")
    order.append("torch")
    errors = []
    for name in order:
        try:
            return _construct(name, path, dict(options), lenient=True)
        except ModelFileError:
            raise
        except FileNotFoundError as exc:
            # Only a missing model file stops "auto"; a file one backend wants beside it (TensorRT 11's
            # model.fp16.onnx, torch's model.pt) is that backend's failure: try the next one.
            if not os.path.isfile(path):
                raise
            errors.append(f"{name}: {exc}")
            log.warning("auto backend: %s failed (%s); trying the next one", name, exc)
        except Exception as exc:  # a preferred backend failing must not stop the controller
            if isinstance(exc, ContractError):
                raise
            errors.append(f"{name}: {exc}")
            log.warning("auto backend: %s failed (%s); trying the next one", name, exc)
    raise RuntimeError(f"no backend could load {path}: " + " | ".join(errors))
