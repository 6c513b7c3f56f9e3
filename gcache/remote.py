"""REMOTE layer: the Redis operations gcache needs, as async and sync twins.

Async callers use a redis-py asyncio client, one per event loop (asyncio connections belong to
the loop that opened them). Sync callers use a redis-py sync client in their own thread; only a
``redis_client_factory`` (which returns asyncio clients) sends them through the loop thread.
Every redis-py failure leaves this module as :class:`~gcache.errors.RemoteError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, TypeVar

import redis
import redis.asyncio

from gcache import _scripts
from gcache._loop_thread import LoopThread
from gcache.config import RedisConfig
from gcache.errors import RemoteError
from gcache.keys import DEFAULT_URN_PREFIX, bus_channel, entity_of, owned_by

__all__ = ["RemoteCache", "TrackedRead"]

T = TypeVar("T")

_NODE_OPTIONS = {
    "username", "password", "ssl", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs",
    "socket_connect_timeout", "socket_keepalive", "credential_provider",
}  # fmt: skip
_REDIS_ERRORS = (redis.RedisError, OSError, asyncio.TimeoutError, EOFError)
_SCAN_BATCH = 1000


class TrackedRead(NamedTuple):
    raw: bytes | None
    nonce: bytes | None  # None: the entity has no fence
    watermark_us: int
    now_us: int  # t0: server time of this read


class _Connection:
    """A client with this module's scripts registered on it."""

    __slots__ = ("announce_flush", "client", "delete", "invalidate", "read_tracked", "write_tracked")

    def __init__(self, client: Any) -> None:
        self.client = client
        self.read_tracked = client.register_script(_scripts.READ_TRACKED)
        self.write_tracked = client.register_script(_scripts.WRITE_TRACKED)
        self.invalidate = client.register_script(_scripts.INVALIDATE)
        self.delete = client.register_script(_scripts.DELETE)
        self.announce_flush = client.register_script(_scripts.ANNOUNCE_FLUSH)


