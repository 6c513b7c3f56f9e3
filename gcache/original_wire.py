"""The original gcache's Redis formats: its keys, value envelopes and watermarks, with no I/O.

For sharing one Redis with processes of the original library (rungalileo/gcache 2.x and 3.0)
and its Go client. The specification is the original's conformance corpus
(``gcache/conformance/envelope_vectors.json`` in its 3.0.0 wheel); every section of it is
asserted in ``tests/test_original_wire.py``, and round trips through the released library
check what the corpus does not pin (pickles, JSON bytes, keys).

Pure on purpose: the read-through decides when to read, write and invalidate, and this module
only answers what the bytes mean and whether the original would serve them (``refusal``),
so the answers can be tested exhaustively without a server.

Not our own format: none of gcache's escaping, fences, signing or µs stamps apply here. Keys
are rendered verbatim, timestamps are the writer's clock in milliseconds, and a watermark is
a plain string the invalidating process's clock chose.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import pickle
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, NoReturn

from gcache._internal.redis_cache import RedisValue

__all__ = [
    "ENVELOPE_VERSION",
    "INT64_MAX",
    "MAX_FUTURE_BUFFER_SECONDS",
    "MAX_JSON_NESTING",
    "MAX_SAFE_INTEGER",
    "MAX_TRACKED_TTL_SECONDS",
    "WATERMARK_SUPPRESS_ALL",
    "WATERMARK_TTL_SECONDS",
    "WATERMARK_USE_CASE",
    "DecodeError",
    "Decoded",
    "EncodeError",
    "Envelope",
    "OriginalWireError",
    "ReservedUseCase",
    "UnhashableComponent",
    "decode",
    "encode_json",
    "encode_pickle",
    "encode_proto",
    "encode_watermark",
    "entity_key",
    "hash_component",
    "may_write_back",
    "parse_watermark",
    "payload_divergence",
    "refusal",
    "value_key",
    "watermark_degradation",
    "watermark_key",
]

ENVELOPE_VERSION = 1
#: The corpus's ``watermarkTiming``. A watermark outlives every entry it can suppress:
#: ``MAX_TRACKED_TTL_SECONDS + MAX_FUTURE_BUFFER_SECONDS <= WATERMARK_TTL_SECONDS``. 2.0.5
#: wrote watermarks with a 4 h TTL and had neither cap; these are 3.0's.
WATERMARK_TTL_SECONDS = 18_000
MAX_TRACKED_TTL_SECONDS = 14_400
MAX_FUTURE_BUFFER_SECONDS = 3_600
#: Go reads envelope timestamps as float64, so both clients bound them to 2^53 - 1.
MAX_SAFE_INTEGER = 2**53 - 1
INT64_MAX = 2**63 - 1
_INT64_MIN = -(2**63)
#: The watermark that suppresses every entry: what an unreadable watermark counts as, since
#: staleness is ``watermark >= created`` and the write-back needs ``watermark < now``.
WATERMARK_SUPPRESS_ALL = INT64_MAX
#: The use case name the watermark key ends in, so no value key may use it.
WATERMARK_USE_CASE = "watermark"
#: The JSON nesting beyond which a payload is refused unread (the corpus's ``maxNesting``).
MAX_JSON_NESTING = 500

_PICKLE_OPCODE = 0x80
_JSON_OPENER = 0x7B
# Tags of fields 1..14 over proto3's wire types: disjoint from JSON's "{" and pickle's 0x80.
_PROTO_FIRST, _PROTO_LAST = 0x08, 0x75
_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5
_PICKLE_PROTOCOL = 5  # the original's HIGHEST_PROTOCOL on every Python it supports
_REDIS_VALUE = ("gcache._internal.redis_cache", "RedisValue")


class OriginalWireError(ValueError):
    """Anything this module refuses."""


class EncodeError(OriginalWireError):
    """A value the original would refuse to write, or that its clients would read differently."""


class DecodeError(OriginalWireError):
    """Stored bytes that are no entry of the original's: the one exception a read treats as a miss."""


