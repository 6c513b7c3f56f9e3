"""The versioned REMOTE envelope (gcache._envelope) and the value codec (gcache._codec)."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
from collections.abc import Callable
from typing import Any, cast

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from gcache import CacheLayer, ConfigError, GCache, GCacheKeyConfig, Serializer
from gcache import _envelope as envelope
from gcache._codec import Codec
from gcache.signing import Signer
from tests.conftest import sample

NONCE = b"\x01\x02\x03\x04\xfe\xfd\xfc\x00"
REMOTE_ONLY = GCacheKeyConfig(ttl_sec={CacheLayer.REMOTE: 60}, ramp={CacheLayer.REMOTE: 100})


def stored(client: redis.Redis, key: str) -> bytes:
    """The raw bytes Redis holds at ``key`` (which must exist)."""
    raw = client.get(key)
    assert isinstance(raw, bytes), f"{key!r} holds {raw!r}"
    return raw


class JsonStrSerializer(Serializer):
    """A sync serializer that produces str, so the envelope must carry FLAG_STR."""

    def __init__(self) -> None:
        self.loaded: list[Any] = []

    def dump(self, obj: Any) -> str:
        return json.dumps(obj)

    def load(self, data: bytes | str) -> Any:
        self.loaded.append(data)
        return json.loads(data)


class AsyncBytesSerializer(Serializer):
    """An async serializer producing bytes."""

    def __init__(self) -> None:
        self.loaded: list[Any] = []

    async def dump(self, obj: Any) -> bytes:
        await asyncio.sleep(0)
        return json.dumps(obj).encode()

    async def load(self, data: bytes | str) -> Any:
        await asyncio.sleep(0)
        self.loaded.append(data)
        return json.loads(data)


class IntSerializer(Serializer):
    """Breaks the contract: dump returns an int."""

    def dump(self, obj: Any) -> Any:
        return 42

    def load(self, data: bytes | str) -> Any:
        return data


# -- envelope ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("serializer_id", "flags", "stamp", "nonce", "payload"),
    [
        (envelope.SERIALIZER_PICKLE, 0, 0, envelope.NO_NONCE, b""),
        (envelope.SERIALIZER_PICKLE, 0, 1_700_000_000_123_456, NONCE, pickle.dumps({"a": 1})),
        (envelope.SERIALIZER_CUSTOM, envelope.FLAG_STR, 9_999_999_999_999_999, NONCE, "é✓".encode()),
        (envelope.SERIALIZER_CUSTOM, 0, 1, b"\0" * 7 + b"\xff", b"gC\x01" * 100),
    ],
)
def test_envelope_round_trip_keeps_every_header_field(
    serializer_id: int, flags: int, stamp: int, nonce: bytes, payload: bytes
) -> None:
    raw = envelope.encode(payload, serializer_id, flags, stamp, nonce)

    assert len(raw) == envelope.HEADER_SIZE + len(payload)
    assert raw[:2] == b"gC"
    assert raw[2] == 2
    assert raw[3] == serializer_id
    assert raw[4] == flags
    assert raw[5:21] == b"%016d" % stamp
    assert raw[21:29] == nonce
    assert raw[29:49] == b"\0" * 20  # unsigned: no key id, no MAC
    decoded = envelope.decode(raw)
    assert decoded == envelope.Envelope(serializer_id, flags, stamp, nonce, envelope.NO_KEY_ID, payload)


def test_envelope_encode_defaults_to_zero_stamp_and_no_nonce() -> None:
    decoded = envelope.decode(envelope.encode(b"xyz", envelope.SERIALIZER_PICKLE))

    assert decoded.stamp_us == 0
    assert decoded.nonce == envelope.NO_NONCE
    assert decoded.flags == 0
    assert decoded.payload == b"xyz"


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"x",
        b"g",
        b"hello world",
        os.urandom(8),
        b"\x80\x05" + os.urandom(60),  # a bare pickle, as another library would store it
        b"GC" + envelope.encode(b"p", 0)[2:],  # wrong-case magic
    ],
)
def test_decode_rejects_bytes_without_magic_as_foreign(raw: bytes) -> None:
    with pytest.raises(envelope.EnvelopeError) as info:
        envelope.decode(raw)
    assert info.value.reason == "foreign"


def test_decode_rejects_random_bytes_as_foreign() -> None:
    for _ in range(200):
        raw = os.urandom(64)
        if raw[:2] == b"gC":
            continue
        with pytest.raises(envelope.EnvelopeError) as info:
            envelope.decode(raw)
        assert info.value.reason == "foreign"


@pytest.mark.parametrize("version", [0, 1, 3, 255])
def test_decode_rejects_other_format_version_as_version(version: int) -> None:
    raw = bytearray(envelope.encode(b"payload", 0, 0, 123, NONCE))
    raw[2] = version

    with pytest.raises(envelope.EnvelopeError) as info:
        envelope.decode(bytes(raw))
    assert info.value.reason == "version"


@pytest.mark.parametrize(
    "stamp",
    [b"000000000000012x", b"               1", b"-000000000000001", b"\xff" * 16, b"00000000000001.5"],
)
def test_decode_rejects_bad_stamp_digits_as_corrupt(stamp: bytes) -> None:
    raw = bytearray(envelope.encode(b"payload", 0, 0, 123, NONCE))
    raw[5:21] = stamp

    with pytest.raises(envelope.EnvelopeError) as info:
        envelope.decode(bytes(raw))
    assert info.value.reason == "corrupt"


def test_decode_reads_a_version_1_entry_of_any_length_as_version() -> None:
    # Version 1 had a 29-byte header and no MAC: an entry written by an older release.
    for raw in (b"gC\x01\x00\x00" + b"%016d" % 5 + b"\0" * 8 + b"\x80", b"gC\x01"):
        with pytest.raises(envelope.EnvelopeError) as info:
            envelope.decode(raw)
        assert info.value.reason == "version"


@pytest.mark.parametrize("length", [3, 5, 20, 28, 48])
def test_decode_rejects_truncated_header_as_corrupt(length: int) -> None:
    raw = envelope.encode(b"", 0, 0, 123, NONCE)[:length]

    with pytest.raises(envelope.EnvelopeError) as info:
        envelope.decode(raw)
    assert info.value.reason == "corrupt"


def test_decode_accepts_exact_header_with_empty_payload() -> None:
    raw = envelope.encode(b"", envelope.SERIALIZER_CUSTOM, envelope.FLAG_STR, 7, NONCE)

    assert len(raw) == envelope.HEADER_SIZE
    assert envelope.decode(raw) == envelope.Envelope(1, 1, 7, NONCE, envelope.NO_KEY_ID, b"")


def _framed(draw: st.DrawFn) -> bytes:
    """An envelope with any header fields, maybe one byte changed, maybe cut short."""
    raw = bytearray(
        envelope.encode(
            draw(st.binary(max_size=20)),
            draw(st.sampled_from([envelope.SERIALIZER_PICKLE, envelope.SERIALIZER_CUSTOM, 7])),
            draw(st.sampled_from([0, envelope.FLAG_STR, 2])),
            draw(st.integers(min_value=0, max_value=10**16 - 1)),
            draw(st.sampled_from([envelope.NO_NONCE, NONCE])),
        )
    )
    if draw(st.booleans()):
        raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
    return bytes(raw[: draw(st.integers(0, len(raw)))] if draw(st.booleans()) else raw)


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.binary(max_size=40), st.composite(_framed)()))
def test_untracked_pickle_takes_exactly_what_decode_reads_as_a_plain_pickle(raw: bytes) -> None:
    """The hit's shortcut accepts no entry that ``decode`` refuses, and misses none it accepts."""
    try:
        read: envelope.Envelope | None = envelope.decode(raw)
    except envelope.EnvelopeError:
        read = None
    plain = read is not None and read.serializer_id == envelope.SERIALIZER_PICKLE and read.flags == 0
    assert envelope.untracked_pickle(raw, "{urn:gcache:user_id:1}#UC") == (
        read.payload if plain and read is not None else None
    )


