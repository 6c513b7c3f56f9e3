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
import redis.asyncio
from prometheus_client import CollectorRegistry

from gcache import CacheLayer, GCache, GCacheConfig, GCacheKey, GCacheKeyConfig
from gcache import _envelope as envelope
from gcache.errors import ConfigError, KeyTooLongError
from gcache.management import MAX_DIRECT_USE_CASES
from gcache.urns import PartHasher, entity_key, value_key, watermark_key
from tests.conftest import fence_fields, net_output_bytes, plant, sample
from tests.test_gcache import Maker, call, twin

BOTH = GCacheKeyConfig.enabled(60)
REMOTE_ONLY = GCacheKeyConfig(ttl_sec={CacheLayer.REMOTE: 60}, ramp={CacheLayer.REMOTE: 100})
FAIL_SAFE = GCacheKeyConfig(
    ttl_sec={CacheLayer.LOCAL: 60, CacheLayer.REMOTE: 60},
    ramp={CacheLayer.LOCAL: 100, CacheLayer.REMOTE: 100},
    fail_safe_sec=60,
)
MISSES = "gcache_miss_counter_total"
MISS_REASONS = "gcache_miss_reason_counter_total"
ERRORS = "gcache_error_counter_total"
MiB = 1024 * 1024
SLACK = 256 * 1024  # what else Redis sends the process around a read: replies, INFO's own


def counting(
    cache: GCache, use_case: str, is_async: bool, config: GCacheKeyConfig, tracked: bool = False
) -> tuple[Any, list[str]]:
    calls: list[str] = []

    def body(user_id: str) -> str:
        calls.append(user_id)
        return f"user {user_id}"

    fn = cache.cached(
        key_type="user_id",
        id_arg="user_id",
        use_case=use_case,
        default_config=config,
        track_for_invalidation=tracked,
    )(twin("async" if is_async else "sync", body))
    return fn, calls


def plant_giant(client: redis.Redis, use_case: str, tracked: bool, size: int) -> str:
    """A value of ``size`` bytes where ``use_case`` reads user 1, planted as someone who can write
    to Redis would: gcache's envelope, a fresh stamp and (tracked) the fence's own nonce, so that
    nothing but its size tells it apart. Returns its key."""
    entity = entity_key("urn:gcache", "user_id", "1")
    nonce = envelope.NO_NONCE
    if tracked:
        nonce = b"PLANTED!"
        client.hset(watermark_key(entity), mapping=fence_fields(client, nonce, "0"))
    head = envelope.encode(
        pickle.dumps("planted"), envelope.SERIALIZER_PICKLE, 0, time.time_ns() // 1000, nonce=nonce
    )
    urn = value_key(entity, (), use_case)
    plant(client, urn, head, size)
    return urn


def assert_no_redis_failure(cache: GCache, registry: CollectorRegistry, use_case: str) -> None:
    assert sample(registry, ERRORS, use_case=use_case) == 0
    assert cache._remote is not None
    assert (cache._remote.breaker.failures, cache._remote.breaker.is_open) == (0, False)


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
        assert sample(registry, MISS_REASONS, use_case="Planted", layer="REMOTE", reason="too_large") == 1
        assert redis_client.strlen(urn) < 1_000  # rewritten with the function's value
        assert await call(fn, "1") == "user 1"  # a LOCAL hit now

    assert calls == ["1"]


