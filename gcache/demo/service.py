"""The application code: what each use case caches and where (the config provider), and the
cached functions."""

from __future__ import annotations

from gcache import GCache, GCacheKey, GCacheKeyConfig
from gcache.demo.options import LOCAL, REMOTE
from gcache.demo.source import Order, SlowSource, User

__all__ = ["Service", "config_provider"]

# -- configuration: what each use case caches, and where ---------------------------------------

USE_CASE_CONFIGS: dict[str, GCacheKeyConfig] = {
    # Hot, shared data: a short-lived copy in each process, a longer one in Redis.
    "GetUser": GCacheKeyConfig(ttl_sec={LOCAL: 30, REMOTE: 300}, ramp={LOCAL: 100, REMOTE: 100}),
    # Bigger values, read from a sync code path: Redis only, so every process sees one copy.
    "GetOrders": GCacheKeyConfig(ttl_sec={REMOTE: 120}, ramp={REMOTE: 100}),
    # Reference data from an API that fails now and then: each process keeps its own copy, no
    # Redis at all, fresh for 2 s and refreshed in the background after 1 s (refresh_ahead), so
    # no caller waits for the API; when the API fails, a rate up to 10 minutes old (fail-safe)
    # beats an error.
    "GetExchangeRate": GCacheKeyConfig(
        ttl_sec={LOCAL: 2}, ramp={LOCAL: 100}, fail_safe_sec=600, refresh_ahead=0.5
    ),
}

USE_CASE_DESCRIPTIONS: dict[str, str] = {
    "GetUser": "async get_user(user_id)",
    "GetOrders": "sync  get_orders(user_id, status)",
    "GetExchangeRate": "async get_exchange_rate(currency)",
}


def config_provider(key: GCacheKey) -> GCacheKeyConfig | None:
    """Called on every cached call, so TTLs and ramps can change at run time.

    A real service would read a config service or a JSON file (``GCacheKeyConfig.load_configs``);
    returning None falls back to the decorator's ``default_config``.
    """
    return USE_CASE_CONFIGS.get(key.use_case)


class Service:
    """The application code: the source's reads, wrapped by ``gcache.cached``."""

    def __init__(self, cache: GCache, source: SlowSource) -> None:
        @cache.cached(key_type="user_id", id_arg="user_id", use_case="GetUser", track_for_invalidation=True)
        async def get_user(user_id: int) -> User:
            return await source.aread_user(user_id)

        # ``status`` is another argument: it becomes part of the key (?status=open).
        @cache.cached(key_type="user_id", id_arg="user_id", use_case="GetOrders", track_for_invalidation=True)
        def get_orders(user_id: int, status: str) -> tuple[Order, ...]:
            return source.read_orders(user_id, status)

        @cache.cached(key_type="currency", id_arg="currency", use_case="GetExchangeRate")
        async def get_exchange_rate(currency: str) -> float:
            return await source.aread_rate(currency)

        self.get_user = get_user
        self.get_orders = get_orders
        self.get_exchange_rate = get_exchange_rate
