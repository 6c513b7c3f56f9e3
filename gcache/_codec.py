"""Values to envelopes and back, with pickle or a user Serializer (sync or async)."""

from __future__ import annotations

import inspect
import pickle
from collections.abc import Callable
from typing import Any

from gcache import _envelope
from gcache.config import Serializer
from gcache.errors import ConfigError

__all__ = ["Codec"]


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
