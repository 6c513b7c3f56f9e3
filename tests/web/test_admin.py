"""``gcache.web.admin.make_admin_app`` (issue 18): inspect, explain and stats as JSON from inside
the process, writes only when allowed and then behind a token; on a real Redis, through httpx's
ASGI transport."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from gcache import GCache, GCacheKeyConfig
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
