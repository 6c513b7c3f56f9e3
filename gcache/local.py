"""LOCAL layer: bounded per-use-case TTL caches (their invalidation epochs: :mod:`gcache.epochs`)."""

from __future__ import annotations

import pickle
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from gcache.epochs import Epochs

__all__ = ["MISS", "LocalLayer", "LocalStore", "pickled_size"]

MISS: Any = object()
"""Returned by lookups that found nothing usable (``None`` is a value that can be cached)."""


def pickled_size(value: Any) -> int:
    """A value's size for ``local_max_bytes``: its pickled length, else its shallow size."""
    try:
        return len(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception:
        return sys.getsizeof(value)


_Entry = tuple[Any, float, int, str, int, float, float]
"""A held entry: (value, fresh until, epoch at read start, entity, size, kept until, its TTL)."""


def _index_key(index: dict[str, str | set[str]], entity: str, key: str) -> None:
    """Add a key to the entity index: the key itself while it is the entity's only one."""
    keys = index.get(entity)
    if keys is None:
        index[entity] = key
    elif isinstance(keys, str):
        if keys != key:
            index[entity] = {keys, key}
    else:
        keys.add(key)


class LocalStore:
    """One use case's LOCAL entries: a size-bounded cache with a TTL per entry, safe across threads.

    The TTL of an entry is the one in force when it was written. Entries hold the value itself
    (no copy, no serialization): callers share the object, so values should be treated as
    immutable.

    Built for the hit path: a lookup is one ``dict`` read and a clock read, without a lock; only
    writes, and keeping the least recently used entry first once the store is more than half
    full, take the lock. When full, the least recently used entry goes first.

    With ``max_bytes`` the store also keeps the sum of its values' sizes (``sizer``: the pickled
    length by default, measured on each fill) under that budget; a value larger than the whole
    budget is not kept.

    An entry written with a ``grace`` is kept that long past its TTL, for fail-safe: ``get`` no
    longer serves it, but ``get_stale`` does, so a caller whose function fails can fall back to
    it. Such entries still count against ``maxsize`` and ``max_bytes``; as they are never served
    fresh, nothing moves them to the back, and they are among the first evicted.
    """

    __slots__ = (
        "_bytes",
        "_data",
        "_entities",
        "_epochs",
        "_half",
        "_half_bytes",
        "_lock",
        "_max_bytes",
        "_maxsize",
        "_sizer",
        "_timer",
        "on_size",
        "tracked",
    )

    def __init__(
        self,
        maxsize: int,
        epochs: Epochs,
        *,
        tracked: bool,
        timer: Callable[[], float] = time.monotonic,
        max_bytes: int | None = None,
        sizer: Callable[[Any], int] | None = None,
    ) -> None:
        # key -> _Entry, least recently used first. The hit path in ``get`` reads only the first
        # fields; the kept-until time and the TTL come last so that neither a grace period nor
        # refresh_ahead (``due``) adds anything to a hit.
        self._data: OrderedDict[str, _Entry] = OrderedDict()
        self._max_bytes = max_bytes
        self._half_bytes = max_bytes // 2 if max_bytes is not None else sys.maxsize
        self._sizer = sizer or pickled_size
        self._bytes = 0
        self._lock = threading.Lock()
        self._epochs = epochs
        self._maxsize = maxsize
        self._half = maxsize // 2
        self._timer = timer
        # entity -> its keys, so an invalidation frees them at once (tracked stores only). Keys that
        # left otherwise linger here until the entity is dropped or the index is rebuilt. Most
        # entities have one key, held as the string itself: a set costs some 200 bytes more.
        self._entities: dict[str, str | set[str]] = {}
        self.tracked = tracked
        # Told the number of entries after each change, for metrics that cannot ask (prometheus
        # multi-process mode); None leaves the gauge to read len() when scraped.
        self.on_size: Callable[[int], None] | None = None

    def get(self, key: str, entity: str) -> tuple[Any, str | None]:
        """``(value, None)`` on a hit, ``(MISS, reason)`` otherwise.

        An entry past its TTL is a miss; it stays held while within its grace (see
        ``get_stale``) unless invalidated, and is dropped after.
        """
        if self.tracked and not self._epochs.trusted:
            self._epochs.wake()
            return MISS, "bus_unsubscribed"
        entry = self._data.get(key)
        if entry is None:
            return MISS, "not_found"
        if entry[1] <= self._timer():
            # The clock is read again rather than kept, so that a hit pays nothing for grace.
            if entry[5] <= self._timer() or (self.tracked and entry[2] < self._epochs.of(entity)):
                self._discard(key, entry)
            return MISS, "not_found"
        if self.tracked and entry[2] < self._epochs.of(entity):
            self._discard(key, entry)
            return MISS, "invalidated"
        if len(self._data) > self._half or self._bytes > self._half_bytes:  # only when it may fill
            with self._lock:
                if key in self._data:
                    self._data.move_to_end(key)
        return entry[0], None

    def get_stale(self, key: str, entity: str) -> Any:
        """The value held for a key, fresh or within its grace, for fail-safe; else ``MISS``.

        Never what an invalidation made stale: a tracked entry is refused (and dropped) when its
        entity was invalidated after the read that filled it started, and every tracked entry is
        refused while invalidations may go unheard. Unlike ``get`` it does not count as a use, so
        the entry keeps its place in the eviction order.
        """
        if self.tracked and not self._epochs.trusted:
            return MISS
        entry = self._data.get(key)
        if entry is None:
            return MISS
        if entry[5] <= self._timer() or (self.tracked and entry[2] < self._epochs.of(entity)):
            self._discard(key, entry)
            return MISS
        return entry[0]

    def due(self, key: str, fraction: float) -> bool:
        """Whether the entry held for ``key`` is past ``fraction`` of its own TTL (the one it was
        written with, jitter included, grace not), for ``refresh_ahead``: asked only after a hit,
        and only when that is on, so a hit without it reads the clock once as before."""
        entry = self._data.get(key)
        return entry is not None and self._timer() >= entry[1] - entry[6] * (1.0 - fraction)

    def _discard(self, key: str, entry: _Entry) -> None:
        with self._lock:
            if self._data.get(key) is entry:
                del self._data[key]
                self._bytes -= entry[4]

    @property
    def bytes(self) -> int:
        """The sum of the sizes of the entries held, keys and values (0 unless ``max_bytes`` is set)."""
        return self._bytes

    def put(
        self, key: str, entity: str, value: Any, ttl: float, epoch: int, grace: float = 0.0
    ) -> str | None:
        """Store unless stale; returns None when stored, else why not.

        A tracked value is refused when the entity was invalidated after ``epoch`` (when the
        read that produced it started), or while invalidations may go unheard. The entry is
        fresh for ``ttl`` seconds, then kept ``grace`` seconds more for ``get_stale`` only.
        """
        if self.tracked:
            if not self._epochs.trusted:
                return "bus_unsubscribed"
            if epoch < 0 or epoch < self._epochs.of(entity):
                return "invalidated"
        size = 0
        if self._max_bytes is not None:
            size = self._sizer(value) + len(key)  # keys are held too (an id may be caller input)
            if size > self._max_bytes:
                return "too_large"
        fresh_until = self._timer() + ttl
        kept_until = fresh_until + grace if grace > 0 else fresh_until
        data = self._data
        with self._lock:
            old = data.get(key)
            if old is not None:
                self._bytes -= old[4]
            data[key] = (value, fresh_until, epoch, entity, size, kept_until, ttl)
            data.move_to_end(key)
            self._bytes += size
            while len(data) > self._maxsize or (
                self._max_bytes is not None and self._bytes > self._max_bytes
            ):
                self._bytes -= data.popitem(last=False)[1][4]
            if self.tracked:
                if entity not in self._entities and len(self._entities) >= 2 * self._maxsize:
                    self._reindex()  # indexes the entry just written too, if still held
                _index_key(self._entities, entity, key)
            size = len(data)
        if self.on_size is not None:
            self.on_size(size)
        return None

    def after_fork_in_child(self) -> None:
        """A fresh lock, and the byte count and entity index rebuilt from the entries held: a write
        by another thread of the parent may have been halfway through at the fork."""
        self._lock = threading.Lock()
        self._bytes = sum(entry[4] for entry in self._data.values())
        if self.tracked:
            self._reindex()
        if self.on_size is not None:
            self.on_size(len(self._data))

    def _reindex(self) -> None:
        """Rebuild the entity index from the keys actually held (called under the lock)."""
        index: dict[str, str | set[str]] = {}
        for key, entry in self._data.items():
            _index_key(index, entry[3], key)
        self._entities = index

    def drop_entity(self, entity: str) -> int:
        """Remove every entry of one entity; returns how many were held."""
        with self._lock:
            dropped = 0
            keys = self._entities.pop(entity, ())
            for key in (keys,) if isinstance(keys, str) else keys:
                entry = self._data.pop(key, None)
                if entry is not None:
                    dropped += 1
                    self._bytes -= entry[4]
            size = len(self._data)
        if dropped and self.on_size is not None:
            self.on_size(size)
        return dropped

    def delete(self, key: str) -> bool:
        with self._lock:
            entry = self._data.pop(key, None)
            if entry is not None:
                self._bytes -= entry[4]
            deleted = entry is not None
            size = len(self._data)
        if deleted and self.on_size is not None:
            self.on_size(size)
        return deleted

    def clear(self) -> int:
        """Remove every entry; returns how many live ones were held (as ``len`` counts them)."""
        now = self._timer()
        with self._lock:
            count = sum(1 for entry in self._data.values() if entry[5] > now)
            self._data.clear()
            self._entities.clear()
            self._bytes = 0
        if self.on_size is not None:
            self.on_size(0)
        return count

    def __len__(self) -> int:
        """Live entries: fresh ones, and those kept for their grace (``get_stale`` serves them).

        Entries in grace count because they hold memory; expired ones still held do not.
        """
        now = self._timer()
        with self._lock:
            return sum(1 for entry in self._data.values() if entry[5] > now)


class LocalLayer:
    """Every LOCAL store of one GCache and the epochs they share.

    What happens to LOCAL when an entity is invalidated, an entry deleted, the cache flushed, or
    the invalidation bus lost, is decided here; ``on_drop(use_case, key_type, reason, count)``
    reports entries dropped before their TTL.
    """

    def __init__(
        self,
        max_entries: int,
        on_drop: Callable[[str, str, str, int], None],
        timer: Callable[[], float] = time.monotonic,
        max_bytes: int | None = None,
    ) -> None:
        self._max_bytes = max_bytes
        self.epochs = Epochs(timer=timer)
        self._max_entries = max_entries
        self._on_drop = on_drop
        self._timer = timer
        self._stores: dict[tuple[str, bool], tuple[LocalStore, str]] = {}
        self._lock = threading.Lock()

    def store(self, use_case: str, key_type: str, *, tracked: bool) -> LocalStore:
        """The store of a use case (one per use case and tracking mode), created on first use."""
        with self._lock:
            found = self._stores.get((use_case, tracked))
            if found is None:
                store = LocalStore(
                    self._max_entries,
                    self.epochs,
                    tracked=tracked,
                    timer=self._timer,
                    max_bytes=self._max_bytes,
                )
                found = self._stores[(use_case, tracked)] = (store, key_type)
            return found[0]

    def after_fork_in_child(self, *, trusted: bool) -> None:
        """Reset for a forked child; ``trusted=False`` (a cache with a bus) drops the tracked
        entries, which only the parent's bus kept fresh. Untracked entries are kept: their TTL
        alone bounds them, in the child as in the parent."""
        self._lock = threading.Lock()
        self.epochs.after_fork_in_child(trusted=trusted)
        for _use_case, _key_type, store in self._each(tracked_only=False):
            store.after_fork_in_child()
        if not trusted:
            self._clear("forked", tracked_only=True)

    def _each(self, tracked_only: bool) -> list[tuple[str, str, LocalStore]]:
        with self._lock:
            return [
                (use_case, key_type, store)
                for (use_case, tracked), (store, key_type) in self._stores.items()
                if tracked or not tracked_only
            ]

    def invalidate(self, entity: str, key_type: str, buffer_sec: float = 0.0) -> None:
        """Make the entity's tracked entries stale, and free the ones held."""
        self.epochs.bump(entity, buffer_sec)
        for use_case, _key_type, store in self._each(tracked_only=True):
            dropped = store.drop_entity(entity)
            if dropped:
                self._on_drop(use_case, key_type, "invalidated", dropped)

    def delete(self, key: str) -> bool:
        deleted = False
        for use_case, key_type, store in self._each(tracked_only=False):
            if store.delete(key):
                deleted = True
                self._on_drop(use_case, key_type, "deleted", 1)
        return deleted

    def clear(self, reason: str) -> None:
        self._clear(reason, tracked_only=False)
        self.epochs.drop_all()

    def distrust(self) -> None:
        """Invalidations may go unheard: drop tracked entries and fill none until ``trust``."""
        self.epochs.distrust()
        self._clear("bus_down", tracked_only=True)

    def trust(self) -> None:
        self.epochs.trust()

    def _clear(self, reason: str, *, tracked_only: bool) -> None:
        for use_case, key_type, store in self._each(tracked_only):
            dropped = store.clear()
            if dropped:
                self._on_drop(use_case, key_type, reason, dropped)
