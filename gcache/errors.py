"""Errors raised by gcache.

    GCacheError
    ├── ConfigError                 bad GCacheConfig / GCacheKeyConfig / RedisConfig / decorator options
    │   ├── RedisConfigConflictError    both redis_config and redis_client_factory given
    │   ├── IdArgError                  a name given to cached() is not a parameter
    │   │   ├── KeyArgDoesNotExist          ... the id_arg (also a GCacheKeyConstructionError)
    │   │   └── FuncArgDoesNotExist         ... an arg_adapters or ignore_args name
    │   ├── UseCaseIsAlreadyRegisteredError
    │   └── UseCaseNameIsReservedError
    ├── GCacheKeyConstructionError  the original library's root of key errors
    ├── FutureBufferTooLargeError   ainvalidate(future_buffer_ms=...) above the configured maximum
    ├── KeyTooLongError             a call's key over max_key_length (served uncached)
    ├── RemoteError                 a Redis operation failed (also a redis.RedisError)
    └── ReplicasNotConfirmed        an invalidation applied, not confirmed on enough replicas in
                                    time (the cause of a RemoteError; invalidate_replicas)

Configuration errors surface when the cache is built or a function is decorated; everything that
goes wrong while serving a call is counted, logged and the call is served uncached instead.

The original library's names all exist (``gcache.exceptions`` gathers them), so ``except``
clauses written for it catch what this library raises. ``GCacheAlreadyInstantiated``,
``ReentrantSyncFunctionDetected``, ``GCacheDisabled`` and ``MissingKeyConfig`` are never raised
here: several instances may live in one process, recursion is served, and a call outside
``enable()`` or without a config is served uncached and counted (README, Compatibility).
"""

from __future__ import annotations

import redis

from gcache._log import summary

__all__ = [
    "ConfigError",
    "FuncArgDoesNotExist",
    "FutureBufferTooLargeError",
    "GCacheAlreadyInstantiated",
    "GCacheDisabled",
    "GCacheError",
    "GCacheKeyConstructionError",
    "IdArgError",
    "KeyArgDoesNotExist",
    "KeyTooLongError",
    "MissingKeyConfig",
    "RedisConfigConflict",
    "RedisConfigConflictError",
    "ReentrantSyncFunctionDetected",
    "RemoteError",
    "ReplicasNotConfirmed",
    "UseCaseIsAlreadyRegistered",
    "UseCaseIsAlreadyRegisteredError",
    "UseCaseNameIsReserved",
    "UseCaseNameIsReservedError",
]


class GCacheError(Exception):
    """Root of every error gcache raises."""


class ConfigError(GCacheError, ValueError):
    """A configuration value is invalid; the message names the option and the value."""


class RedisConfigConflictError(ConfigError):
    """Both redis_config and redis_client_factory were given."""


class GCacheKeyConstructionError(GCacheError):
    """The original library's root of key errors; the id_arg error is one."""


class IdArgError(ConfigError):
    """A name given to cached() does not name a parameter of the decorated function."""


class KeyArgDoesNotExist(IdArgError, GCacheKeyConstructionError):
    """The id_arg names no parameter (or is malformed)."""


class FuncArgDoesNotExist(IdArgError):
    """An arg_adapters or ignore_args name is not a parameter."""


class UseCaseIsAlreadyRegisteredError(ConfigError):
    """Two functions were decorated with the same use_case on one GCache."""


class UseCaseNameIsReservedError(ConfigError):
    """The use_case name is reserved by gcache (``watermark``)."""


class FutureBufferTooLargeError(GCacheError, ValueError):
    """An invalidation's future buffer exceeds GCacheConfig.max_future_buffer_ms."""


class KeyTooLongError(GCacheError, ValueError):
    """A call's rendered key is longer than GCacheConfig.max_key_length: it is served uncached."""


class RemoteError(GCacheError, redis.RedisError):
    """A Redis operation failed or timed out; ``operation`` says which.

    Also a ``redis.RedisError``, as the original library let redis-py's errors through:
    ``except redis.RedisError`` written for it still catches this."""

    def __init__(self, operation: str, cause: BaseException) -> None:
        super().__init__(f"redis {operation} failed: {summary(cause)}")
        self.operation = operation
        self.cause = cause


class ReplicasNotConfirmed(GCacheError, redis.RedisError):
    """With ``GCacheConfig.invalidate_replicas``: the primary applied the invalidation (raised the
    watermark, told the other processes) but fewer replicas than asked confirmed it within
    ``invalidate_wait_ms``. Raised as the ``cause`` of a :class:`RemoteError`; retrying is safe (a
    watermark never goes down)."""

    def __init__(self, wanted: int, confirmed: int, wait_ms: int) -> None:
        super().__init__(f"{confirmed} of {wanted} replicas confirmed the invalidation within {wait_ms} ms")
        self.wanted = wanted
        self.confirmed = confirmed


class GCacheAlreadyInstantiated(GCacheError):
    """The original library's singleton guard; never raised (several instances are allowed)."""


class ReentrantSyncFunctionDetected(GCacheError):
    """The original library refused recursion of sync cached functions; never raised here."""


class GCacheDisabled(GCacheError):
    """The original library's "disabled in this context"; never raised (served uncached)."""

    def __init__(self, *args: object) -> None:
        super().__init__(*(args or ("GCache is disabled in this context.",)))


class MissingKeyConfig(GCacheError):
    """The original library's missing config error; never raised (served uncached, counted)."""


# Names used by the original gcache, kept so code that catches them runs unchanged.
RedisConfigConflict = RedisConfigConflictError
UseCaseIsAlreadyRegistered = UseCaseIsAlreadyRegisteredError
UseCaseNameIsReserved = UseCaseNameIsReservedError
