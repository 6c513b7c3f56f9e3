"""REMOTE layer: the Redis operations gcache needs, as async and sync twins.

Async callers use a redis-py asyncio client, one per event loop (asyncio connections belong to
the loop that opened them). Sync callers use a redis-py sync client in their own thread; only a
``redis_client_factory`` (which returns asyncio clients) sends them through the loop thread.
Every redis-py failure leaves this module as :class:`~gcache.errors.RemoteError`.

Every operation has a deadline by its kind: a lookup (READ), a write-back or lock (WRITE), or an
invalidation, deletion or flush (ADMIN, the client's own socket timeout). With a RedisConfig each
kind has its own client whose socket timeout is that deadline, which costs nothing per call; a
factory's client is shared by the kinds and each operation is wrapped in an asyncio timeout.
redis-py's own retries are cut to one, at once, and only for a connection error (redis-py 8
retries 10 times with backoff on timeouts too): a cache that waits for a failing server only
multiplies the damage, and the breaker decides when to try again. The one retry is for pooled
connections a restarted server has closed, which fail once each.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import sys
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from operator import methodcaller
from typing import Any, TypeVar

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.backoff
import redis.retry

from gcache import _fork, _scripts
from gcache._loop_thread import LoopThread
from gcache._pipeline import ReadQueue, TrackedRead, parse_fence_read, parse_tracked, pipelined
from gcache.breaker import CircuitBreaker
from gcache.config import RedisConfig
from gcache.errors import RemoteError
from gcache.keys import DEFAULT_URN_PREFIX, bus_channel, entity_of, owned_by

__all__ = ["ADMIN", "READ", "WRITE", "RemoteCache", "TrackedRead"]

T = TypeVar("T")

_NODE_OPTIONS = {
    "username", "password", "ssl", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs",
    "socket_connect_timeout", "socket_keepalive", "credential_provider",
}  # fmt: skip
_REDIS_ERRORS = (redis.RedisError, OSError, asyncio.TimeoutError, EOFError)
_SCAN_BATCH = 1000
READ, WRITE, ADMIN = 0, 1, 2  # kinds of operation, each with its own deadline
_perf = time.perf_counter


_PING = methodcaller("ping")


def _retry_policy(retry_class: Any) -> Any:
    return retry_class(redis.backoff.NoBackoff(), 1, supported_errors=(redis.ConnectionError,))


def _no_retry(retry_class: Any) -> Any:
    return retry_class(redis.backoff.NoBackoff(), 0)


if sys.version_info >= (3, 11):

    async def _within(seconds: float, awaitable: Awaitable[T]) -> T:
        async with asyncio.timeout(seconds):
            return await awaitable

else:  # pragma: no cover - Python 3.10

    async def _within(seconds: float, awaitable: Awaitable[T]) -> T:
        return await asyncio.wait_for(awaitable, seconds)


class _Connection:
    """A client with this module's scripts registered on it.

    Operations are ``methodcaller`` objects naming one of these attributes, so running one adds
    no Python frame to redis-py's own.
    """

    __slots__ = (
        "announce_flush",
        "client",
        "delete",
        "get",
        "invalidate",
        "ping",
        "pool",
        "read_tracked",
        "read_with_ttl",
        "reads",
        "set",
        "unlock",
        "write_tracked",
    )

    def __init__(self, client: Any) -> None:
        self.client = client
        # A single server's pool, for the tracked read's pipeline; None for a cluster client, whose
        # commands travel by slot (the read then runs its script).
        cluster = isinstance(client, (redis.RedisCluster, redis.asyncio.RedisCluster))
        self.pool: Any = None if cluster else getattr(client, "connection_pool", None)
        self.get = client.get
        self.set = client.set
        self.ping = client.ping
        self.read_tracked = client.register_script(_scripts.READ_TRACKED)
        self.write_tracked = client.register_script(_scripts.WRITE_TRACKED)
        self.invalidate = client.register_script(_scripts.INVALIDATE)
        self.delete = client.register_script(_scripts.DELETE)
        self.announce_flush = client.register_script(_scripts.ANNOUNCE_FLUSH)
        self.read_with_ttl = client.register_script(_scripts.READ_WITH_TTL)
        self.unlock = client.register_script(_scripts.UNLOCK)
        self.reads: ReadQueue | None = None  # an asyncio single-server client's (see queue_reads)

    def queue_reads(self) -> _Connection:
        """Auto-pipeline this asyncio client's GETs and tracked reads (see :class:`ReadQueue`)."""
        if self.pool is not None:
            self.reads = ReadQueue(self.pool)
            self.get = self.reads.get
        return self


