"""gcache: a two-tier read-through cache for Python services."""

from gcache.config import (
    CacheConfigProvider,
    CacheLayer,
    GCacheConfig,
    GCacheKeyConfig,
    RedisConfig,
    Serializer,
)
from gcache.errors import (
    ConfigError,
    FutureBufferTooLargeError,
    GCacheError,
    IdArgError,
    RedisConfigConflictError,
    RemoteError,
    UseCaseIsAlreadyRegisteredError,
    UseCaseNameIsReservedError,
)
from gcache.exposition import make_metrics_app, start_metrics_server
from gcache.gcache import GCache
from gcache.keys import GCacheKey

__version__ = "0.1.0"

__all__ = [
    "CacheConfigProvider",
    "CacheLayer",
    "ConfigError",
    "FutureBufferTooLargeError",
    "GCache",
    "GCacheConfig",
    "GCacheError",
    "GCacheKey",
    "GCacheKeyConfig",
    "IdArgError",
    "RedisConfig",
    "RedisConfigConflictError",
    "RemoteError",
    "Serializer",
    "UseCaseIsAlreadyRegisteredError",
    "UseCaseNameIsReservedError",
    "make_metrics_app",
    "start_metrics_server",
]
