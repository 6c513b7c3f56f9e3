"""Signed REMOTE entries (issue 14, finding 1), against a real Redis: with signing keys, nothing
someone else wrote to the cache's Redis is deserialized or served.

The attacker of these tests can do what anyone with access to that Redis can: read every key
(the fence's nonce and watermark included), write entries in gcache's envelope, copy entries
between keys. Two GCache instances stand for two processes of one fleet.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from prometheus_client import CollectorRegistry

from gcache import CacheLayer, GCache, GCacheKey, GCacheKeyConfig
from gcache import _envelope as envelope
from gcache.serializers import JsonSerializer
from gcache.signing import Signer
from gcache.urns import entity_key, value_key, watermark_key
from tests.conftest import fence_fields, sample
from tests.test_gcache import Maker, call, twin
from tests.test_serializers import _Payload

REMOTE_ONLY = GCacheKeyConfig(ttl_sec={CacheLayer.REMOTE: 60}, ramp={CacheLayer.REMOTE: 100})
MISSES = "gcache_miss_counter_total"
MISS_REASONS = "gcache_miss_reason_counter_total"
K1 = "first-signing-key-0123456789"
K2 = "second-signing-key-0123456789"


@pytest.fixture(params=[False, True], ids=["untracked", "tracked"])
def tracked(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def cached(
    cache: GCache, use_case: str, is_async: bool, tracked: bool, value: Any = None, **options: Any
) -> tuple[Any, list[str]]:
    calls: list[str] = []

    def body(user_id: str) -> Any:
        calls.append(user_id)
        return value if value is not None else {"user": user_id, "is_admin": False}

    fn = cache.cached(
        key_type="user_id",
        id_arg="user_id",
        use_case=use_case,
        default_config=REMOTE_ONLY,
        track_for_invalidation=tracked,
        **options,
    )(twin("async" if is_async else "sync", body))
    return fn, calls


def urn_of(use_case: str, id: str = "1") -> str:
    return value_key(entity_key("urn:gcache", "user_id", id), (), use_case)


def server_now(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1_000_000 + int(micros)


def plant(
    client: redis.Redis, urn: str, payload: bytes, serializer_id: int, *, mac: bytes | None, kid: bytes
) -> None:
    """Write what an attacker would: a fresh-looking entry under the entity's real fence (the
    nonce read from Redis, a stamp above the watermark), with this key id and MAC."""
    fence = watermark_key(entity_key("urn:gcache", "user_id", "1"))
    if not client.exists(fence):
        client.hset(fence, mapping=fence_fields(client, b"ATTACKER", "0"))
    nonce = client.hget(fence, "n")
    assert isinstance(nonce, bytes)
    raw = bytearray(envelope.encode(payload, serializer_id, 0, server_now(client), nonce))
    raw[29:33] = kid
    if mac is not None:
        raw[33:49] = mac
    client.set(urn, bytes(raw))


async def test_a_planted_pickle_never_runs_with_signing_on(
    make_cache: Maker,
    registry: CollectorRegistry,
    redis_client: redis.Redis,
    is_async: bool,
    tracked: bool,
    tmp_path: Path,
) -> None:
    cache = make_cache(signing_keys=[K1])
    fn, calls = cached(cache, "Signed", is_async, tracked)
    urn = urn_of("Signed")
    real_kid = Signer([K1.encode()]).key_id
    for n, (kid, mac) in enumerate(
        [
            (envelope.NO_KEY_ID, None),  # unsigned, as a process without keys writes
            (real_kid, b"\x5a" * 16),  # the real key id and a guessed MAC
            (Signer([K2.encode()]).key_id, None),  # a key this cache does not have
        ]
    ):
        marker = tmp_path / f"ran-{n}"
        planted = pickle.dumps({"user": "1", "is_admin": True, "x": _Payload(str(marker))})
        plant(redis_client, urn, planted, envelope.SERIALIZER_PICKLE, mac=mac, kid=kid)
        with cache.enable():
            assert await call(fn, "1") == {"user": "1", "is_admin": False}  # the function's value
        assert not marker.exists()  # no code ran
        raw = redis_client.get(urn)
        assert isinstance(raw, bytes)
        assert envelope.signed_by(Signer([K1.encode()]), urn, raw)  # rewritten, signed
        assert pickle.loads(envelope.decode(raw).payload) == {"user": "1", "is_admin": False}
    assert calls == ["1", "1", "1"]
    assert sample(registry, MISS_REASONS, use_case="Signed", layer="REMOTE", reason="bad_signature") == 3
    with cache.enable():
        assert await call(fn, "1") == {"user": "1", "is_admin": False}
    assert calls == ["1", "1", "1"]  # the rewritten entry is a hit


async def test_a_forged_value_is_not_served_under_json_either(
    make_cache: Maker, registry: CollectorRegistry, redis_client: redis.Redis, is_async: bool, tracked: bool
) -> None:
    cache = make_cache(signing_keys=[K1], serializer=JsonSerializer())
    fn, calls = cached(cache, "Json", is_async, tracked)
    plant(
        redis_client,
        urn_of("Json"),
        b'{"user":"1","is_admin":true}',
        envelope.SERIALIZER_JSON,
        mac=None,
        kid=envelope.NO_KEY_ID,
    )
    with cache.enable():
        assert await call(fn, "1") == {"user": "1", "is_admin": False}
    assert calls == ["1"]
    assert sample(registry, MISS_REASONS, use_case="Json", layer="REMOTE", reason="bad_signature") == 1


async def test_an_entry_copied_to_another_key_is_refused(
    make_cache: Maker, registry: CollectorRegistry, redis_client: redis.Redis, is_async: bool, tracked: bool
) -> None:
    cache = make_cache(signing_keys=[K1])
    fn, calls = cached(cache, "Copy", is_async, tracked)
    with cache.enable():
        assert await call(fn, "1") == {"user": "1", "is_admin": False}
        genuine = redis_client.get(urn_of("Copy", "1"))
        assert isinstance(genuine, bytes)
        if tracked:  # the copy would otherwise fail on the fence before the MAC: share it
            fence = cast(
                "dict[Any, Any]",
                redis_client.hgetall(watermark_key(entity_key("urn:gcache", "user_id", "1"))),
            )
            redis_client.hset(watermark_key(entity_key("urn:gcache", "user_id", "2")), mapping=fence)
        redis_client.set(urn_of("Copy", "2"), genuine)

        assert await call(fn, "2") == {"user": "2", "is_admin": False}  # not user 1's

    assert calls == ["1", "2"]
    assert sample(registry, MISS_REASONS, use_case="Copy", layer="REMOTE", reason="bad_signature") == 1


async def test_keys_rotate_without_a_flag_day(
    make_cache: Maker, redis_client: redis.Redis, is_async: bool, tracked: bool
) -> None:
    """Old processes sign with K1; during the rotation new ones have [K2, K1]; then [K2]."""
    old = make_cache(signing_keys=[K1], metrics_registry=CollectorRegistry())
    rotating = make_cache(signing_keys=[K2, K1], metrics_registry=CollectorRegistry())
    new = make_cache(signing_keys=[K2], metrics_registry=CollectorRegistry())
    on_old, old_calls = cached(old, "Rotate", is_async, tracked)
    on_rotating, rotating_calls = cached(rotating, "Rotate", is_async, tracked)
    on_new, new_calls = cached(new, "Rotate", is_async, tracked)

    with old.enable(), rotating.enable(), new.enable():
        await call(on_old, "1")  # written with K1
        await call(on_rotating, "1")  # a hit: verified with K1
        assert rotating_calls == []
        await call(on_rotating, "2")  # written with K2, its first key
        await call(on_new, "2")  # a hit: K2
        assert new_calls == []
        await call(on_old, "2")  # K1 alone cannot verify K2's entry: a miss, rewritten with K1
        assert old_calls == ["1", "2"]


async def test_without_keys_signed_entries_are_read_and_pickle_is_told_once(
    make_cache: Maker, is_async: bool, tracked: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A process not yet given keys reads what keyed processes write: turning signing on costs
    no hits there. It says, once, what unsigned pickle risks."""
    keyed = make_cache(signing_keys=[K1], metrics_registry=CollectorRegistry())
    plain = make_cache(metrics_registry=CollectorRegistry())
    on_keyed, _ = cached(keyed, "Mixed", is_async, tracked)
    on_plain, plain_calls = cached(plain, "Mixed", is_async, tracked)
    with caplog.at_level(logging.WARNING, logger="gcache"), keyed.enable(), plain.enable():
        await call(on_keyed, "1")
        for _ in range(3):
            assert await call(on_plain, "1") == {"user": "1", "is_admin": False}
    assert plain_calls == []
    told = [r.getMessage() for r in caplog.records if "unsigned" in r.getMessage()]
    assert len(told) == 1
    assert (
        "anyone who can write to that Redis can make every process that reads the entry run code" in told[0]
    )
    assert "signing_keys" in told[0]


