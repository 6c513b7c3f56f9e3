"""The circuit breaker: what opens it, what it skips, and the probe that closes it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis
import redis.asyncio
from prometheus_client import CollectorRegistry

from gcache import CacheLayer, GCache, GCacheKeyConfig, RedisConfig
from gcache._embedded_redis import EmbeddedRedis, HangingListener
from gcache._loop_thread import LoopThread
from gcache.breaker import CircuitBreaker, NodeBreakers, is_outage
from gcache.errors import RemoteError
from tests.conftest import sample, wait_until

REMOTE_ONLY = GCacheKeyConfig(ttl_sec={CacheLayer.REMOTE: 60}, ramp={CacheLayer.REMOTE: 100})
FAST = {"socket_timeout": 0.5, "socket_connect_timeout": 0.5}


class Probe:
    """A probe that fails ``failures`` times, then answers."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise RemoteError("ping", redis.ConnectionError("refused"))


@pytest.fixture
def loop_thread() -> Any:
    thread = LoopThread("test-breaker")
    yield thread
    thread.stop()


def breaker(
    loop_thread: LoopThread, probe: Callable[[], Awaitable[Any]], threshold: int = 3
) -> tuple[CircuitBreaker, list[bool]]:
    changes: list[bool] = []
    return (
        CircuitBreaker(
            threshold=threshold,
            probe_sec=0.01,
            probe=probe,
            submit=loop_thread.submit,
            on_change=changes.append,
        ),
        changes,
    )


def test_outages_are_connection_errors_and_timeouts_not_command_errors() -> None:
    assert is_outage(RemoteError("get", redis.ConnectionError("refused")))
    assert is_outage(RemoteError("get", redis.TimeoutError("timed out")))
    assert is_outage(RemoteError("get", ConnectionResetError()))
    assert is_outage(asyncio.TimeoutError())
    assert not is_outage(RemoteError("set", redis.ResponseError("OOM command not allowed")))
    assert not is_outage(RemoteError("get", redis.exceptions.NoScriptError("NOSCRIPT")))
    assert not is_outage(ValueError("not redis at all"))


def test_opens_after_threshold_failures_in_a_row_and_a_success_resets_the_count(
    loop_thread: LoopThread,
) -> None:
    probe = Probe(failures=10**6)  # never answers: stays open
    b, changes = breaker(loop_thread, probe)
    outage = RemoteError("get", redis.ConnectionError("refused"))
    b.failure(outage)
    b.failure(outage)
    b.success()
    b.failure(outage)
    b.failure(outage)
    assert not b.is_open
    assert changes == []
    b.failure(RemoteError("set", redis.ResponseError("OOM")))  # the server answered: not counted
    assert not b.is_open
    b.failure(outage)
    assert b.is_open
    assert changes == [True]
    b.failure(outage)  # already open: reported once
    assert changes == [True]
    wait_until(lambda: probe.calls >= 3, what="probes while open")
    assert b.is_open
    b.stop()
    assert not b.is_open
    assert changes == [True, False]
    calls = probe.calls
    time.sleep(0.05)
    assert probe.calls <= calls + 1  # stop() ended the probing


def test_a_probe_that_gets_an_answer_closes_it(loop_thread: LoopThread) -> None:
    probe = Probe(failures=2)
    b, changes = breaker(loop_thread, probe, threshold=1)
    b.failure(RemoteError("get", redis.TimeoutError("timed out")))
    assert b.is_open
    wait_until(lambda: not b.is_open, what="the breaker to close")
    assert probe.calls == 3
    assert changes == [True, False]
    assert b.failures == 0
    b.failure(RemoteError("get", redis.TimeoutError("timed out")))  # and it opens again
    assert b.is_open
    assert changes == [True, False, True]
    b.stop()


def test_threshold_zero_never_opens(loop_thread: LoopThread) -> None:
    b, changes = breaker(loop_thread, Probe(0), threshold=0)
    for _ in range(100):
        b.failure(RemoteError("get", redis.ConnectionError("refused")))
    assert not b.is_open
    assert changes == []


# -- in a GCache, on a real server ---------------------------------------------------------------


