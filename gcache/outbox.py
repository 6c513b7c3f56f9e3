"""The invalidation outbox: invalidations Redis did not take, kept in this process and replayed
until it does.

An invalidation that fails in Redis has already made the entity's LOCAL entries stale here, but
Redis still holds the old watermark, so its REMOTE entries look fresh to every process. The
outbox keeps one item per entity (its fence key), holds the entity (``Epochs.held``: this
process's tracked reads of it run the function, neither using REMOTE nor filling LOCAL), and
replays the invalidation on gcache's loop thread with backoff, at once when the breaker closes
or the bus is up again. The waiting items are replayed in chunks of ``REPLAY_CHUNK``, each chunk
one pipeline (one per cluster node) and each item settled by its own result: 10,000 waiting
items take 20 round trips, not 10,000, so the entities are held (their calls uncached) that much
less after Redis is back.

Why a replay is as good as the original: the INVALIDATE scripts raise the watermark to at least
server-now + buffer (never lower it), so a replay at a later server time sets a later watermark,
which covers every entry the original would have. Repeats of an entity merge into one item with
the largest buffer. Nothing here survives the process: a crash or ``close()`` loses what waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import Future
from typing import Any

from gcache._log import ErrorLog, summary
from gcache.epochs import Epochs
from gcache.metrics import Metrics

__all__ = ["BACKOFF_SEC", "REPLAY_CHUNK", "InvalidationOutbox", "Pending"]

BACKOFF_SEC = (0.05, 2.0)  # first and longest pause between replays while Redis fails
# Items replayed in one round trip: past a few hundred a larger pipeline saves little time and
# holds the loop thread (building and parsing it) longer at a stretch.
REPLAY_CHUNK = 500


class Pending:
    """One entity's invalidation waiting for Redis."""

    __slots__ = ("buffer_ms", "entity", "fence", "key_type", "queued", "version")

    def __init__(self, entity: str, fence: str, key_type: str, buffer_ms: int, version: int) -> None:
        self.entity = entity
        self.fence = fence
        self.key_type = key_type
        self.buffer_ms = buffer_ms
        self.queued = time.monotonic()
        # Taken anew by every repeat merged in: an application (a replay, or an invalidation
        # Redis took directly) settles the item only if none came since it was sent, since a
        # repeat after it needs a watermark from a later server time.
        self.version = version


