"""An app for ``tests/web/test_logging.py``: a sync and an async cached function behind
``CacheMiddleware``, on the Redis of ``REDIS_URL`` (the test gives one that refuses connections,
so every call is served uncached and told in a WARNING). The app configures no logging: the
server's logging configuration (the README's ``LOG_CONFIG``) decides where gcache's records go."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gcache import GCache, GCacheConfig, GCacheKeyConfig, RedisConfig
from gcache.web import CacheMiddleware

BOTH = GCacheKeyConfig.enabled(60)
gcache = GCache(
    GCacheConfig(
        redis_config=RedisConfig(url=os.environ["REDIS_URL"]),
        signing_keys=["logging-signing-key-0123456789"],
    )
)


@gcache.cached(key_type="user_id", id_arg="user_id", use_case="SyncLogged", default_config=BOTH)
def sync_name(user_id: str) -> str:
    return f"user-{user_id}"


@gcache.cached(key_type="user_id", id_arg="user_id", use_case="AsyncLogged", default_config=BOTH)
async def async_name(user_id: str) -> str:
    return f"user-{user_id}"


def sync_route(request: Request) -> JSONResponse:
    return JSONResponse(sync_name(request.path_params["user_id"]))


async def async_route(request: Request) -> JSONResponse:
    return JSONResponse(await async_name(request.path_params["user_id"]))


@asynccontextmanager
async def lifespan(_: Starlette) -> AsyncIterator[None]:
    yield
    await gcache.aclose()


app = Starlette(
    routes=[Route("/sync/{user_id}", sync_route), Route("/async/{user_id}", async_route)], lifespan=lifespan
)
app.add_middleware(CacheMiddleware, gcache=gcache)
