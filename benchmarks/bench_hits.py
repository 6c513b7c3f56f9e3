"""Hits: LOCAL and REMOTE, sync and async, against bare cachetools and bare redis-py.

Scenarios (1)-(4) of the benchmark issue, each against its floor measured in the same run:

- LOCAL hit (async, sync) vs a read-through over a bare ``cachetools.TTLCache`` written by hand
  in a coroutine / a function: look the id up, compute and store on a miss, return.
- REMOTE hit (async, sync) vs a bare redis-py GET of a value of the same size: one round trip.
  gcache runs with a REMOTE-only config, untracked (a GET) and tracked
  (``track_for_invalidation=True``: TIME, INFO replication, GET and HMGET in one round trip return
  the value, the entity's fence, the server time and the node's replication id), and tracked on a
  GCache without failover fencing (``failover_fencing=False``: no INFO).

LOCAL hits are measured untracked and tracked (the bus is subscribed first, ``start()``).
A tracked REMOTE hit sends three commands; the same read called alone through gcache's
``RemoteCache`` is timed too, and the tracked row's note gives the ratio to it: what the
read-through adds around its one round trip.
cashews and aiocache take part in the async scenarios (in-memory backends for LOCAL, their Redis
backends for REMOTE); they are compared with gcache's untracked use case, the closest to what
they do (neither has exact invalidation).
"""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import Awaitable, Callable
from typing import Any

import cachetools

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
from gcache.urns import entity_key, value_key, watermark_key

__all__ = [
    "ID",
    "LOCAL_ONLY",
    "LOCAL_TARGET",
    "REMOTE_ONLY",
    "REMOTE_TARGET",
    "TTL",
    "read_through_ttl_cache",
    "run",
]

LOCAL_TARGET = 3.0
REMOTE_TARGET = 1.3
TTL = 600
LOCAL_ONLY = GCacheKeyConfig(ttl_sec={CacheLayer.LOCAL: TTL}, ramp={CacheLayer.LOCAL: 100})
REMOTE_ONLY = GCacheKeyConfig(ttl_sec={CacheLayer.REMOTE: TTL}, ramp={CacheLayer.REMOTE: 100})
PREFIX = "bench-hits"
LOCAL_CALLS, LOCAL_REPEAT = 5_000, 15
REMOTE_CALLS, REMOTE_REPEAT = 300, 40  # many short batches: the median one is a typical one
ID = "1"
UNFENCED = f"{GCACHE_TRACKED}, failover_fencing=False"


def _functions(cache: GCache, layer: str, config: GCacheKeyConfig) -> dict[str, Any]:
    """Sync and async, untracked and tracked cached functions over one layer."""
    functions: dict[str, Any] = {}
    for tracked in (False, True):
        name = GCACHE_TRACKED if tracked else GCACHE
        tag = f"{layer}{'Tracked' if tracked else ''}"

        def sync_user(user_id: str) -> dict[str, Any]:
            return user(user_id)

        async def async_user(user_id: str) -> dict[str, Any]:
            return user(user_id)

        decorate = cache.cached(
            key_type="user_id",
            id_arg="user_id",
            use_case=f"{tag}Sync",
            default_config=config,
            track_for_invalidation=tracked,
        )
        adecorate = cache.cached(
            key_type="user_id",
            id_arg="user_id",
            use_case=f"{tag}Async",
            default_config=config,
            track_for_invalidation=tracked,
        )
        functions[f"sync {name}"] = decorate(sync_user)
        functions[f"async {name}"] = adecorate(async_user)
    return functions


def read_through_ttl_cache(
    ttl_cache: cachetools.TTLCache[str, dict[str, Any]],
) -> tuple[Callable[[str], dict[str, Any]], Callable[[str], Awaitable[dict[str, Any]]]]:
    """The LOCAL floor: a read-through over a bare TTLCache, written by hand, sync and async."""

    def bare_local(user_id: str) -> dict[str, Any]:
        value = ttl_cache.get(user_id)
        if value is None:
            value = ttl_cache[user_id] = user(user_id)
        return value

    async def abare_local(user_id: str) -> dict[str, Any]:
        value = ttl_cache.get(user_id)
        if value is None:
            value = ttl_cache[user_id] = user(user_id)
        return value

    return bare_local, abare_local


