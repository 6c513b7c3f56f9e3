"""Test fixtures: a private real Redis for the session, fakeredis for fast unit tests.

The real server is started on a free loopback port and stopped by its process id;
``GCACHE_TEST_REDIS_URL`` points the suite at an existing server instead (and
``GCACHE_TEST_REDIS_ADMIN_URL`` at its admin login, the same URL unless set). Nothing here
depends on a Redis already running on the machine.

gcache runs on ``redis_url``, the embedded server's application user, which may run only the
commands gcache needs; the harness (emptying the database, statistics, inspecting keys, a
function's own data) uses ``redis_admin_url``. gcache serves a refused command uncached and
only counts it, so the session ends by asking the server which commands it refused that user:
any is an error, which names them.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, cast
from urllib.parse import quote, urlsplit, urlunsplit

import pytest
import redis
import redis.asyncio.connection
import redis.connection
from prometheus_client import CollectorRegistry

from gcache import GCache, GCacheConfig, RedisConfig
from gcache._embedded_redis import EmbeddedRedis


@pytest.fixture(scope="session")
def redis_urls() -> Iterator[tuple[str, str]]:
    """The session server's (application URL, admin URL)."""
    external = os.environ.get("GCACHE_TEST_REDIS_URL")
    if external:
        yield external, os.environ.get("GCACHE_TEST_REDIS_ADMIN_URL", external)
        return
    with EmbeddedRedis() as server:
        yield server.url, server.admin_url
        denied = server.acl_denials()
        if denied:
            pytest.fail(
                "the session's Redis refused gcache's user (add what gcache needs to "
                f"gcache._embedded_redis.APP_COMMANDS, or use redis_admin_url in the test): {denied}"
            )


@pytest.fixture(scope="session")
def redis_url(redis_urls: tuple[str, str]) -> str:
    """What gcache connects with: the application user, limited to the commands gcache runs."""
    return redis_urls[0]


@pytest.fixture(scope="session")
def redis_admin_url(redis_urls: tuple[str, str]) -> str:
    """Every command, for the harness: FLUSHDB, CONFIG, INFO commandstats, KEYS, a source's data."""
    return redis_urls[1]


@pytest.fixture
def redis_client(redis_admin_url: str) -> Iterator[redis.Redis]:
    """An admin client on the test server, emptied before each test."""
    client = redis.Redis.from_url(redis_admin_url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def redis_writes(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """What every redis-py connection (sync and asyncio) sends, one item per write: a round trip."""
    return count_writes(monkeypatch)


def count_writes(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """:func:`redis_writes` under ``monkeypatch`` (one a test undoes on its own)."""
    sent: list[bytes] = []
    for connection in (redis.connection.AbstractConnection, redis.asyncio.connection.AbstractConnection):
        original = connection.send_packed_command

        def counted(self: Any, command: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            sent.append(b"".join(command) if isinstance(command, list) else bytes(command))
            return _original(self, command, *args, **kwargs)

        monkeypatch.setattr(connection, "send_packed_command", counted)
    return sent


def plant(client: redis.Redis, key: str, head: bytes, size: int) -> None:
    """A value of ``size`` bytes at ``key`` that starts with ``head``, padded with zero bytes by
    Redis itself (SETRANGE), so that the test neither sends nor holds it."""
    client.set(key, head)
    client.setrange(key, size - 1, b"\0")


def node_replid(client: Any) -> bytes:
    """The server's replication id, which a fence carries to be trusted (b"" where INFO is refused,
    as by fakeredis: the scripts then give every fence that)."""
    try:
        return str(client.info("replication")["master_replid"]).encode()
    except (redis.ResponseError, KeyError):
        return b""


def fence_fields(client: Any, nonce: bytes, watermark: str) -> Any:
    """A fence's fields as gcache writes them on ``client``'s server: nonce, watermark, replid."""
    return {"n": nonce, "w": watermark, "r": node_replid(client)}


def net_output_bytes(client: redis.Redis) -> int:
    """Bytes the server has sent its clients so far (``INFO stats``)."""
    return int(client.info("stats")["total_net_output_bytes"])


def commands_run(client: redis.Redis) -> dict[str, int]:
    """Calls of each command the server ran since ``CONFIG RESETSTAT`` (the reset itself left out)."""
    stats = {name: int(value["calls"]) for name, value in client.info("commandstats").items()}
    stats.pop("cmdstat_config|resetstat", None)  # counted after it ran
    stats.pop("cmdstat_config", None)  # the same on Redis 6.2, which counts no subcommands apart
    return stats


@pytest.fixture(params=[False, True], ids=["sync", "async"])
def is_async(request: pytest.FixtureRequest) -> bool:
    """Run a test once with a sync cached function and once with an async one."""
    return bool(request.param)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
async def make_cache(
    redis_url: str, redis_client: redis.Redis, registry: CollectorRegistry
) -> AsyncIterator[Callable[..., GCache]]:
    """Build GCache instances on the real Redis with a private metrics registry.

    Like an application at start-up, each one subscribes to the invalidation bus before it is
    handed out (``start_bus=False`` leaves that to the first tracked LOCAL use). They are
    closed after the test on the test's own event loop, as an application would.
    """
    caches: list[GCache] = []

    def make(*, start_bus: bool = True, **overrides: Any) -> GCache:
        options: dict[str, Any] = {"redis_config": RedisConfig(url=redis_url), "metrics_registry": registry}
        options.update(overrides)
        cache = GCache(GCacheConfig(**options))
        caches.append(cache)
        if start_bus:
            cache.start()
        return cache

    yield make
    for cache in caches:
        await cache.aclose()


@contextlib.contextmanager
def app_user_without(redis_url: str, redis_client: redis.Redis, rule: str, name: str) -> Iterator[str]:
    """The URL of the ACL user ``name``, with the application user's commands but ``rule``."""
    password = secrets.token_urlsafe(16)
    user = redis_client.acl_getuser("gcache")
    assert user is not None
    rules = [str(each) for each in cast(list[str], user["commands"])]
    assert rule in rules
    rules.remove(rule)
    setuser = ("ACL", "SETUSER", name, "reset", "on", f">{password}", "~*", "&*", *rules)
    redis_client.execute_command(*setuser)  # type: ignore[no-untyped-call]
    parts = urlsplit(redis_url)
    netloc = f"{quote(name)}:{quote(password)}@{parts.hostname}:{parts.port}"
    try:
        yield urlunsplit(parts._replace(netloc=netloc))
    finally:
        redis_client.acl_deluser(name)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """The value of one sample (0 when absent), matching the given labels."""
    total = 0.0
    for metric in registry.collect():
        for s in metric.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``predicate`` (it may block the calling loop: gcache's bus runs on its own thread)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)
