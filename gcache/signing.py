"""HMAC-SHA-256 signatures on REMOTE entries and bus messages: with signing keys, nothing read
from Redis is trusted unless a holder of a key wrote it.

Anyone who can write to the Redis can write an entry in gcache's envelope, and with pickle, an
entry is code. A signature over the Redis key and the whole envelope (header and payload) makes a
planted or altered entry, or a genuine one copied under another key, a miss that is never
deserialized. Bus messages carry one too, so a forged invalidation, deletion or flush is dropped.

The first key signs; every key verifies, so keys rotate without a flag day: deploy
``[old, new]``, then ``[new, old]``, then ``[new]``. Each signature names its key by a key id,
4 bytes of SHA-256 over a label and the key: not secret, it only picks the key to check with.

MACs are truncated to 16 bytes (128 bits; NIST SP 800-107 allows truncation to 64). The entry MAC
and the message MAC start from different labels, so one can never stand for the other. HMAC is
computed from the two padded key states (RFC 2104) copied per use: all in C, about 1.2 µs for a
small entry, where ``hmac.new`` per use costs twice that.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from gcache.errors import ConfigError

__all__ = [
    "ENV_SIGNING_KEYS",
    "KEY_ID_SIZE",
    "MAC_SIZE",
    "MIN_KEY_BYTES",
    "ReplayGuard",
    "Signer",
    "key_id",
    "signing_keys_from",
]

ENV_SIGNING_KEYS = "GCACHE_SIGNING_KEYS"
MIN_KEY_BYTES = 16
KEY_ID_SIZE = 4
MAC_SIZE = 16
_BLOCK = 64  # SHA-256's block size, the HMAC pad length
_ENTRY_LABEL = b"gcache entry v2\0"
_MESSAGE_LABEL = b"gcache bus v1\0"
_KEY_ID_LABEL = b"gcache key id\0"


def key_id(key: bytes) -> bytes:
    return hashlib.sha256(_KEY_ID_LABEL + key).digest()[:KEY_ID_SIZE]


def signing_keys_from(configured: Sequence[str | bytes] | None) -> list[bytes]:
    """The keys as bytes: ``configured``, or when it is None, ``GCACHE_SIGNING_KEYS``
    (comma-separated; blanks around and empty items ignored).

    Raises:
        ConfigError: a key that is not str or bytes, shorter than 16 bytes, or given twice.
    """
    if configured is None:
        text = os.environ.get(ENV_SIGNING_KEYS, "")
        where = f"environment variable {ENV_SIGNING_KEYS}"
        configured = [item.strip() for item in text.split(",") if item.strip()]
    else:
        where = "GCacheConfig.signing_keys"
        if isinstance(configured, (str, bytes)):
            raise ConfigError(f"{where} must be a list of keys, not one {type(configured).__name__}")
    keys: list[bytes] = []
    for n, item in enumerate(configured):
        if isinstance(item, str):
            key = item.encode("utf-8")
        elif isinstance(item, (bytes, bytearray)):
            key = bytes(item)
        else:
            raise ConfigError(f"{where}: key {n} must be str or bytes, got {type(item).__name__}")
        if len(key) < MIN_KEY_BYTES:
            raise ConfigError(
                f"{where}: key {n} has {len(key)} bytes, {MIN_KEY_BYTES} at least; make one with "
                "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
            )
        if key in keys:
            raise ConfigError(f"{where}: key {n} is given twice")
        keys.append(key)
    return keys


class _Key:
    """One key's HMAC pad states, each copied per MAC (RFC 2104 written out over hashlib)."""

    __slots__ = ("entry", "message", "outer")

    def __init__(self, key: bytes) -> None:
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        key = key.ljust(_BLOCK, b"\0")
        self.outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
        inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self.entry = inner.copy()
        self.entry.update(_ENTRY_LABEL)
        self.message = inner
        self.message.update(_MESSAGE_LABEL)

    def finish(self, inner: Any) -> bytes:
        outer = self.outer.copy()
        outer.update(inner.digest())
        return outer.digest()[:MAC_SIZE]


