"""Redis Sentinel: connections to the master the sentinels name, asked again on every opening.

A RedisConfig with ``sentinels`` gets the clients of a single server (per-kind deadlines, the
one retry, the first-come-first-served bounded pool, the connect bound), whose pool is redis-py's
``SentinelConnectionPool`` underneath: each new connection asks the sentinels for the master
(the first that answers is asked first from then on), and when the answer changes the idle
connections to the old master are closed. A connection to a master that was demoted answers a
write with READONLY, which redis-py turns into a connection error (the retry then reconnects to
the new master). The sentinels' connections are closed with the pool.

The invalidation bus takes a plain client of the master named at the time it subscribes
(:func:`amaster_client`). It follows a failover by asking again on each reconnect: when the
master dies its connection drops; when Sentinel demotes a live master it sends it ``CLIENT
KILL TYPE pubsub``, which drops the subscription too.
"""

from __future__ import annotations

import functools
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel

from gcache.redis_config import RedisConfig

__all__ = ["amaster_client", "master_pool", "sentinel_manager"]


def sentinel_manager(config: RedisConfig, asynchronous: bool) -> Any:
    """redis-py's ``Sentinel`` (sync or asyncio) over ``config``'s sentinels, with their login."""
    assert config.sentinels is not None
    sentinel = redis.asyncio.sentinel.Sentinel if asynchronous else redis.sentinel.Sentinel
    return sentinel(list(config.sentinels), sentinel_kwargs=config.sentinel_options())


class _SyncClosesSentinels:
    sentinel_manager: Any

    def disconnect(self, inuse_connections: bool = True) -> None:
        """Also the sentinels' connections, on a close (a failover drops only idle ones)."""
        super().disconnect(inuse_connections)  # type: ignore[misc]
        if inuse_connections:
            for sentinel in self.sentinel_manager.sentinels:
                sentinel.connection_pool.disconnect()


class _AsyncClosesSentinels:
    sentinel_manager: Any

    async def disconnect(self, inuse_connections: bool = True) -> None:
        """Asyncio twin of :meth:`_SyncClosesSentinels.disconnect`."""
        await super().disconnect(inuse_connections)  # type: ignore[misc]
        if inuse_connections:
            for sentinel in self.sentinel_manager.sentinels:
                await sentinel.connection_pool.disconnect()


@functools.cache
def _pool_class(pool: type) -> type:
    """``pool`` (a gcache pool or redis-py's plain one) over redis-py's Sentinel pool."""
    if issubclass(pool, redis.asyncio.ConnectionPool):
        bases: tuple[type, ...] = (_AsyncClosesSentinels, pool, redis.asyncio.sentinel.SentinelConnectionPool)
    else:
        bases = (_SyncClosesSentinels, pool, redis.sentinel.SentinelConnectionPool)
    return type(f"Sentinel{pool.__name__}", bases, {})


def master_pool(config: RedisConfig, pool: type, **options: Any) -> Any:
    """A ``pool`` of connections to the master ``config``'s sentinels name; ``options`` are the
    pool's and its connections' (``max_connections``, ``timeout``, ``socket_timeout``, ...)."""
    asynchronous = issubclass(pool, redis.asyncio.ConnectionPool)
    module: Any = redis.asyncio.sentinel if asynchronous else redis.sentinel
    managed = module.SentinelManagedSSLConnection if config.tls else module.SentinelManagedConnection
    return _pool_class(pool)(
        service_name=config.service_name,
        sentinel_manager=sentinel_manager(config, asynchronous),
        connection_class=managed,
        **{**config.node_login(), **options},
    )


async def amaster_client(config: RedisConfig, **options: Any) -> redis.asyncio.Redis:
    """A plain asyncio client of the master the sentinels name now (the bus's connection).

    Raises:
        redis.sentinel.MasterNotFoundError: no sentinel answered, or none names a master up.
    """
    manager = sentinel_manager(config, asynchronous=True)
    try:
        host, port = await manager.discover_master(config.service_name)
    finally:
        await manager.aclose()
    options = {**config.node_login(), **options}
    return redis.asyncio.Redis(host=host, port=int(port), ssl=config.tls, **options)