SIGNER = Signer([b"envelope-test-key-0123456789"])


def _signed_framed(draw: st.DrawFn) -> bytes:
    """A signed envelope, maybe one byte changed, maybe cut short."""
    raw = bytearray(
        envelope.encode(
            draw(st.binary(max_size=20)),
            draw(st.sampled_from([envelope.SERIALIZER_PICKLE, envelope.SERIALIZER_CUSTOM])),
            draw(st.sampled_from([0, envelope.FLAG_STR])),
            draw(st.integers(min_value=0, max_value=10**16 - 1)),
            key="{urn:gcache:user_id:1}#UC",
            signer=SIGNER,
        )
    )
    if draw(st.booleans()):
        raw[draw(st.integers(0, len(raw) - 1))] ^= draw(st.integers(1, 255))
    return bytes(raw[: draw(st.integers(0, len(raw)))] if draw(st.booleans()) else raw)


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.composite(_framed)(), st.composite(_signed_framed)()))
def test_signed_pickle_takes_exactly_what_decode_and_the_mac_accept_as_a_plain_pickle(raw: bytes) -> None:
    key = "{urn:gcache:user_id:1}#UC"
    try:
        read: envelope.Envelope | None = envelope.decode(raw)
    except envelope.EnvelopeError:
        read = None
    plain = (
        read is not None
        and read.serializer_id == envelope.SERIALIZER_PICKLE
        and read.flags == 0
        and envelope.signed_by(SIGNER, key, raw)
    )
    assert envelope.signed_pickle(SIGNER, raw, key) == (read.payload if plain and read is not None else None)