class UnhashableComponent(OriginalWireError):
    """A key component with no UTF-8 encoding (a lone surrogate), which the original refuses to hash."""


class ReservedUseCase(OriginalWireError):
    """A value key named ``watermark``: with tracking it would be the entity's watermark key."""


class Envelope(str, Enum):
    """The framing of an entry, named as the original's ``gcache.config.Envelope`` values are."""

    PICKLE = "pickle"
    JSON = "json"
    PROTO = "proto"


@dataclass(frozen=True, slots=True)
class Decoded:
    """A decoded entry. ``payload`` is still serialized for JSON (str) and PROTO (bytes).

    ``expires_at_ms`` is None for pickle, which carries no expiry of its own.
    """

    created_at_ms: int
    expires_at_ms: int | None
    payload: Any
    framing: Envelope


# --- keys ----------------------------------------------------------------------------------


def entity_key(urn_prefix: str, key_type: str, id: str, *, tracked: bool) -> str:
    """``[{]<urn_prefix>:<key_type>:<id>[}]``; no prefix segment at all when ``urn_prefix`` is empty.

    Braced only when tracked: the hash tag keeps a value and its watermark in one cluster slot.
    Nothing is escaped, as in the original; a ``{}#?`` in the prefix is its config's to refuse.
    """
    rendered = f"{urn_prefix}:{key_type}:{id}" if urn_prefix else f"{key_type}:{id}"
    return "{" + rendered + "}" if tracked else rendered


def value_key(
    urn_prefix: str,
    key_type: str,
    id: str,
    args: Sequence[tuple[str, str]],
    use_case: str,
    *,
    tracked: bool,
) -> str:
    """The entity key, ``?name=value&...`` over ``args`` sorted by name (stable), then ``#<use_case>``."""
    if use_case == WATERMARK_USE_CASE:
        raise ReservedUseCase(f"the use case name {WATERMARK_USE_CASE!r} is reserved for the watermark key")
    head = entity_key(urn_prefix, key_type, id, tracked=tracked)
    if not args:
        return f"{head}#{use_case}"
    query = "&".join(f"{name}={value}" for name, value in sorted(args, key=lambda pair: pair[0]))
    return f"{head}?{query}#{use_case}"


def watermark_key(urn_prefix: str, key_type: str, id: str) -> str:
    """The entity's watermark: a Redis string of milliseconds, always under the braced prefix."""
    return entity_key(urn_prefix, key_type, id, tracked=True) + "#" + WATERMARK_USE_CASE


def hash_component(value: str) -> str:
    """Lowercase hex SHA-256 of ``value``'s UTF-8: how the original keeps a sensitive id out of keys."""
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UnhashableComponent(f"a key component with no UTF-8 encoding: {exc}") from exc
    return hashlib.sha256(raw).hexdigest()


# --- writing -------------------------------------------------------------------------------


def encode_pickle(created_at_ms: int, payload: Any) -> bytes:
    """A PICKLE entry: our ``RedisValue`` pickled, which the original unpickles as its own."""
    _require_int("created_at_ms", created_at_ms)
    try:
        return pickle.dumps(
            RedisValue(created_at_ms=created_at_ms, payload=payload), protocol=_PICKLE_PROTOCOL
        )
    except Exception as exc:  # whatever the payload's own pickling raises
        raise EncodeError(f"the payload cannot be pickled: {exc!r}") from exc


def encode_json(created_at_ms: int, ttl_sec: int, payload: str) -> bytes:
    """A JSON entry, byte for byte as 3.0 writes it. Text only: binary goes on PROTO."""
    if not isinstance(payload, str):
        raise EncodeError(f"the JSON envelope carries text, got {type(payload).__name__}: use PROTO")
    expires_at_ms = _expiry(created_at_ms, ttl_sec, payload)
    envelope = {
        "version": ENVELOPE_VERSION,
        "createdAtMs": created_at_ms,
        "expiresAtMs": expires_at_ms,
        "encoding": "utf8",
        "payload": payload,
    }
    return json.dumps(envelope, separators=(",", ":")).encode("utf-8")


