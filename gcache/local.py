"""LOCAL layer: bounded per-use-case TTL caches and per-entity invalidation epochs."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

from cachetools import TLRUCache

__all__ = ["MISS", "Epochs", "LocalStore"]

MISS: Any = object()
"""Returned by lookups that found nothing usable (``None`` is a value that can be cached)."""


class Epochs:
    """Per-entity invalidation epochs for tracked LOCAL entries.

    Every tracked entry remembers the epoch current when the read that filled it *started*. An
    invalidation gives the entity a new, higher epoch, so every entry of that entity filled by a
    read that started earlier is stale at once, without finding and deleting the entries. An
    invalidation with a future buffer also keeps the entity *unfillable* until the buffer ends:
    a read that starts inside it may see a lagging source. ``drop_all`` raises the floor below
    which every tracked entry is stale (used when invalidations may have been missed, and to
    keep the per-entity table bounded).
    """

    __slots__ = (
        "_buffered",
        "_by_entity",
        "_counter",
        "_lock",
        "_max_entities",
        "_timer",
        "current",
        "floor",
    )

    def __init__(self, max_entities: int = 100_000, timer: Callable[[], float] = time.monotonic) -> None:
        self._by_entity: dict[str, int] = {}
        self._buffered: dict[str, float] = {}  # entity -> end of its future buffer (timer clock)
        self._counter = itertools.count(1)
        self._lock = threading.Lock()
        self._max_entities = max_entities
        self._timer = timer
        self.current = 0
        self.floor = 0

    def start(self, entity: str) -> int:
        """The epoch a read of this entity starts at; -1 (never storable) inside a future buffer."""
        if self._buffered:
            until = self._buffered.get(entity)
            if until is not None:
                if self._timer() < until:
                    return -1
                self._buffered.pop(entity, None)
        return self.current

    def of(self, entity: str) -> int:
        """The epoch an entry of this entity must have reached to be fresh."""
        floor = self.floor
        epoch = self._by_entity.get(entity, 0)
        return epoch if epoch > floor else floor

    def bump(self, entity: str, buffer_sec: float = 0.0) -> None:
        with self._lock:
            epoch = next(self._counter)
            if len(self._by_entity) >= self._max_entities:
                self._by_entity.clear()
                self.floor = epoch
            else:
                self._by_entity[entity] = epoch
            if buffer_sec > 0:
                if len(self._buffered) >= self._max_entities:
                    now = self._timer()
                    self._buffered = {e: u for e, u in self._buffered.items() if u > now}
                until = self._timer() + buffer_sec
                self._buffered[entity] = max(until, self._buffered.get(entity, until))
            self.current = epoch

    def drop_all(self) -> None:
        with self._lock:
            epoch = next(self._counter)
            self._by_entity.clear()
            self.floor = epoch
            self.current = epoch


def _expires(_key: str, entry: tuple[Any, int, float], now: float) -> float:
    return now + entry[2]


class LocalStore:
    """One use case's LOCAL entries: a size-bounded cache with a TTL per entry, safe across threads.

    The TTL of an entry is the one in force when it was written. Entries hold the value itself
    (no copy, no serialization): callers share the object, so values should be treated as
    immutable.
    """

    __slots__ = ("_cache", "_epochs", "_lock", "tracked")

    def __init__(
        self, maxsize: int, epochs: Epochs, *, tracked: bool, timer: Callable[[], float] = time.monotonic
    ) -> None:
        self._cache: TLRUCache[str, tuple[Any, int, float]] = TLRUCache(maxsize, _expires, timer=timer)
        self._lock = threading.Lock()
        self._epochs = epochs
        self.tracked = tracked

    def get(self, key: str, entity: str) -> tuple[Any, str | None]:
        """``(value, None)`` on a hit, ``(MISS, reason)`` otherwise."""
        with self._lock:
            entry = self._cache.get(key)
        if entry is None:
            return MISS, "not_found"
        if self.tracked and entry[1] < self._epochs.of(entity):
            with self._lock:
                self._cache.pop(key, None)
            return MISS, "invalidated"
        return entry[0], None

    def put(self, key: str, entity: str, value: Any, ttl: float, epoch: int) -> bool:
        """Store unless the entity was invalidated after ``epoch`` (when the read started)."""
        if self.tracked and (epoch < 0 or epoch < self._epochs.of(entity)):
            return False
        with self._lock:
            self._cache[key] = (value, epoch, ttl)
        return True

    def delete(self, key: str) -> bool:
        with self._lock:
            return self._cache.pop(key, None) is not None

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()

    def __len__(self) -> int:
        with self._lock:
            self._cache.expire()
            return len(self._cache)
