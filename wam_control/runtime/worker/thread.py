"""Thread mode: `ThreadWorker` runs the backend in a daemon thread of this process (right when the
backend releases the GIL for the whole model call)."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from wam_control.policy import BackendUnavailable, PolicyBackend, PolicyInput, PolicyOutput
from wam_control.runtime.clock import Clock
from wam_control.runtime.worker.protocol import (
    _IN_DTYPES,
    InferenceRequest,
    InferenceResult,
    _copy_inputs,
    _describe_exc,
    _input_shapes,
    _output_error,
    _output_shapes,
)
from wam_control.runtime.worker.supervision import _Supervised

log = logging.getLogger("wam_control.runtime.worker")  # one logger for the package, as before the split

class _ThreadInstance:
    """One generation: its thread, its inbox and its own input buffers (a hung predecessor may still
    be reading the old ones)."""

    def __init__(self, gen: int) -> None:
        self.gen = gen
        self.inbox: queue.SimpleQueue[tuple[int, int, int] | None] = queue.SimpleQueue()
        self.inputs: dict[str, np.ndarray] = {}
        self.thread: threading.Thread | None = None


class ThreadWorker(_Supervised):
    """Runs the backend in a daemon thread. `backend_factory()` is called in that thread, then warmed
    up `warmup` times, before the worker reports ready."""

    mode = "thread"

    def __init__(
        self,
        backend_factory: Callable[[], PolicyBackend],
        clock: Clock,
        deadline_s: float,
        *,
        warmup: int = 3,
        startup_timeout_s: float = 300.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
    ) -> None:
        super().__init__(
            clock,
            deadline_s,
            startup_timeout_s=startup_timeout_s,
            backoff_initial_s=backoff_initial_s,
            backoff_max_s=backoff_max_s,
        )
        self._factory = backend_factory
        self._warmup = int(warmup)
        self._inst: _ThreadInstance | None = None

    def _launch(self, gen: int) -> None:
        inst = _ThreadInstance(gen)
        inst.thread = threading.Thread(
            target=self._run, args=(inst,), name=f"wam-inference-{gen}", daemon=True
        )
        self._inst = inst
        inst.thread.start()

    def _run(self, inst: _ThreadInstance) -> None:
        gen, events = inst.gen, self._events
        try:
            backend = self._factory()
            if self._warmup > 0:
                backend.warmup(self._warmup)
            c = backend.contract
            shapes = _output_shapes(c)
            # Allocated here, before "ready", so the control thread never allocates them.
            inst.inputs = {k: np.zeros(s, np.dtype(_IN_DTYPES[k])) for k, s in _input_shapes(c).items()}
        except BaseException as exc:  # any start-up failure is a crash of this generation
            events.put(("died", gen, f"backend start failed: {_describe_exc(exc)}"))
            return
        events.put(("ready", gen, backend.describe(), bool(getattr(backend, "releases_gil", False))))
        inp = PolicyInput(
            inst.inputs["images"],
            inst.inputs["state"],
            inst.inputs["action_prefix"],
            0,
            instruction_tokens=inst.inputs.get("instruction_tokens"),
        )
        try:
            while True:
                msg = inst.inbox.get()
                if msg is None:
                    break
                request_id, obs_tick, prefix_len = msg
                inp.prefix_len = prefix_len
                inp.request_id, inp.obs_tick = request_id, obs_tick
                t0 = time.perf_counter()
                out: PolicyOutput | None = None
                try:
                    raw = backend.infer(inp)
                    err = _output_error(raw, shapes)
                    if err is None:
                        # Copies: some backends reuse their output buffers on the next call.
                        out = PolicyOutput(
                            raw.actions.copy(),
                            raw.latent.copy(),
                            raw.latent_pred.copy(),
                            float(raw.frame_error),
                        )
                except BackendUnavailable as exc:
                    # The backend itself is gone (e.g. its server): a crash of this generation.
                    events.put(("died", gen, f"backend unavailable: {exc}"))
                    break
                except Exception as exc:
                    err = _describe_exc(exc)
                dt = time.perf_counter() - t0
                events.put(("result", gen, request_id, out, err, dt))
        except BaseException as exc:
            events.put(("died", gen, f"worker thread died: {_describe_exc(exc)}"))
        finally:
            try:
                backend.close()
            except Exception as exc:
                log.warning("inference worker: backend.close() failed: %s", _describe_exc(exc))

    def _send(self, request: InferenceRequest) -> None:
        inst = self._inst
        assert inst is not None
        _copy_inputs(inst.inputs, request)
        inst.inbox.put((request.request_id, int(request.obs_tick), int(request.prefix_len)))

    def _stop_instance(self, graceful: bool) -> None:
        inst, self._inst = self._inst, None
        if inst is None:
            return
        # A thread cannot be killed: it exits after its current call, and its result is discarded.
        inst.inbox.put(None)
        if graceful and self._polite and inst.thread is not None:
            inst.thread.join(timeout=2.0)

    def _alive(self) -> bool:
        inst = self._inst
        return inst is not None and inst.thread is not None and inst.thread.is_alive()

    def _death_reason(self) -> str:
        return "worker thread exited"

    def _handle(self, ev: tuple[Any, ...]) -> None:
        kind, gen = ev[0], ev[1]
        if kind == "ready":
            self._on_ready(gen, ev[2], ev[3])
        elif kind == "died":
            self._on_died(gen, ev[2])
        elif kind == "result":
            _, _, rid, out, err, dt = ev
            self._on_result(gen, rid, lambda: InferenceResult(rid, -1, out, err, dt))

    def _pump(self) -> None:
        while True:
            try:
                ev = self._events.get_nowait()
            except queue.Empty:
                return
            self._handle(ev)

    def _wait(self, timeout: float) -> None:
        try:
            ev = self._events.get(timeout=timeout)
        except queue.Empty:
            return
        self._handle(ev)
