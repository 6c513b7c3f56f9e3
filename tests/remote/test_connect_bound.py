"""Opening a connection has its own bound (issue 19): ``socket_connect_timeout`` covers the TCP
connect, TLS and the handshake's replies (AUTH, HELLO, SELECT), not the 50 ms lookup deadline.

A loopback proxy in front of the test Redis holds back each connection's first reply (the
handshake's) longer than the lookup deadline and the write deadline, and less than the connect
bound: the first lookups of a fresh cache succeed and no error is counted, sync and async. With
a connect bound below the delay the call is served uncached, counted as the ``ConnectTimeout``
it is (not a lookup ``TimeoutError``), not retried, and said so in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
import redis.asyncio
from prometheus_client import CollectorRegistry
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gcache import CacheLayer, GCache, GCacheKeyConfig, RedisConfig
from gcache._embedded_redis import HangingListener
from gcache.remote.clients import READ
from tests.conftest import sample

pytestmark = pytest.mark.redis

REMOTE_ONLY = GCacheKeyConfig(ttl_sec={CacheLayer.REMOTE: 60}, ramp={CacheLayer.REMOTE: 100})
DELAY = 0.4  # above read_timeout_sec (0.05) and write_timeout_sec (0.25), below the default bound (1 s)


class SlowOpeningProxy:
    """A loopback TCP proxy to ``upstream`` that forwards everything, but holds each
    connection's first bytes from the server back ``delay`` seconds. Stopped by :meth:`stop`."""

    def __init__(self, upstream: tuple[str, int], delay: float) -> None:
        self._upstream = upstream
        self._delay = delay
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = [self._listener]
        self.opened = 0
        threading.Thread(target=self._accept, name="slow-opening-proxy", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # stopped
                return
            server = socket.create_connection(self._upstream)
            self._sockets += [client, server]
            self.opened += 1
            threading.Thread(target=self._pipe, args=(client, server, 0.0), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, self._delay), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket, first_delay: float) -> None:
        try:
            while data := source.recv(65536):
                if first_delay:
                    time.sleep(first_delay)
                    first_delay = 0.0
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        for s in self._sockets:
            s.close()


@pytest.fixture
def proxied(redis_url: str) -> Iterator[tuple[str, SlowOpeningProxy]]:
    """The application URL of the test Redis, through a proxy that opens connections slowly."""
    parts = urlsplit(redis_url)
    assert parts.hostname is not None
    assert parts.port is not None
    proxy = SlowOpeningProxy((parts.hostname, parts.port), DELAY)
    netloc = parts.netloc.rsplit(":", 1)[0] + f":{proxy.port}"
    yield urlunsplit(parts._replace(netloc=netloc)), proxy
    proxy.stop()


def function(cache: GCache, is_async: bool, runs: list[str]) -> Callable[[str], Any]:
    decorate = cache.cached(key_type="user_id", id_arg="uid", use_case="SlowOpen", default_config=REMOTE_ONLY)
    if is_async:

        @decorate
        async def aget(uid: str) -> str:
            runs.append(uid)
            return f"user-{uid}"

        return aget

    @decorate
    def get(uid: str) -> str:
        runs.append(uid)
        return f"user-{uid}"

    async def in_thread(uid: str) -> str:
        return await asyncio.to_thread(get, uid)

    return in_thread