def test_untracked_pickle_of_nothing_stored_is_none() -> None:
    assert envelope.untracked_pickle(None, "k") is None
    assert envelope.signed_pickle(SIGNER, None, "k") is None


def test_envelope_error_carries_reason_as_message() -> None:
    error = envelope.EnvelopeError("corrupt")

    assert error.reason == "corrupt"
    assert str(error) == "corrupt"


# -- codec ---------------------------------------------------------------------------------------


def _through_envelope(payload: bytes, serializer_id: int, flags: int) -> tuple[bytes, int]:
    """The payload and flags as a read finds them, framed and unframed."""
    read = envelope.decode(envelope.encode(payload, serializer_id, flags, 1, NONCE))
    return read.payload, read.flags


@pytest.mark.parametrize("value", [None, 0, "text", b"bytes", {"a": [1, 2.5, None]}, (1, "x"), {1, 2}])
async def test_codec_pickle_round_trips_values_sync_and_async(value: Any) -> None:
    codec = Codec(None)
    assert codec.serializer_id == envelope.SERIALIZER_PICKLE
    assert codec.is_async is False

    payload, flags = codec.dump(value)
    assert flags == 0
    assert pickle.loads(payload) == value
    assert codec.load(*_through_envelope(payload, codec.serializer_id, flags)) == value

    apayload, aflags = await codec.adump(value)
    assert (apayload, aflags) == (payload, flags)
    assert await codec.aload(*_through_envelope(apayload, codec.serializer_id, aflags)) == value


async def test_codec_str_serializer_sets_flag_str_and_load_gets_str() -> None:
    serializer = JsonStrSerializer()
    codec = Codec(serializer)
    assert codec.serializer_id == envelope.SERIALIZER_CUSTOM
    assert codec.is_async is False
    value = {"name": "Zoë", "n": 3}

    payload, flags = codec.dump(value)
    assert flags & envelope.FLAG_STR
    assert payload == json.dumps(value).encode("utf-8")
    assert codec.load(*_through_envelope(payload, codec.serializer_id, flags)) == value
    assert serializer.loaded == [json.dumps(value)]
    assert isinstance(serializer.loaded[0], str)

    apayload, aflags = await codec.adump(value)
    assert (apayload, aflags) == (payload, flags)
    assert await codec.aload(*_through_envelope(apayload, codec.serializer_id, aflags)) == value
    assert isinstance(serializer.loaded[1], str)


async def test_codec_bytes_serializer_leaves_flag_clear_and_load_gets_bytes() -> None:
    class Raw(Serializer):
        def __init__(self) -> None:
            self.loaded: list[Any] = []

        def dump(self, obj: Any) -> Any:
            return bytearray(obj.encode())

        def load(self, data: bytes | str) -> Any:
            self.loaded.append(data)
            return data.decode() if isinstance(data, bytes) else data

    serializer = Raw()
    codec = Codec(serializer)

    payload, flags = codec.dump("abc")
    assert (payload, flags) == (b"abc", 0)
    assert type(payload) is bytes
    assert codec.load(*_through_envelope(payload, codec.serializer_id, flags)) == "abc"
    assert serializer.loaded == [b"abc"]


async def test_codec_async_serializer_is_awaited() -> None:
    serializer = AsyncBytesSerializer()
    codec = Codec(serializer)
    assert codec.is_async is True
    assert codec.serializer_id == envelope.SERIALIZER_CUSTOM

    payload, flags = await codec.adump([1, "two"])
    assert (payload, flags) == (b'[1, "two"]', 0)
    assert await codec.aload(*_through_envelope(payload, codec.serializer_id, flags)) == [1, "two"]
    assert serializer.loaded == [b'[1, "two"]']