async def test_open_breaker_skips_remote_until_redis_answers_again(
    make_cache: Callable[..., GCache],
    registry: CollectorRegistry,
    is_async: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gcache")
    server = EmbeddedRedis()  # not started: nothing answers on its port, its URL is known
    cache = make_cache(
        redis_config=RedisConfig(url=server.url, redis_py_options=dict(FAST)),
        breaker_failures=3,
        breaker_probe_sec=0.05,
        start_bus=False,
    )
    calls: list[str] = []

    def compute(uid: str) -> str:
        calls.append(uid)
        return f"user-{uid}"

    if is_async:

        @cache.cached(key_type="user_id", id_arg="uid", use_case="Broken", default_config=REMOTE_ONLY)
        async def aget(uid: str) -> str:
            return compute(uid)

        get: Callable[[str], Awaitable[str]] = aget
    else:

        @cache.cached(key_type="user_id", id_arg="uid", use_case="Broken", default_config=REMOTE_ONLY)
        def sget(uid: str) -> str:
            return compute(uid)

        async def get(uid: str) -> str:
            return sget(uid)

    errors = {"use_case": "Broken", "layer": "REMOTE", "error": "ConnectionError"}
    down = {"use_case": "Broken", "layer": "REMOTE", "reason": "server_down"}
    with cache.enable():
        for _i in range(3):
            assert await get("1") == "user-1"
        assert sample(registry, "gcache_error_counter_total", **errors) == 3
        assert sample(registry, "gcache_breaker_open") == 1
        assert sample(registry, "gcache_breaker_transition_counter_total", state="open") == 1
        for _i in range(20):  # skipped: no more errors, no connection attempts
            assert await get("1") == "user-1"
        assert sample(registry, "gcache_error_counter_total", **errors) == 3
        assert sample(registry, "gcache_disabled_counter_total", **down) == 20
        assert len(calls) == 23

        with server:
            wait_until(lambda: sample(registry, "gcache_breaker_open") == 0, what="a probe to close it")
            assert sample(registry, "gcache_breaker_transition_counter_total", state="closed") == 1
            (closed,) = [r for r in caplog.records if "circuit breaker closed" in r.getMessage()]
            assert closed.levelno == logging.INFO  # the end of trouble, told once, no warning
            assert "REMOTE back for 'urn:gcache'" in closed.getMessage()
            assert await get("2") == "user-2"
            assert await get("2") == "user-2"  # cached again
            assert calls[-1] == "2"
            assert len(calls) == 24
            keys = redis.Redis.from_url(server.admin_url).keys("*")
            assert any(b"Broken" in k for k in keys)
            await cache.aclose()  # while the server is up, so the clients close cleanly


async def test_a_factory_client_gets_the_read_deadline_as_an_asyncio_timeout(
    make_cache: Callable[..., GCache],
    registry: CollectorRegistry,
    is_async: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A client built by redis_client_factory has its own timeouts; gcache's deadline still holds,
    and its warning says what timed out (asyncio's own TimeoutError has no message)."""
    caplog.set_level(logging.WARNING, logger="gcache")
    with HangingListener() as listener:
        cache = make_cache(
            redis_config=None,
            redis_client_factory=lambda: redis.asyncio.Redis.from_url(listener.url, socket_timeout=30),
            read_timeout_sec=0.1,
            breaker_failures=0,
            start_bus=False,
        )
        if is_async:

            @cache.cached(key_type="user_id", id_arg="uid", use_case="Factory", default_config=REMOTE_ONLY)
            async def aget(uid: str) -> str:
                return f"user-{uid}"

            async def get(uid: str) -> str:
                return await aget(uid)
        else:

            @cache.cached(key_type="user_id", id_arg="uid", use_case="Factory", default_config=REMOTE_ONLY)
            def sget(uid: str) -> str:
                return f"user-{uid}"

            async def get(uid: str) -> str:
                return await asyncio.to_thread(sget, uid)

        with cache.enable():
            for uid in ("1", "2"):
                started = time.monotonic()
                assert await get(uid) == f"user-{uid}"
                assert 0.09 < time.monotonic() - started < 2.0  # the 0.1 s deadline (+ 1 s to open), not 30 s
        timeouts = sample(registry, "gcache_error_counter_total", use_case="Factory", layer="REMOTE")
        assert timeouts == 2
        await cache.aclose()
    (told,) = [r for r in caplog.records if "remote read failed" in r.getMessage()]
    assert (
        "(REMOTE): TimeoutError: no reply within 1.1 s; served uncached" in told.getMessage()
    )  # the first: it opened
    assert told.exc_info is None  # a traceback only at DEBUG


def test_node_breakers_open_per_node_probe_once_a_period_and_close_on_an_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    changes: list[tuple[str, bool]] = []
    nodes = NodeBreakers(
        threshold=3, probe_sec=1.0, on_change=lambda node, is_open: changes.append((node, is_open))
    )
    down = redis.ConnectionError("refused")
    nodes.failure("a:1", redis.ResponseError("OOM"))  # the server answered: not an outage
    nodes.failure("a:1", down)
    nodes.failure("a:1", down)
    nodes.success("b:2")  # another node's answer does not reset this one
    assert not nodes.skip("a:1")
    nodes.failure("a:1", down)
    assert changes == [("a:1", True)]
    assert nodes.open_nodes() == ["a:1"]
    assert nodes.skip("a:1")
    assert not nodes.skip("b:2")
    now[0] += 1.0
    assert not nodes.skip("a:1")  # the probe: one caller
    assert nodes.skip("a:1")  # the others still skip
    nodes.failure("a:1", down)  # the probe failed: open another period
    assert nodes.skip("a:1")
    now[0] += 1.0
    assert not nodes.skip("a:1")
    nodes.success("a:1")
    assert changes == [("a:1", True), ("a:1", False)]
    assert not nodes.skip("a:1")
    assert nodes.open_nodes() == []


def test_node_breakers_off_with_threshold_zero_and_reset_closes_every_node() -> None:
    changes: list[tuple[str, bool]] = []
    off = NodeBreakers(
        threshold=0, probe_sec=1.0, on_change=lambda node, is_open: changes.append((node, is_open))
    )
    for _ in range(10):
        off.failure("a:1", redis.ConnectionError("refused"))
    assert not off.skip("a:1")
    on = NodeBreakers(
        threshold=1, probe_sec=60.0, on_change=lambda node, is_open: changes.append((node, is_open))
    )
    on.failure("a:1", redis.TimeoutError("no reply"))
    on.failure("b:2", redis.TimeoutError("no reply"))
    on.reset()
    assert changes == [("a:1", True), ("b:2", True), ("a:1", False), ("b:2", False)]
    assert not on.skip("a:1")
