"""Fixtures and helpers of the REMOTE tests: a RemoteCache on the session's Redis, and entries."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import redis

from gcache import GCacheConfig, RedisConfig
from gcache import _envelope as envelope
from gcache._loop_thread import LoopThread
from gcache.remote import READ, RemoteCache
from gcache.remote.batching import ReadQueue
from tests.conftest import fence_fields

__all__ = [
    "ENV",
    "MAX_VALUE_BYTES",
    "READ_LIMIT",
    "fence",
    "keep_the_loop_busy",
    "key",
    "nonce",
    "open_connections",
    "queue_of",
    "remote_on",
    "store",
    "until_written",
    "value",
]

ENV = envelope.encode(b"\x80payload", envelope.SERIALIZER_CUSTOM, envelope.FLAG_STR, 0)
_DEFAULT_MAX_VALUE_BYTES = GCacheConfig.max_value_bytes
assert _DEFAULT_MAX_VALUE_BYTES is not None
MAX_VALUE_BYTES: int = _DEFAULT_MAX_VALUE_BYTES  # as a GCache's RemoteCache is built by default
READ_LIMIT = MAX_VALUE_BYTES + envelope.HEADER_SIZE  # the most a read takes, less one byte


def key(i: int) -> str:
    return "{urn:gcache:user_id:" + str(i) + "}#UC"


def fence(i: int) -> str:
    return "{urn:gcache:user_id:" + str(i) + "}#watermark"


def value(i: int) -> bytes:
    return ENV + str(i).encode()


def nonce(i: int) -> bytes:
    return b"N%07d" % i


async def until_written(writes: list[bytes]) -> None:
    """Let the loop run until a read is written to Redis (``redis_writes`` records each write)."""
    while not writes:  # noqa: ASYNC110 - the write is redis-py's, no event to wait on
        await asyncio.sleep(0)


def keep_the_loop_busy(seconds: float) -> None:
    """Block the calling event loop, as a callback that runs long or a thread holding the GIL."""
    time.sleep(seconds)


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    thread = LoopThread("test-pipeline")
    yield thread
    thread.stop()


def remote_on(
    url: str,
    loop_thread: LoopThread,
    read_timeout: float | None = None,
    max_value_bytes: int | None = MAX_VALUE_BYTES,
    failover_fencing: bool = True,
) -> RemoteCache:
    return RemoteCache(
        redis_config=RedisConfig(url=url),
        client_factory=None,
        compute_limit_ms=60_000,
        loop_thread=loop_thread,
        read_timeout=read_timeout,
        breaker_failures=5,
        max_value_bytes=max_value_bytes,
        failover_fencing=failover_fencing,
    )


@pytest.fixture
async def remote(redis_url: str, loop_thread: LoopThread) -> AsyncIterator[RemoteCache]:
    cache = remote_on(redis_url, loop_thread)
    yield cache
    await cache.aclose()


def store(client: redis.Redis, n: int) -> None:
    for i in range(n):
        client.hset(fence(i), mapping=fence_fields(client, nonce(i), str(i)))
        client.set(key(i), value(i), px=60_000)


async def open_connections(remote: RemoteCache, n: int = 2) -> None:
    """Open ``n`` pooled connections, so that opening one (its handshake) is not counted later."""
    pool = remote._async_connection(READ).pool
    held = [await pool.get_connection() for _ in range(n)]  # each connected, as redis-py hands it
    for connection in held:
        await pool.release(connection)


def queue_of(remote: RemoteCache) -> ReadQueue:
    queue = remote._async_connection(READ).reads
    assert queue is not None
    return queue
