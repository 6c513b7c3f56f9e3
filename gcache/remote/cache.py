"""The Redis operations gcache needs, as async and sync twins, each counted on the breaker.

Every redis-py failure leaves this module as :class:`~gcache.errors.RemoteError`. Every
operation has a deadline by its kind: a lookup (READ), a write-back or lock (WRITE), or an
invalidation, deletion or flush (ADMIN, the client's own socket timeout); see
:mod:`gcache.remote.clients`. A factory's client is shared by the kinds; each of its
operations, as each of an asyncio cluster client's, is wrapped in an asyncio timeout of its
deadline.

About 420 lines, nearly all of it :class:`RemoteCache`, for the reason its docstring gives.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from operator import methodcaller
from typing import Any, NamedTuple, TypeVar

import redis
import redis.asyncio

from gcache._loop_thread import LoopThread
from gcache.breaker import CircuitBreaker, NodeBreakers
from gcache.bus import message_signature
from gcache.config import RedisConfig
from gcache.errors import RemoteError, ReplicasNotConfirmed
from gcache.original_wire import WATERMARK_TTL_SECONDS
from gcache.remote import sentinel
from gcache.remote.clients import (
    ADMIN,
    READ,
    WRITE,
    Connection,
    Connections,
    cluster_client,
    no_retry,
    not_opened,
)
from gcache.remote.protocol import (
    TrackedRead,
    abatch_pipelined,
    ainvalidate_and_wait,
    ainvalidations_and_wait,
    batch_pipelined,
    invalidate_and_wait,
    parse_batch,
    parse_fence_read,
    parse_original,
    parse_tracked,
    pipelined,
    read_limit,
)
from gcache.signing import Signer
from gcache.urns import DEFAULT_URN_PREFIX, bus_channel, entity_of, owned_by

__all__ = ["RemoteCache", "Write", "new_nonce"]

T = TypeVar("T")

_REDIS_ERRORS = (redis.RedisError, OSError, asyncio.TimeoutError, EOFError)
_SCAN_BATCH = 1000
_PING = methodcaller("ping")


if sys.version_info >= (3, 11):

    async def _within(seconds: float, awaitable: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(seconds):
                return await awaitable
        except TimeoutError as exc:  # asyncio's has no message: the log line would end in "TimeoutError: "
            raise TimeoutError(f"no reply within {seconds:g} s") from exc

else:  # pragma: no cover - Python 3.10

    async def _within(seconds: float, awaitable: Awaitable[T]) -> T:
        try:
            return await asyncio.wait_for(awaitable, seconds)
        except asyncio.TimeoutError as exc:
            raise asyncio.TimeoutError(f"no reply within {seconds:g} s") from exc


def _parse_with_ttl(reply: list[Any]) -> tuple[bytes | None, int]:
    raw, pttl = reply
    return (raw, int(pttl)) if raw else (None, -1)  # b"": GETRANGE's none


def new_nonce() -> bytes:
    return os.urandom(8)


class Write(NamedTuple):
    """One write of a batch: an entry, and for a tracked one its fence and the read it is fenced by."""

    key: str
    envelope: bytes
    ttl_ms: int
    fence: str | None = None
    read: TrackedRead | None = None


class RemoteCache(Connections):
    """Redis access for one GCache instance.

    Args:
        redis_config: builds both clients; or
        client_factory: returns a ``redis.asyncio`` client, called once per event loop.
        compute_limit_ms: see ``GCacheConfig.tracked_compute_limit_sec``.
        loop_thread: where sync callers run async-only clients.
        channel: where invalidations and deletions are published for other processes.
        signer: signs what is published there (None: unsigned messages).
        read_timeout, write_timeout: deadlines of READ and WRITE operations (None: the client's
            socket timeout).
        breaker_failures, breaker_probe_sec, on_breaker: the circuit breaker (see
            :class:`~gcache.breaker.CircuitBreaker`); ``on_breaker(True)`` when it opens. With
            ``RedisConfig(cluster=True)`` a breaker per node instead
            (:class:`~gcache.breaker.NodeBreakers`), ``on_node_breaker(node, True)`` when one
            opens.
        on_pool_wait: per kind (READ, WRITE, ADMIN), told the seconds a caller waited for a pooled
            connection when none was free (see :class:`~gcache.remote.clients.WaitTimedPool`).
        max_value_bytes: ``GCacheConfig.max_value_bytes``. Every value read then asks Redis for
            at most ``read_limit`` + 1 bytes (GETRANGE, in the scripts too), so that a planted
            giant costs a read no more than a value just over the limit, and reads as too large
            (longer than ``read_limit``); None: values are read whole (GET).
        legacy_compat: tracked entities keep the original gcache's watermarks (its key, a
            string of milliseconds), read and written by the ``*_ORIGINAL`` scripts.
        on_foreign_watermark: told the fence key when a tracked read without ``legacy_compat``
            finds such a watermark there (the read script then makes it a fence).
        failover_buffer_ms: a fence of another replication history (inherited through a
            failover) is made anew with the watermark server-now + this.
        failover_fencing: False: tracked reads send no ``INFO replication`` and trust a fence
            whatever its history (the scripts still stamp and check it: see
            :mod:`~gcache.remote.scripts`, ``_REPLID``).
        on_info_refused: told True when a tracked read finds ``INFO`` refused (an ACL without
            ``+info``, a server without it: failover fencing is then off), False when it is
            answered again; only on a change, only with ``failover_fencing``.
        on_mget_refused: told once when Redis refuses MGET, which an unbounded untracked batch
            sends (``max_value_bytes`` None, one server); its batches then send a GET a key.
        invalidate_replicas, invalidate_wait_ms: an invalidation returns once ``WAIT`` confirms
            this many replicas have it, or raises ``RemoteError`` (cause
            :class:`~gcache.errors.ReplicasNotConfirmed`) after this long; 0: no WAIT.

    A class of about 300 lines: a twin pair per operation (about twenty), each two or three lines
    around one command it builds once; one concern, Redis's commands, better read together.
    """

    def __init__(
        self,
        *,
        redis_config: RedisConfig | None,
        client_factory: Callable[[], Any] | None,
        compute_limit_ms: int,
        loop_thread: LoopThread,
        channel: str = bus_channel(DEFAULT_URN_PREFIX),
        signer: Signer | None = None,
        read_timeout: float | None = None,
        write_timeout: float | None = None,
        breaker_failures: int = 0,
        breaker_probe_sec: float = 1.0,
        on_breaker: Callable[[bool], None] = lambda is_open: None,
        on_pool_wait: tuple[Callable[[float], None] | None, ...] = (None, None, None),
        max_value_bytes: int | None = None,
        legacy_compat: bool = False,
        on_foreign_watermark: Callable[[str], None] = lambda fence: None,
        failover_buffer_ms: int = 0,
        invalidate_replicas: int = 0,
        invalidate_wait_ms: int = 0,
        on_node_breaker: Callable[[str, bool], None] = lambda node, is_open: None,
        failover_fencing: bool = True,
        on_info_refused: Callable[[bool], None] = lambda refused: None,
        on_mget_refused: Callable[[], None] = lambda: None,
    ) -> None:
        self.failover_fencing = failover_fencing
        self._trust_any = "" if failover_fencing else "1"  # READ_TRACKED's ARGV[5]
        self._on_info_refused = on_info_refused
        self.info_refused = False  # whether the last tracked read that asked found INFO refused
        self._info_lock = threading.Lock()  # a change told once, however many threads see it
        limit = self.read_limit = read_limit(max_value_bytes)
        # An untracked batch on one server: one MGET when reads are unbounded, until Redis refuses
        # it (an ACL user without +mget), then a GET a key (told once: on_mget_refused)
        self.mget = limit is None
        self._on_mget_refused = on_mget_refused
        super().__init__(
            redis_config,
            client_factory,
            loop_thread,
            (read_timeout, write_timeout, None),
            on_pool_wait,
            limit,
        )
        self._limit_args: list[int] = [] if limit is None else [limit]  # the read scripts' last ARGV
        self.channel = channel
        self._signer = signer
        self.origin = os.urandom(6).hex()  # names this instance in what it publishes
        self._compute_limit_ms = compute_limit_ms
        self.legacy_compat = legacy_compat
        self._on_foreign_watermark = on_foreign_watermark
        self._failover_buffer_ms = failover_buffer_ms
        self._wait = (invalidate_replicas, invalidate_wait_ms) if invalidate_replicas > 0 else None
        # An asyncio operation under a timeout of its deadline as a whole: a factory's client
        # (shared by the kinds), and a cluster client, whose retries, redirections and topology
        # refreshes no socket timeout bounds.
        self._whole_bound = client_factory is not None or (redis_config is not None and redis_config.cluster)
        cluster = redis_config is not None and redis_config.cluster
        if cluster:  # a breaker per node; the GCache's own never skips the whole cluster
            self.node_breakers = NodeBreakers(
                threshold=breaker_failures, probe_sec=breaker_probe_sec, on_change=on_node_breaker
            )
        self.breaker = CircuitBreaker(
            threshold=0 if cluster else breaker_failures,
            probe_sec=breaker_probe_sec,
            probe=self._probe,
            submit=loop_thread.submit,
            on_change=on_breaker,
        )

    def after_fork_in_child(self) -> None:
        """A new identity and no connections: the parent's sockets are the parent's.

        The parent's clients are left untouched (see :mod:`gcache._fork`); this process opens
        its own on first use.
        """
        self.origin = os.urandom(6).hex()
        self.forget_connections()
        self.breaker.after_fork_in_child()
        if self.node_breakers is not None:
            self.node_breakers.reset()
        self._failed_at = -1

    async def _arun(self, operation: str, kind: int, command: Callable[[Connection], Awaitable[T]]) -> T:
        breaker = self.breaker
        asked = breaker.answers
        conn: Connection | None = None
        try:
            conn = self._async_connection(kind)
            deadline = self._deadlines[kind]
            if self._whole_bound and deadline is not None:
                if conn.opening and self.opening_patient() and conn.may_open():
                    deadline += conn.opening  # see Connection.opening
                result = await _within(deadline, command(conn))
            else:
                result = await command(conn)
        except _REDIS_ERRORS as exc:
            if conn is not None and conn.opening and isinstance(exc, redis.TimeoutError):
                exc = not_opened(conn, exc)
            raise self._failed(operation, exc, asked) from exc
        breaker.answers += 1
        if breaker.failures:  # a success only matters after failures
            breaker.success()
        return result

    def _run(self, operation: str, kind: int, command: Callable[[Connection], Any]) -> Any:
        if self._factory is not None:
            return self._loop_thread.run(lambda: self._arun(operation, kind, command))
        breaker = self.breaker
        asked = breaker.answers
        try:
            result = command(self._sync[kind] or self._sync_connection(kind))
        except _REDIS_ERRORS as exc:
            raise self._failed(operation, exc, asked) from exc
        breaker.answers += 1
        if breaker.failures:  # a success only matters after failures
            breaker.success()
        return result

    _failed_at = -1  # the breaker's answers when an operation last failed (-1: none failed)

    def opening_patient(self) -> bool:
        """A connection opens under ``socket_connect_timeout`` only while Redis is not failing (an
        answer came since the last failure, or none failed), breaker or not: a server that
        accepts and never answers then costs the operation's deadline, not the bound. Nothing
        on the path of an answered operation."""
        return self.breaker.answers != self._failed_at

    def _failed(self, operation: str, exc: BaseException, answers_before: int | None = None) -> RemoteError:
        """Count a failed operation on the breaker (``answers_before``: see
        :meth:`CircuitBreaker.failure`); returns the error to raise."""
        self._failed_at = self.breaker.answers
        self.breaker.failure(exc, answers_before)
        return RemoteError(operation, exc)

    async def _probe(self) -> None:
        """The breaker's question, asked on the loop thread: does Redis answer a PING in time?"""
        await self._arun("ping", READ, _PING)

    # -- operations: each builds its command once; _arun / _run only differ in awaiting it ------

    def _read_tracked(self, key: str, fence: str, with_ttl: bool) -> Callable[[Connection], Any]:
        if self.legacy_compat:
            args: list[Any] = ["1" if with_ttl else "", *self._limit_args]
            return methodcaller("read_original", keys=[key, fence], args=args)
        return methodcaller("read_tracked", keys=[key, fence], args=self._read_args(with_ttl))

    def _read_args(self, with_ttl: bool) -> list[Any]:
        """READ_TRACKED's ARGV: a nonce for a fence it creates, the compute limit, PTTL or not,
        the failover buffer, whether to trust any fence's history, the read limit."""
        return [
            new_nonce(),
            self._compute_limit_ms,
            "1" if with_ttl else "",
            self._failover_buffer_ms,
            self._trust_any,
            *self._limit_args,
        ]

    def _info(self, refused: bool) -> None:
        """A tracked read found INFO refused, or answered again: told on a change (the callers
        compare first, on the read path; only with failover fencing). A thread that finds another
        telling a change leaves it to that one: a read after it compares again (and a child
        forked while the lock was held never blocks on it)."""
        if not self._info_lock.acquire(blocking=False):
            return
        try:
            if refused is self.info_refused:
                return
            self.info_refused = refused
        finally:
            self._info_lock.release()
        self._on_info_refused(refused)

    def _scripted(self, reply: list[Any]) -> TrackedRead:
        """READ_TRACKED's reply, whether it found INFO refused told."""
        if self.failover_fencing and (reply[5] == 1) is not self.info_refused:
            self._info(reply[5] == 1)
        return parse_tracked(reply)

    def _pipelined_batch(
        self, keys: Sequence[str], fences: Sequence[str] | None
    ) -> Callable[[Connection], Any]:
        """A batch's reads as one redis-py pipeline (no transaction): each key's GET (or
        GETRANGE), tracked READ_TRACKED's EVALSHA, which creates a missing fence. A cluster's
        pipeline groups them by node: one write and one round trip per node (the asyncio client's
        nodes side by side; key and fence share a slot). Errors come back in place
        (``raise_on_error=False``): a node without the script answers NOSCRIPT there.

        Not ``Script.__call__`` with the pipeline: its asyncio twin awaits the pipeline object.
        """
        limit = self.read_limit

        def queue(c: Connection) -> Any:
            pipe, target = _pipeline(c)
            if fences is None:
                for key in keys:
                    pipe.get(key) if limit is None else pipe.getrange(key, 0, limit)
            else:
                sha = c.read_tracked.sha
                for key, fence in zip(keys, fences, strict=True):
                    args = self._read_args(False)
                    pipe.execute_command("EVALSHA", sha, 2, key, fence, *args, **target(key))
            return pipe.execute(raise_on_error=False)

        return queue

    def _pipelined_found(self, replies: list[Any], fences: Sequence[str] | None) -> list[Any]:
        """:meth:`_pipelined_batch`'s replies: values (None for none), or tracked each read, a
        NOSCRIPT left in place for the caller to read through the script; any other error raised."""
        found: list[Any] = []
        for reply in replies:
            if isinstance(reply, Exception):
                if fences is None or not isinstance(reply, redis.exceptions.NoScriptError):
                    raise reply
                found.append(reply)
            elif fences is None:
                found.append(reply or None)
            else:
                found.append(self._scripted(reply))
        return found

    def _write_tracked(
        self, key: str, fence: str, read: TrackedRead, ttl_ms: int, envelope: bytes
    ) -> Callable[[Connection], Any]:
        if self.legacy_compat:  # stamped, and checked, in the original's milliseconds
            args: list[Any] = [read.now_us // 1000, ttl_ms, envelope, self._compute_limit_ms]
            return methodcaller("write_original", keys=[key, fence], args=args)
        return methodcaller("write_tracked", keys=[key, fence], args=self._write_args(read, ttl_ms, envelope))

    def _write_args(self, read: TrackedRead, ttl_ms: int, envelope: bytes) -> list[Any]:
        """WRITE_TRACKED's ARGV: the read's stamp and fence nonce, the TTL, the entry, the limit,
        a nonce and the failover buffer for a fence of another history it makes anew."""
        assert read.nonce is not None, "a tracked read always returns a fence"
        return [
            read.now_us,
            ttl_ms,
            read.nonce,
            envelope,
            self._compute_limit_ms * 1000,
            new_nonce(),
            self._failover_buffer_ms,
        ]

    def _signature(self, kind: str, buffer_ms: int, target: str) -> bytes:
        """The signature the scripts publish with a message; empty without keys (the message
        then keeps the unsigned format)."""
        if self._signer is None:
            return b""
        return message_signature(self._signer, kind, buffer_ms, self.origin, target)

    def _invalidate(self, fence: str, future_buffer_ms: int) -> Callable[[Connection], Any]:
        name, keys, args = self._invalidation(fence, future_buffer_ms)
        return methodcaller(name, keys=keys, args=args)

    def _invalidation(self, fence: str, future_buffer_ms: int) -> tuple[str, list[Any], list[Any]]:
        """The invalidation script's name on :class:`Connection`, its keys and its arguments."""
        entity = entity_of(fence)
        args = [
            future_buffer_ms,
            new_nonce(),
            self._compute_limit_ms,
            self.channel,
            entity,
            self.origin,
            self._signature("invalidate", future_buffer_ms, entity),
        ]
        if self.legacy_compat:
            args = [future_buffer_ms, WATERMARK_TTL_SECONDS * 1000, *args[3:]]
            return "invalidate_original", [fence], args
        return "invalidate", [fence], args

    def _confirmed(self, fence: str, future_buffer_ms: int) -> tuple[Callable[[Connection], Any], Any]:
        """With ``invalidate_replicas``: the invalidation and its WAIT on one connection, sync and
        async; a cluster's, on a connection of the fence's node (:func:`_node_pool`)."""
        name, keys, args = self._invalidation(fence, future_buffer_ms)
        wait = self._wait
        assert wait is not None

        def run(c: Connection) -> Any:
            if c.pool is not None:
                return invalidate_and_wait(c.pool, getattr(c, name), keys, args, wait)
            with _following_moves(c.client):
                return invalidate_and_wait(_node_pool(c.client, fence), getattr(c, name), keys, args, wait)

        async def arun(c: Connection) -> Any:
            if c.pool is not None:
                return await ainvalidate_and_wait(c.pool, getattr(c, name), keys, args, wait)
            async with _afollowing_moves(c.client):
                await c.client.initialize()  # its slots known (at once once they are)
                pool = _node_pool(c.client, fence)
                return await ainvalidate_and_wait(pool, getattr(c, name), keys, args, wait)

        return run, arun

    def _check_confirmed(self, result: tuple[Any, int]) -> int:
        watermark, confirmed = result
        short = self._shortfall(confirmed)
        if short is not None:
            raise RemoteError("invalidate", short)
        return int(watermark)

    def _shortfall(self, confirmed: int) -> ReplicasNotConfirmed | None:
        """What ``confirmed`` replicas (WAIT's answer) fall short of ``invalidate_replicas``."""
        wanted, wait_ms = self._wait  # type: ignore[misc]
        return ReplicasNotConfirmed(wanted, confirmed, wait_ms) if confirmed < wanted else None

    def _delete(self, key: str) -> Callable[[Connection], Any]:
        args = [self.channel, self.origin, self._signature("delete", 0, key)]
        return methodcaller("delete", keys=[key], args=args)

    def _announce_flush(self) -> list[Any]:
        return [self.channel, self.origin, self._signature("flush", 0, "")]

    def _read_with_ttl(self, key: str) -> Callable[[Connection], Any]:
        return methodcaller("read_with_ttl", keys=[key], args=self._limit_args)

    async def aget(self, key: str) -> bytes | None:
        """:meth:`_arun` written out for the one operation of every untracked REMOTE hit.

        The value, at most ``read_limit`` + 1 bytes of it; None when there is none.
        """
        if self._whole_bound:
            result: bytes | None = await self._arun("get", READ, methodcaller("get", key))
            return result or None  # b"": GETRANGE's none
        breaker = self.breaker
        asked = breaker.answers
        try:
            raw: bytes | None = await self._async_connection(READ).get(key)
        except _REDIS_ERRORS as exc:
            raise self._failed("get", exc, asked) from exc
        breaker.answers += 1
        if breaker.failures:  # a success only matters after failures
            breaker.success()
        return raw or None

    def get(self, key: str) -> bytes | None:
        """:meth:`_run` written out for the one operation of every untracked REMOTE hit."""
        conn = self._sync[READ]
        if conn is None or self._factory is not None:
            result: bytes | None = self._run("get", READ, methodcaller("get", key))
            return result or None  # b"": GETRANGE's none
        breaker = self.breaker
        asked = breaker.answers
        try:
            raw: bytes | None = conn.get(key)
        except _REDIS_ERRORS as exc:
            raise self._failed("get", exc, asked) from exc
        breaker.answers += 1
        if breaker.failures:  # a success only matters after failures
            breaker.success()
        return raw or None

    async def aget_with_ttl(self, key: str) -> tuple[bytes | None, int]:
        """The value and its remaining life in ms (-1: none), for a fail-safe use case."""
        return _parse_with_ttl(await self._arun("get", READ, self._read_with_ttl(key)))

    def get_with_ttl(self, key: str) -> tuple[bytes | None, int]:
        return _parse_with_ttl(self._run("get", READ, self._read_with_ttl(key)))

    async def atry_lock(self, key: str, token: bytes, ttl_ms: int) -> bool:
        """Take the lock ``key`` for ``ttl_ms`` unless another holder has it."""
        return bool(await self._arun("lock", WRITE, methodcaller("set", key, token, nx=True, px=ttl_ms)))

    def try_lock(self, key: str, token: bytes, ttl_ms: int) -> bool:
        return bool(self._run("lock", WRITE, methodcaller("set", key, token, nx=True, px=ttl_ms)))

    async def aunlock(self, key: str, token: bytes) -> bool:
        """Release the lock if ``token`` still holds it."""
        return bool(await self._arun("unlock", WRITE, methodcaller("unlock", keys=[key], args=[token])))

    def unlock(self, key: str, token: bytes) -> bool:
        return bool(self._run("unlock", WRITE, methodcaller("unlock", keys=[key], args=[token])))

    async def aread_tracked(
        self, key: str, fence: str, *, with_ttl: bool = False, sending: Callable[[], None] | None = None
    ) -> TrackedRead:
        """The value, the entity's fence and the server time; the value's PTTL ``with_ttl``.

        On a single server the reads go as one pipeline of plain commands (a Lua script costs the
        server 15 µs more than a GET), auto-pipelined with the loop's other reads under
        concurrency (:class:`~gcache.remote.batching.ReadQueue`); the script runs when the fence is
        missing, to create it with the read, and on a cluster. ``sending()`` is called once a
        connection is at hand, before the reads are written (before waiting for the pool, for the
        script): up to then, other callers may take this read's result as theirs (see
        ``UseCase.amerged_read``).
        """
        if self.legacy_compat:
            if sending is not None:
                sending()
            return parse_original(await self._arun("read", READ, self._read_tracked(key, fence, with_ttl)))
        fencing = self.failover_fencing
        if self._async_connection(READ).reads is not None:

            async def pipelined_read(c: Connection) -> list[Any] | None:
                try:
                    return await c.reads.read_tracked(key, fence, with_ttl, sending, fencing)  # type: ignore[union-attr]
                except redis.ResponseError as exc:
                    self._foreign(exc, fence)
                    return None

            replies = await self._arun("read", READ, pipelined_read)
            if replies is not None:
                if fencing and (not replies[1]) is not self.info_refused:  # INFO's reply: b"" if refused
                    self._info(not replies[1])
                read = parse_fence_read(replies, fencing)
                if read is not None:
                    return read
        if sending is not None:
            sending()
        return self._scripted(await self._arun("read", READ, self._read_tracked(key, fence, with_ttl)))

    def read_tracked(
        self, key: str, fence: str, *, with_ttl: bool = False, sending: Callable[[], None] | None = None
    ) -> TrackedRead:
        if self._factory is not None:  # an asyncio client: on the loop thread
            return self._loop_thread.run(
                lambda: self.aread_tracked(key, fence, with_ttl=with_ttl, sending=sending)
            )
        if self.legacy_compat:
            if sending is not None:
                sending()
            return parse_original(self._run("read", READ, self._read_tracked(key, fence, with_ttl)))
        fencing = self.failover_fencing
        if (self._sync[READ] or self._sync_connection(READ)).pool is not None:

            def pipelined_read(c: Connection) -> list[Any] | None:
                try:
                    return pipelined(c.pool, c.value_read, key, fence, with_ttl, sending, fencing)
                except redis.ResponseError as exc:
                    self._foreign(exc, fence)
                    return None

            replies = self._run("read", READ, pipelined_read)
            if replies is not None:
                if fencing and (not replies[1]) is not self.info_refused:
                    self._info(not replies[1])
                read = parse_fence_read(replies, fencing)
                if read is not None:
                    return read
        if sending is not None:
            sending()
        return self._scripted(self._run("read", READ, self._read_tracked(key, fence, with_ttl)))

    def _parsed_batch(self, replies: list[Any], tracked: bool) -> list[Any]:
        """:func:`parse_batch` of a batch's replies, whether INFO was refused told."""
        fencing = self.failover_fencing
        if tracked and fencing and (not replies[1]) is not self.info_refused:
            self._info(not replies[1])
        return parse_batch(replies, tracked, fencing)

    def _mget_refused(self, exc: redis.ResponseError) -> bool:
        """Whether ``exc`` is Redis refusing MGET to this user (NOPERM); batches then send a GET a
        key, and this is told once."""
        if not isinstance(exc, redis.exceptions.NoPermissionError):
            return False
        if self.mget:
            self.mget = False
            self._on_mget_refused()
        return True

    def _foreign(self, exc: redis.ResponseError, fence: str) -> None:
        """A pipelined read whose fence key holds another type: the original gcache's watermark
        (a string), which the read script turns into a fence. Any other error is raised."""
        if not str(exc).startswith("WRONGTYPE"):
            raise exc
        self._on_foreign_watermark(fence)

    async def aread_many(self, keys: Sequence[str], fences: Sequence[str] | None = None) -> list[Any]:
        """Many values, or tracked (``fences``) many :class:`TrackedRead`, in key order.

        On a single server one write and one round trip for them all (:func:`batch_reads`); the
        entities with no fence then read again through the script, which creates them, in one more
        (:meth:`_pipelined_batch`). On a cluster one round trip per node (the same). With
        ``legacy_compat`` tracked reads go key by key (the original's read script each).
        """
        connection = self._async_connection(READ)
        if fences is not None and self.legacy_compat:  # the original's reads: a script each
            return [await self.aread_tracked(key, fence) for key, fence in zip(keys, fences, strict=True)]
        if connection.pool is None:  # a cluster: one pipeline, a write per node
            return await self._aread_pipelined(keys, fences)

        fencing, mget = self.failover_fencing, self.mget and fences is None

        async def batch_read(c: Connection) -> list[Any] | None:
            try:
                return await abatch_pipelined(c.pool, c.value_read, keys, fences, fencing, mget)
            except redis.ResponseError as exc:
                if mget and self._mget_refused(exc):
                    return await abatch_pipelined(c.pool, c.value_read, keys, None, fencing)
                if fences is None:
                    raise
                self._foreign(exc, "a batch's fences")  # one of them the original's: key by key
                return None

        replies = await self._arun("read", READ, batch_read)
        if replies is None:
            reads = (self.aread_tracked(key, fence) for key, fence in zip(keys, fences or (), strict=True))
            return list(await asyncio.gather(*reads))
        found = self._parsed_batch(replies, fences is not None)
        unfenced = [i for i, read in enumerate(found) if read is None] if fences is not None else []
        if unfenced:  # new entities: their fences made by the script, in one more round trip
            assert fences is not None
            made = await self._aread_pipelined([keys[i] for i in unfenced], [fences[i] for i in unfenced])
            for i, read in zip(unfenced, made, strict=True):
                found[i] = read
        return found

    async def _aread_pipelined(self, keys: Sequence[str], fences: Sequence[str] | None) -> list[Any]:
        """:meth:`_pipelined_batch`'s reads; a key whose node lacks the script (NOSCRIPT) read
        again through the script, which loads it."""
        found = self._pipelined_found(
            await self._arun("read", READ, self._pipelined_batch(keys, fences)), fences
        )
        for i, read in enumerate(found):
            if isinstance(read, redis.ResponseError):
                found[i] = await self.aread_tracked(keys[i], fences[i])  # type: ignore[index]
        return found

    def read_many(self, keys: Sequence[str], fences: Sequence[str] | None = None) -> list[Any]:
        """Sync twin of :meth:`aread_many` (a cluster's reads go one after another)."""
        if self._factory is not None:
            return self._loop_thread.run(lambda: self.aread_many(keys, fences))
        connection = self._sync[READ] or self._sync_connection(READ)
        if fences is not None and self.legacy_compat:
            return [self.read_tracked(key, fence) for key, fence in zip(keys, fences, strict=True)]
        if connection.pool is None:
            return self._read_pipelined(keys, fences)

        fencing, mget = self.failover_fencing, self.mget and fences is None

        def batch_read(c: Connection) -> list[Any] | None:
            try:
                return batch_pipelined(c.pool, c.value_read, keys, fences, fencing, mget)
            except redis.ResponseError as exc:
                if mget and self._mget_refused(exc):
                    return batch_pipelined(c.pool, c.value_read, keys, None, fencing)
                if fences is None:
                    raise
                self._foreign(exc, "a batch's fences")
                return None

        replies = self._run("read", READ, batch_read)
        if replies is None:
            return [self.read_tracked(key, fence) for key, fence in zip(keys, fences or (), strict=True)]
        found = self._parsed_batch(replies, fences is not None)
        unfenced = [i for i, read in enumerate(found) if read is None] if fences is not None else []
        if unfenced:
            assert fences is not None
            made = self._read_pipelined([keys[i] for i in unfenced], [fences[i] for i in unfenced])
            for i, read in zip(unfenced, made, strict=True):
                found[i] = read
        return found

    def _read_pipelined(self, keys: Sequence[str], fences: Sequence[str] | None) -> list[Any]:
        """Sync twin of :meth:`_aread_pipelined`."""
        found = self._pipelined_found(self._run("read", READ, self._pipelined_batch(keys, fences)), fences)
        for i, read in enumerate(found):
            if isinstance(read, redis.ResponseError):
                found[i] = self.read_tracked(keys[i], fences[i])  # type: ignore[index]
        return found

    async def aset(self, key: str, envelope: bytes, ttl_ms: int) -> None:
        await self._arun("set", WRITE, methodcaller("set", key, envelope, px=ttl_ms))

    def set(self, key: str, envelope: bytes, ttl_ms: int) -> None:
        self._run("set", WRITE, methodcaller("set", key, envelope, px=ttl_ms))

    async def awrite_many(self, items: Sequence[Write]) -> list[int]:
        """Many writes (a batch's write-backs) in one redis-py pipeline: one round trip (a cluster's:
        one per node). Each result as :meth:`awrite_tracked`'s (an untracked SET: 1). A tracked
        write a node answered NOSCRIPT is written again through the script; with
        ``legacy_compat`` tracked writes go one by one (the original's write script each)."""
        if self.legacy_compat and any(item.fence is not None for item in items):
            return [await self.awrite(item) for item in items]
        written = self._written(items, await self._arun("write", WRITE, self._write_batch(items)))
        return [await self.awrite(item) if r is None else r for item, r in zip(items, written, strict=True)]

    def write_many(self, items: Sequence[Write]) -> list[int]:
        if self._factory is not None:
            return self._loop_thread.run(lambda: self.awrite_many(items))
        if self.legacy_compat and any(item.fence is not None for item in items):
            return [self.write(item) for item in items]
        written = self._written(items, self._run("write", WRITE, self._write_batch(items)))
        return [self.write(item) if r is None else r for item, r in zip(items, written, strict=True)]

    @staticmethod
    def _written(items: Sequence[Write], replies: list[Any]) -> list[int | None]:
        """:meth:`_write_batch`'s replies as write results; None where a server answered NOSCRIPT
        (the caller writes that one again through the script); any other error raised."""
        results: list[int | None] = []
        for item, reply in zip(items, replies, strict=True):
            if isinstance(reply, redis.exceptions.NoScriptError):
                results.append(None)
            elif isinstance(reply, Exception):
                raise reply
            else:
                results.append(1 if item.fence is None else int(reply))
        return results

    async def awrite(self, item: Write) -> int:
        """One write: a SET, or tracked :meth:`awrite_tracked` (its result)."""
        if item.fence is None:
            await self.aset(item.key, item.envelope, item.ttl_ms)
            return 1
        assert item.read is not None
        return await self.awrite_tracked(item.key, item.fence, item.read, item.ttl_ms, item.envelope)

    def write(self, item: Write) -> int:
        if item.fence is None:
            self.set(item.key, item.envelope, item.ttl_ms)
            return 1
        assert item.read is not None
        return self.write_tracked(item.key, item.fence, item.read, item.ttl_ms, item.envelope)

    def _write_batch(self, items: Sequence[Write]) -> Callable[[Connection], Any]:
        """The writes as one pipeline (a single server's or a cluster's): each SET PX, or tracked
        WRITE_TRACKED's EVALSHA with the arguments :meth:`_write_tracked` gives it; errors in place."""

        def queue(c: Connection) -> Any:
            pipe, target = _pipeline(c)
            sha = c.write_tracked.sha
            for item in items:
                if item.fence is None:
                    pipe.set(item.key, item.envelope, px=item.ttl_ms)
                    continue
                assert item.read is not None
                args = self._write_args(item.read, item.ttl_ms, item.envelope)
                pipe.execute_command("EVALSHA", sha, 2, item.key, item.fence, *args, **target(item.key))
            return pipe.execute(raise_on_error=False)

        return queue

    async def awrite_tracked(
        self, key: str, fence: str, read: TrackedRead, ttl_ms: int, envelope: bytes
    ) -> int:
        """Store a tracked entry, stamped and fenced as ``read`` (the read before it) saw, unless
        the entity was invalidated since.

        Returns 1 (stored), 0 (invalidated at or after the read), -1 (fence replaced or gone),
        -2 (too slow).
        """
        return int(await self._arun("write", WRITE, self._write_tracked(key, fence, read, ttl_ms, envelope)))

    def write_tracked(self, key: str, fence: str, read: TrackedRead, ttl_ms: int, envelope: bytes) -> int:
        return int(self._run("write", WRITE, self._write_tracked(key, fence, read, ttl_ms, envelope)))

    async def ainvalidate(self, fence: str, future_buffer_ms: int) -> int:
        """Raise the entity's watermark to at least server-now + buffer; returns it (us).

        With ``invalidate_replicas``, returns once that many replicas confirmed it (``WAIT``), else
        raises ``RemoteError`` caused by :class:`~gcache.errors.ReplicasNotConfirmed`: the
        primary has it, the breaker is not told (Redis answered).
        """
        if self._wait is None:
            return int(await self._arun("invalidate", ADMIN, self._invalidate(fence, future_buffer_ms)))
        arun = self._confirmed(fence, future_buffer_ms)[1]
        return self._check_confirmed(await self._arun("invalidate", ADMIN, arun))

    async def ainvalidate_many(self, items: Sequence[tuple[str, int]]) -> list[int | RemoteError]:
        """Many invalidations, each a (fence, buffer) as :meth:`ainvalidate` takes it, in one
        redis-py pipeline: one round trip (a cluster's: one per node), each the script and
        arguments :meth:`ainvalidate` runs, and with ``invalidate_replicas`` one ``WAIT`` after
        them all. Each result in place: the watermark (us), or the ``RemoteError`` of that item
        alone (its script failed there; the ``WAIT`` confirmed too few replicas: caused by
        :class:`~gcache.errors.ReplicasNotConfirmed`, applied on the primary). Raises
        ``RemoteError`` only when Redis took none (the first pipeline failed).

        An item a server answered NOSCRIPT (a restart lost the script) runs alone through the
        script, which loads it; the others answered so go in one more pipeline. Async only: the
        invalidation outbox, its one caller, replays on gcache's loop thread.
        """
        results: list[int | RemoteError] = [0] * len(items)
        todo = list(range(len(items)))
        while todo:
            try:
                batch = self._invalidate_batch([items[i] for i in todo])
                replies = await self._arun("invalidate", ADMIN, batch)
            except RemoteError as exc:
                if len(todo) == len(items):
                    raise
                for i in todo:  # those before were taken
                    results[i] = exc
                return results
            unloaded = self._invalidated(todo, replies, results)
            if not unloaded:
                break
            first, todo = unloaded[0], unloaded[1:]
            try:
                results[first] = await self.ainvalidate(*items[first])
            except RemoteError as exc:
                results[first] = exc
        return results

    def _invalidate_batch(self, items: Sequence[tuple[str, int]]) -> Callable[[Connection], Any]:
        """:meth:`ainvalidate_many`'s round trip: each item's EVALSHA in one pipeline (errors in
        place); with ``invalidate_replicas`` each item's reply is its WAIT's verdict where its
        script ran (:meth:`_waited`), the EVALSHAs and their WAIT on one connection, a cluster's
        on one connection per node, side by side."""
        calls = [self._invalidation(fence, buffer_ms) for fence, buffer_ms in items]
        wait = self._wait

        async def queue(c: Connection) -> Any:
            if wait is None:
                pipe, target = _pipeline(c)
                for name, keys, args in calls:
                    sha = getattr(c, name).sha
                    pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args, **target(keys[0]))
                return await pipe.execute(raise_on_error=False)
            scripts = [(getattr(c, name), keys, args) for name, keys, args in calls]
            if c.pool is not None:
                return self._waited(*await ainvalidations_and_wait(c.pool, scripts, wait))
            await c.client.initialize()  # its slots known (at once once they are)
            by_node: dict[Any, list[int]] = {}
            for i, (_, keys, _) in enumerate(calls):
                by_node.setdefault(c.client.get_node_from_key(keys[0]), []).append(i)
            replies: list[Any] = [None] * len(calls)
            answers = await asyncio.gather(
                *(
                    ainvalidations_and_wait(_NodePool(node), [scripts[i] for i in where], wait)
                    for node, where in by_node.items()
                )
            )
            for where, (node_replies, confirmed) in zip(by_node.values(), answers, strict=True):
                for i, reply in zip(where, self._waited(node_replies, confirmed), strict=True):
                    replies[i] = reply
            if any(isinstance(reply, _MOVES) for reply in replies):  # see _following_moves
                await c.client.nodes_manager.initialize()
            return replies

        return queue

    def _waited(self, replies: list[Any], confirmed: Any) -> list[Any]:
        """Each script's reply, or where it ran, the error of its WAIT (failed, or too few
        replicas confirmed: :class:`~gcache.errors.ReplicasNotConfirmed`, applied on the primary);
        a NOSCRIPT left in place, to send again."""
        short = confirmed if isinstance(confirmed, Exception) else self._shortfall(int(confirmed))
        if short is None:
            return replies
        return [reply if isinstance(reply, Exception) else short for reply in replies]

    @staticmethod
    def _invalidated(sent: list[int], replies: list[Any], results: list[int | RemoteError]) -> list[int]:
        """:meth:`_invalidate_batch`'s replies for the items ``sent`` (their indices) into
        ``results``; the indices of those answered NOSCRIPT, to send again."""
        unloaded: list[int] = []
        for i, reply in zip(sent, replies, strict=True):
            if isinstance(reply, redis.exceptions.NoScriptError):
                unloaded.append(i)
            elif isinstance(reply, Exception):
                results[i] = RemoteError("invalidate", reply)
            else:
                results[i] = int(reply)
        return unloaded

    def invalidate(self, fence: str, future_buffer_ms: int) -> int:
        if self._wait is None:
            return int(self._run("invalidate", ADMIN, self._invalidate(fence, future_buffer_ms)))
        if self._factory is not None:
            return self._loop_thread.run(lambda: self.ainvalidate(fence, future_buffer_ms))
        run = self._confirmed(fence, future_buffer_ms)[0]
        return self._check_confirmed(self._run("invalidate", ADMIN, run))

    async def adelete(self, key: str) -> bool:
        return bool(await self._arun("delete", ADMIN, self._delete(key)))

    def delete(self, key: str) -> bool:
        return bool(self._run("delete", ADMIN, self._delete(key)))

    async def aflush(self, prefix: str) -> int:
        """Delete every key of this cache (found by SCAN on its prefix); returns how many."""

        async def flush(c: Connection) -> int:
            deleted = 0
            batch: list[bytes] = []
            for pattern in _flush_patterns(prefix, self.legacy_compat):
                async for key in c.client.scan_iter(match=pattern, count=_SCAN_BATCH):
                    if _owned(key, prefix):
                        batch.append(key)
                    if len(batch) >= _SCAN_BATCH:
                        deleted += await _aunlink(c.client, batch)
                        batch = []
            if batch:
                deleted += await _aunlink(c.client, batch)
            await c.announce_flush(args=self._announce_flush())
            return deleted

        return await self._arun("flush", ADMIN, flush)

    def flush(self, prefix: str) -> int:
        if self._factory is not None:
            return self._loop_thread.run(lambda: self.aflush(prefix))

        def flush(c: Connection) -> int:
            deleted = 0
            batch: list[bytes] = []
            for pattern in _flush_patterns(prefix, self.legacy_compat):
                for key in c.client.scan_iter(match=pattern, count=_SCAN_BATCH):
                    if _owned(key, prefix):
                        batch.append(key)
                    if len(batch) >= _SCAN_BATCH:
                        deleted += _unlink(c.client, batch)
                        batch = []
            if batch:
                deleted += _unlink(c.client, batch)
            c.announce_flush(args=self._announce_flush())
            return deleted

        result: int = self._run("flush", ADMIN, flush)
        return result

    async def new_bus_client(self) -> Any:
        """A fresh asyncio client for the invalidation bus's own connection.

        With sentinels, the master they name at the time (see :mod:`~gcache.remote.sentinel`).
        On a cluster any node will do: classic pub/sub messages are broadcast to every node. A
        random one of the topology is taken, discovered from every node this GCache knows (see
        :meth:`known_nodes`), so a dead node costs one reconnection; a factory's cluster client
        is asked for one, and the connection to it is made exactly as
        the cluster makes its own (TLS, credentials, timeouts), never as a plain one.
        """
        if self._factory is not None:
            client = self._factory()
            if not isinstance(client, redis.asyncio.RedisCluster):
                return client
            return await _any_node(client)
        assert self._config is not None
        assert self._config.url is not None
        options = {"retry": no_retry(redis.asyncio.retry.Retry), **self._config.client_options()}
        if self._config.sentinels is not None:  # the master now: asked again on each reconnect
            return await sentinel.amaster_client(self._config, self.follow_master, **options)
        if self._config.cluster:  # the topology's nodes, not the URL's node alone (it may be dead)
            return await _any_node(
                cluster_client(redis.asyncio.RedisCluster, self._config, options, self.known_nodes())
            )
        return redis.asyncio.Redis.from_url(self._config.url, **options)  # one connection

    # -- lifecycle -----------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the clients; the ones of the running loop are closed gracefully."""
        self._stop_breakers()
        await self.aclose_clients()

    def close(self) -> None:
        """Close every client, each asyncio client on its own loop where that loop can still run."""
        self._stop_breakers()
        self.close_clients()

    def _stop_breakers(self) -> None:
        self.breaker.stop()
        if self.node_breakers is not None:
            self.node_breakers.reset()


