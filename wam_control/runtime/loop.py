"""Fixed-rate loop on absolute deadlines (DESIGN.md §4).

Tick k is due at start + k * period on the monotonic clock. A late tick runs once, immediately, and
the schedule stays on the original grid: slots that passed meanwhile are skipped (counted as misses,
never run in a burst), so `tick_fn(k)` always gets the grid index and k * period is the time since
start. The last `spin_s` of each wait is spun rather than slept (sleep wake-up is coarse). Garbage
collection is kept out of the tick: automatic collection is disabled and run between ticks, only
when the time left before the next deadline allows it.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from wam_control.config.schema import LoopConfig
from wam_control.runtime.clock import Clock, MonotonicClock
from wam_control.runtime.stats import LatencyRing, summary_us

log = logging.getLogger(__name__)

# Collect only when at least this fraction of a period is left before the next deadline.
_GC_SLACK_FRACTION = 0.5
# Oldest-generation collections take longer: only with this much of a period to spare.
_GC_FULL_SLACK_FRACTION = 0.8


@dataclass(frozen=True)
class LoopStats:
    """Timing of one loop run. Lateness = tick start - its deadline; jitter = |start-to-start
    interval - period| between ticks on adjacent grid slots; misses = grid slots skipped."""

    ticks: int
    misses: int
    overruns: int
    """Ticks whose own compute ran past the next deadline."""
    late_p50_us: float
    late_p99_us: float
    late_max_us: float
    jitter_p99_us: float
    jitter_max_us: float
    tick_p50_us: float
    tick_p99_us: float
    tick_max_us: float
    gc_collections: int
    realtime: bool
    """SCHED_FIFO priority and/or CPU affinity were requested and applied."""
    error: str | None = None

    def line(self, prefix: str = "") -> str:
        """key=value summary for logs and benchmarks."""
        keys = (
            ("ticks", self.ticks),
            ("misses", self.misses),
            ("overruns", self.overruns),
            ("p50_late_us", round(self.late_p50_us, 1)),
            ("p99_late_us", round(self.late_p99_us, 1)),
            ("max_late_us", round(self.late_max_us, 1)),
            ("p99_jitter_us", round(self.jitter_p99_us, 1)),
            ("tick_p50_us", round(self.tick_p50_us, 1)),
            ("tick_p99_us", round(self.tick_p99_us, 1)),
        )
        return " ".join(f"{prefix}{k}={v}" for k, v in keys)


class FixedRateLoop:
    """Run `tick_fn(grid_index)` at `hz` on absolute deadlines, in this thread (`run`) or its own."""

    def __init__(
        self,
        hz: float,
        tick_fn: Callable[[int], None],
        clock: Clock | None = None,
        loop: LoopConfig | None = None,
        name: str = "wam-control-loop",
        history: int | None = None,
    ) -> None:
        if not (hz > 0 and math.isfinite(hz)):
            raise ValueError(f"FixedRateLoop '{name}': rate must be a positive number of Hz, got {hz}")
        self.hz = float(hz)
        self.period = 1.0 / self.hz
        self.tick_fn = tick_fn
        self.clock: Clock = clock if clock is not None else MonotonicClock()
        self.config = loop if loop is not None else LoopConfig()
        self.name = name
        # Spinning needs a clock that moves by itself; a simulated clock only jumps in sleep_until.
        self._spin = self.config.spin_s if isinstance(self.clock, MonotonicClock) else 0.0
        cap = history if history is not None else int(min(max(self.hz * 60.0, 1000.0), 1 << 17))
        self._late = LatencyRing(cap)
        self._compute = LatencyRing(cap)
        self._jitter = LatencyRing(cap)
        self._ticks = 0
        self._misses = 0
        self._overruns = 0
        self._gc_collections = 0
        self._realtime = False
        self._error: str | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # ------------------------------------------------------------------------------ public
    @property
    def stats(self) -> LoopStats:
        late = summary_us(self._late.values())
        comp = summary_us(self._compute.values())
        jit = summary_us(self._jitter.values())
        return LoopStats(
            ticks=self._ticks,
            misses=self._misses,
            overruns=self._overruns,
            late_p50_us=late[0],
            late_p99_us=late[1],
            late_max_us=self._late.max * 1e6,
            jitter_p99_us=jit[1],
            jitter_max_us=self._jitter.max * 1e6,
            tick_p50_us=comp[0],
            tick_p99_us=comp[1],
            tick_max_us=self._compute.max * 1e6,
            gc_collections=self._gc_collections,
            realtime=self._realtime,
            error=self._error,
        )

    def lateness_s(self) -> np.ndarray:
        """Recorded lateness samples (seconds, oldest first) for callers that aggregate runs."""
        return self._late.values()

    def compute_s(self) -> np.ndarray:
        return self._compute.values()

    def start(self) -> None:
        """Run in a new thread (named after the loop) until `stop()`."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError(f"FixedRateLoop '{self.name}' is already running")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run_thread, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> LoopStats:
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("FixedRateLoop '%s' did not stop within %.1f s", self.name, timeout)
            else:
                self._thread = None
        return self.stats

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def run(self, max_ticks: int | None = None, stop: threading.Event | None = None) -> LoopStats:
        """Run in the calling thread until `max_ticks` ticks ran or `stop` is set. Exceptions from
        `tick_fn` propagate (after the gc and scheduler settings are restored)."""
        stop_event = stop if stop is not None else self._stop
        gc_state = self._gc_enter()
        self._realtime = self._apply_scheduling()
        try:
            self._loop(max_ticks, stop_event)
        finally:
            self._gc_exit(gc_state)
        return self.stats

    # ---------------------------------------------------------------------------- internals
    def _run_thread(self) -> None:
        try:
            self.run(stop=self._stop)
        except Exception as exc:  # the owner reads it from stats; the thread must not die silently
            self._error = f"{type(exc).__name__}: {exc}"
            log.exception("FixedRateLoop '%s': tick failed; loop stopped", self.name)

    def _loop(self, max_ticks: int | None, stop: threading.Event) -> None:
        clock = self.clock
        now = clock.now
        period = self.period
        spin = self._spin
        tick_fn = self.tick_fn
        late_rec = self._late.record
        comp_rec = self._compute.record
        jit_rec = self._jitter.record
        collect = self._gc_between_ticks
        gc_on = self.config.gc_mode != "off"
        t0 = now()
        k = 0
        prev_k = -2
        prev_start = 0.0
        ran = 0
        while (max_ticks is None or ran < max_ticks) and not stop.is_set():
            deadline = t0 + k * period
            if spin > 0.0:
                clock.sleep_until(deadline - spin)
                while now() < deadline:
                    pass
            else:
                clock.sleep_until(deadline)
            start = now()
            tick_fn(k)
            end = now()
            ran += 1
            self._ticks += 1
            late_rec(start - deadline)
            comp_rec(end - start)
            if k == prev_k + 1:
                jit_rec(abs(start - prev_start - period))
            prev_k, prev_start = k, start
            # Next slot on the grid; if it has already passed, run the latest passed slot once
            # (immediately) and count the ones in between as missed.
            k += 1
            due = int((end - t0) // period)
            if end >= t0 + k * period:
                self._overruns += 1
            if due > k:
                self._misses += due - k
                k = due
            if gc_on:
                collect(t0 + k * period - end)

    def _gc_enter(self) -> tuple[bool, bool]:
        was_enabled = gc.isenabled()
        mode = self.config.gc_mode
        frozen = False
        if mode in ("freeze", "disable"):
            gc.collect()
            if mode == "freeze":
                # Everything alive now moves to a permanent generation that collections skip.
                gc.freeze()
                frozen = True
            gc.disable()
        return was_enabled, frozen

    def _gc_exit(self, state: tuple[bool, bool]) -> None:
        was_enabled, frozen = state
        if frozen:
            gc.unfreeze()
        if was_enabled and self.config.gc_mode != "off":
            gc.enable()

    def _gc_between_ticks(self, slack_s: float) -> None:
        """CPython's generational thresholds, applied only between ticks with slack to spare."""
        if slack_s < _GC_SLACK_FRACTION * self.period:
            return
        c0, c1, c2 = gc.get_count()
        t0, t1, t2 = gc.get_threshold()
        if t0 <= 0 or c0 < t0:
            return
        if c2 >= t2 and c1 >= t1 and slack_s >= _GC_FULL_SLACK_FRACTION * self.period:
            gc.collect(2)
        elif c1 >= t1:
            gc.collect(1)
        else:
            gc.collect(0)
        self._gc_collections += 1

    def _apply_scheduling(self) -> bool:
        """SCHED_FIFO and CPU affinity for the calling thread, if configured; a warning if refused."""
        cfg = self.config
        applied = False
        if cfg.realtime_priority > 0:
            try:
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(cfg.realtime_priority))
                applied = True
            except (AttributeError, OSError) as exc:
                log.warning(
                    "FixedRateLoop '%s': SCHED_FIFO priority %d not applied (%s); running with normal "
                    "priority. Grant it with `ulimit -r %d` / an rtprio entry in limits.conf, or CAP_SYS_NICE.",
                    self.name,
                    cfg.realtime_priority,
                    exc,
                    cfg.realtime_priority,
                )
        if cfg.cpu_affinity:
            cpus = {int(c) for c in cfg.cpu_affinity.split(",")}
            try:
                os.sched_setaffinity(0, cpus)
                applied = True
            except (AttributeError, OSError, ValueError) as exc:
                log.warning(
                    "FixedRateLoop '%s': CPU affinity %s not applied (%s); the thread may run on any CPU.",
                    self.name,
                    sorted(cpus),
                    exc,
                )
        return applied


__all__ = ["FixedRateLoop", "LoopStats"]
