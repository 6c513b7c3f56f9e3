"""Errors raised by gcache.

    GCacheError
    ├── ConfigError                 bad GCacheConfig / GCacheKeyConfig / RedisConfig / decorator options
    │   ├── RedisConfigConflictError    both redis_config and redis_client_factory given
    │   ├── IdArgError                  id_arg (or an arg_adapters / ignore_args name) is not a parameter
    │   ├── UseCaseIsAlreadyRegisteredError
    │   └── UseCaseNameIsReservedError
    ├── FutureBufferTooLargeError   ainvalidate(future_buffer_ms=...) above the configured maximum
    └── RemoteError                 a Redis operation failed (always counted and served uncached)

Configuration errors surface when the cache is built or a function is decorated; everything that
goes wrong while serving a call is counted, logged and the call is served uncached instead.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "FutureBufferTooLargeError",
    "GCacheError",
    "IdArgError",
    "KeyArgDoesNotExist",
    "KeyTooLongError",
    "RedisConfigConflict",
    "RedisConfigConflictError",
    "RemoteError",
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


class IdArgError(ConfigError):
    """A name given to cached() does not name a parameter of the decorated function."""


class UseCaseIsAlreadyRegisteredError(ConfigError):
    """Two functions were decorated with the same use_case on one GCache."""


class UseCaseNameIsReservedError(ConfigError):
    """The use_case name is reserved by gcache (``watermark``)."""


class FutureBufferTooLargeError(GCacheError, ValueError):
    """An invalidation's future buffer exceeds GCacheConfig.max_future_buffer_ms."""


class KeyTooLongError(GCacheError, ValueError):
    """A call's rendered key is longer than GCacheConfig.max_key_length: it is served uncached."""


class RemoteError(GCacheError):
    """A Redis operation failed or timed out; ``operation`` says which."""

    def __init__(self, operation: str, cause: BaseException) -> None:
        super().__init__(f"redis {operation} failed: {type(cause).__name__}: {cause}")
        self.operation = operation
        self.cause = cause


# Names used by the original gcache, kept so code that catches them runs unchanged.
KeyArgDoesNotExist = IdArgError
RedisConfigConflict = RedisConfigConflictError
UseCaseIsAlreadyRegistered = UseCaseIsAlreadyRegisteredError
UseCaseNameIsReserved = UseCaseNameIsReservedError
