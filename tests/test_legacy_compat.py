"""``GCacheConfig(legacy_compat=True)``: the original gcache's keys, entries and watermarks.

What the original's own processes make of them is in ``tests/behaviour/test_rolling_deploy.py``
(the released library, from PyPI) and ``tests/test_original_wire.py`` (its corpus); this file is
what gcache itself stores, serves and refuses in the mode, on the real Redis, sync and async.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry

from gcache import (
    CacheLayer,
    ConfigError,
    Envelope,
    GCache,
    GCacheConfig,
    GCacheKey,
    GCacheKeyConfig,
    JsonSerializer,
    Serializer,
)
from gcache import original_wire as wire
from gcache.serializers import MsgpackSerializer
from tests.conftest import sample

pytestmark = pytest.mark.redis

PREFIX = "urn:legacy"
BOTH = GCacheKeyConfig.enabled(60)


def test_what_legacy_compat_cannot_go_with_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no signature"):
        GCacheConfig(legacy_compat=True, signing_keys=["k" * 16])
    with pytest.raises(ConfigError, match="no signature"):
        GCacheConfig(legacy_compat=True, require_signing=True)
    with pytest.raises(ConfigError, match="key_hash_secret"):
        GCacheConfig(legacy_compat=True, key_hash_secret="s" * 16)
    with pytest.raises(ConfigError, match="max_future_buffer_ms is 3600001"):
        GCacheConfig(legacy_compat=True, max_future_buffer_ms=3_600_001)
    with pytest.raises(ConfigError, match="legacy_compat must be True or False"):
        GCacheConfig(legacy_compat="yes")  # type: ignore[arg-type]


def test_signing_keys_from_the_environment_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GCACHE_SIGNING_KEYS", "k" * 16)
    with pytest.raises(ConfigError, match="GCACHE_SIGNING_KEYS"):
        GCache(GCacheConfig(legacy_compat=True))


def test_envelope_needs_legacy_compat_and_a_serializer(make_cache: Callable[..., GCache]) -> None:
    plain, legacy = make_cache(start_bus=False), make_cache(start_bus=False, legacy_compat=True)
    with pytest.raises(ConfigError, match="needs GCacheConfig\\(legacy_compat=True\\)"):
        plain.cached(key_type="user", id_arg="uid", envelope=Envelope.JSON)
    with pytest.raises(ConfigError, match="needs a serializer returning str"):
        legacy.cached(key_type="user", id_arg="uid", envelope="json")
    with pytest.raises(ConfigError, match="envelope must be one of 'pickle', 'json', 'proto'"):
        legacy.cached(key_type="user", id_arg="uid", envelope="xml")
    plain.cached(key_type="user", id_arg="uid", envelope="pickle")  # the default, in any mode


def _decorate(cache: GCache, is_async: bool, calls: list[str], **options: Any) -> Callable[..., Any]:
    decorate = cache.cached(key_type="user", id_arg="uid", default_config=BOTH, **options)
    if is_async:

        async def read_async(uid: str, view: str = "full") -> dict[str, str]:
            calls.append(uid)
            return {"id": uid, "view": view}

        return decorate(read_async)

    def read_sync(uid: str, view: str = "full") -> dict[str, str]:
        calls.append(uid)
        return {"id": uid, "view": view}

    return decorate(read_sync)


async def _call(function: Callable[..., Any], is_async: bool, *args: Any, **kwargs: Any) -> Any:
    return await function(*args, **kwargs) if is_async else function(*args, **kwargs)


@pytest.mark.parametrize("tracked", [False, True], ids=["untracked", "tracked"])
async def test_keys_are_the_original_s(
    make_cache: Callable[..., GCache], redis_client: redis.Redis, is_async: bool, tracked: bool
) -> None:
    cache = make_cache(legacy_compat=True, urn_prefix=PREFIX)
    calls: list[str] = []
    read = _decorate(cache, is_async, calls, use_case="GetUser", track_for_invalidation=tracked)
    with cache.enable():
        await _call(read, is_async, "a:b}c", view="short")  # parts not escaped, as the original's

    expected = wire.value_key(PREFIX, "user", "a:b}c", [("view", "short")], "GetUser", tracked=tracked)
    assert redis_client.keys(f"*{PREFIX}*#GetUser") == [expected.encode()]
    assert expected.startswith("{") == tracked


@pytest.mark.parametrize(
    ("envelope", "serializer"),
    [(Envelope.PICKLE, None), (Envelope.JSON, JsonSerializer()), (Envelope.PROTO, MsgpackSerializer())],
    ids=["pickle", "json", "proto"],
)
async def test_each_envelope_is_stored_as_the_original_frames_it_and_served_from_redis(
    make_cache: Callable[..., GCache],
    redis_client: redis.Redis,
    registry: CollectorRegistry,
    is_async: bool,
    envelope: Envelope,
    serializer: Serializer | None,
) -> None:
    cache = make_cache(legacy_compat=True, urn_prefix=PREFIX)
    calls: list[str] = []
    options: dict[str, Any] = {"envelope": envelope, "serializer": serializer, "track_for_invalidation": True}
    read = _decorate(cache, is_async, calls, use_case="Frames", **options)
    with cache.enable():
        first = await _call(read, is_async, "u1")
        second = await _call(read, is_async, "u1")

    assert first == second == {"id": "u1", "view": "full"}
    assert calls == ["u1"]  # the second from REMOTE: tracked use cases keep nothing in LOCAL
    assert sample(registry, "gcache_disabled_counter_total", layer="LOCAL", reason="legacy_compat") == 2
    raw = redis_client.get("{" + f"{PREFIX}:user:u1" + "}?view=full#Frames")
    assert isinstance(raw, bytes)
    entry = wire.decode(raw, allow_pickle=True)
    assert entry.framing is envelope
    payload = entry.payload if serializer is None else serializer.load(entry.payload)
    assert payload == {"id": "u1", "view": "full"}
    if entry.expires_at_ms is not None:
        assert entry.expires_at_ms - entry.created_at_ms == 60_000


async def test_an_invalidation_writes_the_original_s_watermark_and_refuses_what_came_before(
    make_cache: Callable[..., GCache], redis_client: redis.Redis, is_async: bool
) -> None:
    cache = make_cache(legacy_compat=True, urn_prefix=PREFIX)
    calls: list[str] = []
    read = _decorate(cache, is_async, calls, use_case="GetUser", track_for_invalidation=True)
    with cache.enable():
        await _call(read, is_async, "u2")
        if is_async:
            await cache.ainvalidate("user", "u2", future_buffer_ms=60_000)
        else:
            cache.invalidate("user", "u2", future_buffer_ms=60_000)
        await _call(read, is_async, "u2")
        await _call(read, is_async, "u2")  # within the buffer: nothing is stored

    watermark = wire.parse_watermark(redis_client.get("{" + f"{PREFIX}:user:u2" + "}#watermark"))  # type: ignore[arg-type]
    assert calls == ["u2", "u2", "u2"]
    raw = redis_client.get("{" + f"{PREFIX}:user:u2" + "}?view=full#GetUser")
    assert isinstance(raw, bytes)
    assert watermark is not None
    assert wire.decode(raw, allow_pickle=True).created_at_ms <= watermark  # the first call's, refused


class LoneSurrogate(Serializer):
    """Text the original's clients would read as two different values (Python keeps the lone
    surrogate, Go substitutes U+FFFD): refused by the JSON envelope."""

    def dump(self, obj: Any) -> str:
        return '{"a":"\\ud800"}'

    def load(self, data: bytes | str) -> Any:
        return data


async def test_a_value_the_envelope_refuses_is_served_and_not_stored(
    make_cache: Callable[..., GCache], redis_client: redis.Redis, registry: CollectorRegistry, is_async: bool
) -> None:
    cache = make_cache(legacy_compat=True, urn_prefix=PREFIX)
    calls: list[str] = []
    read = _decorate(
        cache, is_async, calls, use_case="Refused", serializer=LoneSurrogate(), envelope=Envelope.JSON
    )
    with cache.enable():
        assert await _call(read, is_async, "u3") == {"id": "u3", "view": "full"}

    assert redis_client.keys(f"*{PREFIX}:user:u3*") == []
    assert sample(registry, "gcache_write_counter_total", layer="REMOTE", result="unencodable") == 1
    assert sample(registry, "gcache_error_counter_total") == 0


async def test_direct_access_and_flush_use_the_original_s_keys(
    make_cache: Callable[..., GCache], redis_client: redis.Redis
) -> None:
    cache = make_cache(legacy_compat=True, urn_prefix=PREFIX)
    config = GCacheKeyConfig(ttl_sec={CacheLayer.REMOTE: 60}, ramp={CacheLayer.REMOTE: 100})
    untracked = GCacheKey("user", "u4", "Direct", args=[("b", "2")], default_config=config)
    tracked = GCacheKey("user", "u4", "DirectTracked", invalidation_tracking=True, default_config=config)
    await cache.aput(untracked, {"v": 1})
    await cache.aput(tracked, {"v": 2})

    assert (
        redis_client.exists(f"{PREFIX}:user:u4?b=2#Direct", "{" + f"{PREFIX}:user:u4" + "}#DirectTracked")
        == 2
    )

    async def uncached() -> Any:
        raise AssertionError("served from Redis, not by the fallback")

    with cache.enable():
        assert await cache.aget(untracked, uncached) == {"v": 1}
        assert await cache.aget(tracked, uncached) == {"v": 2}
    assert await cache.adelete(untracked)
    assert await cache.aflushall() >= 1
    assert redis_client.keys(f"*{PREFIX}:*") == []
