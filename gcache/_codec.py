"""Values to envelopes and back, with pickle or a user Serializer (sync or async)."""

from __future__ import annotations

import inspect
import pickle
from collections.abc import Callable
from typing import Any

from gcache import _envelope
from gcache.config import Serializer
from gcache.errors import ConfigError

__all__ = ["Codec", "OriginalCodec"]


class Codec:
    """How one use case serializes; ``is_async`` says whether ``adump``/``aload`` must be awaited."""

    __slots__ = ("_serializer", "is_async", "loads", "serializer_id")

    def __init__(self, serializer: Serializer | None) -> None:
        if serializer is not None and not (
            callable(getattr(serializer, "dump", None)) and callable(getattr(serializer, "load", None))
        ):
            raise ConfigError(f"serializer must have dump() and load() methods, got {serializer!r}")
        self._serializer = serializer
        # The built-in serializers name themselves in the envelope; any other is "custom".
        self.serializer_id: int = (
            _envelope.SERIALIZER_PICKLE
            if serializer is None
            else getattr(type(serializer), "_gcache_serializer_id", _envelope.SERIALIZER_CUSTOM)
        )
        # Without a Serializer a payload is a pickle: the read path calls pickle.loads on it itself.
        self.loads: Callable[[bytes], Any] | None = pickle.loads if serializer is None else None
        self.is_async = serializer is not None and (
            inspect.iscoroutinefunction(serializer.dump) or inspect.iscoroutinefunction(serializer.load)
        )

    def dump(self, value: Any) -> tuple[bytes, int]:
        """``(payload, flags)``, for a sync serializer."""
        if self._serializer is None:
            return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL), 0
        return _payload(self._serializer.dump(value))

    async def adump(self, value: Any) -> tuple[bytes, int]:
        if self._serializer is None:
            return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL), 0
        result = self._serializer.dump(value)
        if inspect.isawaitable(result):
            result = await result
        return _payload(result)

    def load(self, payload: bytes, flags: int) -> Any:
        """The value of a payload read from an envelope with these ``flags``."""
        if self._serializer is None:
            return pickle.loads(payload)
        return self._serializer.load(_data(payload, flags))

    async def aload(self, payload: bytes, flags: int) -> Any:
        if self._serializer is None:
            return pickle.loads(payload)
        result = self._serializer.load(_data(payload, flags))
        if inspect.isawaitable(result):
            result = await result
        return result


def _payload(data: Any) -> tuple[bytes, int]:
    if isinstance(data, str):
        return data.encode("utf-8"), _envelope.FLAG_STR
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data), 0
    raise TypeError(f"Serializer.dump must return bytes or str, got {type(data).__name__}")


def _data(payload: bytes, flags: int) -> bytes | str:
    if flags & _envelope.FLAG_STR:
        return payload.decode("utf-8")
    return payload


class OriginalCodec:
    """:class:`Codec` for the original gcache's entries (``GCacheConfig(legacy_compat=True)``).

    Its envelopes frame the value itself (pickle) or a Serializer's output (JSON, PROTO, or inside
    the pickle), so a payload here is what goes into the envelope, not bytes: the value without a
    Serializer, else what its ``dump`` returns.
    """

    __slots__ = ("_serializer", "is_async", "loads", "serializer_id")

    def __init__(self, serializer: Serializer | None) -> None:
        codec = Codec(serializer)  # the same checks of the serializer
        self._serializer = serializer
        self.serializer_id = codec.serializer_id
        self.is_async = codec.is_async
        self.loads: Callable[[bytes], Any] | None = None

    def dump(self, value: Any) -> tuple[Any, int]:
        return (value if self._serializer is None else self._serializer.dump(value)), 0

    async def adump(self, value: Any) -> tuple[Any, int]:
        if self._serializer is None:
            return value, 0
        result = self._serializer.dump(value)
        if inspect.isawaitable(result):
            result = await result
        return result, 0

    def load(self, payload: Any, flags: int) -> Any:
        return payload if self._serializer is None else self._serializer.load(payload)

    async def aload(self, payload: Any, flags: int) -> Any:
        if self._serializer is None:
            return payload
        result = self._serializer.load(payload)
        if inspect.isawaitable(result):
            result = await result
        return result