def _parse_tracked(reply: list[Any]) -> TrackedRead:
    raw, nonce, watermark, now = reply
    return TrackedRead(raw, nonce, int(watermark) if watermark is not None else 0, int(now))


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
    """

    def __init__(
        self,
        *,
        redis_config: RedisConfig | None,
        client_factory: Callable[[], Any] | None,
        compute_limit_ms: int,
        loop_thread: LoopThread,
        channel: str = bus_channel(DEFAULT_URN_PREFIX),
    ) -> None:
        self.channel = channel
        self.origin = os.urandom(6).hex()  # names this instance in what it publishes
        self._config = redis_config
        self._factory = client_factory
        self._compute_limit_ms = compute_limit_ms
        self._loop_thread = loop_thread
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Connection] = (
            weakref.WeakKeyDictionary()
        )
        self._sync: _Connection | None = None

    # -- connections ---------------------------------------------------------------------------

    def _async_connection(self) -> _Connection:
        loop = asyncio.get_running_loop()
        conn = self._by_loop.get(loop)
        if conn is None:
            conn = _Connection(self._new_async_client())
            self._by_loop[loop] = conn
        return conn

    def _new_async_client(self) -> Any:
        if self._factory is not None:
            return self._factory()
        assert self._config is not None
        return _client(
            self._config,
            redis.asyncio.Redis,
            redis.asyncio.RedisCluster,
            redis.asyncio.BlockingConnectionPool,
        )

    def _sync_connection(self) -> _Connection:
        conn = self._sync
        if conn is None:
            assert self._config is not None
            conn = self._sync = _Connection(
                _client(self._config, redis.Redis, redis.RedisCluster, redis.BlockingConnectionPool)
            )
        return conn

    async def _arun(self, operation: str, command: Callable[[_Connection], Awaitable[T]]) -> T:
        try:
            return await command(self._async_connection())
        except _REDIS_ERRORS as exc:
            raise RemoteError(operation, exc) from exc

    def _run(self, operation: str, command: Callable[[_Connection], Any]) -> Any:
        if self._factory is not None:
            return self._loop_thread.run(lambda: self._arun(operation, command))
        try:
            return command(self._sync_connection())
        except _REDIS_ERRORS as exc:
            raise RemoteError(operation, exc) from exc

    # -- operations: each builds its command once; _arun / _run only differ in awaiting it ------

    @staticmethod
    def _get(key: str) -> Callable[[_Connection], Any]:
        return lambda c: c.client.get(key)

    def _read_tracked(self, key: str, fence: str) -> Callable[[_Connection], Any]:
        args = [new_nonce(), self._compute_limit_ms]
        return lambda c: c.read_tracked(keys=[key, fence], args=args)

    @staticmethod
    def _set(key: str, envelope: bytes, ttl_ms: int) -> Callable[[_Connection], Any]:
        return lambda c: c.client.set(key, envelope, px=ttl_ms)

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
        return lambda c: c.write_tracked(keys=[key, fence], args=args)

    def _invalidate(self, fence: str, future_buffer_ms: int) -> Callable[[_Connection], Any]:
        args = [
            future_buffer_ms,
            new_nonce(),
            self._compute_limit_ms,
            self.channel,
            entity_of(fence),
            self.origin,
        ]
        return lambda c: c.invalidate(keys=[fence], args=args)

    def _delete(self, key: str) -> Callable[[_Connection], Any]:
        args = [self.channel, self.origin]
        return lambda c: c.delete(keys=[key], args=args)

    async def aget(self, key: str) -> bytes | None:
        result: bytes | None = await self._arun("get", self._get(key))
        return result

    def get(self, key: str) -> bytes | None:
        result: bytes | None = self._run("get", self._get(key))
        return result

    async def aread_tracked(self, key: str, fence: str) -> TrackedRead:
        return _parse_tracked(await self._arun("read", self._read_tracked(key, fence)))

    def read_tracked(self, key: str, fence: str) -> TrackedRead:
        return _parse_tracked(self._run("read", self._read_tracked(key, fence)))

    async def aset(self, key: str, envelope: bytes, ttl_ms: int) -> None:
        await self._arun("set", self._set(key, envelope, ttl_ms))

    def set(self, key: str, envelope: bytes, ttl_ms: int) -> None:
        self._run("set", self._set(key, envelope, ttl_ms))

    async def awrite_tracked(
        self, key: str, fence: str, t0_us: int | None, ttl_ms: int, read_nonce: bytes | None, envelope: bytes
    ) -> int:
        """Store a tracked entry stamped ``t0_us`` unless the entity was invalidated since.

        Returns 1 (stored), 0 (invalidated at or after t0), -1 (fence replaced), -2 (too slow).
        """
        command = self._write_tracked(key, fence, t0_us, ttl_ms, read_nonce, envelope)
        return int(await self._arun("write", command))

    def write_tracked(
        self, key: str, fence: str, t0_us: int | None, ttl_ms: int, read_nonce: bytes | None, envelope: bytes
    ) -> int:
        return int(self._run("write", self._write_tracked(key, fence, t0_us, ttl_ms, read_nonce, envelope)))

    async def ainvalidate(self, fence: str, future_buffer_ms: int) -> int:
        """Raise the entity's watermark to at least server-now + buffer; returns it (us)."""
        return int(await self._arun("invalidate", self._invalidate(fence, future_buffer_ms)))

    def invalidate(self, fence: str, future_buffer_ms: int) -> int:
        return int(self._run("invalidate", self._invalidate(fence, future_buffer_ms)))

    async def adelete(self, key: str) -> bool:
        return bool(await self._arun("delete", self._delete(key)))

    def delete(self, key: str) -> bool:
        return bool(self._run("delete", self._delete(key)))

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

        return await self._arun("flush", flush)

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

        result: int = self._run("flush", flush)
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
            return redis.asyncio.Redis(host=node.host, port=int(node.port), **options)
        assert self._config is not None
        assert self._config.url is not None
        return redis.asyncio.Redis.from_url(
            self._config.url, **self._config.client_options()
        )  # one connection

    # -- lifecycle -----------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the clients; the one of the running loop is closed gracefully."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        conn = self._by_loop.pop(loop) if loop is not None and loop in self._by_loop else None
        if conn is not None:
            await conn.client.aclose()
        self.close()

    def close(self) -> None:
        """Close every client, each asyncio client on its own loop where that loop can still run."""
        if self._sync is not None:
            self._sync.client.close()
            self._sync = None
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for loop, conn in list(self._by_loop.items()):
            if loop.is_running() and loop is not current:
                asyncio.run_coroutine_threadsafe(conn.client.aclose(), loop).result(timeout=5)
            elif not loop.is_closed() and current is None:
                loop.run_until_complete(conn.client.aclose())
            else:
                # This thread's running loop (a sync close() in async code) cannot be awaited
                # here: close the sockets now and let the loop finish the teardown.
                _drop_sockets(conn.client)
        self._by_loop.clear()


def _client(config: RedisConfig, single: Any, cluster: Any, pool: Any) -> Any:
    """A client for ``config``: a blocking pool of ``max_connections``, or a cluster client."""
    assert config.url is not None
    options = {"max_connections": config.max_connections, **config.client_options()}
    if config.cluster:
        return cluster.from_url(config.url, **options)
    return single.from_pool(pool.from_url(config.url, timeout=config.pool_timeout, **options))


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
