"""A config provider named by tests/test_operator.py's ``explain --provider``."""

from __future__ import annotations

from gcache import CacheLayer, GCacheKey, GCacheKeyConfig


async def provider(key: GCacheKey) -> GCacheKeyConfig | None:
    if key.use_case != "App":
        return None
    return GCacheKeyConfig(ttl_sec={CacheLayer.REMOTE: 90}, ramp={CacheLayer.REMOTE: 25})
