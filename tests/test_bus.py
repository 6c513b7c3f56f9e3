"""The invalidation bus: LOCAL entries of other instances (other processes) follow invalidations.

Two GCache instances on one Redis stand for two processes: each has its own LOCAL layer and its
own bus subscription, and each its own metrics registry here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from prometheus_client import CollectorRegistry

from gcache import CacheLayer, GCache, GCacheConfig, GCacheKey, GCacheKeyConfig, RedisConfig
from gcache.bus import REPLAY_WINDOW_SEC, message_signature
from gcache.signing import Signer
from gcache.urns import bus_channel
from tests.conftest import sample, wait_until

BOTH = GCacheKeyConfig.enabled(60)
LOCAL_ONLY = GCacheKeyConfig(ttl_sec={CacheLayer.LOCAL: 60}, ramp={CacheLayer.LOCAL: 100})
DROPPED = "gcache_local_dropped_counter_total"
MESSAGES = "gcache_bus_message_counter_total"


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Fn:
    """A cached function (sync or async per mode) that counts its calls."""

    def __init__(
        self, cache: GCache, mode: str, use_case: str, tracked: bool = True, config: GCacheKeyConfig = BOTH
    ) -> None:
        self.calls = 0
        self.mode = mode
        options: dict[str, Any] = {
            "key_type": "user_id",
            "id_arg": "uid",
            "use_case": use_case,
            "track_for_invalidation": tracked,
            "default_config": config,
        }
        if mode == "async":

            async def afn(uid: str) -> tuple[str, int]:
                self.calls += 1
                return uid, self.calls

            self._afn: Callable[[str], Awaitable[tuple[str, int]]] = cache.cached(**options)(afn)
        else:

            def fn(uid: str) -> tuple[str, int]:
                self.calls += 1
                return uid, self.calls

            self._fn: Callable[[str], tuple[str, int]] = cache.cached(**options)(fn)

    async def __call__(self, uid: str) -> tuple[str, int]:
        return await self._afn(uid) if self.mode == "async" else self._fn(uid)


async def invalidate(cache: GCache, mode: str, id: str, future_buffer_ms: int = 0) -> None:
    if mode == "async":
        await cache.ainvalidate("user_id", id, future_buffer_ms=future_buffer_ms)
    else:
        cache.invalidate("user_id", id, future_buffer_ms=future_buffer_ms)


def two(make_cache: Callable[..., GCache]) -> tuple[GCache, CollectorRegistry, GCache, CollectorRegistry]:
    reg_a, reg_b = CollectorRegistry(), CollectorRegistry()
    return make_cache(metrics_registry=reg_a), reg_a, make_cache(metrics_registry=reg_b), reg_b


# -- starting ----------------------------------------------------------------------------------


async def test_bus_starts_on_first_tracked_local_use_and_local_skipped_until_subscribed(
    make_cache: Callable[..., GCache], registry: CollectorRegistry, mode: str
) -> None:
    cache = make_cache(start_bus=False)
    tracked = Fn(cache, mode, "Tracked")
    untracked = Fn(cache, mode, "Untracked", tracked=False)
    assert not cache.bus_subscribed

    with cache.enable():
        assert await untracked("1") == ("1", 1)
        assert await untracked("1") == ("1", 1)  # untracked LOCAL never waits for the bus
        assert not cache.bus_subscribed  # and does not start it

        assert await tracked("1") == ("1", 1)  # starts the bus; LOCAL sits this call out
        wait_until(lambda: cache.bus_subscribed, what="the bus to subscribe")
        assert await tracked("1") == ("1", 1)  # a REMOTE hit, filling LOCAL now
        assert await tracked("1") == ("1", 1)
    reasons = "gcache_miss_reason_counter_total"
    assert sample(registry, reasons, use_case="Tracked", layer="LOCAL", reason="bus_unsubscribed") == 1
    assert sample(registry, "gcache_bus_connected") == 1
    assert sample(registry, "gcache_bus_reconnect_counter_total") == 0


async def test_start_subscribes_and_local_only_cache_needs_no_bus(make_cache: Callable[..., GCache]) -> None:
    cache = make_cache(start_bus=False)
    assert not cache.bus_subscribed
    assert await cache.astart(timeout=5)
    assert cache.bus_subscribed
    assert cache.start(timeout=5)  # idempotent

    local_only = GCache(GCacheConfig(metrics_registry=CollectorRegistry()))
    try:
        assert local_only.bus_subscribed
        assert local_only.start(timeout=0)
    finally:
        await local_only.aclose()


# -- what travels ------------------------------------------------------------------------------


async def test_invalidation_drops_local_entries_of_other_instance(
    make_cache: Callable[..., GCache], mode: str
) -> None:
    a, reg_a, b, reg_b = two(make_cache)
    fa, fb = Fn(a, mode, "Profile"), Fn(b, mode, "Profile")
    other_b = Fn(b, mode, "Other", tracked=False)

    with a.enable(), b.enable():
        assert await fa("1") == ("1", 1)
        assert await fb("1") == ("1", 1)  # a REMOTE hit: B holds A's value in its LOCAL now
        assert await fb("2") == ("2", 1)
        assert await other_b("1") == ("1", 1)
        assert fb.calls == 1

        await invalidate(a, mode, "1")
        wait_until(
            lambda: sample(reg_b, DROPPED, use_case="Profile", reason="invalidated") == 1,
            what="B to drop user 1's entry",
        )
        assert await fb("1") == ("1", 2)  # recomputed by B
        assert await fb("2") == ("2", 1)  # another entity: still cached
        assert await other_b("1") == ("1", 1)  # untracked: untouched
    assert sample(reg_a, MESSAGES, key_type="user_id", direction="published", kind="invalidate") == 1
    assert sample(reg_b, MESSAGES, key_type="user_id", direction="received", kind="invalidate") == 1
    assert sample(reg_a, MESSAGES, direction="received") == 0  # its own message is not applied twice
    assert sample(reg_b, "gcache_bus_lag_seconds_count") == 1
    assert 0 <= sample(reg_b, "gcache_bus_lag_seconds_sum") < 5


async def test_own_invalidation_echo_does_not_drop_refilled_entry(
    make_cache: Callable[..., GCache], registry: CollectorRegistry, mode: str
) -> None:
    cache = make_cache()
    fn = Fn(cache, mode, "Echo")
    with cache.enable():
        assert await fn("1") == ("1", 1)
        await invalidate(cache, mode, "1")
        assert await fn("1") == ("1", 2)
        await asyncio.sleep(0.2)  # the message comes back to this instance meanwhile
        assert await fn("1") == ("1", 2)  # still a LOCAL hit
    assert sample(registry, DROPPED, use_case="Echo", reason="invalidated") == 1  # only the first


async def test_future_buffer_travels_with_the_invalidation(
    make_cache: Callable[..., GCache], mode: str
) -> None:
    a, _reg_a, b, reg_b = two(make_cache)
    fb = Fn(b, mode, "Buffered")
    with a.enable(), b.enable():
        await invalidate(a, mode, "1", future_buffer_ms=400)
        wait_until(lambda: sample(reg_b, MESSAGES, direction="received") == 1, what="B to hear it")
        assert await fb("1") == ("1", 1)
        assert await fb("1") == ("1", 2)  # inside the buffer: neither layer keeps the value
        await asyncio.sleep(0.45)
        assert await fb("1") == ("1", 3)
        assert await fb("1") == ("1", 3)  # after it: cached again


async def test_delete_drops_local_entry_of_other_instance(
    make_cache: Callable[..., GCache], mode: str
) -> None:
    a, reg_a, b, reg_b = two(make_cache)
    key = GCacheKey("user_id", "7", "Direct", default_config=BOTH)
    fallbacks: list[str] = []

    def fallback() -> str:
        fallbacks.append("b")
        return "computed"

    async def afallback() -> str:
        return fallback()

    async def read_b() -> Any:
        return await b.aget(key, afallback) if mode == "async" else b.get(key, fallback)

    with a.enable(), b.enable():
        if mode == "async":
            await a.aput(key, "put")
        else:
            a.put(key, "put")
        assert await read_b() == "put"  # from Redis, now in B's LOCAL too
        if mode == "async":
            assert await a.adelete(key)
        else:
            assert a.delete(key)
        wait_until(lambda: sample(reg_b, DROPPED, reason="deleted") == 1, what="B to drop the entry")
        assert await read_b() == "computed"
    assert fallbacks == ["b"]
    assert sample(reg_a, MESSAGES, direction="published", kind="delete") == 1
    assert sample(reg_b, MESSAGES, direction="received", kind="delete") == 1


async def test_flushall_clears_local_entries_of_other_instance(
    make_cache: Callable[..., GCache], mode: str
) -> None:
    a, _reg_a, b, reg_b = two(make_cache)
    untracked = Fn(b, mode, "Plain", tracked=False)
    with b.enable():
        assert await untracked("1") == ("1", 1)
        assert await untracked("1") == ("1", 1)
        if mode == "async":
            await a.aflushall()
        else:
            a.flushall()
        wait_until(lambda: sample(reg_b, DROPPED, reason="flushed") == 1, what="B to clear its LOCAL layer")
        assert await untracked("1") == ("1", 2)
    assert sample(reg_b, MESSAGES, direction="received", kind="flush") == 1


# -- losing the bus ----------------------------------------------------------------------------


async def test_lost_subscription_drops_tracked_local_and_reconnects(
    make_cache: Callable[..., GCache], registry: CollectorRegistry, redis_client: redis.Redis, mode: str
) -> None:
    cache = make_cache()
    tracked = Fn(cache, mode, "T")
    untracked = Fn(cache, mode, "U", tracked=False)
    with cache.enable():
        assert await tracked("1") == ("1", 1)
        assert await untracked("1") == ("1", 1)

        assert redis_client.client_kill_filter(_type="pubsub") >= 1  # the server drops the subscription
        wait_until(lambda: sample(registry, "gcache_bus_reconnect_counter_total") == 1, what="a reconnect")
        wait_until(lambda: cache.bus_subscribed, what="the bus to subscribe again")

        assert await untracked("1") == ("1", 1)  # untracked LOCAL kept its entry
        assert await tracked("1") == ("1", 1)  # LOCAL entry dropped; REMOTE still has it
        redis_client.delete("{urn:gcache:user_id:1}#T")
        assert await tracked("1") == ("1", 1)  # LOCAL filled again after the reconnect
    assert sample(registry, DROPPED, use_case="T", reason="bus_down") == 1
    assert sample(registry, DROPPED, use_case="U") == 0
    assert sample(registry, "gcache_bus_connected") == 1


async def test_malformed_message_is_ignored_and_logged(
    make_cache: Callable[..., GCache],
    registry: CollectorRegistry,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache = make_cache()
    fn = Fn(cache, "async", "M")
    with caplog.at_level(logging.WARNING, logger="gcache"), cache.enable():
        assert await fn("1") == ("1", 1)
        assert redis_client.publish(bus_channel("urn:gcache"), b"nonsense") == 1
        wait_until(lambda: any("malformed" in r.getMessage() for r in caplog.records), what="a log line")
        assert cache.bus_subscribed
        assert await fn("1") == ("1", 1)
    assert sample(registry, MESSAGES, direction="received") == 0
    assert sample(registry, MESSAGES, direction="dropped", kind="malformed") == 1
    assert sample(registry, "gcache_bus_reconnect_counter_total") == 0


async def test_bus_connected_counts_subscribed_instances_sharing_a_registry(
    make_cache: Callable[..., GCache], registry: CollectorRegistry
) -> None:
    first = make_cache()
    make_cache()
    assert sample(registry, "gcache_bus_connected") == 2
    await first.aclose()
    assert sample(registry, "gcache_bus_connected") == 1


# -- forged and malformed messages (anyone who can PUBLISH can send one) -----------------------

FORGER = "0123456789ab"  # a well-formed origin no GCache of this test has


def forged(kind: str, target: str, buffer_ms: int = 0, origin: str = FORGER) -> bytes:
    return f"{kind}|1700000000000000|{buffer_ms}|{origin}|{target}".encode()


MALFORMED = (
    b"nonsense",
    b"\xff\xfe\x00garbage|||",
    b"i|1|0|" + FORGER.encode(),  # four fields
    b"x|1|0|" + FORGER.encode() + b"|{urn:gcache:user_id:1}",  # unknown kind
    b"i|1e9|0|" + FORGER.encode() + b"|{urn:gcache:user_id:1}",  # not an integer
    b"i|1|" + b"9" * 40 + b"|" + FORGER.encode() + b"|{urn:gcache:user_id:1}",  # a 40-digit buffer
    b"i|1|0|not-hex-at-all|{urn:gcache:user_id:1}",
    forged("i", "{urn:gcache:user_id:1"),  # no closing brace: the handler refuses it
    forged("i", "{other-prefix:user_id:1}"),  # another cache's entity
    forged("d", "no braces at all"),
    forged("f", "{urn:gcache:user_id:1}"),  # a flush names no target
    forged("i", "{urn:gcache:user_id:" + "x" * 9000 + "}"),  # longer than any key
)


async def test_the_subscriber_survives_1000_malformed_messages_and_still_applies_good_ones(
    make_cache: Callable[..., GCache], registry: CollectorRegistry, redis_client: redis.Redis, mode: str
) -> None:
    cache = make_cache()
    fn = Fn(cache, mode, "Survivor", config=LOCAL_ONLY)  # what the bus does shows in the calls
    with cache.enable():
        assert await fn("1") == ("1", 1)
        assert await fn("1") == ("1", 1)  # LOCAL
        for i in range(1000):
            redis_client.publish(bus_channel("urn:gcache"), MALFORMED[i % len(MALFORMED)])
        wait_until(
            lambda: sample(registry, MESSAGES, direction="dropped", kind="malformed") == 1000,
            what="every malformed message dropped",
        )
        assert cache.bus_subscribed
        assert sample(registry, "gcache_bus_reconnect_counter_total") == 0
        assert await fn("1") == ("1", 1)  # nothing was applied
        redis_client.publish(bus_channel("urn:gcache"), forged("i", "{urn:gcache:user_id:1}"))
        wait_until(lambda: sample(registry, MESSAGES, direction="received") == 1, what="the good one")
        assert await fn("1") == ("1", 2)  # it was
    assert sample(registry, MESSAGES, direction="dropped", kind="malformed") == 1000


async def test_forged_key_types_count_under_one_label_and_do_not_grow_the_series(
    make_cache: Callable[..., GCache], registry: CollectorRegistry, redis_client: redis.Redis
) -> None:
    cache = make_cache()
    fn = Fn(cache, "async", "Labels")
    with cache.enable():
        await fn("1")
    for i in range(300):
        redis_client.publish(bus_channel("urn:gcache"), forged("i", "{urn:gcache:kt" + str(i) + ":1}"))
    redis_client.publish(bus_channel("urn:gcache"), forged("i", "{urn:gcache:user_id:1}"))
    wait_until(lambda: sample(registry, MESSAGES, direction="received") == 301, what="every message")

    key_types = {
        s.labels["key_type"]
        for m in registry.collect()
        for s in m.samples
        if s.name == MESSAGES and s.labels["direction"] == "received"
    }
    assert key_types == {"user_id", "other"}
    assert sample(registry, MESSAGES, key_type="other", direction="received", kind="invalidate") == 300


async def test_a_forged_future_buffer_is_capped_at_max_future_buffer_ms(
    make_cache: Callable[..., GCache], registry: CollectorRegistry, redis_client: redis.Redis, mode: str
) -> None:
    cache = make_cache(max_future_buffer_ms=300)
    fn = Fn(cache, mode, "Capped", config=LOCAL_ONLY)
    ten_thousand_years_ms = 10_000 * 365 * 24 * 3600 * 1000
    with cache.enable():
        assert await fn("1") == ("1", 1)
        redis_client.publish(
            bus_channel("urn:gcache"), forged("i", "{urn:gcache:user_id:1}", ten_thousand_years_ms)
        )
        wait_until(lambda: sample(registry, MESSAGES, direction="received") == 1, what="the message")
        assert await fn("1") == ("1", 2)  # invalidated, and inside its buffer: not stored
        assert await fn("1") == ("1", 3)
        await asyncio.sleep(0.4)  # the buffer, capped at 300 ms, is over
        assert await fn("1") == ("1", 4)  # stored this time
        assert await fn("1") == ("1", 4)  # a LOCAL hit


async def test_caches_on_two_databases_of_one_server_do_not_hear_each_other(
    make_cache: Callable[..., GCache], redis_url: str, mode: str
) -> None:
    """Pub/sub ignores the database: the channel names it (db 0's keeps its name)."""
    db1 = urlunsplit(urlsplit(redis_url)._replace(path="/1"))
    on_db0 = make_cache(metrics_registry=CollectorRegistry())
    on_db1 = make_cache(redis_config=RedisConfig(url=db1), metrics_registry=CollectorRegistry())
    assert on_db0._bus is not None
    assert on_db1._bus is not None
    assert on_db0._bus.channel == bus_channel("urn:gcache") == "urn:gcache#invalidation"
    assert on_db1._bus.channel == "urn:gcache#invalidation#db1"
    reader = Fn(on_db0, mode, "Db0", config=LOCAL_ONLY)
    with on_db0.enable():
        assert await reader("1") == ("1", 1)
        await invalidate(on_db1, mode, "1")  # user 1 of db 1: another application's
        await asyncio.sleep(0.2)
        assert await reader("1") == ("1", 1)  # still db 0's LOCAL entry
        await invalidate(on_db0, mode, "1")
        assert await reader("1") == ("1", 2)


# -- signed messages (issue 14, finding 9) -----------------------------------------------------

K1 = "bus-signing-key-0123456789"
K2 = "another-bus-signing-key-0123456789"


def signed(kind: str, target: str, key: str = K1, buffer_ms: int = 0, origin: str = FORGER) -> bytes:
    """A message signed as a keyed process would sign it, now."""
    names = {"i": "invalidate", "d": "delete", "f": "flush"}
    signature = message_signature(Signer([key.encode()]), names[kind], buffer_ms, origin, target)
    return b"%b|1700000000000000|%d|%b|%b|%b" % (
        kind.upper().encode(),
        buffer_ms,
        origin.encode(),
        signature,
        target.encode(),
    )


def subscribed(client: redis.Redis) -> Any:
    """A pub/sub listener on the bus channel, its subscription confirmed."""
    listener = client.pubsub()  # type: ignore[no-untyped-call,unused-ignore]
    listener.subscribe(bus_channel("urn:gcache"))
    confirmation = listener.get_message(timeout=5)
    assert confirmation is not None
    assert confirmation["type"] == "subscribe"
    return listener


async def test_with_keys_forged_messages_are_dropped_counted_and_never_applied(
    make_cache: Callable[..., GCache], registry: CollectorRegistry, redis_client: redis.Redis, mode: str
) -> None:
    cache = make_cache(signing_keys=[K1])
    fn = Fn(cache, mode, "Guarded", config=LOCAL_ONLY)
    channel = bus_channel("urn:gcache")
    entity = "{urn:gcache:user_id:1}"
    good = signed("i", entity)
    forgeries = {
        "unsigned": [forged("i", entity), forged("f", ""), forged("d", entity + "#Guarded")],
        "bad_signature": [
            signed("i", entity, key=K2),  # a key this process does not have
            good.replace(b"|0|", b"|9|", 1),  # the buffer changed after signing
            good.replace(b"user_id:1", b"user_id:2"),  # the target changed after signing
            good[:-3] + b"}",  # the MAC field cut: not a signature of this message
            b"F|1|0|" + FORGER.encode() + b"|123.abcd.ef|",
        ],
    }
    with cache.enable():
        assert await fn("1") == ("1", 1)
        for messages in forgeries.values():
            for message in messages:
                redis_client.publish(channel, message)
        wait_until(lambda: sample(registry, MESSAGES, direction="dropped") == 8, what="every forgery dropped")
        assert await fn("1") == ("1", 1)  # still LOCAL: nothing was applied
        redis_client.publish(channel, good)
        wait_until(lambda: sample(registry, MESSAGES, direction="received") == 1, what="the genuine one")
        assert await fn("1") == ("1", 2)
    assert sample(registry, MESSAGES, direction="dropped", kind="unsigned") == 3
    assert sample(registry, MESSAGES, direction="dropped", kind="bad_signature") == 5
    assert sample(registry, MESSAGES, direction="dropped", kind="malformed") == 0
    assert cache.bus_subscribed


async def test_with_keys_a_recorded_message_replayed_is_dropped(
    make_cache: Callable[..., GCache], redis_client: redis.Redis, mode: str
) -> None:
    """Anyone can SUBSCRIBE and publish a genuine flush again: it is applied once."""
    reg_a, reg_b = CollectorRegistry(), CollectorRegistry()
    a = make_cache(signing_keys=[K1], metrics_registry=reg_a)
    b = make_cache(signing_keys=[K1], metrics_registry=reg_b)
    reader = Fn(b, mode, "Replay", config=LOCAL_ONLY)
    listener = subscribed(redis_client)
    with b.enable():
        assert await reader("1") == ("1", 1)
        if mode == "async":
            await a.aflushall()
        else:
            a.flushall()
        recorded = listener.get_message(timeout=5)
        assert recorded is not None
        assert recorded["data"].startswith(b"F|")
        wait_until(lambda: sample(reg_b, MESSAGES, direction="received", kind="flush") == 1, what="flush")
        assert await reader("1") == ("1", 2)  # the flush emptied b's LOCAL
        for _ in range(5):
            redis_client.publish(bus_channel("urn:gcache"), recorded["data"])
        wait_until(lambda: sample(reg_b, MESSAGES, direction="dropped", kind="replayed") == 5, what="replays")
        assert await reader("1") == ("1", 2)  # not emptied again
    listener.close()


async def test_with_keys_a_message_signed_outside_the_replay_window_is_dropped(
    make_cache: Callable[..., GCache],
    registry: CollectorRegistry,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = make_cache(signing_keys=[K1])
    fn = Fn(cache, "async", "Window", config=LOCAL_ONLY)
    now_ns = time.time_ns()
    monkeypatch.setattr("gcache.bus.time.time_ns", lambda: now_ns - int((REPLAY_WINDOW_SEC + 60) * 1e9))
    old = signed("i", "{urn:gcache:user_id:1}")  # signed 6 minutes ago
    monkeypatch.undo()
    with cache.enable():
        assert await fn("1") == ("1", 1)
        redis_client.publish(bus_channel("urn:gcache"), old)
        wait_until(lambda: sample(registry, MESSAGES, direction="dropped", kind="stale") == 1, what="stale")
        assert await fn("1") == ("1", 1)


async def test_keyed_processes_invalidate_delete_and_flush_each_other(
    make_cache: Callable[..., GCache], redis_client: redis.Redis, mode: str
) -> None:
    listener = subscribed(redis_client)
    a = make_cache(signing_keys=[K2, K1], metrics_registry=CollectorRegistry())  # rotating
    reg_b = CollectorRegistry()
    b = make_cache(signing_keys=[K1, K2], metrics_registry=reg_b)
    reader = Fn(b, mode, "Across")
    with b.enable():
        assert await reader("1") == ("1", 1)
        await invalidate(a, mode, "1")
        wait_until(lambda: sample(reg_b, MESSAGES, direction="received", kind="invalidate") == 1, what="i")
        assert await reader("1") == ("1", 2)
        key = GCacheKey("user_id", "1", "Across", invalidation_tracking=True)
        if mode == "async":
            await a.adelete(key)
        else:
            a.delete(key)
        wait_until(lambda: sample(reg_b, MESSAGES, direction="received", kind="delete") == 1, what="d")
        assert await reader("1") == ("1", 3)
    published = [listener.get_message(timeout=5) for _ in range(2)]
    assert [m["data"][:2] for m in published if m is not None] == [b"I|", b"D|"]
    assert sample(reg_b, MESSAGES, direction="dropped") == 0
    listener.close()


async def test_accept_unsigned_messages_lets_processes_without_keys_through_during_the_rollout(
    make_cache: Callable[..., GCache], mode: str
) -> None:
    reg_keyed, reg_plain = CollectorRegistry(), CollectorRegistry()
    keyed = make_cache(signing_keys=[K1], accept_unsigned_messages=True, metrics_registry=reg_keyed)
    plain = make_cache(metrics_registry=reg_plain)  # not yet given the keys
    on_keyed, on_plain = Fn(keyed, mode, "Rollout"), Fn(plain, mode, "Rollout")
    with keyed.enable(), plain.enable():
        assert await on_keyed("1") == ("1", 1)
        assert await on_plain("1") == ("1", 1)  # keyed's signed entry: a REMOTE hit
        assert on_plain.calls == 0
        await invalidate(plain, mode, "1")  # unsigned: applied by the keyed process all the same
        wait_until(lambda: sample(reg_keyed, MESSAGES, direction="received") == 1, what="unsigned")
        assert await on_keyed("1") == ("1", 2)
        await invalidate(keyed, mode, "1")  # signed: a process without keys applies it too
        wait_until(lambda: sample(reg_plain, MESSAGES, direction="received") == 1, what="signed")
        assert await on_plain("1") == ("1", 1)  # its own function's first value: LOCAL was dropped
        assert on_plain.calls == 1


async def test_a_lost_bus_says_when_it_is_up_again(
    make_cache: Callable[..., GCache], redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    cache = make_cache()
    with caplog.at_level(logging.INFO, logger="gcache"):
        assert redis_client.client_kill_filter(_type="pubsub") >= 1
        wait_until(lambda: "invalidation bus lost" in caplog.text, what="the loss told")
        wait_until(lambda: "invalidation bus subscribed again" in caplog.text, what="the recovery told")
    assert cache.bus_subscribed
    (record,) = [r for r in caplog.records if "up again" in r.getMessage()]
    assert record.levelno == logging.INFO  # the end of trouble is no warning
    line = record.getMessage()
    assert "#invalidation" in line
    assert " s" in line.rsplit("after", 1)[1]


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_start_says_why_the_bus_is_not_up(
    make_cache: Callable[..., GCache], caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    from tests.behaviour.test_fail_open import refused_url

    cache = make_cache(start_bus=False, redis_config=RedisConfig(url=refused_url()))
    with caplog.at_level(logging.WARNING, logger="gcache"):
        up = await cache.astart(timeout=0.5) if mode == "async" else await asyncio.to_thread(cache.start, 0.5)
    assert up is False
    (line,) = [r.getMessage() for r in caplog.records if "not subscribed within" in r.getMessage()]
    assert "0.5 s" in line
    assert "ConnectionError" in line
    assert "tracked use cases skip LOCAL" in line
