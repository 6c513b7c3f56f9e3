"""The original's ``tests/test_redis_client_initialization.py``, rewritten (see README.md):
where the Redis client comes from (``redis_config``, ``redis_client_factory``, neither), and how
often a factory is asked for one.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from gcache import GCache, GCacheConfig, GCacheKeyConfig, RedisConfig
from gcache.exceptions import RedisConfigConflict
from tests.upstream.conftest import FakeCacheConfigProvider, Maker


class CountingFactory:
    """A ``redis_client_factory``: a new asyncio client on the test server each call, with the
    clients it made and the threads that asked."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.clients: list[Redis] = []
        self.threads: set[int | None] = set()
        self._lock = threading.Lock()

    def __call__(self) -> Redis:
        client = Redis.from_url(self.url)
        with self._lock:
            self.clients.append(client)
            self.threads.add(threading.current_thread().ident)
        return client


@pytest.fixture
def factory(redis_url: str) -> CountingFactory:
    return CountingFactory(redis_url)


Build = Callable[..., GCache]


@pytest.fixture
def build(registry: CollectorRegistry, provider: FakeCacheConfigProvider) -> Iterator[Build]:
    """GCache instances for a sync test, with the test's provider and registry; closed after."""
    caches: list[GCache] = []

    def make(**options: Any) -> GCache:
        options = {"cache_config_provider": provider, "metrics_registry": registry, **options}
        cache = GCache(GCacheConfig(**options))
        caches.append(cache)
        return cache

    yield make
    for cache in caches:
        cache.close()


def counted_function(cache: GCache, use_case: str, calls: list[int]) -> Callable[..., str]:
    """A sync cached function of ``use_case`` with the default config on, recording its calls."""

    @cache.cached(
        key_type="Test", id_arg="test_id", use_case=use_case, default_config=GCacheKeyConfig.enabled(60)
    )
    def cached_func(test_id: int) -> str:
        calls.append(test_id)
        return f"value_{test_id}"

    return cached_func


def test_redis_config_conflict(
    provider: FakeCacheConfigProvider, factory: CountingFactory, redis_url: str
) -> None:
    """tests/test_redis_client_initialization.py::test_redis_config_conflict

    Deliberate difference (README: giving both fails in ``GCacheConfig(...)``): the original raised
    in ``GCache(...)``; ours raises the same class one step earlier, so ``GCache`` is never built."""
    with pytest.raises(RedisConfigConflict):
        GCacheConfig(
            cache_config_provider=provider,
            redis_config=RedisConfig(url=redis_url),
            redis_client_factory=factory,
        )
    assert factory.clients == []


def test_no_redis_uses_noop_cache(build: Build, redis_client: redis.Redis) -> None:
    """tests/test_redis_client_initialization.py::test_no_redis_uses_noop_cache"""
    cache = build(urn_prefix="urn:test:noop")
    calls: list[int] = []
    cached_func = counted_function(cache, "test_noop", calls)

    with cache.enable():
        assert cached_func(test_id=123) == "value_123"
        assert cached_func(test_id=123) == "value_123"  # LOCAL
    assert calls == [123]
    assert redis_client.keys() == []


def test_redis_config_only(build: Build, redis_url: str, redis_client: redis.Redis) -> None:
    """tests/test_redis_client_initialization.py::test_redis_config_only"""
    cache = build(urn_prefix="urn:test:config_only", redis_config=RedisConfig(url=redis_url))
    cached_func = counted_function(cache, "test_config_only", [])

    with cache.enable():
        assert cached_func(test_id=456) == "value_456"
    assert redis_client.keys() == [b"{urn:test:config_only:Test:456}#test_config_only"]


def test_redis_client_factory_only(build: Build, factory: CountingFactory, redis_client: redis.Redis) -> None:
    """tests/test_redis_client_initialization.py::test_redis_client_factory_only"""
    cache = build(urn_prefix="urn:test:factory_only", redis_client_factory=factory)
    cached_func = counted_function(cache, "test_factory_only", [])

    with cache.enable():
        assert cached_func(test_id=789) == "value_789"
    assert len(factory.clients) > 0
    assert redis_client.keys() == [b"{urn:test:factory_only:Test:789}#test_factory_only"]


async def test_redis_config_async_operations(make_cache: Maker, redis_client: redis.Redis) -> None:
    """tests/test_redis_client_initialization.py::test_redis_config_async_operations"""
    cache = make_cache(urn_prefix="urn:test:async")
    calls: list[int] = []

    @cache.cached(
        key_type="Test", id_arg="test_id", use_case="test_async", default_config=GCacheKeyConfig.enabled(60)
    )
    async def cached_func_async(test_id: int) -> str:
        calls.append(test_id)
        return f"async_value_{test_id}"

    with cache.enable():
        assert await cached_func_async(test_id=999) == "async_value_999"
        assert await cached_func_async(test_id=999) == "async_value_999"
    assert calls == [999]
    assert redis_client.keys() == [b"{urn:test:async:Test:999}#test_async"]


def test_factory_called_once_per_thread(build: Build, factory: CountingFactory) -> None:
    """tests/test_redis_client_initialization.py::test_factory_called_once_per_thread"""
    cache = build(urn_prefix="urn:test:factory_once", redis_client_factory=factory)
    cached_func = counted_function(cache, "test_factory_once", [])

    with cache.enable():
        for test_id in (1, 2, 3, 1, 4):
            assert cached_func(test_id=test_id) == f"value_{test_id}"
    assert 1 <= len(factory.clients) < 5  # not one client per operation


def test_factory_called_once_per_thread_multiple_threads(build: Build, factory: CountingFactory) -> None:
    """tests/test_redis_client_initialization.py::test_factory_called_once_per_thread_multiple_threads"""
    cache = build(urn_prefix="urn:test:multithread", redis_client_factory=factory)
    cached_func = counted_function(cache, "test_multithread", [])

    def call(test_id: int) -> str:
        with cache.enable():
            return cached_func(test_id=test_id)

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as executor:
        results = list(executor.map(call, range(20)))
    assert results == [f"value_{i}" for i in range(20)]
    assert len(factory.clients) == len(factory.threads)  # at most one client per thread asking


def test_same_thread_reuses_client_instance(build: Build, factory: CountingFactory) -> None:
    """tests/test_redis_client_initialization.py::test_same_thread_reuses_client_instance"""
    cache = build(urn_prefix="urn:test:same_instance", redis_client_factory=factory)
    cached_func = counted_function(cache, "test_same_instance", [])

    with cache.enable():
        for test_id in range(100):
            assert cached_func(test_id=test_id) == f"value_{test_id}"
    assert 1 <= len(factory.clients) <= 16  # the original's bound: its pool's 16 threads


def test_no_config_provider_uses_default_config(
    registry: CollectorRegistry, redis_url: str, redis_client: redis.Redis
) -> None:
    """tests/test_redis_client_initialization.py::test_no_config_provider_uses_default_config"""
    config = GCacheConfig(
        urn_prefix="urn:test:no_provider", redis_config=RedisConfig(url=redis_url), metrics_registry=registry
    )
    calls: list[int] = []
    with GCache(config) as cache:
        cached_func = counted_function(cache, "test_no_provider", calls)
        with cache.enable():
            assert cached_func(test_id=123) == "value_123"
            assert cached_func(test_id=123) == "value_123"
    assert calls == [123]
    assert redis_client.keys() == [b"{urn:test:no_provider:Test:123}#test_no_provider"]
