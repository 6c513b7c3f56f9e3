"""Direct key access on a real Redis: get/aget with a fallback, put/aput, delete/adelete.

Every behaviour runs against both twins; ``get``, ``put`` and ``delete`` below pick one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry

from gcache import CacheLayer, GCache, GCacheConfig, GCacheKey, GCacheKeyConfig
from tests.conftest import sample

MODES = ["async", "sync"]
LOCAL, REMOTE = CacheLayer.LOCAL, CacheLayer.REMOTE
ENABLED = GCacheKeyConfig.enabled(60)
LOCAL_ONLY = GCacheKeyConfig(ttl_sec={LOCAL: 60}, ramp={LOCAL: 100})

Maker = Callable[..., GCache]


class Fallback:
    """A fallback that counts its calls and returns ``(value, n-th call)``."""

    def __init__(self, value: Any) -> None:
        self.value = value
        self.calls = 0

    def __call__(self) -> Any:
        self.calls += 1
        return self.value, self.calls


async def get(cache: GCache, mode: str, key: GCacheKey, fallback: Fallback) -> Any:
    if mode == "sync":
        return cache.get(key, fallback)

    async def afallback() -> Any:
        return fallback()

    return await cache.aget(key, afallback)


async def put(cache: GCache, mode: str, key: GCacheKey, value: Any) -> None:
    if mode == "sync":
        cache.put(key, value)
    else:
        await cache.aput(key, value)


async def delete(cache: GCache, mode: str, key: GCacheKey) -> bool:
    return cache.delete(key) if mode == "sync" else await cache.adelete(key)


def keys_of(client: redis.Redis) -> set[str]:
    return {k.decode() if isinstance(k, bytes) else k for k in client.keys("*")}


def posts_key(default_config: GCacheKeyConfig | None = ENABLED) -> GCacheKey:
    return GCacheKey("user_id", "42", "Direct", args=[("page", "2")], default_config=default_config)


URN = "{urn:gcache:user_id:42}?page=2#Direct"


@pytest.mark.parametrize("mode", MODES)
async def test_get_miss_calls_fallback_once_and_stores(
    mode: str, make_cache: Maker, redis_client: redis.Redis
) -> None:
    cache = make_cache()
    other = make_cache(metrics_registry=CollectorRegistry())
    key = posts_key()
    fallback = Fallback("posts")
    assert key.urn == URN

    with cache.enable(), other.enable():
        assert await get(cache, mode, key, fallback) == ("posts", 1)
        assert keys_of(redis_client) == {URN}
        assert 59_000 < redis_client.pttl(URN) <= 60_000
        assert await get(cache, mode, key, fallback) == ("posts", 1)  # LOCAL
        assert await get(other, mode, key, fallback) == ("posts", 1)  # REMOTE

    assert fallback.calls == 1


@pytest.mark.parametrize("mode", MODES)
async def test_get_outside_enable_calls_fallback_and_stores_nothing(
    mode: str, make_cache: Maker, redis_client: redis.Redis, registry: CollectorRegistry
) -> None:
    cache = make_cache()
    fallback = Fallback("posts")

    assert await get(cache, mode, posts_key(), fallback) == ("posts", 1)
    assert await get(cache, mode, posts_key(), fallback) == ("posts", 2)

    assert redis_client.dbsize() == 0
    assert (
        sample(registry, "gcache_disabled_counter_total", use_case="Direct", layer="GLOBAL", reason="context")
        == 2
    )
    with cache.enable():  # nothing was stored in LOCAL either
        assert await get(cache, mode, posts_key(), fallback) == ("posts", 3)


@pytest.mark.parametrize("mode", MODES)
async def test_put_then_get_returns_value_without_fallback(
    mode: str, make_cache: Maker, redis_client: redis.Redis
) -> None:
    cache = make_cache()
    other = make_cache(metrics_registry=CollectorRegistry())
    key = posts_key()
    fallback = Fallback("computed")

    with cache.enable(), other.enable():
        await put(cache, mode, key, {"posts": [1, 2]})
        assert keys_of(redis_client) == {URN}
        assert 59_000 < redis_client.pttl(URN) <= 60_000
        assert await get(cache, mode, key, fallback) == {"posts": [1, 2]}
        assert await get(other, mode, key, fallback) == {"posts": [1, 2]}

        await put(cache, mode, key, {"posts": [3]})  # put overwrites
        assert await get(cache, mode, key, fallback) == {"posts": [3]}
        assert await get(
            other, mode, posts_key(GCacheKeyConfig(ttl_sec={REMOTE: 60}, ramp={REMOTE: 100})), fallback
        ) == {"posts": [3]}

    assert fallback.calls == 0


@pytest.mark.parametrize("mode", MODES)
async def test_delete_removes_from_both_layers(
    mode: str, make_cache: Maker, redis_client: redis.Redis
) -> None:
    cache = make_cache()
    key = posts_key()
    fallback = Fallback("computed")

    with cache.enable():
        await put(cache, mode, key, "stored")
        assert redis_client.exists(URN) == 1

        assert await delete(cache, mode, key) is True
        assert redis_client.exists(URN) == 0
        assert await delete(cache, mode, key) is False

        assert await get(cache, mode, key, fallback) == ("computed", 1)  # LOCAL is empty too
    assert fallback.calls == 1


@pytest.mark.parametrize("mode", MODES)
async def test_delete_removes_remote_entry_written_by_another_instance(
    mode: str, make_cache: Maker, redis_client: redis.Redis
) -> None:
    cache = make_cache()
    other = make_cache(metrics_registry=CollectorRegistry())

    with other.enable():
        await put(other, mode, posts_key(), "stored")

    assert await delete(cache, mode, posts_key()) is True
    assert redis_client.dbsize() == 0


@pytest.mark.parametrize("mode", MODES)
async def test_key_with_default_prefix_uses_instance_prefix(
    mode: str, make_cache: Maker, redis_client: redis.Redis
) -> None:
    cache = make_cache(urn_prefix="urn:tenant")
    key = GCacheKey("user_id", "1", "Direct", default_config=ENABLED)
    fallback = Fallback("computed")
    assert key.urn == "{urn:gcache:user_id:1}#Direct"

    with cache.enable():
        assert await get(cache, mode, key, fallback) == ("computed", 1)
        assert keys_of(redis_client) == {"{urn:tenant:user_id:1}#Direct"}

        await put(cache, mode, key, "stored")
        assert keys_of(redis_client) == {"{urn:tenant:user_id:1}#Direct"}
        assert await get(cache, mode, key, fallback) == "stored"

        assert await delete(cache, mode, key) is True
        assert redis_client.dbsize() == 0
    assert fallback.calls == 1


@pytest.mark.parametrize("mode", MODES)
async def test_default_config_on_key_is_honoured(
    mode: str, make_cache: Maker, redis_client: redis.Redis, registry: CollectorRegistry
) -> None:
    seen: list[GCacheKey] = []

    def provider(key: GCacheKey) -> None:
        seen.append(key)

    cache = make_cache(cache_config_provider=provider)
    remote_30 = GCacheKeyConfig(ttl_sec={REMOTE: 30}, ramp={REMOTE: 100})
    remote_key = GCacheKey("user_id", "1", "Remote30", default_config=remote_30)
    local_key = GCacheKey("user_id", "1", "LocalOnly", default_config=LOCAL_ONLY)
    bare_key = GCacheKey("user_id", "1", "NoConfig")
    remote_fb, local_fb, bare_fb = Fallback("r"), Fallback("l"), Fallback("b")

    with cache.enable():
        assert await get(cache, mode, remote_key, remote_fb) == ("r", 1)
        assert await get(cache, mode, remote_key, remote_fb) == ("r", 1)
        assert await get(cache, mode, local_key, local_fb) == ("l", 1)
        assert await get(cache, mode, local_key, local_fb) == ("l", 1)
        assert await get(cache, mode, bare_key, bare_fb) == ("b", 1)
        assert await get(cache, mode, bare_key, bare_fb) == ("b", 2)

    assert keys_of(redis_client) == {"{urn:gcache:user_id:1}#Remote30"}
    assert 29_000 < redis_client.pttl("{urn:gcache:user_id:1}#Remote30") <= 30_000
    assert sample(registry, "gcache_request_counter_total", use_case="Remote30", layer="LOCAL") == 0
    assert sample(registry, "gcache_request_counter_total", use_case="LocalOnly", layer="REMOTE") == 0
    for layer in ("LOCAL", "REMOTE"):  # counted per layer, as the original counts it
        assert sample(
            registry,
            "gcache_disabled_counter_total",
            use_case="NoConfig",
            layer=layer,
            reason="missing_config",
        ) == (2)
    assert [k.use_case for k in seen] == ["Remote30"] * 2 + ["LocalOnly"] * 2 + ["NoConfig"] * 2
    assert seen[0].default_config is remote_30


@pytest.mark.parametrize("mode", MODES)
async def test_direct_access_on_local_only_cache(
    mode: str, redis_client: redis.Redis, registry: CollectorRegistry
) -> None:
    cache = GCache(GCacheConfig(metrics_registry=registry))
    try:
        key = posts_key()
        fallback = Fallback("computed")
        with cache.enable():
            assert await get(cache, mode, key, fallback) == ("computed", 1)
            assert await get(cache, mode, key, fallback) == ("computed", 1)
            await put(cache, mode, key, "stored")
            assert await get(cache, mode, key, fallback) == "stored"
            assert await delete(cache, mode, key) is True
            assert await delete(cache, mode, key) is False
            assert await get(cache, mode, key, fallback) == ("computed", 2)
        assert redis_client.dbsize() == 0
    finally:
        await cache.aclose()