def _parse_with_ttl(reply: list[Any]) -> tuple[bytes | None, int]:
    raw, pttl = reply
    return raw, int(pttl) if raw is not None else -1


def new_nonce() -> bytes:
    return os.urandom(8)


class RemoteCache:
    """Redis access for one GCache instance.

    Args:
        redis_config: builds both clients; or
        client_factory: returns a ``redis.asyncio`` client, called once per event loop.
        compute_limit_ms: see ``GCacheConfig.tracked_compute_limit_sec``.
        loop_thread: where sync callers run async-only clients.
        channel: where invalidations and deletions are published for other processes.
        read_timeout, write_timeout: deadlines of READ and WRITE operations (None: the client's
            socket timeout).
        breaker_failures, breaker_probe_sec, on_breaker: the circuit breaker (see
            :class:`~gcache.breaker.CircuitBreaker`); ``on_breaker(True)`` when it opens.
        on_pool_wait: per kind (READ, WRITE, ADMIN), told the seconds a caller waited for a pooled
            connection when none was free (see :class:`WaitTimedPool`).
    """

    def __init__(
        self,
        *,
        redis_config: RedisConfig | None,
        client_factory: Callable[[], Any] | None,
        compute_limit_ms: int,
        loop_thread: LoopThread,
        channel: str = bus_channel(DEFAULT_URN_PREFIX),
        read_timeout: float | None = None,
        write_timeout: float | None = None,
        breaker_failures: int = 0,
        breaker_probe_sec: float = 1.0,
        on_breaker: Callable[[bool], None] = lambda is_open: None,
        on_pool_wait: tuple[Callable[[float], None] | None, ...] = (None, None, None),
    ) -> None:
        self.channel = channel
        self.origin = os.urandom(6).hex()  # names this instance in what it publishes
        self._config = redis_config
        self._factory = client_factory
        self._compute_limit_ms = compute_limit_ms
        self._loop_thread = loop_thread
        self._deadlines = (read_timeout, write_timeout, None)
        self._pool_waits = on_pool_wait  # by kind: told each wait for a pooled connection
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[_Connection | None]] = (
            weakref.WeakKeyDictionary()
        )
        # The loop asked last and its connections: almost every call comes from that one loop.
        self._last: tuple[weakref.ref[asyncio.AbstractEventLoop], list[_Connection | None]] | None = None
        self._sync: list[_Connection | None] = [None, None, None]
        self._sync_lock = threading.Lock()
        self.breaker = CircuitBreaker(
            threshold=breaker_failures,
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
        _fork.leave_untouched(*_clients(self._sync), *self._by_loop.items())
        self._sync = [None, None, None]
        self._sync_lock = threading.Lock()
        self._by_loop = weakref.WeakKeyDictionary()
        self._last = None
        self.breaker.after_fork_in_child()

    # -- connections ---------------------------------------------------------------------------

    def _async_connection(self, kind: int) -> _Connection:
        loop = asyncio.get_running_loop()
        last = self._last
        if last is not None and last[0]() is loop:
            conns = last[1]
        else:
            found = self._by_loop.get(loop)
            conns = self._by_loop[loop] = [None, None, None] if found is None else found
            self._last = (weakref.ref(loop), conns)
        conn = conns[kind]
        if conn is None:
            if self._factory is not None:  # one client per loop, shared by every kind
                conn = conns[READ] = conns[WRITE] = conns[ADMIN] = _Connection(self._factory()).queue_reads()
            else:
                assert self._config is not None
                conn = conns[kind] = _Connection(
                    _client(
                        self._config,
                        redis.asyncio.Redis,
                        redis.asyncio.RedisCluster,
                        AsyncWaitTimedPool,
                        _retry_policy(redis.asyncio.retry.Retry),
                        self._deadlines[kind],
                        self._pool_waits[kind],
                    )
                ).queue_reads()
        return conn

    def _sync_connection(self, kind: int) -> _Connection:
        conn = self._sync[kind]
        if conn is None:
            with self._sync_lock:  # many threads may ask for it at once: build one client
                return self._new_sync_connection(kind)
        return conn

    def _new_sync_connection(self, kind: int) -> _Connection:
        conn = self._sync[kind]
        if conn is None:
            assert self._config is not None
            conn = self._sync[kind] = _Connection(
                _client(
                    self._config,
                    redis.Redis,
                    redis.RedisCluster,
                    WaitTimedPool,
                    _retry_policy(redis.retry.Retry),
                    self._deadlines[kind],
                    self._pool_waits[kind],
                )
            )
        return conn

    async def _arun(self, operation: str, kind: int, command: Callable[[_Connection], Awaitable[T]]) -> T:
        breaker = self.breaker
        asked = breaker.answers
        try:
            deadline = self._deadlines[kind]
            if self._factory is not None and deadline is not None:
                result = await _within(deadline, command(self._async_connection(kind)))
            else:
                result = await command(self._async_connection(kind))
        except _REDIS_ERRORS as exc:
            raise self._failed(operation, exc, asked) from exc
        breaker.answers += 1
        if breaker.failures:  # a success only matters after failures
            breaker.success()
        return result

    def _run(self, operation: str, kind: int, command: Callable[[_Connection], Any]) -> Any:
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

    def _failed(self, operation: str, exc: BaseException, answers_before: int | None = None) -> RemoteError:
        """Count a failed operation on the breaker (``answers_before``: see
        :meth:`CircuitBreaker.failure`); returns the error to raise."""
        self.breaker.failure(exc, answers_before)
        return RemoteError(operation, exc)

    async def _probe(self) -> None:
        """The breaker's question, asked on the loop thread: does Redis answer a PING in time?"""
        await self._arun("ping", READ, _PING)

    # -- operations: each builds its command once; _arun / _run only differ in awaiting it ------

    def _read_tracked(self, key: str, fence: str, with_ttl: bool) -> Callable[[_Connection], Any]:
        args = [new_nonce(), self._compute_limit_ms, "1" if with_ttl else ""]
        return methodcaller("read_tracked", keys=[key, fence], args=args)

    def _write_tracked(
        self, key: str, fence: str, t0_us: int | None, ttl_ms: int, read_nonce: bytes | None, envelope: bytes
    ) -> Callable[[_Connection], Any]:
        args = [
            "" if t0_us is None else t0_us,
            ttl_ms,
            read_nonce or b"",
            new_nonce(),
            envelope,
            self._compute_limit_ms * 1000,
        ]
        return methodcaller("write_tracked", keys=[key, fence], args=args)

    def _invalidate(self, fence: str, future_buffer_ms: int) -> Callable[[_Connection], Any]:
        args = [
            future_buffer_ms,
            new_nonce(),
            self._compute_limit_ms,
            self.channel,
            entity_of(fence),
            self.origin,
        ]
        return methodcaller("invalidate", keys=[fence], args=args)

    def _delete(self, key: str) -> Callable[[_Connection], Any]:
        return methodcaller("delete", keys=[key], args=[self.channel, self.origin])

    async def aget(self, key: str) -> bytes | None:
        """:meth:`_arun` written out for the one operation of every untracked REMOTE hit."""
        if self._factory is not None:
            result: bytes | None = await self._arun("get", READ, methodcaller("get", key))
            return result
        breaker = self.breaker
        asked = breaker.answers
        try:
            raw: bytes | None = await self._async_connection(READ).get(key)
        except _REDIS_ERRORS as exc:
            raise self._failed("get", exc, asked) from exc
        breaker.answers += 1
        if breaker.failures:  # a success only matters after failures
            breaker.success()
        return raw

    def get(self, key: str) -> bytes | None:
        """:meth:`_run` written out for the one operation of every untracked REMOTE hit."""
        conn = self._sync[READ]
        if conn is None or self._factory is not None:
            result: bytes | None = self._run("get", READ, methodcaller("get", key))
            return result
        breaker = self.breaker
        asked = breaker.answers
        try:
            raw: bytes | None = conn.get(key)
        except _REDIS_ERRORS as exc:
            raise self._failed("get", exc, asked) from exc
        breaker.answers += 1
        if breaker.failures:  # a success only matters after failures
            breaker.success()
        return raw

    async def aget_with_ttl(self, key: str) -> tuple[bytes | None, int]:
        """The value and its remaining life in ms (-1: none), for a fail-safe use case."""
        return _parse_with_ttl(await self._arun("get", READ, methodcaller("read_with_ttl", keys=[key])))

    def get_with_ttl(self, key: str) -> tuple[bytes | None, int]:
        return _parse_with_ttl(self._run("get", READ, methodcaller("read_with_ttl", keys=[key])))

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
        concurrency (:class:`~gcache._pipeline.ReadQueue`); the script runs when the fence is
        missing, to create it with the read, and on a cluster. ``sending()`` is called once a
        connection is at hand, before the reads are written (before waiting for the pool, for the
        script): up to then, other callers may take this read's result as theirs (see
        ``UseCase.amerged_read``).
        """
        if self._async_connection(READ).reads is not None:
            replies = await self._arun(
                "read",
                READ,
                lambda c: c.reads.read_tracked(key, fence, with_ttl, sending),  # type: ignore[union-attr]
            )
            read = parse_fence_read(replies)
            if read is not None:
                return read
        if sending is not None:
            sending()
        return parse_tracked(await self._arun("read", READ, self._read_tracked(key, fence, with_ttl)))

    def read_tracked(
        self, key: str, fence: str, *, with_ttl: bool = False, sending: Callable[[], None] | None = None
    ) -> TrackedRead:
        if self._factory is not None:  # an asyncio client: on the loop thread
            return self._loop_thread.run(
                lambda: self.aread_tracked(key, fence, with_ttl=with_ttl, sending=sending)
            )
        if (self._sync[READ] or self._sync_connection(READ)).pool is not None:
            replies = self._run("read", READ, lambda c: pipelined(c.pool, key, fence, with_ttl, sending))
            read = parse_fence_read(replies)
            if read is not None:
                return read
        if sending is not None:
            sending()
        return parse_tracked(self._run("read", READ, self._read_tracked(key, fence, with_ttl)))

    async def aset(self, key: str, envelope: bytes, ttl_ms: int) -> None:
        await self._arun("set", WRITE, methodcaller("set", key, envelope, px=ttl_ms))

    def set(self, key: str, envelope: bytes, ttl_ms: int) -> None:
        self._run("set", WRITE, methodcaller("set", key, envelope, px=ttl_ms))

    async def awrite_tracked(
        self, key: str, fence: str, t0_us: int | None, ttl_ms: int, read_nonce: bytes | None, envelope: bytes
    ) -> int:
        """Store a tracked entry stamped ``t0_us`` unless the entity was invalidated since.

        Returns 1 (stored), 0 (invalidated at or after t0), -1 (fence replaced), -2 (too slow).
        """
        command = self._write_tracked(key, fence, t0_us, ttl_ms, read_nonce, envelope)
        return int(await self._arun("write", WRITE, command))

    def write_tracked(
        self, key: str, fence: str, t0_us: int | None, ttl_ms: int, read_nonce: bytes | None, envelope: bytes
    ) -> int:
        return int(
            self._run("write", WRITE, self._write_tracked(key, fence, t0_us, ttl_ms, read_nonce, envelope))
        )

    async def ainvalidate(self, fence: str, future_buffer_ms: int) -> int:
        """Raise the entity's watermark to at least server-now + buffer; returns it (us)."""
        return int(await self._arun("invalidate", ADMIN, self._invalidate(fence, future_buffer_ms)))

    def invalidate(self, fence: str, future_buffer_ms: int) -> int:
        return int(self._run("invalidate", ADMIN, self._invalidate(fence, future_buffer_ms)))

    async def adelete(self, key: str) -> bool:
        return bool(await self._arun("delete", ADMIN, self._delete(key)))

    def delete(self, key: str) -> bool:
        return bool(self._run("delete", ADMIN, self._delete(key)))

    async def aflush(self, prefix: str) -> int:
        """Delete every key of this cache (found by SCAN on its prefix); returns how many."""

        async def flush(c: _Connection) -> int:
            deleted = 0
            batch: list[bytes] = []
            async for key in c.client.scan_iter(match=_flush_pattern(prefix), count=_SCAN_BATCH):
                if _owned(key, prefix):
                    batch.append(key)
                if len(batch) >= _SCAN_BATCH:
                    deleted += await _aunlink(c.client, batch)
                    batch = []
            if batch:
                deleted += await _aunlink(c.client, batch)
            await c.announce_flush(args=[self.channel, self.origin])
            return deleted

        return await self._arun("flush", ADMIN, flush)

    def flush(self, prefix: str) -> int:
        if self._factory is not None:
            return self._loop_thread.run(lambda: self.aflush(prefix))

        def flush(c: _Connection) -> int:
            deleted = 0
            batch: list[bytes] = []
            for key in c.client.scan_iter(match=_flush_pattern(prefix), count=_SCAN_BATCH):
                if _owned(key, prefix):
                    batch.append(key)
                if len(batch) >= _SCAN_BATCH:
                    deleted += _unlink(c.client, batch)
                    batch = []
            if batch:
                deleted += _unlink(c.client, batch)
            c.announce_flush(args=[self.channel, self.origin])
            return deleted

        result: int = self._run("flush", ADMIN, flush)
        return result

    async def new_bus_client(self) -> Any:
        """A fresh asyncio client for the invalidation bus's own connection.

        On a cluster any node will do: classic pub/sub messages are broadcast to every node.
        """
        if self._factory is not None:
            client = self._factory()
            if not isinstance(client, redis.asyncio.RedisCluster):
                return client
            await client.initialize()
            node = client.get_random_node()
            options = {k: v for k, v in node.connection_kwargs.items() if k in _NODE_OPTIONS}
            await client.aclose()
            return redis.asyncio.Redis(
                host=node.host, port=int(node.port), retry=_no_retry(redis.asyncio.retry.Retry), **options
            )
        assert self._config is not None
        assert self._config.url is not None
        options = {"retry": _no_retry(redis.asyncio.retry.Retry), **self._config.client_options()}
        return redis.asyncio.Redis.from_url(self._config.url, **options)  # one connection

    # -- lifecycle -----------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the clients; the ones of the running loop are closed gracefully."""
        self.breaker.stop()
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        conns = self._by_loop.pop(loop) if loop is not None and loop in self._by_loop else []
        self._last = None
        for client in _clients(conns):
            await client.aclose()
        self.close()

    def close(self) -> None:
        """Close every client, each asyncio client on its own loop where that loop can still run."""
        self.breaker.stop()
        for client in _clients(self._sync):
            client.close()
        self._sync = [None, None, None]
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for loop, conns in list(self._by_loop.items()):
            for client in _clients(conns):
                if loop.is_running() and loop is not current:
                    asyncio.run_coroutine_threadsafe(client.aclose(), loop).result(timeout=5)
                elif not loop.is_closed() and current is None:
                    loop.run_until_complete(client.aclose())
                else:
                    # This thread's running loop (a sync close() in async code) cannot be awaited
                    # here: close the sockets now and let the loop finish the teardown.
                    _drop_sockets(client)
        self._by_loop.clear()
        self._last = None