@dataclass
class Setup:
    url: str  # through the proxy
    proxy: SlowOpeningProxy
    registry: CollectorRegistry
    caplog: pytest.LogCaptureFixture
    make_cache: Callable[..., GCache]
    cache: GCache | None = None  # the last one served()

    async def served(
        self, is_async: bool, calls: int, factory: Callable[[], Any] | None = None, **redis_py_options: float
    ) -> list[str]:
        """Call a fresh cache's function ``calls`` times for one id; the ids it ran for. With a
        ``factory``, through the client it returns (``redis_client_factory``)."""
        self.caplog.set_level(logging.WARNING, logger="gcache")
        if factory is not None:
            cache = self.cache = self.make_cache(
                redis_config=None, redis_client_factory=factory, start_bus=False
            )
        else:
            redis_config = RedisConfig(url=self.url)  # its defaults: a 1 s connect bound
            if redis_py_options:
                redis_config = RedisConfig(url=self.url, redis_py_options=redis_py_options)
            cache = self.cache = self.make_cache(redis_config=redis_config, start_bus=False)
        runs: list[str] = []
        get = function(cache, is_async, runs)
        with cache.enable():
            for _ in range(calls):
                assert await get("1") == "user-1"
        return runs

    def errors(self, kind: str) -> float:
        return sample(self.registry, "gcache_error_counter_total", use_case="SlowOpen", error=kind)


@pytest.fixture
def setup(
    make_cache: Callable[..., GCache],
    registry: CollectorRegistry,
    proxied: tuple[str, SlowOpeningProxy],
    caplog: pytest.LogCaptureFixture,
) -> Setup:
    return Setup(proxied[0], proxied[1], registry, caplog, make_cache)


async def test_a_slow_opening_is_no_lookup_timeout(
    setup: Setup, redis_client: redis.Redis, is_async: bool
) -> None:
    runs = await setup.served(
        is_async, 2
    )  # a miss (the lookup and the write-back each open one), a REMOTE hit
    assert runs == ["1"]
    assert setup.proxy.opened >= 2  # the read's and the write's connections, each slow to open
    assert redis_client.exists("{urn:gcache:user_id:1}#SlowOpen")
    assert setup.errors("TimeoutError") == 0
    assert setup.errors("ConnectTimeout") == 0
    assert sample(setup.registry, "gcache_request_counter_total", use_case="SlowOpen", layer="REMOTE") == 2
    assert sample(setup.registry, "gcache_miss_counter_total", use_case="SlowOpen", layer="REMOTE") == 1
    assert not [r for r in setup.caplog.records if "failed" in r.getMessage()], setup.caplog.text


async def test_a_connection_not_opened_within_its_bound_is_a_connect_timeout(
    setup: Setup, is_async: bool
) -> None:
    runs = await setup.served(is_async, 1, socket_connect_timeout=0.1, socket_timeout=1.0)  # served uncached
    assert runs == ["1"]
    assert setup.errors("ConnectTimeout") == 1  # the read's (a failed read writes nothing back)
    assert setup.errors("TimeoutError") == 0
    assert setup.errors("ConnectionError") == 0
    assert setup.proxy.opened == 1  # not retried
    (told,) = [r.getMessage() for r in setup.caplog.records if "remote read failed" in r.getMessage()]
    assert "ConnectTimeout: no connection opened within 0.1 s (socket_connect_timeout): TimeoutError" in told


async def test_an_opened_connection_reads_under_the_lookup_deadline_again(setup: Setup) -> None:
    """After a slow opening (under the connect bound), the socket and the reply parser's copy of
    its timeout are the lookup deadline again: a later lookup still gives up at 50 ms."""
    await setup.served(False, 2)  # sync: redis-py's sync connections keep timeouts on the socket
    assert setup.cache is not None
    remote = setup.cache._remote
    assert remote is not None
    read = remote._sync[READ]
    assert read is not None
    pool = read.client.connection_pool
    (connection,) = pool._available_connections
    assert type(connection).__name__.startswith("OpenBounded")
    assert connection.socket_connect_timeout == 1.0  # the bound it opened under
    assert connection.socket_timeout == 0.05  # read_timeout_sec
    assert connection._sock.gettimeout() == 0.05
    parser = connection._parser
    stored = getattr(parser, "_socket_timeout", None) or parser._buffer.socket_timeout
    assert stored == 0.05  # restored after a read with a timeout of its own (redis-py's can_read)