def run(redis_url: str, admin_url: str) -> list[Result]:
    """``redis_url`` for gcache and bare redis-py; ``admin_url`` for the rivals, which send
    commands gcache does not (and aiocache logs in with a password alone)."""
    cache = make_gcache(redis_url, PREFIX)
    if not cache.start():
        raise RuntimeError("gcache's invalidation bus did not subscribe; tracked LOCAL would be off")
    local = _functions(cache, "Local", LOCAL_ONLY)
    remote = _functions(cache, "Remote", REMOTE_ONLY)
    unfenced_cache = make_gcache(redis_url, PREFIX, failover_fencing=False)
    unfenced = _functions(unfenced_cache, "RemoteUnfenced", REMOTE_ONLY)
    remote.update({f"{mode} {UNFENCED}": unfenced[f"{mode} {GCACHE_TRACKED}"] for mode in ("sync", "async")})
    bare_local, abare_local = read_through_ttl_cache(cachetools.TTLCache(10_000, TTL))

    bare_key = "{" + PREFIX + ":bare:1}#RemoteBare"  # the length of gcache's keys, a payload as large
    payload = pickle.dumps(user(ID), protocol=pickle.HIGHEST_PROTOCOL) + b"\0" * HEADER_SIZE
    sync_client = bare_sync_client(redis_url)
    sync_client.set(bare_key, payload)
    floor = script_floor(redis_url)
    entity = entity_key(PREFIX, "user_id", ID)
    tracked_key, fence = value_key(entity, (), "RemoteTrackedSync"), watermark_key(entity)
    results: list[Result] = []
    try:
        with cache.enable(), unfenced_cache.enable():
            times = time_interleaved(
                {
                    BASELINE: batch(bare_local, (ID,), LOCAL_CALLS),
                    GCACHE: batch(local[f"sync {GCACHE}"], (ID,), LOCAL_CALLS),
                    GCACHE_TRACKED: batch(local[f"sync {GCACHE_TRACKED}"], (ID,), LOCAL_CALLS),
                },
                LOCAL_CALLS,
                LOCAL_REPEAT,
            )
            results += rows("sync LOCAL hit", times, "TTLCache lookup in a function", LOCAL_TARGET)
            times = time_interleaved(
                {
                    BASELINE: batch(sync_client.get, (bare_key,), REMOTE_CALLS),
                    GCACHE: batch(remote[f"sync {GCACHE}"], (ID,), REMOTE_CALLS),
                    GCACHE_TRACKED: batch(remote[f"sync {GCACHE_TRACKED}"], (ID,), REMOTE_CALLS),
                    UNFENCED: batch(remote[f"sync {UNFENCED}"], (ID,), REMOTE_CALLS),
                    TRACKED_FLOOR: batch(floor.read_tracked, (tracked_key, fence), REMOTE_CALLS),
                },
                REMOTE_CALLS,
                REMOTE_REPEAT,
            )
            results += rows("sync REMOTE hit", times, "redis-py GET", REMOTE_TARGET)
            results += asyncio.run(
                _async_part(cache, redis_url, admin_url, local, remote, abare_local, bare_key)
            )
    finally:
        floor.close()
        sync_client.delete(bare_key)
        sync_client.close()
        cache.flushall()
        cache.close()
        unfenced_cache.close()
    return results


async def _async_part(
    cache: GCache,
    redis_url: str,
    admin_url: str,
    local: dict[str, Any],
    remote: dict[str, Any],
    abare_local: Any,
    bare_key: str,
) -> list[Result]:
    results: list[Result] = []
    memory = _rivals.rivals_memory(TTL)
    on_redis = _rivals.rivals_redis(admin_url, TTL, PREFIX)
    client = bare_async_client(redis_url)
    floor = script_floor(redis_url)
    entity = entity_key(PREFIX, "user_id", ID)
    tracked_key, fence = value_key(entity, (), "RemoteTrackedAsync"), watermark_key(entity)
    try:
        batches = {
            BASELINE: abatch(abare_local, (ID,), LOCAL_CALLS),
            GCACHE: abatch(local[f"async {GCACHE}"], (ID,), LOCAL_CALLS),
            GCACHE_TRACKED: abatch(local[f"async {GCACHE_TRACKED}"], (ID,), LOCAL_CALLS),
        }
        for rival in memory:
            batches[rival.name] = abatch(rival.decorate(_async_user), (ID,), LOCAL_CALLS)
        times = await atime_interleaved(batches, LOCAL_CALLS, LOCAL_REPEAT)
        results += rows("async LOCAL hit", times, "TTLCache lookup in a coroutine", LOCAL_TARGET)

        batches = {
            BASELINE: abatch(client.get, (bare_key,), REMOTE_CALLS),
            GCACHE: abatch(remote[f"async {GCACHE}"], (ID,), REMOTE_CALLS),
            GCACHE_TRACKED: abatch(remote[f"async {GCACHE_TRACKED}"], (ID,), REMOTE_CALLS),
            UNFENCED: abatch(remote[f"async {UNFENCED}"], (ID,), REMOTE_CALLS),
            TRACKED_FLOOR: abatch(floor.aread_tracked, (tracked_key, fence), REMOTE_CALLS),
        }
        for rival in on_redis:
            batches[rival.name] = abatch(rival.decorate(_async_user_remote), (ID,), REMOTE_CALLS)
        times = await atime_interleaved(batches, REMOTE_CALLS, REMOTE_REPEAT)
        results += rows("async REMOTE hit", times, "redis.asyncio GET", REMOTE_TARGET)
    finally:
        for rival in [*memory, *on_redis]:
            await rival.close()
        await client.aclose()
        await floor.aclose()
        await cache.aflushall()
    return results


async def _async_user(user_id: str) -> dict[str, Any]:
    return user(user_id)


async def _async_user_remote(user_id: str) -> dict[str, Any]:  # a second function: its own key
    return user(user_id)