async def test_no_pickle_warning_with_keys_or_a_safe_serializer(
    make_cache: Maker, is_async: bool, caplog: pytest.LogCaptureFixture
) -> None:
    keyed = make_cache(signing_keys=[K1], metrics_registry=CollectorRegistry())
    json_only = make_cache(serializer=JsonSerializer(), metrics_registry=CollectorRegistry())
    with caplog.at_level(logging.WARNING, logger="gcache"), keyed.enable(), json_only.enable():
        await call(cached(keyed, "K", is_async, False)[0], "1")
        await call(cached(json_only, "J", is_async, False)[0], "1")
    assert not [r for r in caplog.records if "unsigned" in r.getMessage()]


async def test_an_entry_of_the_previous_format_is_a_miss_and_rewritten(
    make_cache: Maker, registry: CollectorRegistry, redis_client: redis.Redis, is_async: bool, tracked: bool
) -> None:
    cache = make_cache(signing_keys=[K1])
    fn, calls = cached(cache, "Old", is_async, tracked)
    v1 = b"gC\x01\x00\x00" + b"%016d" % server_now(redis_client) + b"\0" * 8 + pickle.dumps({"old": True})
    redis_client.set(urn_of("Old"), v1)
    with cache.enable():
        assert await call(fn, "1") == {"user": "1", "is_admin": False}
        assert await call(fn, "1") == {"user": "1", "is_admin": False}
    assert calls == ["1"]
    assert sample(registry, MISS_REASONS, use_case="Old", layer="REMOTE", reason="version") == 1
    raw = redis_client.get(urn_of("Old"))
    assert isinstance(raw, bytes)
    assert raw[2] == envelope.VERSION


