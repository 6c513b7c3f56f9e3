"""Security findings of issue 14, each reproduced against a real Redis: what someone who can
write to the cache's Redis, or who picks the ids, can no longer do.

(The bus's findings are in tests/test_bus.py, the key collision in tests/test_keys.py, URL
masking in tests/test_config.py, the embedded redis-server's lock in tests/test_embedded_redis.py.)
"""

from __future__ import annotations

import asyncio
import pickle
import time
from typing import Any, cast

import pytest
import redis
from prometheus_client import CollectorRegistry

from gcache import CacheLayer, GCache, GCacheConfig, GCacheKey, GCacheKeyConfig
from gcache import _envelope as envelope
from gcache.errors import ConfigError, KeyTooLongError
from gcache.management import MAX_DIRECT_USE_CASES
from gcache.urns import PartHasher, entity_key, value_key
from tests.conftest import sample
from tests.test_gcache import Maker, call, twin

BOTH = GCacheKeyConfig.enabled(60)
REMOTE_ONLY = GCacheKeyConfig(ttl_sec={CacheLayer.REMOTE: 60}, ramp={CacheLayer.REMOTE: 100})
MISSES = "gcache_miss_counter_total"
ERRORS = "gcache_error_counter_total"


def counting(cache: GCache, use_case: str, is_async: bool, config: GCacheKeyConfig) -> tuple[Any, list[str]]:
    calls: list[str] = []

    def body(user_id: str) -> str:
        calls.append(user_id)
        return f"user {user_id}"

    fn = cache.cached(key_type="user_id", id_arg="user_id", use_case=use_case, default_config=config)(
        twin("async" if is_async else "sync", body)
    )
    return fn, calls


