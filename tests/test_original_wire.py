"""``gcache.original_wire`` against the original gcache: its conformance corpus, then the library itself.

The corpus (``envelope_vectors.json`` of the released 3.0.0 wheel, fetched by ``tests._pypi``)
is asserted section by section, with its counts, so a section skipped by mistake fails. The
round trips run the released 3.0.0 and 2.0.5 in a subprocess each (``tests/_original_worker.py``):
what one library writes, the other reads as the same entry, and the two agree on what is served.
"""

from __future__ import annotations

import base64
import json
import pickle
import random
import subprocess
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gcache._internal.redis_cache import RedisValue
from gcache.original_wire import (
    ENVELOPE_VERSION,
    INT64_MAX,
    MAX_FUTURE_BUFFER_SECONDS,
    MAX_JSON_NESTING,
    MAX_SAFE_INTEGER,
    MAX_TRACKED_TTL_SECONDS,
    WATERMARK_SUPPRESS_ALL,
    WATERMARK_TTL_SECONDS,
    Decoded,
    DecodeError,
    EncodeError,
    Envelope,
    ReservedUseCase,
    UnhashableComponent,
    decode,
    encode_json,
    encode_pickle,
    encode_proto,
    encode_watermark,
    entity_key,
    hash_component,
    may_write_back,
    parse_watermark,
    payload_divergence,
    refusal,
    value_key,
    watermark_degradation,
    watermark_key,
)
from tests._pypi import original_dist, original_python

CORPUS: dict[str, Any] = json.loads(
    (original_dist("3.0.0") / "gcache" / "conformance" / "envelope_vectors.json").read_text(encoding="utf-8")
)
WORKER = Path(__file__).with_name("_original_worker.py")


def _cases(section: dict[str, Any], key: str = "name") -> pytest.MarkDecorator:
    return pytest.mark.parametrize("case", section["cases"], ids=[str(c[key]) for c in section["cases"]])


def _json_envelope(created: str, expires: str, payload: str = '{"a":1}') -> bytes:
    """A JSON envelope with the timestamps spelled as given, which no encoder would write."""
    body = json.dumps(payload)
    stamps = f'"createdAtMs":{created},"expiresAtMs":{expires}'
    return f'{{"version":1,{stamps},"encoding":"utf8","payload":{body}}}'.encode()


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _proto(*fields: tuple[int, int | bytes]) -> bytes:
    """PROTO bytes from (field, value) in the order given: varints for ints, length-delimited for bytes."""
    out = b""
    for field, value in fields:
        if isinstance(value, bytes):
            out += _varint(field << 3 | 2) + _varint(len(value)) + value
        else:
            out += _varint(field << 3) + _varint(value)
    return out


# --- the corpus ------------------------------------------------------------------------------


def test_corpus_sections_and_counts() -> None:
    """Every section is asserted below, and each holds as many cases as it says."""
    assert set(CORPUS) == {
        "$comment",
        "envelopeVersion",
        "vectorCount",
        "vectors",
        "keyRendering",
        "argOrdering",
        "watermarkVsEnvelope",
        "hashedComponents",
        "protoEnvelope",
        "watermarkTiming",
        "payloadDivergence",
        "futureCreatedAt",
    }
    assert CORPUS["envelopeVersion"] == ENVELOPE_VERSION
    assert CORPUS["vectorCount"] == len(CORPUS["vectors"]) == 19
    divergence = CORPUS["payloadDivergence"]
    assert divergence["caseCount"] == len(divergence["cases"]) == 11
    assert divergence["nesting"]["caseCount"] == len(divergence["nesting"]["cases"]) == 6
    assert CORPUS["watermarkVsEnvelope"]["caseCount"] == len(CORPUS["watermarkVsEnvelope"]["cases"]) == 3
    assert CORPUS["futureCreatedAt"]["caseCount"] == len(CORPUS["futureCreatedAt"]["cases"]) == 4
    assert len(CORPUS["keyRendering"]["cases"]) == 3
    assert len(CORPUS["argOrdering"]["cases"]) == 4
    assert len(CORPUS["hashedComponents"]["cases"]) == 5
    assert len(CORPUS["protoEnvelope"]["rejects"]) == 8


@pytest.mark.parametrize("vector", CORPUS["vectors"], ids=[v["name"] for v in CORPUS["vectors"]])
@pytest.mark.parametrize("allow_pickle", [False, True])
def test_vector(vector: dict[str, Any], allow_pickle: bool) -> None:
    data = vector["envelope"].encode("utf-8")
    if vector["expect"] == "reject":
        with pytest.raises(DecodeError):
            decode(data, allow_pickle=allow_pickle)
        return
    assert vector["expect"] == "accept"
    expected = vector["decoded"]
    decoded = decode(data, allow_pickle=allow_pickle)
    assert decoded == Decoded(
        created_at_ms=expected["createdAtMs"],
        expires_at_ms=expected["expiresAtMs"],
        payload=expected["payload"],
        framing=Envelope.JSON,
    )
    assert type(decoded.created_at_ms) is int
    assert type(decoded.expires_at_ms) is int


