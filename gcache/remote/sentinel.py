"""Redis Sentinel: connections to the master the sentinels name, asked again on every opening.

A RedisConfig with ``sentinels`` gets the clients of a single server (per-kind deadlines, the
one retry, the first-come-first-served bounded pool, the connect bound), whose pool is redis-py's
``SentinelConnectionPool`` underneath: each new connection asks the sentinels for the master
(the first that answers is asked first from then on), and when the answer changes the idle
connections to the old master are closed. A connection to a master that was demoted answers a
write with READONLY, which redis-py turns into a connection error (the retry then reconnects to
the new master). The sentinels' connections are closed with the pool.

The invalidation bus takes a plain client of the master named at the time it subscribes
(:func:`amaster_client`), listens to the sentinels' ``+switch-master`` and asks them again about
once a second, aside (:meth:`MasterClient.moved`): when they name another node it subscribes
again there,
and the pools close their connections to the old master (``follow``, through
:meth:`~gcache.remote.clients.Connections.follow_master`).
A dead master's connection drops by itself; a live one (a manual failover, a partition) keeps
answering as a master for seconds after the sentinels moved on: Redis 7's Sentinel reconfigures
an old master only after it has reported its role for 8 s, and then drops its pub/sub clients
(``CLIENT KILL TYPE pubsub``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel

from gcache.redis_config import RedisConfig

__all__ = ["SWITCH_MASTER", "MasterClient", "amaster_client", "master_pool", "sentinel_manager"]


def sentinel_manager(config: RedisConfig, asynchronous: bool) -> Any:
    """redis-py's ``Sentinel`` (sync or asyncio) over ``config``'s sentinels, with their login."""
    assert config.sentinels is not None
    sentinel = redis.asyncio.sentinel.Sentinel if asynchronous else redis.sentinel.Sentinel
    return sentinel(list(config.sentinels), sentinel_kwargs=config.sentinel_options())


class _SyncSentinelPool:
    sentinel_manager: Any
    proxy: Any  # redis-py's, which keeps the master's address

    def disconnect(self, inuse_connections: bool = True) -> None:
        """Also the sentinels' connections, on a close (a failover drops only idle ones)."""
        super().disconnect(inuse_connections)  # type: ignore[misc]
        if inuse_connections:
            for sentinel in self.sentinel_manager.sentinels:
                sentinel.connection_pool.disconnect()

    def follow(self, address: tuple[str, int]) -> None:
        """The sentinels name another master: idle connections to the old one are closed now,
        the ones in use when they are released (they are not this pool's master's)."""
        self.proxy.master_address = address
        super().disconnect(inuse_connections=False)  # type: ignore[misc]


class _AsyncSentinelPool:
    sentinel_manager: Any
    master_address: tuple[str, int] | None

    async def disconnect(self, inuse_connections: bool = True) -> None:
        """Asyncio twin of :meth:`_SyncSentinelPool.disconnect`."""
        await super().disconnect(inuse_connections)  # type: ignore[misc]
        if inuse_connections:
            for sentinel in self.sentinel_manager.sentinels:
                await sentinel.connection_pool.disconnect()

    async def follow(self, address: tuple[str, int]) -> None:
        """Every connection to the old master closed (redis-py's asyncio pool takes back a
        connection without asking whose it is): an operation on one fails as Redis down."""
        self.master_address = address
        await super().disconnect(inuse_connections=True)  # type: ignore[misc]


@functools.cache
def _pool_class(pool: type) -> type:
    """``pool`` (a gcache pool or redis-py's plain one) over redis-py's Sentinel pool."""
    if issubclass(pool, redis.asyncio.ConnectionPool):
        bases: tuple[type, ...] = (_AsyncSentinelPool, pool, redis.asyncio.sentinel.SentinelConnectionPool)
    else:
        bases = (_SyncSentinelPool, pool, redis.sentinel.SentinelConnectionPool)
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


# What a sentinel publishes once it has switched a service to its promoted replica:
# "<service> <old host> <old port> <new host> <new port>".
SWITCH_MASTER = "+switch-master"