def encode_proto(created_at_ms: int, ttl_sec: int, payload: bytes) -> bytes:
    """A PROTO entry: fields 1 version, 2 created, 3 expires (varints), 4 payload, in that order."""
    if not isinstance(payload, bytes):
        raise EncodeError(f"the PROTO envelope carries bytes, got {type(payload).__name__}: use JSON")
    expires_at_ms = _expiry(created_at_ms, ttl_sec, payload)
    if created_at_ms < 0 or expires_at_ms < 0:
        # A negative int64 is a ten-byte varint that readers not sign-extending misread.
        raise EncodeError(f"PROTO timestamps must be non-negative, got {created_at_ms} and {expires_at_ms}")
    out = bytearray()
    for field, value in ((1, ENVELOPE_VERSION), (2, created_at_ms), (3, expires_at_ms)):
        out.append(field << 3 | _VARINT)
        _put_varint(out, value)
    out.append(4 << 3 | _LEN)
    _put_varint(out, len(payload))
    out += payload
    return bytes(out)


def encode_watermark(now_ms: float, future_buffer_ms: int) -> bytes:
    """The watermark an invalidation at ``now_ms`` writes (``SETEX`` for ``WATERMARK_TTL_SECONDS``).

    The buffer is bounded as 3.0 bounds it: a longer one would outlive the watermark's TTL less
    the tracked-TTL cap, and an entry written inside it could then resurrect.
    """
    if isinstance(future_buffer_ms, bool) or not isinstance(future_buffer_ms, int):
        raise EncodeError(f"future_buffer_ms must be an int, got {future_buffer_ms!r}")
    if not 0 <= future_buffer_ms <= MAX_FUTURE_BUFFER_SECONDS * 1000:
        raise EncodeError(
            f"future_buffer_ms {future_buffer_ms} is outside 0..{MAX_FUTURE_BUFFER_SECONDS * 1000}"
        )
    return str(int(now_ms + future_buffer_ms)).encode("ascii")


def _require_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise EncodeError(f"{name} must be an int, got {value!r}")


def _expiry(created_at_ms: int, ttl_sec: int, payload: str | bytes) -> int:
    """The checks 3.0 makes before writing JSON or PROTO; the expiry they write."""
    _require_int("created_at_ms", created_at_ms)
    _require_int("ttl_sec", ttl_sec)
    divergence = payload_divergence(payload)
    if divergence is not None:
        raise EncodeError(f"the payload holds {divergence}, which Python and Go would read differently")
    expires_at_ms = created_at_ms + ttl_sec * 1000
    for name, value in (("createdAtMs", created_at_ms), ("expiresAtMs", expires_at_ms)):
        if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise EncodeError(f"{name} would be {value}, beyond what every client reads exactly (2^53 - 1)")
    return expires_at_ms


def _put_varint(out: bytearray, value: int) -> None:
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)


# --- reading -------------------------------------------------------------------------------


def decode(data: bytes, *, allow_pickle: bool) -> Decoded:
    """Decode an entry by its first byte: 0x08-0x75 PROTO, ``{`` JSON, 0x80 pickle.

    Every malformed input raises :class:`DecodeError`, and nothing else, so a read has one
    exception to turn into a miss. ``allow_pickle=False`` refuses a pickle before a byte of it
    is unpickled: unpickling runs code, and only a use case that declares pickle may.
    """
    if not data:
        raise DecodeError("an empty value")
    first = data[0]
    if _PROTO_FIRST <= first <= _PROTO_LAST:
        return _decode_proto(data)
    if first == _JSON_OPENER:
        return _decode_json(data)
    if first == _PICKLE_OPCODE:
        if not allow_pickle:
            raise DecodeError("a pickle entry, and this use case does not allow unpickling")
        return _decode_pickle(data)
    raise DecodeError(f"no framing starts with byte {first:#04x}")


