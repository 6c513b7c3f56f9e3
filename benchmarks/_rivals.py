"""cashews and aiocache, each set up the way its documentation shows, for the shared scenarios.

Both are async only, so they take part in the async scenarios. Each is used through its
decorator with its defaults, except where a default would make the comparison unequal:

- The cached value is pickled by all three (gcache's default; cashews' default; aiocache's Redis
  cache defaults to JSON, so ``PickleSerializer`` is passed, as aiocache's README does).
- Every Redis client has a pool of ``POOL_SIZE`` connections whose callers wait for a free
  connection: cashews' default pool already blocks (its default size is 10); aiocache's default
  pool raises at once when full, so ``connection_pool_class=BlockingConnectionPool`` is passed.
- cashews' decorator coalesces concurrent calls of one key by default (``protected=True``: one
  task per key runs the read-through and the others await it); that default is kept.

The bench extra installs them; without it these rivals are skipped and the table says so.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio

from benchmarks._harness import POOL_SIZE, redis_parts

__all__ = ["AsyncFn", "Rival", "installed", "missing", "rivals_memory", "rivals_redis"]

AsyncFn = Callable[[str], Awaitable[Any]]

RIVALS = ("cashews", "aiocache")


def installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def missing() -> list[str]:
    return [name for name in RIVALS if not installed(name)]


@dataclass
class Rival:
    """One rival cache: ``decorate`` wraps an async ``(user_id) -> value`` function."""

    name: str
    decorate: Callable[[AsyncFn], AsyncFn]
    close: Callable[[], Awaitable[None]]


def rivals_memory(ttl: int) -> list[Rival]:
    """In-process caches: ``mem://`` for cashews, ``SimpleMemoryCache`` for aiocache."""
    found: list[Rival] = []
    if installed("cashews"):
        from cashews import Cache

        cashews = Cache()
        cashews.setup("mem://", size=10_000)

        def cashews_decorate(fn: AsyncFn) -> AsyncFn:
            wrapped: AsyncFn = cashews(ttl=ttl)(fn)
            return wrapped

        found.append(Rival("cashews mem://", cashews_decorate, cashews.close))
    if installed("aiocache"):
        from aiocache import cached

        caches: list[Any] = []

        def aiocache_decorate(fn: AsyncFn) -> AsyncFn:
            wrapped: Any = cached(ttl=ttl)(fn)
            caches.append(wrapped.cache)
            return wrapped  # type: ignore[no-any-return]

        async def aiocache_close() -> None:
            for cache in caches:
                await cache.close()

        found.append(Rival("aiocache memory", aiocache_decorate, aiocache_close))
    return found


def rivals_redis(url: str, ttl: int, namespace: str) -> list[Rival]:
    """Redis-backed caches on ``url`` with a blocking pool of POOL_SIZE."""
    found: list[Rival] = []
    if installed("cashews"):
        from cashews import Cache

        cashews = Cache()
        cashews.setup(url, max_connections=POOL_SIZE)

        def cashews_decorate(fn: AsyncFn) -> AsyncFn:
            wrapped: AsyncFn = cashews(ttl=ttl, prefix=namespace)(fn)
            return wrapped

        found.append(Rival("cashews redis://", cashews_decorate, cashews.close))
    if installed("aiocache"):
        from aiocache import Cache as AioCache
        from aiocache import cached
        from aiocache.serializers import PickleSerializer

        parts = redis_parts(url)
        caches: list[Any] = []

        def aiocache_decorate(fn: AsyncFn) -> AsyncFn:
            wrapped: Any = cached(
                ttl=ttl,
                cache=AioCache.REDIS,
                endpoint=parts["host"],
                port=parts["port"],
                db=parts["db"],
                password=parts["password"],
                serializer=PickleSerializer(),
                namespace=namespace,
                pool_max_size=POOL_SIZE,
                connection_pool_class=redis.asyncio.BlockingConnectionPool,
            )(fn)
            caches.append(wrapped.cache)
            return wrapped  # type: ignore[no-any-return]

        async def aiocache_close() -> None:
            for cache in caches:
                await cache.close()

        found.append(Rival("aiocache RedisCache", aiocache_decorate, aiocache_close))
    return found
