"""Reads sent as hand-packed pipelines, and the auto-pipelining of one event loop's reads.

A tracked read is TIME, GET, HMGET (and PTTL) on one pooled connection in one write: redis-py's
Pipeline object costs the client what a Lua script costs the server (both about 20 µs over a GET
here), this costs about what one GET does. Under concurrency :class:`ReadQueue` goes further:
reads that find another in flight on their event loop go to Redis together.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import math
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

import redis
import redis.asyncio

__all__ = ["ReadQueue", "TrackedRead", "parse_fence_read", "parse_tracked", "pipelined"]

# Most reads one write carries: past this a queue starts another batch (on another connection).
MAX_BATCH = 256
# A deadline that fires this much later than its time found the event loop busy (see _Deadline).
_LATE_SEC = 0.005
_TIME = b"*1\r\n$4\r\nTIME\r\n"


class TrackedRead(NamedTuple):
    raw: bytes | None
    nonce: bytes | None  # None: the entity has no fence
    watermark_us: int
    now_us: int  # t0: server time of this read
    pttl_ms: int = -1  # the value's remaining life; -1: no TTL or no value


def parse_tracked(reply: list[Any]) -> TrackedRead:
    """The read script's reply, taken as the pipeline's replies (the script always has a fence)."""
    raw, nonce, watermark, seconds, micros = reply[:5]
    pttl = [p for p in reply[5:6] if p is not None]  # Lua's nil ends the reply
    read = parse_fence_read([[seconds, micros], raw, [nonce, watermark], *pttl])
    assert read is not None, "the read script returned no fence"
    return read


def _pack_reads(encode: Callable[[str], bytes], key: str, fence: str, with_ttl: bool) -> bytes:
    """GET, HMGET (, PTTL) of a tracked read packed for the wire: redis-py's asyncio packer
    costs 5.7 µs for these commands and TIME, this 1. ``encode`` is the connection's own."""
    k, f = encode(key), encode(fence)
    value = b"$%d\r\n%b\r\n" % (len(k), k)
    return b"".join(
        (
            b"*2\r\n$3\r\nGET\r\n",
            value,
            b"*4\r\n$5\r\nHMGET\r\n$%d\r\n%b\r\n$1\r\nn\r\n$1\r\nw\r\n" % (len(f), f),
            b"*2\r\n$4\r\nPTTL\r\n" + value if with_ttl else b"",
        )
    )


def _pack_get(encode: Callable[[str], bytes], key: str) -> bytes:
    k = encode(key)
    return b"*2\r\n$3\r\nGET\r\n$%d\r\n%b\r\n" % (len(k), k)


def fence_read(encode: Callable[[str], bytes], key: str, fence: str, with_ttl: bool) -> tuple[bytes, int]:
    """READ_TRACKED's reads as plain commands in the script's order, TIME, GET, HMGET (, PTTL),
    packed for the wire, and how many replies they get."""
    return _TIME + _pack_reads(encode, key, fence, with_ttl), 4 if with_ttl else 3


def parse_fence_read(replies: list[Any]) -> TrackedRead | None:
    """The replies of :func:`fence_read`'s commands; None when the entity has no fence, which
    only the script can create atomically with the read.

    Other clients' commands may run between these reads, unlike the script's; each such
    interleaving only makes the read more careful. An invalidation that lands after TIME raises
    the watermark this read sees (its entry reads as invalidated, its write is refused, no caller
    joins it); a fence replaced after GET has another nonce than the entry. A value that expired
    between GET and PTTL was at the end of its grace period: it counts as past its TTL (0).
    """
    (seconds, micros), raw, (nonce, watermark) = replies[0], replies[1], replies[2]
    if nonce is None:
        return None
    pttl = int(replies[3]) if raw is not None and len(replies) > 3 else -1
    if pttl == -2:  # gone since GET: the very end of its grace period
        pttl = 0
    return TrackedRead(
        raw,
        nonce,
        int(watermark) if watermark is not None else 0,
        int(seconds) * 1_000_000 + int(micros),
        pttl,
    )


def pool_args(get_connection: Callable[..., Any]) -> tuple[str, ...]:
    """What ``get_connection`` is called with: nothing since redis-py 5.3 (a command name warns);
    before, a command name, which only a cluster uses."""
    name = inspect.signature(get_connection).parameters.get("command_name")
    return () if name is None or name.default is not inspect.Parameter.empty else ("TIME",)


_POOL_ARGS = pool_args(redis.ConnectionPool.get_connection)
_ASYNC_POOL_ARGS = pool_args(redis.asyncio.ConnectionPool.get_connection)


