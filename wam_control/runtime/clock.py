"""Clocks for deadlines.

Every deadline in the runtime is taken from one monotonic clock (DESIGN.md §4); ROS or sim time is
only ever used for message stamps. Logic is written against the `Clock` protocol so that tests and
replays drive it with `SimClock`, deterministically and without sleeping.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds; only differences are meaningful."""
        ...

    def sleep_until(self, deadline: float) -> None:
        """Block (or, for a simulated clock, jump) until `now() >= deadline`."""
        ...


class MonotonicClock:
    """The wall-clock implementation: `time.monotonic` and a plain sleep."""

    def now(self) -> float:
        return time.monotonic()

    def sleep_until(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)


class SimClock:
    """A clock that only moves when told to: for tests, replays and lockstep simulation."""

    def __init__(self, start: float = 0.0) -> None:
        self._t = float(start)

    def now(self) -> float:
        return self._t

    def advance(self, dt: float) -> float:
        if dt < 0:
            raise ValueError(f"SimClock.advance: dt must be >= 0, got {dt}")
        self._t += dt
        return self._t

    def set(self, t: float) -> None:
        if t < self._t:
            raise ValueError(f"SimClock.set: time may not go backwards ({t} < {self._t})")
        self._t = float(t)

    def sleep_until(self, deadline: float) -> None:
        if deadline > self._t:
            self._t = deadline