class _Unpickler(pickle.Unpickler):
    """Resolves the original's ``RedisValue`` to ours without importing by path; the rest as usual."""

    def find_class(self, module_name: str, global_name: str, /) -> Any:
        if (module_name, global_name) == _REDIS_VALUE:
            return RedisValue
        return super().find_class(module_name, global_name)


def _decode_pickle(data: bytes) -> Decoded:
    try:
        value = _Unpickler(io.BytesIO(data)).load()
    except Exception as exc:  # truncated, foreign (0x80 is msgpack's empty map), or a payload's own error
        raise DecodeError(f"a malformed pickle entry: {exc!r}") from exc
    if not isinstance(value, RedisValue):
        raise DecodeError(f"a pickle of {type(value).__name__}, not a RedisValue")
    created = value.created_at_ms
    if isinstance(created, bool) or not isinstance(created, int):
        raise DecodeError(f"a RedisValue whose created_at_ms is {created!r}")
    return Decoded(created_at_ms=created, expires_at_ms=None, payload=value.payload, framing=Envelope.PICKLE)


def _decode_json(data: bytes) -> Decoded:
    try:
        envelope = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise DecodeError(f"a malformed JSON envelope: {exc}") from exc
    if not isinstance(envelope, dict):
        raise DecodeError("a JSON envelope that is not an object")
    version = envelope.get("version")
    # True == 1 in Python; Go and JavaScript reject it, so must we.
    if isinstance(version, bool) or version != ENVELOPE_VERSION:
        raise DecodeError(f"an unsupported envelope version {version!r}")
    payload = envelope.get("payload")
    if not isinstance(payload, str):
        raise DecodeError(f"a payload that is {type(payload).__name__}, not text")
    created = _json_millis(envelope, "createdAtMs")
    expires = _json_millis(envelope, "expiresAtMs")
    if envelope.get("encoding") != "utf8":
        raise DecodeError(f"an unsupported payload encoding {envelope.get('encoding')!r}")
    return Decoded(created_at_ms=created, expires_at_ms=expires, payload=payload, framing=Envelope.JSON)


