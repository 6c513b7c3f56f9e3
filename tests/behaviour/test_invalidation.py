"""Exact invalidation through the public API, on the real Redis, for async and sync functions.

DESIGN.md, "Invalidation: never serve what was invalidated": once ``invalidate`` returns, no call
is served an entry computed before it, including a value whose computation was still running
when the invalidation landed; a missing or replaced fence fails closed; the future buffer makes
values computed within it stale too; all stamps come from the Redis clock.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry

from gcache import (
    CacheLayer,
    ConfigError,
    FutureBufferTooLargeError,
    GCache,
    GCacheKey,
    GCacheKeyConfig,
    RedisConfig,
    RemoteError,
)
from gcache import _envelope as envelope
from tests.conftest import fence_fields, sample

LOCAL_ONLY = GCacheKeyConfig(ttl_sec={CacheLayer.LOCAL: 60}, ramp={CacheLayer.LOCAL: 100})
REMOTE_ONLY = GCacheKeyConfig(ttl_sec={CacheLayer.REMOTE: 60}, ramp={CacheLayer.REMOTE: 100})
BOTH = GCacheKeyConfig.enabled(60)
LAYERS = {"local": LOCAL_ONLY, "remote": REMOTE_ONLY, "both": BOTH}

MODES = pytest.mark.parametrize("mode", ["async", "sync"])
WITH_REMOTE = pytest.mark.parametrize("layers", ["remote", "both"])
ALL_LAYERS = pytest.mark.parametrize("layers", ["local", "remote", "both"])

WRITES = "gcache_write_counter_total"
MISSES = "gcache_miss_counter_total"
MISS_REASONS = "gcache_miss_reason_counter_total"
INVALIDATIONS = "gcache_invalidation_counter_total"


def fence_key(id: str, key_type: str = "user_id") -> str:
    return "{urn:gcache:" + key_type + ":" + id + "}#watermark"


def value_key(use_case: str, id: str, x: int | None = None, key_type: str = "user_id") -> str:
    args = "" if x is None else f"?x={x}"
    return "{urn:gcache:" + key_type + ":" + id + "}" + args + "#" + use_case


def stored(client: redis.Redis, key: str) -> bytes:
    """The raw bytes Redis holds at ``key`` (which must exist)."""
    raw = client.get(key)
    assert isinstance(raw, bytes), f"{key!r} holds {raw!r}"
    return raw


async def invalidate(
    cache: GCache, mode: str, key_type: str, id: str | int, future_buffer_ms: int = 0
) -> None:
    if mode == "async":
        await cache.ainvalidate(key_type, id, future_buffer_ms=future_buffer_ms)
    else:
        cache.invalidate(key_type, id, future_buffer_ms=future_buffer_ms)


class Fn:
    """A cached function, async or sync, that records its calls.

    Its result is ``(id, x, n)`` with ``n`` the number of calls so far, so a recomputation is
    visible in the value. ``invalidate_next`` makes the next call invalidate an entity (through
    ``invalidator``, by default the same cache) while it runs: a write landing mid-computation.
    """

    def __init__(
        self,
        cache: GCache,
        mode: str,
        *,
        use_case: str,
        config: GCacheKeyConfig,
        key_type: str = "user_id",
        tracked: bool = True,
        with_arg: bool = False,
    ) -> None:
        self.mode = mode
        self.key_type = key_type
        self.with_arg = with_arg
        self.calls: list[tuple[str, int]] = []
        self.invalidate_next: tuple[str, int] | None = None  # (id, future_buffer_ms)
        self.invalidator = cache
        decorate = cache.cached(
            key_type=key_type,
            id_arg="uid",
            use_case=use_case,
            track_for_invalidation=tracked,
            default_config=config,
            ignore_args=[] if with_arg else ["x"],
        )

        if mode == "async":

            async def afunc(uid: str, x: int = 0) -> tuple[str, int, int]:
                pending = self._take()
                if pending is not None:
                    await self.invalidator.ainvalidate(key_type, pending[0], future_buffer_ms=pending[1])
                return self._result(uid, x)

            self._afunc = decorate(afunc)
        else:

            def func(uid: str, x: int = 0) -> tuple[str, int, int]:
                pending = self._take()
                if pending is not None:
                    self.invalidator.invalidate(key_type, pending[0], future_buffer_ms=pending[1])
                return self._result(uid, x)

            self._func = decorate(func)

    def _take(self) -> tuple[str, int] | None:
        pending, self.invalidate_next = self.invalidate_next, None
        return pending

    def _result(self, uid: str, x: int) -> tuple[str, int, int]:
        self.calls.append((uid, x))
        return (uid, x, len(self.calls))

    async def __call__(self, uid: str, x: int = 0) -> tuple[str, int, int]:
        if self.mode == "async":
            result: tuple[str, int, int] = await self._afunc(uid, x)
        else:
            result = self._func(uid, x)
        return result

    @property
    def n(self) -> int:
        return len(self.calls)


# -- invalidate(key_type, id) ---------------------------------------------------------------------


@MODES
@ALL_LAYERS
async def test_invalidate_recomputes_every_tracked_use_case_of_entity_only(
    make_cache: Callable[..., GCache], redis_client: redis.Redis, mode: str, layers: str
) -> None:
    cache = make_cache()
    config = LAYERS[layers]
    profile = Fn(cache, mode, use_case="Profile", config=config, with_arg=True)
    settings = Fn(cache, mode, use_case="Settings", config=config)
    untracked = Fn(cache, mode, use_case="Untracked", config=config, tracked=False)
    org = Fn(cache, mode, use_case="Org", config=config, key_type="org_id")

    async def all_calls() -> list[tuple[str, int, int]]:
        return [
            await profile("1", 1),
            await profile("1", 2),
            await settings("1"),
            await untracked("1"),
            await profile("2", 1),
            await settings("2"),
            await org("1"),
        ]

    with cache.enable():
        first = await all_calls()
        assert await all_calls() == first
        assert (profile.n, settings.n, untracked.n, org.n) == (3, 2, 1, 1)

        await invalidate(cache, mode, "user_id", "1")

        second = await all_calls()
        assert second == [
            ("1", 1, 4),  # recomputed
            ("1", 2, 5),  # recomputed
            ("1", 0, 3),  # recomputed
            first[3],  # untracked: kept
            first[4],  # other entity: kept
            first[5],
            first[6],  # same id, other key_type: kept
        ]
        assert await all_calls() == second  # the recomputed values are cached again
    assert (profile.n, settings.n, untracked.n, org.n) == (5, 3, 1, 1)
    if layers != "local":
        assert redis_client.exists(fence_key("1")) == 1
        assert redis_client.exists(value_key("Profile", "1", 1), value_key("Untracked", "1")) == 2


# -- the race: an invalidation lands while the function runs --------------------------------------


@MODES
@WITH_REMOTE
async def test_invalidation_during_computation_returns_value_but_does_not_store_it(
    make_cache: Callable[..., GCache],
    redis_client: redis.Redis,
    registry: CollectorRegistry,
    mode: str,
    layers: str,
) -> None:
    cache = make_cache()
    fn = Fn(cache, mode, use_case="Racy", config=LAYERS[layers])

    with cache.enable():
        fn.invalidate_next = ("1", 0)
        assert await fn("1") == ("1", 0, 1)  # the caller gets its value...
        assert redis_client.exists(value_key("Racy", "1")) == 0  # ...but it is not stored
        assert sample(registry, WRITES, layer="REMOTE", use_case="Racy", result="invalidated") == 1
        assert sample(registry, WRITES, layer="REMOTE", use_case="Racy", result="stored") == 0

        assert await fn("1") == ("1", 0, 2)  # recomputed
        assert await fn("1") == ("1", 0, 2)  # and cached from now on
    assert sample(registry, WRITES, layer="REMOTE", use_case="Racy", result="stored") == 1
    assert redis_client.exists(value_key("Racy", "1")) == 1


@MODES
@WITH_REMOTE
async def test_invalidation_during_computation_of_cached_entity_keeps_old_value_stale(
    make_cache: Callable[..., GCache], redis_client: redis.Redis, mode: str, layers: str
) -> None:
    cache = make_cache()
    fn = Fn(cache, mode, use_case="Racy", config=LAYERS[layers])

    with cache.enable():
        assert await fn("1") == ("1", 0, 1)
        await invalidate(cache, mode, "user_id", "1")
        fn.invalidate_next = ("1", 0)  # a second write lands while the recomputation runs
        assert await fn("1") == ("1", 0, 2)
        assert await fn("1") == ("1", 0, 3)
        assert await fn("1") == ("1", 0, 3)
    raw = stored(redis_client, value_key("Racy", "1"))
    assert envelope.decode(raw).stamp_us > int(redis_client.hget(fence_key("1"), "w") or 0)


@MODES
async def test_invalidation_from_other_instance_during_computation_is_not_stored(
    make_cache: Callable[..., GCache], redis_client: redis.Redis, registry: CollectorRegistry, mode: str
) -> None:
    computing = make_cache()
    writer = make_cache(metrics_registry=CollectorRegistry())
    fn = Fn(computing, mode, use_case="Racy", config=REMOTE_ONLY)
    fn.invalidator = writer  # another process's write: this instance's local epoch never moves

    with computing.enable():
        fn.invalidate_next = ("1", 0)
        assert await fn("1") == ("1", 0, 1)
        assert redis_client.exists(value_key("Racy", "1")) == 0
        assert await fn("1") == ("1", 0, 2)
        assert await fn("1") == ("1", 0, 2)
    assert sample(registry, WRITES, layer="REMOTE", use_case="Racy", result="invalidated") == 1


@MODES
@pytest.mark.parametrize("redis_backed", [True, False], ids=["local_config", "no_redis"])
async def test_invalidation_during_computation_is_not_stored_locally(
    make_cache: Callable[..., GCache],
    redis_client: redis.Redis,
    registry: CollectorRegistry,
    mode: str,
    redis_backed: bool,
) -> None:
    cache = make_cache() if redis_backed else make_cache(redis_config=None)
    fn = Fn(cache, mode, use_case="RacyLocal", config=LOCAL_ONLY)

    with cache.enable():
        fn.invalidate_next = ("1", 0)
        assert await fn("1") == ("1", 0, 1)
        assert await fn("1") == ("1", 0, 2)  # nothing was kept: recomputed
        assert await fn("1") == ("1", 0, 2)
    assert sample(registry, WRITES, use_case="RacyLocal", layer="LOCAL", result="invalidated") == 1
    assert redis_client.keys("*RacyLocal*") == []


@MODES
async def test_invalidation_of_other_entity_during_computation_still_stores(
    make_cache: Callable[..., GCache], redis_client: redis.Redis, mode: str
) -> None:
    cache = make_cache()
    fn = Fn(cache, mode, use_case="Racy", config=BOTH)

    with cache.enable():
        fn.invalidate_next = ("2", 0)
        assert await fn("1") == ("1", 0, 1)
        assert await fn("1") == ("1", 0, 1)
    assert redis_client.exists(value_key("Racy", "1")) == 1


# -- the fence fails closed -----------------------------------------------------------------------


@MODES
async def test_missing_fence_recomputes_instead_of_serving(
    make_cache: Callable[..., GCache], redis_client: redis.Redis, registry: CollectorRegistry, mode: str
) -> None:
    cache = make_cache()
    fn = Fn(cache, mode, use_case="Fenced", config=REMOTE_ONLY)

    with cache.enable():
        assert await fn("1") == ("1", 0, 1)
        assert await fn("1") == ("1", 0, 1)
        old_nonce = redis_client.hget(fence_key("1"), "n")
        assert old_nonce is not None
        assert redis_client.delete(fence_key("1")) == 1  # the fence expired or was evicted

        assert await fn("1") == ("1", 0, 2)
        # The next read finds no fence and creates one with a new nonce: the entry, written
        # under the lost fence, no longer matches it.
        assert sample(registry, MISS_REASONS, use_case="Fenced", layer="REMOTE", reason="fence_mismatch") == 1
        assert await fn("1") == ("1", 0, 2)  # rewritten under a new fence, served again

    new_nonce = redis_client.hget(fence_key("1"), "n")
    assert new_nonce is not None
    assert new_nonce != old_nonce
    raw = stored(redis_client, value_key("Fenced", "1"))
    assert envelope.decode(raw).nonce == new_nonce


@MODES
async def test_replaced_fence_recomputes_instead_of_serving(
    make_cache: Callable[..., GCache], redis_client: redis.Redis, registry: CollectorRegistry, mode: str
) -> None:
    cache = make_cache()
    fn = Fn(cache, mode, use_case="Fenced", config=REMOTE_ONLY)

    with cache.enable():
        assert await fn("1") == ("1", 0, 1)
        redis_client.delete(fence_key("1"))
        redis_client.hset(
            fence_key("1"), mapping=fence_fields(redis_client, b"OTHERNON", "0")
        )  # a new fence, w=0

        assert await fn("1") == ("1", 0, 2)
        assert sample(registry, MISS_REASONS, use_case="Fenced", layer="REMOTE", reason="fence_mismatch") == 1
        assert await fn("1") == ("1", 0, 2)

    raw = stored(redis_client, value_key("Fenced", "1"))
    assert envelope.decode(raw).nonce == b"OTHERNON"


@MODES
async def test_invalidated_remote_entry_is_counted_as_invalidated_miss(
    make_cache: Callable[..., GCache], registry: CollectorRegistry, mode: str
) -> None:
    writer = make_cache()
    reader_registry = CollectorRegistry()
    reader = make_cache(metrics_registry=reader_registry)
    fn = Fn(writer, mode, use_case="Counted", config=REMOTE_ONLY)
    other = Fn(reader, mode, use_case="Counted", config=REMOTE_ONLY)

    with writer.enable(), reader.enable():
        await fn("1")
        await invalidate(writer, mode, "user_id", "1")
        await other("1")
    assert (
        sample(reader_registry, MISS_REASONS, use_case="Counted", layer="REMOTE", reason="invalidated") == 1
    )


# -- future buffer --------------------------------------------------------------------------------


@MODES
@WITH_REMOTE
async def test_future_buffer_values_computed_within_buffer_are_not_served(
    make_cache: Callable[..., GCache],
    redis_client: redis.Redis,
    registry: CollectorRegistry,
    mode: str,
    layers: str,
) -> None:
    cache = make_cache()
    fn = Fn(cache, mode, use_case="Lagging", config=LAYERS[layers])

    with cache.enable():
        assert await fn("1") == ("1", 0, 1)
        start = time.monotonic()
        await invalidate(cache, mode, "user_id", "1", future_buffer_ms=400)

        within = [await fn("1") for _ in range(3)]
        assert time.monotonic() - start < 0.4, "too slow to land inside the buffer"
        assert within == [("1", 0, 2), ("1", 0, 3), ("1", 0, 4)]
        assert sample(registry, WRITES, layer="REMOTE", use_case="Lagging", result="invalidated") == 3

        await asyncio.sleep(max(0.0, start + 0.45 - time.monotonic()))
        assert await fn("1") == ("1", 0, 5)  # computed after the buffer: stored
        assert await fn("1") == ("1", 0, 5)
    assert sample(registry, WRITES, layer="REMOTE", use_case="Lagging", result="stored") == 2
    raw = stored(redis_client, value_key("Lagging", "1"))
    assert envelope.decode(raw).stamp_us > int(redis_client.hget(fence_key("1"), "w") or 0)


@MODES
async def test_future_buffer_above_maximum_raises_and_changes_nothing(
    make_cache: Callable[..., GCache], redis_client: redis.Redis, registry: CollectorRegistry, mode: str
) -> None:
    cache = make_cache(max_future_buffer_ms=1_000)

    with pytest.raises(FutureBufferTooLargeError, match="max_future_buffer_ms"):
        await invalidate(cache, mode, "user_id", "1", future_buffer_ms=1_001)
    assert redis_client.exists(fence_key("1")) == 0
    assert sample(registry, INVALIDATIONS, key_type="user_id") == 0

    await invalidate(cache, mode, "user_id", "1", future_buffer_ms=1_000)  # the maximum is allowed
    assert redis_client.exists(fence_key("1")) == 1


@MODES
async def test_future_buffer_above_default_maximum_of_one_hour_raises(
    make_cache: Callable[..., GCache], mode: str
) -> None:
    cache = make_cache()

    with pytest.raises(FutureBufferTooLargeError):
        await invalidate(cache, mode, "user_id", "1", future_buffer_ms=3_600_001)
    await invalidate(cache, mode, "user_id", "1", future_buffer_ms=3_600_000)


@MODES
@pytest.mark.parametrize("buffer", [-1, -1000])
async def test_future_buffer_negative_raises_config_error(
    make_cache: Callable[..., GCache], redis_client: redis.Redis, mode: str, buffer: int
) -> None:
    cache = make_cache()

    with pytest.raises(ConfigError, match="future_buffer_ms"):
        await invalidate(cache, mode, "user_id", "1", future_buffer_ms=buffer)
    assert redis_client.exists(fence_key("1")) == 0


# -- same process, LOCAL only ---------------------------------------------------------------------


@MODES
async def test_invalidate_local_only_cache_recomputes_next_call_at_once(
    make_cache: Callable[..., GCache], registry: CollectorRegistry, mode: str
) -> None:
    cache = make_cache(redis_config=None)
    fn = Fn(cache, mode, use_case="LocalOnly", config=BOTH)  # REMOTE is asked for but absent
    untracked = Fn(cache, mode, use_case="LocalUntracked", config=BOTH, tracked=False)

    with cache.enable():
        assert await fn("1") == ("1", 0, 1)
        assert await fn("2") == ("2", 0, 2)
        assert await untracked("1") == ("1", 0, 1)
        assert await fn("1") == ("1", 0, 1)

        await invalidate(cache, mode, "user_id", "1")

        assert await fn("1") == ("1", 0, 3)
        assert await fn("1") == ("1", 0, 3)
        assert await fn("2") == ("2", 0, 2)
        assert await untracked("1") == ("1", 0, 1)
    # The invalidation freed the entry at once: the next lookup finds nothing.
    dropped = "gcache_local_dropped_counter_total"
    assert sample(registry, dropped, use_case="LocalOnly", key_type="user_id", reason="invalidated") == 1
    assert sample(registry, INVALIDATIONS, key_type="user_id", layer="LOCAL") == 1
    assert sample(registry, INVALIDATIONS, key_type="user_id", layer="REMOTE") == 0


# -- two instances on one Redis (two processes) ---------------------------------------------------


@MODES
async def test_remote_hit_from_other_instance_until_invalidated(
    make_cache: Callable[..., GCache], redis_client: redis.Redis, mode: str
) -> None:
    a = make_cache()
    b = make_cache(metrics_registry=CollectorRegistry())
    fa = Fn(a, mode, use_case="Shared", config=BOTH, with_arg=True)
    fb = Fn(b, mode, use_case="Shared", config=REMOTE_ONLY, with_arg=True)

    with a.enable(), b.enable():
        assert await fa("1", 5) == ("1", 5, 1)
        assert await fb("1", 5) == ("1", 5, 1)  # B reads what A wrote
        assert fb.n == 0

        await invalidate(a, mode, "user_id", "1")

        assert await fb("1", 5) == ("1", 5, 1)  # B's own function: A's value is stale for B too
        assert fb.n == 1
        assert await fa("1", 5) == ("1", 5, 1)  # A's LOCAL entry is gone; it reads what B wrote
        assert fa.n == 1
        assert await fb("1", 5) == ("1", 5, 1)
        assert fb.n == 1


# -- the invalidation counter ---------------------------------------------------------------------


@MODES
async def test_invalidation_counter_counts_each_invalidate_per_layer_and_key_type(
    make_cache: Callable[..., GCache], redis_client: redis.Redis, registry: CollectorRegistry, mode: str
) -> None:
    cache = make_cache()

    await invalidate(cache, mode, "user_id", "1")
    assert sample(registry, INVALIDATIONS, key_type="user_id", layer="LOCAL") == 1
    assert sample(registry, INVALIDATIONS, key_type="user_id", layer="REMOTE") == 1

    await invalidate(cache, mode, "user_id", "2", future_buffer_ms=10)
    await invalidate(cache, mode, "org_id", "1")
    assert sample(registry, INVALIDATIONS, key_type="user_id", layer="LOCAL") == 2
    assert sample(registry, INVALIDATIONS, key_type="user_id", layer="REMOTE") == 2
    assert sample(registry, INVALIDATIONS, key_type="org_id", layer="LOCAL") == 1
    assert sample(registry, INVALIDATIONS, key_type="org_id", layer="REMOTE") == 1
    # an entity with nothing cached still gets a fence, and it expires
    for key in (fence_key("1"), fence_key("2"), fence_key("1", "org_id")):
        assert redis_client.pttl(key) > 0


# -- clock skew -----------------------------------------------------------------------------------


@MODES
@pytest.mark.parametrize("skew_sec", [30.0, -30.0], ids=["ahead", "behind"])
async def test_invalidation_takes_effect_with_host_clock_skewed(
    make_cache: Callable[..., GCache],
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
    skew_sec: float,
) -> None:
    cache = make_cache()
    fn = Fn(cache, mode, use_case="Skewed", config=REMOTE_ONLY)
    real_time, real_time_ns = time.time, time.time_ns
    monkeypatch.setattr(time, "time", lambda: real_time() + skew_sec)
    monkeypatch.setattr(time, "time_ns", lambda: real_time_ns() + int(skew_sec * 1e9))

    with cache.enable():
        assert await fn("1") == ("1", 0, 1)
        assert await fn("1") == ("1", 0, 1)
        await invalidate(cache, mode, "user_id", "1")
        assert await fn("1") == ("1", 0, 2)
        assert await fn("1") == ("1", 0, 2)
        await invalidate(cache, mode, "user_id", "1")
        assert await fn("1") == ("1", 0, 3)

    seconds, micros = redis_client.time()
    server_now = int(seconds) * 1_000_000 + int(micros)
    raw = stored(redis_client, value_key("Skewed", "1"))
    assert 0 <= server_now - envelope.decode(raw).stamp_us < 5_000_000  # a Redis-clock stamp


# -- direct access --------------------------------------------------------------------------------


def direct_key(config: GCacheKeyConfig) -> GCacheKey:
    return GCacheKey("user_id", "1", "Direct", invalidation_tracking=True, default_config=config)


async def put(cache: GCache, mode: str, key: GCacheKey, value: Any) -> None:
    if mode == "async":
        await cache.aput(key, value)
    else:
        cache.put(key, value)


async def get(cache: GCache, mode: str, key: GCacheKey, fallback_value: Any, calls: list[Any]) -> Any:
    def fallback() -> Any:
        calls.append(fallback_value)
        return fallback_value

    async def afallback() -> Any:
        return fallback()

    if mode == "async":
        return await cache.aget(key, afallback)
    return cache.get(key, fallback)


@MODES
@WITH_REMOTE
async def test_put_after_invalidation_is_served(
    make_cache: Callable[..., GCache], redis_client: redis.Redis, mode: str, layers: str
) -> None:
    cache = make_cache()
    reader = make_cache(metrics_registry=CollectorRegistry())
    key = direct_key(LAYERS[layers])
    calls: list[Any] = []

    with cache.enable(), reader.enable():
        await invalidate(cache, mode, "user_id", "1")
        await put(cache, mode, key, "fresh")

        assert await get(cache, mode, key, "fallback", calls) == "fresh"
        assert await get(reader, mode, direct_key(REMOTE_ONLY), "fallback", calls) == "fresh"
    assert calls == []
    raw = stored(redis_client, key.urn)
    assert envelope.decode(raw).stamp_us > int(redis_client.hget(key.watermark_key, "w") or 0)


@MODES
@WITH_REMOTE
async def test_put_before_invalidation_is_not_served_after_it(
    make_cache: Callable[..., GCache], mode: str, layers: str
) -> None:
    cache = make_cache()
    reader = make_cache(metrics_registry=CollectorRegistry())
    key = direct_key(LAYERS[layers])
    calls: list[Any] = []

    with cache.enable(), reader.enable():
        await put(cache, mode, key, "old")
        assert await get(cache, mode, key, "fallback", calls) == "old"

        await invalidate(cache, mode, "user_id", "1")

        assert await get(cache, mode, key, "recomputed", calls) == "recomputed"
        assert await get(cache, mode, key, "again", calls) == "recomputed"
        assert await get(reader, mode, direct_key(REMOTE_ONLY), "other", calls) == "recomputed"
    assert calls == ["recomputed"]


@MODES
async def test_put_before_invalidation_is_not_served_to_other_instance(
    make_cache: Callable[..., GCache], mode: str
) -> None:
    cache = make_cache()
    reader = make_cache(metrics_registry=CollectorRegistry())
    calls: list[Any] = []

    with cache.enable(), reader.enable():
        await put(cache, mode, direct_key(BOTH), "old")
        assert await get(reader, mode, direct_key(REMOTE_ONLY), "unused", calls) == "old"

        await invalidate(cache, mode, "user_id", "1")

        assert await get(reader, mode, direct_key(REMOTE_ONLY), "recomputed", calls) == "recomputed"
    assert calls == ["recomputed"]


# -- more of the guarantee ------------------------------------------------------------------------


@MODES
async def test_invalidate_with_int_id_matches_entries_cached_under_same_id(
    make_cache: Callable[..., GCache], mode: str
) -> None:
    cache = make_cache()
    calls: list[object] = []
    decorate = cache.cached(
        key_type="user_id",
        id_arg="uid",
        use_case="IntId",
        track_for_invalidation=True,
        default_config=REMOTE_ONLY,
    )

    if mode == "async":

        @decorate
        async def afetch(uid: int) -> int:
            calls.append(uid)
            return len(calls)

        async def fetch(uid: int) -> int:
            return int(await afetch(uid))

    else:

        @decorate
        def sfetch(uid: int) -> int:
            calls.append(uid)
            return len(calls)

        async def fetch(uid: int) -> int:
            return int(sfetch(uid))

    with cache.enable():
        assert await fetch(7) == 1
        assert await fetch(7) == 1
        await invalidate(cache, mode, "user_id", 7)
        assert await fetch(7) == 2
        await invalidate(cache, mode, "user_id", "7")
        assert await fetch(7) == 3
        assert await fetch(7) == 3


@MODES
async def test_slow_computation_beyond_compute_limit_is_returned_but_not_stored(
    make_cache: Callable[..., GCache], redis_client: redis.Redis, registry: CollectorRegistry, mode: str
) -> None:
    cache = make_cache(tracked_compute_limit_sec=0.05)
    calls: list[str] = []
    decorate = cache.cached(
        key_type="user_id",
        id_arg="uid",
        use_case="Slow",
        track_for_invalidation=True,
        default_config=REMOTE_ONLY,
    )

    if mode == "async":

        @decorate
        async def aslow(uid: str) -> int:
            calls.append(uid)
            await asyncio.sleep(0.1)
            return len(calls)

        async def slow(uid: str) -> int:
            return int(await aslow(uid))

    else:

        @decorate
        def sslow(uid: str) -> int:
            calls.append(uid)
            time.sleep(0.1)
            return len(calls)

        async def slow(uid: str) -> int:
            return int(sslow(uid))

    with cache.enable():
        assert await slow("1") == 1
        assert redis_client.exists(value_key("Slow", "1")) == 0
        assert await slow("1") == 2
    assert sample(registry, WRITES, layer="REMOTE", use_case="Slow", result="too_slow") == 2
    assert sample(registry, WRITES, layer="REMOTE", use_case="Slow", result="stored") == 0


@MODES
async def test_invalidate_when_redis_down_raises_remote_error_and_tracked_local_stays_off(
    make_cache: Callable[..., GCache], registry: CollectorRegistry, mode: str
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cache = make_cache(redis_config=RedisConfig(url=f"redis://127.0.0.1:{port}/0"), start_bus=False)
    fn = Fn(cache, mode, use_case="Down", config=BOTH)

    with cache.enable():
        # Redis errors never fail a call; with no bus this process could miss invalidations from
        # others, so a tracked use case is not served from LOCAL either.
        assert await fn("1") == ("1", 0, 1)
        assert await fn("1") == ("1", 0, 2)
        with pytest.raises(RemoteError) as info:
            await invalidate(cache, mode, "user_id", "1")
        assert info.value.operation == "invalidate"
        assert await fn("1") == ("1", 0, 3)
    assert sample(registry, INVALIDATIONS, key_type="user_id", layer="LOCAL") == 1
    assert sample(registry, INVALIDATIONS, key_type="user_id", layer="REMOTE") == 0
    assert (
        sample(registry, "gcache_error_counter_total", use_case="", key_type="user_id", layer="REMOTE") == 1
    )
