"""Process mode: `ProcessWorker` runs the backend in a spawned child (crash isolation); inputs and
outputs cross in shared memory allocated once, a request crosses the pipe as three small ints."""

from __future__ import annotations

import contextlib
import functools
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from collections.abc import Mapping
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np

from wam_control.policy import ModelContract, PolicyOutput
from wam_control.runtime.clock import Clock
from wam_control.runtime.worker.protocol import (
    _IN_DTYPES,
    _OUTPUTS,
    InferenceRequest,
    InferenceResult,
    _copy_inputs,
    _describe_exc,
    _input_shapes,
    _output_shapes,
)
from wam_control.runtime.worker.shm import _layout, _process_main, _views
from wam_control.runtime.worker.supervision import _Supervised


class ProcessWorker(_Supervised):
    """Runs the backend in a spawned child: `loader(model_path, **backend_options)` there
    (default `wam_control.policy.load_backend`, which also warms the backend up: `warmup` option).

    `loader` is "module:function" so the child can import it; tests use it for scripted backends.
    """

    mode = "process"

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        backend_options: Mapping[str, Any],
        contract: ModelContract,
        clock: Clock,
        deadline_s: float,
        *,
        loader: str = "wam_control.policy:load_backend",
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
        self.model_path = os.fspath(model_path)
        self.backend_options = dict(backend_options)
        self.contract = contract
        self.loader = loader
        self._ctx = mp.get_context("spawn")
        self._shm: list[SharedMemory] = []
        self._in: dict[str, np.ndarray] = {}
        self._out: dict[str, np.ndarray] = {}
        self._spec: dict[str, Any] = {}
        self._proc: Any = None  # multiprocessing Process of the current generation
        self._conn: Connection | None = None
        self._pending: tuple[int, Any] | None = None  # (gen, launcher thread) until "launched"

    def _prepare(self) -> None:
        in_shapes = _input_shapes(self.contract)
        in_layout, in_size = _layout(in_shapes, _IN_DTYPES)
        out_layout, out_size = _layout(
            {**_output_shapes(self.contract), "frame_error": (1,)},
            {**dict.fromkeys(_OUTPUTS, "<f4"), "frame_error": "<f8"},
        )
        shm_in = SharedMemory(create=True, size=in_size)
        try:
            shm_out = SharedMemory(create=True, size=out_size)
        except BaseException:
            shm_in.close()
            shm_in.unlink()
            raise
        self._shm = [shm_in, shm_out]
        self._in = _views(shm_in.buf, in_layout)
        self._out = _views(shm_out.buf, out_layout)
        self._spec = {
            "in_name": shm_in.name,
            "out_name": shm_out.name,
            "in_layout": in_layout,
            "out_layout": out_layout,
            "model_path": self.model_path,
            "options": self.backend_options,
            "loader": self.loader,
        }

    @property
    def shm_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self._shm)

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def _release(self) -> None:
        # Views must go before close(): SharedMemory refuses to close while buffers are exported.
        self._in = {}
        self._out = {}
        for shm in self._shm:
            try:
                shm.close()
            finally:
                shm.unlink()
        self._shm = []

    def _launch(self, gen: int) -> None:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(
            target=_process_main, args=(child_conn, self._spec), name=f"wam-inference-{gen}", daemon=True
        )
        events = self._events

        def launch() -> None:
            # Process.start() forks and execs; kept off the control thread.
            try:
                proc.start()
            except BaseException as exc:
                parent_conn.close()
                events.put(("died", gen, f"could not start the worker process: {_describe_exc(exc)}"))
                return
            finally:
                child_conn.close()  # so that the child's death reads as EOF here
            events.put(("launched", gen, proc, parent_conn))

        t = threading.Thread(target=launch, name=f"wam-inference-launch-{gen}", daemon=True)
        self._pending = (gen, t)
        t.start()

    def _stop_instance(self, graceful: bool) -> None:
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        pending, self._pending = self._pending, None
        if graceful and pending is not None:
            # close(): the launcher may be about to hand over a process; take it so it is stopped too.
            pending[1].join(timeout=10.0)
            self._pump_launches(adopt_any=True)
            proc, conn = self._proc, self._conn
            self._proc = self._conn = None
        if proc is None:
            return
        if graceful and self._polite and conn is not None:
            with contextlib.suppress(OSError):
                conn.send(None)
            proc.join(timeout=2.0)
        if proc.is_alive():
            proc.kill()
        if conn is not None:
            conn.close()
        if graceful:
            proc.join(timeout=5.0)
        else:
            # Reap without blocking the caller.
            threading.Thread(target=proc.join, args=(10.0,), name="wam-inference-reap", daemon=True).start()

    def _send(self, request: InferenceRequest) -> None:
        assert self._conn is not None
        _copy_inputs(self._in, request)
        self._conn.send(("infer", request.request_id, int(request.obs_tick), int(request.prefix_len)))

    def _alive(self) -> bool:
        if self._proc is None:
            return self._pending is not None  # still launching
        return bool(self._proc.is_alive())

    def _death_reason(self) -> str:
        code = None if self._proc is None else self._proc.exitcode
        if code is not None and code < 0:
            try:
                return f"worker process killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"worker process killed by signal {-code}"
        return f"worker process exited (code {code})"

    def _extra_health(self) -> dict[str, float | int | str]:
        return {"pid": -1 if self._proc is None else int(self._proc.pid or -1)}

    def _pump_launches(self, adopt_any: bool = False) -> None:
        while True:
            try:
                ev = self._events.get_nowait()
            except queue.Empty:
                return
            kind, gen = ev[0], ev[1]
            if kind == "launched":
                proc, conn = ev[2], ev[3]
                if (gen == self._gen or adopt_any) and self._proc is None:
                    self._proc, self._conn, self._pending = proc, conn, None
                else:  # launched for a generation given up meanwhile
                    proc.kill()
                    conn.close()
                    threading.Thread(target=proc.join, args=(10.0,), daemon=True).start()
            elif kind == "died":
                if gen == self._gen:
                    self._pending = None
                self._on_died(gen, ev[2])

    def _pump(self) -> None:
        self._pump_launches()
        conn = self._conn
        gen = self._gen
        while conn is not None and self._conn is conn:
            try:
                if not conn.poll(0):
                    return
                msg = conn.recv()
            except (EOFError, OSError):
                self._on_died(gen, self._death_reason_after_eof())
                return
            kind = msg[0]
            if kind == "ready":
                self._on_ready(gen, msg[1], msg[2])
            elif kind == "died":
                self._on_died(gen, msg[1])
            elif kind == "done":
                _, rid, dt, err = msg
                self._on_result(gen, rid, functools.partial(self._read_result, rid, dt, err))

    def _death_reason_after_eof(self) -> str:
        if self._proc is not None:
            self._proc.join(timeout=0.05)  # the pipe closes as the process exits; give it a moment
        return self._death_reason()

    def _read_result(self, request_id: int, dt: float, err: str | None) -> InferenceResult:
        out = None
        if err is None:
            o = self._out
            out = PolicyOutput(
                o["actions"].copy(), o["latent"].copy(), o["latent_pred"].copy(), float(o["frame_error"][0])
            )
        return InferenceResult(request_id, -1, out, err, dt)

    def _wait(self, timeout: float) -> None:
        conn = self._conn
        if conn is not None:
            try:
                conn.poll(timeout)
            except (EOFError, OSError):
                return
        else:
            time.sleep(min(timeout, 0.01))
