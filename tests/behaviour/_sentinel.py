"""A primary, its replica and three Redis Sentinels on real redis-server processes, and a
failover Sentinel drives (the primary killed, the replica promoted by the sentinels' vote).

The data nodes and the sentinels have separate credentials: a client must give both logins.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import redis

from gcache import GCache, GCacheKeyConfig, RedisConfig
from gcache._embedded_redis import APP_USER, Credentials, EmbeddedRedis, EmbeddedSentinel, free_port
from tests.behaviour._failover import _NO_DELAY

__all__ = ["SERVICE", "Reader", "Sentinels", "cached_read", "reader", "sentinels"]

SERVICE = "gcache-primary"

Reader = Callable[[str], Awaitable[str]]  # a cached call (sync or async) inside enable(), by id


def cached_read(
    cache: GCache,
    mode: str,
    source: dict[str, Any],
    *,
    tracked: bool,
    config: GCacheKeyConfig,
    use_case: str = "GetUser",
) -> Callable[[str], Any]:
    """The cached function (sync or async) over ``source`` (``version``: what it answers, with
    the id; ``calls``: counted)."""
    decorate = cache.cached(
        key_type="user_id",
        id_arg="uid",
        use_case=use_case,
        track_for_invalidation=tracked,
        default_config=config,
    )

    def read(uid: str) -> str:
        source["calls"] += 1
        return f"{source['version']}:{uid}"

    async def aread(uid: str) -> str:
        return read(uid)

    return decorate(aread) if mode == "async" else decorate(read)


def reader(cache: GCache, mode: str, source: dict[str, Any], **options: Any) -> Reader:
    """:func:`cached_read` (``options``: its keywords) called inside ``enable()``, awaited either
    way (a sync call runs in the caller's thread)."""
    fn = cached_read(cache, mode, source, **options)

    async def call(uid: str) -> str:
        with cache.enable():
            return str(await fn(uid) if mode == "async" else fn(uid))

    return call


class Sentinels:
    """The primary, the replica and the sentinels; a silent primary is down after 500 ms."""

    def __init__(self, down_after_ms: int = 500, tls: tuple[str, ...] = ()) -> None:
        """``tls``: TLS options (certificate, key, CA) for every process; then each listens for
        TLS on a port of its own too, and the sentinels, the replica and clients use it."""
        self.credentials = Credentials()  # the primary's and the replica's
        self.sentinel_credentials = Credentials()
        self.tls_ports = [free_port() for _ in range(5)] if tls else []
        options = [
            ("--tls-port", str(port), *tls, "--tls-replication", "yes") for port in self.tls_ports
        ] or [()] * 5
        self.primary = EmbeddedRedis(None, *_NO_DELAY, *options[0], credentials=self.credentials).start()
        primary_port = self.tls_ports[0] if tls else self.primary.port
        replica_of = ("--replicaof", "127.0.0.1", str(primary_port))
        self.replica = EmbeddedRedis(
            None, *replica_of, *_NO_DELAY, *options[1], credentials=self.credentials
        ).start()
        self.sentinels = [
            EmbeddedSentinel(
                primary_port,
                self.credentials,
                *options[2 + i],
                service_name=SERVICE,
                down_after_ms=down_after_ms,
                credentials=self.sentinel_credentials,
            ).start()
            for i in range(3)
        ]
        self.primary_admin = redis.Redis.from_url(self.primary.admin_url, socket_timeout=5)
        self.replica_admin = redis.Redis.from_url(self.replica.admin_url, socket_timeout=5)
        self.sentinel_admins = [redis.Redis.from_url(s.admin_url, socket_timeout=5) for s in self.sentinels]
        self._until(self._watched, "every sentinel sees the replica and the two other sentinels")

    def _watched(self) -> bool:
        if self.replica_admin.info("replication").get("master_link_status") != "up":
            return False
        for admin in self.sentinel_admins:
            master = admin.sentinel_master(SERVICE)
            assert isinstance(master, dict), master
            if int(master["num-other-sentinels"]) < 2 or int(master["num-slaves"]) < 1:
                return False
        return True

    @staticmethod
    def _until(done: Any, what: str, timeout: float = 20.0) -> float:
        start = time.monotonic()
        while not done():
            assert time.monotonic() - start < timeout, f"not within {timeout} s: {what}"
            time.sleep(0.02)
        return time.monotonic() - start

    def config(self, **options: Any) -> RedisConfig:
        """The application's RedisConfig: both logins, the data nodes' and the sentinels'."""
        return RedisConfig(**self.config_options(), **options)

    def config_options(self) -> dict[str, Any]:
        """:meth:`config`'s keywords (JSON-friendly, for another process)."""
        return {
            "sentinels": [("127.0.0.1", p) for p in self.tls_ports[2:] or [s.port for s in self.sentinels]],
            "service_name": SERVICE,
            "username": APP_USER,
            "password": self.credentials.app_password,
            "sentinel_username": APP_USER,
            "sentinel_password": self.sentinel_credentials.app_password,
        }

    def master_port(self, admin: redis.Redis | None = None) -> int:
        """The master's port as a sentinel (the first unless given) names it now."""
        address = (admin or self.sentinel_admins[0]).sentinel_get_master_addr_by_name(SERVICE)
        assert isinstance(address, tuple), address
        return int(address[1])

    def synced(self) -> None:
        assert self.primary_admin.wait(1, 5000) >= 1

    def hold_back(self) -> None:
        """The replica stopped and its link closed: writes from now on never reach it (see
        :meth:`tests.behaviour._failover.Pair.hold_back`). Resumed by :meth:`kill_primary`: a
        replica silent for long is one the sentinels will not promote."""
        self.replica.pause()
        self.primary_admin.client_kill_filter(_type="replica")

    def kill_primary(self) -> None:
        """SIGKILL the primary (the replica resumed if held back); the sentinels fail over."""
        self.primary.kill()
        self.replica.resume()

    def until_promoted(self, timeout: float = 20.0) -> float:
        """Seconds until every sentinel names the replica and it answers as a master."""

        def promoted() -> bool:
            ports = {self.master_port(admin) for admin in self.sentinel_admins}
            return ports == {self.replica.port} and self.replica_admin.info("replication")["role"] == "master"

        return self._until(promoted, "the replica promoted", timeout)

    def close(self) -> None:
        self.replica.resume()
        for client in (self.primary_admin, self.replica_admin, *self.sentinel_admins):
            client.close()
        for server in (*self.sentinels, self.replica, self.primary):
            server.__exit__()


@contextmanager
def sentinels(down_after_ms: int = 500, tls: tuple[str, ...] = ()) -> Iterator[Sentinels]:
    s = Sentinels(down_after_ms, tls)
    try:
        yield s
    finally:
        s.close()