@_cases(CORPUS["keyRendering"])
def test_key_rendering(case: dict[str, Any]) -> None:
    rendered = entity_key(case["urnPrefix"], case["keyType"], case["id"], tracked=False)
    assert rendered == case["python"]
    assert (
        entity_key(case["urnPrefix"], case["keyType"], case["id"], tracked=True) == "{" + case["python"] + "}"
    )
    assert (
        watermark_key(case["urnPrefix"], case["keyType"], case["id"]) == "{" + case["python"] + "}#watermark"
    )


@_cases(CORPUS["argOrdering"])
def test_arg_ordering(case: dict[str, Any]) -> None:
    args = [(name, value) for name, value in case["args"]]
    rendered = value_key(case["urnPrefix"], case["keyType"], case["id"], args, case["useCase"], tracked=False)
    assert rendered == case["python"]
    tracked = value_key(case["urnPrefix"], case["keyType"], case["id"], args, case["useCase"], tracked=True)
    head, _, rest = case["python"].partition("?")
    assert tracked == "{" + head + "}?" + rest


def test_hashed_components_algorithm() -> None:
    assert (CORPUS["hashedComponents"]["algorithm"], CORPUS["hashedComponents"]["encoding"]) == (
        "sha256",
        "hex-lower",
    )


@_cases(CORPUS["hashedComponents"], key="digest")
def test_hashed_component(case: dict[str, Any]) -> None:
    assert hash_component(case["input"]) == case["digest"]


PROTO = CORPUS["protoEnvelope"]
CANONICAL = PROTO["canonical"]
CANONICAL_BYTES = base64.b64decode(CANONICAL["envelopeBase64"])


def test_proto_canonical_both_ways() -> None:
    payload = base64.b64decode(CANONICAL["payloadBase64"])
    ttl_sec = (CANONICAL["expiresAtMs"] - CANONICAL["createdAtMs"]) // 1000
    encoded = encode_proto(CANONICAL["createdAtMs"], ttl_sec, payload)
    assert encoded == CANONICAL_BYTES
    assert len(encoded) == CANONICAL["envelopeLength"]
    assert decode(CANONICAL_BYTES, allow_pickle=False) == Decoded(
        CANONICAL["createdAtMs"], CANONICAL["expiresAtMs"], payload, Envelope.PROTO
    )


def test_proto_first_byte_range() -> None:
    """Every first byte in the range reaches the PROTO decoder; none outside does, but ``{`` and 0x80."""
    low, high = PROTO["firstByteRange"]["min"], PROTO["firstByteRange"]["max"]
    assert (low, high) == (0x08, 0x75)
    assert (PROTO["otherFramings"]["json"], PROTO["otherFramings"]["pickle"]) == (0x7B, 0x80)
    assert encode_json(1, 1, "x")[0] == 0x7B
    assert encode_pickle(1, "x")[0] == 0x80
    assert low <= CANONICAL_BYTES[0] <= high
    expected = decode(CANONICAL_BYTES, allow_pickle=False)
    skippable = {0: b"\x00", 1: bytes(8), 2: b"\x00", 5: bytes(4)}
    for first in range(low, high + 1):
        field, wire = first >> 3, first & 7
        if field > 4 and wire in skippable:
            # An unknown field in front of the canonical entry is skipped, so it decodes.
            assert decode(bytes([first]) + skippable[wire] + CANONICAL_BYTES, allow_pickle=False) == expected
        elif wire in (3, 4, 6, 7):
            with pytest.raises(DecodeError, match="wire type"):
                decode(bytes([first]) + CANONICAL_BYTES, allow_pickle=False)
    for first in set(range(256)) - set(range(low, high + 1)) - {0x7B, 0x80}:
        with pytest.raises(DecodeError, match="no framing"):
            decode(bytes([first]) + CANONICAL_BYTES, allow_pickle=True)


@pytest.mark.parametrize("case", PROTO["rejects"], ids=[r["name"] for r in PROTO["rejects"]])
def test_proto_reject(case: dict[str, Any]) -> None:
    with pytest.raises(DecodeError):
        decode(base64.b64decode(case["envelopeBase64"]), allow_pickle=True)


@_cases(CORPUS["watermarkVsEnvelope"])
def test_watermark_vs_envelope(case: dict[str, Any]) -> None:
    assert parse_watermark(case["raw"].encode("ascii")) == case["pythonParsed"]
    envelope = _json_envelope(case["raw"], case["raw"])
    if case["envelopeAccepts"]:
        assert decode(envelope, allow_pickle=False).created_at_ms == int(case["raw"])
    else:
        with pytest.raises(DecodeError):
            decode(envelope, allow_pickle=False)


