"""``gcache.refresh()``: calls read past the cache and refresh it (a request's
``Cache-Control: no-cache``), on a real Redis, for sync and async, tracked and untracked use cases."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry

from gcache import CacheLayer, GCache, GCacheKey, GCacheKeyConfig
from tests.test_gcache import Maker, call, twin

BOTH = GCacheKeyConfig.enabled(60)
REMOTE_ONLY = GCacheKeyConfig(ttl_sec={CacheLayer.REMOTE: 60}, ramp={CacheLayer.REMOTE: 100})


@pytest.fixture(params=[False, True], ids=["untracked", "tracked"])
def tracked(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


class Source:
    def __init__(self, cache: GCache, is_async: bool, tracked: bool, config: GCacheKeyConfig = BOTH) -> None:
        self.value = "v1"
        self.reads = 0
        self.during_read: Any = None  # called while the function runs (an invalidation racing it)

        def read(user_id: str) -> str:
            self.reads += 1
            if self.during_read is not None:
                self.during_read()
            return self.value

        self.get = cache.cached(
            key_type="user_id", id_arg="user_id", use_case="Refreshed", default_config=config,
            track_for_invalidation=tracked,
        )(twin("async" if is_async else "sync", read))  # fmt: skip


async def test_refresh_runs_the_function_and_writes_its_value_back(
    make_cache: Maker, is_async: bool, tracked: bool
) -> None:
    cache = make_cache()
    other = make_cache(metrics_registry=CollectorRegistry())  # another process: REMOTE only for it
    source = Source(cache, is_async, tracked)
    elsewhere = Source(other, is_async, tracked, REMOTE_ONLY)
    with cache.enable():
        assert await call(source.get, "1") == "v1"
    source.value = elsewhere.value = "v2"
    with cache.enable():
        assert await call(source.get, "1") == "v1"  # a hit
    with cache.refresh():
        assert cache.is_enabled
        assert await call(source.get, "1") == "v2"  # read past the cache
    with cache.enable():
        assert await call(source.get, "1") == "v2"  # LOCAL refreshed
    with other.enable():
        assert await call(elsewhere.get, "1") == "v2"  # REMOTE refreshed
    assert source.reads == 2
    assert elsewhere.reads == 0


async def test_an_invalidation_during_a_tracked_refresh_refuses_its_write(
    make_cache: Maker, is_async: bool
) -> None:
    cache = make_cache()
    source = Source(cache, is_async, tracked=True, config=REMOTE_ONLY)
    with cache.enable():
        await call(source.get, "1")
    source.during_read = lambda: cache.invalidate("user_id", "1")  # lands after the fence read
    with cache.refresh():
        assert await call(source.get, "1") == "v1"
    source.during_read = None
    with cache.enable():
        await call(source.get, "1")
    assert source.reads == 3  # the refresh's value was refused: the next call computed again


async def test_direct_access_and_the_decorator_honour_refresh(
    make_cache: Maker, redis_client: redis.Redis, is_async: bool, tracked: bool
) -> None:
    cache = make_cache()
    key = GCacheKey("user_id", "1", "Direct", invalidation_tracking=tracked, default_config=BOTH)
    computed: list[str] = []

    def fallback() -> str:
        computed.append("ran")
        return f"v{len(computed)}"

    async def afallback() -> str:
        return fallback()

    async def get() -> Any:
        return await cache.aget(key, afallback) if is_async else cache.get(key, fallback)

    with cache.enable():
        assert await get() == "v1"
        assert await get() == "v1"

    @cache.refresh()
    async def refreshing() -> Any:
        return await get()

    assert await refreshing() == "v2"
    with cache.enable():
        assert await get() == "v2"
    assert computed == ["ran", "ran"]
    assert not cache.is_enabled


async def test_a_batch_inside_refresh_runs_the_function_for_every_id_and_replaces_their_entries(
    make_cache: Maker, is_async: bool, tracked: bool
) -> None:
    cache = make_cache()
    other = make_cache(metrics_registry=CollectorRegistry())  # another process: REMOTE only for it
    asked: list[list[str]] = []
    value = ["v1"]

    def read(ids: list[str]) -> dict[str, str]:
        asked.append(list(ids))
        return {i: f"{value[0]}-{i}" for i in ids}

    def decorated(on: GCache, config: GCacheKeyConfig) -> Any:
        return on.cached_many(key_type="user_id", ids_arg="ids", use_case="RefreshedMany",
                              default_config=config, track_for_invalidation=tracked,
                              )(twin("async" if is_async else "sync", read))  # fmt: skip

    get, elsewhere = decorated(cache, BOTH), decorated(other, REMOTE_ONLY)
    with cache.enable():
        assert await call(get, ["1", "2"]) == {"1": "v1-1", "2": "v1-2"}
    value[0] = "v2"
    with cache.refresh():
        assert await call(get, ["2", "1"]) == {"2": "v2-2", "1": "v2-1"}  # read past the cache
    with cache.enable():
        assert await call(get, ["1", "2"]) == {"1": "v2-1", "2": "v2-2"}  # LOCAL refreshed
    with other.enable():
        assert await call(elsewhere, ["1", "2"]) == {"1": "v2-1", "2": "v2-2"}  # REMOTE refreshed
    assert asked == [["1", "2"], ["2", "1"]]


async def test_an_invalidation_during_a_batch_refresh_refuses_that_ids_write(
    make_cache: Maker, is_async: bool
) -> None:
    cache = make_cache()
    asked: list[list[str]] = []
    during: list[Any] = []

    def read(ids: list[str]) -> dict[str, str]:
        asked.append(list(ids))
        for step in during:
            step()  # lands after the fences were read
        return {i: f"v{len(asked)}-{i}" for i in ids}

    decorate = cache.cached_many(key_type="user_id", ids_arg="ids", use_case="RefreshedMany",
                                 default_config=REMOTE_ONLY, track_for_invalidation=True)  # fmt: skip
    get = decorate(twin("async" if is_async else "sync", read))
    with cache.enable():
        assert await call(get, ["1", "2"]) == {"1": "v1-1", "2": "v1-2"}
    during.append(lambda: cache.invalidate("user_id", "1"))
    with cache.refresh():
        assert await call(get, ["1", "2"]) == {"1": "v2-1", "2": "v2-2"}
    during.clear()
    with cache.enable():
        assert await call(get, ["1", "2"]) == {"1": "v3-1", "2": "v2-2"}  # 1's refresh was refused
    assert asked == [["1", "2"], ["1", "2"], ["1"]]


async def test_get_many_inside_refresh_runs_its_fallback_and_replaces_the_entries(
    make_cache: Maker, is_async: bool, tracked: bool
) -> None:
    cache = make_cache()
    keys = [
        GCacheKey("user_id", i, "DirectMany", invalidation_tracking=tracked, default_config=BOTH)
        for i in "12"
    ]
    runs: list[list[str]] = []

    def fallback(missing: list[GCacheKey]) -> dict[GCacheKey, str]:
        runs.append([k.id for k in missing])
        return {k: f"v{len(runs)}-{k.id}" for k in missing}

    async def afallback(missing: list[GCacheKey]) -> dict[GCacheKey, str]:
        return fallback(missing)

    async def get() -> Any:
        found = await cache.aget_many(keys, afallback) if is_async else cache.get_many(keys, fallback)
        return {k.id: v for k, v in found.items()}

    with cache.enable():
        assert await get() == {"1": "v1-1", "2": "v1-2"}
    with cache.refresh():
        assert await get() == {"1": "v2-1", "2": "v2-2"}
    with cache.enable():
        assert await get() == {"1": "v2-1", "2": "v2-2"}
    assert runs == [["1", "2"], ["1", "2"]]
