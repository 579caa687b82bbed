"""Latency recording for per-tick code: a preallocated ring, summarised only when asked."""

from __future__ import annotations

import numpy as np


class LatencyRing:
    """The last `capacity` samples (seconds). `record` writes one float into a preallocated array."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"LatencyRing: capacity must be >= 1, got {capacity}")
        self._buf = np.zeros(int(capacity))
        self._cap = int(capacity)
        self._i = 0
        self.count = 0
        """Samples recorded in total (the ring keeps the last `capacity`)."""
        self.max = 0.0
        """Largest sample ever recorded (not only those still in the ring)."""

    def record(self, x: float) -> None:
        self._buf[self._i] = x
        self._i = self._i + 1 if self._i + 1 < self._cap else 0
        self.count += 1
        if x > self.max:
            self.max = x

    def clear(self) -> None:
        self._i = 0
        self.count = 0
        self.max = 0.0

    def values(self) -> np.ndarray:
        """A copy of the samples held, oldest first."""
        if self.count < self._cap:
            return self._buf[: self._i].copy()
        return np.concatenate((self._buf[self._i :], self._buf[: self._i]))

    def percentile_us(self, pct: float) -> float:
        v = self.values()
        return float(np.percentile(v, pct) * 1e6) if v.size else 0.0


def summary_us(values: np.ndarray) -> tuple[float, float, float]:
    """(p50, p99, max) of samples in seconds, as microseconds; zeros when empty."""
    if values.size == 0:
        return 0.0, 0.0, 0.0
    p50, p99 = np.percentile(values, (50.0, 99.0))
    return float(p50 * 1e6), float(p99 * 1e6), float(values.max() * 1e6)


__all__ = ["LatencyRing", "summary_us"]
