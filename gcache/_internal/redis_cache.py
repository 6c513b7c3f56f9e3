"""``RedisValue``, the class the original gcache pickles every PICKLE-framed entry as.

Pickle-compatible with the original's (2.x and 3.0) by construction, not by code: the same
module path and name, and a frozen slots dataclass with the same two fields in the same
order, whose pickled state is the list of those fields' values. Changing the path, a field's
name or the order breaks entries in both directions; ``tests/test_original_wire.py`` round
trips pickles through the released original to catch it. Read and written only through
:mod:`gcache.original_wire`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["RedisValue"]


@dataclass(frozen=True, slots=True)
class RedisValue:
    """An entry's creation time (ms since the epoch), which the watermark compares, and its value."""

    created_at_ms: int
    payload: Any
