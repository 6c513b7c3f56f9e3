"""A FastAPI app with each way of turning caching on for a request (the README's FastAPI
patterns), served by uvicorn in a subprocess for ``tests/web/test_fastapi_patterns.py``.

Each route calls a cached function (sync from a sync endpoint, async from an async one) keyed
by the route's pattern, and ``/runs`` tells how many times each function body ran.
"""

from __future__ import annotations

import logging
import os
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from gcache import GCache, GCacheConfig, GCacheKeyConfig, RedisConfig
from gcache.web import CacheMiddleware

handler = logging.StreamHandler(sys.stderr)
handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
logging.getLogger("gcache").addHandler(handler)

BOTH = GCacheKeyConfig.enabled(60)
gcache = GCache(GCacheConfig(redis_config=RedisConfig(url=os.environ["REDIS_URL"]), urn_prefix="patterns"))
runs: Counter[str] = Counter()


@gcache.cached(key_type="user_id", id_arg="user_id", use_case="SyncName", default_config=BOTH)
def sync_name(user_id: str, pattern: str) -> str:
    runs[f"{pattern}/sync"] += 1
    return f"user-{user_id}"


@gcache.cached(key_type="user_id", id_arg="user_id", use_case="AsyncName", default_config=BOTH)
async def async_name(user_id: str, pattern: str) -> str:
    runs[f"{pattern}/async"] += 1
    return f"user-{user_id}"


def sync_dependency() -> Iterator[None]:  # the pattern that does not work
    with gcache.enable():
        yield


async def async_dependency() -> AsyncIterator[None]:
    with gcache.enable():
        yield


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    yield
    await gcache.aclose()


app = FastAPI(lifespan=lifespan)
behind_middleware = FastAPI()
app.mount("/middleware", CacheMiddleware(behind_middleware, gcache, close_on_shutdown=False))


@app.get("/runs")
def get_runs() -> dict[str, int]:
    return dict(runs)


@app.get("/sync-dependency/sync", dependencies=[Depends(sync_dependency)])
def sync_dep_sync() -> dict[str, object]:
    return {"name": sync_name("1", "sync-dependency"), "on": gcache.is_enabled}


@app.get("/sync-dependency/async", dependencies=[Depends(sync_dependency)])
async def sync_dep_async() -> dict[str, object]:
    return {"name": await async_name("1", "sync-dependency"), "on": gcache.is_enabled}


@app.get("/async-dependency/sync", dependencies=[Depends(async_dependency)])
def async_dep_sync() -> dict[str, object]:
    return {"name": sync_name("1", "async-dependency"), "on": gcache.is_enabled}


@app.get("/async-dependency/async", dependencies=[Depends(async_dependency)])
async def async_dep_async() -> dict[str, object]:
    return {"name": await async_name("1", "async-dependency"), "on": gcache.is_enabled}


@behind_middleware.get("/sync")
def middleware_sync() -> dict[str, object]:
    return {"name": sync_name("1", "middleware"), "on": gcache.is_enabled}


@behind_middleware.get("/async")
async def middleware_async() -> dict[str, object]:
    return {"name": await async_name("1", "middleware"), "on": gcache.is_enabled}


@behind_middleware.get("/sync-dependency/sync", dependencies=[Depends(sync_dependency)])
def middleware_and_sync_dep() -> dict[str, object]:  # the middleware's block survives the dependency's exit
    return {"name": sync_name("1", "middleware+sync-dependency"), "on": gcache.is_enabled}