def _read_replies(read: Callable[[], Any], n: int) -> list[Any]:
    """``n`` replies; a command's error is raised after the last one is read."""
    replies = []
    error: redis.ResponseError | None = None
    for _ in range(n):
        try:
            replies.append(read())
        except redis.ResponseError as exc:
            error = error or exc
    if error is not None:
        raise error
    return replies


def pipelined(
    pool: Any, key: str, fence: str, with_ttl: bool, sending: Callable[[], None] | None = None
) -> list[Any]:
    """The replies of :func:`fence_read`'s commands, sent in one write on one pooled connection.

    ``sending()`` is called once the connection is at hand, before the write. redis-py's retry
    policy applies as to its own commands.
    """
    connection = pool.get_connection(*_POOL_ARGS)
    if sending is not None:
        sending()
    try:
        packed, n = fence_read(connection.encoder.encode, key, fence, with_ttl)

        def send_and_read() -> list[Any]:
            connection.send_packed_command([packed])  # a list: redis-py's sync sender iterates it
            return _read_replies(connection.read_response, n)

        replies: list[Any] = connection.retry.call_with_retry(
            send_and_read, lambda _: connection.disconnect()
        )
        return replies
    except BaseException:
        connection.disconnect()  # replies may be left unread on it
        raise
    finally:
        pool.release(connection)


class _Deadline:
    """The deadline of a batch of replies, as ``asyncio.timeout`` (one timer, the task cancelled
    when it fires), but forgiving a busy event loop once.

    A timer that runs more than ``_LATE_SEC`` after its time found the loop busy (callbacks that
    ran long, another thread holding the GIL): the replies may be in the socket, unread behind the
    work that delayed the loop, and the deadline moves by its term once. A silent Redis is still
    told after at most twice the deadline; a busy loop no longer turns a read Redis answered in
    time into a timeout.
    """

    __slots__ = ("_cancelling", "_handle", "_loop", "_task", "_term", "_when", "fired", "moved")

    def __init__(self, term: float) -> None:
        loop = self._loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        assert task is not None
        self._task = task
        self._cancelling = 0
        if sys.version_info >= (3, 11):
            self._cancelling = task.cancelling()
        self._term = term
        self._when = loop.time() + term
        self._handle = loop.call_at(self._when, self._fire)
        self.fired = self.moved = False

    def _fire(self) -> None:
        now = self._loop.time()
        if not self.moved and now - self._when > _LATE_SEC:
            self.moved = True
            self._when = now + self._term
            self._handle = self._loop.call_at(self._when, self._fire)
            return
        self.fired = True
        self._task.cancel()

    def expired(self) -> bool:
        """On a CancelledError: whether it is this deadline's (then TimeoutError is raised)."""
        if not self.fired:
            return False
        if sys.version_info >= (3, 11):  # a cancellation from elsewhere as well stays one
            return self._task.uncancel() <= self._cancelling
        return True  # pragma: no cover - Python 3.10

    def cancel(self) -> None:
        self._handle.cancel()


async def _exchange(connection: Any, packed: bytes, n: int) -> list[Any]:
    """Write ``packed`` and read its ``n`` replies (a command's error in its place) within the
    connection's socket timeout (see :class:`_Deadline`); redis-py's retry policy applies.

    One deadline covers every reply, as it covers a GET's one: redis-py's own deadline per reply
    costs a timer each, 4.5 µs.
    """

    async def send_and_read() -> list[Any]:
        await connection.send_packed_command([packed])
        term = connection.socket_timeout
        deadline = None if term is None else _Deadline(term)
        replies: list[Any] = []
        try:
            for _ in range(n):
                try:
                    replies.append(await connection.read_response(timeout=math.inf))
                except redis.ResponseError as exc:  # read the rest: the connection stays in step
                    replies.append(exc)
        except asyncio.CancelledError:
            if deadline is not None and deadline.expired():
                raise TimeoutError(f"no reply within {term} s") from None
            raise
        finally:
            if deadline is not None:
                deadline.cancel()
        return replies

    try:
        replies: list[Any] = await connection.retry.call_with_retry(
            send_and_read, lambda _: connection.disconnect()
        )
        return replies
    except BaseException:
        await connection.disconnect(nowait=True)  # replies may be left unread on it
        raise


async def apipelined(
    pool: Any, key: str, fence: str | None, with_ttl: bool, sending: Callable[[], None] | None = None
) -> list[Any]:
    """Async twin of :func:`pipelined`; with no ``fence``, a GET's one reply.

    A GET goes this way rather than through redis-py's ``get`` for its deadline
    (:class:`_Deadline`), and costs less.
    """
    connection = await pool.get_connection(*_ASYNC_POOL_ARGS)
    if sending is not None:
        sending()
    try:
        encode = connection.encoder.encode
        if fence is None:
            replies = await _exchange(connection, _pack_get(encode, key), 1)
        else:
            replies = await _exchange(connection, *fence_read(encode, key, fence, with_ttl))
    finally:
        await pool.release(connection)
    for reply in replies:
        if isinstance(reply, redis.ResponseError):
            raise reply
    return replies


