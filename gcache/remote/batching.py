"""Auto-pipelining: one event loop's concurrent reads sent to Redis in one write."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from typing import Any

import redis

from gcache.remote.protocol import (
    ASYNC_POOL_ARGS,
    ValueRead,
    apipelined,
    exchange,
    head,
    pack_get,
    pack_reads,
)

__all__ = ["MAX_BATCH", "ReadQueue"]

# Most reads one write carries: past this a queue starts another batch (on another connection).
MAX_BATCH = 256


class _Queued:
    __slots__ = ("fence", "fencing", "future", "key", "sending", "with_ttl")

    def __init__(
        self,
        key: str,
        fence: str | None,
        with_ttl: bool,
        sending: Callable[[], None] | None,
        future: asyncio.Future[Any],
        fencing: bool,
    ) -> None:
        self.key, self.fence, self.with_ttl, self.sending, self.future = key, fence, with_ttl, sending, future
        self.fencing = fencing


def _head(batch: list[_Queued]) -> tuple[bytes, int]:
    """What the batch's write starts with: nothing for GETs alone; for tracked reads TIME, with
    INFO replication if one of them is fenced (see :func:`~gcache.remote.protocol.head`)."""
    tracked = False
    for q in batch:
        if q.fence is not None:
            if q.fencing:
                return head(True)
            tracked = True
    return head(False) if tracked else (b"", 0)


class ReadQueue:
    """One event loop's REMOTE reads on one single-server client, auto-pipelined.

    A read that finds none in flight on this loop goes straight to Redis, as it always did. A
    read that finds one does not take a connection of its own: it queues, and every read queued
    by the end of the loop's pass goes to Redis in one write on one pooled connection, with one
    head (TIME, INFO replication; TIME alone without failover fencing) shared by the tracked reads
    of the batch (it precedes each of their reads, which is all a fence needs; see
    :func:`~gcache.remote.protocol.parse_fence_read`).
    N callers at once then
    cost one pool checkout, one write and about one round trip instead of N of each. A read's
    ``sending()`` is called when its batch has a connection: until then other callers may take
    its result as theirs (see ``UseCase.amerged_read``). Each read gets its own error: a failed
    batch fails every read in it, a command's error only its own. Values are read as ``read``
    says (GET, or a bounded GETRANGE: see :func:`~gcache.remote.protocol.value_read`), and
    answered as Redis gave them (b"" for none, after a GETRANGE).
    """

    __slots__ = ("_loop", "_pool", "_queued", "_read", "_tasks", "busy")

    def __init__(self, pool: Any, read: ValueRead) -> None:
        self._pool = pool
        self._read = read
        self._loop = asyncio.get_running_loop()
        self._queued: list[_Queued] = []  # the batch still open to new reads
        self._tasks: set[asyncio.Task[None]] = set()
        self.busy = 0  # reads of this queue not answered yet

    async def get(self, key: str) -> bytes | None:
        if self.busy:
            queued: bytes | None = await self._queue(key, None, False, None, False)
            return queued
        self.busy = 1
        try:
            alone: bytes | None = (await apipelined(self._pool, self._read, key, None, False))[0]
            return alone
        finally:
            self.busy -= 1

    async def read_tracked(
        self, key: str, fence: str, with_ttl: bool, sending: Callable[[], None] | None, fencing: bool = True
    ) -> list[Any]:
        """The replies of :func:`~gcache.remote.protocol.fence_read`'s commands (with ``fencing``
        or without, as its)."""
        if self.busy:
            replies: list[Any] = await self._queue(key, fence, with_ttl, sending, fencing)
            return replies
        self.busy = 1
        try:
            return await apipelined(self._pool, self._read, key, fence, with_ttl, sending, fencing)
        finally:
            self.busy -= 1

    def _queue(
        self,
        key: str,
        fence: str | None,
        with_ttl: bool,
        sending: Callable[[], None] | None,
        fencing: bool,
    ) -> asyncio.Future[Any]:
        future = self._loop.create_future()
        batch = self._queued
        if not batch or len(batch) >= MAX_BATCH:
            batch = self._queued = []
            task = self._loop.create_task(self._send(batch))
            self._tasks.add(task)  # the loop keeps only a weak reference
            task.add_done_callback(self._tasks.discard)
        batch.append(_Queued(key, fence, with_ttl, sending, future, fencing))
        self.busy += 1
        return future

    async def _send(self, batch: list[_Queued]) -> None:
        if self._queued is batch:
            self._queued = []  # closed: later reads start the next batch
        try:
            live = [q for q in batch if not q.future.done()]  # a caller may have given up
            if live:
                first = _head(live)  # once: the write starts with it, the answers skip it
                _answer(live, first[1], await self._write(live, first))
        except BaseException as exc:
            for q in batch:
                if not q.future.done():
                    if isinstance(exc, asyncio.CancelledError):
                        q.future.cancel()
                    else:  # a copy each: many callers raising one instance would chain tracebacks
                        q.future.set_exception(copy.copy(exc))
            if not isinstance(exc, Exception):
                raise
        finally:
            self.busy -= len(batch)

    async def _write(self, batch: list[_Queued], first: tuple[bytes, int]) -> list[Any]:
        pool = self._pool
        connection = await pool.get_connection(*ASYNC_POOL_ARGS)
        try:
            encode, read = connection.encoder.encode, self._read
            parts = []
            n = 0
            for q in batch:
                if q.sending is not None:
                    q.sending()
                if q.fence is None:
                    parts.append(pack_get(encode, read, q.key))
                    n += 1
                else:
                    parts.append(pack_reads(encode, read, q.key, q.fence, q.with_ttl, q.fencing))
                    n += 3 if q.with_ttl else 2
            parts.insert(0, first[0])  # tracked reads: the head (TIME, INFO replication) first
            return await exchange(connection, b"".join(parts), n + first[1])
        finally:
            await pool.release(connection)


def _answer(batch: list[_Queued], i: int, replies: list[Any]) -> None:
    """Hand each queued read its replies (a tracked read's as
    :func:`~gcache.remote.protocol.fence_read`'s would be: TIME, and INFO's reply if it is
    fenced), the ``i`` of the head first."""
    fenced, unfenced = replies[:i], replies[:1]  # TIME (and INFO's reply, first: see _head)
    for q in batch:
        if q.fence is None:
            mine = [replies[i]]
            i += 1
        else:
            n = 3 if q.with_ttl else 2
            mine = [*(fenced if q.fencing else unfenced), *replies[i : i + n]]
            i += n
        future = q.future
        if future.done():
            continue
        error = next((r for r in mine if isinstance(r, redis.ResponseError)), None)
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(mine[0] if q.fence is None else mine)
