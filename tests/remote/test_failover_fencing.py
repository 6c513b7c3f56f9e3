"""``GCacheConfig(failover_fencing=...)`` on the session's real Redis, sync and async, single and
batch tracked reads: what False saves (INFO on every tracked read), what it keeps (exact
invalidation, shared fences with processes of the other kind) and what it gives up (a fence of
another replication history is trusted until a script makes it anew); and INFO refused to the
user (an ACL without +info), which turns failover fencing off and is told.

A failover is simulated by giving a fence another history's id (``r``), as a promoted replica
or a primary restarted from its RDB finds the fences it inherited; the real failover is in
``tests/behaviour/test_failover.py``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry

from gcache import CacheLayer, GCache, GCacheKeyConfig, RedisConfig
from tests.conftest import app_user_without, commands_run, node_replid, sample

pytestmark = pytest.mark.redis

REMOTE_ONLY = GCacheKeyConfig(ttl_sec={CacheLayer.REMOTE: 60}, ramp={CacheLayer.REMOTE: 100})
OTHER_HISTORY = b"f" * 40  # a replication id no server here has
REFUSED = "refuses INFO"  # what the warning about INFO refused says


def fence(i: int) -> str:
    return "{urn:gcache:user_id:" + str(i) + "}#watermark"


def entry(i: int, use_case: str) -> str:
    return "{urn:gcache:user_id:" + str(i) + "}#" + use_case


class Source:
    """The system of record; counts the ids each function was asked for."""

    def __init__(self) -> None:
        self.version = "v1"
        self.asked: list[int] = []

    def load(self, ids: list[int]) -> dict[int, str]:
        self.asked.extend(ids)
        return {i: f"{self.version}:{i}" for i in ids}


class Readers:
    """A tracked REMOTE-only ``cached`` (use case One) and ``cached_many`` (use case Many) of one
    GCache, sync or async, each called as a coroutine."""

    def __init__(self, cache: GCache, source: Source, is_async: bool) -> None:
        self.cache, self.is_async = cache, is_async
        one = cache.cached(key_type="user_id", id_arg="uid", use_case="One", track_for_invalidation=True,
                           default_config=REMOTE_ONLY)  # fmt: skip
        many = cache.cached_many(key_type="user_id", ids_arg="ids", use_case="Many",
                                 track_for_invalidation=True, default_config=REMOTE_ONLY)  # fmt: skip

        def load_one(uid: int) -> str:
            return source.load([uid])[uid]

        async def aload_one(uid: int) -> str:
            return load_one(uid)

        async def aload_many(ids: list[int]) -> dict[int, str]:
            return source.load(list(ids))

        self._one = one(aload_one if is_async else load_one)
        self._many = many(aload_many if is_async else source.load)

    async def _call(self, function: Any, arg: Any) -> Any:
        with self.cache.enable():
            if self.is_async:
                return await function(arg)
            return await asyncio.to_thread(function, arg)

    async def one(self, uid: int) -> str:
        return str(await self._call(self._one, uid))

    async def many(self, ids: list[int]) -> dict[int, str]:
        return dict(await self._call(self._many, ids))

    async def invalidate(self, uid: int) -> None:
        if self.is_async:
            await self.cache.ainvalidate("user_id", uid)
        else:
            await asyncio.to_thread(self.cache.invalidate, "user_id", uid)


def nonces(client: redis.Redis, ids: range) -> list[Any]:
    return [client.hget(fence(i), "n") for i in ids]


@pytest.mark.parametrize("fencing", [True, False], ids=["fencing", "no-fencing"])
async def test_a_tracked_hit_sends_info_only_with_failover_fencing(
    make_cache: Callable[..., GCache], redis_client: redis.Redis, is_async: bool, fencing: bool
) -> None:
    source = Source()
    readers = Readers(make_cache(failover_fencing=fencing), source, is_async)
    assert await readers.one(1) == "v1:1"
    assert await readers.many([2, 3, 4]) == {i: f"v1:{i}" for i in (2, 3, 4)}
    redis_client.config_resetstat()

    for _ in range(5):
        assert await readers.one(1) == "v1:1"
        assert await readers.many([2, 3, 4]) == {i: f"v1:{i}" for i in (2, 3, 4)}

    assert source.asked == [1, 2, 3, 4]  # every read after the first a REMOTE hit
    stats = commands_run(redis_client)
    assert stats.get("cmdstat_info", 0) == (10 if fencing else 0)  # one per read, a batch's once
    assert stats["cmdstat_time"] == 10
    assert "cmdstat_evalsha" not in stats  # the plain reads, no script
    assert {redis_client.hget(fence(i), "r") for i in range(1, 5)} == {node_replid(redis_client)}


async def test_without_failover_fencing_an_invalidation_is_exact(
    make_cache: Callable[..., GCache], is_async: bool
) -> None:
    source = Source()
    writer = Readers(make_cache(failover_fencing=False), source, is_async)
    other = Readers(make_cache(failover_fencing=False), source, is_async)
    assert [await writer.one(i) for i in (1, 2)] == ["v1:1", "v1:2"]
    assert await writer.many([1, 2, 3]) == {1: "v1:1", 2: "v1:2", 3: "v1:3"}
    source.version = "v2"

    await writer.invalidate(1)
    await other.invalidate(3)

    for readers in (writer, other):
        assert [await readers.one(i) for i in (1, 2)] == ["v2:1", "v1:2"]
        assert await readers.many([1, 2, 3]) == {1: "v2:1", 2: "v1:2", 3: "v2:3"}
    assert source.asked == [1, 2, 1, 2, 3, 1, 1, 3]  # each invalidated entry computed once again


async def test_a_fleet_mixing_both_kinds_shares_entries_and_fences_without_remaking_them(
    make_cache: Callable[..., GCache], redis_client: redis.Redis, is_async: bool
) -> None:
    source = Source()
    fencing = Readers(make_cache(), source, is_async)
    trusting = Readers(make_cache(failover_fencing=False), source, is_async)
    ids = range(1, 7)
    assert [await fencing.one(i) for i in (1, 2, 3)] == ["v1:1", "v1:2", "v1:3"]
    assert await trusting.many([4, 5, 6]) == {i: f"v1:{i}" for i in (4, 5, 6)}  # its fences
    made = nonces(redis_client, ids)
    assert None not in made

    for _ in range(3):  # each reads the other's entries and fences
        assert [await trusting.one(i) for i in (1, 2, 3)] == ["v1:1", "v1:2", "v1:3"]
        assert await fencing.many([4, 5, 6]) == {i: f"v1:{i}" for i in (4, 5, 6)}
    assert source.asked == [1, 2, 3, 4, 5, 6]
    source.version = "v2"
    await trusting.invalidate(1)
    await fencing.invalidate(4)
    assert await fencing.one(1) == "v2:1"  # computed and written back by the one...
    assert await trusting.many([4]) == {4: "v2:4"}
    assert await trusting.one(1) == "v2:1"  # ...a hit for the other
    assert await fencing.many([4]) == {4: "v2:4"}

    assert source.asked == [1, 2, 3, 4, 5, 6, 1, 4]
    assert nonces(redis_client, ids) == made  # never made anew: raised in place
    assert {redis_client.hget(fence(i), "r") for i in ids} == {node_replid(redis_client)}


@pytest.mark.parametrize("batch", [False, True], ids=["single", "batch"])
async def test_without_failover_fencing_a_fence_of_another_history_is_trusted_until_a_write_makes_it_anew(
    make_cache: Callable[..., GCache], redis_client: redis.Redis, is_async: bool, batch: bool
) -> None:
    """The documented loss: the inherited fence's entries are served (they may be stale, were an
    invalidation lost in the failover). The first miss's write-back makes the fence anew in this
    node's history (WRITE_TRACKED, refused itself), and caching resumes under it."""
    source = Source()
    trusting = Readers(make_cache(failover_fencing=False), source, is_async)
    recomputed = Source()
    recomputed.version = "v2"
    fenced = Readers(make_cache(), recomputed, is_async)

    async def read(readers: Readers, uid: int) -> str:
        return (await readers.many([uid]))[uid] if batch else await readers.one(uid)

    use_case = "Many" if batch else "One"
    assert [await read(trusting, i) for i in (1, 2)] == ["v1:1", "v1:2"]
    before = nonces(redis_client, range(1, 3))
    for i in (1, 2):
        redis_client.hset(fence(i), "r", OTHER_HISTORY)
    source.version = "v2"  # as if an invalidation of both were lost in the failover

    assert [await read(trusting, i) for i in (1, 2)] == ["v1:1", "v1:2"]  # trusted: stale
    assert nonces(redis_client, range(1, 3)) == before
    assert redis_client.hget(fence(1), "r") == OTHER_HISTORY
    # A fencing process refuses it: its read makes the fence anew and recomputes.
    assert await read(fenced, 2) == "v2:2"
    assert redis_client.hget(fence(2), "n") != before[1]
    assert redis_client.hget(fence(2), "r") == node_replid(redis_client)
    # Without fencing, the first miss: its write-back makes the fence anew, and is refused.
    redis_client.delete(entry(1, use_case))
    assert await read(trusting, 1) == "v2:1"
    assert redis_client.hget(fence(1), "n") != before[0]
    assert redis_client.hget(fence(1), "r") == node_replid(redis_client)
    assert redis_client.exists(entry(1, use_case)) == 0
    assert [await read(trusting, 1) for _ in range(3)] == ["v2:1"] * 3  # written, then hits
    assert source.asked == [1, 2, 1, 1]


