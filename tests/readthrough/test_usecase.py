from __future__ import annotations

from collections.abc import Callable

import redis
from prometheus_client import CollectorRegistry

from gcache import GCache, GCacheKeyConfig
from tests.conftest import sample


async def test_async_and_sync_functions_are_served_from_cache_until_invalidated(
    make_cache: Callable[..., GCache], redis_client: redis.Redis, registry: CollectorRegistry
) -> None:
    cache = make_cache()
    calls: list[str] = []

    @cache.cached(
        key_type="user_id",
        id_arg="uid",
        use_case="A",
        track_for_invalidation=True,
        default_config=GCacheKeyConfig.enabled(60),
    )
    async def get_a(uid: str) -> dict[str, object]:
        calls.append(uid)
        return {"uid": uid, "n": len(calls)}

    @cache.cached(
        key_type="user_id",
        id_arg="uid",
        use_case="S",
        track_for_invalidation=True,
        default_config=GCacheKeyConfig.enabled(60),
    )
    def get_s(uid: str) -> dict[str, object]:
        calls.append(uid)
        return {"uid": uid, "n": len(calls)}

    with cache.enable():
        assert await get_a("1") == {"uid": "1", "n": 1}
        assert await get_a("1") == {"uid": "1", "n": 1}
        assert get_s("1") == {"uid": "1", "n": 2}
        assert get_s("1") == {"uid": "1", "n": 2}
        assert redis_client.exists("{urn:gcache:user_id:1}#A", "{urn:gcache:user_id:1}#S") == 2
        await cache.ainvalidate("user_id", "1")
        assert await get_a("1") == {"uid": "1", "n": 3}
        assert get_s("1") == {"uid": "1", "n": 4}
    assert sample(registry, "gcache_request_counter_total", use_case="A", layer="LOCAL") == 3
    assert sample(registry, "gcache_local_dropped_counter_total", use_case="A", reason="invalidated") == 1