def _clients(conns: list[_Connection | None]) -> list[Any]:
    """The distinct clients of a connection list (a factory's client fills every slot)."""
    clients: list[Any] = []
    for conn in conns:
        if conn is not None and all(conn.client is not c for c in clients):
            clients.append(conn.client)
    return clients


def _client(
    config: RedisConfig,
    single: Any,
    cluster: Any,
    pool: Any,
    retry: Any,
    socket_timeout: float | None,
    on_wait: Callable[[float], None] | None = None,
) -> Any:
    """A client for ``config``: a blocking pool of ``max_connections``, or a cluster client.

    ``socket_timeout`` (the deadline of the operations it serves) wins over the config's; a
    ``retry`` in ``redis_py_options`` wins over ``retry``. ``on_wait`` is told how long a caller
    waited for a pooled connection when none was free (single server only).
    """
    assert config.url is not None
    options = {"max_connections": config.max_connections, "retry": retry, **config.client_options()}
    if socket_timeout is not None:
        options["socket_timeout"] = socket_timeout
    if config.cluster:
        return cluster.from_url(config.url, **options)
    blocking = pool.from_url(config.url, timeout=config.pool_timeout, **options)
    blocking.on_wait = on_wait
    return single.from_pool(blocking)


class WaitTimedPool(redis.BlockingConnectionPool):
    """redis-py's blocking pool, first come first served, telling ``on_wait`` how long a caller
    waited for a connection.

    redis-py's pool lets a thread that just released a connection take it straight back while
    the threads woken for it are still waiting for the GIL: under a few hundred threads some
    waited past ``pool_timeout`` while others were served again and again. Here a connection
    that comes back is handed to the thread that has waited longest; a caller that finds none
    free queues behind the ones already waiting. The wait has its own bound,
    ``RedisConfig.pool_timeout``; an operation's deadline (the socket timeout) starts once it
    has a connection, so it measures Redis, not the queue in front of it. Only a caller that
    had to queue is timed, so a pool that keeps up costs nothing more.
    """

    on_wait: Callable[[float], None] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._free = self.max_connections  # connections (or room for one) no caller holds
        self._queue: collections.deque[threading.Event] = collections.deque()
        self._gate = threading.Lock()

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        with self._gate:
            if self._free > 0 and not self._queue:
                self._free -= 1
                turn = None
            else:
                turn = threading.Event()
                self._queue.append(turn)
        if turn is not None:
            start = _perf()
            handed = turn.wait(self.timeout)
            if not handed:
                with self._gate:
                    try:
                        self._queue.remove(turn)
                    except ValueError:  # handed a connection just as the wait ran out
                        handed = True
            if self.on_wait is not None:
                self.on_wait(_perf() - start)
            if not handed:
                raise redis.ConnectionError("No connection available.")
        try:
            return super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        except BaseException:
            self._hand_on()
            raise

    def release(self, connection: Any) -> None:
        try:
            super().release(connection)  # type: ignore[no-untyped-call]
        finally:
            self._hand_on()

    def _hand_on(self) -> None:
        with self._gate:
            if self._queue:
                self._queue.popleft().set()
            else:
                self._free += 1


