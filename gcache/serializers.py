"""Serializers built in whose loading runs no code: JSON and msgpack, for values read from a
shared Redis.

Pickle stays the default (code written for the original library expects it), but ``pickle.loads``
of a planted entry runs code; these cannot. Use one per use case (``@cached(serializer=...)``) or
for every use case (``GCacheConfig(serializer=...)``). Entries name the serializer that wrote
them, so a use case that changes serializer reads its old entries as misses, never as garbage.
With signing keys no planted entry is loaded at all, whatever the serializer (see SECURITY.md).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, ClassVar

from gcache import _envelope
from gcache.config import Serializer
from gcache.errors import ConfigError

__all__ = ["JsonSerializer", "MsgpackSerializer"]

_orjson: Any
try:  # orjson, when installed, is several times faster and accepts the same values
    import orjson as _orjson
except ImportError:  # pragma: no cover - depends on the environment
    _orjson = None

_msgpack: Any
try:
    import msgpack as _msgpack  # type: ignore[no-redef]
except ImportError:  # pragma: no cover - depends on the environment
    _msgpack = None


class JsonSerializer(Serializer):
    """JSON: ``dict`` (str keys), ``list``, ``str``, ``int``, ``float``, ``bool`` and ``None``.

    A tuple comes back as a list and a non-str dict key as a str (JSON's own rules); any other
    type raises ``TypeError`` on write, which serves that call uncached (counted), unless
    ``default`` turns it into one of the above. With orjson installed (and ``use_orjson``) it
    is used for both directions.
    """

    _gcache_serializer_id: ClassVar[int] = _envelope.SERIALIZER_JSON

    def __init__(self, *, default: Callable[[Any], Any] | None = None, use_orjson: bool = True) -> None:
        self._default = default
        self._orjson = _orjson if use_orjson else None

    def dump(self, obj: Any) -> bytes:
        if self._orjson is not None:
            return bytes(self._orjson.dumps(obj, default=self._default))
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=self._default).encode()

    def load(self, data: bytes | str) -> Any:
        if self._orjson is not None:
            return self._orjson.loads(data)
        return json.loads(data)


class MsgpackSerializer(Serializer):
    """msgpack (``pip install 'gcache[msgpack]'``): compact and fast, and keeps ``bytes``.

    Accepts ``dict``, ``list``, ``tuple`` (back as a list), ``str``, ``bytes``, ``int`` (64-bit),
    ``float``, ``bool`` and ``None``; with ``datetimes=True`` also timezone-aware ``datetime``
    (msgpack's timestamp type; back in UTC). Dict keys must be ``str`` or ``bytes`` on load
    (msgpack's ``strict_map_key``, against hash flooding) unless ``strict_map_key=False``. Any
    other type raises ``TypeError`` on write, which serves that call uncached (counted), unless
    ``default`` turns it into one of the above.

    Raises:
        ConfigError: msgpack is not installed.
    """

    _gcache_serializer_id: ClassVar[int] = _envelope.SERIALIZER_MSGPACK

    def __init__(
        self,
        *,
        default: Callable[[Any], Any] | None = None,
        datetimes: bool = False,
        strict_map_key: bool = True,
    ) -> None:
        if _msgpack is None:
            raise ConfigError("MsgpackSerializer needs msgpack: pip install 'gcache[msgpack]'")
        self._packer_options = {"default": default, "datetime": datetimes, "use_bin_type": True}
        self._unpacker_options = {
            "raw": False,
            "strict_map_key": strict_map_key,
            "timestamp": 3 if datetimes else 0,
        }

    def dump(self, obj: Any) -> bytes:
        return bytes(_msgpack.packb(obj, **self._packer_options))

    def load(self, data: bytes | str) -> Any:
        return _msgpack.unpackb(data, **self._unpacker_options)
