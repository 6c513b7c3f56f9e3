"""Timing helpers shared by the scenarios: best-of-N per-operation time, sync and async."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

__all__ = ["Result", "atime_per_op", "time_per_op"]


@dataclass
class Result:
    scenario: str
    subject: str
    baseline: str
    subject_us: float
    baseline_us: float

    @property
    def ratio(self) -> float:
        return self.subject_us / self.baseline_us


def time_per_op(op: Callable[[], object], n: int, repeat: int = 5) -> float:
    """Microseconds per call, best of ``repeat`` runs of ``n`` calls (the least disturbed run)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(n):
            op()
        best = min(best, time.perf_counter() - start)
    return best / n * 1e6


async def atime_per_op(op: Callable[[], Awaitable[object]], n: int, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(n):
            await op()
        best = min(best, time.perf_counter() - start)
    return best / n * 1e6
