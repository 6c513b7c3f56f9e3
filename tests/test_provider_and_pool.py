"""Reusing a config provider's answer, and the bounded blocking connection pool."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.asyncio.retry
import redis.backoff
from prometheus_client import CollectorRegistry

from gcache import CacheLayer, ConfigError, GCache, GCacheConfig, GCacheKey, GCacheKeyConfig, RedisConfig
from gcache.remote import ADMIN, READ, WRITE
from tests.conftest import sample

BOTH = GCacheKeyConfig.enabled(60)
REMOTE_ONLY = GCacheKeyConfig(ttl_sec={CacheLayer.REMOTE: 60}, ramp={CacheLayer.REMOTE: 100})


class Provider:
    """An async config provider that records the thread it runs in and can be switched."""

    def __init__(self) -> None:
        self.calls = 0
        self.threads: set[int] = set()
        self.answer: GCacheKeyConfig | None = BOTH
        self.fail = False

    async def __call__(self, key: GCacheKey) -> GCacheKeyConfig | None:
        self.calls += 1
        self.threads.add(threading.get_ident())
        if self.fail:
            raise RuntimeError("config service down")
        return self.answer


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_provider_answer_reused_within_window_then_asked_again(
    make_cache: Callable[..., GCache], registry: CollectorRegistry, mode: str
) -> None:
    provider = Provider()
    cache = make_cache(cache_config_provider=provider, config_reuse_sec=0.3)
    calls: list[str] = []

    def body(uid: str) -> str:
        calls.append(uid)
        return uid

    if mode == "sync":
        fn = cache.cached(key_type="user_id", id_arg="uid", use_case="Reused")(body)

        async def call(uid: str) -> Any:
            return fn(uid)
    else:

        @cache.cached(key_type="user_id", id_arg="uid", use_case="Reused")
        async def afn(uid: str) -> str:
            return body(uid)

        async def call(uid: str) -> Any:
            return await afn(uid)

    with cache.enable():
        for uid in ("1", "2", "1", "3", "1"):
            assert await call(uid) == uid
        assert provider.calls == 1  # one answer serves every key of the use case
        assert calls == ["1", "2", "3"]

        provider.answer = GCacheKeyConfig(ttl_sec={CacheLayer.LOCAL: 60}, ramp={CacheLayer.LOCAL: 0})
        assert await call("1") == "1"
        assert calls == ["1", "2", "3"]  # still the reused answer: cached
        await asyncio.sleep(0.35)
        assert await call("1") == "1"  # the new answer (ramp 0) is in force now
        assert provider.calls == 2
        assert calls == ["1", "2", "3", "1"]
    assert sample(registry, "gcache_disabled_counter_total", use_case="Reused", reason="ramped_down") == 1


async def test_sync_function_with_async_provider_hops_threads_only_when_asking(
    make_cache: Callable[..., GCache],
) -> None:
    provider = Provider()
    cache = make_cache(cache_config_provider=provider, config_reuse_sec=60)

    @cache.cached(key_type="user_id", id_arg="uid", use_case="Hop")
    def get(uid: str) -> str:
        return uid

    with cache.enable():
        for _ in range(20):
            assert get("1") == "1"
    assert provider.calls == 1
    assert threading.get_ident() not in provider.threads  # it ran on gcache's loop thread, once


async def test_provider_errors_are_not_reused(
    make_cache: Callable[..., GCache], registry: CollectorRegistry
) -> None:
    provider = Provider()
    provider.fail = True
    cache = make_cache(cache_config_provider=provider, config_reuse_sec=60)

    @cache.cached(key_type="user_id", id_arg="uid", use_case="Flaky")
    async def get(uid: str) -> str:
        return uid

    with cache.enable():
        assert await get("1") == "1"
        assert await get("1") == "1"
        assert provider.calls == 2  # a failed answer is asked again on the next call
        provider.fail = False
        assert await get("1") == "1"
        assert await get("1") == "1"
        assert provider.calls == 3
    assert sample(registry, "gcache_disabled_counter_total", use_case="Flaky", reason="config_error") == 2


async def test_provider_asked_on_every_call_by_default(make_cache: Callable[..., GCache]) -> None:
    provider = Provider()
    cache = make_cache(cache_config_provider=provider)

    @cache.cached(key_type="user_id", id_arg="uid", use_case="Fresh")
    async def get(uid: str) -> str:
        return uid

    with cache.enable():
        for _ in range(5):
            await get("1")
    assert provider.calls == 5


def test_bad_reuse_and_pool_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="config_reuse_sec"):
        GCacheConfig(config_reuse_sec=-1)
    with pytest.raises(ConfigError, match="max_connections"):
        RedisConfig(max_connections=0)
    with pytest.raises(ConfigError, match="pool_timeout"):
        RedisConfig(pool_timeout=-0.5)


# -- the pool ------------------------------------------------------------------------------------


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
            assert isinstance(pool, (redis.asyncio.BlockingConnectionPool, redis.BlockingConnectionPool))
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


async def test_local_byte_bound_keeps_small_values_and_serves_large_ones_uncached_locally(
    registry: CollectorRegistry,
) -> None:
    cache = GCache(GCacheConfig(local_max_bytes=2_000, metrics_registry=registry))
    calls: list[int] = []

    @cache.cached(key_type="blob_id", id_arg="size", use_case="Blob", default_config=BOTH)
    async def blob(size: int) -> bytes:
        calls.append(size)
        return b"x" * size

    try:
        with cache.enable():
            assert await blob(100) == b"x" * 100
            assert await blob(100) == b"x" * 100
            assert await blob(5_000) == b"x" * 5_000
            assert await blob(5_000) == b"x" * 5_000  # too large for LOCAL: computed again
        assert calls == [100, 5_000, 5_000]
        written = "gcache_write_counter_total"
        assert sample(registry, written, use_case="Blob", layer="local", result="too_large") == 2
        assert sample(registry, written, use_case="Blob", layer="local", result="stored") == 1
    finally:
        await cache.aclose()


def test_local_max_bytes_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="local_max_bytes"):
        GCacheConfig(local_max_bytes=0)
