"""``gcache.web.admin.make_admin_app`` (issue 18): inspect, explain and stats as JSON from inside
the process, writes only when allowed and then behind a token; on a real Redis, through httpx's
ASGI transport."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from gcache import GCache, GCacheConfig, GCacheKeyConfig, RedisConfig
from gcache.errors import ConfigError
from gcache.urns import entity_key, value_key
from gcache.web.admin import make_admin_app
from tests.test_gcache import Maker

BOTH = GCacheKeyConfig.enabled(60)
TOKEN = "admin-token-0123456789abcdef"
ENTITY = entity_key("urn:gcache", "user_id", "1")


def cached(cache: GCache) -> Any:
    @cache.cached(key_type="user_id", id_arg="user_id", use_case="Admin", default_config=BOTH,
                  track_for_invalidation=True)  # fmt: skip
    async def get(user_id: str) -> str:
        return f"user {user_id}"

    return get


def client_of(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin")


async def health(cache: GCache, **params: str) -> Any:
    """The admin app's ``GET /health`` of ``cache``, as JSON."""
    async with client_of(make_admin_app(cache)) as client:
        answer = await client.get("/health", params=params)
    assert answer.status_code == 200, answer.text
    return answer.json()


async def test_reads_answer_what_inspect_explain_and_stats_do(make_cache: Maker) -> None:
    cache = make_cache(metrics_registry=CollectorRegistry())
    get = cached(cache)
    with cache.enable():
        await get("1")
    async with client_of(make_admin_app(cache)) as client:
        inspected = (await client.get("/inspect", params={"target": "user_id:1"})).json()
        assert [e["verdict"] for e in inspected["entries"]] == ["fresh"]
        explained = (
            await client.get("/explain", params={"key_type": "user_id", "id": "1", "use_case": "Admin"})
        ).json()
        assert explained == {
            "key": value_key(ENTITY, (), "Admin"),
            "config": BOTH.to_dict(),
            "local": "held",  # what only the process itself can tell
            "remote": {"verdict": "fresh", "why": explained["remote"]["why"]},
            "breaker_open": False,
            "bus_subscribed": True,
        }
        other = (
            await client.get("/explain", params={"key_type": "user_id", "id": "2", "use_case": "Admin"})
        ).json()
        assert (other["local"], other["remote"]) == ("not held", {"verdict": "not_found"})
        stats = (await client.get("/stats")).json()
        assert stats["by_use_case"] == {"user_id Admin": 1}
        assert stats["fences"] == 1
        missing = await client.get("/inspect")
        assert (missing.status_code, missing.json()) == (400, {"error": "missing query parameter 'target'"})
        assert (await client.get("/nothing")).status_code == 404