@pytest.mark.parametrize("clients", ["redis_config", "factory"])
@pytest.mark.parametrize("kind", ["untracked", "tracked", "fail_safe", "tracked_fail_safe"])
async def test_a_planted_giant_is_read_bounded_a_too_large_miss_and_no_redis_failure(
    make_cache: Maker,
    registry: CollectorRegistry,
    redis_client: redis.Redis,
    redis_url: str,
    is_async: bool,
    kind: str,
    clients: str,
) -> None:
    """The finding's 64 MiB value, 64 times max_value_bytes: Redis sends the read the limit and
    one byte more (GETRANGE), so it is told too large without being transferred. The function
    runs, nothing counts as a failure of Redis, and LOCAL keeps the function's value."""
    options: dict[str, Any] = {"max_value_bytes": MiB}
    if clients == "factory":  # the application's asyncio clients; sync calls via the loop thread
        options.update(
            redis_config=None, redis_client_factory=lambda: redis.asyncio.Redis.from_url(redis_url)
        )
    tracked = kind.startswith("tracked")
    use_case = f"Giant{kind.title().replace('_', '')}"
    config = FAIL_SAFE if kind.endswith("fail_safe") else BOTH
    cache = make_cache(**options)
    fn, calls = counting(cache, use_case, is_async, config, tracked)

    with cache.enable():
        assert await call(fn, "2") == "user 2"  # an ordinary entry, stored
        urn = plant_giant(redis_client, use_case, tracked, 64 * MiB)
        sent_before = net_output_bytes(redis_client)
        assert await call(fn, "1") == "user 1"  # the function's, not the planted value
        sent = net_output_bytes(redis_client) - sent_before
        assert await call(fn, "1") == "user 1"  # a LOCAL hit

    assert calls == ["2", "1"]
    assert sample(registry, MISS_REASONS, use_case=use_case, layer="REMOTE", reason="too_large") == 1
    assert_no_redis_failure(cache, registry, use_case)
    limit = MiB + envelope.HEADER_SIZE
    assert limit < sent < limit + SLACK  # the limit and one byte, not 64 MiB
    local = cache._local.store(use_case, "user_id", tracked=tracked)
    entity = entity_key("urn:gcache", "user_id", "1")
    assert local.get(urn, entity) == ("user 1", None)
    assert redis_client.strlen(urn) < 1_000  # rewritten with the function's value

    reader = make_cache(**options)  # LOCAL empty: ordinary REMOTE hits, unchanged
    read, read_calls = counting(reader, use_case, is_async, config, tracked)
    with reader.enable():
        assert [await call(read, "1"), await call(read, "2")] == ["user 1", "user 2"]
    assert read_calls == []


async def test_direct_access_to_a_planted_giant_is_read_bounded_and_a_too_large_miss(
    make_cache: Maker, registry: CollectorRegistry, redis_client: redis.Redis, is_async: bool
) -> None:
    cache = make_cache(max_value_bytes=MiB)
    urn = plant_giant(redis_client, "Direct", False, 64 * MiB)
    key = GCacheKey("user_id", "1", "Direct", default_config=BOTH)

    with cache.enable():
        sent_before = net_output_bytes(redis_client)
        if is_async:
            assert await cache.aget(key, lambda: _value("fallback")) == "fallback"
        else:
            assert cache.get(key, lambda: "fallback") == "fallback"
        sent = net_output_bytes(redis_client) - sent_before

    assert sample(registry, MISS_REASONS, use_case="Direct", layer="REMOTE", reason="too_large") == 1
    assert_no_redis_failure(cache, registry, "Direct")
    assert sent < MiB + envelope.HEADER_SIZE + SLACK
    assert redis_client.strlen(urn) < 1_000


@pytest.mark.slow
@pytest.mark.parametrize("tracked", [False, True], ids=["untracked", "tracked"])
async def test_a_planted_256_mib_value_costs_the_default_read_no_deadline_and_opens_no_breaker(
    make_cache: Maker, registry: CollectorRegistry, redis_client: redis.Redis, is_async: bool, tracked: bool
) -> None:
    """The finding's 256 MiB, with the defaults (4 MiB values, a 50 ms lookup deadline, the
    breaker after 5 failures): read whole, it took longer than the deadline to arrive; read
    bounded, five reads of it in a row are five too-large misses, and Redis stays in use."""
    defaults = GCacheConfig()
    assert defaults.max_value_bytes == 4 * MiB
    assert (defaults.read_timeout_sec, defaults.breaker_failures) == (0.05, 5)
    cache = make_cache()
    use_case = "Giant256Tracked" if tracked else "Giant256"
    fn, calls = counting(cache, use_case, is_async, REMOTE_ONLY, tracked)
    sent = 0

    with cache.enable():
        for _ in range(5):  # as many as open the breaker; each planted again over the write-back
            plant_giant(redis_client, use_case, tracked, 256 * MiB)
            sent_before = net_output_bytes(redis_client)
            assert await call(fn, "1") == "user 1"
            sent += net_output_bytes(redis_client) - sent_before

    assert len(calls) == 5
    assert sample(registry, MISS_REASONS, use_case=use_case, layer="REMOTE", reason="too_large") == 5
    assert_no_redis_failure(cache, registry, use_case)
    limit = 4 * MiB + envelope.HEADER_SIZE
    assert 5 * limit < sent < 5 * (limit + SLACK)


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