# A redis_client_factory's client: gcache bounds each of its operations by an asyncio timeout of
# the deadline as a whole, which would also cover opening its connections. While Redis is not
# failing and its pool has no idle connection, that timeout allows the client's own connect bound.


async def test_a_factory_clients_slow_opening_is_no_lookup_timeout(
    setup: Setup, redis_client: redis.Redis, is_async: bool
) -> None:
    runs = await setup.served(is_async, 3, factory=lambda: redis.asyncio.Redis.from_url(setup.url))
    assert runs == ["1"]  # a miss, then REMOTE hits
    assert setup.proxy.opened >= 1
    assert redis_client.exists("{urn:gcache:user_id:1}#SlowOpen")
    assert setup.errors("TimeoutError") == 0
    assert setup.errors("ConnectTimeout") == 0
    assert sample(setup.registry, "gcache_request_counter_total", use_case="SlowOpen", layer="REMOTE") == 3
    assert sample(setup.registry, "gcache_miss_counter_total", use_case="SlowOpen", layer="REMOTE") == 1
    assert not [r for r in setup.caplog.records if "failed" in r.getMessage()], setup.caplog.text


async def test_a_factory_clients_opening_allowance_is_its_own_connect_bound(setup: Setup) -> None:
    await setup.served(
        False, 2, factory=lambda: redis.asyncio.Redis.from_url(setup.url, socket_connect_timeout=2.5)
    )
    assert setup.cache is not None
    assert setup.cache._remote is not None
    (conns,) = setup.cache._remote._by_loop.values()
    conn = conns[READ]
    assert conn is not None
    assert conn.opening == 2.5
    assert not conn.may_open()  # a connection is pooled: the next operation has the deadline alone


async def hanging_factory_errors(setup: Setup, is_async: bool, **client_options: Any) -> list[str]:
    """Two calls through a factory client to a server that accepts and never answers: the
    messages of the timeouts their lookups failed with."""
    with HangingListener() as listener:
        factory = lambda: redis.asyncio.Redis(host="127.0.0.1", port=listener.port, **client_options)  # noqa: E731
        runs = await setup.served(is_async, 2, factory=factory)
    assert runs == ["1", "1"]  # served uncached, never failed
    return [r.getMessage() for r in setup.caplog.records if "remote read failed" in r.getMessage()]


async def test_a_factory_clients_allowance_ends_with_the_first_failure(setup: Setup, is_async: bool) -> None:
    """The first lookup may take the opening's bound; once it failed, the next gives up at the
    lookup deadline, though its connection must open too."""
    setup.caplog.set_level(logging.WARNING, logger="gcache")
    await hanging_factory_errors(setup, is_async, socket_connect_timeout=0.2, socket_timeout=5)
    assert setup.errors("TimeoutError") == 2
    told = [r.getMessage() for r in setup.caplog.records if "no reply within" in r.getMessage()]
    assert told
    assert "no reply within 0.25 s" in told[0]
    assert setup.cache is not None
    assert setup.cache._remote is not None
    assert not setup.cache._remote.opening_patient()  # so the second had 0.05 s alone


async def test_a_factory_connection_not_opened_within_its_bound_is_a_connect_timeout(
    setup: Setup, is_async: bool
) -> None:
    """TLS to a server that never answers: redis-py gives up at the client's own connect bound,
    counted as the ConnectTimeout it is, as gcache's own clients' openings are."""
    told = await hanging_factory_errors(
        setup,
        is_async,
        socket_connect_timeout=0.1,
        socket_timeout=5,
        ssl=True,
        ssl_cert_reqs="none",
        retry=Retry(NoBackoff(), 0),  # redis-py's own retries would open again, past the allowance
    )
    assert setup.errors("ConnectTimeout") == 1
    assert setup.errors("TimeoutError") == 1  # the second: the deadline alone, once Redis failed
    assert told
    assert "ConnectTimeout: no connection opened within 0.1 s (socket_connect_timeout)" in told[0]
