"""The read protocol (``gcache.remote.protocol``): its deadline forgives a busy event loop once,
still tells a silent Redis and leaves an outer cancellation to the caller; batch replies are taken
from the hiredis reader; async reads are written to the transport without redis-py's sender."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis
import redis.asyncio

from gcache import RemoteError
from gcache._embedded_redis import EmbeddedRedis
from gcache._loop_thread import LoopThread
from tests.conftest import commands_run, fence_fields
from tests.remote.conftest import (
    fence,
    keep_the_loop_busy,
    key,
    nonce,
    remote_on,
    store,
    until_written,
    value,
)


async def test_a_read_answered_in_time_survives_an_event_loop_busy_past_its_deadline(
    redis_url: str, loop_thread: LoopThread, redis_client: redis.Redis, redis_writes: list[bytes]
) -> None:
    store(redis_client, 1)
    remote = remote_on(redis_url, loop_thread, read_timeout=0.05)
    try:
        for tracked in (False, True):
            await remote.aget(key(0))
            redis_writes.clear()
            read = remote.aread_tracked(key(0), fence(0)) if tracked else remote.aget(key(0))
            task = asyncio.ensure_future(read)
            await until_written(redis_writes)
            keep_the_loop_busy(0.2)  # 4 deadlines long; Redis answers meanwhile

            result = await task

            assert (result.raw if tracked else result) == value(0)  # type: ignore[union-attr]
        assert remote.breaker.failures == 0
    finally:
        await remote.aclose()


@pytest.mark.parametrize("tracked", [False, True], ids=["get", "tracked"])
@pytest.mark.parametrize("busy", [0.0, 0.2], ids=["idle-loop", "busy-loop"])
async def test_a_silent_redis_still_times_out_within_twice_the_deadline_when_the_loop_is_busy(
    loop_thread: LoopThread, redis_writes: list[bytes], busy: float, tracked: bool
) -> None:
    server = EmbeddedRedis().start()
    remote = remote_on(server.url, loop_thread, read_timeout=0.05)
    try:
        admin = redis.Redis.from_url(server.admin_url)
        admin.hset(fence(0), mapping=fence_fields(admin, nonce(0), "0"))
        await remote.aread_tracked(key(0), fence(0))  # a pooled connection, connected
        server.pause()
        redis_writes.clear()
        read = remote.aread_tracked(key(0), fence(0)) if tracked else remote.aget(key(0))
        task = asyncio.ensure_future(read)
        await until_written(redis_writes)
        sent = time.monotonic()
        keep_the_loop_busy(busy)

        with pytest.raises(RemoteError) as info:
            await task

        assert type(info.value.cause) is TimeoutError  # this deadline's, not redis-py's
        # Told after the busy spell plus at most one more deadline (generous for a loaded CI).
        assert time.monotonic() - sent < busy + 0.05 + 0.5
    finally:
        server.resume()
        await remote.aclose()
        server.stop()


async def test_a_read_cancelled_from_outside_is_cancelled_not_timed_out(
    loop_thread: LoopThread, redis_writes: list[bytes]
) -> None:
    server = EmbeddedRedis().start()
    remote = remote_on(server.url, loop_thread, read_timeout=5.0)
    try:
        admin = redis.Redis.from_url(server.admin_url)
        admin.hset(fence(0), mapping=fence_fields(admin, nonce(0), "0"))
        await remote.aread_tracked(key(0), fence(0))
        server.pause()
        redis_writes.clear()
        task = asyncio.ensure_future(remote.aread_tracked(key(0), fence(0)))
        await until_written(redis_writes)
        # Into the wait for the reply: on Python 3.11, a cancel that lands as redis-py's send
        # completes is lost inside its asyncio.wait_for (CPython gh-86296), whatever gcache does.
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

        with pytest.raises(TimeoutError):  # an outer deadline is the caller's, and raises as such
            await asyncio.wait_for(remote.aread_tracked(key(0), fence(0)), 0.05)
        assert remote.breaker.failures == 0
    finally:
        server.resume()
        await remote.aclose()
        server.stop()


@pytest.mark.parametrize("resp", [2, 3], ids=["resp2", "resp3"])
async def test_batch_replies_taken_from_the_hiredis_reader_match_and_an_error_comes_after_all_of_them(
    redis_url: str, redis_client: redis.Redis, resp: int
) -> None:
    """The batch reads take their replies from the connection's hiredis reader: the same values
    as redis-py's read_response across several socket reads, a command's error raised only once
    every reply is read (the connection stays in step for the next batch)."""
    from redis._parsers.hiredis import _AsyncHiredisParser, _HiredisParser

    from gcache.remote.protocol import GET, _hiredis_reader, abatch_pipelined, batch_pipelined

    values = [bytes([i]) * 100_000 for i in range(5)]  # 500 kB: many reads of 64 kB
    keys = [f"proto:{i}" for i in range(5)]
    for k, v in zip(keys, values, strict=True):
        redis_client.set(k, v)
    redis_client.hset("proto:hash", "n", "1")  # GET on a hash: WRONGTYPE
    with_error = [keys[0], "proto:hash", keys[1], "proto:none"]
    pool = redis.ConnectionPool.from_url(redis_url, protocol=resp)
    apool = redis.asyncio.ConnectionPool.from_url(redis_url, protocol=resp)
    try:
        connection = pool.get_connection()
        connection.connect()  # type: ignore[no-untyped-call]
        assert _hiredis_reader(connection, _HiredisParser) is not None  # the path under test
        pool.release(connection)
        aconnection = await apool.get_connection()  # type: ignore[no-untyped-call]
        assert _hiredis_reader(aconnection, _AsyncHiredisParser) is not None
        await apool.release(aconnection)
        for _ in range(2):  # the second batch on the connection the error left
            assert batch_pipelined(pool, GET, keys, None) == values
            assert await abatch_pipelined(apool, GET, keys, None) == values
            with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
                batch_pipelined(pool, GET, with_error, None)
            with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
                await abatch_pipelined(apool, GET, with_error, None)
        assert pool._created_connections == 1  # never dropped: every reply was read
        assert len(apool._available_connections) == 1
    finally:
        pool.disconnect()
        await apool.disconnect()


async def test_async_reads_write_to_the_transport_and_leave_redis_py_a_closed_connection_or_due_health_check(
    redis_url: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An open asyncio connection's reads are written to its transport by ``exchange`` itself:
    redis-py's ``send_packed_command`` bounds its write with ``asyncio.wait_for`` (on 3.11 a task
    of its own), counted here. A connection that is closed, or whose health check is due, is left
    to redis-py: it reconnects, and Redis sees the check's PING before the read."""
    from gcache.remote.protocol import GET, abatch_pipelined, apipelined

    bounded: list[object] = []
    wait_for = asyncio.wait_for

    async def counted(awaitable: Any, timeout: float | None) -> Any:
        bounded.append(awaitable)
        return await wait_for(awaitable, timeout)

    keys = [f"proto:direct:{i}" for i in range(3)]
    for i, k in enumerate(keys):
        redis_client.set(k, bytes([i]) * 10)
    values = [redis_client.get(k) for k in keys]
    pool = redis.asyncio.ConnectionPool.from_url(redis_url, socket_timeout=5.0, health_check_interval=60)
    try:
        assert await abatch_pipelined(pool, GET, keys, None) == values  # connects: redis-py's path
        monkeypatch.setattr(asyncio, "wait_for", counted)
        assert await abatch_pipelined(pool, GET, keys, None) == values
        assert await apipelined(pool, GET, keys[0], None, False) == [values[0]]
        assert bounded == []  # written straight to the transport

        (connection,) = pool._available_connections
        pings = commands_run(redis_client).get("cmdstat_ping", 0)
        connection.next_health_check = -1.0  # due
        assert await abatch_pipelined(pool, GET, keys, None) == values
        assert commands_run(redis_client).get("cmdstat_ping", 0) == pings + 1
        assert len(bounded) == 2  # the PING's write and the read's, by redis-py

        await connection.disconnect()
        assert await abatch_pipelined(pool, GET, keys, None) == values  # reconnected by redis-py
        assert len(bounded) > 2  # the handshake's writes and the read's, by redis-py
        assert pool._available_connections == [connection]  # the same connection, open again
    finally:
        await pool.disconnect()
