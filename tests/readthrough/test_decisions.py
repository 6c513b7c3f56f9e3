"""Config resolution: a provider's answer reused for ``config_reuse_sec``, errors never kept, and
bad settings refused."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from gcache import CacheLayer, ConfigError, GCache, GCacheConfig, GCacheKey, GCacheKeyConfig, RedisConfig
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
    for layer in ("LOCAL", "REMOTE"):  # each failed answer, counted for each layer
        assert (
            sample(
                registry,
                "gcache_disabled_counter_total",
                use_case="Flaky",
                layer=layer,
                reason="config_error",
            )
            == 2
        )


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
