"""`make_worker(mode, model_path, ...)`: the worker of a mode for a model file, not started."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from wam_control.policy import ModelContract, PolicyBackend
from wam_control.runtime.clock import Clock
from wam_control.runtime.worker.process import ProcessWorker
from wam_control.runtime.worker.protocol import WorkerMode
from wam_control.runtime.worker.thread import ThreadWorker

log = logging.getLogger("wam_control.runtime.worker")  # one logger for the package, as before the split

def make_worker(
    mode: WorkerMode,
    model_path: str | os.PathLike[str],
    contract: ModelContract,
    clock: Clock,
    *,
    deadline_s: float = 2.0,
    backend: str = "auto",
    backend_options: Mapping[str, Any] | None = None,
    warmup: int = 3,
    **kwargs: Any,
) -> ThreadWorker | ProcessWorker:
    """The worker of `mode` for a model file; not started. `backend_options` go to `load_backend`.

    Thread mode is right only when the backend releases the GIL while it computes; its `health()`
    reports `releases_gil` once ready, and a warning is logged otherwise.
    """
    options = dict(backend_options or {})
    if backend == "triton":
        # A remote model: check the server once, here at start-up (blocking, before any loop runs), so
        # that an unreachable server or a mismatching served model is an error naming host, port and
        # model, not a worker that keeps restarting.
        from wam_control.policy.triton_backend import check_server

        check_server(model_path, **{k: v for k, v in options.items() if k not in ("threads", "frame_check", "warmup")})
    if mode == "thread":
        from wam_control.policy import load_backend

        def factory() -> PolicyBackend:
            be = load_backend(model_path, backend, warmup=0, **options)
            if not getattr(be, "releases_gil", False):
                log.warning(
                    "inference worker: backend %s holds the GIL while it computes; the control loop "
                    "will jitter in thread mode (use inference.worker: process)",
                    be.name,
                )
            return be

        return ThreadWorker(factory, clock, deadline_s, warmup=warmup, **kwargs)
    if mode == "process":
        opts = {"backend": backend, "warmup": warmup, **options}
        return ProcessWorker(model_path, opts, contract, clock, deadline_s, **kwargs)
    raise ValueError(f"inference worker mode must be 'thread' or 'process', got {mode!r}")
