"""LOCAL and REMOTE hits, sync and async, against bare cachetools and bare redis-py in the same run."""

from __future__ import annotations

import asyncio

import cachetools
import redis
import redis.asyncio
from prometheus_client import CollectorRegistry

from benchmarks._harness import Result, atime_per_op, time_per_op
from gcache import CacheLayer, GCache, GCacheConfig, GCacheKeyConfig, RedisConfig

LOCAL_ONLY = GCacheKeyConfig(ttl_sec={CacheLayer.LOCAL: 600}, ramp={CacheLayer.LOCAL: 100})
REMOTE_ONLY = GCacheKeyConfig(ttl_sec={CacheLayer.REMOTE: 600}, ramp={CacheLayer.REMOTE: 100})


def run(redis_url: str) -> list[Result]:
    cache = GCache(
        GCacheConfig(redis_config=RedisConfig(url=redis_url), metrics_registry=CollectorRegistry())
    )
    ttl: cachetools.TTLCache[str, int] = cachetools.TTLCache(1000, 600)
    ttl["1"] = 1

    def bare_lookup(user_id: str) -> int | None:
        return ttl.get(user_id)

    async def abare_lookup(user_id: str) -> int | None:
        return ttl.get(user_id)

    @cache.cached(key_type="user_id", id_arg="user_id", use_case="LocalSync", default_config=LOCAL_ONLY)
    def local_sync(user_id: str) -> int:
        return 1

    @cache.cached(key_type="user_id", id_arg="user_id", use_case="LocalAsync", default_config=LOCAL_ONLY)
    async def local_async(user_id: str) -> int:
        return 1

    @cache.cached(key_type="user_id", id_arg="user_id", use_case="RemoteSync", default_config=REMOTE_ONLY)
    def remote_sync(user_id: str) -> int:
        return 1

    @cache.cached(key_type="user_id", id_arg="user_id", use_case="RemoteAsync", default_config=REMOTE_ONLY)
    async def remote_async(user_id: str) -> int:
        return 1

    sync_client = redis.Redis.from_url(redis_url)
    sync_client.set("bench:bare", b"x" * 64)
    results: list[Result] = []
    with cache.enable():
        local_sync("1")
        remote_sync("1")
        results.append(
            Result(
                "sync LOCAL hit",
                "gcache",
                "TTLCache lookup in a function",
                time_per_op(lambda: local_sync("1"), 20_000),
                time_per_op(lambda: bare_lookup("1"), 20_000),
            )
        )
        results.append(
            Result(
                "sync REMOTE hit",
                "gcache",
                "redis-py GET",
                time_per_op(lambda: remote_sync("1"), 2_000),
                time_per_op(lambda: sync_client.get("bench:bare"), 2_000),
            )
        )

        async def async_part() -> None:
            client = redis.asyncio.Redis.from_url(redis_url)
            await local_async("1")
            await remote_async("1")
            results.append(
                Result(
                    "async LOCAL hit",
                    "gcache",
                    "TTLCache lookup in a coroutine",
                    await atime_per_op(lambda: local_async("1"), 20_000),
                    await atime_per_op(lambda: abare_lookup("1"), 20_000),
                )
            )
            results.append(
                Result(
                    "async REMOTE hit",
                    "gcache",
                    "redis.asyncio GET",
                    await atime_per_op(lambda: remote_async("1"), 2_000),
                    await atime_per_op(lambda: client.get("bench:bare"), 2_000),
                )
            )
            await client.aclose()
            await cache.aclose()

        asyncio.run(async_part())
    sync_client.close()
    return results