async def test_codec_serializer_returning_non_bytes_raises_type_error() -> None:
    codec = Codec(IntSerializer())

    with pytest.raises(TypeError, match="bytes or str"):
        codec.dump("x")
    with pytest.raises(TypeError, match="bytes or str"):
        await codec.adump("x")


class _OnlyDump:
    def dump(self, obj: Any) -> bytes:
        return b""


class _LoadNotCallable:
    load = None

    def dump(self, obj: Any) -> bytes:
        return b""


@pytest.mark.parametrize(
    "bad",
    [object(), "pickle", _OnlyDump(), _LoadNotCallable()],
    ids=["object", "str", "only_dump", "load_not_callable"],
)
def test_codec_serializer_without_dump_and_load_is_config_error(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"dump\(\) and load\(\)"):
        Codec(cast(Any, bad))


def test_cached_with_serializer_without_dump_and_load_is_config_error() -> None:
    cache = GCache()
    try:
        with pytest.raises(ConfigError):

            @cache.cached(key_type="k", id_arg="i", use_case="BadSerializer", serializer=cast(Any, object()))
            def f(i: str) -> str:
                return i
    finally:
        cache.close()


# -- through a cache, on the real Redis ---------------------------------------------------------


async def test_str_serializer_entry_in_redis_carries_custom_id_and_flag_str(
    make_cache: Callable[..., GCache], redis_client: redis.Redis, registry: CollectorRegistry
) -> None:
    serializer = JsonStrSerializer()
    writer, reader = make_cache(), make_cache(metrics_registry=CollectorRegistry())
    calls: list[str] = []

    def define(cache: GCache) -> Callable[[str], Any]:
        @cache.cached(
            key_type="doc",
            id_arg="i",
            use_case="Doc",
            track_for_invalidation=True,
            default_config=REMOTE_ONLY,
            serializer=serializer,
        )
        async def doc(i: str) -> dict[str, Any]:
            calls.append(i)
            return {"id": i, "title": "ünïcode"}

        return doc

    write_doc, read_doc = define(writer), define(reader)
    with writer.enable(), reader.enable():
        assert await write_doc("7") == {"id": "7", "title": "ünïcode"}
        assert await read_doc("7") == {"id": "7", "title": "ünïcode"}
    assert calls == ["7"]

    raw = stored(redis_client, "{urn:gcache:doc:7}#Doc")
    decoded = envelope.decode(raw)
    assert decoded.serializer_id == envelope.SERIALIZER_CUSTOM
    assert decoded.flags == envelope.FLAG_STR
    assert decoded.nonce == redis_client.hget("{urn:gcache:doc:7}#watermark", "n")
    assert json.loads(decoded.payload.decode()) == {"id": "7", "title": "ünïcode"}
    assert serializer.loaded == [json.dumps({"id": "7", "title": "ünïcode"})]
    assert sample(registry, "gcache_miss_counter_total", use_case="Doc", layer="REMOTE") == 1


async def test_async_serializer_round_trips_through_redis_for_sync_and_async_functions(
    make_cache: Callable[..., GCache], redis_client: redis.Redis
) -> None:
    serializer = AsyncBytesSerializer()
    cache = make_cache()
    calls: list[str] = []

    @cache.cached(
        key_type="doc", id_arg="i", use_case="AsyncSer", default_config=REMOTE_ONLY, serializer=serializer
    )
    async def adoc(i: str) -> list[str]:
        calls.append(i)
        return ["a", i]

    @cache.cached(
        key_type="doc", id_arg="i", use_case="SyncSer", default_config=REMOTE_ONLY, serializer=serializer
    )
    def sdoc(i: str) -> list[str]:
        calls.append(i)
        return ["s", i]

    with cache.enable():
        assert await adoc("1") == ["a", "1"]
        assert await adoc("1") == ["a", "1"]
        assert sdoc("1") == ["s", "1"]
        assert sdoc("1") == ["s", "1"]
    assert calls == ["1", "1"]
    assert serializer.loaded == [b'["a", "1"]', b'["s", "1"]']
    for key, payload in (
        ("{urn:gcache:doc:1}#AsyncSer", b'["a", "1"]'),
        ("{urn:gcache:doc:1}#SyncSer", b'["s", "1"]'),
    ):
        raw = stored(redis_client, key)
        decoded = envelope.decode(raw)
        assert (decoded.serializer_id, decoded.flags, decoded.payload) == (
            envelope.SERIALIZER_CUSTOM,
            0,
            payload,
        )