class Signer:
    """Signs with the first key, verifies with any (see the module docstring).

    Raises:
        ConfigError: no keys, or two keys with one key id (make another key).
    """

    __slots__ = ("_first", "_keys", "key_id")

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise ConfigError("a Signer needs at least one key")
        self._keys: dict[bytes, _Key] = {}
        for key in keys:
            kid = key_id(key)
            if kid in self._keys:
                raise ConfigError("two signing keys have the same key id; make another key")
            self._keys[kid] = _Key(key)
        self.key_id = key_id(keys[0])
        self._first = self._keys[self.key_id]

    def knows(self, kid: bytes) -> bool:
        return kid in self._keys

    # -- entries -----------------------------------------------------------------------------------

    def entry_mac(self, redis_key: str, head: bytes, payload: bytes) -> bytes:
        """The MAC of an entry stored under ``redis_key``: ``head`` is its envelope up to the MAC
        (key id included), ``payload`` what follows the MAC."""
        return self._entry_mac(self._first, redis_key, head, payload)

    def entry_ok(self, redis_key: str, kid: bytes, head: bytes, payload: bytes, mac: bytes) -> bool:
        """Whether ``mac``, read from ``redis_key`` with ``head`` and ``payload``, was made by the
        key ``kid`` names; checked before anything in the entry is trusted."""
        key = self._keys.get(kid)
        return key is not None and hmac.compare_digest(self._entry_mac(key, redis_key, head, payload), mac)

    @staticmethod
    def _entry_mac(key: _Key, redis_key: str, head: bytes, payload: bytes) -> bytes:
        name = redis_key.encode("utf-8", "surrogatepass")
        inner = key.entry.copy()
        inner.update(len(name).to_bytes(4, "big") + name)
        inner.update(head)
        inner.update(payload)
        outer = key.outer.copy()
        outer.update(inner.digest())
        return outer.digest()[:MAC_SIZE]

    # -- bus messages ------------------------------------------------------------------------------

    def message_signature(self, fields: bytes) -> bytes:
        """``<key id hex>.<mac hex>`` for a message's signed ``fields``."""
        return b"%b.%b" % (self.key_id.hex().encode(), self._message_mac(self._first, fields).hex().encode())

    def message_ok(self, fields: bytes, signature: bytes) -> bool:
        kid_hex, _, mac_hex = signature.partition(b".")
        try:
            kid, mac = bytes.fromhex(kid_hex.decode("ascii")), bytes.fromhex(mac_hex.decode("ascii"))
        except ValueError:
            return False
        key = self._keys.get(kid)
        if key is None or len(mac) != MAC_SIZE:
            return False
        return hmac.compare_digest(self._message_mac(key, fields), mac)

    @staticmethod
    def _message_mac(key: _Key, fields: bytes) -> bytes:
        inner = key.message.copy()
        inner.update(fields)
        return key.finish(inner)


class ReplayGuard:
    """Refuses a signed message seen before, or signed longer ago than ``window_sec``.

    Anyone who can SUBSCRIBE can record a genuine message and publish it again: a flush replayed
    in a loop would empty every process's LOCAL layer forever. A message names the time it was
    signed; one older than the window (or that far in the future: a clock off by more than that)
    is refused, and one seen within the window is refused as a replay. Only genuinely signed
    messages are remembered, so forged ones cannot fill the table; it is bounded all the same.
    """

    __slots__ = ("_max", "_seen", "window_us")

    def __init__(self, window_sec: float = 300.0, max_remembered: int = 100_000) -> None:
        self.window_us = int(window_sec * 1_000_000)
        self._max = max_remembered
        self._seen: OrderedDict[bytes, int] = OrderedDict()  # signature -> when it was signed

    def check(self, signature: bytes, signed_us: int, now_us: int) -> str | None:
        """None when the message is new and within the window (it is remembered); else why not."""
        if abs(now_us - signed_us) > self.window_us:
            return "stale"
        seen = self._seen
        while seen:  # forget what the window no longer admits (in the order they came)
            oldest, at = next(iter(seen.items()))
            if now_us - at <= self.window_us and len(seen) < self._max:
                break
            del seen[oldest]
        if signature in seen:
            return "replayed"
        seen[signature] = signed_us
        return None
