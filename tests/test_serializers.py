"""The built-in JSON and msgpack serializers: values round-trip through Redis, and loading a
planted entry runs no code (issue 14), for sync and async use cases."""

from __future__ import annotations

import datetime
import os
import pickle
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
import redis
from prometheus_client import CollectorRegistry

from gcache import CacheLayer, ConfigError, GCache, GCacheKeyConfig, Serializer
from gcache import _envelope as envelope
from gcache._codec import Codec
from gcache.serializers import JsonSerializer, MsgpackSerializer
from gcache.urns import entity_key, value_key
from tests.conftest import sample
from tests.test_gcache import Maker, call, twin

REMOTE_ONLY = GCacheKeyConfig(ttl_sec={CacheLayer.REMOTE: 60}, ramp={CacheLayer.REMOTE: 100})
MISSES = "gcache_miss_counter_total"
MISS_REASONS = "gcache_miss_reason_counter_total"


class _Payload:
    """Unpickling this creates a file: the proof that loading ran code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.mkdir, (self.marker,))


def cached(cache: GCache, use_case: str, is_async: bool, value: Any, **options: Any) -> tuple[Any, list[str]]:
    calls: list[str] = []

    def body(user_id: str) -> Any:
        calls.append(user_id)
        return value

    fn = cache.cached(
        key_type="user_id", id_arg="user_id", use_case=use_case, default_config=REMOTE_ONLY, **options
    )(twin("async" if is_async else "sync", body))
    return fn, calls


@pytest.mark.parametrize("use_orjson", [False, True], ids=["json", "orjson-if-installed"])
async def test_json_values_round_trip_through_redis(
    make_cache: Maker, is_async: bool, use_orjson: bool
) -> None:
    cache = make_cache()
    value = {"name": "Ada", "tags": ["a", "b"], "age": 36, "ratio": 0.5, "ok": True, "none": None}
    fn, calls = cached(cache, "Json", is_async, value, serializer=JsonSerializer(use_orjson=use_orjson))
    with cache.enable():
        assert await call(fn, "1") == value
        assert await call(fn, "1") == value  # from Redis, decoded by JSON
    assert calls == ["1"]


async def test_a_planted_pickle_never_runs_under_a_json_use_case(
    make_cache: Maker, registry: CollectorRegistry, redis_client: redis.Redis, is_async: bool, tmp_path: Path
) -> None:
    cache = make_cache(serializer=JsonSerializer())  # the cache-wide default
    fn, calls = cached(cache, "Safe", is_async, {"is_admin": False})
    urn = value_key(entity_key("urn:gcache", "user_id", "1"), (), "Safe")
    now = time.time_ns() // 1000
    for serializer_id, name in (
        (envelope.SERIALIZER_PICKLE, "as-pickle"),
        (envelope.SERIALIZER_JSON, "as-json"),
    ):
        marker = tmp_path / name
        planted = pickle.dumps({"is_admin": True, "x": _Payload(str(marker))})
        redis_client.set(urn, envelope.encode(planted, serializer_id, 0, now))
        with cache.enable():
            assert await call(fn, "1") == {"is_admin": False}  # the function's value, not the forged one
        assert not marker.exists()  # no code ran
    assert calls == ["1", "1"]
    assert sample(registry, MISS_REASONS, use_case="Safe", layer="REMOTE", reason="serializer_mismatch") == 1
    assert sample(registry, MISS_REASONS, use_case="Safe", layer="REMOTE", reason="undecodable") == 1


async def test_a_use_case_s_own_serializer_wins_over_the_cache_default(
    make_cache: Maker, redis_client: redis.Redis, is_async: bool
) -> None:
    class Upper(JsonSerializer):
        def dump(self, obj: Any) -> bytes:
            return super().dump(obj).upper()

    cache = make_cache(serializer=JsonSerializer())
    own, _ = cached(cache, "Own", is_async, "abc", serializer=Upper())
    default, _ = cached(cache, "Default", is_async, "abc")
    with cache.enable():
        await call(own, "1")
        await call(default, "1")
    stored = {}
    for name in ("Own", "Default"):
        raw = redis_client.get(value_key(entity_key("urn:gcache", "user_id", "1"), (), name))
        assert isinstance(raw, bytes)
        stored[name] = envelope.decode(raw)
    assert stored["Own"].payload == b'"ABC"'
    assert stored["Default"].payload == b'"abc"'


async def test_a_value_json_cannot_hold_is_served_and_counted_not_cached(
    make_cache: Maker, registry: CollectorRegistry, is_async: bool
) -> None:
    cache = make_cache()
    fn, calls = cached(cache, "Sets", is_async, {1, 2}, serializer=JsonSerializer())
    with cache.enable():
        assert await call(fn, "1") == {1, 2}
        assert await call(fn, "1") == {1, 2}
    assert calls == ["1", "1"]
    assert sample(registry, "gcache_error_counter_total", use_case="Sets", error="TypeError") == 2


# -- msgpack -------------------------------------------------------------------------------------


async def test_msgpack_values_round_trip_through_redis_bytes_and_datetimes_included(
    make_cache: Maker, redis_client: redis.Redis, is_async: bool
) -> None:
    cache = make_cache()
    when = datetime.datetime(2026, 12, 3, 13, 0, 0, 123456, tzinfo=datetime.timezone.utc)
    value = {
        "name": "Ada",
        "blob": b"\x00\xff",
        "tags": ["a"],
        "n": 2**40,
        "x": 0.5,
        "none": None,
        "at": when,
    }
    fn, calls = cached(cache, "Msgpack", is_async, value, serializer=MsgpackSerializer(datetimes=True))
    with cache.enable():
        assert await call(fn, "1") == value
        assert await call(fn, "1") == value  # from Redis, decoded by msgpack
    assert calls == ["1"]
    raw = redis_client.get(value_key(entity_key("urn:gcache", "user_id", "1"), (), "Msgpack"))
    assert isinstance(raw, bytes)
    stored = envelope.decode(raw)
    assert stored.serializer_id == envelope.SERIALIZER_MSGPACK
    assert msgpack.unpackb(stored.payload, timestamp=3) == value


async def test_a_planted_pickle_never_runs_under_a_msgpack_use_case(
    make_cache: Maker, registry: CollectorRegistry, redis_client: redis.Redis, is_async: bool, tmp_path: Path
) -> None:
    cache = make_cache(serializer=MsgpackSerializer())
    fn, calls = cached(cache, "SafeMsgpack", is_async, {"is_admin": False})
    urn = value_key(entity_key("urn:gcache", "user_id", "1"), (), "SafeMsgpack")
    marker = tmp_path / "ran"
    planted = pickle.dumps({"is_admin": True, "x": _Payload(str(marker))})
    redis_client.set(urn, envelope.encode(planted, envelope.SERIALIZER_MSGPACK, 0, time.time_ns() // 1000))
    with cache.enable():
        assert await call(fn, "1") == {"is_admin": False}
    assert not marker.exists()
    assert calls == ["1"]
    assert sample(registry, MISS_REASONS, use_case="SafeMsgpack", layer="REMOTE", reason="undecodable") == 1


def test_msgpack_refuses_what_it_cannot_hold_and_int_keys_by_default() -> None:
    serializer = MsgpackSerializer()
    with pytest.raises(TypeError):
        serializer.dump({"at": datetime.datetime.now(datetime.timezone.utc)})  # datetimes=False
    with pytest.raises(TypeError):
        serializer.dump({1, 2})
    assert MsgpackSerializer(default=sorted).load(MsgpackSerializer(default=sorted).dump({2, 1})) == [1, 2]
    with pytest.raises(ValueError, match="map key"):
        serializer.load(msgpack.packb({1: "a"}))
    assert MsgpackSerializer(strict_map_key=False).load(msgpack.packb({1: "a"})) == {1: "a"}


def test_msgpack_serializer_without_msgpack_installed_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("gcache.serializers._msgpack", None)

    with pytest.raises(ConfigError, match=r"pip install 'gcache\[msgpack\]'"):
        MsgpackSerializer()


def test_built_in_serializers_name_themselves_in_the_envelope_and_others_are_custom() -> None:
    class Own(Serializer):
        def dump(self, obj: Any) -> bytes:
            return b""

        def load(self, data: bytes | str) -> Any:
            return None

    assert Codec(JsonSerializer()).serializer_id == envelope.SERIALIZER_JSON
    assert Codec(MsgpackSerializer()).serializer_id == envelope.SERIALIZER_MSGPACK
    assert Codec(Own()).serializer_id == envelope.SERIALIZER_CUSTOM
    assert Codec(None).serializer_id == envelope.SERIALIZER_PICKLE
