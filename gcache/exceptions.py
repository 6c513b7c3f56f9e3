"""The original gcache's exception names, for code that imports them from ``gcache.exceptions``.

Each is the class this library raises for the same mistake (or, for the few the original raised
and this library does not, a class of the same name and base); see :mod:`gcache.errors`.
"""

from __future__ import annotations

from gcache.errors import (
    FuncArgDoesNotExist,
    GCacheAlreadyInstantiated,
    GCacheDisabled,
    GCacheError,
    GCacheKeyConstructionError,
    KeyArgDoesNotExist,
    MissingKeyConfig,
    RedisConfigConflict,
    ReentrantSyncFunctionDetected,
    UseCaseIsAlreadyRegistered,
    UseCaseNameIsReserved,
)

__all__ = [
    "FuncArgDoesNotExist",
    "GCacheAlreadyInstantiated",
    "GCacheDisabled",
    "GCacheError",
    "GCacheKeyConstructionError",
    "KeyArgDoesNotExist",
    "MissingKeyConfig",
    "RedisConfigConflict",
    "ReentrantSyncFunctionDetected",
    "UseCaseIsAlreadyRegistered",
    "UseCaseNameIsReserved",
]
