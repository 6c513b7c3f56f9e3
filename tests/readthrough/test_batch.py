"""``@gcache.cached_many``: a batch of ids through LOCAL, one REMOTE round trip, one function call.

Real Redis; each behaviour for sync and async functions, tracked and untracked use cases.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, cast

import pytest
import redis
from prometheus_client import CollectorRegistry

from gcache import CacheLayer, ConfigError, GCache, GCacheKey, GCacheKeyConfig, RedisConfig
from gcache.errors import UseCaseIsAlreadyRegisteredError
from gcache.remote import scripts
from tests.conftest import app_user_without, sample, wait_until

pytestmark = pytest.mark.redis

BOTH = GCacheKeyConfig(
    ttl_sec={CacheLayer.LOCAL: 60, CacheLayer.REMOTE: 60},
    ramp={CacheLayer.LOCAL: 100, CacheLayer.REMOTE: 100},
)
REMOTE_ONLY = GCacheKeyConfig(ttl_sec={CacheLayer.REMOTE: 60}, ramp={CacheLayer.REMOTE: 100})
KEEPING_ABSENT: dict[str, Any] = {"default_config": REMOTE_ONLY, "cache_missing": True, "missing_ttl_sec": 30}


class Source:
    """The database: a value per id (an id it lacks has none); records each batch it is asked."""

    def __init__(self, absent: Iterable[int] = ()) -> None:
        self.version = "v1"
        self.absent = set(absent)
        self.asked: list[list[int]] = []

    def load(self, ids: Iterable[int]) -> dict[int, str]:
        ids = list(ids)
        self.asked.append(ids)
        return {i: f"{self.version}:{i}" for i in ids if i not in self.absent}


def batch_function(cache: GCache, source: Source, is_async: bool, **options: Any) -> Callable[..., Any]:
    options.setdefault("default_config", BOTH)
    decorate = cache.cached_many(key_type="user", ids_arg="ids", use_case="Users", **options)
    if is_async:

        async def load_async(ids: Iterable[int]) -> dict[int, str]:
            return source.load(ids)

        return decorate(load_async)

    def load_sync(ids: Iterable[int]) -> dict[int, str]:
        return source.load(ids)

    return decorate(load_sync)


def single_function(cache: GCache, singles: list[Any], tracked: bool) -> Callable[[Any], str]:
    """The single-id function of the batch's use case, recording the ids it is called with."""

    @cache.cached(
        key_type="user", id_arg="id", use_case="Users", track_for_invalidation=tracked, default_config=BOTH
    )
    def user(id: Any) -> str:
        singles.append(id)
        return f"single:{id}"

    return user


async def call(function: Callable[..., Any], is_async: bool, *args: Any) -> Any:
    return await function(*args) if is_async else await asyncio.to_thread(function, *args)