async def test_a_planted_value_larger_than_max_value_bytes_is_a_miss_never_loaded_or_kept(
    make_cache: Maker, registry: CollectorRegistry, redis_client: redis.Redis, is_async: bool
) -> None:
    cache = make_cache(max_value_bytes=1_000)
    fn, calls = counting(cache, "Planted", is_async, BOTH)
    urn = value_key(entity_key("urn:gcache", "user_id", "1"), (), "Planted")
    giant = pickle.dumps("x" * 50_000)
    redis_client.set(urn, envelope.encode(giant, envelope.SERIALIZER_PICKLE, 0, time.time_ns() // 1000))

    with cache.enable():
        assert await call(fn, "1") == "user 1"  # the function's, not the planted 50 kB
        assert sample(registry, MISSES, use_case="Planted", layer="remote", reason="too_large") == 1
        assert redis_client.strlen(urn) < 1_000  # rewritten with the function's value
        assert await call(fn, "1") == "user 1"  # a LOCAL hit now

    assert calls == ["1"]


async def test_an_id_longer_than_max_key_length_is_served_uncached_and_told(
    make_cache: Maker, registry: CollectorRegistry, redis_client: redis.Redis, is_async: bool
) -> None:
    cache = make_cache(max_key_length=200)
    fn, calls = counting(cache, "LongIds", is_async, BOTH)
    huge = "x" * 1_000_000  # a caller-chosen id of a megabyte

    with cache.enable():
        assert await call(fn, huge) == f"user {huge}"
        assert await call(fn, huge) == f"user {huge}"
        assert await call(fn, "1") == "user 1"
        assert await call(fn, "1") == "user 1"

    assert len(calls) == 3  # the long id ran the function each time; "1" was cached
    assert sample(registry, ERRORS, use_case="LongIds", error="KeyTooLongError") == 2
    assert all(len(k) < 200 for k in redis_client.keys("*"))  # nothing long reached Redis
    with pytest.raises(KeyTooLongError, match="max_key_length is 200"):
        await cache.aget(GCacheKey("user_id", huge, "Direct"), lambda: _value("v"))


async def _value(v: str) -> str:
    return v


async def test_direct_access_refuses_use_case_names_past_the_bound_so_stores_and_series_stay_bounded(
    make_cache: Maker, registry: CollectorRegistry, is_async: bool
) -> None:
    cache = make_cache()
    config = GCacheKeyConfig(ttl_sec={CacheLayer.LOCAL: 60}, ramp={CacheLayer.LOCAL: 100})

    def key(i: int) -> GCacheKey:
        return GCacheKey("user_id", "1", f"Caller{i}", default_config=config)

    async def get(i: int) -> Any:
        if is_async:
            return await cache.aget(key(i), lambda: _value(f"v{i}"))
        return cache.get(key(i), lambda: f"v{i}")

    with cache.enable():
        for i in range(MAX_DIRECT_USE_CASES):
            assert await get(i) == f"v{i}"
        assert await get(7) == "v7"  # a name already in use goes on working
        with pytest.raises(ConfigError, match="use case names must be a fixed set"):
            await get(MAX_DIRECT_USE_CASES)
    assert len(cache._local._stores) <= MAX_DIRECT_USE_CASES
    children = {s.labels["use_case"] for m in registry.collect() for s in m.samples if "use_case" in s.labels}
    assert f"Caller{MAX_DIRECT_USE_CASES}" not in children


# -- long ids and arguments keyed by a keyed hash (opt-in) ----------------------------------------

SECRET = "key-hash-secret-0123456789"


def tracked_counting(cache: GCache, is_async: bool) -> tuple[Any, list[str]]:
    calls: list[str] = []

    def body(user_id: str, query: str = "") -> str:
        calls.append(user_id[:10] + "|" + query[:10])
        return f"{len(user_id)}:{len(query)}:{len(calls)}"

    fn = cache.cached(
        key_type="user_id",
        id_arg="user_id",
        use_case="Hashed",
        default_config=BOTH,
        track_for_invalidation=True,
    )(twin("async" if is_async else "sync", body))
    return fn, calls


async def test_with_a_key_hash_secret_long_ids_and_arguments_are_cached_under_short_keys(
    make_cache: Maker, registry: CollectorRegistry, redis_client: redis.Redis, is_async: bool
) -> None:
    cache = make_cache(key_hash_secret=SECRET, hash_parts_longer_than=64, max_key_length=300)
    fn, calls = tracked_counting(cache, is_async)
    huge_id, other_id, long_query = "x" * 1_000_000, "y" * 1_000_000, "q" * 5_000

    with cache.enable():
        first = await call(fn, huge_id, long_query)
        assert await call(fn, huge_id, long_query) == first  # a LOCAL hit
        assert await call(fn, other_id, long_query) != first  # another id, another key
        assert await call(fn, "1", "short") == "1:5:3"
        assert await call(fn, "1", "short") == "1:5:3"
    assert len(calls) == 3
    keys = sorted(k.decode() for k in cast("list[bytes]", redis_client.keys("*#Hashed")))
    assert len(keys) == 3
    assert all(len(k) < 300 for k in keys)
    hashed = [k for k in keys if "~h" in k]
    assert len(hashed) == 2
    assert all(k.count("~h") == 2 for k in hashed)  # the id and the query
    assert "{urn:gcache:user_id:1}?query=short#Hashed" in keys  # short parts stay readable
    assert sample(registry, ERRORS, use_case="Hashed") == 0


async def test_a_hashed_id_is_invalidated_and_read_directly_under_the_same_key(
    make_cache: Maker, registry: CollectorRegistry, redis_client: redis.Redis, is_async: bool
) -> None:
    reg_writer = CollectorRegistry()
    writer = make_cache(key_hash_secret=SECRET, metrics_registry=reg_writer)
    reader = make_cache(key_hash_secret=SECRET)
    fn, calls = tracked_counting(reader, is_async)
    huge = "z" * 100_000
    key = GCacheKey(
        "user_id", huge, "Hashed", args=[("query", "")], invalidation_tracking=True, default_config=BOTH
    )

    with reader.enable(), writer.enable():
        value = await call(fn, huge)
        if is_async:
            assert await writer.aget(key, lambda: _value("not this")) == value  # the reader's entry
            await writer.ainvalidate("user_id", huge)
        else:
            assert writer.get(key, lambda: "not this") == value
            writer.invalidate("user_id", huge)
        fence = [k for k in redis_client.keys("*#watermark")]
        assert len(fence) == 1
        assert int(redis_client.hget(fence[0], "w") or 0) > 0  # the hashed entity's fence was raised
        await asyncio.sleep(0.2)  # the bus brings the invalidation to the reader's LOCAL layer
        assert await call(fn, huge) != value
    assert len(calls) == 2


def test_another_secret_keys_the_same_id_elsewhere_and_bad_secrets_are_told() -> None:
    one, other = PartHasher(b"a" * 16, 8), PartHasher(b"b" * 16, 8)

    assert one("short") == "short"
    assert one("a-long-identifier") == one("a-long-identifier") != other("a-long-identifier")
    assert one("a-long-identifier").startswith("~h")
    assert len(one("a-long-identifier")) == 34
    with pytest.raises(ConfigError, match="key_hash_secret must be 16 bytes at least"):
        GCacheConfig(key_hash_secret="short")
    with pytest.raises(ConfigError, match="hash_parts_longer_than must be an integer above 0"):
        GCacheConfig(hash_parts_longer_than=0)
    assert SECRET not in repr(GCacheConfig(key_hash_secret=SECRET))
