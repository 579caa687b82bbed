"""Fixed-rate loop logic on a simulated clock: grid, misses, no burst, no drift, gc, scheduling."""

from __future__ import annotations

import gc
import logging
import os
import threading

import pytest

from wam_control.config.schema import LoopConfig
from wam_control.runtime.clock import SimClock
from wam_control.runtime.loop import FixedRateLoop

HZ = 500.0
P = 1.0 / HZ


def recorder(clock: SimClock, compute: dict[int, float] | None = None, default: float = 0.3 * P):
    seen: list[tuple[int, float]] = []

    def tick(k: int) -> None:
        seen.append((k, clock.now()))
        clock.advance((compute or {}).get(k, default))

    return seen, tick


def test_on_time_ticks_are_on_the_grid_without_drift() -> None:
    clock = SimClock(1000.0)
    seen, tick = recorder(clock)
    stats = FixedRateLoop(HZ, tick, clock=clock).run(max_ticks=5000)
    assert [k for k, _ in seen] == list(range(5000))
    # Absolute deadlines: tick k starts at exactly start + k * period, even after 5000 ticks.
    assert all(t == pytest.approx(1000.0 + k * P, abs=1e-9) for k, t in seen)
    assert stats.misses == 0 and stats.overruns == 0 and stats.late_max_us == pytest.approx(0.0, abs=1e-3)
    assert stats.tick_p50_us == pytest.approx(0.3 * P * 1e6, rel=1e-6)


def test_overrun_of_several_periods_skips_slots_once_and_stays_on_grid() -> None:
    clock = SimClock(0.0)
    seen, tick = recorder(clock, compute={3: 4.25 * P})  # tick 3 ends at 7.25 periods
    stats = FixedRateLoop(HZ, tick, clock=clock).run(max_ticks=8)
    ks = [k for k, _ in seen]
    assert ks == [0, 1, 2, 3, 7, 8, 9, 10]
    t = dict(seen)
    assert t[7] == pytest.approx(7.25 * P)  # late tick runs once, immediately
    assert t[8] == pytest.approx(8 * P)  # then back on the original grid: no burst, no shift
    assert stats.misses == 3 and stats.overruns == 1  # slots 4, 5, 6
    assert stats.late_max_us == pytest.approx(0.25 * P * 1e6, rel=1e-6)
    # The grid index says how much time passed: k * period == time since start for on-time ticks.
    assert t[10] == pytest.approx(10 * P)


def test_overrun_ending_exactly_between_slots_runs_the_passed_slot() -> None:
    clock = SimClock(0.0)
    seen, tick = recorder(clock, compute={0: 1.5 * P})
    stats = FixedRateLoop(HZ, tick, clock=clock).run(max_ticks=3)
    assert [k for k, _ in seen] == [0, 1, 2]
    assert seen[1][1] == pytest.approx(1.5 * P) and seen[2][1] == pytest.approx(2 * P)
    assert stats.misses == 0 and stats.overruns == 1


def test_stop_event_and_jitter_stats() -> None:
    clock = SimClock(0.0)
    stop = threading.Event()

    def tick(k: int) -> None:
        clock.advance(0.1 * P if k % 2 else 1.2 * P)  # every even tick overruns a little
        if k >= 40:
            stop.set()

    stats = FixedRateLoop(HZ, tick, clock=clock).run(stop=stop)
    assert stats.ticks == 41 and stats.misses == 0
    assert stats.jitter_max_us == pytest.approx(0.2 * P * 1e6, rel=1e-6)


def test_tick_exception_propagates_and_gc_is_restored() -> None:
    clock = SimClock(0.0)
    enabled_inside: list[bool] = []

    def tick(k: int) -> None:
        enabled_inside.append(gc.isenabled())
        clock.advance(0.1 * P)
        if k == 5:
            raise RuntimeError("boom")

    was = gc.isenabled()
    with pytest.raises(RuntimeError, match="boom"):
        FixedRateLoop(HZ, tick, clock=clock, loop=LoopConfig(gc_mode="freeze")).run()
    assert not any(enabled_inside)
    assert gc.isenabled() == was and gc.get_freeze_count() == 0


def test_gc_off_leaves_gc_alone_and_disable_collects_between_ticks() -> None:
    clock = SimClock(0.0)
    seen: list[bool] = []

    def tick(k: int) -> None:
        seen.append(gc.isenabled())
        for _ in range(200):  # cyclic garbage, so that generation 0 fills up
            a: list = []
            a.append(a)
        clock.advance(0.1 * P)

    FixedRateLoop(HZ, tick, clock=clock, loop=LoopConfig(gc_mode="off")).run(max_ticks=5)
    assert all(seen) == gc.isenabled()
    stats = FixedRateLoop(HZ, tick, clock=clock, loop=LoopConfig(gc_mode="disable")).run(max_ticks=50)
    assert stats.gc_collections > 0


def test_gc_waits_for_slack() -> None:
    clock = SimClock(0.0)

    def tick(k: int) -> None:
        for _ in range(200):
            a: list = []
            a.append(a)
        clock.advance(0.9 * P)  # never half a period of slack: never collect in the loop

    stats = FixedRateLoop(HZ, tick, clock=clock, loop=LoopConfig(gc_mode="disable")).run(max_ticks=50)
    assert stats.gc_collections == 0


def test_own_thread_start_stop() -> None:
    clock = SimClock(0.0)
    reached = threading.Event()
    ticks: list[int] = []

    def tick(k: int) -> None:
        ticks.append(k)
        clock.advance(0.2 * P)
        if k == 100:
            reached.set()

    loop = FixedRateLoop(HZ, tick, clock=clock, name="test-loop")
    loop.start()
    assert reached.wait(10.0)
    with pytest.raises(RuntimeError, match="already running"):
        loop.start()
    stats = loop.stop()
    assert not loop.running and stats.ticks >= 101 and stats.error is None
    assert ticks[:101] == list(range(101))


def test_thread_records_tick_error() -> None:
    clock = SimClock(0.0)

    def tick(k: int) -> None:
        clock.advance(0.1 * P)
        if k == 3:
            raise ValueError("bad tick")

    loop = FixedRateLoop(HZ, tick, clock=clock)
    loop.start()
    assert loop._thread is not None
    loop._thread.join(10.0)
    assert loop.stop().error == "ValueError: bad tick"


def test_realtime_refused_degrades_to_warning(monkeypatch, caplog) -> None:
    def refuse(*args):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    monkeypatch.setattr(os, "sched_setaffinity", refuse)
    clock = SimClock(0.0)
    seen, tick = recorder(clock)
    cfg = LoopConfig(realtime_priority=80, cpu_affinity="0")
    with caplog.at_level(logging.WARNING, logger="wam_control.runtime.loop"):
        stats = FixedRateLoop(HZ, tick, clock=clock, loop=cfg).run(max_ticks=3)
    assert stats.ticks == 3 and not stats.realtime
    text = caplog.text
    assert "SCHED_FIFO priority 80 not applied" in text and "CPU affinity [0] not applied" in text


@pytest.mark.parametrize("hz", [0.0, -5.0, float("nan"), float("inf")])
def test_bad_rate(hz: float) -> None:
    with pytest.raises(ValueError, match="positive number of Hz"):
        FixedRateLoop(hz, lambda k: None)