def test_watermark_timing() -> None:
    timing = CORPUS["watermarkTiming"]
    assert timing["watermarkTtlSeconds"] == WATERMARK_TTL_SECONDS
    assert timing["maxTrackedTtlSeconds"] == MAX_TRACKED_TTL_SECONDS
    assert timing["maxFutureBufferSeconds"] == MAX_FUTURE_BUFFER_SECONDS
    assert MAX_TRACKED_TTL_SECONDS + MAX_FUTURE_BUFFER_SECONDS <= WATERMARK_TTL_SECONDS


def _assert_divergence(payload: str, expect: str) -> None:
    """Refused on write in both framings, and on read when a foreign writer stored it anyway."""
    now = time.time() * 1000
    read = decode(_json_envelope(str(int(now)), str(int(now) + 60_000), payload), allow_pickle=False)
    raw = payload.encode("utf-8")
    proto = _proto((1, 1), (2, int(now)), (3, int(now) + 60_000), (4, raw))
    verdicts = [
        refusal(d, now_ms=now, tracked=t, watermark_ms=None)
        for d in (read, decode(proto, allow_pickle=False))
        for t in (False, True)
    ]
    if expect == "reject":
        assert payload_divergence(payload) is not None
        assert payload_divergence(raw) is not None
        with pytest.raises(EncodeError):
            encode_json(int(now), 60, payload)
        with pytest.raises(EncodeError):
            encode_proto(int(now), 60, raw)
        assert verdicts == ["divergent_payload_encoding"] * 4
    else:
        assert expect == "accept"
        assert payload_divergence(payload) is None
        assert payload_divergence(raw) is None
        assert decode(encode_json(int(now), 60, payload), allow_pickle=False).payload == payload
        assert decode(encode_proto(int(now), 60, raw), allow_pickle=False).payload == raw
        assert verdicts == [None] * 4


@_cases(CORPUS["payloadDivergence"])
def test_payload_divergence(case: dict[str, Any]) -> None:
    _assert_divergence(case["payload"], case["expect"])


NESTING = CORPUS["payloadDivergence"]["nesting"]


@_cases(NESTING, key="depth")
def test_payload_divergence_nesting(case: dict[str, Any]) -> None:
    assert NESTING["maxNesting"] == MAX_JSON_NESTING
    assert NESTING["payloadTemplate"] == "'['*depth + '\"\\\\ud800\"' + ']'*depth"
    depth = case["depth"]
    payload = "[" * depth + '"\\ud800"' + "]" * depth
    _assert_divergence(payload, case["expect"])
    expected = "lone_surrogate_escape" if depth <= MAX_JSON_NESTING else "nesting_beyond_limit"
    assert payload_divergence(payload) == expected


@_cases(CORPUS["futureCreatedAt"])
def test_future_created_at(case: dict[str, Any]) -> None:
    assert CORPUS["futureCreatedAt"]["boundSeconds"] == MAX_FUTURE_BUFFER_SECONDS
    now = time.time() * 1000
    created = int(now + case["createdAtOffsetSeconds"] * 1000)
    for data in (encode_json(created, 60, '{"a":1}'), encode_proto(created, 60, b"\x0a\x01a")):
        verdict = refusal(
            decode(data, allow_pickle=False), now_ms=now, tracked=case["tracked"], watermark_ms=None
        )
        assert verdict == (None if case["expect"] == "accept" else "created_at_beyond_future_buffer")


# --- our side beyond the corpus ---------------------------------------------------------------


def test_value_key_shapes() -> None:
    assert value_key("urn", "user", "7", [], "profile", tracked=True) == "{urn:user:7}#profile"
    assert value_key("", "user", "7", [("b", "2"), ("a", "1")], "p", tracked=True) == "{user:7}?a=1&b=2#p"
    assert watermark_key("", "user", "7") == "{user:7}#watermark"
    with pytest.raises(ReservedUseCase):
        value_key("urn", "user", "7", [], "watermark", tracked=False)


def test_hash_component_refuses_a_lone_surrogate() -> None:
    with pytest.raises(UnhashableComponent):
        hash_component("a\ud800")
    assert issubclass(UnhashableComponent, ValueError)


@pytest.mark.parametrize(
    "call",
    [
        lambda: encode_json(1, 60, b"bytes"),  # type: ignore[arg-type]
        lambda: encode_proto(1, 60, "text"),  # type: ignore[arg-type]
        lambda: encode_json(MAX_SAFE_INTEGER, 1, "x"),
        lambda: encode_json(-MAX_SAFE_INTEGER - 1, 0, "x"),
        lambda: encode_proto(-1, 60, b"x"),
        lambda: encode_proto(1000, -2, b"x"),
        lambda: encode_json(True, 60, "x"),
        lambda: encode_json(1, 1.5, "x"),  # type: ignore[arg-type]
        lambda: encode_json(1, 60, "a\ud800"),
        lambda: encode_proto(1, 60, b'"\\udc00"'),
        lambda: encode_pickle(1.0, "x"),  # type: ignore[arg-type]
        lambda: encode_pickle(1, lambda: None),
        lambda: encode_watermark(1.0, MAX_FUTURE_BUFFER_SECONDS * 1000 + 1),
        lambda: encode_watermark(1.0, -1),
        lambda: encode_watermark(1.0, True),
    ],
)
def test_encode_refuses(call: Callable[[], bytes]) -> None:
    with pytest.raises(EncodeError):
        call()