class MasterClient(redis.asyncio.Redis):
    """The bus's client of one master, with the sentinels that named it (closed with it)."""

    sentinels: Any
    service_name: str
    on_moved: Callable[[tuple[str, int]], None] | None
    check_every: float = 1.0
    watch_retry_sec: float = 1.0  # between attempts to subscribe to a sentinel's switch-master
    watch_idle_sec: float = 30.0  # a quiet subscription is pinged this often
    watch_answer_sec: float = 2.0  # and must answer (pong, the subscription's confirmation) this soon
    _checking: asyncio.Task[bool] | None = None
    _watching: asyncio.Task[None] | None = None
    _checked_at: float = 0.0
    _moved: bool = False
    _closing: bool = False
    switches_heard: int = 0  # switch-master messages of this service heard (tests, the note)

    def moved(self) -> bool:
        """Whether the sentinels named another master when last asked; asks again in the
        background every ``check_every`` seconds, so the messages never wait for an answer
        (a hung sentinel costs a check, not the bus). The first call also starts listening
        to the sentinels' ``+switch-master``, which asks at once (:meth:`_watch`)."""
        if self._watching is None:
            self._watching = asyncio.ensure_future(self._watch())
        checking = self._checking
        if checking is not None and checking.done():
            self._checking = None
            self._moved = self._moved or (
                not checking.cancelled() and checking.exception() is None and not checking.result()
            )
        now = time.monotonic()
        if self._checking is None and not self._moved and now - self._checked_at >= self.check_every:
            self._checked_at = now
            self._checking = asyncio.ensure_future(self.still_master())
        return self._moved

    async def _watch(self) -> None:
        """Listen to a sentinel's ``+switch-master``, one sentinel after another while they fail:
        when this service is switched, ask at once (:meth:`still_master`, which tells the pools
        and drops this client's connections, so the bus subscribes on the new master now, not at
        its next check). The invalidations a pooled connection sends to a live old master, lost
        when it is demoted, are those of this gap. A sentinel user without SUBSCRIBE on that
        channel (an ACL) leaves the checks every ``check_every`` seconds alone."""
        while not self._moved and not self._closing:
            for sentinel in list(self.sentinels.sentinels):
                if self._closing:
                    return
                pubsub = sentinel.pubsub()
                try:
                    await pubsub.subscribe(SWITCH_MASTER)
                    await self._answer(pubsub, "subscribe")  # its confirmation: a hung one is left
                    pinged = False
                    while True:  # timeouts of its own: the sentinels' socket timeout is 1 s
                        wait = self.watch_answer_sec if pinged else self.watch_idle_sec
                        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=wait)
                        if self._closing:  # redis-py's read under a timeout may swallow the cancel
                            return
                        if message is None:
                            if pinged:  # hung or gone: the next sentinel
                                raise redis.TimeoutError(f"no pong from the sentinel within {wait} s")
                            await pubsub.ping()  # quiet: is it still there?
                            pinged = True
                            continue
                        if message["type"] == "pong":
                            pinged = False
                            continue
                        if message["type"] != "message" or not self._names_service(message["data"]):
                            continue
                        self.switches_heard += 1
                        if not await self.still_master():
                            self._moved = True
                            return
                except redis.ResponseError as exc:
                    if "NOPERM" in str(exc) or "permission" in str(exc):
                        return  # the sentinels' ACL: the checks alone
                except (redis.RedisError, OSError):
                    pass  # this sentinel is down: the next one
                finally:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()
            await asyncio.sleep(self.watch_retry_sec)

    async def _answer(self, pubsub: Any, kind: str) -> None:
        """The sentinel's next message is of ``kind``, within ``watch_answer_sec``; else it is
        hung or gone (a TimeoutError: the next sentinel)."""
        message = await pubsub.get_message(timeout=self.watch_answer_sec)
        if message is None or message["type"] != kind:
            raise redis.TimeoutError(f"the sentinel did not answer {kind} within {self.watch_answer_sec} s")

    def _names_service(self, data: Any) -> bool:
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
        return text.split(" ", 1)[0] == self.service_name

    async def still_master(self) -> bool:
        """Whether the sentinels still name this client's node; True when none answers (a
        subscription that works is not dropped for want of an answer). ``on_moved`` is told
        the new master's address."""
        try:
            host, port = await self.sentinels.discover_master(self.service_name)
        except redis.ConnectionError:  # MasterNotFoundError included: no sentinel knows better
            return True
        kwargs = self.connection_pool.connection_kwargs
        address = (str(host), int(port))
        if address == (kwargs["host"], kwargs["port"]):
            return True
        if self.on_moved is not None:
            self.on_moved(address)
        await self.connection_pool.disconnect()  # the subscription's too: the bus notices at once
        return False

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        self._closing = True
        for task in (self._checking, self._watching):  # the watch's subscription closed with it
            if task is not None and not task.done():
                task.cancel()
                # Its outcome is its own; a cancel of ours still stops us. Bounded: a cancel that
                # redis-py swallowed ends the watch at its next look at _closing.
                await asyncio.wait([task], timeout=self.watch_answer_sec + 1.0)
        try:
            await super().aclose(close_connection_pool)
        finally:
            await self.sentinels.aclose()


async def amaster_client(
    config: RedisConfig, on_moved: Callable[[tuple[str, int]], None] | None = None, **options: Any
) -> MasterClient:
    """A plain asyncio client of the master the sentinels name now (the bus's connection);
    ``on_moved``: see :meth:`MasterClient.still_master`.

    Raises:
        redis.sentinel.MasterNotFoundError: no sentinel answered, or none names a master up.
    """
    manager = sentinel_manager(config, asynchronous=True)
    try:
        host, port = await manager.discover_master(config.service_name)
    except BaseException:
        await manager.aclose()
        raise
    options = {**config.node_login(), **options}
    client = MasterClient(host=host, port=int(port), ssl=config.tls, **options)
    client.sentinels, client.service_name, client.on_moved = manager, config.service_name, on_moved
    return client
