"""REMOTE clients and pools: a blocking pool of ``max_connections``, a deadline per kind of
operation, redis-py's retries cut to one."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.backoff
from prometheus_client import CollectorRegistry

from gcache import CacheLayer, GCache, GCacheConfig, GCacheKeyConfig, RedisConfig
from gcache.remote import ADMIN, READ, WRITE
from gcache.remote.clients import AsyncWaitTimedPool, WaitTimedPool
from tests.conftest import sample

BOTH = GCacheKeyConfig.enabled(60)
REMOTE_ONLY = GCacheKeyConfig(ttl_sec={CacheLayer.REMOTE: 60}, ramp={CacheLayer.REMOTE: 100})


async def test_clients_use_a_blocking_pool_of_max_connections(redis_url: str) -> None:
    cache = GCache(
        GCacheConfig(
            redis_config=RedisConfig(url=redis_url, max_connections=7, pool_timeout=2.5),
            metrics_registry=CollectorRegistry(),
        )
    )
    try:
        remote = cache._remote
        assert remote is not None
        async_pool = remote._async_connection(READ).client.connection_pool
        sync_pool = remote._sync_connection(READ).client.connection_pool
        for pool in (async_pool, sync_pool):
            assert isinstance(pool, (AsyncWaitTimedPool, WaitTimedPool))  # blocking, timed, FIFO for threads
            assert pool.max_connections == 7
            assert pool.timeout == 2.5
    finally:
        await cache.aclose()


async def test_each_kind_of_operation_has_its_deadline_and_redis_py_does_not_retry(redis_url: str) -> None:
    cache = GCache(
        GCacheConfig(
            redis_config=RedisConfig(url=redis_url),
            metrics_registry=CollectorRegistry(),
            read_timeout_sec=0.03,
            write_timeout_sec=0.2,
        )
    )
    try:
        remote = cache._remote
        assert remote is not None
        for kind, deadline in ((READ, 0.03), (WRITE, 0.2), (ADMIN, 1.0)):  # ADMIN: RedisConfig's default
            for client in (remote._async_connection(kind).client, remote._sync_connection(kind).client):
                kwargs = client.connection_pool.connection_kwargs
                assert kwargs["socket_timeout"] == deadline
                retry = kwargs["retry"]
                assert retry.get_retries() == 1  # redis-py 8 would retry 10 times, with backoff
                assert retry._supported_errors == (redis.ConnectionError,)  # not a timeout
        assert remote._async_connection(READ).client is not remote._async_connection(WRITE).client
    finally:
        await cache.aclose()


async def test_no_deadline_leaves_the_clients_socket_timeout_and_a_given_retry_wins(redis_url: str) -> None:
    retry = redis.asyncio.retry.Retry(redis.backoff.NoBackoff(), 2)
    cache = GCache(
        GCacheConfig(
            redis_config=RedisConfig(url=redis_url, redis_py_options={"socket_timeout": 0.7, "retry": retry}),
            metrics_registry=CollectorRegistry(),
            read_timeout_sec=None,
        )
    )
    try:
        remote = cache._remote
        assert remote is not None
        kwargs = remote._async_connection(READ).client.connection_pool.connection_kwargs
        assert kwargs["socket_timeout"] == 0.7
        assert kwargs["retry"].get_retries() == 2
    finally:
        await cache.aclose()


async def test_many_concurrent_callers_share_a_small_pool_without_errors(
    make_cache: Callable[..., GCache], registry: CollectorRegistry, redis_url: str
) -> None:
    cache = make_cache(redis_config=RedisConfig(url=redis_url, max_connections=4, pool_timeout=5))
    calls: list[str] = []

    @cache.cached(key_type="user_id", id_arg="uid", use_case="Crowd", default_config=REMOTE_ONLY)
    async def get(uid: str) -> str:
        calls.append(uid)
        return uid

    with cache.enable():
        for uid in map(str, range(20)):
            await get(uid)
        results = await asyncio.gather(*(get(str(i % 20)) for i in range(400)))
    assert results == [str(i % 20) for i in range(400)]
    assert len(calls) == 20  # every concurrent call was a REMOTE hit
    assert sample(registry, "gcache_error_counter_total") == 0
    remote = cache._remote
    assert remote is not None
    pool = remote._async_connection(READ).client.connection_pool
    opened = len(pool._available_connections) + len(pool._in_use_connections)
    assert 1 <= opened <= 4  # never more than max_connections