def test_json_accepts_negative_timestamps_as_the_original_does() -> None:
    """Only PROTO refuses a negative timestamp; 3.0's JSON bounds only the magnitude."""
    assert decode(encode_json(-5000, 1, "x"), allow_pickle=False).created_at_ms == -5000


def test_proto_fields_in_any_order_unknown_skipped_last_wins() -> None:
    shuffled = _proto((4, b"old"), (3, 2000), (9, b"unknown"), (2, 1000), (7, 5), (1, 1), (4, b"new"))
    assert decode(shuffled, allow_pickle=False) == Decoded(1000, 2000, b"new", Envelope.PROTO)
    for missing in range(1, 5):
        fields = [f for f in ((1, 1), (2, 1000), (3, 2000), (4, b"p")) if f[0] != missing]
        with pytest.raises(DecodeError):
            decode(_proto(*fields), allow_pickle=False)


_UNPICKLED: list[str] = []


def _record_unpickling() -> str:
    _UNPICKLED.append("ran")
    return "ran"


class _Trap:
    def __reduce__(self) -> tuple[Callable[[], str], tuple[()]]:
        return _record_unpickling, ()


def test_pickle_refused_without_unpickling() -> None:
    _UNPICKLED.clear()
    data = encode_pickle(1234, _Trap())
    with pytest.raises(DecodeError, match="does not allow"):
        decode(data, allow_pickle=False)
    assert _UNPICKLED == []
    assert decode(data, allow_pickle=True) == Decoded(1234, None, "ran", Envelope.PICKLE)
    assert _UNPICKLED == ["ran"]


def test_pickle_round_trip_of_arbitrary_objects() -> None:
    payload = {"when": datetime(2025, 9, 8, tzinfo=timezone.utc), "ids": {1, 2}, "raw": b"\x00"}
    assert decode(encode_pickle(42, payload), allow_pickle=True) == Decoded(
        42, None, payload, Envelope.PICKLE
    )


