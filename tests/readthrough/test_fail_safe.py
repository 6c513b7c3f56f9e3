"""Fail-safe, soft timeout, TTL jitter, the value-size limit and bad data, on the real Redis.

``GCacheKeyConfig(fail_safe_sec=G)`` keeps an entry ``G`` seconds past its TTL: in LOCAL (the
store's grace) and in Redis (written with ``PX = ttl + grace``; a read whose PTTL is at most the
grace judges the entry expired). When the function raises after the TTL, the stale value is
served instead; an invalidated entry never is. ``soft_timeout_sec`` also serves the stale value
when the function is slow, and lets the function finish in the background. Every behaviour is
checked for a sync and an async cached function.
"""

from __future__ import annotations

import asyncio
import pickle
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry

from gcache import CacheLayer, GCache, GCacheKeyConfig, _envelope
from tests.conftest import sample, wait_until

STALE = "gcache_stale_served_counter_total"
MISSES = "gcache_miss_counter_total"
MISS_REASONS = "gcache_miss_reason_counter_total"
ERRORS = "gcache_error_counter_total"
WRITES = "gcache_write_counter_total"
FLIGHTS = "gcache_single_flight_counter_total"
RECEIVED = "gcache_bus_message_counter_total"

TTL = 0.15  # short TTLs: tests sleep just past them
PAST_TTL = TTL + 0.05

Call = Callable[[str], Awaitable[Any]]

LAYER_CASES = pytest.mark.parametrize(
    ("layer", "tracked"),
    [("local", False), ("local", True), ("remote", False), ("remote", True)],
    ids=["local", "local-tracked", "remote", "remote-tracked"],
)


class SourceDown(RuntimeError):
    """The wrapped function's data source is failing."""


class Source:
    """What the cached functions compute: ``{"uid", "n"}`` with n the calls so far.

    ``fail`` and ``delay`` are read when a call starts, so a test can change them for the next
    call while an earlier one is still running.
    """

    def __init__(self) -> None:
        self.calls = 0
        self.finished = 0
        self.fail = False
        self.delay = 0.0
        self._lock = threading.Lock()

    def start(self) -> tuple[int, float, bool]:
        with self._lock:
            self.calls += 1
            return self.calls, self.delay, self.fail

    def finish(self, uid: str, n: int, fail: bool) -> dict[str, Any]:
        with self._lock:
            self.finished += 1
        if fail:
            raise SourceDown(f"source down while computing {uid}")
        return {"uid": uid, "n": n}


def cached_fn(
    cache: GCache,
    is_async: bool,
    source: Source,
    *,
    use_case: str,
    config: GCacheKeyConfig,
    tracked: bool = False,
) -> Call:
    """A cached function over ``source``, awaitable either way.

    A sync function runs in a worker thread (``asyncio.to_thread`` copies the context, so the
    ``enable()`` state follows), as a sync caller with no event loop of its own would run it.
    """
    options: dict[str, Any] = {
        "key_type": "user_id",
        "id_arg": "uid",
        "use_case": use_case,
        "default_config": config,
        "track_for_invalidation": tracked,
    }
    if is_async:

        @cache.cached(**options)
        async def get_async(uid: str) -> dict[str, Any]:
            n, delay, fail = source.start()
            if delay:
                await asyncio.sleep(delay)
            return source.finish(uid, n, fail)

        return get_async

    @cache.cached(**options)
    def get_sync(uid: str) -> dict[str, Any]:
        n, delay, fail = source.start()
        if delay:
            time.sleep(delay)
        return source.finish(uid, n, fail)

    async def run(uid: str) -> Any:
        return await asyncio.to_thread(get_sync, uid)

    return run


def config(
    layer: str, ttl: float, *, grace: float = 0.0, soft: float = 0.0, jitter: float = 0.0
) -> GCacheKeyConfig:
    """One layer (``"local"`` or ``"remote"``) on for every call."""
    on = CacheLayer(layer)
    return GCacheKeyConfig(
        ttl_sec={on: ttl},
        ramp={on: 100},
        fail_safe_sec=grace,
        soft_timeout_sec=soft,
        ttl_jitter=jitter,
    )


