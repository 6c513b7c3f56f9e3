"""The original's ``tests/test_error_paths.py``, rewritten against our public API (see README.md).

Several originals drove the original's private classes (``LocalCache``, ``RedisCache``,
``NoopCache``) directly; each is rewritten as the same situation reached through ``GCache``
(``aget``/``aput``/``adelete``, a cached function), asserting what a caller sees.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import redis
from prometheus_client import CollectorRegistry

from gcache import CacheLayer, GCache, GCacheConfig, GCacheKey, GCacheKeyConfig, RedisConfig
from gcache.exceptions import FuncArgDoesNotExist, GCacheDisabled, MissingKeyConfig
from tests.upstream.conftest import URN_PREFIX, FakeCacheConfigProvider, Maker, cache_options, metric

LOCAL, REMOTE = CacheLayer.LOCAL, CacheLayer.REMOTE


def test_exception_messages() -> None:
    """tests/test_error_paths.py::test_exception_messages (GCacheDisabled's: the next test)"""
    assert "my_arg" in str(FuncArgDoesNotExist("my_arg"))
    assert "my_use_case" in str(MissingKeyConfig("my_use_case"))


def test_exception_messages_gcache_disabled() -> None:
    """tests/test_error_paths.py::test_exception_messages, its GCacheDisabled assertion (never
    raised here, but code may build and show one)."""
    assert "disabled" in str(GCacheDisabled()).lower()
    assert str(GCacheDisabled("why")) == "why"


def test_gcache_key_eq_and_str() -> None:
    """tests/test_error_paths.py::test_gcache_key_eq_and_str (the urn with the key's own prefix,
    README: ``GCacheKey(...).urn`` renders with the key's own ``urn_prefix``)"""
    key = GCacheKey(key_type="Test", id="123", use_case="test")

    assert key != "not a key"
    assert key != 123
    assert key != None  # noqa: E711 - the original's own check of __eq__ against None
    assert str(key) == key.urn
    assert "Test:123" in str(key)
    assert key.urn == "{urn:gcache:Test:123}#test"


@pytest.fixture
def local_only(registry: CollectorRegistry) -> Iterator[GCache]:
    """A cache with no Redis: LOCAL alone (the original's NoopCache as its REMOTE)."""
    with GCache(GCacheConfig(metrics_registry=registry, metrics_prefix="api_")) as cache:
        yield cache


async def _value() -> str:
    return "value"


async def _must_not_run() -> str:
    raise AssertionError("the fallback ran: the value was not cached")


async def test_local_cache_delete_nonexistent_key(local_only: GCache) -> None:
    """tests/test_error_paths.py::test_local_cache_delete_nonexistent_key"""
    config = GCacheKeyConfig.enabled(60)
    key = GCacheKey(key_type="Test", id="123", use_case="test", default_config=config)
    other = GCacheKey(key_type="Test", id="other", use_case="test", default_config=config)

    with local_only.enable():
        assert await local_only.aget(key, _value) == "value"  # fills LOCAL
        assert await local_only.aget(key, _must_not_run) == "value"
    assert await local_only.adelete(other) is False
    assert await local_only.adelete(key) is True


async def test_local_cache_missing_config_raises(local_only: GCache, registry: CollectorRegistry) -> None:
    """tests/test_error_paths.py::test_local_cache_missing_config_raises

    The original's LocalCache raised ``MissingKeyConfig``, which its caller turned into an
    uncached call and a count; ours never raises it (gcache.errors says so) and does the same."""
    key = GCacheKey(key_type="Test", id="123", use_case="test")  # no provider, no default config

    with local_only.enable():
        assert await local_only.aget(key, _value) == "value"
    assert metric(registry, "gcache_disabled_counter_total", layer="LOCAL", reason="missing_config") == 1


async def test_redis_cache_put_missing_config(
    acache: GCache, provider: FakeCacheConfigProvider, redis_client: redis.Redis
) -> None:
    """tests/test_error_paths.py::test_redis_cache_put_missing_config (the original's RedisCache.put
    raised ``MissingKeyConfig``; our ``aput`` counts instead of raising, and writes nothing)"""
    provider.configs["no_config"] = None
    await acache.aput(GCacheKey(key_type="Test", id="123", use_case="no_config"), "value")
    assert redis_client.keys() == []


async def test_redis_cache_put_missing_ttl(
    acache: GCache, provider: FakeCacheConfigProvider, redis_client: redis.Redis
) -> None:
    """tests/test_error_paths.py::test_redis_cache_put_missing_ttl (a REMOTE ramp without a REMOTE
    TTL: nothing is written to Redis; LOCAL, fully configured, takes the value)"""
    provider.configs["test"] = GCacheKeyConfig(ttl_sec={LOCAL: 60}, ramp={LOCAL: 100, REMOTE: 100})
    key = GCacheKey(key_type="Test", id="123", use_case="test")

    await acache.aput(key, "value")
    assert redis_client.keys() == []
    with acache.enable():
        assert await acache.aget(key, _must_not_run) == "value"


async def test_noop_cache_put_and_delete(local_only: GCache) -> None:
    """tests/test_error_paths.py::test_noop_cache_put_and_delete (no Redis: ``aput`` does not
    raise, ``adelete`` of a key never stored is False)"""
    key = GCacheKey(key_type="Test", id="123", use_case="test")

    await local_only.aput(key, "value")
    assert await local_only.adelete(key) is False


async def test_should_cache_config_error(
    make_cache: Maker, redis_url: str, registry: CollectorRegistry
) -> None:
    """tests/test_error_paths.py::test_should_cache_config_error (the original replaced its private
    LocalCache's provider; here the cache's provider raises)"""
    provider = FakeCacheConfigProvider()

    async def failing_provider(key: GCacheKey) -> GCacheKeyConfig | None:
        raise RuntimeError("fail")

    cache = make_cache(
        **{**cache_options(redis_url, registry, provider), "cache_config_provider": failing_provider}
    )

    @cache.cached(key_type="Test", id_arg="test", use_case="test_config_error")
    async def cached_func(test: int) -> str:
        return "fallback_value"

    with cache.enable():
        assert await cached_func(123) == "fallback_value"
    for layer in ("LOCAL", "REMOTE"):
        assert metric(registry, "gcache_disabled_counter_total", layer=layer, reason="config_error") == 1


def test_partial_ramp(cache: GCache, provider: FakeCacheConfigProvider, registry: CollectorRegistry) -> None:
    """tests/test_error_paths.py::test_partial_ramp (the original only checked that 10 calls did not
    fail; 200 calls at a 50% ramp also show both sides of the draw, each missed with odds 2**-200)"""
    provider.configs["test_partial_ramp"] = GCacheKeyConfig(
        ttl_sec={LOCAL: 60, REMOTE: 60}, ramp={LOCAL: 50, REMOTE: 50}
    )
    calls: list[int] = []

    @cache.cached(key_type="Test", id_arg="test", use_case="test_partial_ramp")
    def cached_func(test: int) -> int:
        calls.append(test)
        return 1

    with cache.enable():
        assert [cached_func(test=1) for _ in range(200)] == [1] * 200
    assert 1 <= len(calls) < 200  # some calls were served from a layer
    assert metric(registry, "gcache_disabled_counter_total", reason="ramped_down") > 0


def test_gcache_custom_logger(
    redis_url: str,
    registry: CollectorRegistry,
    provider: FakeCacheConfigProvider,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """tests/test_error_paths.py::test_gcache_custom_logger (the original read its process-global
    state; here an error is shown to reach the configured logger)"""
    custom_logger = logging.getLogger("custom_gcache_logger")
    config = GCacheConfig(
        cache_config_provider=provider,
        redis_config=RedisConfig(url=redis_url),
        urn_prefix=URN_PREFIX,
        metrics_registry=registry,
        logger=custom_logger,
    )
    with GCache(config) as cache:

        @cache.cached(key_type="Test", id_arg=("test", lambda x: x["a"]), use_case="custom_logger")
        def cached_func(test: int) -> int:
            return 0

        with caplog.at_level(logging.WARNING, logger="custom_gcache_logger"), cache.enable():
            assert cached_func(1) == 0
    assert any("key" in r.getMessage() for r in caplog.records if r.name == "custom_gcache_logger")
    assert [r.getMessage() for r in caplog.records if r.name == "gcache"] == []  # all went to ours


def test_sync_flushall(cache: GCache, redis_client: redis.Redis) -> None:
    """tests/test_error_paths.py::test_sync_flushall"""

    @cache.cached(key_type="Test", id_arg="test", use_case="test_sync_flushall")
    def cached_func(test: int) -> str:
        return f"value_{test}"

    with cache.enable():
        assert cached_func(test=1) == "value_1"
        assert len(redis_client.keys()) == 1
        cache.flushall()
        assert redis_client.keys() == []
