"""The slow data source the demo caches: every read sleeps, and the rates API fails now and then."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass

from gcache.demo.options import NAMES

__all__ = ["Order", "SlowSource", "SourceError", "User"]

# -- the slow data source ----------------------------------------------------------------------


@dataclass(frozen=True)
class User:
    """Frozen: LOCAL hands every caller the same object, so cached values must not be mutated."""

    id: int
    name: str
    plan: str


@dataclass(frozen=True)
class Order:
    id: int
    user_id: int
    status: str
    total: float


class SourceError(Exception):
    """A failed read of the simulated database (only in ``--serve``, now and then)."""


class SlowSource:
    """Stands in for a database or a remote service: every read sleeps, and is counted."""

    def __init__(self, latency_sec: float, rng: random.Random, failure_rate: float = 0.0) -> None:
        self.latency_sec = latency_sec
        self.failure_rate = failure_rate
        self.rate_failure_rate = 0.0  # the exchange-rate API fails more often than the database
        self.reads: Counter[str] = Counter()
        self._rng = rng
        self._lock = threading.Lock()  # sync reads run in worker threads
        self._plans: dict[int, str] = {}

    def _read(self, what: str) -> None:
        rate = self.rate_failure_rate if what == "rate" else self.failure_rate
        with self._lock:
            self.reads[what] += 1
            failed = rate > 0 and self._rng.random() < rate
        if failed:
            raise SourceError(f"simulated database timeout reading {what}")

    def _user(self, user_id: int) -> User:
        default = "pro" if user_id % 3 == 0 else "free"
        name = NAMES[(user_id - 1) % len(NAMES)]
        return User(user_id, name, self._plans.get(user_id, default))

    async def aread_user(self, user_id: int) -> User:
        await asyncio.sleep(self.latency_sec)
        self._read("user")
        return self._user(user_id)

    def read_orders(self, user_id: int, status: str) -> tuple[Order, ...]:
        time.sleep(self.latency_sec)
        self._read("orders")
        return tuple(
            Order(user_id * 100 + n, user_id, status, round(9.99 * (n + user_id % 7), 2))
            for n in range(1 + user_id % 3)
        )

    async def aread_rate(self, currency: str) -> float:
        await asyncio.sleep(self.latency_sec)
        self._read("rate")
        return {"EUR": 1.0, "GBP": 0.86, "JPY": 162.4, "CHF": 0.95}.get(currency, 1.0)

    def set_plan(self, user_id: int, plan: str) -> None:
        """A write in the application: the next read sees it, a cache does not until invalidated."""
        self._plans[user_id] = plan

    def plan_of(self, user_id: int) -> str:
        return self._user(user_id).plan
