"""Supervision shared by both modes (`_Supervised`): start, crash and hang detection from the control
thread on the injected clock, abandon, restart with exponential backoff, counters for `health()`."""

from __future__ import annotations

import abc
import collections
import logging
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from wam_control.runtime.clock import Clock
from wam_control.runtime.worker.protocol import InferenceRequest, InferenceResult, _describe_exc

log = logging.getLogger("wam_control.runtime.worker")  # one logger for the package, as before the split

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
