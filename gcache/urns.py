"""Storage keys: the URN grammar and its escaping.

    value key:      {<prefix>:<key_type>:<id>}?<arg>=<val>&<arg>=<val>#<use_case>
    watermark key:  {<prefix>:<key_type>:<id>}#watermark

Only the grammar's own delimiters are escaped (as ``%XX``), and each only where it would be
ambiguous, so keys stay readable in ``redis-cli`` while two different (key_type, id, args,
use_case) never render to the same key. Between the prefix and the closing brace there is
exactly one raw ``:``, so caches whose prefixes extend each other (``app``, ``app:tenant``)
never share a key. The braces are a Redis Cluster hash tag: every key of an
entity, and its watermark, share one slot.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import unquote

__all__ = [
    "DEFAULT_URN_PREFIX",
    "ID_ESCAPES",
    "KEY_TYPE_ESCAPES",
    "WATERMARK_USE_CASE",
    "PartHasher",
    "bus_channel",
    "entity_key",
    "entity_of",
    "escape_id",
    "id_of",
    "key_type_of",
    "lock_key",
    "original_entity_key",
    "original_value_key",
    "owned_by",
    "typed_part",
    "value_key",
    "value_key_tail",
    "watermark_key",
]

WATERMARK_USE_CASE = "watermark"
DEFAULT_URN_PREFIX = "urn:gcache"


def _table(chars: str) -> dict[int, str]:
    return {ord(c): f"%{ord(c):02X}" for c in "%" + chars}


# Which delimiters each component must escape to keep the grammar unambiguous.
KEY_TYPE_ESCAPES = _table("{}:")  # the first ':' after the prefix ends key_type
ID_ESCAPES = _table("{}:")  # the closing brace ends the id; ':' so a longer prefix never collides
_ARG_NAME = _table("{}=&#")  # the first '=' ends a name
_ARG_VALUE = _table("{}&#")  # '&' ends a value, '#' ends the argument list
_USE_CASE = _table("{}")  # the rest of the key


def typed_part(value: Any) -> str:
    """An id or argument value with its type in the key (``GCacheConfig.typed_keys``), so that
    ``1`` and ``"1"``, ``None`` and ``"None"``, ``True`` and ``"True"`` are different entries.

    A ``str`` renders as itself (so string ids keep their keys when typed keys are turned on),
    with a ``!`` put in front when it starts with one; any other value renders as
    ``!<type>!<str(value)>`` (``!int!1``, ``!NoneType!None``, ``!uuid.UUID!...``): its type
    name has no ``!``, so no string renders like it, and no two types do alike.
    """
    cls = type(value)
    if cls is str:
        return "!" + value if value[:1] == "!" else str(value)
    name = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    return f"!{name}!{value}"


def escape_id(id: str) -> str:
    """``id`` as a key holds it (:data:`ID_ESCAPES`). Most ids hold no delimiter: four substring
    tests cost a third of ``str.translate``'s lookup a character on a short id, a tenth on a
    20-character one (the read-through's wrappers test inline, as here; tests/test_urns.py
    pins these four to the table)."""
    if "%" in id or "{" in id or "}" in id or ":" in id:
        return id.translate(ID_ESCAPES)
    return id


def entity_key(prefix: str, key_type: str, id: str) -> str:
    """The hash-tagged entity part shared by all keys of one entity."""
    return "{" + f"{prefix}:{key_type.translate(KEY_TYPE_ESCAPES)}:{escape_id(id)}" + "}"


def value_key(entity: str, args: Sequence[tuple[str, str]], use_case: str) -> str:
    if args:
        rendered = "&".join(f"{n.translate(_ARG_NAME)}={v.translate(_ARG_VALUE)}" for n, v in args)
        return f"{entity}?{rendered}{value_key_tail(use_case)}"
    return entity + value_key_tail(use_case)


def value_key_tail(use_case: str) -> str:
    """How a value key ends: a use case renders it once, for the calls of an id alone."""
    return "#" + use_case.translate(_USE_CASE)


def original_entity_key(prefix: str, key_type: str, id: str) -> str:
    """:func:`entity_key` as the original gcache renders it (``GCacheConfig(legacy_compat=True)``):
    its parts unescaped, so that both libraries name one entity alike."""
    return "{" + f"{prefix}:{key_type}:{id}" + "}"


def original_value_key(entity: str, args: Sequence[tuple[str, str]], use_case: str, *, tracked: bool) -> str:
    """A value key as the original gcache renders it: unescaped, and without the braces when the
    use case is untracked (the original hash-tags only what a watermark must share a slot with)."""
    head = entity if tracked else entity[1:-1]
    if args:
        return head + "?" + "&".join(f"{n}={v}" for n, v in args) + "#" + use_case
    return head + "#" + use_case


class PartHasher:
    """Keys an id or argument value longer than ``longer_than`` characters by its keyed hash:
    ``~h`` and 32 hex digits of HMAC-SHA-256 with ``secret`` (``GCacheConfig.key_hash_secret``).

    Applied to the raw part, before escaping, so one entity keeps one key everywhere: calls,
    direct access and ``invalidate()`` hash the id alike. A short id spelled like a hash cannot
    be aimed at a long one's entry without the secret; whoever can read the keys in Redis could,
    but can read the entries already.
    """

    __slots__ = ("_secret", "longer_than")

    def __init__(self, secret: bytes, longer_than: int) -> None:
        self._secret = secret
        self.longer_than = longer_than

    def __call__(self, part: str) -> str:
        if len(part) <= self.longer_than:
            return part
        digest = hmac.new(self._secret, part.encode("utf-8", "surrogatepass"), hashlib.sha256)
        return "~h" + digest.hexdigest()[:32]

    def key(
        self, build: Callable[..., tuple[str, tuple[tuple[str, str], ...]]]
    ) -> Callable[..., tuple[str, tuple[tuple[str, str], ...]]]:
        """``build`` (a KeyBuilder's), with its long parts hashed."""

        def hashed(*call: object) -> tuple[str, tuple[tuple[str, str], ...]]:
            id, pairs = build(*call)
            return self(id), tuple((name, self(value)) for name, value in pairs)

        return hashed


def owned_by(key: str, prefix: str) -> bool:
    """Whether ``key`` was rendered under exactly ``prefix`` (not a longer one that extends it)."""
    head = "{" + prefix + ":"
    end = key.find("}")
    return key.startswith(head) and end > 0 and key.count(":", len(head), end) == 1


def lock_key(value_key: str) -> str:
    """The distributed single-flight lock of a value key: ``{entity}!lock`` then the rest.

    A value key goes on from its entity with ``?`` or ``#``, so no value key, nor the fence,
    can render to it; it shares the entity's slot and prefix (``flushall`` removes it).
    """
    end = value_key.find("}") + 1
    if not end:  # the original's untracked key (legacy_compat) has no hash tag: it gets one
        return "{" + value_key + "}!lock"
    return value_key[:end] + "!lock" + value_key[end:]


def watermark_key(entity: str) -> str:
    return f"{entity}#{WATERMARK_USE_CASE}"


def entity_of(key: str) -> str:
    """The entity part (``{...}``) of a value or watermark key."""
    return key[: key.index("}") + 1]


def bus_channel(prefix: str, db: int = 0) -> str:
    """The pub/sub channel that carries this prefix's invalidations to every process.

    Pub/sub ignores the database, so the channel names it (all but db 0, whose channel keeps
    its name): caches on two databases of one server never hear each other.
    """
    return f"{prefix}#invalidation" if db == 0 else f"{prefix}#invalidation#db{db}"


def key_type_of(entity: str, prefix: str) -> str:
    """The (unescaped) key_type of an entity rendered under ``prefix``."""
    start = len(prefix) + 2
    return unquote(entity[start : entity.index(":", start)])


def id_of(entity: str, prefix: str) -> str:
    """The (unescaped) id of an entity rendered under ``prefix``: what follows the key type."""
    start = len(prefix) + 2
    return unquote(entity[entity.index(":", start) + 1 : -1])