@pytest.fixture(params=[False, True], ids=["untracked", "tracked"])
def tracked(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


async def test_order_is_the_caller_s_and_only_missing_ids_reach_the_function(
    make_cache: Callable[..., GCache], is_async: bool, tracked: bool
) -> None:
    cache = make_cache()
    source = Source(absent={3})
    users = batch_function(cache, source, is_async, track_for_invalidation=tracked)
    with cache.enable():
        first = await call(users, is_async, [5, 1, 3, 2, 1])
        second = await call(users, is_async, (i for i in [2, 4, 5, 1]))

    assert list(first.items()) == [(5, "v1:5"), (1, "v1:1"), (2, "v1:2")]  # 3 has none; 1 once
    assert list(second.items()) == [(2, "v1:2"), (4, "v1:4"), (5, "v1:5"), (1, "v1:1")]
    assert source.asked == [[5, 1, 3, 2], [4]]  # one call a batch, with the ids still missing


async def test_a_cold_local_tier_reads_every_id_in_one_round_trip(
    make_cache: Callable[..., GCache], redis_writes: list[bytes], is_async: bool, tracked: bool
) -> None:
    writer, reader = make_cache(), make_cache()
    source = Source()
    ids = list(range(50))
    with writer.enable():
        await call(batch_function(writer, source, is_async, track_for_invalidation=tracked), is_async, ids)
    users = batch_function(reader, source, is_async, track_for_invalidation=tracked)
    with reader.enable():
        await call(users, is_async, ids[:1])  # the reader's connection, opened
        redis_writes.clear()
        found = await call(users, is_async, ids)

    assert found == {i: f"v1:{i}" for i in ids}
    assert source.asked == [ids]  # the reader's batch came from Redis
    assert len(redis_writes) == 1
    assert redis_writes[0].count(b"GETRANGE") == 49  # the 49 not in the reader's LOCAL


async def test_a_batch_read_from_redis_fills_local_and_tracked_save_an_id_invalidated_meanwhile(
    make_cache: Callable[..., GCache],
    redis_writes: list[bytes],
    monkeypatch: pytest.MonkeyPatch,
    is_async: bool,
    tracked: bool,
) -> None:
    """What a batch reads from Redis goes into LOCAL. Tracked, an invalidation reaching this
    process while the read is on its way keeps that id's value out (its LOCAL epoch is taken
    before the read); untracked entries have no invalidation (an untracked batch keeps no state
    per id before its read), so all go in."""
    writer, reader = make_cache(), make_cache()
    source = Source()
    with writer.enable():
        await call(
            batch_function(writer, source, is_async, track_for_invalidation=tracked), is_async, [1, 2, 3]
        )
    users = batch_function(reader, source, is_async, track_for_invalidation=tracked)
    (use_case,) = [uc for uc in reader._use_cases if uc.use_case == "Users"]
    entity = use_case.render("2", ())[1]
    remote = reader._remote
    assert remote is not None
    read_many, aread_many = remote.read_many, remote.aread_many

    def bumped(*args: Any) -> Any:
        found = read_many(*args)
        reader._local.epochs.bump(entity)  # as the bus's message of another process's invalidation
        return found

    async def abumped(*args: Any) -> Any:
        found = await aread_many(*args)
        reader._local.epochs.bump(entity)
        return found

    monkeypatch.setattr(remote, "read_many", bumped)
    monkeypatch.setattr(remote, "aread_many", abumped)
    with reader.enable():
        assert await call(users, is_async, [1, 2, 3]) == {1: "v1:1", 2: "v1:2", 3: "v1:3"}
        monkeypatch.setattr(remote, "read_many", read_many)
        monkeypatch.setattr(remote, "aread_many", aread_many)
        redis_writes.clear()
        assert await call(users, is_async, [1, 2, 3]) == {1: "v1:1", 2: "v1:2", 3: "v1:3"}

    assert source.asked == [[1, 2, 3]]  # the reader's values came from Redis
    if not tracked:
        assert redis_writes == []  # all three from LOCAL
        return
    assert len(redis_writes) == 1  # 1 and 3 from LOCAL; 2 read again
    assert redis_writes[0].count(b"GETRANGE") == 1
    assert b"user:2}" in redis_writes[0]


async def test_invalidating_one_id_of_a_batch_recomputes_that_id_alone(
    make_cache: Callable[..., GCache], is_async: bool
) -> None:
    theirs_registry = CollectorRegistry()
    writer, other = make_cache(), make_cache(metrics_registry=theirs_registry)
    source = Source()
    users = batch_function(writer, source, is_async, track_for_invalidation=True)
    theirs = batch_function(other, source, is_async, track_for_invalidation=True)
    with writer.enable(), other.enable():
        await call(users, is_async, [1, 2, 3])
        assert await call(theirs, is_async, [1, 2, 3]) == {1: "v1:1", 2: "v1:2", 3: "v1:3"}
        source.version = "v2"
        if is_async:
            await writer.ainvalidate("user", 2)
        else:
            writer.invalidate("user", 2)
        assert await call(users, is_async, [1, 2, 3]) == {1: "v1:1", 2: "v2:2", 3: "v1:3"}
        # the other process's LOCAL copy goes when the bus brings the invalidation
        wait_until(
            lambda: sample(theirs_registry, "gcache_bus_message_counter_total", direction="received") == 1
        )
        assert await call(theirs, is_async, [3, 2, 1]) == {3: "v1:3", 2: "v2:2", 1: "v1:1"}

    assert source.asked == [[1, 2, 3], [2]]  # the other process took the rewritten entry


async def test_overlapping_batches_compute_each_id_once(
    make_cache: Callable[..., GCache], tracked: bool
) -> None:
    cache = make_cache()
    started, release = asyncio.Event(), asyncio.Event()
    asked: list[list[int]] = []

    @cache.cached_many(
        key_type="user", ids_arg="ids", use_case="Slow", track_for_invalidation=tracked, default_config=BOTH
    )
    async def slow(ids: list[int]) -> dict[int, str]:
        asked.append(list(ids))
        if len(asked) == 1:
            started.set()
            await release.wait()
        return {i: f"v:{i}" for i in ids}

    with cache.enable():
        first = asyncio.create_task(slow([1, 2, 3]))
        await started.wait()
        second = asyncio.create_task(slow([2, 3, 4]))
        await asyncio.sleep(0)  # let the second batch find the first one's flights
        for _ in range(20):
            if len(asked) == 2:
                break
            await asyncio.sleep(0.005)
        release.set()
        results = await asyncio.gather(first, second)

    assert list(results) == [{1: "v:1", 2: "v:2", 3: "v:3"}, {2: "v:2", 3: "v:3", 4: "v:4"}]
    assert asked == [[1, 2, 3], [4]]  # 2 and 3 were in the first batch's run: taken from it
    assert sample(cache_registry(cache), "gcache_single_flight_counter_total", result="joined") >= 2


def cache_registry(cache: GCache) -> Any:
    registry = cache.config.metrics_registry
    assert registry is not None
    return registry


async def test_overlapping_sync_batches_in_threads_compute_each_id_once(
    make_cache: Callable[..., GCache], tracked: bool
) -> None:
    cache = make_cache()
    started, release = threading.Event(), threading.Event()
    asked: list[list[int]] = []

    @cache.cached_many(
        key_type="user",
        ids_arg="ids",
        use_case="SlowSync",
        track_for_invalidation=tracked,
        default_config=BOTH,
    )
    def slow(ids: list[int]) -> dict[int, str]:
        asked.append(list(ids))
        if len(asked) == 1:
            started.set()
            release.wait(10)
        return {i: f"v:{i}" for i in ids}

    def first() -> dict[int, str]:
        with cache.enable():
            return slow([1, 2])

    def second() -> dict[int, str]:
        started.wait(10)
        with cache.enable():
            threading.Timer(0.2, release.set).start()  # the first run ends while this one waits on it
            return slow([2, 3])

    a, b = await asyncio.gather(asyncio.to_thread(first), asyncio.to_thread(second))
    assert (a, b) == ({1: "v:1", 2: "v:2"}, {2: "v:2", 3: "v:3"})
    assert asked == [[1, 2], [3]]


async def test_a_batch_and_a_single_call_of_one_use_case_share_entries(
    make_cache: Callable[..., GCache], is_async: bool, tracked: bool
) -> None:
    cache = make_cache()
    source = Source()
    users = batch_function(cache, source, is_async, track_for_invalidation=tracked)
    singles: list[Any] = []
    user = single_function(cache, singles, tracked)
    with cache.enable():
        await asyncio.to_thread(user, 7)
        assert await call(users, is_async, [7, 8]) == {7: "single:7", 8: "v1:8"}
        assert await asyncio.to_thread(user, 8) == "v1:8"
    assert (singles, source.asked) == ([7], [[8]])
    assert user.use_case == users.use_case == "Users"  # type: ignore[attr-defined]


DELIMITED_IDS = ["a:b", "{x}", "50%", "%3A", "caf\u00e9", "\u65e5\u672c", "plain"]


async def test_ids_holding_delimiters_or_non_ascii_share_entries_with_single_calls_through_redis(
    make_cache: Callable[..., GCache], redis_client: redis.Redis, is_async: bool, tracked: bool
) -> None:
    """Keys escape an id's delimiters whichever path renders them (a single call's wrapper, a
    batch's keys, direct access), and a batch of non-ASCII keys is packed as its UTF-8 bytes."""
    writer, reader = make_cache(), make_cache()
    singles: list[Any] = []
    user = single_function(writer, singles, tracked)
    source = Source()
    users = batch_function(reader, source, is_async, track_for_invalidation=tracked)
    with writer.enable():
        for id in DELIMITED_IDS:
            await asyncio.to_thread(user, id)
    with reader.enable():  # a cold LOCAL tier: every id from Redis, in one round trip
        found = await call(users, is_async, DELIMITED_IDS)

    assert found == {id: f"single:{id}" for id in DELIMITED_IDS}
    assert source.asked == []
    keys = {key.decode() for key in cast("list[bytes]", redis_client.keys("*#Users"))}
    assert keys == {GCacheKey("user", id, "Users").urn for id in DELIMITED_IDS}
    escaped = {"{urn:gcache:user:" + id + "}#Users" for id in ("a%3Ab", "%7Bx%7D", "50%25", "%253A")}
    assert escaped < keys  # ':', braces and '%' end or escape parts of a key
    assert {"{urn:gcache:user:caf\u00e9}#Users", "{urn:gcache:user:plain}#Users"} < keys
    with writer.enable():
        await writer.ainvalidate("user", "a:b")  # the entity of the escaped key
        assert await asyncio.to_thread(user, "a:b") == "single:a:b"
    assert singles == [*DELIMITED_IDS, *(["a:b"] if tracked else [])]


class UnprintableIds(list[int]):
    """Ids whose str() fails, as a large or lazy collection's might: the batch renders each id."""

    def __str__(self) -> str:
        raise RuntimeError("the collection is not rendered")

    __repr__ = __str__


async def test_the_collection_of_ids_is_never_rendered_only_each_id(
    make_cache: Callable[..., GCache], registry: CollectorRegistry, is_async: bool
) -> None:
    cache = make_cache()
    source = Source()
    users = batch_function(cache, source, is_async)
    with cache.enable():
        first = await call(users, is_async, UnprintableIds([1, 2]))
        second = await call(users, is_async, UnprintableIds([2, 1]))

    assert list(first.items()) == [(1, "v1:1"), (2, "v1:2")]
    assert list(second.items()) == [(2, "v1:2"), (1, "v1:1")]
    assert source.asked == [[1, 2]]  # the second batch was served from the cache
    assert sample(registry, "gcache_error_counter_total", use_case="Users") == 0


def test_sharing_needs_the_same_keys_and_storage(make_cache: Callable[..., GCache]) -> None:
    cache = make_cache(start_bus=False)

    @cache.cached(key_type="user", id_arg="id", use_case="Shared", default_config=BOTH)
    def user(id: int) -> str:
        return str(id)

    with pytest.raises(ConfigError, match="key_type, track_for_invalidation differ"):

        @cache.cached_many(key_type="org", ids_arg="ids", use_case="Shared", track_for_invalidation=True)
        def orgs(ids: list[int]) -> dict[int, str]:
            return {}

    with pytest.raises(UseCaseIsAlreadyRegisteredError, match="cache_missing"):

        @cache.cached_many(key_type="user", ids_arg="ids", use_case="Shared", cache_missing=True)
        def users(ids: list[int]) -> dict[int, str]:
            return {}

    with pytest.raises(ConfigError, match="ids_arg 'nope' is not a parameter"):

        @cache.cached_many(key_type="user", ids_arg="nope")
        def bad(ids: list[int]) -> dict[int, str]:
            return {}

    with pytest.raises(ConfigError, match="missing_ttl_sec is for cache_missing=True"):
        cache.cached_many(key_type="user", ids_arg="ids", missing_ttl_sec=5)


async def test_cache_missing_keeps_an_absent_id_for_its_own_ttl(
    make_cache: Callable[..., GCache], redis_client: redis.Redis, is_async: bool, tracked: bool
) -> None:
    cache, other = make_cache(), make_cache()
    source = Source(absent={2})
    users = batch_function(
        cache, source, is_async, track_for_invalidation=tracked, cache_missing=True, missing_ttl_sec=30
    )
    theirs = batch_function(
        other, source, is_async, track_for_invalidation=tracked, cache_missing=True, missing_ttl_sec=30
    )
    with cache.enable(), other.enable():
        assert await call(users, is_async, [1, 2]) == {1: "v1:1"}
        assert await call(users, is_async, [2, 1]) == {1: "v1:1"}  # LOCAL: 2 is absent
        assert await call(theirs, is_async, [2]) == {}  # REMOTE: 2 is absent
    assert source.asked == [[1, 2]]
    (key,) = redis_client.keys("*:user:2}#Users")
    assert 25_000 < redis_client.pttl(key) <= 30_000

    async def computed() -> str:
        return "fallback"

    direct = GCacheKey("user", "2", "Users", invalidation_tracking=tracked, default_config=REMOTE_ONLY)
    with other.enable():  # a single read has no "absent": a miss, counted
        assert await other.aget(direct, computed) == "fallback"
    assert sample(cache_registry(other), "gcache_miss_reason_counter_total", reason="absent") == 1


async def test_a_page_of_plain_entries_with_a_giant_a_foreign_and_an_absent_one_among_them(
    make_cache: Callable[..., GCache], redis_client: redis.Redis, is_async: bool, tracked: bool
) -> None:
    """A page read from REMOTE is judged as a whole while every entry is a plain pickle, and
    entry by entry as soon as one is not: a value past ``max_value_bytes`` and one gcache did not
    write are misses told by their reasons, an absent id stays absent, the rest are served."""
    writer, reader = (
        make_cache(max_value_bytes=1_000),
        make_cache(max_value_bytes=1_000, metrics_registry=CollectorRegistry()),
    )
    source = Source(absent={4})
    options: dict[str, Any] = {**KEEPING_ABSENT, "track_for_invalidation": tracked}
    ids = [1, 2, 3, 4, 5, 6]
    with writer.enable():
        await call(batch_function(writer, source, is_async, **options), is_async, ids)
    ((giant,),) = [redis_client.keys("*:user:2}#Users")]
    ((foreign,),) = [redis_client.keys("*:user:3}#Users")]
    redis_client.set(giant, b"x" * 5_000, keepttl=True)
    redis_client.set(foreign, b"not gcache's", keepttl=True)
    users = batch_function(reader, source, is_async, **options)
    with reader.enable():
        assert await call(users, is_async, ids) == {i: f"v1:{i}" for i in ids if i != 4}

    assert source.asked == [ids, [2, 3]]
    registry = cache_registry(reader)
    reasons = {
        reason: sample(registry, "gcache_miss_reason_counter_total", layer="REMOTE", reason=reason)
        for reason in ("too_large", "foreign", "absent")
    }
    assert reasons == {"too_large": 1, "foreign": 1, "absent": 0}  # absent: a batch's answer
    assert redis_client.strlen(giant) < 1_000  # both written back with the function's values


async def test_a_batch_with_an_id_past_max_key_length_is_served_uncached_and_names_that_key(
    make_cache: Callable[..., GCache],
    registry: Any,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    is_async: bool,
) -> None:
    cache = make_cache(max_key_length=200)
    source = Source()
    users = batch_function(cache, source, is_async)
    long = "9" * 300  # the id; "z" sorts after it, and is short

    with cache.enable(), caplog.at_level("WARNING", logger="gcache"):
        assert await call(users, is_async, [1, long, "z"]) == {1: "v1:1", long: f"v1:{long}", "z": "v1:z"}
        assert await call(users, is_async, [1, long, "z"]) == {1: "v1:1", long: f"v1:{long}", "z": "v1:z"}

    assert source.asked == [[1, long, "z"]] * 2  # uncached, the whole batch each time
    assert sample(registry, "gcache_error_counter_total", error="KeyTooLongError") == 2
    (told,) = [r.getMessage() for r in caplog.records if "max_key_length" in r.getMessage()]
    assert "the key is 324 characters, max_key_length is 200" in told  # the long one, not "z"
    assert "user:999" in told
    assert redis_client.keys("*Users*") == []


async def test_without_cache_missing_an_absent_id_is_asked_again(
    make_cache: Callable[..., GCache], is_async: bool
) -> None:
    cache = make_cache()
    source = Source(absent={2})
    users = batch_function(cache, source, is_async)
    with cache.enable():
        await call(users, is_async, [1, 2])
        await call(users, is_async, [1, 2])
    assert source.asked == [[1, 2], [2]]


async def test_a_failing_function_fails_the_batch_and_its_waiters(
    make_cache: Callable[..., GCache], is_async: bool
) -> None:
    cache = make_cache()
    asked: list[list[int]] = []

    @cache.cached_many(key_type="user", ids_arg="ids", use_case="Failing", default_config=BOTH)
    def failing(ids: list[int]) -> dict[int, str]:
        asked.append(list(ids))
        raise LookupError("database down")

    with cache.enable(), pytest.raises(LookupError, match="database down"):
        await asyncio.to_thread(failing, [1, 2])
    with cache.enable(), pytest.raises(LookupError):
        await asyncio.to_thread(failing, [1, 2])  # nothing was cached: asked again
    assert asked == [[1, 2], [1, 2]]


async def test_a_function_returning_no_mapping_is_told(make_cache: Callable[..., GCache]) -> None:
    cache = make_cache()

    @cache.cached_many(key_type="user", ids_arg="ids", use_case="Listing", default_config=BOTH)
    async def listing(ids: list[int]) -> Any:
        return [f"v:{i}" for i in ids]

    with cache.enable(), pytest.raises(TypeError, match="returned list, not a mapping of id to value"):
        await listing([1])


async def test_outside_enable_and_with_no_ids_the_function_runs(
    make_cache: Callable[..., GCache], registry: Any, is_async: bool
) -> None:
    cache = make_cache()
    source = Source()
    users = batch_function(cache, source, is_async)
    assert await call(users, is_async, [1]) == {1: "v1:1"}
    with cache.enable():
        assert await call(users, is_async, []) == {}
    assert source.asked == [[1], []]
    assert sample(registry, "gcache_disabled_counter_total", layer="GLOBAL") == 1


async def test_redis_down_serves_the_batch_uncached(
    make_cache: Callable[..., GCache], registry: Any, is_async: bool, tracked: bool
) -> None:
    from tests.behaviour.test_fail_open import refused_url

    cache = make_cache(start_bus=False, redis_config=RedisConfig(url=refused_url()))
    source = Source()
    users = batch_function(
        cache, source, is_async, track_for_invalidation=tracked, default_config=REMOTE_ONLY
    )
    with cache.enable():
        assert await call(users, is_async, [1, 2]) == {1: "v1:1", 2: "v1:2"}
        assert await call(users, is_async, [1, 2]) == {1: "v1:1", 2: "v1:2"}
    assert source.asked == [[1, 2], [1, 2]]
    assert sample(registry, "gcache_error_counter_total", layer="REMOTE") >= 1


async def test_direct_access_twins_read_put_and_delete_many(
    make_cache: Callable[..., GCache], tracked: bool
) -> None:
    cache = make_cache()

    def key(id: str) -> GCacheKey:
        return GCacheKey("user", id, "Direct", invalidation_tracking=tracked, default_config=BOTH)

    asked: list[list[str]] = []

    async def fallback(keys: list[GCacheKey]) -> dict[GCacheKey, str]:
        asked.append([k.id for k in keys])
        return {k: f"computed:{k.id}" for k in keys if k.id != "9"}

    def sync_fallback(keys: list[GCacheKey]) -> dict[GCacheKey, str]:
        asked.append([k.id for k in keys])
        return {k: f"sync:{k.id}" for k in keys}

    await cache.aput_many({key("1"): "put:1", key("2"): "put:2"})
    with cache.enable():
        got = await cache.aget_many([key("3"), key("1"), key("9"), key("2")], fallback)
        again = await asyncio.to_thread(cache.get_many, [key("2"), key("3"), key("4")], sync_fallback)

    assert list(got.items()) == [(key("3"), "computed:3"), (key("1"), "put:1"), (key("2"), "put:2")]
    assert list(again.items()) == [(key("2"), "put:2"), (key("3"), "computed:3"), (key("4"), "sync:4")]
    assert asked == [["3", "9"], ["4"]]  # one fallback call a batch, with the missing keys alone
    assert await cache.adelete_many([key("1"), key("2"), key("5")]) == 2
    assert await asyncio.to_thread(cache.delete_many, [key("3")]) == 1
    with cache.enable():
        assert await cache.aget_many([key("1")], fallback) == {key("1"): "computed:1"}


async def test_a_batch_writes_its_missing_ids_back_in_one_round_trip(
    make_cache: Callable[..., GCache],
    redis_writes: list[bytes],
    redis_client: redis.Redis,
    is_async: bool,
    tracked: bool,
) -> None:
    cache = make_cache()
    source = Source()
    options: dict[str, Any] = {"track_for_invalidation": tracked, "default_config": REMOTE_ONLY}
    users = batch_function(cache, source, is_async, **options)
    ids = list(range(20))
    with cache.enable():
        await call(users, is_async, [0])  # connections opened, fences' scripts known
        redis_writes.clear()
        assert await call(users, is_async, ids) == {i: f"v1:{i}" for i in ids}
        write_sha = hashlib.sha1(scripts.WRITE_TRACKED.encode()).hexdigest().encode()
        command = write_sha if tracked else b"\r\nSET\r\n"
        writes = [w for w in redis_writes if command in w]
        assert len(writes) == 1  # 19 write-backs, one write
        assert writes[0].count(command) == 19
        assert await call(users, is_async, ids) == {i: f"v1:{i}" for i in ids}  # read back: stored
    assert source.asked == [[0], ids[1:]]
    assert len([k for k in redis_client.scan_iter("*Users*") if b"watermark" not in k]) == 20


async def test_put_many_reads_the_fences_in_one_round_trip_and_writes_in_one(
    make_cache: Callable[..., GCache],
    redis_writes: list[bytes],
    redis_client: redis.Redis,
    is_async: bool,
    tracked: bool,
) -> None:
    cache = make_cache()

    def key(id: int) -> GCacheKey:
        return GCacheKey("user", str(id), "Put", invalidation_tracking=tracked, default_config=REMOTE_ONLY)

    async def put_many(items: dict[GCacheKey, str]) -> None:
        if is_async:
            await cache.aput_many(items)
        else:
            await asyncio.to_thread(cache.put_many, items)

    await put_many({key(0): "warm"})  # connections opened, scripts known, entity 0's fence made
    redis_writes.clear()
    await put_many({key(i): f"put:{i}" for i in range(20)})
    write_sha = hashlib.sha1(scripts.WRITE_TRACKED.encode()).hexdigest().encode()
    command = write_sha if tracked else b"\r\nSET\r\n"
    writes = [w for w in redis_writes if command in w]
    assert len(writes) == 1  # 20 writes, one round trip
    assert writes[0].count(command) == 20
    # tracked: the 20 fences read in one round trip, and the 19 new ones made in one more
    assert len(redis_writes) == (3 if tracked else 1)

    async def nothing(keys: list[GCacheKey]) -> dict[GCacheKey, str]:
        raise AssertionError(f"{keys} should be cached")

    with cache.enable():
        got = await cache.aget_many([key(i) for i in range(20)], nothing)
    assert got == {key(i): f"put:{i}" for i in range(20)}
    if tracked:  # stamped under the fences it read: an invalidation makes them stale
        await cache.ainvalidate("user", "7")
        with cache.enable():
            again = await cache.aget_many([key(7), key(8)], lambda keys: _computed(keys))
        assert again == {key(7): "computed:7", key(8): "put:8"}


async def _computed(keys: list[GCacheKey]) -> dict[GCacheKey, str]:
    return {k: f"computed:{k.id}" for k in keys}


async def test_an_invalidation_during_a_batch_refuses_that_ids_write_alone(
    make_cache: Callable[..., GCache], redis_client: redis.Redis, is_async: bool
) -> None:
    registry = CollectorRegistry()
    cache = make_cache(metrics_registry=registry)
    source = Source()
    invalidate = [True]

    def load(ids: Iterable[int]) -> dict[int, str]:
        found = source.load(ids)
        if invalidate and invalidate.pop():
            cache.invalidate("user", 2)  # after the fences were read: 2's write is refused
        return found

    async def aload(ids: Iterable[int]) -> dict[int, str]:
        return load(ids)

    decorate = cache.cached_many(key_type="user", ids_arg="ids", use_case="Users",
                                 track_for_invalidation=True, default_config=REMOTE_ONLY)  # fmt: skip
    users = decorate(aload if is_async else load)
    with cache.enable():
        assert await call(users, is_async, [1, 2, 3]) == {1: "v1:1", 2: "v1:2", 3: "v1:3"}
        source.version = "v2"
        assert await call(users, is_async, [1, 2, 3]) == {1: "v1:1", 2: "v2:2", 3: "v1:3"}
    assert source.asked == [[1, 2, 3], [2]]
    assert sample(registry, "gcache_write_counter_total", use_case="Users",
                  layer="REMOTE", result="invalidated") == 1  # fmt: skip


async def test_a_batch_written_to_a_server_without_the_write_script_writes_through_it(
    make_cache: Callable[..., GCache], redis_client: redis.Redis, is_async: bool
) -> None:
    """A server that lost its scripts (SCRIPT FLUSH, a restart) answers the batch's EVALSHA with
    NOSCRIPT: each of those writes goes again through the script, which loads it."""
    registry = CollectorRegistry()
    cache = make_cache(metrics_registry=registry)
    source = Source()
    users = batch_function(cache, source, is_async, track_for_invalidation=True, default_config=REMOTE_ONLY)
    with cache.enable():
        await call(users, is_async, [0])
        redis_client.script_flush()
        assert await call(users, is_async, [1, 2, 3]) == {1: "v1:1", 2: "v1:2", 3: "v1:3"}
        assert await call(users, is_async, [1, 2, 3]) == {1: "v1:1", 2: "v1:2", 3: "v1:3"}
    assert source.asked == [[0], [1, 2, 3]]  # stored the second time
    assert sample(registry, "gcache_write_counter_total", use_case="Users",
                  layer="REMOTE", result="stored") == 4  # fmt: skip


# -- unbounded reads: one MGET a page ----------------------------------------------------------------

MGET = b"$4\r\nMGET\r\n"  # the command, not HMGET


async def test_an_unbounded_untracked_page_is_one_mget_and_a_tracked_one_a_get_and_fence_an_id(
    make_cache: Callable[..., GCache],
    redis_client: redis.Redis,
    redis_writes: list[bytes],
    is_async: bool,
    tracked: bool,
) -> None:
    """``max_value_bytes=None`` reads values whole: an untracked page on one server is then one
    MGET (its misses, foreign entries and absent ids judged as the GETs' would be); a tracked page
    still reads each entry with its fence."""
    writer, reader = make_cache(max_value_bytes=None), make_cache(max_value_bytes=None)
    source = Source(absent={4})
    options: dict[str, Any] = {**KEEPING_ABSENT, "track_for_invalidation": tracked}
    ids = list(range(1, 11))
    with writer.enable():
        await call(batch_function(writer, source, is_async, **options), is_async, ids[:8])
    ((foreign,),) = [redis_client.keys("*:user:3}#Users")]
    redis_client.set(foreign, b"not gcache's", keepttl=True)
    users = batch_function(reader, source, is_async, **options)
    with reader.enable():
        redis_writes.clear()
        found = await call(users, is_async, ids)

    assert found == {i: f"v1:{i}" for i in ids if i != 4}
    assert source.asked == [ids[:8], [3, 9, 10]]  # the foreign entry and the two never written
    read = next(write for write in redis_writes if b"#Users" in write)  # after the connection's HELLO
    if tracked:
        assert (read.count(MGET), read.count(b"$3\r\nGET\r\n"), read.count(b"HMGET")) == (0, 10, 10)
    else:
        assert read.count(MGET) == 1
        assert read.count(b"$3\r\nGET\r\n") == 0
        assert read.count(b"#Users") == 10  # every key in the one command
    registry = cache_registry(reader)
    assert sample(registry, "gcache_miss_reason_counter_total", layer="REMOTE", reason="foreign") == 1
    assert sample(registry, "gcache_error_counter_total") == 0


async def test_bounded_reads_never_send_mget(
    make_cache: Callable[..., GCache], redis_writes: list[bytes], is_async: bool
) -> None:
    cache = make_cache()  # max_value_bytes: 4 MiB, every value read bounded
    users = batch_function(cache, Source(), is_async, default_config=REMOTE_ONLY)
    with cache.enable():
        await call(users, is_async, [1, 2, 3])
        redis_writes.clear()
        assert await call(users, is_async, [1, 2, 3]) == {i: f"v1:{i}" for i in (1, 2, 3)}

    (read,) = redis_writes
    assert MGET not in read
    assert read.count(b"GETRANGE") == 3


@pytest.fixture
def no_mget_url(redis_url: str, redis_client: redis.Redis) -> Iterator[str]:
    with app_user_without(redis_url, redis_client, "+mget", "gcache-no-mget") as url:
        yield url


async def test_a_user_refused_mget_reads_a_get_an_id_told_once_and_never_fails_a_call(
    make_cache: Callable[..., GCache],
    redis_client: redis.Redis,
    no_mget_url: str,
    is_async: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    writer = make_cache(max_value_bytes=None)
    source = Source()
    with writer.enable():
        await call(batch_function(writer, source, is_async, default_config=REMOTE_ONLY), is_async, [1, 2, 3])
    reader = make_cache(
        max_value_bytes=None, redis_config=RedisConfig(url=no_mget_url), metrics_registry=CollectorRegistry()
    )
    users = batch_function(reader, source, is_async, default_config=REMOTE_ONLY)
    refused_before = _rejected(redis_client, "mget")
    with caplog.at_level(logging.WARNING, logger="gcache"), reader.enable():
        for _ in range(3):
            assert await call(users, is_async, [1, 2, 3]) == {i: f"v1:{i}" for i in (1, 2, 3)}

    assert source.asked == [[1, 2, 3]]  # every page read from Redis, through GETs after the first MGET
    assert _rejected(redis_client, "mget") == refused_before + 1  # asked once, never again
    told = [r.getMessage() for r in caplog.records if "refuses MGET" in r.getMessage()]
    assert len(told) == 1
    assert "+mget" in told[0]
    assert sample(cache_registry(reader), "gcache_error_counter_total") == 0


def _rejected(client: redis.Redis, command: str) -> int:
    stats: dict[str, Any] = client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("rejected_calls", 0))


async def test_a_page_read_whole_from_redis_keeps_the_caller_s_order_and_its_ids(
    make_cache: Callable[..., GCache], is_async: bool
) -> None:
    """Every id found in REMOTE, none in LOCAL: the mapping is built from the read at once, in the
    caller's order, each id once and as the caller's object; an absent id kept by
    ``cache_missing`` leaves the page to the per-id path, and stays out of the mapping."""
    writer, reader = make_cache(), make_cache()
    source = Source(absent={4})
    options: dict[str, Any] = dict(KEEPING_ABSENT)
    with writer.enable():
        await call(batch_function(writer, source, is_async, **options), is_async, [1, 2, 3, 4, 5])
    users = batch_function(reader, source, is_async, **options)
    with reader.enable():
        whole = await call(users, is_async, [5, 3, 1, 3, 2])
        with_absent = await call(users, is_async, (i for i in [4, 2, 5]))

    assert list(whole.items()) == [(5, "v1:5"), (3, "v1:3"), (1, "v1:1"), (2, "v1:2")]
    assert all(type(key) is int for key in whole)  # the caller's ids, not their rendered keys
    assert list(with_absent.items()) == [(2, "v1:2"), (5, "v1:5")]
    assert source.asked == [[1, 2, 3, 4, 5]]  # both pages from Redis