class AsyncWaitTimedPool(redis.asyncio.BlockingConnectionPool):
    """Asyncio twin of :class:`WaitTimedPool`."""

    on_wait: Callable[[float], None] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._free_now: Callable[[], bool] | None = getattr(self, "can_get_connection", None)

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        on_wait = self.on_wait
        free = self._free_now
        if on_wait is None or (free is not None and free()):
            return await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        start = _perf()
        try:
            return await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        finally:
            on_wait(_perf() - start)


def _flush_pattern(prefix: str) -> str:
    return "{" + prefix + ":*"


def _owned(key: bytes, prefix: str) -> bool:
    """The pattern also matches keys of a longer prefix (``prefix:tenant``); keep only ours."""
    return owned_by(key.decode("utf-8", "surrogateescape"), prefix)


def _unlink(client: Any, keys: list[bytes]) -> int:
    # One UNLINK per key: the keys of a flush may live in different cluster slots.
    if isinstance(client, redis.RedisCluster):
        return sum(int(client.unlink(k)) for k in keys)
    return int(client.unlink(*keys))


async def _aunlink(client: Any, keys: list[bytes]) -> int:
    if isinstance(client, redis.asyncio.RedisCluster):
        return sum([int(await client.unlink(k)) for k in keys])
    return int(await client.unlink(*keys))


def _drop_sockets(client: Any) -> None:
    """Close the sockets of a client whose event loop is gone (as redis-py's own ``__del__`` does)."""
    pools = [getattr(client, "connection_pool", None)]
    pools += [getattr(n, "redis_connection", None) for n in getattr(client, "get_nodes", lambda: [])()]
    for pool in pools:
        for connection in [
            *getattr(pool, "_available_connections", ()),
            *getattr(pool, "_in_use_connections", ()),
        ]:
            close = getattr(connection, "_close", None)
            if close is not None:
                with contextlib.suppress(RuntimeError):  # the loop is closed: nothing more to do
                    close()