def _untargeted(key: str) -> dict[str, Any]:
    return {}


def _node_pool(client: Any, key: str) -> Any:
    """The connections of the cluster node that holds ``key``'s slot, as a pool: an
    invalidation's WAIT must follow its script on one connection, which a cluster pipeline does
    not promise (a command redirected is sent again on another)."""
    node = client.get_node_from_key(key)
    if isinstance(client, redis.RedisCluster):
        return client.get_redis_connection(node).connection_pool
    return _NodePool(node)


class _NodePool:
    """An asyncio cluster node's connections as a pool (``get_connection``, ``release``)."""

    def __init__(self, node: Any) -> None:
        self._node = node

    async def get_connection(self, *args: Any) -> Any:
        return self._node.acquire_connection()

    async def release(self, connection: Any) -> None:
        self._node.release(connection)


_MOVES = (redis.exceptions.MovedError, redis.exceptions.AskError)


@contextlib.contextmanager
def _following_moves(client: Any) -> Iterator[None]:
    """A slot answered from another node (MOVED, ASK) outside the cluster client, which learns
    it from its own commands alone: the topology read again, the error raised (the outbox, or
    the caller, tries again on the new owner)."""
    try:
        yield
    except _MOVES:
        client.nodes_manager.initialize()
        raise


@contextlib.asynccontextmanager
async def _afollowing_moves(client: Any) -> AsyncIterator[None]:
    """Asyncio twin of :func:`_following_moves`."""
    try:
        yield
    except _MOVES:
        await client.nodes_manager.initialize()
        raise