def value_key(use_case: str, uid: str) -> str:
    return "{urn:gcache:user_id:" + uid + "}#" + use_case


def fence_key(uid: str) -> str:
    return "{urn:gcache:user_id:" + uid + "}#watermark"


def stored_value(client: redis.Redis, key: str) -> Any:
    """The value Redis holds at ``key``, decoded from its envelope (the key must exist)."""
    raw = client.get(key)
    assert isinstance(raw, bytes), f"{key!r} holds {raw!r}"
    return pickle.loads(_envelope.decode(raw).payload)


async def invalidate(cache: GCache, is_async: bool, uid: str) -> None:
    if is_async:
        await cache.ainvalidate("user_id", uid)
    else:
        await asyncio.to_thread(cache.invalidate, "user_id", uid)


async def eventually(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    """Poll ``predicate`` without blocking the test's event loop (background refreshes run on it)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


# -- fail-safe: the stale value when the function fails -----------------------------------------


@LAYER_CASES
async def test_stale_value_served_when_function_fails_after_ttl_within_grace(
    make_cache: Callable[..., GCache],
    registry: CollectorRegistry,
    redis_client: redis.Redis,
    is_async: bool,
    layer: str,
    tracked: bool,
) -> None:
    cache = make_cache()
    source = Source()
    get = cached_fn(
        cache, is_async, source, use_case="Stale", config=config(layer, TTL, grace=5), tracked=tracked
    )
    key = value_key("Stale", "1")
    first = {"uid": "1", "n": 1}
    with cache.enable():
        assert await get("1") == first
        if layer == "remote":  # kept in Redis for TTL + grace
            assert 4_900 < redis_client.pttl(key) <= 5_000 + TTL * 1000
        else:  # LOCAL only: the stale value can only come from the process
            assert redis_client.exists(key) == 0

        await asyncio.sleep(PAST_TTL)
        source.fail = True
        assert await get("1") == first
        assert source.calls == 2

        assert sample(registry, STALE, use_case="Stale", layer=layer.upper(), reason="function_error") == 1
        assert sample(registry, STALE, use_case="Stale") == 1
        # The function's error is still counted, though the caller did not see it.
        assert (
            sample(
                registry,
                ERRORS,
                use_case="Stale",
                layer=layer.upper(),
                error="SourceDown",
                in_fallback="True",
            )
            == 1
        )
        if layer == "remote":
            assert sample(registry, MISS_REASONS, use_case="Stale", layer="REMOTE", reason="expired") == 1
            assert redis_client.exists(key) == 1
            assert stored_value(redis_client, key) == first  # serving stale rewrote nothing

        # Stale is only a fallback: once the function works, its value replaces the old one.
        source.fail = False
        third = {"uid": "1", "n": 3}
        assert await get("1") == third
        assert await get("1") == third
        assert source.calls == 3
        if layer == "remote":
            assert stored_value(redis_client, key) == third
            assert 4_900 < redis_client.pttl(key) <= 5_000 + TTL * 1000
    assert sample(registry, STALE, use_case="Stale") == 1


@pytest.mark.parametrize("layer", ["local", "remote"])
async def test_function_error_propagates_without_fail_safe_and_past_ttl_plus_grace(
    make_cache: Callable[..., GCache],
    registry: CollectorRegistry,
    redis_client: redis.Redis,
    is_async: bool,
    layer: str,
) -> None:
    cache = make_cache()
    source = Source()
    plain = cached_fn(cache, is_async, source, use_case="Plain", config=config(layer, TTL))
    graced = cached_fn(cache, is_async, source, use_case="Graced", config=config(layer, 0.1, grace=0.1))
    with cache.enable():
        assert await plain("1") == {"uid": "1", "n": 1}
        assert await graced("1") == {"uid": "1", "n": 2}
        if layer == "remote":
            assert 0 < redis_client.pttl(value_key("Plain", "1")) <= TTL * 1000  # no grace: PX = TTL
            assert 100 < redis_client.pttl(value_key("Graced", "1")) <= 200

        await asyncio.sleep(0.3)  # past Plain's TTL, past Graced's TTL + grace
        if layer == "remote":
            assert redis_client.exists(value_key("Plain", "1"), value_key("Graced", "1")) == 0
        source.fail = True
        with pytest.raises(SourceDown):
            await plain("1")
        with pytest.raises(SourceDown):
            await graced("1")
    assert source.calls == 4
    assert sample(registry, STALE) == 0
    for use_case in ("Plain", "Graced"):
        assert sample(registry, ERRORS, use_case=use_case, layer=layer.upper(), in_fallback="True") == 1


# -- never serve invalidated data --------------------------------------------------------------


@pytest.mark.parametrize("layer", ["local", "remote"])
async def test_invalidated_entry_never_served_stale_when_function_fails(
    make_cache: Callable[..., GCache],
    registry: CollectorRegistry,
    redis_client: redis.Redis,
    is_async: bool,
    layer: str,
) -> None:
    cache = make_cache()
    source = Source()
    get = cached_fn(cache, is_async, source, use_case="Inv", config=config(layer, TTL, grace=5), tracked=True)
    with cache.enable():
        for uid in ("1", "2", "3"):
            await get(uid)

        # Invalidated while fresh: gone for fail-safe too.
        await invalidate(cache, is_async, "1")
        source.fail = True
        with pytest.raises(SourceDown):
            await get("1")

        # Invalidated in its grace period.
        await asyncio.sleep(PAST_TTL)
        await invalidate(cache, is_async, "2")
        with pytest.raises(SourceDown):
            await get("2")

        # Control: the entity nobody invalidated is served stale.
        assert await get("3") == {"uid": "3", "n": 3}
    assert sample(registry, STALE, use_case="Inv") == 1
    assert sample(registry, ERRORS, use_case="Inv", in_fallback="True") == 3
    if layer == "remote":
        # The old values are still in Redis: refused by the watermark, not by their absence.
        assert redis_client.exists(value_key("Inv", "1"), value_key("Inv", "2")) == 2
        assert sample(registry, MISS_REASONS, use_case="Inv", layer="REMOTE", reason="invalidated") == 2


@pytest.mark.parametrize("layer", ["local", "remote"])
async def test_invalidation_from_another_instance_never_served_stale(
    make_cache: Callable[..., GCache],
    registry: CollectorRegistry,
    is_async: bool,
    layer: str,
) -> None:
    cache = make_cache()
    other = make_cache()  # another process of the fleet, on the same Redis
    source = Source()
    get = cached_fn(
        cache, is_async, source, use_case="InvOther", config=config(layer, TTL, grace=5), tracked=True
    )
    with cache.enable():
        assert await get("1") == {"uid": "1", "n": 1}
        assert await get("2") == {"uid": "2", "n": 2}
        await invalidate(other, is_async, "1")
        wait_until(
            lambda: sample(registry, RECEIVED, direction="received", kind="invalidate") >= 1,
            what="the invalidation to reach the first instance over the bus",
        )
        await asyncio.sleep(PAST_TTL)
        source.fail = True
        with pytest.raises(SourceDown):
            await get("1")
        assert await get("2") == {"uid": "2", "n": 2}
    assert sample(registry, STALE, use_case="InvOther") == 1


async def test_stale_local_copy_not_served_when_remote_read_shows_entity_invalidated(
    make_cache: Callable[..., GCache],
    registry: CollectorRegistry,
    redis_client: redis.Redis,
    is_async: bool,
) -> None:
    cache = make_cache()
    source = Source()
    both = GCacheKeyConfig(
        ttl_sec=dict.fromkeys(CacheLayer, TTL), ramp=dict.fromkeys(CacheLayer, 100), fail_safe_sec=5
    )
    get = cached_fn(cache, is_async, source, use_case="InvLag", config=both, tracked=True)
    with cache.enable():
        assert await get("1") == {"uid": "1", "n": 1}
        # Another process invalidated the entity: its watermark is in Redis, and its bus message
        # has not reached this process yet (pub/sub is asynchronous).
        assert redis_client.hget(fence_key("1"), "n") is not None
        seconds, micros = redis_client.time()
        redis_client.hset(fence_key("1"), "w", str(seconds * 1_000_000 + micros))

        await asyncio.sleep(PAST_TTL)
        source.fail = True
        try:
            with pytest.raises(SourceDown):
                await get("1")
        finally:
            # The read did see the invalidation.
            assert (
                sample(registry, MISS_REASONS, use_case="InvLag", layer="REMOTE", reason="invalidated") == 1
            )
    assert sample(registry, STALE, use_case="InvLag") == 0


# -- soft timeout ------------------------------------------------------------------------------

SOFT_CASES = pytest.mark.parametrize(
    ("layer", "tracked"),
    [
        ("local", False),
        ("remote", False),
        ("remote", True),
    ],
    ids=["local", "remote", "remote-tracked"],
)

SOFT_TTL = 0.3  # the refreshed value must still be fresh when the test reads it back
SLOW = 0.4  # the function after the TTL
SOFT = 0.05


@SOFT_CASES
async def test_soft_timeout_serves_stale_and_function_refreshes_in_background(
    make_cache: Callable[..., GCache],
    registry: CollectorRegistry,
    redis_client: redis.Redis,
    is_async: bool,
    layer: str,
    tracked: bool,
) -> None:
    cache = make_cache()
    source = Source()
    get = cached_fn(
        cache,
        is_async,
        source,
        use_case="Soft",
        config=config(layer, SOFT_TTL, grace=5, soft=SOFT),
        tracked=tracked,
    )
    with cache.enable():
        # Cold key: no stale value, so the call waits for the function past the soft timeout.
        source.delay = 0.15
        start = time.monotonic()
        assert await get("1") == {"uid": "1", "n": 1}
        assert time.monotonic() - start >= 0.15
        assert sample(registry, STALE, use_case="Soft") == 0

        await asyncio.sleep(SOFT_TTL + 0.05)
        source.delay = SLOW
        start = time.monotonic()
        value = await get("1")
        assert time.monotonic() - start < 0.3  # about SOFT, well before the function's SLOW
        assert value == {"uid": "1", "n": 1}
        assert source.calls == 2
        assert source.finished == 1  # the second run is still going
        assert sample(registry, STALE, use_case="Soft", layer=layer.upper(), reason="soft_timeout") == 1

        # The function finishes in the background and its value refreshes the cache.
        await eventually(
            lambda: sample(registry, WRITES, use_case="Soft", layer=layer.upper(), result="stored") == 2,
            what="the background refresh to be written",
        )
        assert source.finished == 2
        assert await get("1") == {"uid": "1", "n": 2}
        assert source.calls == 2
        if layer == "remote":
            assert stored_value(redis_client, value_key("Soft", "1")) == {"uid": "1", "n": 2}
    assert sample(registry, STALE, use_case="Soft") == 1


# -- concurrency ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layer", "tracked"),
    [
        ("local", False),
        ("remote", False),
        ("remote", True),
    ],
    ids=["local", "remote", "remote-tracked"],
)
async def test_concurrent_callers_share_one_failing_run_and_all_get_stale(
    make_cache: Callable[..., GCache],
    registry: CollectorRegistry,
    is_async: bool,
    layer: str,
    tracked: bool,
) -> None:
    cache = make_cache()
    source = Source()
    get = cached_fn(
        cache, is_async, source, use_case="Crowd", config=config(layer, TTL, grace=5), tracked=tracked
    )
    first = {"uid": "1", "n": 1}
    with cache.enable():
        assert await get("1") == first
        await asyncio.sleep(PAST_TTL)
        source.fail = True
        source.delay = 0.3  # long enough for every caller to join the run
        results = await asyncio.gather(*(get("1") for _ in range(5)), return_exceptions=True)
    assert results == [first] * 5
    assert source.calls == 2
    assert sample(registry, FLIGHTS, use_case="Crowd", result="joined") == 4
    assert sample(registry, STALE, use_case="Crowd", layer=layer.upper(), reason="function_error") == 5
    assert sample(registry, ERRORS, use_case="Crowd", in_fallback="True") == 1


# -- TTL jitter --------------------------------------------------------------------------------


@pytest.mark.parametrize("tracked", [False, True], ids=["untracked", "tracked"])
async def test_ttl_jitter_spreads_remote_ttls_within_bounds(
    make_cache: Callable[..., GCache],
    registry: CollectorRegistry,
    redis_client: redis.Redis,
    is_async: bool,
    tracked: bool,
) -> None:
    cache = make_cache()
    source = Source()
    use_cases = {
        "Jitter": config("remote", 100, jitter=0.5),
        "Exact": config("remote", 100),
        "JitterGrace": config("remote", 100, jitter=0.5, grace=30),
        "ExactGrace": config("remote", 100, grace=30),
    }
    functions = {
        name: cached_fn(cache, is_async, source, use_case=name, config=cfg, tracked=tracked)
        for name, cfg in use_cases.items()
    }
    counts = {"Jitter": 30, "Exact": 5, "JitterGrace": 30, "ExactGrace": 5}
    with cache.enable():
        for name, get in functions.items():
            for i in range(counts[name]):
                await get(str(i))

    def pttls(name: str) -> list[int]:
        return [int(redis_client.pttl(value_key(name, str(i)))) for i in range(counts[name])]

    jitter = pttls("Jitter")
    assert all(49_000 <= p <= 100_000 for p in jitter), jitter
    assert max(jitter) - min(jitter) > 10_000, jitter  # 30 draws from 50-100 s
    assert len(set(jitter)) > 20, jitter

    exact = pttls("Exact")
    assert all(99_000 <= p <= 100_000 for p in exact), exact

    # The grace is added after the jitter: never shortened, so a fresh entry is never "expired".
    jitter_grace = pttls("JitterGrace")
    assert all(79_000 <= p <= 130_000 for p in jitter_grace), jitter_grace
    assert max(jitter_grace) - min(jitter_grace) > 10_000, jitter_grace

    exact_grace = pttls("ExactGrace")
    assert all(129_000 <= p <= 130_000 for p in exact_grace), exact_grace

    calls = source.calls
    with cache.enable():
        for i in range(counts["JitterGrace"]):
            assert await functions["JitterGrace"](str(i)) == {"uid": str(i), "n": 35 + i + 1}
    assert source.calls == calls  # all hits
    assert sample(registry, MISS_REASONS, layer="REMOTE", reason="expired") == 0


# -- value-size limit ----------------------------------------------------------------------------


def _blob_size(uid: str) -> int:
    return len(pickle.dumps("x" * int(uid), protocol=pickle.HIGHEST_PROTOCOL))


@pytest.mark.parametrize("tracked", [False, True], ids=["untracked", "tracked"])
async def test_value_larger_than_max_value_bytes_returned_but_not_cached(
    make_cache: Callable[..., GCache],
    registry: CollectorRegistry,
    redis_client: redis.Redis,
    is_async: bool,
    tracked: bool,
) -> None:
    limit = _blob_size("500")
    assert _blob_size("501") == limit + 1
    cache = make_cache(max_value_bytes=limit)
    calls: list[str] = []
    options: dict[str, Any] = {
        "key_type": "user_id",
        "id_arg": "uid",
        "use_case": "Size",
        "default_config": GCacheKeyConfig.enabled(60),
        "track_for_invalidation": tracked,
    }
    if is_async:

        @cache.cached(**options)
        async def blob_async(uid: str) -> str:
            calls.append(uid)
            return "x" * int(uid)

        get: Call = blob_async
    else:

        @cache.cached(**options)
        def blob_sync(uid: str) -> str:
            calls.append(uid)
            return "x" * int(uid)

        async def get(uid: str) -> Any:
            return await asyncio.to_thread(blob_sync, uid)

    with cache.enable():
        for uid in ("2000", "501", "500", "100"):
            assert await get(uid) == "x" * int(uid)
            assert await get(uid) == "x" * int(uid)
    # Too large: served, stored nowhere (neither Redis nor LOCAL), so the function runs again.
    assert calls == ["2000", "2000", "501", "501", "500", "100"]
    assert redis_client.exists(value_key("Size", "2000"), value_key("Size", "501")) == 0
    # At the limit or under it: cached.
    assert stored_value(redis_client, value_key("Size", "500")) == "x" * 500
    assert stored_value(redis_client, value_key("Size", "100")) == "x" * 100
    assert sample(registry, WRITES, use_case="Size", layer="REMOTE", result="too_large") == 4
    assert sample(registry, WRITES, use_case="Size", layer="REMOTE", result="stored") == 2
    assert sample(registry, WRITES, use_case="Size", layer="LOCAL", result="stored") == 2


# -- bad data in Redis ---------------------------------------------------------------------------


def _corrupt(raw: bytes, kind: str) -> bytes:
    """A damaged copy of a valid entry ``raw`` (header fields kept unless ``kind`` breaks them)."""
    if kind == "foreign":
        return b"garbage"
    if kind == "version":
        return raw[:2] + bytes([_envelope.VERSION + 1]) + raw[3:]
    if kind == "corrupt-stamp":
        return raw[:5] + b"not-a-timestamp!" + raw[21:]
    if kind == "corrupt-truncated":
        return raw[:10]
    if kind == "serializer_mismatch":
        return raw[:3] + bytes([_envelope.SERIALIZER_CUSTOM]) + raw[4:]
    assert kind == "undecodable"
    return raw[: _envelope.HEADER_SIZE] + b"\x80\x05this is not a pickle"


BAD_KINDS = ["foreign", "version", "corrupt-stamp", "corrupt-truncated", "serializer_mismatch", "undecodable"]


@pytest.mark.parametrize("tracked", [False, True], ids=["untracked", "tracked"])
@pytest.mark.parametrize("kind", BAD_KINDS)
async def test_undecodable_entry_is_a_counted_miss_never_served_stale_and_rewritten(
    make_cache: Callable[..., GCache],
    registry: CollectorRegistry,
    redis_client: redis.Redis,
    is_async: bool,
    kind: str,
    tracked: bool,
) -> None:
    cache = make_cache()
    source = Source()
    get = cached_fn(
        cache, is_async, source, use_case="Bad", config=config("remote", 60, grace=30), tracked=tracked
    )
    key = value_key("Bad", "1")
    reason = kind.split("-")[0]
    with cache.enable():
        assert await get("1") == {"uid": "1", "n": 1}
        raw = redis_client.get(key)
        assert isinstance(raw, bytes)
        bad = _corrupt(raw, kind)
        redis_client.set(key, bad, keepttl=True)

        # Not a value: a failing function is not covered by it.
        source.fail = True
        with pytest.raises(SourceDown):
            await get("1")
        assert redis_client.get(key) == bad  # nothing was written

        source.fail = False
        assert await get("1") == {"uid": "1", "n": 3}
        assert stored_value(redis_client, key) == {"uid": "1", "n": 3}
        assert 89_000 < redis_client.pttl(key) <= 90_000  # rewritten for TTL + grace
        assert await get("1") == {"uid": "1", "n": 3}  # a REMOTE hit now
    assert source.calls == 3
    assert sample(registry, MISS_REASONS, use_case="Bad", layer="REMOTE", reason=reason) == 2
    assert sample(registry, STALE, use_case="Bad") == 0
    assert sample(registry, WRITES, use_case="Bad", layer="REMOTE", result="stored") == 2
