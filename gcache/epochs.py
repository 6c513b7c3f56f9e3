"""Per-entity invalidation epochs: what keeps LOCAL from storing or serving an invalidated value."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable

__all__ = ["Epochs"]


def _nothing() -> None:
    return None


class Epochs:
    """Per-entity invalidation epochs for tracked LOCAL entries.

    Every tracked entry remembers the epoch current when the read that filled it *started*. An
    invalidation gives the entity a new, higher epoch, so every entry of that entity filled by a
    read that started earlier is stale at once, without finding and deleting the entries. An
    invalidation with a future buffer also keeps the entity *unfillable* until the buffer ends:
    a read that starts inside it may see a lagging source. ``drop_all`` raises the floor below
    which every tracked entry is stale (used when invalidations may have been missed, and to
    keep the per-entity table bounded).

    ``held`` are the tracked entities whose invalidation Redis has not taken yet (it waits in
    :class:`~gcache.outbox.InvalidationOutbox`): their reads neither use REMOTE nor fill LOCAL
    (``Decisions.miss``); with ``hold_every`` (the outbox dropped one), every tracked entity is
    held until the outbox drains. The outbox alone changes them.

    ``trusted`` says whether this process hears every invalidation. Without a REMOTE layer it
    always does; with one, only while the invalidation bus is subscribed. Tracked LOCAL entries
    are neither served nor filled while it is False, and ``wake`` asks for the bus to start.
    """

    __slots__ = (
        "_all_until",
        "_buffered",
        "_by_entity",
        "_counter",
        "_lock",
        "_max_entities",
        "_timer",
        "current",
        "floor",
        "held",
        "hold_every",
        "trusted",
        "wake",
    )

    def __init__(self, max_entities: int = 100_000, timer: Callable[[], float] = time.monotonic) -> None:
        self._by_entity: dict[str, int] = {}
        self._buffered: dict[str, float] = {}  # entity -> end of its future buffer (timer clock)
        self._all_until = 0.0  # every entity unfillable until then (a full table of buffers)
        self._counter = itertools.count(1)
        self._lock = threading.Lock()
        self._max_entities = max_entities
        self._timer = timer
        self.current = 0
        self.floor = 0
        self.held: set[str] = set()
        self.hold_every = False
        self.trusted = True
        self.wake: Callable[[], None] = _nothing

    def distrust(self) -> None:
        """Invalidations may be missed from now on: drop every tracked entry, fill none."""
        self.trusted = False
        self.drop_all()

    def trust(self) -> None:
        """Invalidations are heard again; reads that started before now still may not fill."""
        self.drop_all()
        self.trusted = True

    def start(self, entity: str) -> int:
        """The epoch a read of this entity starts at; -1 (never storable) inside a future buffer."""
        if not self.trusted:
            return -1
        if self._all_until and self._timer() < self._all_until:
            return -1
        if self._buffered:
            until = self._buffered.get(entity)
            if until is not None:
                if self._timer() < until:
                    return -1
                self._buffered.pop(entity, None)
        return self.current

    def holds(self, entity: str) -> bool:
        """Whether a tracked read of ``entity`` must run the function (see ``held``)."""
        return self.hold_every or entity in self.held

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
                until = self._timer() + buffer_sec
                if len(self._buffered) >= self._max_entities:
                    # Full: rather than sweep it on every later bump (a flood of buffered
                    # invalidations stalled the loop thread for seconds), hold every entity
                    # out until the last of these buffers ends, and start the table afresh.
                    self._all_until = max(self._all_until, until, *self._buffered.values())
                    self._buffered.clear()
                self._buffered[entity] = max(until, self._buffered.get(entity, until))
            self.current = epoch

    def after_fork_in_child(self, *, trusted: bool) -> None:
        """A fresh lock; with a bus (``trusted=False``), nothing tracked is trusted until this
        process's own bus is subscribed: the parent's subscription does not hear for it."""
        self._lock = threading.Lock()
        if not trusted:
            self.distrust()

    def drop_all(self) -> None:
        with self._lock:
            epoch = next(self._counter)
            self._by_entity.clear()
            self.floor = epoch
            self.current = epoch
