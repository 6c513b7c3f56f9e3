"""A service as users write one, for tests/behaviour/test_process_models.py: served by gunicorn.

``app`` is a FastAPI app (uvicorn workers), ``wsgi_app`` a plain WSGI app (gunicorn's sync
workers). Both read posts through a tracked cached function whose source of truth is a Redis key
(``post:<id>``), and write them by setting the source and invalidating the post. With
``GCACHE_APP_WARM=1`` the module, when imported, subscribes to the invalidation bus and fills
LOCAL and REMOTE, so that under ``gunicorn --preload`` the master has a running bus, open
connections and cached entries when it forks its workers.

Each answer names the worker's pid; ``/health`` reports what a readiness probe and a dashboard
would read in that worker: ``bus_subscribed``, ``gcache_bus_connected`` and the LOCAL hits so far.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

import redis
from fastapi import FastAPI
from prometheus_client import REGISTRY

from gcache import GCache, GCacheConfig, GCacheKeyConfig, RedisConfig

REDIS_URL = os.environ["GCACHE_APP_REDIS_URL"]
source = redis.Redis.from_url(REDIS_URL)  # the "database"
cache = GCache(GCacheConfig(redis_config=RedisConfig(url=REDIS_URL), urn_prefix="svc"))
LONG = GCacheKeyConfig.enabled(300)  # a LOCAL entry outlives every test: only invalidation ends it


def text(raw: object) -> str:
    """A source value as text ("" when missing)."""
    return raw.decode() if isinstance(raw, bytes) else ""


@cache.cached(
    key_type="post_id", id_arg="post_id", use_case="Post", track_for_invalidation=True, default_config=LONG
)
async def get_post(post_id: str) -> str:
    return text(source.get(f"post:{post_id}"))


@cache.cached(
    key_type="post_id",
    id_arg="post_id",
    use_case="SyncPost",
    track_for_invalidation=True,
    default_config=LONG,
)
def get_sync_post(post_id: str) -> str:
    return text(source.get(f"post:{post_id}"))


def health() -> dict[str, Any]:
    def value(name: str, **labels: str) -> float:
        return sum(
            s.value
            for m in REGISTRY.collect()
            for s in m.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    requests = value("gcache_request_counter_total", layer="LOCAL")
    misses = value("gcache_miss_counter_total", layer="LOCAL")
    return {
        "pid": os.getpid(),
        "bus_subscribed": cache.bus_subscribed,
        "bus_connected": value("gcache_bus_connected"),
        "local_hits": requests - misses,
    }


if os.environ.get("GCACHE_APP_WARM") == "1":
    assert cache.start(), "the bus did not come up in the process that imports the app"
    with cache.enable():
        get_sync_post("1")
        get_sync_post("1")
        asyncio.run(get_post("1"))  # a loop of the master's, closed before it forks


app = FastAPI()


@app.get("/posts/{post_id}")
async def read_post(post_id: str) -> dict[str, Any]:
    with cache.enable():
        return {"value": await get_post(post_id), "pid": os.getpid()}


@app.put("/posts/{post_id}")
async def write_post(post_id: str, value: str) -> dict[str, Any]:
    source.set(f"post:{post_id}", value)
    await cache.ainvalidate("post_id", post_id)
    return {"pid": os.getpid()}


@app.get("/health")
async def read_health() -> dict[str, Any]:
    return health()


def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path, method = environ["PATH_INFO"], environ["REQUEST_METHOD"]
    if path == "/health":
        body: dict[str, Any] = health()
    elif path.startswith("/posts/"):
        post_id = path.removeprefix("/posts/")
        if method == "PUT":
            source.set(f"post:{post_id}", parse_qs(environ["QUERY_STRING"])["value"][0])
            cache.invalidate("post_id", post_id)
            body = {"pid": os.getpid()}
        else:
            with cache.enable():
                body = {"value": get_sync_post(post_id), "pid": os.getpid()}
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found"]
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(body).encode()]