class InvalidationOutbox:
    """The bounded outbox of one GCache (see the module docstring).

    Args:
        capacity: entities kept at most (0: none; :meth:`keep` then answers False).
        epochs: the LOCAL epochs whose ``held`` entities this outbox sets and clears.
        apply: applies a chunk of items in Redis in one round trip (one per cluster node), then
            in this process (the epoch bump after the watermark's rise); answers each item's
            result in order: ``"applied"``, ``"unconfirmed"`` (the primary took it, too few
            replicas confirmed it) or the exception of one Redis did not take; raises
            ``RemoteError`` when Redis took none.
        submit: starts a coroutine function on gcache's loop thread.
        failing: whether the breaker is open (no replay is tried until it closes or a backoff ends).
    """

    def __init__(
        self,
        capacity: int,
        *,
        epochs: Epochs,
        apply: Callable[[Sequence[Pending]], Awaitable[Sequence[str | BaseException]]],
        submit: Callable[[Callable[[], Coroutine[Any, Any, None]]], Future[Any]],
        failing: Callable[[], bool],
        metrics: Metrics,
        errors: ErrorLog,
        backoff: tuple[float, float] = BACKOFF_SEC,
        chunk: int = REPLAY_CHUNK,
    ) -> None:
        self.capacity = capacity
        self._epochs = epochs
        self._apply = apply
        self._submit = submit
        self._failing = failing
        self._metrics = metrics
        self._errors = errors
        self._backoff = backoff
        self._chunk = chunk
        self._pending: dict[str, Pending] = {}  # fence -> item, oldest first
        self._versions = itertools.count(1)
        self._lock = threading.Lock()
        self._draining = False  # a drain runs (or is submitted) on the loop thread
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def __len__(self) -> int:
        return len(self._pending)

    def waiting(self, limit: int) -> list[Pending]:
        """The ``limit`` oldest items waiting (the admin app shows them; not to be changed)."""
        with self._lock:
            return list(itertools.islice(self._pending.values(), max(limit, 0)))

    def keep(self, entity: str, fence: str, key_type: str, buffer_ms: int) -> bool:
        """Keep an invalidation Redis did not take, and hold its entity; False when there is no
        outbox (capacity 0) or it is closed. A full outbox drops its oldest item for this one."""
        if not self.capacity or self._closed:
            return False
        dropped: Pending | None = None
        with self._lock:
            item = self._pending.get(fence)
            if item is not None:
                item.buffer_ms = max(item.buffer_ms, buffer_ms)  # the replay covers both
                item.version = next(self._versions)
            else:
                if len(self._pending) >= self.capacity:
                    dropped = self._pending.pop(next(iter(self._pending)))
                    self._epochs.held.discard(dropped.entity)
                    self._epochs.hold_every = True  # its REMOTE entries are trusted nowhere here
                else:
                    self._metrics.outbox_depth.inc()
                self._pending[fence] = Pending(entity, fence, key_type, buffer_ms, next(self._versions))
                self._epochs.held.add(entity)
            start = not self._draining
            self._draining = True
        if dropped is not None:
            self._metrics.outbox_dropped.labels("full").inc()
            self._errors.warning(
                ("outbox", "full"),
                f"invalidation outbox full ({self.capacity} entities): dropped the invalidation of "
                f"{dropped.entity!r} (waiting {time.monotonic() - dropped.queued:.1f} s); Redis may "
                "serve its entries until their TTL, and this process runs every tracked call "
                "uncached until the outbox drains (invalidate it again once Redis answers)",
            )
        if start:
            self._start()
        return True

    def version(self, fence: str) -> int:
        """The waiting item's version (0: none waits), taken before a direct invalidation is sent."""
        item = self._pending.get(fence) if self._pending else None
        return 0 if item is None else item.version

    def applied(self, fence: str, buffer_ms: int, version: int) -> None:
        """An invalidation of ``fence`` Redis took directly, sent when the waiting item was at
        ``version``: the item is done if nothing merged into it since and its buffer is covered."""
        if version:
            with self._lock:
                item = self._pending.get(fence)
                if item is None or item.buffer_ms > buffer_ms:
                    return
            self._settle(fence, version)

    def wake(self) -> None:
        """Replay now (the breaker closed, the bus is up): ends the current backoff."""
        loop, event = self._loop, self._wake
        if loop is not None and event is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to wake
                loop.call_soon_threadsafe(event.set)

    def close(self) -> int:
        """Give up what waits (the GCache is closing): counted as dropped, ``closed``; how many."""
        with self._lock:
            self._closed = True
            items = list(self._pending.values())
            self._pending.clear()
            self._release_all()
        if items:
            self._metrics.outbox_depth.dec(len(items))
            self._metrics.outbox_dropped.labels("closed").inc(len(items))
            self._errors.warning(
                ("outbox", "closed"),
                f"GCache closed with {len(items)} invalidation(s) Redis never took (first: "
                f"{items[0].entity!r}): Redis may serve their entries until their TTL",
            )
        return len(items)

    def after_fork_in_child(self) -> None:
        """A child keeps its parent's items and replays them too (a second raise of a watermark
        only moves it later), on its own loop thread; the depth gauge, reset by the metrics'
        fork hook, counts them again."""
        self._lock = threading.Lock()
        self._wake = self._loop = None
        self._draining = False
        if self._pending and not self._closed:
            self._metrics.outbox_depth.inc(len(self._pending))
            self._draining = True
            self._start()

    # -- on the loop thread ----------------------------------------------------------------------

    def _start(self) -> None:
        try:
            self._submit(self._drain)
        except RuntimeError:  # the loop thread is stopping (close): nothing more is replayed
            with self._lock:
                self._draining = False

    async def _drain(self) -> None:
        """Replay every item, oldest first, until none waits; back off while Redis fails."""
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        first, longest = self._backoff
        pause = first
        while True:
            with self._lock:
                items = list(self._pending.values())
                if not items or self._closed:
                    self._draining = False
                    return
            if not self._failing() and await self._replay(items):
                pause = first
                continue
            await self._sleep(pause * (0.5 + random.random() / 2))
            pause = min(pause * 2, longest)

    async def _replay(self, items: list[Pending]) -> bool:
        """Replay ``items`` a chunk per round trip; False when any is still waiting after it: the
        round ends at a chunk Redis did not answer (the chunks after it wait for the next round),
        and goes on past items Redis answered with an error (they wait; the others are settled)."""
        refused: BaseException | None = None
        failed = 0
        for start in range(0, len(items), self._chunk):
            chunk = items[start : start + self._chunk]
            with self._lock:  # each item's version before its buffer is read (keep: the reverse)
                sent = [item.version for item in chunk]
            try:
                results = await self._apply(chunk)
            except Exception as exc:
                self._refused(failed + len(chunk), exc)
                return False
            counts: Counter[str] = Counter()
            for item, version, result in zip(chunk, sent, results, strict=True):
                if isinstance(result, BaseException):
                    failed += 1
                    refused = refused or result
                else:
                    counts[result] += 1
                    self._settle(item.fence, version)
            for result, n in counts.items():
                self._metrics.outbox_replay.labels(result).inc(n)
        if refused is not None:
            self._refused(failed, refused)
            return False
        return True

    def _refused(self, items: int, exc: BaseException) -> None:
        self._metrics.outbox_replay.labels("failed").inc(items)
        self._errors.warning(
            ("outbox", "replay"),
            f"invalidation outbox: replay of {items} item(s) failed ({summary(exc)}), "
            f"{len(self._pending)} waiting; tried again with backoff",
        )

    async def _sleep(self, seconds: float) -> None:
        event = self._wake
        assert event is not None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(event.wait(), seconds)
        event.clear()

    # -- the held entities -----------------------------------------------------------------------

    def _settle(self, fence: str, version: int) -> None:
        """An item applied as it was at ``version``: gone, unless a repeat merged into it since
        (that one still needs its replay)."""
        with self._lock:
            item = self._pending.get(fence)
            if item is None or item.version != version:
                return
            del self._pending[fence]
            self._metrics.outbox_depth.dec()
            self._epochs.held.discard(item.entity)
            if not self._pending:
                self._epochs.hold_every = False

    def _release_all(self) -> None:
        self._epochs.held.clear()
        self._epochs.hold_every = False
