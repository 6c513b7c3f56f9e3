"""Serializers built in: JSON, whose loading runs no code, for values read from a shared Redis.

Pickle stays the default (code written for the original library expects it), but ``pickle.loads``
of a planted entry runs code; JSON cannot. Use it per use case (``@cached(serializer=...)``) or
for every use case (``GCacheConfig(serializer=...)``). See SECURITY.md.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from gcache.config import Serializer

__all__ = ["JsonSerializer"]

_orjson: Any
try:  # orjson, when installed, is several times faster and accepts the same values
    import orjson as _orjson  # type: ignore[import-not-found,no-redef]
except ImportError:  # pragma: no cover - depends on the environment
    _orjson = None


class JsonSerializer(Serializer):
    """JSON: ``dict`` (str keys), ``list``, ``str``, ``int``, ``float``, ``bool`` and ``None``.

    A tuple comes back as a list and a non-str dict key as a str (JSON's own rules); any other
    type raises ``TypeError`` on write, which serves that call uncached (counted), unless
    ``default`` turns it into one of the above. With orjson installed (and ``use_orjson``) it
    is used for both directions.
    """

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
