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
from gcache.gcache import CachedFunction, GCache
from gcache.keys import GCacheKey
from gcache.original_wire import Envelope, hash_component
from gcache.serializers import JsonSerializer

__version__ = "0.1.0"

__all__ = [
    "CacheConfigProvider",
    "CacheLayer",
    "CachedFunction",
    "ConfigError",
    "Envelope",
    "FutureBufferTooLargeError",
    "GCache",
    "GCacheConfig",
    "GCacheError",
    "GCacheKey",
    "GCacheKeyConfig",
    "IdArgError",
    "JsonSerializer",
    "RedisConfig",
    "RedisConfigConflictError",
    "RemoteError",
    "Serializer",
    "UseCaseIsAlreadyRegisteredError",
    "UseCaseNameIsReservedError",
    "hash_component",
    "make_metrics_app",
    "start_metrics_server",
]
