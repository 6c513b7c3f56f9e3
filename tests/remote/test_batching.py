"""Auto-pipelined reads (``gcache.remote.batching.ReadQueue``), against the session's Redis.

Async only: a sync caller's read goes alone on its own pooled connection (threads do not share
a loop pass to batch in); its pipelined read is tested in ``remote/test_cache.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

import redis

from gcache import RemoteError
from gcache._embedded_redis import EmbeddedRedis
from gcache._loop_thread import LoopThread
from gcache.remote import RemoteCache, TrackedRead
from gcache.remote.batching import MAX_BATCH
from tests.conftest import commands_run, net_output_bytes, plant
from tests.remote.conftest import (
    ENV,
    READ_LIMIT,
    fence,
    key,
    nonce,
    open_connections,
    queue_of,
    remote_on,
    store,
    value,
)


async def test_concurrent_tracked_reads_go_to_redis_in_one_write_each_with_its_own_answer(
    remote: RemoteCache, redis_client: redis.Redis, redis_writes: list[bytes]
) -> None:
    store(redis_client, 50)
    await open_connections(remote)
    redis_client.config_resetstat()
    redis_writes.clear()

    reads = await asyncio.gather(*(remote.aread_tracked(key(i), fence(i)) for i in range(50)))

    assert [(r.raw, r.nonce, r.watermark_us) for r in reads] == [(value(i), nonce(i), i) for i in range(50)]
    # The first read found none in flight and went alone; the 49 others queued behind it and
    # went together, sharing one head (TIME, INFO replication).
    assert len(redis_writes) == 2
    assert commands_run(redis_client) == {
        "cmdstat_time": 2,
        "cmdstat_info": 2,
        "cmdstat_getrange": 50,
        "cmdstat_hmget": 50,
    }
    assert {r.now_us for r in reads[1:]} == {reads[1].now_us}
    assert queue_of(remote).busy == 0


async def test_without_failover_fencing_concurrent_tracked_reads_share_a_head_of_time_alone(
    redis_url: str, loop_thread: LoopThread, redis_client: redis.Redis, redis_writes: list[bytes]
) -> None:
    """GCacheConfig(failover_fencing=False): the batch's head is TIME without INFO, and each read
    trusts its fence whatever its history (here one of another's)."""
    remote = remote_on(redis_url, loop_thread, failover_fencing=False)
    try:
        store(redis_client, 50)
        redis_client.hset(fence(7), "r", "f" * 40)  # inherited from another history
        await open_connections(remote)
        redis_client.config_resetstat()
        redis_writes.clear()

        plain, *tracked = await asyncio.gather(
            remote.aget(key(0)),
            *(remote.aread_tracked(key(i), fence(i), with_ttl=i % 2 == 0) for i in range(1, 50)),
        )
        reads = cast(list[TrackedRead], tracked)  # of ids 1 to 49

        assert plain == value(0)
        assert [(r.raw, r.nonce, r.watermark_us) for r in reads] == [
            (value(i), nonce(i), i) for i in range(1, 50)
        ]
        assert all(59_000 < r.pttl_ms <= 60_000 for r in reads[1::2])
        assert all(r.pttl_ms == -1 for r in reads[0::2])
        assert len(redis_writes) == 2  # the lone GETRANGE, then the 49 tracked reads together
        assert commands_run(redis_client) == {
            "cmdstat_time": 1,
            "cmdstat_getrange": 50,
            "cmdstat_hmget": 49,
            "cmdstat_pttl": 24,
        }
        assert redis_client.hget(fence(7), "r") == b"f" * 40  # trusted, not made anew
    finally:
        await remote.aclose()


async def test_a_batch_of_fenced_and_unfenced_reads_hands_each_the_head_it_reads(
    remote: RemoteCache, redis_client: redis.Redis, redis_writes: list[bytes]
) -> None:
    """One queue's reads with and without fencing in one write: the head has INFO once; a fenced
    read gets TIME and INFO's reply and its fence's history, an unfenced one TIME alone."""
    store(redis_client, 4)
    await open_connections(remote)
    redis_writes.clear()
    queue = queue_of(remote)

    lone, fenced, unfenced, plain = await asyncio.gather(
        queue.read_tracked(key(0), fence(0), False, None, True),  # alone
        queue.read_tracked(key(1), fence(1), True, None, True),
        queue.read_tracked(key(2), fence(2), False, None, False),
        queue.get(key(3)),
    )

    assert len(redis_writes) == 2
    assert redis_writes[1].count(b"$4\r\nINFO") == 1
    assert redis_writes[1].count(b"$4\r\nTIME") == 1
    assert redis_writes[1].count(b"$1\r\nr\r\n") == 1  # the fenced read's HMGET alone asks 'r'
    time, info = fenced[:2]
    assert b"master_replid:" in info
    assert fenced[2:4] == [value(1), [nonce(1), b"1", redis_client.hget(fence(1), "r")]]
    assert 59_000 < fenced[4] <= 60_000
    assert unfenced == [time, value(2), [nonce(2), b"2"]]  # nor the fence's history
    assert plain == value(3)
    assert b"master_replid:" in lone[1]


async def test_a_batch_mixes_plain_gets_and_tracked_reads_with_and_without_ttl(
    remote: RemoteCache, redis_client: redis.Redis, redis_writes: list[bytes]
) -> None:
    store(redis_client, 4)
    await open_connections(remote)
    redis_writes.clear()

    first, plain, tracked, with_ttl, missing, unfenced = await asyncio.gather(
        remote.aget(key(0)),  # alone
        remote.aget(key(1)),
        remote.aread_tracked(key(2), fence(2)),
        remote.aread_tracked(key(3), fence(3), with_ttl=True),
        remote.aget("{urn:gcache:user_id:404}#UC"),
        remote.aread_tracked(key(9), fence(9)),  # no fence: the script reads again, creating it
    )
    written = list(redis_writes)

    assert (first, plain, missing) == (value(0), value(1), None)
    assert (tracked.raw, tracked.nonce, tracked.pttl_ms) == (value(2), nonce(2), -1)
    assert (with_ttl.raw, with_ttl.nonce) == (value(3), nonce(3))
    assert 59_000 < with_ttl.pttl_ms <= 60_000
    assert unfenced.raw is None
    assert unfenced.nonce == redis_client.hget(fence(9), "n")
    lone, batch, *script = written  # the lone GETRANGE, the batch, the unfenced read's script
    end = b"%d" % READ_LIMIT
    assert lone == b"*4\r\n$8\r\nGETRANGE\r\n$25\r\n%b\r\n$1\r\n0\r\n$%d\r\n%b\r\n" % (
        key(0).encode(),
        len(end),
        end,
    )
    commands = (b"$4\r\nTIME", b"$4\r\nINFO", b"$8\r\nGETRANGE", b"$5\r\nHMGET", b"$4\r\nPTTL")
    assert [batch.count(c) for c in commands] == [1, 1, 5, 3, 1]
    assert b"$3\r\nGET\r\n" not in batch
    assert script
    assert all(b"EVALSHA" in w or b"SCRIPT" in w for w in script)


async def test_a_giant_value_in_a_batch_is_read_bounded_and_the_others_whole(
    remote: RemoteCache, redis_client: redis.Redis, redis_writes: list[bytes]
) -> None:
    store(redis_client, 4)
    plant(redis_client, key(2), ENV, 16 * READ_LIMIT)
    plant(redis_client, key(3), ENV, 16 * READ_LIMIT)
    await open_connections(remote)
    sent_before = net_output_bytes(redis_client)
    redis_writes.clear()

    first, plain, giant, tracked_giant, tracked = await asyncio.gather(
        remote.aget(key(0)),  # alone
        remote.aget(key(1)),
        remote.aget(key(2)),
        remote.aread_tracked(key(3), fence(3), with_ttl=True),
        remote.aread_tracked(key(1), fence(1)),
    )

    assert len(redis_writes) == 2
    assert (first, plain, tracked.raw) == (value(0), value(1), value(1))
    assert giant == tracked_giant.raw == ENV + b"\0" * (READ_LIMIT + 1 - len(ENV))
    assert (tracked_giant.nonce, tracked.nonce) == (nonce(3), nonce(1))
    assert 2 * READ_LIMIT < net_output_bytes(redis_client) - sent_before < 2 * READ_LIMIT + 64 * 1024


async def test_without_a_limit_the_batch_reads_values_with_get(
    loop_thread: LoopThread, redis_url: str, redis_client: redis.Redis, redis_writes: list[bytes]
) -> None:
    store(redis_client, 3)
    remote = remote_on(redis_url, loop_thread, max_value_bytes=None)
    try:
        await open_connections(remote)
        redis_client.config_resetstat()
        redis_writes.clear()

        first, plain, tracked = await asyncio.gather(
            remote.aget(key(0)), remote.aget(key(1)), remote.aread_tracked(key(2), fence(2))
        )

        assert (first, plain, tracked.raw) == (value(0), value(1), value(2))
        assert redis_writes[0] == b"*2\r\n$3\r\nGET\r\n$25\r\n" + key(0).encode() + b"\r\n"
        assert commands_run(redis_client) == {
            "cmdstat_time": 1,
            "cmdstat_info": 1,
            "cmdstat_get": 3,
            "cmdstat_hmget": 1,
        }
    finally:
        await remote.aclose()


async def test_a_command_error_fails_only_its_own_read_and_the_connection_stays_in_step(
    remote: RemoteCache, redis_client: redis.Redis
) -> None:
    store(redis_client, 4)
    redis_client.delete(key(2))
    redis_client.hset(key(2), "a", "b")  # GET answers WRONGTYPE in the middle of the batch
    await remote.aget(key(0))

    results = await asyncio.gather(
        *(remote.aread_tracked(key(i), fence(i)) for i in range(4)), return_exceptions=True
    )

    assert isinstance(results[2], RemoteError)
    assert isinstance(results[2].cause, redis.ResponseError)
    assert [r.raw for i, r in enumerate(results) if i != 2] == [value(0), value(1), value(3)]  # type: ignore[union-attr]
    again = await asyncio.gather(*(remote.aread_tracked(key(i), fence(i)) for i in (0, 1, 3)))
    assert [r.raw for r in again] == [value(0), value(1), value(3)]  # no reply was left behind
    assert remote.breaker.failures == 0  # the server answered: not a failure of Redis


async def test_a_read_cancelled_while_queued_is_left_out_and_the_others_are_answered(
    remote: RemoteCache, redis_client: redis.Redis
) -> None:
    store(redis_client, 3)
    await remote.aget(key(0))
    sent: list[int] = []

    def sending(i: int) -> Callable[[], None]:
        return lambda: sent.append(i)

    tasks = [
        asyncio.create_task(remote.aread_tracked(key(i), fence(i), sending=sending(i))) for i in range(3)
    ]
    await asyncio.sleep(0)  # each task ran up to its read: the first went, the others queued
    assert queue_of(remote).busy == 3
    tasks[1].cancel()

    done = await asyncio.gather(*tasks, return_exceptions=True)

    assert isinstance(done[1], asyncio.CancelledError)
    assert [done[0].raw, done[2].raw] == [value(0), value(2)]  # type: ignore[union-attr]
    assert sorted(sent) == [0, 2]  # a read left out is never reported as sent
    assert queue_of(remote).busy == 0


async def test_reads_past_the_batch_limit_start_another_batch(
    remote: RemoteCache, redis_client: redis.Redis, redis_writes: list[bytes]
) -> None:
    store(redis_client, 1)
    await open_connections(remote, 3)
    redis_writes.clear()
    n = 1 + MAX_BATCH + 10

    raws = await asyncio.gather(*(remote.aget(key(0)) for _ in range(n)))

    assert raws == [value(0)] * n
    assert len(redis_writes) == 3  # alone, a full batch, and the rest
    assert redis_writes[1].count(b"GETRANGE") == MAX_BATCH


async def test_a_failed_batch_fails_every_read_in_it_each_with_its_own_error(loop_thread: LoopThread) -> None:
    server = EmbeddedRedis().start()
    remote = remote_on(server.url, loop_thread)
    try:
        await remote.aget(key(0))
        server.kill()  # connections refused from now on

        results = await asyncio.gather(*(remote.aget(key(0)) for _ in range(10)), return_exceptions=True)

        assert all(isinstance(r, RemoteError) for r in results)
        causes = [r.cause for r in results]  # type: ignore[union-attr]
        assert all(isinstance(c, redis.ConnectionError) for c in causes)
        assert len({id(c) for c in causes}) == 10  # one instance each: no shared traceback grows
        assert remote.breaker.is_open  # an outage, told by each read of the batch
        assert queue_of(remote).busy == 0
    finally:
        await remote.aclose()
        server.stop()
