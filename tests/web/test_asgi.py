"""``gcache.web.CacheMiddleware`` on a real uvicorn server on loopback (issue 16): caching on per
request by method, ``Cache-Control: no-cache`` / ``no-store``, and the cache closed at shutdown,
for sync and async endpoints of a Starlette app."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from gcache import GCache, GCacheConfig, GCacheKeyConfig, RedisConfig
from gcache._embedded_redis import free_port
from gcache.web import CacheMiddleware
from tests.conftest import sample

BOTH = GCacheKeyConfig.enabled(60)
KEY = "web-test-signing-key-0123456789"  # signed, as a service should be: no pickle warning


class Service:
    """A source that counts its reads, behind cached functions, behind a Starlette app."""

    def __init__(self, cache: GCache, is_async: bool) -> None:
        self.cache = cache
        self.names = {"1": "ada"}
        self.reads = 0

        @cache.cached(key_type="user_id", id_arg="user_id", use_case="Name", default_config=BOTH,
                      track_for_invalidation=True)  # fmt: skip
        async def aname(user_id: str) -> str:
            self.reads += 1
            return self.names[user_id]

        @cache.cached(key_type="user_id", id_arg="user_id", use_case="SyncName", default_config=BOTH,
                      track_for_invalidation=True)  # fmt: skip
        def name(user_id: str) -> str:
            self.reads += 1
            return self.names[user_id]

        async def aread(request: Request) -> JSONResponse:
            return JSONResponse({"name": await aname(request.path_params["uid"]), "on": cache.is_enabled})

        def read(request: Request) -> JSONResponse:  # Starlette runs it in a thread
            return JSONResponse({"name": name(request.path_params["uid"]), "on": cache.is_enabled})

        async def write(request: Request) -> PlainTextResponse:
            uid = request.path_params["uid"]
            self.names[uid] = (await request.body()).decode()
            # A cached read inside a write request runs uncached: not a read to serve from the cache.
            seen = await aname(uid) if is_async else await asyncio.to_thread(name, uid)
            return PlainTextResponse(seen)

        endpoint = aread if is_async else read
        self.app = CacheMiddleware(
            Starlette(
                routes=[Route("/users/{uid}", endpoint), Route("/users/{uid}", write, methods=["PUT"])]
            ),
            cache,
        )


class Server:
    """uvicorn serving ``app`` on a free loopback port, in a thread of its own."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, lifespan="on", log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> httpx.Client:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=5)
        return self.client

    def __exit__(self, *exc: object) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(timeout=10)
        assert not self.thread.is_alive(), "uvicorn did not stop"


@pytest.fixture
def service(redis_url: str, redis_client: Any, is_async: bool) -> Iterator[Service]:  # redis_client: emptied
    registry = CollectorRegistry()
    cache = GCache(
        GCacheConfig(redis_config=RedisConfig(url=redis_url), metrics_registry=registry, signing_keys=[KEY])
    )
    yield Service(cache, is_async)
    cache.close()


def test_get_requests_are_cached_and_other_methods_are_not(service: Service) -> None:
    with Server(service.app) as client:
        first = client.get("/users/1").json()
        assert first == {"name": "ada", "on": True}
        assert client.get("/users/1").json() == first
        assert service.reads == 1  # the second GET was a hit
        assert client.head("/users/1").status_code == 200  # HEAD is a read too
        assert service.reads == 1

        put = client.put("/users/1", content=b"grace")
        assert put.text == "grace"  # the PUT's own read ran uncached, outside enable()
        assert service.reads == 2
        assert client.get("/users/1").json()["name"] == "ada"  # still the cached one: no invalidation
    registry = service.cache.config.metrics_registry
    assert registry is not None
    assert sample(registry, "gcache_disabled_counter_total", reason="context") == 1  # the PUT's call


def test_no_cache_reads_past_the_cache_and_refreshes_it(service: Service) -> None:
    with Server(service.app) as client:
        assert client.get("/users/1").json()["name"] == "ada"
        service.names["1"] = "grace"  # changed behind the cache's back
        assert client.get("/users/1").json()["name"] == "ada"  # a hit
        assert client.get("/users/1", headers={"Cache-Control": "no-cache"}).json()["name"] == "grace"
        assert client.get("/users/1").json()["name"] == "grace"  # the refresh was written back
        service.names["1"] = "alan"
        assert client.get("/users/1", headers={"Pragma": "no-cache"}).json()["name"] == "alan"
        assert client.get("/users/1").json()["name"] == "alan"
    assert service.reads == 3


def test_no_store_neither_reads_nor_fills_the_cache(service: Service) -> None:
    with Server(service.app) as client:
        assert client.get("/users/1", headers={"Cache-Control": "max-age=0, no-store"}).json() == {
            "name": "ada",
            "on": False,
        }
        assert service.reads == 1
        assert client.get("/users/1").json()["name"] == "ada"
        assert service.reads == 2  # the no-store request stored nothing
        assert client.get("/users/1", headers={"Cache-Control": "no-store"}).json()["name"] == "ada"
        assert service.reads == 3  # nor read the cached one


def test_the_directives_can_be_switched_off(redis_url: str, redis_client: Any, is_async: bool) -> None:
    cache = GCache(
        GCacheConfig(
            redis_config=RedisConfig(url=redis_url), metrics_registry=CollectorRegistry(), signing_keys=[KEY]
        )
    )
    service = Service(cache, is_async)
    service.app = CacheMiddleware(service.app.app, cache, honour_no_cache=False, honour_no_store=False)
    try:
        with Server(service.app) as client:
            for header in ({}, {"Cache-Control": "no-cache"}, {"Cache-Control": "no-store"}):
                assert client.get("/users/1", headers=header).json()["name"] == "ada"
        assert service.reads == 1  # every request served from the cache
    finally:
        cache.close()


def test_close_on_shutdown_off_leaves_the_cache_to_the_app(redis_url: str, redis_client: Any) -> None:
    # Sync endpoints only: the asyncio clients of an async one belong to the server's loop, which
    # is gone once it stopped; such an app closes the cache itself, in its own lifespan.
    cache = GCache(
        GCacheConfig(
            redis_config=RedisConfig(url=redis_url), metrics_registry=CollectorRegistry(), signing_keys=[KEY]
        )
    )
    service = Service(cache, is_async=False)
    service.app = CacheMiddleware(service.app.app, cache, close_on_shutdown=False)
    try:
        with Server(service.app) as client:
            assert client.get("/users/1").status_code == 200
        assert not cache._closed
    finally:
        cache.close()


def test_lifespan_shutdown_closes_the_cache_without_a_traceback(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING), Server(service.app) as client:
        assert client.get("/users/1").status_code == 200
        assert not service.cache._closed
    assert service.cache._closed  # closed by the app's shutdown, on the server's loop
    assert [r.getMessage() for r in caplog.records if r.name.startswith(("uvicorn", "gcache"))] == []