def _json_millis(envelope: dict[str, Any], name: str) -> int:
    """A whole number of milliseconds within ±(2^53 - 1), as an int; a float like 5.0 counts."""
    if name not in envelope:
        raise DecodeError(f"no {name}")
    value = envelope[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DecodeError(f"{name} is {type(value).__name__}, not a number")
    try:
        as_float = float(value)
    except OverflowError as exc:
        raise DecodeError(f"{name} is beyond a double") from exc
    if not math.isfinite(as_float) or not as_float.is_integer():
        raise DecodeError(f"{name} is {value!r}, not a whole number of milliseconds")
    if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
        raise DecodeError(f"{name} is {value!r}, beyond what every client reads exactly")
    return int(value)


def _decode_proto(data: bytes) -> Decoded:
    """Fields in any order, the last of a repeated one winning, unknown ones skipped (as protobuf)."""
    version: int | None = None
    created: int | None = None
    expires: int | None = None
    payload: bytes | None = None
    end = len(data)
    at = 0
    while at < end:
        tag, at = _get_varint(data, at)
        field, wire = tag >> 3, tag & 0x07
        if wire == _VARINT:
            value, at = _get_varint(data, at)
            if field == 1:
                version = value
            elif field == 2:
                created = _signed64(value)
            elif field == 3:
                expires = _signed64(value)
        elif wire == _LEN:
            length, at = _get_varint(data, at)
            if at + length > end:
                _bad("a length-delimited field runs past the end")
            if field == 4:
                payload = data[at : at + length]
            at += length
        elif wire == _FIXED64:
            at += 8
        elif wire == _FIXED32:
            at += 4
        else:  # 3 and 4 are proto2 groups, 6 and 7 undefined: no gcache client writes them
            _bad(f"wire type {wire} on field {field}")
        if at > end:
            _bad("a fixed-width field runs past the end")
    # Greater, not different: a newer writer's version is a miss, and proto3 omits a zero.
    if version is None or not 1 <= version <= ENVELOPE_VERSION:
        _bad(f"an unsupported envelope version {version!r}")
    if (created is not None and created < 0) or (expires is not None and expires < 0):
        _bad(f"a negative timestamp ({created}, {expires})")
    if created is None or expires is None or payload is None:
        _bad("a PROTO envelope missing a field")
    return Decoded(created_at_ms=created, expires_at_ms=expires, payload=payload, framing=Envelope.PROTO)


def _get_varint(data: bytes, at: int) -> tuple[int, int]:
    """A varint of at most ten bytes whose tenth carries only bit 63: Go wraps wider ones, we refuse."""
    value = 0
    for shift in range(0, 70, 7):
        if at >= len(data):
            _bad("a truncated varint")
        byte = data[at]
        at += 1
        if shift == 63 and byte > 0x01:
            _bad("a varint wider than 64 bits")
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
    _bad("a varint longer than ten bytes")


def _signed64(value: int) -> int:
    """The int64 the schema declares: a negative is its two's complement in ten varint bytes."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _bad(reason: str) -> NoReturn:
    raise DecodeError(reason)


# --- the payload rule both clients apply ----------------------------------------------------

# A JSON escape: backslash-u and four hex digits, or a backslash and the one character it escapes.
_ESCAPE = re.compile(r"\\(?:u([0-9a-fA-F]{4})|.)", re.DOTALL)


def payload_divergence(payload: str | bytes) -> str | None:
    r"""Why Python and Go would read ``payload`` as different values, or None when they agree.

    A lone surrogate: Python keeps it, Go substitutes U+FFFD, and both call it a hit. It
    arrives as a character or, invisible in the stored bytes, as the JSON escape ``\ud800``
    that a caller's JSON codec unescapes. So the rule is "a surrogate character, or valid
    strict JSON holding an unpaired surrogate escape"; non-UTF-8 bytes (binary) and non-JSON
    text are outside it. Checked on write and on read (a foreign writer's entry).
    """
    if isinstance(payload, bytes):
        try:
            body = payload.decode("utf-8")
        except UnicodeDecodeError:
            return None
    else:
        body = payload
        try:
            body.encode("utf-8")
        except UnicodeEncodeError:
            return "lone_surrogate_character"
    if "\\ud" not in body and "\\uD" not in body:  # the common payload pays no scan
        return None
    if not _unpaired_surrogate_escape(body):
        return None
    if _nesting_exceeds(body, MAX_JSON_NESTING):  # before the parse: the stack must not decide
        return "nesting_beyond_limit"
    try:
        json.loads(body, parse_constant=_refuse_constant)
    except RecursionError:
        return "nesting_beyond_limit"
    except ValueError:
        return None  # not strict JSON: no codec unescapes it, so no client disagrees
    return "lone_surrogate_escape"


def _unpaired_surrogate_escape(body: str) -> bool:
    r"""Whether an escape, taken in order (so ``\\ud800`` is a backslash and text), is a lone half."""
    pending_high_end = -1  # where a high surrogate's escape ended, awaiting its low half
    for match in _ESCAPE.finditer(body):
        code = int(match.group(1), 16) if match.group(1) is not None else None
        is_low = code is not None and 0xDC00 <= code <= 0xDFFF
        if pending_high_end >= 0:
            if match.start() != pending_high_end or not is_low:
                return True
            pending_high_end = -1
            continue
        if is_low:
            return True
        if code is not None and 0xD800 <= code <= 0xDBFF:
            pending_high_end = match.end()
    return pending_high_end >= 0


def _nesting_exceeds(body: str, limit: int) -> bool:
    """Whether the net depth of ``[``/``{`` outside string literals ever passes ``limit``."""
    depth = 0
    in_string = escaped = False
    for ch in body:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return True
        elif ch in "]}":
            depth -= 1
    return False


def _refuse_constant(name: str) -> NoReturn:
    """NaN and Infinity are not JSON to Go, so not to this rule either."""
    raise ValueError(f"not strict JSON: {name}")


# --- watermarks and what is served ----------------------------------------------------------


def parse_watermark(raw: bytes | None) -> int | None:
    """A stored watermark in ms; None when there is none. Fails closed, as 3.0 does.

    Read with ``float()`` as the original reads it (so above 2^53 it rounds, exactly as the
    corpus's ``pythonParsed``), clamped to int64. Unreadable or non-finite is
    :data:`WATERMARK_SUPPRESS_ALL`: every entry stale and no write-back, never "no
    invalidation", which would serve what someone invalidated.
    """
    if raw is None:
        return None
    try:
        as_float = float(raw)
    except ValueError:
        return WATERMARK_SUPPRESS_ALL
    if not math.isfinite(as_float):
        return WATERMARK_SUPPRESS_ALL
    if as_float >= INT64_MAX:
        return INT64_MAX
    if as_float <= _INT64_MIN:
        return _INT64_MIN
    return int(as_float)


def watermark_degradation(raw: bytes | None) -> str | None:
    """Why ``parse_watermark`` suppressed everything: the label 3.0 counts, or None.

    Separate because the sentinel cannot say it, and the two differ in what follows: 3.0
    deletes an ``unreadable_watermark`` (nothing else repairs it), and keeps a
    ``non_finite_watermark``, which is a number in a format it may not know.
    """
    if raw is None:
        return None
    try:
        as_float = float(raw)
    except ValueError:
        return "unreadable_watermark"
    return None if math.isfinite(as_float) else "non_finite_watermark"


def refusal(decoded: Decoded, *, now_ms: float, tracked: bool, watermark_ms: int | None) -> str | None:
    """Why 3.0 would not serve ``decoded`` at ``now_ms``, or None when it would.

    Its checks in its order, each reason the label it counts, so a shared entry gets the same
    answer from either library. ``watermark_ms`` counts only when tracked (the original reads
    none otherwise); ``invalidated`` is ours, 3.0 counting that miss under no label. Not here,
    as they need the caller's serializer: a JSON or PROTO entry for a use case with none
    (``json_without_serializer``, before these) and a payload it cannot load
    (``unloadable_payload``, before ``invalidated``).
    """
    created, expires = decoded.created_at_ms, decoded.expires_at_ms
    max_tracked_ms = MAX_TRACKED_TTL_SECONDS * 1000
    if expires is not None and expires < created:
        return "reversed_envelope_timestamps"
    if tracked and created > now_ms + MAX_FUTURE_BUFFER_SECONDS * 1000:
        return "created_at_beyond_future_buffer"  # no watermark written now could reach it
    if tracked and expires is not None and expires - created > max_tracked_ms:
        return "lifetime_exceeds_watermark"
    if expires is not None and expires <= now_ms:
        return "envelope_expired"
    if tracked and now_ms - created > max_tracked_ms:
        return "age_exceeds_watermark"
    if decoded.framing is not Envelope.PICKLE and payload_divergence(decoded.payload) is not None:
        return "divergent_payload_encoding"
    if tracked and watermark_ms is not None and watermark_ms >= created:
        return "invalidated"
    return None


def may_write_back(watermark_ms: int | None, now_ms: float) -> bool:
    """Whether the original would store a value just computed: not while a watermark is ahead of now."""
    return watermark_ms is None or watermark_ms < now_ms
