"""Fail open: a Redis fault never fails a cached call.

Every fault is counted in ``gcache_error_counter``, logged at most once per kind per
``error_log_interval_sec``, and the call is served by the function. Management operations
(invalidate, flushall, delete) are the exception: they raise ``RemoteError`` so the caller knows
the invalidation did not reach Redis, but they still apply to the LOCAL layer.

Every Redis here is a real process or socket on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry

from gcache import (
    CacheLayer,
    GCache,
    GCacheKey,
    GCacheKeyConfig,
    RedisConfig,
    RemoteError,
    _envelope,
)
from gcache._embedded_redis import EmbeddedRedis, free_port
from tests.conftest import sample, wait_until

REMOTE_ONLY = GCacheKeyConfig(ttl_sec={CacheLayer.REMOTE: 60}, ramp={CacheLayer.REMOTE: 100})
BOTH = GCacheKeyConfig.enabled(60)
FAST = {"socket_timeout": 0.2, "socket_connect_timeout": 0.2}
ERRORS = "gcache_error_counter_total"
MISSES = "gcache_miss_counter_total"
MISS_REASONS = "gcache_miss_reason_counter_total"

Call = Callable[[str], Awaitable[Any]]


def value_key(use_case: str, uid: str, key_type: str = "user_id") -> str:
    return "{urn:gcache:" + f"{key_type}:{uid}" + "}#" + use_case


def cached_fn(
    cache: GCache,
    is_async: bool,
    calls: list[str],
    *,
    use_case: str,
    config: GCacheKeyConfig = REMOTE_ONLY,
    tracked: bool = False,
    id_arg: str | tuple[str, Callable[[Any], Any]] = "uid",
) -> Call:
    """A cached function returning ``{"uid", "n"}`` (n = calls so far), awaitable either way.

    A sync function runs in a worker thread (``asyncio.to_thread`` copies the context, so the
    ``enable()`` state follows), as a sync caller with no event loop of its own would run it.
    """
    options: dict[str, Any] = {
        "key_type": "user_id",
        "id_arg": id_arg,
        "use_case": use_case,
        "default_config": config,
        "track_for_invalidation": tracked,
    }
    if is_async:

        @cache.cached(**options)
        async def get_async(uid: str) -> dict[str, Any]:
            calls.append(uid)
            return {"uid": uid, "n": len(calls)}

        return get_async

    @cache.cached(**options)
    def get_sync(uid: str) -> dict[str, Any]:
        calls.append(uid)
        return {"uid": uid, "n": len(calls)}

    async def run(uid: str) -> Any:
        return await asyncio.to_thread(get_sync, uid)

    return run


def refused_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


async def invalidate(cache: GCache, is_async: bool, key_type: str, id: str) -> None:
    if is_async:
        await cache.ainvalidate(key_type, id)
    else:
        await asyncio.to_thread(cache.invalidate, key_type, id)


async def flushall(cache: GCache, is_async: bool) -> int:
    if is_async:
        return await cache.aflushall()
    return await asyncio.to_thread(cache.flushall)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def captured(request: pytest.FixtureRequest) -> Iterator[tuple[logging.Logger, _Records]]:
    """A private logger for one GCache, and the records it receives."""
    logger = logging.getLogger(f"gcache-test.{request.node.nodeid}")
    handler = _Records()
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    yield logger, handler
    logger.removeHandler(handler)


@pytest.fixture
def hanging_port() -> Iterator[int]:
    """A loopback TCP listener that accepts connections and never answers."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.05)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _addr = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            accepted.append(conn)

    thread = threading.Thread(target=serve, name="hanging-redis", daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in accepted:
            conn.close()
        listener.close()


# -- Redis down, refused, hanging --------------------------------------------------------------


async def test_calls_served_uncached_and_caching_resumes_when_redis_killed_and_restarted(
    make_cache: Callable[..., GCache], registry: CollectorRegistry, is_async: bool
) -> None:
    with EmbeddedRedis() as server:
        cache = make_cache(redis_config=RedisConfig(url=server.url, redis_py_options=dict(FAST)))
        calls: list[str] = []
        get = cached_fn(cache, is_async, calls, use_case="Down")
        with cache.enable():
            assert await get("1") == {"uid": "1", "n": 1}
            assert await get("1") == {"uid": "1", "n": 1}  # a REMOTE hit

            server.kill()
            assert await get("1") == {"uid": "1", "n": 2}
            assert await get("1") == {"uid": "1", "n": 3}
            assert sample(registry, ERRORS, use_case="Down", layer="REMOTE", in_fallback="False") > 0

            server.start()  # same port, empty
            for _ in range(3):
                await get("1")
            settled = len(calls)
            assert await get("1") == {"uid": "1", "n": settled}
            assert await get("1") == {"uid": "1", "n": settled}
            assert len(calls) == settled

        client = redis.Redis.from_url(server.admin_url)
        try:
            assert client.exists(value_key("Down", "1")) == 1
        finally:
            client.close()


async def test_calls_served_uncached_when_connection_refused(
    make_cache: Callable[..., GCache], registry: CollectorRegistry, is_async: bool
) -> None:
    cache = make_cache(
        redis_config=RedisConfig(url=refused_url(), redis_py_options=dict(FAST)), start_bus=False
    )
    calls: list[str] = []
    get = cached_fn(cache, is_async, calls, use_case="Refused", config=BOTH)
    with cache.enable():
        assert await get("1") == {"uid": "1", "n": 1}
        assert await get("2") == {"uid": "2", "n": 2}
        # LOCAL still works while REMOTE is refused.
        assert await get("1") == {"uid": "1", "n": 1}
    assert calls == ["1", "2"]
    assert sample(registry, ERRORS, use_case="Refused", layer="REMOTE", in_fallback="False") == 2
    assert sample(registry, "gcache_request_counter_total", use_case="Refused", layer="REMOTE") == 2


async def test_calls_return_within_bound_when_server_hangs(
    make_cache: Callable[..., GCache], registry: CollectorRegistry, hanging_port: int, is_async: bool
) -> None:
    url = f"redis://127.0.0.1:{hanging_port}/0"
    cache = make_cache(redis_config=RedisConfig(url=url, redis_py_options=dict(FAST)), start_bus=False)
    calls: list[str] = []
    get = cached_fn(cache, is_async, calls, use_case="Hang")
    start = time.monotonic()
    with cache.enable():
        assert await get("1") == {"uid": "1", "n": 1}
        assert await get("1") == {"uid": "1", "n": 2}
    assert time.monotonic() - start < 5  # generous: two calls with a 0.2 s socket timeout
    assert sample(registry, ERRORS, use_case="Hang", layer="REMOTE", in_fallback="False") == 2


# -- garbage in Redis --------------------------------------------------------------------------


async def test_foreign_value_is_a_miss_and_rewritten_when_key_holds_non_gcache_bytes(
    make_cache: Callable[..., GCache], registry: CollectorRegistry, redis_client: redis.Redis, is_async: bool
) -> None:
    cache = make_cache()
    calls: list[str] = []
    get = cached_fn(cache, is_async, calls, use_case="Foreign")
    key = value_key("Foreign", "1")
    redis_client.set(key, b"garbage")
    with cache.enable():
        assert await get("1") == {"uid": "1", "n": 1}
        raw = redis_client.get(key)
        assert isinstance(raw, bytes)
        assert raw.startswith(b"gC")
        assert pickle.loads(raw[_envelope.HEADER_SIZE :]) == {"uid": "1", "n": 1}
        assert await get("1") == {"uid": "1", "n": 1}  # now a REMOTE hit
    assert calls == ["1"]
    assert sample(registry, MISS_REASONS, use_case="Foreign", layer="REMOTE", reason="foreign") == 1


async def test_tracked_foreign_value_is_a_miss_and_rewritten_when_key_holds_non_gcache_bytes(
    make_cache: Callable[..., GCache], registry: CollectorRegistry, redis_client: redis.Redis, is_async: bool
) -> None:
    cache = make_cache()
    calls: list[str] = []
    get = cached_fn(cache, is_async, calls, use_case="ForeignT", tracked=True)
    key = value_key("ForeignT", "1")
    redis_client.set(key, b"garbage")
    with cache.enable():
        assert await get("1") == {"uid": "1", "n": 1}
        raw = redis_client.get(key)
        assert isinstance(raw, bytes)
        assert raw.startswith(b"gC")
        assert await get("1") == {"uid": "1", "n": 1}
    assert calls == ["1"]
    assert sample(registry, MISS_REASONS, use_case="ForeignT", layer="REMOTE", reason="foreign") == 1


async def test_error_counted_and_call_served_when_value_key_has_wrong_type(
    make_cache: Callable[..., GCache], registry: CollectorRegistry, redis_client: redis.Redis, is_async: bool
) -> None:
    cache = make_cache()
    calls: list[str] = []
    get = cached_fn(cache, is_async, calls, use_case="WrongType")
    redis_client.hset(value_key("WrongType", "1"), mapping={"field": "value"})
    with cache.enable():
        assert await get("1") == {"uid": "1", "n": 1}
        assert await get("1") == {"uid": "1", "n": 2}
    assert calls == ["1", "1"]
    assert sample(registry, ERRORS, use_case="WrongType", layer="REMOTE", in_fallback="False") == 2


async def test_undecodable_miss_and_rewrite_when_payload_is_broken(
    make_cache: Callable[..., GCache], registry: CollectorRegistry, redis_client: redis.Redis, is_async: bool
) -> None:
    cache = make_cache()
    calls: list[str] = []
    get = cached_fn(cache, is_async, calls, use_case="Broken")
    key = value_key("Broken", "1")
    broken = _envelope.encode(b"\x80\x05this is not a pickle", _envelope.SERIALIZER_PICKLE, 0, 1)
    _envelope.decode(broken)  # the header itself is valid
    redis_client.set(key, broken)
    with cache.enable():
        assert await get("1") == {"uid": "1", "n": 1}
        raw = redis_client.get(key)
        assert isinstance(raw, bytes)
        assert raw != broken
        assert pickle.loads(_envelope.decode(raw).payload) == {"uid": "1", "n": 1}
        assert await get("1") == {"uid": "1", "n": 1}
    assert calls == ["1"]
    assert sample(registry, MISS_REASONS, use_case="Broken", layer="REMOTE", reason="undecodable") == 1
    assert sample(registry, ERRORS, use_case="Broken", layer="REMOTE", in_fallback="False") == 1


# -- rate-limited logging ----------------------------------------------------------------------


def _failing_extractor(uid: str) -> str:
    if uid == "bad":
        raise ValueError("no id in this argument")
    return uid


async def test_one_log_line_per_kind_when_errors_repeat_within_interval(
    make_cache: Callable[..., GCache],
    registry: CollectorRegistry,
    captured: tuple[logging.Logger, _Records],
    is_async: bool,
) -> None:
    logger, handler = captured
    cache = make_cache(
        redis_config=RedisConfig(url=refused_url(), redis_py_options=dict(FAST)),
        error_log_interval_sec=60,
        logger=logger,
        start_bus=False,
        breaker_failures=0,  # every call meets the error (an open breaker would skip REMOTE)
    )
    calls: list[str] = []
    get = cached_fn(cache, is_async, calls, use_case="Logged", id_arg=("uid", _failing_extractor))
    with cache.enable():
        for i in range(20):
            assert await get(str(i)) == {"uid": str(i), "n": i + 1}
        assert sample(registry, ERRORS, use_case="Logged", layer="REMOTE") == 20
        warnings = [r for r in handler.records if r.levelno == logging.WARNING]
        assert len(warnings) == 2
        assert "unsigned" in warnings[0].getMessage()  # the first REMOTE use of pickle, once
        assert "remote read failed" in warnings[1].getMessage()

        # Another kind of error (the key cannot be built) is logged on its own.
        for _ in range(5):
            assert (await get("bad"))["uid"] == "bad"
    warnings = [r for r in handler.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3
    assert "key" in warnings[2].getMessage()
    assert sample(registry, ERRORS, use_case="Logged", layer="key creation", error="ValueError") == 5


# -- management operations are explicit --------------------------------------------------------


async def test_invalidate_raises_and_tracked_local_is_not_served_when_redis_dies(
    make_cache: Callable[..., GCache], registry: CollectorRegistry, is_async: bool
) -> None:
    with EmbeddedRedis() as server:
        cache = make_cache(redis_config=RedisConfig(url=server.url, redis_py_options=dict(FAST)))
        calls: list[str] = []
        get = cached_fn(cache, is_async, calls, use_case="Inval", config=BOTH, tracked=True)
        untracked = cached_fn(cache, is_async, calls, use_case="InvalU", config=BOTH)
        with cache.enable():
            assert await get("1") == {"uid": "1", "n": 1}
            assert await untracked("1") == {"uid": "1", "n": 2}
            assert await get("1") == {"uid": "1", "n": 1}  # a LOCAL hit

            server.kill()
            # The bus is gone with Redis: this process can no longer hear invalidations, so the
            # tracked LOCAL entry is dropped and none is filled; untracked LOCAL keeps serving.
            wait_until(lambda: not cache.bus_subscribed, what="the bus to notice Redis is gone")
            assert await get("1") == {"uid": "1", "n": 3}
            assert await get("1") == {"uid": "1", "n": 4}
            assert await untracked("1") == {"uid": "1", "n": 2}
            errors = sample(registry, ERRORS, layer="REMOTE")
            with pytest.raises(RemoteError):
                await invalidate(cache, is_async, "user_id", "1")
            assert sample(registry, ERRORS, layer="REMOTE") == errors + 1
    dropped = "gcache_local_dropped_counter_total"
    assert sample(registry, dropped, use_case="Inval", reason="bus_down") == 1
    assert sample(registry, "gcache_invalidation_counter_total", key_type="user_id", layer="LOCAL") == 1
    assert sample(registry, "gcache_invalidation_counter_total", key_type="user_id", layer="REMOTE") == 0


async def test_flushall_raises_and_still_clears_local_when_redis_down(
    make_cache: Callable[..., GCache], registry: CollectorRegistry, is_async: bool
) -> None:
    cache = make_cache(
        redis_config=RedisConfig(url=refused_url(), redis_py_options=dict(FAST)), start_bus=False
    )
    calls: list[str] = []
    untracked = cached_fn(cache, is_async, calls, use_case="FlushU", config=BOTH)
    with cache.enable():
        assert await untracked("1") == {"uid": "1", "n": 1}
        assert await untracked("1") == {"uid": "1", "n": 1}
        errors = sample(registry, ERRORS, layer="REMOTE")
        with pytest.raises(RemoteError):
            await flushall(cache, is_async)
        assert sample(registry, ERRORS, layer="REMOTE") == errors + 1
        assert await untracked("1") == {"uid": "1", "n": 2}


async def test_put_does_not_raise_and_fills_local_when_redis_down(
    make_cache: Callable[..., GCache], registry: CollectorRegistry, is_async: bool
) -> None:
    cache = make_cache(
        redis_config=RedisConfig(url=refused_url(), redis_py_options=dict(FAST)), start_bus=False
    )
    key = GCacheKey("user_id", "7", "Direct", default_config=BOTH)
    fallbacks: list[int] = []

    async def afallback() -> str:
        fallbacks.append(1)
        return "computed"

    def fallback() -> str:
        fallbacks.append(1)
        return "computed"

    def put_and_get() -> Any:
        cache.put(key, "put-value")
        return cache.get(key, fallback)

    with cache.enable():
        if is_async:
            await cache.aput(key, "put-value")
            value = await cache.aget(key, afallback)
        else:
            value = await asyncio.to_thread(put_and_get)
    assert value == "put-value"
    assert fallbacks == []
    assert sample(registry, ERRORS, use_case="Direct", layer="REMOTE", in_fallback="False") == 1


# -- key-building errors -----------------------------------------------------------------------


async def test_call_served_and_error_counted_when_id_extractor_raises(
    make_cache: Callable[..., GCache], registry: CollectorRegistry, redis_client: redis.Redis, is_async: bool
) -> None:
    cache = make_cache()
    calls: list[str] = []
    get = cached_fn(
        cache, is_async, calls, use_case="KeyErr", config=BOTH, id_arg=("uid", _failing_extractor)
    )
    with cache.enable():
        assert await get("bad") == {"uid": "bad", "n": 1}
        assert await get("bad") == {"uid": "bad", "n": 2}
    assert (
        sample(
            registry, ERRORS, use_case="KeyErr", layer="key creation", error="ValueError", in_fallback="False"
        )
        == 2
    )
    assert sample(registry, "gcache_request_counter_total", use_case="KeyErr") == 0
    assert redis_client.keys("*KeyErr*") == []


# -- what the error label says -----------------------------------------------------------------


async def test_error_label_names_redis_exception_when_connection_refused(
    make_cache: Callable[..., GCache], registry: CollectorRegistry, is_async: bool
) -> None:
    """A cached call and a management operation that hit the same fault count the same label.

    ``invalidate`` labels the error with the redis-py exception (``ConnectionError``); a cached
    call on the same refused Redis must say the same, not gcache's own wrapper.
    """
    cache = make_cache(
        redis_config=RedisConfig(url=refused_url(), redis_py_options=dict(FAST)), start_bus=False
    )
    calls: list[str] = []
    get = cached_fn(cache, is_async, calls, use_case="Label")
    with cache.enable():
        assert await get("1") == {"uid": "1", "n": 1}
        with pytest.raises(RemoteError):
            await invalidate(cache, is_async, "user_id", "1")
    labels = {
        s.labels["error"]
        for m in registry.collect()
        for s in m.samples
        if s.name == ERRORS and s.labels["layer"] == "REMOTE"
    }
    assert labels == {"ConnectionError"}


# -- a failing LOCAL layer fails open (issue 15) -----------------------------------------------


class _BrokenStore:
    """A LOCAL store whose every operation raises, as a bug or an exhausted resource would."""

    tracked = True

    def __getattr__(self, name: str) -> Any:
        def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError(f"LOCAL {name} broke")

        return broken


async def test_a_failing_local_layer_is_counted_logged_and_the_call_served(
    make_cache: Callable[..., GCache], registry: CollectorRegistry, is_async: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    cache = make_cache()
    calls: list[str] = []
    get = cached_fn(cache, is_async, calls, use_case="BrokenLocal", config=GCacheKeyConfig.enabled(60))
    for uc in cache._use_cases:
        if uc.use_case == "BrokenLocal":
            uc.local = _BrokenStore()  # type: ignore[assignment]
    with caplog.at_level(logging.WARNING, logger="gcache"), cache.enable():
        assert await get("1") == {"uid": "1", "n": 1}  # lookup and fill both raise inside
        assert await get("1") == {"uid": "1", "n": 1}  # REMOTE still serves it
    assert calls == ["1"]
    # Each call: the lookup, and the fill after the miss (call 1) or the REMOTE hit (call 2).
    assert sample(registry, ERRORS, use_case="BrokenLocal", layer="LOCAL", error="RuntimeError") == 4
    assert any("LOCAL lookup failed" in r.getMessage() for r in caplog.records)


async def test_a_bus_thread_that_cannot_start_fails_open(
    make_cache: Callable[..., GCache], registry: CollectorRegistry, is_async: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    cache = make_cache(start_bus=False)
    calls: list[str] = []
    get = cached_fn(
        cache, is_async, calls, use_case="NoThread", config=GCacheKeyConfig.enabled(60), tracked=True
    )
    assert cache._bus is not None

    def cannot_start() -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(cache._bus, "ensure_started", cannot_start)
    monkeypatch.setattr(cache._local.epochs, "wake", cannot_start)
    with cache.enable():
        assert await get("1") == {"uid": "1", "n": 1}  # the first tracked use: served all the same
        assert await get("1") == {"uid": "1", "n": 1}  # from REMOTE: LOCAL stays off
    assert calls == ["1"]
    assert sample(registry, ERRORS, use_case="NoThread", layer="LOCAL", error="RuntimeError") >= 1
