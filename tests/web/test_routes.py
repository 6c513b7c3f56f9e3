"""``gcache.web.routes.cached_route`` on a real uvicorn server (issue 16): a FastAPI path operation
and a Starlette endpoint whose responses are cached, with ``X-Cache``, ``ETag``/304, sorted query
keys, ``Vary``, non-2xx and oversized responses not stored, invalidation by entity, dependency
injection kept."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import JSONResponse as FastJSON
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from gcache import GCache, GCacheConfig, GCacheKeyConfig, RedisConfig
from gcache.errors import ConfigError
from gcache.web import CacheMiddleware
from gcache.web.routes import cached_route
from tests.conftest import sample
from tests.web.test_asgi import Server

BOTH = GCacheKeyConfig.enabled(60)
KEY = "routes-test-signing-key-0123456789"


class Api:
    """A FastAPI app whose user pages are cached; ``runs`` counts the endpoint's runs."""

    def __init__(self, cache: GCache) -> None:
        self.cache = cache
        self.runs = 0
        self.names = {"1": "ada", "2": "grace"}
        app = FastAPI()

        def tenant() -> str:  # a dependency: injected as before the decorator
            return "acme"

        @app.get("/users/{user_id}")
        @cached_route(
            cache, key_type="user_id", id_param="user_id", default_config=BOTH, vary=["Accept-Language"],
            max_body_bytes=200,
        )  # fmt: skip
        async def get_user(
            user_id: str, request: Request, tenant: str = Depends(tenant), pad: int = 0
        ) -> Any:
            self.runs += 1
            if user_id not in self.names:
                raise HTTPException(404, "no such user")
            language = request.headers.get("accept-language", "en")
            return FastJSON(
                {"name": self.names[user_id], "tenant": tenant, "lang": language, "pad": "x" * pad},
                headers={"Vary": "Accept-Language", "Set-Cookie" if pad == 7 else "X-Extra": "1"},
            )

        @app.get("/plain/{user_id}")
        @cached_route(cache, key_type="user_id", id_param="user_id", default_config=BOTH)
        def get_plain(user_id: str) -> dict[str, str]:  # sync, no Request parameter: one is injected
            self.runs += 1
            return {"name": self.names[user_id]}

        self.fastapi = app
        self.app = CacheMiddleware(app, cache)  # closes the cache on the server's loop at shutdown


@pytest.fixture
def api(redis_url: str, redis_client: Any) -> Iterator[Api]:
    cache = GCache(
        GCacheConfig(
            redis_config=RedisConfig(url=redis_url), metrics_registry=CollectorRegistry(), signing_keys=[KEY]
        )
    )
    yield Api(cache)
    cache.close()


def test_a_response_is_stored_and_served_with_x_cache(api: Api) -> None:
    with Server(api.app) as client:
        first = client.get("/users/1")
        assert first.status_code == 200
        assert first.headers["x-cache"] == "MISS"
        assert first.json() == {"name": "ada", "tenant": "acme", "lang": "en", "pad": ""}
        second = client.get("/users/1")
        assert second.headers["x-cache"] == "HIT"
        assert second.json() == first.json()
        assert second.headers["content-type"] == "application/json"
        assert second.headers["vary"] == "Accept-Language"
        assert "x-extra" not in second.headers  # only headers safe to share are kept
        assert second.headers["etag"] == first.headers["etag"]
        plain = [client.get("/plain/2") for _ in range(2)]
        assert [r.headers["x-cache"] for r in plain] == ["MISS", "HIT"]
        assert plain[1].json() == {"name": "grace"}
    assert api.runs == 2


def test_query_parameters_are_keyed_sorted_and_vary_headers_are_keyed(api: Api) -> None:
    with Server(api.app) as client:
        assert client.get("/users/1?a=1&b=2").headers["x-cache"] == "MISS"
        assert client.get("/users/1?b=2&a=1").headers["x-cache"] == "HIT"  # the same query, sorted
        assert client.get("/users/1?a=1&b=3").headers["x-cache"] == "MISS"
        french = client.get("/users/1", headers={"Accept-Language": "fr"})
        assert french.headers["x-cache"] == "MISS"
        assert french.json()["lang"] == "fr"
        assert client.get("/users/1", headers={"Accept-Language": "fr"}).json()["lang"] == "fr"
        assert client.get("/users/1").json()["lang"] == "en"
    assert api.runs == 4


