"""Asynchronous inference: the control loop hands over one observation and never waits for the answer.

Two modes behind one `InferenceWorker` protocol:

- `ThreadWorker` runs `backend.infer` in a daemon thread of this process. Cheapest hand-over; right
  when the backend releases the GIL for the whole model call (ONNX Runtime, TensorRT).
- `ProcessWorker` runs the backend in a child process started with multiprocessing "spawn" (a fresh
  interpreter: forking a parent that already runs ONNX Runtime / CUDA thread pools is unsafe, and the
  forkserver would have to import the same libraries anyway). Inputs and outputs live in shared memory
  allocated once; a request crosses the pipe as a tuple of three small ints, so no large array is
  pickled on the hot path. A crash of the model or its runtime kills only the child.

Both are supervised the same way, from the control thread, without blocking it: `check(now)` detects a
dead worker (thread/process gone, pipe closed) and a hung one (a request in flight longer than
`deadline_s` on the injected clock), abandons the request (reported as an error result), restarts the
worker after an exponential backoff, and counts everything for `health()`. A late result of an
abandoned request is discarded. Starting or restarting never blocks the caller: backends are created
and warmed up inside the worker, which reports ready when done. A backend that raises `BackendUnavailable` (a remote model
server gone or too slow) is treated as a crash of the worker, not as one bad result.

Only the thread that owns the worker (the control thread) may call submit/poll/check/health.
"""

from __future__ import annotations

import abc
import collections
import contextlib
import functools
import importlib
import logging
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory
from typing import Any, Literal, Protocol

import numpy as np

from wam_control.policy import BackendUnavailable, ModelContract, PolicyBackend, PolicyInput, PolicyOutput
from wam_control.runtime.clock import Clock

log = logging.getLogger(__name__)

WorkerMode = Literal["thread", "process"]
_INPUTS = ("images", "state", "action_prefix", "instruction_tokens")
_IN_DTYPES = {"images": "u1", "state": "<f4", "action_prefix": "<f4", "instruction_tokens": "<i8"}
_OUTPUTS = ("actions", "latent", "latent_pred")


@dataclass
class InferenceRequest:
    """One observation to run. The worker copies the arrays in `submit`; the caller may reuse them."""

    request_id: int
    obs_tick: int
    images: np.ndarray  # uint8 [N_cam, H, W, 3]
    state: np.ndarray  # float32 [D]
    action_prefix: np.ndarray  # float32 [H_act, D]; rows >= prefix_len are ignored by the model
    prefix_len: int
    instruction_tokens: np.ndarray | None = None
    """int64 [L]: the prompt's token ids, for a model that takes them (copied like the other inputs)."""


@dataclass
class InferenceResult:
    """The answer to one request. `output` arrays are owned by the receiver (copies, never reused)."""

    request_id: int
    obs_tick: int
    output: PolicyOutput | None
    error: str | None
    compute_s: float
    """Model time measured inside the worker (s); for an abandoned request, time it was in flight."""


class InferenceWorker(Protocol):
    busy: bool

    def start(self) -> None: ...

    def close(self) -> None: ...

    def submit(self, request: InferenceRequest) -> bool: ...

    def poll(self) -> InferenceResult | None: ...

    def check(self, now: float) -> None: ...

    @property
    def restarts(self) -> int:
        """Restarts so far: cheap, so the control loop can watch it every tick (health() allocates)."""
        ...

    @property
    def last_error(self) -> str: ...

    def health(self) -> dict[str, float | int | str]: ...


def _output_shapes(contract: ModelContract) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v[1:]) for k, v in contract.output_shapes(batch=1).items()}


def _input_shapes(contract: ModelContract) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v[1:]) for k, v in contract.input_shapes(batch=1).items() if k in _INPUTS}