def _pipeline(c: Connection) -> tuple[Any, Callable[[str], dict[str, Any]]]:
    """A pipeline without a transaction on ``c`` (a single server's, or a cluster's: one write and
    one round trip per node, the asyncio client's nodes side by side), and the options of an
    EVALSHA on a key: a cluster's sync pipeline blocks its evalsha method (not EVALSHA), and
    without a target asks a node for each EVALSHA's keys (COMMAND GETKEYS): one round trip a key."""
    pipe = c.client.pipeline(transaction=False)
    if not isinstance(c.client, redis.RedisCluster):
        return pipe, _untargeted
    node = c.client.get_node_from_key
    return pipe, lambda key: {"target_nodes": node(key)}  # type: ignore[no-untyped-call]


# Options of a cluster node's connections that belong to the cluster client, not to a connection
# of the bus's own: READONLY on connect (replica reads), the cluster's retries and its handling
# of slot moves.
_CLUSTER_ONLY = ("redis_connect_func", "retry", "oss_cluster_maint_notifications_handler")


async def _any_node(client: redis.asyncio.RedisCluster) -> redis.asyncio.Redis:
    """A client of its own on a node of the cluster ``client`` discovers (then closed): the first
    in random order that answers a PING, so a dead node the topology still lists is skipped."""
    try:
        await client.initialize()
        nodes = client.get_nodes()
    finally:
        await client.aclose()
    random.shuffle(nodes)
    failure: BaseException | None = None
    for node in nodes:
        candidate = _node_client(node)
        try:
            await candidate.ping()
        except _REDIS_ERRORS as exc:
            failure = exc
            await candidate.aclose()
            continue
        return candidate
    raise redis.ConnectionError(f"no node of the cluster answered: {failure}")