async def test_writes_are_off_unless_allowed_and_then_need_the_token(make_cache: Maker) -> None:
    cache = make_cache(metrics_registry=CollectorRegistry())
    get = cached(cache)
    with cache.enable():
        await get("1")
    params = {"key_type": "user_id", "id": "1"}
    async with client_of(make_admin_app(cache)) as client:
        assert (await client.post("/invalidate", params=params)).status_code == 403
    async with client_of(make_admin_app(cache, allow_writes=True, token=TOKEN)) as client:
        assert (await client.post("/invalidate", params=params)).status_code == 401
        wrong = await client.post("/invalidate", params=params, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        done = await client.post("/invalidate", params=params, headers={"Authorization": f"Bearer {TOKEN}"})
        assert done.json() == {"invalidated": ["user_id", "1"]}
        verdict = (await client.get("/inspect", params={"target": "user_id:1"})).json()["entries"][0][
            "verdict"
        ]
        assert verdict == "invalidated"
        key = value_key(ENTITY, (), "Admin")
        deleted = await client.post(
            "/delete", params={"key": key}, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert deleted.json() == {"deleted": True}
    with pytest.raises(ConfigError, match="needs a token"):
        make_admin_app(cache, allow_writes=True)


# -- GET /health: the failover machinery, from memory (issue 20) ----------------------------------


async def test_health_tells_the_breaker_the_bus_and_the_outbox(make_cache: Maker, redis_url: str) -> None:
    cache = make_cache(metrics_registry=CollectorRegistry())
    node = redis_url.split("@")[-1].rsplit("/", 1)[0]
    async with client_of(make_admin_app(cache)) as client:
        health = (await client.get("/health")).json()
        assert health == {
            "breaker": {"open": False, "failures": 0, "threshold": 5},
            "node_breakers": None,  # not a cluster
            "bus": {"subscribed": True, "server": node, "connections": 1, "last_error": "", "down_sec": 0.0},
            "outbox": {"depth": 0, "capacity": 10_000, "waiting": [], "not_shown": 0},
            "sentinel": None,  # no Sentinel
        }
        for wrong in ("-1", "1001", "many"):
            refused = await client.get("/health", params={"waiting": wrong})
            assert refused.status_code == 400
    local = GCache(GCacheConfig(metrics_registry=CollectorRegistry()))
    try:
        async with client_of(make_admin_app(local)) as client:  # LOCAL only: nothing to tell
            health = (await client.get("/health")).json()
        assert (health["breaker"], health["bus"], health["outbox"]["depth"]) == (None, None, 0)
    finally:
        await local.aclose()


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_health_and_top_tell_a_killed_redis_and_its_return(mode: str) -> None:
    """Redis killed: the calls open the breaker, the bus is lost, an invalidation waits in the
    outbox (its entity listed); Redis back on its port: the probe closes the breaker, the bus
    subscribes again, the outbox drains."""
    from prometheus_client import generate_latest

    from gcache._embedded_redis import EmbeddedRedis
    from gcache.top import render, snapshot
    from tests.conftest import wait_until

    registry = CollectorRegistry()
    with EmbeddedRedis() as server:
        config = RedisConfig(
            url=server.url, redis_py_options={"socket_timeout": 0.5, "socket_connect_timeout": 0.5}
        )
        cache = GCache(
            GCacheConfig(redis_config=config, metrics_registry=registry, breaker_failures=2,
                         breaker_probe_sec=0.05, invalidation_outbox_raises=False)
        )  # fmt: skip
        get = cached(cache)

        @cache.cached(key_type="user_id", id_arg="user_id", use_case="AdminSync", default_config=BOTH)
        def sync_get(user_id: str) -> str:
            return f"user {user_id}"

        async def call(id: str) -> str:
            with cache.enable():
                return await get(id) if mode == "async" else sync_get(id)

        async def invalidate(id: str) -> None:
            if mode == "async":
                await cache.ainvalidate("user_id", id)
            else:
                cache.invalidate("user_id", id)

        try:
            assert cache.start()
            assert await call("1") == "user 1"
            server.kill()
            for id in range(2, 10):  # new ids: each goes to Redis, and is served uncached
                assert await call(str(id)) == f"user {id}"
            await invalidate("1")
            wait_until(lambda: not cache.bus_subscribed, what="the bus lost")
            async with client_of(make_admin_app(cache)) as client:
                health = (await client.get("/health")).json()
            assert health["breaker"]["open"] is True
            assert health["bus"]["subscribed"] is False
            assert health["bus"]["last_error"] != ""
            assert health["bus"]["down_sec"] > 0
            waiting = health["outbox"]["waiting"]
            assert [(w["entity"], w["key_type"], w["future_buffer_ms"]) for w in waiting] == [
                (ENTITY, "user_id", 0)
            ]
            assert health["outbox"]["depth"] == 1
            view = render(snapshot(generate_latest(registry).decode()), {}, 1.0)
            assert "breaker open: 1   bus subscriptions: 0" in view
            assert "invalidation outbox: 1 waiting" in view

            server.start()  # on its port again, empty
            wait_until(lambda: cache.health()["outbox"]["depth"] == 0 and cache.bus_subscribed, what="back")
            wait_until(lambda: not cache.health()["breaker"]["open"], what="the breaker closed")
            async with client_of(make_admin_app(cache)) as client:
                health = (await client.get("/health")).json()
            assert health["breaker"] == {"open": False, "failures": 0, "threshold": 2}
            assert (health["bus"]["subscribed"], health["bus"]["connections"]) == (True, 2)
            assert (health["bus"]["last_error"], health["bus"]["down_sec"]) == ("", 0.0)
            assert health["outbox"]["waiting"] == []
            view = render(snapshot(generate_latest(registry).decode()), {}, 1.0)
            assert "breaker open: 0   bus subscriptions: 1" in view
        finally:
            await cache.aclose()