def _output_error(out: Any, shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """Why a backend's output cannot be used (shape or type); None if it can. Values are not judged here."""
    if not isinstance(out, PolicyOutput):
        return f"backend returned {type(out).__name__}, expected PolicyOutput"
    for name, shape in shapes.items():
        arr = getattr(out, name)
        if not isinstance(arr, np.ndarray) or arr.shape != shape:
            got = list(arr.shape) if isinstance(arr, np.ndarray) else type(arr).__name__
            return f"model output {name!r} has shape {got}, expected {list(shape)}"
    return None


def _describe_exc(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


@dataclass
class _Inflight:
    request_id: int
    obs_tick: int
    t_submit: float


class _Supervised(abc.ABC):
    """State machine shared by both modes: starting -> ready -> (crash | hang) -> backoff -> starting.

    Subclasses provide the mechanics: _launch, _stop_instance, _send, _pump_instance, _alive, _wait.
    """

    mode: str = ""

    def __init__(
        self,
        clock: Clock,
        deadline_s: float,
        *,
        startup_timeout_s: float = 300.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
    ) -> None:
        if deadline_s <= 0:
            raise ValueError(f"deadline_s must be > 0, got {deadline_s}")
        self.clock = clock
        self.deadline_s = float(deadline_s)
        self.startup_timeout_s = float(startup_timeout_s)
        self.backoff_initial_s = float(backoff_initial_s)
        self.backoff_max_s = float(backoff_max_s)
        self._state = "stopped"
        self._gen = 0
        self._inflight: _Inflight | None = None
        self._results: collections.deque[InferenceResult] = collections.deque()
        self._events: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._t_launch = 0.0
        self._restart_at = 0.0
        self._backoff = 0.0
        self._failures_in_row = 0
        self._describe = ""
        self._releases_gil = -1
        self._last_error = ""
        self._polite = False
        self._n = collections.Counter[str]()

    # -------------------------------------------------------------- protocol

    @property
    def busy(self) -> bool:
        return self._inflight is not None

    @property
    def state(self) -> str:
        return self._state

    @property
    def restarts(self) -> int:
        return self._n["restarts"]

    @property
    def last_error(self) -> str:
        return self._last_error

    @property
    def ready(self) -> bool:
        return self._state == "ready"

    def start(self) -> None:
        """Launch the worker; returns at once. It becomes ready once its backend is loaded and warm."""
        if self._state != "stopped":
            raise RuntimeError(f"{type(self).__name__}.start: already {self._state}")
        self._prepare()
        self._launch_new(self.clock.now())

    def submit(self, request: InferenceRequest) -> bool:
        if self._state != "ready" or self._inflight is not None:
            return False
        now = self.clock.now()
        try:
            self._send(request)
        except (BrokenPipeError, EOFError, ConnectionError, OSError) as exc:
            self._fail("crash", f"worker unreachable: {_describe_exc(exc)}", now)
            return False
        self._inflight = _Inflight(request.request_id, request.obs_tick, now)
        self._n["submitted"] += 1
        return True

    def poll(self) -> InferenceResult | None:
        self._pump()
        return self._results.popleft() if self._results else None

    def check(self, now: float) -> None:
        self._pump()
        st = self._state
        if st in ("starting", "ready") and not self._alive():
            # A dying worker posts its reason before it exits: collect it, then report what is left.
            self._pump()
            if self._state in ("starting", "ready"):
                self._fail("crash", self._death_reason(), now)
        elif st == "ready" and self._inflight is not None and now - self._inflight.t_submit > self.deadline_s:
            self._fail(
                "hang",
                f"request {self._inflight.request_id} in flight {now - self._inflight.t_submit:.3f} s "
                f"> deadline {self.deadline_s:.3f} s",
                now,
            )
        elif st == "starting" and now - self._t_launch > self.startup_timeout_s:
            self._fail("startup_timeout", f"not ready after {self.startup_timeout_s:.1f} s", now)
        elif st == "backoff" and now >= self._restart_at:
            self._launch_new(now)

    def health(self) -> dict[str, float | int | str]:
        now = self.clock.now()
        h: dict[str, float | int | str] = {
            "mode": self.mode,
            "state": self._state,
            "restarts": self._n["restarts"],
            "crashes": self._n["crash"],
            "hangs": self._n["hang"],
            "startup_timeouts": self._n["startup_timeout"],
            "model_errors": self._n["model_errors"],
            "submitted": self._n["submitted"],
            "completed": self._n["completed"],
            "abandoned": self._n["abandoned"],
            "discarded": self._n["discarded"],
            "inflight_s": (now - self._inflight.t_submit) if self._inflight is not None else 0.0,
            "backoff_s": self._backoff,
            "last_error": self._last_error,
            "backend": self._describe,
            "releases_gil": self._releases_gil,
        }
        h.update(self._extra_health())
        return h

    def close(self) -> None:
        if self._state == "closed":
            return
        # Only an idle, ready worker is asked to stop; one that is starting or busy is killed.
        self._polite = self._state == "ready" and self._inflight is None
        self._state = "closed"
        self._inflight = None
        self._stop_instance(graceful=True)
        self._release()

    # Blocking helpers for start-up, tests and benchmarks; never call these from the control loop.

    def wait_ready(self, timeout: float) -> bool:
        """Block until ready (True) or `timeout` real seconds pass (False); supervises meanwhile."""
        end = time.monotonic() + timeout
        while self._state != "ready":
            remaining = end - time.monotonic()
            if remaining <= 0 or self._state == "closed":
                return False
            self._wait(min(remaining, 0.05))
            self.check(self.clock.now())
        return True

    def wait_result(self, timeout: float) -> InferenceResult | None:
        """Block until a result arrives or `timeout` real seconds pass; supervises meanwhile."""
        end = time.monotonic() + timeout
        while True:
            res = self.poll()
            if res is not None:
                return res
            remaining = end - time.monotonic()
            if remaining <= 0 or self._state == "closed":
                return None
            self._wait(min(remaining, 0.05))
            self.check(self.clock.now())

    # -------------------------------------------------------------- shared machinery

    def _launch_new(self, now: float) -> None:
        self._gen += 1
        self._state = "starting"
        self._t_launch = now
        self._launch(self._gen)

    def _fail(self, kind: str, message: str, now: float) -> None:
        self._n[kind] += 1
        self._last_error = f"{kind}: {message}"
        log.warning("inference worker (%s) %s; restarting", self.mode, self._last_error)
        if self._inflight is not None:
            f = self._inflight
            self._inflight = None
            self._n["abandoned"] += 1
            self._results.append(
                InferenceResult(
                    f.request_id, f.obs_tick, None, f"abandoned: {self._last_error}", now - f.t_submit
                )
            )
        self._stop_instance(graceful=False)
        self._failures_in_row += 1
        self._backoff = min(self.backoff_max_s, self.backoff_initial_s * 2.0 ** (self._failures_in_row - 1))
        self._restart_at = now + self._backoff
        self._n["restarts"] += 1
        self._state = "backoff"

    def _on_ready(self, gen: int, describe: str, releases_gil: bool) -> None:
        if gen != self._gen or self._state != "starting":
            return
        self._describe = describe
        self._releases_gil = int(bool(releases_gil))
        self._state = "ready"

    def _on_died(self, gen: int, message: str) -> None:
        if gen == self._gen and self._state in ("starting", "ready"):
            self._fail("crash", message, self.clock.now())

    def _on_result(self, gen: int, request_id: int, make: Callable[[], InferenceResult]) -> None:
        f = self._inflight
        if gen != self._gen or f is None or f.request_id != request_id:
            self._n["discarded"] += 1
            return
        self._inflight = None
        res = make()
        res.obs_tick = f.obs_tick
        if res.error is None:
            self._n["completed"] += 1
            self._failures_in_row = 0
        else:
            self._n["model_errors"] += 1
        self._results.append(res)

    def _death_reason(self) -> str:
        return "worker died"

    def _extra_health(self) -> dict[str, float | int | str]:
        return {}

    # -------------------------------------------------------------- mechanics (per mode)

    def _prepare(self) -> None:  # noqa: B027 - optional hook
        """Allocate what lives across restarts (start())."""

    def _release(self) -> None:  # noqa: B027 - optional hook
        """Free what _prepare allocated (close())."""

    @abc.abstractmethod
    def _launch(self, gen: int) -> None:
        """Start generation `gen` without blocking; it reports ready or died through events."""

    @abc.abstractmethod
    def _stop_instance(self, graceful: bool) -> None:
        """Stop the current generation (graceful: ask and wait; else kill, never block)."""

    @abc.abstractmethod
    def _send(self, request: InferenceRequest) -> None:
        """Hand `request` to the ready instance (copying its arrays); raises OSError if unreachable."""

    @abc.abstractmethod
    def _pump(self) -> None:
        """Handle every event already available, without blocking."""

    @abc.abstractmethod
    def _alive(self) -> bool:
        """False once the current instance is known to be gone."""

    @abc.abstractmethod
    def _wait(self, timeout: float) -> None:
        """Block up to `timeout` s for the next event (blocking helpers only)."""


# ====================================================================== thread mode


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


def _copy_inputs(dst: Mapping[str, np.ndarray], request: InferenceRequest) -> None:
    for name in dst:
        src = getattr(request, name)
        buf = dst[name]
        if not isinstance(src, np.ndarray) or src.shape != buf.shape:
            got = list(src.shape) if isinstance(src, np.ndarray) else type(src).__name__
            raise ValueError(f"InferenceRequest.{name}: expected shape {list(buf.shape)}, got {got}")
        np.copyto(buf, src, casting="same_kind")


# ====================================================================== process mode


def _layout(shapes: Mapping[str, tuple[int, ...]], dtypes: Mapping[str, str]) -> tuple[dict[str, Any], int]:
    """name -> (byte offset, shape, dtype), 64-byte aligned; and the total size."""
    out: dict[str, Any] = {}
    off = 0
    for name, shape in shapes.items():
        dt = np.dtype(dtypes[name])
        out[name] = (off, tuple(shape), dt.str)
        off += -(-int(np.prod(shape, dtype=np.int64)) * dt.itemsize // 64) * 64
    return out, max(off, 64)


def _views(buf: Any, layout: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {
        name: np.ndarray(shape, dtype=np.dtype(dt), buffer=buf, offset=off)
        for name, (off, shape, dt) in layout.items()
    }


def _resolve(loader: str) -> Callable[..., PolicyBackend]:
    module, _, attr = loader.partition(":")
    fn = getattr(importlib.import_module(module), attr)
    return fn  # type: ignore[no-any-return]


def _process_main(conn: Connection, spec: dict[str, Any]) -> None:
    """Child process: attach the shared memory, load and warm up the backend, then serve requests."""
    # Ctrl-C reaches the whole process group; the parent decides when the worker stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    shm_in = SharedMemory(name=spec["in_name"])
    shm_out = SharedMemory(name=spec["out_name"])
    ins = _views(shm_in.buf, spec["in_layout"])
    outs = _views(shm_out.buf, spec["out_layout"])
    shapes = {k: v[1] for k, v in spec["out_layout"].items() if k in _OUTPUTS}
    try:
        backend = _resolve(spec["loader"])(spec["model_path"], **spec["options"])
        releases = bool(getattr(backend, "releases_gil", False))
        conn.send(("ready", backend.describe(), releases))
    except BaseException as exc:
        conn.send(("died", f"backend start failed: {_describe_exc(exc)}"))
        return
    inp = PolicyInput(
        ins["images"], ins["state"], ins["action_prefix"], 0, instruction_tokens=ins.get("instruction_tokens")
    )
    try:
        while True:
            try:
                msg = conn.recv()
            except EOFError:  # the parent is gone
                break
            if msg is None:
                break
            _, request_id, obs_tick, prefix_len = msg
            inp.prefix_len = prefix_len
            inp.request_id, inp.obs_tick = request_id, obs_tick
            t0 = time.perf_counter()
            try:
                raw = backend.infer(inp)
                err = _output_error(raw, shapes)
                if err is None:
                    for name in _OUTPUTS:
                        np.copyto(outs[name], getattr(raw, name), casting="same_kind")
                    outs["frame_error"][0] = raw.frame_error
            except BackendUnavailable as exc:
                conn.send(("died", f"backend unavailable: {exc}"))
                break
            except Exception as exc:
                err = _describe_exc(exc)
            conn.send(("done", request_id, time.perf_counter() - t0, err))
    finally:
        backend.close()
        del inp, ins, outs
        shm_in.close()
        shm_out.close()


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


# ====================================================================== construction


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
