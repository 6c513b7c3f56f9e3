"""``gcache.web.django.CacheMiddleware`` with Django's test client (issue 16): per-request caching
for sync and async views, ``no-cache``/``no-store``, streaming responses, ``settings.GCACHE``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import django
import pytest
from django.conf import settings
from django.test import AsyncClient, Client
from prometheus_client import CollectorRegistry

from gcache import GCache, GCacheConfig, GCacheKeyConfig, RedisConfig
from gcache.errors import ConfigError
from gcache.web.django import django_middleware
from tests.web import _django_app

BOTH = GCacheKeyConfig.enabled(60)
KEY = "django-test-signing-key-0123456789"

if not settings.configured:
    settings.configure(
        ROOT_URLCONF="tests.web._django_app",
        MIDDLEWARE=["gcache.web.django.CacheMiddleware"],
        GCACHE="tests.web._django_app.cache",
        ALLOWED_HOSTS=["testserver"],
        SECRET_KEY="test-only",
        DEBUG=False,
    )
    django.setup()


class Reads:
    def __init__(self, cache: GCache) -> None:
        self.names = {"1": "ada"}
        self.count = 0

        @cache.cached(key_type="user_id", id_arg="user_id", use_case="DjangoName", default_config=BOTH,
                      track_for_invalidation=True)  # fmt: skip
        def name(user_id: str) -> str:
            self.count += 1
            return self.names[user_id]

        @cache.cached(key_type="user_id", id_arg="user_id", use_case="DjangoAName", default_config=BOTH,
                      track_for_invalidation=True)  # fmt: skip
        async def aname(user_id: str) -> str:
            self.count += 1
            return self.names[user_id]

        _django_app.name, _django_app.aname = name, aname


@pytest.fixture
def reads(redis_url: str, redis_client: Any) -> Iterator[Reads]:
    cache = GCache(
        GCacheConfig(
            redis_config=RedisConfig(url=redis_url), metrics_registry=CollectorRegistry(), signing_keys=[KEY]
        )
    )
    _django_app.cache = cache
    yield Reads(cache)
    _django_app.cache = None
    cache.close()


def body(response: Any) -> dict[str, Any]:
    found = response.json()
    assert isinstance(found, dict)
    return found


def test_sync_views_are_cached_for_get_and_not_for_post(reads: Reads) -> None:
    client = Client()
    assert body(client.get("/users/1")) == {"name": "ada", "on": True}
    assert body(client.get("/users/1")) == {"name": "ada", "on": True}
    assert reads.count == 1
    assert client.post("/write/1").content == b"ada"
    assert reads.count == 2  # the POST's call ran uncached


def test_no_cache_refreshes_and_no_store_bypasses(reads: Reads) -> None:
    client = Client()
    client.get("/users/1")
    reads.names["1"] = "grace"
    assert body(client.get("/users/1", headers={"Cache-Control": "no-store"})) == {
        "name": "grace",
        "on": False,
    }
    assert body(client.get("/users/1"))["name"] == "ada"
    assert body(client.get("/users/1", headers={"Cache-Control": "no-cache"}))["name"] == "grace"
    assert body(client.get("/users/1"))["name"] == "grace"
    assert reads.count == 3


def test_a_streaming_response_is_produced_inside_the_request_s_mode(reads: Reads) -> None:
    client = Client()
    for _ in range(2):
        response = client.get("/stream/1")
        assert b"".join(response.streaming_content) == b"start,ada,True"
    assert reads.count == 1


async def test_async_views_are_cached_through_the_async_middleware(reads: Reads) -> None:
    client = AsyncClient()
    assert body(await client.get("/ausers/1")) == {"name": "ada", "on": True}
    assert body(await client.get("/ausers/1")) == {"name": "ada", "on": True}
    assert reads.count == 1
    reads.names["1"] = "grace"
    assert body(await client.get("/ausers/1", headers={"Cache-Control": "no-cache"}))["name"] == "grace"
    assert reads.count == 2
    await reads_cache(reads).aclose()  # on this test's loop, where its asyncio clients live


def test_a_missing_or_wrong_settings_gcache_is_a_clear_error(
    reads: Reads, monkeypatch: pytest.MonkeyPatch
) -> None:
    middleware = django_middleware()
    monkeypatch.setattr(settings, "GCACHE", None)
    with pytest.raises(ConfigError, match=r"needs settings\.GCACHE"):
        middleware(lambda request: None)
    monkeypatch.setattr(settings, "GCACHE", "tests.web._django_app.nothing")
    with pytest.raises(ConfigError, match="names nothing importable"):
        middleware(lambda request: None)
    monkeypatch.setattr(settings, "GCACHE", "tests.web._django_app.urlpatterns")
    with pytest.raises(ConfigError, match="is a list, not a GCache"):
        middleware(lambda request: None)
    assert django_middleware(reads_cache(reads))(lambda request: "ok")(_Request()) == "ok"


def reads_cache(reads: Reads) -> GCache:
    assert _django_app.cache is not None
    return _django_app.cache


class _Request:
    method = "GET"
    META: dict[str, str] = {}  # noqa: RUF012