# -- INFO refused: failover fencing off, and told -------------------------------------------------


@pytest.fixture
def no_info_url(redis_url: str, redis_client: redis.Redis) -> Iterator[str]:
    """The URL of an ACL user with the application user's commands but INFO."""
    with app_user_without(redis_url, redis_client, "+info|replication", "gcache-no-info") as url:
        yield url


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and REFUSED in r.getMessage()
    ]


@pytest.mark.parametrize("fencing", [True, False], ids=["fencing", "no-fencing"])
async def test_info_refused_to_the_user_is_told_once_per_gcache_and_counted(
    make_cache: Callable[..., GCache],
    registry: CollectorRegistry,
    redis_client: redis.Redis,
    no_info_url: str,
    caplog: pytest.LogCaptureFixture,
    is_async: bool,
    fencing: bool,
) -> None:
    caplog.set_level(logging.WARNING, logger="gcache")
    source = Source()
    first, second = (
        make_cache(redis_config=RedisConfig(url=no_info_url), failover_fencing=fencing) for _ in range(2)
    )
    readers = [Readers(cache, source, is_async) for cache in (first, second)]

    for r in readers:
        for _ in range(3):
            assert await r.one(1) == "v1:1"
            assert await r.many([2, 3]) == {2: "v1:2", 3: "v1:3"}

    assert source.asked == [1, 2, 3]  # served and cached as ever
    assert {redis_client.hget(fence(i), "r") for i in (1, 2, 3)} == {b""}  # no replication id
    told = refusals(caplog)
    assert len(told) == (2 if fencing else 0)  # one per GCache, however many reads
    if fencing:
        assert all("+info" in t and "failover_fencing=False" in t for t in told)
    assert sample(registry, "gcache_failover_fencing_off") == (2 if fencing else 0)
    await first.aclose()
    assert sample(registry, "gcache_failover_fencing_off") == (1 if fencing else 0)


async def test_info_allowed_again_clears_the_gauge(
    make_cache: Callable[..., GCache],
    registry: CollectorRegistry,
    redis_client: redis.Redis,
    no_info_url: str,
    caplog: pytest.LogCaptureFixture,
    is_async: bool,
) -> None:
    caplog.set_level(logging.WARNING, logger="gcache")
    readers = Readers(make_cache(redis_config=RedisConfig(url=no_info_url)), Source(), is_async)
    assert await readers.one(1) == "v1:1"
    assert sample(registry, "gcache_failover_fencing_off") == 1

    redis_client.execute_command("ACL", "SETUSER", "gcache-no-info", "+info|replication")  # type: ignore[no-untyped-call]
    assert await readers.many([1]) == {1: "v1:1"}  # the fence's r is '': this history's now refuses it
    assert await readers.one(1) == "v1:1"

    assert sample(registry, "gcache_failover_fencing_off") == 0
    assert redis_client.hget(fence(1), "r") == node_replid(redis_client)
    assert len(refusals(caplog)) == 1
