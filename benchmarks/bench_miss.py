"""Miss and write-back: every call misses, runs the function and stores its value.

Scenario (5) of the benchmark issue. Each call uses a new id, so every call misses. gcache runs
with a REMOTE-only config, untracked (GET, then SET) and tracked, sync and async. A tracked miss
of a new entity takes three round trips: the read (TIME, GET, HMGET) finds no fence, the read
script creates one, and the write script checks it. The floor is what a hand-written cache
does: a bare redis-py GET of a missing key, then a SET of the pickled value with a TTL: two
round trips. The tracked row's note compares with gcache's own Redis calls alone through its
``RemoteCache`` (a read, then a write with the read's time stamp and nonce). cashews and
aiocache (Redis backends) take part in the async scenario and are compared with gcache's
untracked use case.
"""

from __future__ import annotations

import asyncio
import itertools
import pickle
from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks import _rivals
from benchmarks._harness import (
    BASELINE,
    GCACHE,
    GCACHE_TRACKED,
    TRACKED_FLOOR,
    Result,
    abatch,
    atime_interleaved,
    bare_async_client,
    bare_sync_client,
    batch,
    make_gcache,
    rows,
    script_floor,
    time_interleaved,
    user,
)
from gcache import CacheLayer, GCache, GCacheKeyConfig
from gcache._envelope import HEADER_SIZE
from gcache.remote import RemoteCache
from gcache.urns import entity_key, value_key, watermark_key

__all__ = ["TARGET", "run"]

TARGET = 1.3
TTL = 60  # seconds: the keys this scenario writes do not outlive it for long
REMOTE_ONLY = GCacheKeyConfig(ttl_sec={CacheLayer.REMOTE: TTL}, ramp={CacheLayer.REMOTE: 100})
PREFIX = "bench-miss"
CALLS, REPEAT = 250, 24  # many short batches: the median one is a typical one


def run(redis_url: str, admin_url: str) -> list[Result]:
    """``redis_url`` for gcache and bare redis-py; ``admin_url`` for the rivals (see bench_hits)."""
    cache = make_gcache(redis_url, PREFIX)
    cache.start()
    ids = itertools.count()
    functions: dict[str, Any] = {}
    for tracked in (False, True):
        tag = "Tracked" if tracked else ""
        name = GCACHE_TRACKED if tracked else GCACHE

        def sync_user(user_id: str) -> dict[str, Any]:
            return user(user_id)

        async def async_user(user_id: str) -> dict[str, Any]:
            return user(user_id)

        for kind, fn in (("sync", sync_user), ("async", async_user)):
            functions[f"{kind} {name}"] = cache.cached(
                key_type="user_id",
                id_arg="user_id",
                use_case=f"Miss{tag}{kind.title()}",
                default_config=REMOTE_ONLY,
                track_for_invalidation=tracked,
            )(fn)

    def fresh(fn: Callable[[str], object]) -> Callable[[], object]:
        return lambda: fn(str(next(ids)))

    sync_client = bare_sync_client(redis_url)
    ttl_ms = TTL * 1000

    def bare() -> None:
        key = "{" + PREFIX + ":bare:" + str(next(ids)) + "}#MissBare"
        if sync_client.get(key) is None:
            sync_client.set(key, pickle.dumps(user(key), protocol=pickle.HIGHEST_PROTOCOL), px=ttl_ms)

    floor = script_floor(redis_url)

    def floor_miss() -> None:
        key, fence = _floor_keys(str(next(ids)))
        read = floor.read_tracked(key, fence)
        floor.write_tracked(key, fence, read, ttl_ms, _envelope(key))

    results: list[Result] = []
    try:
        with cache.enable():
            times = time_interleaved(
                {
                    BASELINE: batch(bare, (), CALLS),
                    GCACHE: batch(fresh(functions[f"sync {GCACHE}"]), (), CALLS),
                    GCACHE_TRACKED: batch(fresh(functions[f"sync {GCACHE_TRACKED}"]), (), CALLS),
                    TRACKED_FLOOR: batch(floor_miss, (), CALLS),
                },
                CALLS,
                REPEAT,
            )
            results += rows("sync miss+write", times, "redis-py GET+SET", TARGET)
            results += asyncio.run(_async_part(cache, redis_url, admin_url, functions, ids))
    finally:
        floor.close()
        sync_client.close()
        cache.flushall()
        cache.close()
    return results


async def _async_part(
    cache: GCache, redis_url: str, admin_url: str, functions: dict[str, Any], ids: itertools.count[int]
) -> list[Result]:
    on_redis = _rivals.rivals_redis(admin_url, TTL, PREFIX)
    client = bare_async_client(redis_url)
    ttl_ms = TTL * 1000

    async def bare() -> None:
        key = "{" + PREFIX + ":bare:" + str(next(ids)) + "}#MissBare"
        if await client.get(key) is None:
            await client.set(key, pickle.dumps(user(key), protocol=pickle.HIGHEST_PROTOCOL), px=ttl_ms)

    def fresh(fn: Callable[[str], Awaitable[object]]) -> Callable[[], Awaitable[object]]:
        return lambda: fn(str(next(ids)))

    floor: RemoteCache = script_floor(redis_url)

    async def floor_miss() -> None:
        key, fence = _floor_keys(str(next(ids)))
        read = await floor.aread_tracked(key, fence)
        await floor.awrite_tracked(key, fence, read, ttl_ms, _envelope(key))

    try:
        batches = {
            BASELINE: abatch(bare, (), CALLS),
            GCACHE: abatch(fresh(functions[f"async {GCACHE}"]), (), CALLS),
            GCACHE_TRACKED: abatch(fresh(functions[f"async {GCACHE_TRACKED}"]), (), CALLS),
            TRACKED_FLOOR: abatch(floor_miss, (), CALLS),
        }
        for rival in on_redis:
            batches[rival.name] = abatch(fresh(rival.decorate(_miss_user)), (), CALLS)
        times = await atime_interleaved(batches, CALLS, REPEAT)
        return rows("async miss+write", times, "redis.asyncio GET+SET", TARGET)
    finally:
        for rival in on_redis:
            await rival.close()
        await client.aclose()
        await floor.aclose()
        await cache.aflushall()


def _floor_keys(user_id: str) -> tuple[str, str]:
    entity = entity_key(PREFIX, "user_id", user_id)
    return value_key(entity, (), "MissFloor"), watermark_key(entity)


def _envelope(key: str) -> bytes:
    """Bytes the size of gcache's envelope of the value (its header, then the pickle)."""
    return b"\0" * HEADER_SIZE + pickle.dumps(user(key), protocol=pickle.HIGHEST_PROTOCOL)


async def _miss_user(user_id: str) -> dict[str, Any]:
    return user(user_id)
