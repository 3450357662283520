"""Latency so far, for ``GET /stats``: a bounded window of recent request times, shared by threads."""

from __future__ import annotations

import threading
from collections import deque

import numpy as np


class LatencyStats:
    """The last ``window`` durations (ms); percentiles over that window, so memory stays bounded
    however long the server runs, and an old slow start stops counting after ``window`` requests."""

    def __init__(self, window: int = 10_000) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self._times: deque[float] = deque(maxlen=window)
        self._lock = threading.Lock()
        self.count = 0

    def add(self, ms: float) -> None:
        with self._lock:
            self._times.append(float(ms))
            self.count += 1

    def summary(self) -> dict[str, float | int | None]:
        """``count`` is every request since start; p50/p99 (linear interpolation) over the window."""
        with self._lock:
            times = np.fromiter(self._times, dtype=np.float64, count=len(self._times))
            count = self.count
        if not len(times):
            return {"count": count, "window": 0, "p50_ms": None, "p99_ms": None}
        p50, p99 = np.percentile(times, [50, 99])
        return {"count": count, "window": len(times), "p50_ms": round(float(p50), 3), "p99_ms": round(float(p99), 3)}