class _Queued:
    __slots__ = ("fence", "future", "key", "sending", "with_ttl")

    def __init__(
        self,
        key: str,
        fence: str | None,
        with_ttl: bool,
        sending: Callable[[], None] | None,
        future: asyncio.Future[Any],
    ) -> None:
        self.key, self.fence, self.with_ttl, self.sending, self.future = key, fence, with_ttl, sending, future


class ReadQueue:
    """One event loop's REMOTE reads on one single-server client, auto-pipelined.

    A read that finds none in flight on this loop goes straight to Redis, as it always did. A
    read that finds one does not take a connection of its own: it queues, and every read queued
    by the end of the loop's pass goes to Redis in one write on one pooled connection, with one
    TIME shared by the tracked reads of the batch (it precedes each of their reads, which is all
    a fence needs; see :func:`parse_fence_read`). N callers at once then cost one pool checkout,
    one write and about one round trip instead of N of each. A read's ``sending()`` is called when
    its batch has a connection: until then other callers may take its result as theirs (see
    ``UseCase.amerged_read``). Each read gets its own error: a failed batch fails every read in
    it, a command's error only its own.
    """

    __slots__ = ("_loop", "_pool", "_queued", "_tasks", "busy")

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self._loop = asyncio.get_running_loop()
        self._queued: list[_Queued] = []  # the batch still open to new reads
        self._tasks: set[asyncio.Task[None]] = set()
        self.busy = 0  # reads of this queue not answered yet

    async def get(self, key: str) -> bytes | None:
        if self.busy:
            queued: bytes | None = await self._queue(key, None, False, None)
            return queued
        self.busy = 1
        try:
            alone: bytes | None = (await apipelined(self._pool, key, None, False))[0]
            return alone
        finally:
            self.busy -= 1

    async def read_tracked(
        self, key: str, fence: str, with_ttl: bool, sending: Callable[[], None] | None
    ) -> list[Any]:
        """The replies of :func:`fence_read`'s commands."""
        if self.busy:
            replies: list[Any] = await self._queue(key, fence, with_ttl, sending)
            return replies
        self.busy = 1
        try:
            return await apipelined(self._pool, key, fence, with_ttl, sending)
        finally:
            self.busy -= 1

    def _queue(
        self, key: str, fence: str | None, with_ttl: bool, sending: Callable[[], None] | None
    ) -> asyncio.Future[Any]:
        future = self._loop.create_future()
        batch = self._queued
        if not batch or len(batch) >= MAX_BATCH:
            batch = self._queued = []
            task = self._loop.create_task(self._send(batch))
            self._tasks.add(task)  # the loop keeps only a weak reference
            task.add_done_callback(self._tasks.discard)
        batch.append(_Queued(key, fence, with_ttl, sending, future))
        self.busy += 1
        return future

    async def _send(self, batch: list[_Queued]) -> None:
        if self._queued is batch:
            self._queued = []  # closed: later reads start the next batch
        try:
            live = [q for q in batch if not q.future.done()]  # a caller may have given up
            if live:
                _answer(live, await self._write(live))
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

    async def _write(self, batch: list[_Queued]) -> list[Any]:
        pool = self._pool
        connection = await pool.get_connection(*_ASYNC_POOL_ARGS)
        try:
            encode = connection.encoder.encode
            parts = []
            n = 0
            for q in batch:
                if q.sending is not None:
                    q.sending()
                if q.fence is None:
                    parts.append(_pack_get(encode, q.key))
                    n += 1
                else:
                    parts.append(_pack_reads(encode, q.key, q.fence, q.with_ttl))
                    n += 3 if q.with_ttl else 2
            if n > len(batch):  # tracked reads: TIME first
                parts.insert(0, _TIME)
                n += 1
            return await _exchange(connection, b"".join(parts), n)
        finally:
            await pool.release(connection)


def _answer(batch: list[_Queued], replies: list[Any]) -> None:
    """Hand each queued read its replies (a tracked read's as :func:`fence_read`'s would be)."""
    tracked = any(q.fence is not None for q in batch)
    time = replies[0] if tracked else None
    i = 1 if tracked else 0
    for q in batch:
        if q.fence is None:
            mine = [replies[i]]
            i += 1
        else:
            n = 3 if q.with_ttl else 2
            mine = [time, *replies[i : i + n]]
            i += n
        future = q.future
        if future.done():
            continue
        error = next((r for r in mine if isinstance(r, redis.ResponseError)), None)
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(mine[0] if q.fence is None else mine)
