"""The versioned frame every REMOTE value is stored in.

    offset  size  field
    0       2     magic b"gC"
    2       1     format version (2)
    3       1     serializer id (0 pickle, 1 custom Serializer, 2 JSON, 3 msgpack)
    4       1     flags (bit 0: the serializer produced str; bit 1: an id found absent, no payload)
    5       16    creation stamp in microseconds, ASCII digits, zero-padded: the Redis server time
                  of the read that missed for a tracked entry, the writer's clock for an untracked one
    21      8     nonce of the invalidation fence the entry was written under (zeros if untracked)
    29      4     id of the signing key (zeros: unsigned)
    33      16    MAC: HMAC-SHA-256 over the Redis key and every other byte of the entry, truncated
                  (zeros: unsigned); see :mod:`gcache.signing`
    49      ...   payload

Version 2 added the key id and MAC. The writer fills every field, the tracked ones with what
the read before it returned, so the MAC covers them; the write script only checks the fence.
An entry of another version is a miss (``version``), never an error: during a rolling deploy
each side rewrites what it cannot read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from gcache.signing import Signer

__all__ = [
    "FLAG_ABSENT",
    "FLAG_STR",
    "HEADER_SIZE",
    "NO_KEY_ID",
    "NO_NONCE",
    "SERIALIZER_CUSTOM",
    "SERIALIZER_JSON",
    "SERIALIZER_MSGPACK",
    "SERIALIZER_NAMES",
    "SERIALIZER_PICKLE",
    "Envelope",
    "EnvelopeError",
    "decode",
    "encode",
    "signed_by",
    "signed_pickle",
    "untracked_pickle",
]

MAGIC = b"gC"
VERSION = 2
SERIALIZER_PICKLE = 0
SERIALIZER_CUSTOM = 1
SERIALIZER_JSON = 2
SERIALIZER_MSGPACK = 3
SERIALIZER_NAMES = {
    SERIALIZER_PICKLE: "pickle",
    SERIALIZER_CUSTOM: "custom",
    SERIALIZER_JSON: "json",
    SERIALIZER_MSGPACK: "msgpack",
}
FLAG_STR = 1
FLAG_ABSENT = 2  # cached_many(cache_missing=True): the function returned no value for the id
NONCE_SIZE = 8
NO_NONCE = b"\0" * NONCE_SIZE
KEY_ID_AT = 29
MAC_AT = 33
HEADER_SIZE = 49
NO_KEY_ID = b"\0" * (MAC_AT - KEY_ID_AT)
_NO_MAC = b"\0" * (HEADER_SIZE - MAC_AT)
_PREFIX = MAGIC + bytes([VERSION])
_PICKLE_HEAD = _PREFIX + bytes((SERIALIZER_PICKLE, 0))  # the header up to the stamp, with no flags


class EnvelopeError(Exception):
    """An entry that cannot be decoded; ``reason`` is the miss reason it is counted under."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Envelope(NamedTuple):
    serializer_id: int
    flags: int
    stamp_us: int
    nonce: bytes
    key_id: bytes  # NO_KEY_ID: unsigned
    payload: bytes


def encode(
    payload: bytes,
    serializer_id: int,
    flags: int = 0,
    stamp_us: int = 0,
    nonce: bytes = NO_NONCE,
    *,
    key: str = "",
    signer: Signer | None = None,
) -> bytes:
    """The entry to store under the Redis key ``key``, signed when there is a ``signer``."""
    head = b"%b%b%016d%b" % (_PREFIX, bytes((serializer_id, flags)), stamp_us, nonce)
    if signer is None:
        return b"".join((head, NO_KEY_ID, _NO_MAC, payload))
    head += signer.key_id
    return b"".join((head, signer.entry_mac(key, head, payload), payload))


def decode(raw: bytes) -> Envelope:
    """Split a stored entry into its header fields and payload (nothing is verified here).

    Raises:
        EnvelopeError: reason ``foreign`` (not written by gcache), ``version`` (a format this
            release does not read) or ``corrupt`` (truncated or malformed header).
    """
    if raw[:3] == _PREFIX and len(raw) >= HEADER_SIZE:  # every hit: one test, then the fields
        stamp = raw[5:21]
        if stamp.isdigit():
            return _new_envelope(
                Envelope, (raw[3], raw[4], int(stamp), raw[21:29], raw[29:33], raw[HEADER_SIZE:])
            )
    if raw[:2] != MAGIC:
        raise EnvelopeError("foreign")
    if len(raw) < 3 or raw[2] != VERSION:
        raise EnvelopeError("version")
    raise EnvelopeError("corrupt")  # truncated, or the stamp is not digits


def signed_by(signer: Signer, key: str, raw: bytes) -> bool:
    """Whether ``raw``, read from ``key``, was written by a holder of one of ``signer``'s keys."""
    return signer.entry_ok(
        key, raw[KEY_ID_AT:MAC_AT], raw[:MAC_AT], raw[HEADER_SIZE:], raw[MAC_AT:HEADER_SIZE]
    )


def untracked_pickle(raw: bytes | None, key: str) -> bytes | None:
    """The payload of a well-formed pickle entry, or None: anything else is :func:`decode`'s to judge.

    An untracked read checks neither the stamp nor the nonce, so the common hit skips parsing them
    (about a fifth of what gcache adds to a REMOTE hit); the header is still checked in full.
    Unsigned: ``key`` is not looked at (see :func:`signed_pickle`).
    """
    if raw is not None and len(raw) >= HEADER_SIZE and raw[:5] == _PICKLE_HEAD and raw[5:21].isdigit():
        return raw[HEADER_SIZE:]
    return None


def untracked_pickles(raws: list[bytes | None], limit: int) -> list[bytes | None]:
    """:func:`untracked_pickle` of a batch's entries in one pass (a call each cost a 50-id page a
    tenth of its instructions); None also for an entry longer than ``limit``, which the caller
    judges on its own."""
    head, size = _PICKLE_HEAD, HEADER_SIZE
    return [
        raw[size:]
        if raw is not None and size <= len(raw) <= limit and raw[:5] == head and raw[5:21].isdigit()
        else None
        for raw in raws
    ]


def signed_pickle(signer: Signer, raw: bytes | None, key: str) -> bytes | None:
    """:func:`untracked_pickle` with signing keys: the payload only of an entry whose MAC is good
    for ``key``; None sends the entry to :func:`decode` and the full checks, which tell why."""
    if raw is not None and len(raw) >= HEADER_SIZE and raw[:5] == _PICKLE_HEAD and raw[5:21].isdigit():
        payload = raw[HEADER_SIZE:]
        if signer.entry_ok(key, raw[KEY_ID_AT:MAC_AT], raw[:MAC_AT], payload, raw[MAC_AT:HEADER_SIZE]):
            return payload
    return None


_new_envelope = tuple.__new__  # the fields as they are, without NamedTuple's argument handling