def test_etag_and_if_none_match_give_304(api: Api) -> None:
    with Server(api.app) as client:
        etag = client.get("/users/1").headers["etag"]
        not_modified = client.get("/users/1", headers={"If-None-Match": etag})
        assert not_modified.status_code == 304
        assert not_modified.content == b""
        assert not_modified.headers["etag"] == etag
        assert client.get("/users/1", headers={"If-None-Match": '"other"'}).status_code == 200


def test_errors_large_and_cookie_responses_are_returned_not_stored(api: Api) -> None:
    with Server(api.app) as client:
        for _ in range(2):  # raised as HTTPException: not stored, answered by FastAPI as usual
            missing = client.get("/users/9")
            assert missing.status_code == 404
            assert missing.json() == {"detail": "no such user"}
        for _ in range(2):
            large = client.get("/users/1?pad=500")
            assert large.headers["x-cache"] == "BYPASS"
            assert len(large.json()["pad"]) == 500
        for _ in range(2):
            assert client.get("/users/1?pad=7").headers["x-cache"] == "BYPASS"  # sets a cookie
    assert api.runs == 6


def test_invalidating_the_entity_drops_its_pages_and_no_cache_refreshes(api: Api) -> None:
    with Server(api.app) as client:
        assert client.get("/users/1").json()["name"] == "ada"
        api.names["1"] = "countess"
        assert client.get("/users/1").json()["name"] == "ada"  # still cached
        api.cache.invalidate("user_id", "1")
        page = client.get("/users/1")
        assert (page.headers["x-cache"], page.json()["name"]) == ("MISS", "countess")
        api.names["1"] = "lovelace"
        refreshed = client.get("/users/1", headers={"Cache-Control": "no-cache"})
        assert (refreshed.headers["x-cache"], refreshed.json()["name"]) == ("MISS", "lovelace")
        assert client.get("/users/1").json()["name"] == "lovelace"
        bypass = client.get("/users/1", headers={"Cache-Control": "no-store"})
        assert bypass.headers["x-cache"] == "BYPASS"
    assert api.runs == 4


def test_a_starlette_endpoint_is_cached_too(redis_url: str, redis_client: Any) -> None:
    cache = GCache(
        GCacheConfig(
            redis_config=RedisConfig(url=redis_url), metrics_registry=CollectorRegistry(), signing_keys=[KEY]
        )
    )
    runs: list[str] = []

    @cached_route(cache, key_type="user_id", id_param="uid", default_config=BOTH)
    async def page(request: Request) -> PlainTextResponse:
        runs.append(request.path_params["uid"])
        return PlainTextResponse(f"user {request.path_params['uid']}")

    app = CacheMiddleware(Starlette(routes=[Route("/u/{uid}", page)]), cache)
    try:
        with Server(app) as client:
            answers = [client.get("/u/5") for _ in range(3)]
            assert [a.text for a in answers] == ["user 5"] * 3
            assert [a.headers["x-cache"] for a in answers] == ["MISS", "HIT", "HIT"]
        assert runs == ["5"]
    finally:
        cache.close()


def test_bad_options_are_told_at_decoration(api: Api) -> None:
    with pytest.raises(ConfigError, match="max_body_bytes must be a positive integer"):
        cached_route(api.cache, key_type="user_id", id_param="user_id", max_body_bytes=0)


def test_the_openapi_schema_keeps_the_endpoint_s_own_parameters(api: Api) -> None:
    schema = api.fastapi.openapi()
    parameters = {p["name"] for p in schema["paths"]["/users/{user_id}"]["get"]["parameters"]}
    assert parameters == {
        "user_id",
        "pad",
    }  # the injected Request and the dependency are not query parameters


def test_a_non_2xx_response_returned_is_not_stored(redis_url: str, redis_client: Any) -> None:
    registry = CollectorRegistry()
    cache = GCache(
        GCacheConfig(redis_config=RedisConfig(url=redis_url), metrics_registry=registry, signing_keys=[KEY])
    )
    runs: list[int] = []

    @cached_route(cache, key_type="user_id", id_param="uid", default_config=BOTH)
    async def gone(request: Request) -> PlainTextResponse:
        runs.append(1)
        return PlainTextResponse("gone", status_code=410)

    try:
        with Server(CacheMiddleware(Starlette(routes=[Route("/g/{uid}", gone)]), cache)) as client:
            answers = [client.get("/g/1") for _ in range(2)]
        assert [(a.status_code, a.headers["x-cache"]) for a in answers] == [(410, "BYPASS")] * 2
        assert len(runs) == 2
        assert redis_client.keys("*#*gone*") == []  # nothing written
        assert sample(registry, "gcache_error_counter_total") == 0  # returned, not a failure
    finally:
        cache.close()