def _node_client(node: Any) -> redis.asyncio.Redis:
    """A client of its own on one cluster node, with the node's connection class and options."""
    options = {k: v for k, v in node.connection_kwargs.items() if k not in _CLUSTER_ONLY}
    pool = redis.asyncio.ConnectionPool(
        connection_class=node.connection_class, retry=no_retry(redis.asyncio.retry.Retry), **options
    )
    if hasattr(redis.asyncio.Redis, "from_pool"):  # redis-py 5.0.1 and later
        return redis.asyncio.Redis.from_pool(pool)  # the client owns and closes the pool
    client = redis.asyncio.Redis(connection_pool=pool)  # pragma: no cover - redis-py 5.0.0
    client.auto_close_connection_pool = True  # pragma: no cover
    return client  # pragma: no cover


def _flush_patterns(prefix: str, legacy_compat: bool) -> tuple[str, ...]:
    """What a flush scans for: this prefix's keys; with ``legacy_compat`` also the original
    gcache's untracked entries, which it renders without braces (``prefix:key_type:id#...``)."""
    if legacy_compat:
        return ("{" + prefix + ":*", prefix + ":*")
    return ("{" + prefix + ":*",)


def _owned(key: bytes, prefix: str) -> bool:
    """The braced pattern also matches keys of a longer prefix (``prefix:tenant``); keep only
    ours. An unbraced key (the original's untracked entry) is this prefix's by its start: the
    original does not escape its parts, so a longer prefix's are not told apart."""
    text = key.decode("utf-8", "surrogateescape")
    return owned_by(text, prefix) if text.startswith("{") else text.startswith(prefix + ":")


def _unlink(client: Any, keys: list[bytes]) -> int:
    # One UNLINK per key: the keys of a flush may live in different cluster slots.
    if isinstance(client, redis.RedisCluster):
        return sum(int(client.unlink(k)) for k in keys)
    return int(client.unlink(*keys))


async def _aunlink(client: Any, keys: list[bytes]) -> int:
    if isinstance(client, redis.asyncio.RedisCluster):
        return sum([int(await client.unlink(k)) for k in keys])
    return int(await client.unlink(*keys))
