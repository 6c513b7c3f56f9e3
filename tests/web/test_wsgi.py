"""``gcache.web.WSGICacheMiddleware`` with Flask's test client (issue 16): caching on for GET and
HEAD, off for writes, ``no-cache`` refreshes, ``no-store`` bypasses, a streamed body is produced
inside the request's mode, on a real Redis."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import flask
import pytest
from prometheus_client import CollectorRegistry

from gcache import GCache, GCacheConfig, GCacheKeyConfig, RedisConfig
from gcache.web import WSGICacheMiddleware

BOTH = GCacheKeyConfig.enabled(60)
KEY = "wsgi-test-signing-key-0123456789"


class FlaskService:
    def __init__(self, cache: GCache, **options: Any) -> None:
        self.names = {"1": "ada"}
        self.reads = 0

        @cache.cached(key_type="user_id", id_arg="user_id", use_case="FlaskName", default_config=BOTH,
                      track_for_invalidation=True)  # fmt: skip
        def name(user_id: str) -> str:
            self.reads += 1
            return self.names[user_id]

        app = flask.Flask("gcache-test")

        @app.get("/users/<uid>")
        def read(uid: str) -> dict[str, Any]:
            return {"name": name(uid), "on": cache.is_enabled}

        @app.put("/users/<uid>")
        def write(uid: str) -> str:
            self.names[uid] = flask.request.get_data(as_text=True)
            return name(uid)  # outside enable(): uncached

        @app.get("/stream/<uid>")
        def stream(uid: str) -> flask.Response:
            def body() -> Iterator[str]:
                yield "start,"
                yield name(uid) + "," + str(cache.is_enabled)  # produced after the view returned

            return flask.Response(body())

        app.wsgi_app = WSGICacheMiddleware(app.wsgi_app, cache, **options)  # type: ignore[method-assign]
        self.client = app.test_client()


def name_of(response: Any) -> str:
    body = response.get_json()
    assert isinstance(body, dict)
    return str(body["name"])


@pytest.fixture
def cache(redis_url: str, redis_client: Any) -> Iterator[GCache]:
    gcache = GCache(
        GCacheConfig(
            redis_config=RedisConfig(url=redis_url), metrics_registry=CollectorRegistry(), signing_keys=[KEY]
        )
    )
    yield gcache
    gcache.close()


def test_get_is_cached_and_put_is_not(cache: GCache) -> None:
    service = FlaskService(cache)
    assert service.client.get("/users/1").json == {"name": "ada", "on": True}
    assert service.client.get("/users/1").json == {"name": "ada", "on": True}
    assert service.client.head("/users/1").status_code == 200
    assert service.reads == 1
    assert service.client.put("/users/1", data="grace").text == "grace"
    assert service.reads == 2
    assert name_of(service.client.get("/users/1")) == "ada"  # no invalidation: still cached


def test_no_cache_refreshes_and_no_store_bypasses(cache: GCache) -> None:
    service = FlaskService(cache)
    assert name_of(service.client.get("/users/1")) == "ada"
    service.names["1"] = "grace"
    assert service.client.get("/users/1", headers={"Cache-Control": "no-store"}).json == {
        "name": "grace",
        "on": False,
    }
    assert name_of(service.client.get("/users/1")) == "ada"  # no-store wrote nothing
    assert name_of(service.client.get("/users/1", headers={"Pragma": "no-cache"})) == "grace"
    assert name_of(service.client.get("/users/1")) == "grace"  # refreshed
    assert service.reads == 3


def test_a_streamed_body_is_produced_inside_the_request_s_mode(cache: GCache) -> None:
    service = FlaskService(cache)
    assert service.client.get("/stream/1").text == "start,ada,True"
    assert service.client.get("/stream/1").text == "start,ada,True"
    assert service.reads == 1  # the second stream's cached call was a hit
    assert not cache.is_enabled


def test_the_directives_and_methods_are_configurable(cache: GCache) -> None:
    service = FlaskService(cache, methods=("GET", "PUT"), honour_no_store=False)
    service.client.get("/users/1", headers={"Cache-Control": "no-store"})
    service.client.get("/users/1")
    assert service.reads == 1  # no-store ignored
    assert service.client.put("/users/1", data="grace").text == "ada"  # PUT now cached: a hit