async def test_signed_direct_access_round_trips_and_refuses_a_planted_entry(
    make_cache: Maker, registry: CollectorRegistry, redis_client: redis.Redis, is_async: bool, tracked: bool
) -> None:
    writer = make_cache(signing_keys=[K1], metrics_registry=CollectorRegistry())
    reader_registry = CollectorRegistry()
    reader = make_cache(signing_keys=[K1], metrics_registry=reader_registry)
    key = GCacheKey("user_id", "1", "Direct", invalidation_tracking=tracked, default_config=REMOTE_ONLY)
    fallbacks: list[str] = []

    def fallback() -> Any:
        fallbacks.append("ran")
        return "computed"

    async def afallback() -> Any:
        return fallback()

    async def get(cache: GCache) -> Any:
        with cache.enable():
            if is_async:
                return await cache.aget(key, afallback)
            return cache.get(key, fallback)

    if is_async:
        await writer.aput(key, "put value")
    else:
        writer.put(key, "put value")
    assert await get(reader) == "put value"  # signed by the writer, verified by the reader
    raw = redis_client.get(key.urn)
    assert isinstance(raw, bytes)
    if tracked:  # stamped and fenced by the read the put made first
        fence = redis_client.hgetall(key.watermark_key)
        assert envelope.decode(raw).nonce == fence[b"n"]
        assert envelope.decode(raw).stamp_us > int(fence[b"w"])
    plant(redis_client, key.urn, pickle.dumps("forged"), 0, mac=None, kid=envelope.NO_KEY_ID)
    assert await get(reader) == "computed"
    assert fallbacks == ["ran"]
    assert (
        sample(reader_registry, MISS_REASONS, use_case="Direct", layer="REMOTE", reason="bad_signature") == 1
    )