@pytest.mark.parametrize(
    "data",
    [
        pickle.dumps({"created_at_ms": 1, "payload": 2}, protocol=5),
        pickle.dumps(RedisValue(True, "x"), protocol=5),
        encode_pickle(1, "x")[:-3],
        b"\x80",
        b"\x80\x05\x95",
        b"{",
        b"",
        b"\x00",
        b"{}",
        b'{"version":1.0}',
        _json_envelope("1", "2")[:-1],
    ],
)
def test_decode_refuses_malformed(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(data, allow_pickle=True)


NOW = 1_757_308_800_000.0


def _entry(
    created: int, expires: int | None, framing: Envelope = Envelope.JSON, payload: Any = "{}"
) -> Decoded:
    return Decoded(created, expires, payload, framing)


@pytest.mark.parametrize(
    ("entry", "tracked", "watermark", "reason"),
    [
        (_entry(int(NOW) - 1000, int(NOW) + 60_000), True, None, None),
        (_entry(int(NOW) - 1000, int(NOW) + 60_000), True, int(NOW) - 1001, None),
        (_entry(int(NOW) - 1000, int(NOW) + 60_000), True, int(NOW) - 1000, "invalidated"),
        (_entry(int(NOW) - 1000, int(NOW) + 60_000), False, int(NOW), None),
        (_entry(int(NOW), int(NOW) - 1), False, None, "reversed_envelope_timestamps"),
        (_entry(int(NOW) + 3_600_001, int(NOW) + 3_700_000), True, None, "created_at_beyond_future_buffer"),
        (_entry(int(NOW) + 3_600_000, int(NOW) + 3_700_000), True, None, None),
        (_entry(int(NOW) - 1, int(NOW) + 14_400_000), True, None, "lifetime_exceeds_watermark"),
        (_entry(int(NOW), int(NOW) + 14_400_000), True, None, None),
        (_entry(int(NOW) - 1, int(NOW) + 14_400_000), False, None, None),
        (_entry(int(NOW) - 60_000, int(NOW)), False, None, "envelope_expired"),
        (_entry(int(NOW) - 14_400_001, None, Envelope.PICKLE), True, None, "age_exceeds_watermark"),
        (_entry(int(NOW) - 14_400_000, None, Envelope.PICKLE), True, None, None),
        (_entry(int(NOW) - 14_400_001, None, Envelope.PICKLE), False, None, None),
        (_entry(int(NOW), None, Envelope.PICKLE, '"\\ud800"'), False, None, None),
        (
            _entry(int(NOW), int(NOW) + 1, Envelope.PROTO, b'"\\ud800"'),
            False,
            None,
            "divergent_payload_encoding",
        ),
        (_entry(int(NOW), int(NOW) + 1), True, WATERMARK_SUPPRESS_ALL, "invalidated"),
        # The first of several reasons is the one counted, in 3.0's order.
        (_entry(int(NOW) + 9_000_000, int(NOW)), True, None, "reversed_envelope_timestamps"),
        (_entry(int(NOW) - 60_000, int(NOW), payload='"\\ud800"'), True, int(NOW), "envelope_expired"),
    ],
)
def test_refusal(entry: Decoded, tracked: bool, watermark: int | None, reason: str | None) -> None:
    assert refusal(entry, now_ms=NOW, tracked=tracked, watermark_ms=watermark) == reason


@pytest.mark.parametrize(
    ("raw", "parsed", "degradation"),
    [
        (None, None, None),
        (b"1757308800123", 1757308800123, None),
        (b" 12.9 ", 12, None),
        (b"1e400", WATERMARK_SUPPRESS_ALL, "non_finite_watermark"),
        (b"nan", WATERMARK_SUPPRESS_ALL, "non_finite_watermark"),
        (b"-inf", WATERMARK_SUPPRESS_ALL, "non_finite_watermark"),
        (b"garbage", WATERMARK_SUPPRESS_ALL, "unreadable_watermark"),
        (b"\xff", WATERMARK_SUPPRESS_ALL, "unreadable_watermark"),
        (b"", WATERMARK_SUPPRESS_ALL, "unreadable_watermark"),
        (b"1e30", INT64_MAX, None),
        (b"-1e30", -(2**63), None),
    ],
)
def test_parse_watermark(raw: bytes | None, parsed: int | None, degradation: str | None) -> None:
    assert parse_watermark(raw) == parsed
    assert watermark_degradation(raw) == degradation


def test_watermark_write_and_write_back() -> None:
    assert encode_watermark(NOW + 0.7, 1000) == str(int(NOW) + 1000).encode()
    assert parse_watermark(encode_watermark(NOW, 0)) == int(NOW)
    assert may_write_back(None, NOW)
    assert may_write_back(int(NOW) - 1, NOW)
    assert not may_write_back(int(NOW), NOW)
    assert not may_write_back(WATERMARK_SUPPRESS_ALL, NOW)


_TIMESTAMPS = st.integers(min_value=0, max_value=MAX_SAFE_INTEGER - 10**9)
_TTLS = st.integers(min_value=0, max_value=10**6)


@given(_TIMESTAMPS, _TTLS, st.text())
def test_json_round_trip(created: int, ttl: int, payload: str) -> None:
    if payload_divergence(payload) is not None:
        with pytest.raises(EncodeError):
            encode_json(created, ttl, payload)
        return
    assert decode(encode_json(created, ttl, payload), allow_pickle=False) == Decoded(
        created, created + ttl * 1000, payload, Envelope.JSON
    )


@given(_TIMESTAMPS, _TTLS, st.binary())
def test_proto_round_trip(created: int, ttl: int, payload: bytes) -> None:
    if payload_divergence(payload) is not None:
        return
    assert decode(encode_proto(created, ttl, payload), allow_pickle=False) == Decoded(
        created, created + ttl * 1000, payload, Envelope.PROTO
    )


@given(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.recursive(st.none() | st.text() | st.integers(), st.lists),
)
def test_pickle_round_trip(created: int, payload: Any) -> None:
    assert decode(encode_pickle(created, payload), allow_pickle=True) == Decoded(
        created, None, payload, Envelope.PICKLE
    )


_FRAMED = st.one_of(
    st.binary(),
    st.builds(lambda head, tail: bytes([head]) + tail, st.integers(0x08, 0x75), st.binary()),
    st.builds(lambda tail: b"{" + tail, st.binary()),
    st.builds(lambda tail: b"\x80" + tail, st.binary()),
    st.builds(lambda text: text.encode("utf-8", "surrogatepass"), st.from_regex(r"\A\{.*\}\Z")),
)


@given(_FRAMED)
def test_decode_raises_only_decode_error(data: bytes) -> None:
    try:
        decoded = decode(data, allow_pickle=False)
    except DecodeError:
        return
    assert decoded.framing in (Envelope.JSON, Envelope.PROTO)
    refusal(decoded, now_ms=NOW, tracked=True, watermark_ms=parse_watermark(data))


# --- the released library, in a subprocess -----------------------------------------------------


def _run_original(
    version: str,
    keys: list[dict[str, Any]],
    writes: list[tuple[str, Any, int]],
    reads: list[tuple[dict[str, Any], bytes, Any, bool]],
    decodes: list[tuple[bytes, bool]],
) -> dict[str, Any]:
    """One batch through the released ``version``: keys, ``INVALIDATIONS``, writes, reads and decodes."""
    request = {
        "keys": keys,
        "invalidate": INVALIDATIONS,
        "encode": [{**_key_spec(e, False), "payload": p, "ttl": t} for e, p, t in writes],
        "read": [spec for spec, *_ in reads],
        "decode": [{"b64": base64.b64encode(d).decode(), "allow_pickle": a} for d, a in decodes],
        "diverges": DIVERGENCE_PROBES,
    }
    python = original_python(version)
    done = subprocess.run(
        [str(python), "-I", str(WORKER)],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


KEY_SPECS: list[dict[str, Any]] = [
    {"urn_prefix": "urn", "key_type": "user", "id": "7", "use_case": "profile", "tracked": False},
    {"urn_prefix": "urn", "key_type": "user", "id": "7", "use_case": "profile", "tracked": True},
    {
        "urn_prefix": "urn:ns",
        "key_type": "kt",
        "id": "a:b",
        "use_case": "u",
        "args": [["z", "9"], ["a", "1"]],
    },
    {
        "urn_prefix": "urn",
        "key_type": "kt",
        "id": "i",
        "use_case": "u",
        "args": [["b", "2"], ["a", "1"], ["a", "0"]],
        "tracked": True,
    },
    {"urn_prefix": "", "key_type": "kt", "id": "i", "use_case": "u", "tracked": True},
    {"urn_prefix": "", "key_type": "kt", "id": "i", "use_case": "u", "args": [["x", "y"]]},
]
INVALIDATIONS: list[dict[str, Any]] = [
    {"urn_prefix": "urn", "key_type": "user", "id": "7", "future_buffer_ms": 0},
    {"urn_prefix": "urn:ns", "key_type": "kt", "id": "i", "future_buffer_ms": 5000},
    {"urn_prefix": "", "key_type": "kt", "id": "i", "future_buffer_ms": 1000},
]
# What the original writes, for ours to read: (envelope, payload as the worker takes it, ttl).
ORIGINAL_WRITES_3: list[tuple[str, Any, int]] = [
    ("json", '{"a":[1,"\\u00e9",true]}', 60),
    ("json", "plain text, é ✓", 3600),
    ("proto", {"b64": base64.b64encode(b"\x0a\x03abc\xff").decode()}, 120),
    ("pickle", {"nested": [1, 2.5, None, "x"]}, 600),
]
ORIGINAL_WRITES_2: list[tuple[str, Any, int]] = [
    ("pickle", {"nested": [1, 2.5, None, "x"]}, 600),
    ("pickle", "s", 5),
]


def _divergence_probes(count: int) -> list[str]:
    """Seeded payloads from the pieces the lone-surrogate rule turns on: ours must agree with 3.0's."""
    pieces = ["\\ud800", "\\uDC00", "\\ud83d\\ude00", "\\\\", '"', "[", "]", "{", "}", ":", ",", "x", "NaN"]
    pieces += ["\\u0041", "\\uD83D", "\\uDE00", "1", " ", "\\n", "\\u12", "\ud800"]
    rng = random.Random(15)
    in_a_string = pieces[:3] + pieces[13:]
    probes = ['{"a":"' + "".join(rng.choices(in_a_string, k=3)) + '"}' for _ in range(count)]
    probes += ["".join(rng.choices(pieces, k=rng.randint(1, 12))) for _ in range(count)]
    return probes


DIVERGENCE_PROBES = _divergence_probes(400)


def test_paired_and_unpaired_escapes() -> None:
    assert payload_divergence('"\\ud83d\\ude00"') is None
    assert payload_divergence('"\\uD83D\\uDE00 and \\ud83d\\ude00"') is None
    assert payload_divergence('"\\ud83d\\ud83d\\ude00"') == "lone_surrogate_escape"
    assert payload_divergence('"\\ud83dx\\ude00"') == "lone_surrogate_escape"
    assert payload_divergence('"\\ude00\\ud83d"') == "lone_surrogate_escape"
    # An escaped backslash, then the escape.
    assert payload_divergence('"\\\\\\ud800"') == "lone_surrogate_escape"
    assert payload_divergence(b'"\\ud800\xff"') is None  # not UTF-8: binary
    assert payload_divergence("\udc00") == "lone_surrogate_character"


def _key_spec(envelope: str, tracked: bool) -> dict[str, Any]:
    return {
        "urn_prefix": "urn",
        "key_type": "kt",
        "id": "i",
        "use_case": "u",
        "envelope": envelope,
        "tracked": tracked,
    }


def _reads(now: int, versions_3: bool) -> list[tuple[dict[str, Any], bytes, Any, bool]]:
    """(key spec with its watermark, stored bytes, their payload, allow_pickle): the serve/refuse matrix."""
    json_payload, proto_payload, pickle_payload = '{"a":1}', b"\x08\x01", {"k": [1, "v"]}
    minute, hour = 60_000, 3_600_000

    def j(created: int, ttl: int, payload: str = json_payload) -> bytes:
        return _json_envelope(str(created), str(created + ttl * 1000), payload)

    cases: list[tuple[str, bool, str | None, bytes, Any]] = [
        ("pickle", False, None, encode_pickle(now - minute, pickle_payload), pickle_payload),
        ("pickle", True, None, encode_pickle(now - minute, pickle_payload), pickle_payload),
        ("pickle", True, str(now - 2 * minute), encode_pickle(now - minute, pickle_payload), pickle_payload),
        ("pickle", True, str(now - minute), encode_pickle(now - minute, pickle_payload), pickle_payload),
        ("pickle", True, str(now + hour), encode_pickle(now - minute, pickle_payload), pickle_payload),
    ]
    if versions_3:
        cases += [
            ("pickle", True, None, encode_pickle(now - 5 * hour, pickle_payload), pickle_payload),
            ("pickle", False, None, encode_pickle(now - 5 * hour, pickle_payload), pickle_payload),
            ("pickle", True, "garbage", encode_pickle(now - minute, pickle_payload), pickle_payload),
            ("pickle", True, "nan", encode_pickle(now - minute, pickle_payload), pickle_payload),
            ("json", False, None, encode_json(now - minute, 600, json_payload), json_payload),
            ("json", True, None, encode_json(now - minute, 600, json_payload), json_payload),
            ("json", True, str(now - minute), encode_json(now - minute, 600, json_payload), json_payload),
            ("json", True, str(now - 2 * minute), encode_json(now - minute, 600, json_payload), json_payload),
            ("json", False, None, encode_json(now - 20 * minute, 600, json_payload), json_payload),
            ("json", True, None, encode_json(now + 2 * hour, 60, json_payload), json_payload),
            ("json", False, None, encode_json(now + 2 * hour, 60, json_payload), json_payload),
            ("json", True, None, encode_json(now - minute, 5 * 3600, json_payload), json_payload),
            ("json", False, None, encode_json(now - minute, 5 * 3600, json_payload), json_payload),
            ("json", False, None, encode_json(now - minute, -10, json_payload), json_payload),
            ("json", False, None, j(now - minute, 600, '{"a":"\\ud800"}'), '{"a":"\\ud800"}'),
            ("json", False, None, j(now - minute, 600, '"\\\\ud800"'), '"\\\\ud800"'),
            ("json", True, None, b"{not json", None),
            ("json", False, None, encode_pickle(now - minute, pickle_payload), pickle_payload),
            ("pickle", False, None, encode_json(now - minute, 600, json_payload), json_payload),
            ("proto", True, None, encode_proto(now - minute, 600, proto_payload), proto_payload),
            ("proto", True, str(now), encode_proto(now - minute, 600, proto_payload), proto_payload),
            (
                "proto",
                False,
                None,
                _proto((2, now - minute), (3, now + minute), (4, b'["\\udc00"]'), (1, 1)),
                None,
            ),
            (
                "proto",
                False,
                None,
                _proto((1, 1), (2, now - minute), (3, now + minute), (4, b"x"), (15, 7)),
                b"x",
            ),
            ("json", False, None, encode_proto(now - minute, 600, proto_payload), proto_payload),
        ]
    out = []
    for envelope, tracked, watermark, data, payload in cases:
        spec = {
            **_key_spec(envelope, tracked),
            "b64": base64.b64encode(data).decode(),
            "watermark": watermark,
        }
        out.append((spec, data, payload, envelope == "pickle"))
    return out


def _our_verdict(spec: dict[str, Any], data: bytes, allow_pickle: bool, now_ms: float) -> tuple[bool, bool]:
    """(served, wrote back) as ours decides them for what the original's get did."""
    watermark = parse_watermark(None if spec["watermark"] is None else spec["watermark"].encode())
    if not spec["tracked"]:
        watermark = None
    try:
        decoded = decode(data, allow_pickle=allow_pickle)
    except DecodeError:
        return False, may_write_back(watermark, now_ms)
    if decoded.framing is not Envelope.PICKLE and spec["envelope"] == "pickle":
        return False, may_write_back(watermark, now_ms)  # json_without_serializer
    if refusal(decoded, now_ms=now_ms, tracked=spec["tracked"], watermark_ms=watermark) is not None:
        return False, may_write_back(watermark, now_ms)
    return True, False


def _unwire(value: Any) -> Any:
    return base64.b64decode(value["b64"]) if isinstance(value, dict) and set(value) == {"b64"} else value


def _check_keys(result: dict[str, Any], specs: Iterable[dict[str, Any]]) -> None:
    for spec, got in zip(specs, result["keys"], strict=True):
        tracked = spec.get("tracked", False)
        args = [(name, value) for name, value in spec.get("args", [])]
        prefix = entity_key(spec["urn_prefix"], spec["key_type"], spec["id"], tracked=tracked)
        assert got == {
            "prefix": prefix,
            "urn": value_key(
                spec["urn_prefix"], spec["key_type"], spec["id"], args, spec["use_case"], tracked=tracked
            ),
        }


def _check_original_writes(result: dict[str, Any], writes: list[tuple[str, Any, int]]) -> None:
    for (envelope, payload, ttl), got in zip(writes, result["encoded"], strict=True):
        assert got["key"] == value_key("urn", "kt", "i", [], "u", tracked=False)
        assert got["ttl"] == ttl
        data = base64.b64decode(got["b64"])
        decoded = decode(data, allow_pickle=envelope == "pickle")
        assert decoded.framing == Envelope(envelope)
        assert got["before"] <= decoded.created_at_ms <= got["after"]
        assert decoded.payload == _unwire(payload)
        if envelope == "pickle":
            assert decoded.expires_at_ms is None
            assert encode_pickle(decoded.created_at_ms, decoded.payload) == data
        else:
            assert decoded.expires_at_ms == decoded.created_at_ms + ttl * 1000
            encoder = encode_json if envelope == "json" else encode_proto
            assert encoder(decoded.created_at_ms, ttl, decoded.payload) == data  # byte for byte


def _check_reads(
    result: dict[str, Any], reads: list[tuple[dict[str, Any], bytes, Any, bool]], now: float
) -> None:
    for (spec, data, payload, allow_pickle), got in zip(reads, result["served"], strict=True):
        served, wrote_back = _our_verdict(spec, data, allow_pickle, now)
        context = (spec, got)
        if served:
            expected = json.loads(json.dumps(_wire(payload)))
            assert got == {"served": expected, "fell_back": False, "wrote_back": False}, context
        else:
            assert got["fell_back"], context
            assert got["wrote_back"] == wrote_back, context


def _wire(value: Any) -> Any:
    return {"b64": base64.b64encode(value).decode()} if isinstance(value, bytes) else value


@pytest.mark.slow
def test_original_3_0_interop() -> None:
    now = int(time.time() * 1000)
    reads = _reads(now, versions_3=True)
    ours = [
        (encode_json(now, 60, '{"é":"✓ \\ud83d\\ude00"}'), '{"é":"✓ \\ud83d\\ude00"}', None, False),
        (encode_proto(now, 60, b"\x00\xff"), b"\x00\xff", None, False),
        (encode_pickle(now, {"k": [1, "v"]}), {"k": [1, "v"]}, None, True),
    ]
    result = _run_original("3.0.0", KEY_SPECS, ORIGINAL_WRITES_3, reads, [(d, a) for d, _, _, a in ours])
    _check_keys(result, KEY_SPECS)
    for spec, got in zip(INVALIDATIONS, result["watermarks"], strict=True):
        assert got["key"] == watermark_key(spec["urn_prefix"], spec["key_type"], spec["id"])
        assert got["ttl"] == WATERMARK_TTL_SECONDS
        earliest = int(encode_watermark(got["before_ms"], spec["future_buffer_ms"]))
        assert earliest <= int(got["value"]) <= earliest + 60_000
        assert parse_watermark(got["value"].encode()) == int(got["value"])
    _check_original_writes(result, ORIGINAL_WRITES_3)
    for (data, payload, _, _), got in zip(ours, result["decoded"], strict=True):
        decoded = decode(data, allow_pickle=True)
        assert got == {
            "created_at_ms": decoded.created_at_ms,
            "expires_at_ms": decoded.expires_at_ms,
            "payload": json.loads(json.dumps(_wire(payload))),
        }
    ours_diverge = [payload_divergence(p) is not None for p in DIVERGENCE_PROBES]
    assert result["diverges"] == ours_diverge
    assert 50 < sum(ours_diverge) < len(ours_diverge) - 50  # the probes reach both answers
    # The worker read a little after `now`; every case keeps a minute's margin from its boundary.
    _check_reads(result, reads, time.time() * 1000)


@pytest.mark.slow
def test_original_2_0_5_interop() -> None:
    """2.0.5 writes and reads pickle only; keys sorted as its ``cached()`` sorts them."""
    now = int(time.time() * 1000)
    reads = _reads(now, versions_3=False)
    sorted_specs = [{**s, "args": sorted(s.get("args", []), key=lambda pair: pair[0])} for s in KEY_SPECS]
    payload = {"k": [1, "v"], "t": (1, 2)}
    result = _run_original(
        "2.0.5", sorted_specs, ORIGINAL_WRITES_2, reads, [(encode_pickle(now, payload), True)]
    )
    _check_keys(result, sorted_specs)
    for spec, got in zip(INVALIDATIONS, result["watermarks"], strict=True):
        if spec["urn_prefix"]:
            assert got["key"] == watermark_key(spec["urn_prefix"], spec["key_type"], spec["id"])
        else:
            # 2.0.5 rendered the watermark by hand: an empty prefix left a colon (a different
            # slot than 3.0's). Unreachable through its config, which ignores an empty prefix.
            assert got["key"] == "{:kt:i}#watermark"
        assert got["ttl"] == 4 * 3600
    _check_original_writes(result, ORIGINAL_WRITES_2)
    assert result["decoded"] == [
        {"created_at_ms": now, "expires_at_ms": None, "payload": {"k": [1, "v"], "t": [1, 2]}}
    ]
    _check_reads(result, reads, time.time() * 1000)
