"""Resilience under real faults: deadlines, the circuit breaker, recovery.

Every fault is a real process or socket on 127.0.0.1: a private ``EmbeddedRedis`` per test
(killed with SIGKILL and restarted on the same port, paused with SIGSTOP, or started with a small
``maxmemory`` and filled), or a ``HangingListener`` that accepts connections and never answers.
None of them is the suite's shared server.

What holds in every scenario, for a sync and an async cached function:

- a cached call never raises because of Redis: it returns the function's value;
- while Redis is unreachable or not answering, at most ``breaker_failures`` lookups pay the read
  deadline (``read_timeout_sec``), then the breaker opens and REMOTE is skipped at no cost,
  counted as ``disabled{layer="REMOTE", reason="server_down"}``;
- a background probe closes the breaker when Redis answers again, and caching resumes by itself;
- a full Redis (writes refused with OOM) is not an outage: the errors are counted, reads go on.

Latency is asserted only as generous bounds: a call during a fault takes well under the 1 s
socket timeout, and once the breaker is open the median call costs about the function's own time.
Sync functions run in a worker thread (as a sync caller without an event loop would) and are
timed inside it.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry

from gcache import CacheLayer, GCache, GCacheConfig, GCacheKeyConfig, RedisConfig
from gcache._embedded_redis import EmbeddedRedis, HangingListener
from tests.conftest import sample

REMOTE_ONLY = GCacheKeyConfig(ttl_sec={CacheLayer.REMOTE: 60}, ramp={CacheLayer.REMOTE: 100})
BOTH = GCacheKeyConfig.enabled(60)
USE_CASE = "Fault"
PROBE_SEC = 0.1
FAILURES = GCacheConfig().breaker_failures  # the default: 5 failures in a row open the breaker
READ_TIMEOUT = GCacheConfig().read_timeout_sec  # the default: 0.05 s
SOCKET_TIMEOUT = 1.0  # RedisConfig's default socket timeout, which the deadlines must beat
# Opening a connection has its own bound (socket_connect_timeout, 1 s by default, the handshake
# included), taken while Redis is not failing: the first call that meets a hanging or paused
# server on a new connection pays it, so the subjects take 0.2 s, within SLOW_CALL.
CONNECT_BOUND = 0.2

# Bounds that cannot flake on a busy 2-core machine, yet would fail without the breaker or the
# deadlines: a stuck call costs at least the 1 s socket timeout (and redis-py 8 retries 10 times).
SLOW_CALL = 0.5  # no call during a fault may take this long
FAST_MEDIAN = 0.01  # median call with the breaker open (the function itself is trivial)
CLOSE_WITHIN = 5.0  # seconds for the breaker to close after recovery (50 probe intervals)

GAUGE = "gcache_breaker_open"
TRANSITIONS = "gcache_breaker_transition_counter_total"
DISABLED = "gcache_disabled_counter_total"
ERRORS = "gcache_error_counter_total"
REQUESTS = "gcache_request_counter_total"

Timed = Callable[[str], Awaitable[tuple[Any, float]]]


def value_key(uid: str, use_case: str = USE_CASE) -> str:
    return "{urn:gcache:" + f"user_id:{uid}" + "}#" + use_case


@dataclass
class Subject:
    """One GCache with a private registry, and a cached function ``{"uid", "n"}`` on it.

    ``n`` is the number of times the function has run, so a value with the current count is the
    function's own, and an older one came from the cache.
    """

    cache: GCache
    registry: CollectorRegistry
    call: Timed = field(init=False)
    calls: list[str] = field(default_factory=list)

    def metric(self, name: str, **labels: str) -> float:
        return sample(self.registry, name, **labels)

    def gauge(self) -> float:
        return self.metric(GAUGE)

    def transitions(self, state: str) -> float:
        return self.metric(TRANSITIONS, state=state)

    def server_down(self) -> float:
        return self.metric(DISABLED, use_case=USE_CASE, layer="REMOTE", reason="server_down")

    def errors(self, **labels: str) -> float:
        return self.metric(ERRORS, use_case=USE_CASE, layer="REMOTE", in_fallback="False", **labels)

    def timeouts(self) -> float:
        """REMOTE errors that are timeouts: an operation's deadline, or a connection's opening
        (``ConnectTimeout``: a new connection on a server that accepts and does not answer)."""
        return self.errors(error="TimeoutError") + self.errors(error="ConnectTimeout")

    def error_kinds(self) -> dict[str, float]:
        """REMOTE errors so far by exception class, for failure messages."""
        kinds: dict[str, float] = {}
        for metric in self.registry.collect():
            for s in metric.samples:
                if s.name == ERRORS and s.labels.get("layer") == "REMOTE" and s.value:
                    kinds[s.labels["error"]] = kinds.get(s.labels["error"], 0) + s.value
        return kinds

    def remote_requests(self) -> float:
        return self.metric(REQUESTS, use_case=USE_CASE, layer="REMOTE")

    async def fresh(self, uid: str) -> float:
        """Call once; assert the function ran and its value came back. Returns the call's seconds."""
        value, seconds = await self.call(uid)
        assert value == {"uid": uid, "n": len(self.calls)}
        assert self.calls[-1] == uid
        return seconds


def _cached(
    subject: Subject,
    is_async: bool,
    config: GCacheKeyConfig,
    tracked: bool,
    hook: Callable[[str], None] | None,
) -> Timed:
    options: dict[str, Any] = {
        "key_type": "user_id",
        "id_arg": "uid",
        "use_case": USE_CASE,
        "default_config": config,
        "track_for_invalidation": tracked,
    }
    calls = subject.calls
    if is_async:

        @subject.cache.cached(**options)
        async def get_async(uid: str) -> dict[str, Any]:
            if hook is not None:
                hook(uid)
            calls.append(uid)
            return {"uid": uid, "n": len(calls)}

        async def timed_async(uid: str) -> tuple[Any, float]:
            start = time.perf_counter()
            value = await get_async(uid)
            return value, time.perf_counter() - start

        return timed_async

    @subject.cache.cached(**options)
    def get_sync(uid: str) -> dict[str, Any]:
        if hook is not None:
            hook(uid)
        calls.append(uid)
        return {"uid": uid, "n": len(calls)}

    def timed_sync(uid: str) -> tuple[Any, float]:
        start = time.perf_counter()
        value = get_sync(uid)
        return value, time.perf_counter() - start

    async def in_thread(uid: str) -> tuple[Any, float]:
        # asyncio.to_thread copies the context, so the enable() state follows the call.
        return await asyncio.to_thread(timed_sync, uid)

    return in_thread


MakeSubject = Callable[..., Subject]


@pytest.fixture
async def make() -> AsyncIterator[MakeSubject]:
    """Build a Subject on a Redis URL; caches are closed after the test, on its loop.

    ``hook(uid)`` runs inside the cached function, before it returns.
    """
    subjects: list[Subject] = []

    def build(
        url: str,
        *,
        is_async: bool,
        config: GCacheKeyConfig = REMOTE_ONLY,
        tracked: bool = False,
        redis_py_options: dict[str, Any] | None = None,
        hook: Callable[[str], None] | None = None,
        **overrides: Any,
    ) -> Subject:
        registry = CollectorRegistry()
        if redis_py_options is None:
            redis_py_options = {"socket_timeout": SOCKET_TIMEOUT, "socket_connect_timeout": CONNECT_BOUND}
        redis_config = RedisConfig(url=url, redis_py_options=redis_py_options)
        options: dict[str, Any] = {
            "redis_config": redis_config,
            "metrics_registry": registry,
            "breaker_probe_sec": PROBE_SEC,
        }
        options.update(overrides)
        subject = Subject(GCache(GCacheConfig(**options)), registry)
        subject.call = _cached(subject, is_async, config, tracked, hook)
        subjects.append(subject)
        return subject

    yield build
    for subject in subjects:
        await subject.cache.aclose()


async def eventually(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll without blocking the loop; return the seconds it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


async def call_until_open(subject: Subject, prefix: str, limit: int = 3 * FAILURES) -> list[float]:
    """Call new ids (each time the function's value) until the breaker opens; the calls' seconds."""
    latencies: list[float] = []
    while subject.gauge() == 0:
        assert len(latencies) < limit, f"the breaker did not open after {limit} calls"
        latencies.append(await subject.fresh(f"{prefix}-{len(latencies)}"))
    return latencies


async def assert_skipped_while_open(
    subject: Subject, calls: int = 20, *, prefix: str = "open"
) -> list[float]:
    """With the breaker open, calls are served by the function alone: Redis is not touched.

    No lookup is made (the request and error counters stand still), each call is counted as
    ``server_down``, and the median call costs about the function's own time.
    """
    assert subject.gauge() == 1
    errors, requests, down = subject.errors(), subject.remote_requests(), subject.server_down()
    latencies = [await subject.fresh(f"{prefix}-{i}") for i in range(calls)]
    assert subject.gauge() == 1
    assert subject.errors() == errors
    assert subject.remote_requests() == requests
    assert subject.server_down() == down + calls
    assert statistics.median(latencies) < FAST_MEDIAN, latencies
    assert max(latencies) < SLOW_CALL, latencies
    return latencies


async def assert_caching_resumed(subject: Subject, admin_url: str, uid: str) -> None:
    """A miss is written to Redis again and the next call is a hit; no Redis operation fails."""
    errors = subject.error_kinds()
    await subject.fresh(uid)
    ran = len(subject.calls)
    value, _ = await subject.call(uid)
    assert subject.error_kinds() == errors, "a Redis operation failed after recovery"
    assert value == {"uid": uid, "n": ran}
    assert len(subject.calls) == ran
    client = redis.Redis.from_url(admin_url)
    try:
        assert client.exists(value_key(uid)) == 1
    finally:
        client.close()


class Load:
    """``workers`` callers calling ids ``load-0`` .. ``load-9`` in turn until stopped."""

    def __init__(self, subject: Subject, workers: int = 4) -> None:
        self.subject = subject
        self.results: list[tuple[str, Any]] = []
        self.raised: list[BaseException] = []
        self._stopping = False
        self._tasks = [asyncio.create_task(self._work(w)) for w in range(workers)]

    @property
    def done(self) -> int:
        return len(self.results) + len(self.raised)

    async def _work(self, worker: int) -> None:
        i = worker
        while not self._stopping:
            uid = f"load-{i % 10}"
            try:
                value, _ = await self.subject.call(uid)
            except Exception as exc:
                self.raised.append(exc)
            else:
                self.results.append((uid, value))
            i += 1
            await asyncio.sleep(0.001)  # a steady load, and room for the test's own steps

    async def wait(self, calls: int, what: str) -> None:
        target = self.done + calls
        await eventually(lambda: self.done >= target, 10, what)

    async def stop(self) -> None:
        self._stopping = True
        await asyncio.gather(*self._tasks)


# -- 1. Redis killed mid-load, restarted on the same port -------------------------------------


async def test_breaker_opens_when_redis_killed_mid_load_and_caching_resumes_after_restart(
    make: MakeSubject, is_async: bool
) -> None:
    with EmbeddedRedis() as server:
        subject = make(server.url, is_async=is_async)
        with subject.cache.enable():
            await assert_caching_resumed(subject, server.admin_url, "warm")  # healthy: cached

            load = Load(subject)
            try:
                await load.wait(40, "the load to run")
                server.kill()
                await eventually(lambda: subject.gauge() == 1, 5, "the breaker to open")
                await load.wait(40, "the load to go on with the breaker open")
            finally:
                await load.stop()
            assert load.raised == []
            assert all(value["uid"] == uid for uid, value in load.results)
            assert subject.server_down() > 0
            assert subject.errors(error="ConnectionError") >= 1

            await assert_skipped_while_open(subject)

            server.start()  # the same port, empty
            await eventually(lambda: subject.gauge() == 0, CLOSE_WITHIN, "the breaker to close")
            await assert_caching_resumed(subject, server.admin_url, "after")

            # Under load again: no connection left over from before the crash fails, and the
            # breaker stays closed.
            errors = subject.error_kinds()
            load = Load(subject)
            try:
                await load.wait(80, "the load to run after the restart")
            finally:
                await load.stop()
            assert load.raised == []
            assert subject.error_kinds() == errors
        assert subject.transitions("open") == 1
        assert subject.transitions("closed") == 1


# -- 2. Redis paused (SIGSTOP), then resumed ---------------------------------------------------


async def test_calls_bounded_while_redis_paused_and_caching_resumes_after_sigcont(
    make: MakeSubject, is_async: bool
) -> None:
    with EmbeddedRedis() as server:
        subject = make(server.url, is_async=is_async)
        with subject.cache.enable():
            await assert_caching_resumed(subject, server.admin_url, "warm")
            server.pause()
            try:
                # The first lookups pay the read deadline, not the 1 s socket timeout; then the
                # breaker opens and calls cost the function's time.
                before_open = await call_until_open(subject, "paused")
                assert len(before_open) <= FAILURES
                assert max(before_open) < SLOW_CALL, before_open
                assert subject.timeouts() == len(before_open)
                await assert_skipped_while_open(subject)
            finally:
                server.resume()
            await eventually(lambda: subject.gauge() == 0, CLOSE_WITHIN, "the breaker to close")
            ran = len(subject.calls)
            value, _ = await subject.call("warm")  # written before the pause: a REMOTE hit again
            assert value == {"uid": "warm", "n": 1}
            assert len(subject.calls) == ran
            await assert_caching_resumed(subject, server.admin_url, "after")
        assert subject.transitions("open") == 1
        assert subject.transitions("closed") == 1


# -- 3. a Redis that accepts connections and never answers -------------------------------------


@pytest.mark.parametrize("config", [REMOTE_ONLY, BOTH], ids=["remote", "local+remote"])
async def test_calls_cost_the_function_time_once_breaker_opens_when_redis_hangs(
    make: MakeSubject, is_async: bool, config: GCacheKeyConfig
) -> None:
    with HangingListener() as listener:
        subject = make(listener.url, is_async=is_async, config=config)
        with subject.cache.enable():
            before_open = await call_until_open(subject, "hang")
            assert len(before_open) == FAILURES  # one lookup per call, each a timeout
            assert max(before_open) < SLOW_CALL, before_open
            assert subject.timeouts() == FAILURES
            assert listener.accepted >= 1

            await assert_skipped_while_open(subject, calls=50)
            if config is BOTH:
                # REMOTE is skipped, LOCAL is not: a second call is a LOCAL hit.
                await subject.fresh("local")
                ran = len(subject.calls)
                value, _ = await subject.call("local")
                assert value == {"uid": "local", "n": ran}
                assert len(subject.calls) == ran
        assert subject.transitions("open") == 1
        assert subject.transitions("closed") == 0


async def test_breaker_stays_open_while_redis_hangs_and_closes_when_it_answers(
    make: MakeSubject, is_async: bool
) -> None:
    """The probe does not close the breaker on a connection that never answers; a real Redis
    at the same address closes it, and caching resumes."""
    listener = HangingListener().start()
    server = EmbeddedRedis(listener.port)  # its URL, with its password, before it starts
    try:
        subject = make(server.url, is_async=is_async)
        with subject.cache.enable():
            await call_until_open(subject, "hang")
            probes_before = listener.accepted
            await asyncio.sleep(10 * PROBE_SEC)
            assert subject.gauge() == 1
            assert listener.accepted > probes_before  # the probe keeps asking
            assert subject.transitions("closed") == 0

            listener.stop()
            with server:
                await eventually(lambda: subject.gauge() == 0, CLOSE_WITHIN, "the breaker to close")
                await assert_caching_resumed(subject, server.admin_url, "answered")
        assert subject.transitions("open") == 1
        assert subject.transitions("closed") == 1
    finally:
        listener.stop()


# -- 4. Redis full: writes refused with OOM ---------------------------------------------------


@pytest.mark.parametrize("tracked", [False, True], ids=["untracked", "tracked"])
async def test_full_redis_counts_write_errors_keeps_breaker_closed_and_caches_when_room_is_made(
    make: MakeSubject, is_async: bool, tracked: bool
) -> None:
    with EmbeddedRedis(None, "--maxmemory", "2mb", "--maxmemory-policy", "noeviction") as server:
        subject = make(server.url, is_async=is_async, tracked=tracked)
        with subject.cache.enable():
            await assert_caching_resumed(subject, server.admin_url, "before")  # cached while there was room
            server.fill()

            calls = 3 * FAILURES  # well past the breaker's threshold
            latencies = [await subject.fresh("full") for _ in range(calls)]
            assert subject.calls.count("full") == calls  # nothing could be cached
            assert subject.errors() == calls
            if not tracked:
                assert subject.errors(error="OutOfMemoryError") == calls
            assert max(latencies) < SLOW_CALL, latencies
            # A full server answers: it is not an outage, the breaker stays closed.
            assert subject.gauge() == 0
            assert subject.transitions("open") == 0
            assert subject.server_down() == 0

            ran = len(subject.calls)
            value, _ = await subject.call("before")  # reads go on: a REMOTE hit
            assert value == {"uid": "before", "n": 1}
            assert len(subject.calls) == ran

            client = redis.Redis.from_url(server.admin_url)
            try:
                client.config_set("maxmemory", 0)
            finally:
                client.close()
            await assert_caching_resumed(subject, server.admin_url, "full")
        assert subject.transitions("open") == 0


# -- 5. deadlines without the breaker ----------------------------------------------------------


@pytest.mark.parametrize("tracked", [False, True], ids=["untracked", "tracked"])
async def test_every_lookup_gives_up_at_read_deadline_when_breaker_off_and_redis_hangs(
    make: MakeSubject, is_async: bool, tracked: bool
) -> None:
    """Without the breaker every call tries Redis, and gives up at ``read_timeout_sec``.

    Each call still returns the function's value; no call waits for the socket timeout (1 s), nor
    for redis-py's retries (off: with them a call would take several seconds). A tracked lookup
    (several commands, several replies) has the one deadline too.
    """
    with HangingListener() as listener:
        subject = make(listener.url, is_async=is_async, breaker_failures=0, tracked=tracked)
        assert READ_TIMEOUT is not None
        with subject.cache.enable():
            latencies = [await subject.fresh(f"hang-{i}") for i in range(2 * FAILURES)]
        assert min(latencies) >= READ_TIMEOUT * 0.9, latencies  # Redis was asked every time
        assert max(latencies) < SLOW_CALL, latencies
        assert subject.timeouts() == 2 * FAILURES
        assert subject.gauge() == 0
        assert subject.transitions("open") == 0
        assert subject.server_down() == 0


@pytest.mark.parametrize("tracked", [False, True], ids=["untracked", "tracked"])
async def test_lookup_waits_for_socket_timeout_when_read_deadline_is_none(
    make: MakeSubject, is_async: bool, tracked: bool
) -> None:
    """``read_timeout_sec=None`` falls back to the client's socket timeout."""
    with HangingListener() as listener:
        options = {"socket_timeout": 0.2, "socket_connect_timeout": 0.2}
        subject = make(
            listener.url,
            is_async=is_async,
            tracked=tracked,
            breaker_failures=0,
            read_timeout_sec=None,
            redis_py_options=options,
        )
        with subject.cache.enable():
            latencies = [await subject.fresh(f"hang-{i}") for i in range(2)]
        assert min(latencies) >= 0.18, latencies
        assert max(latencies) < SOCKET_TIMEOUT, latencies  # one try, no retries
        assert subject.timeouts() == 2


async def test_write_back_gives_up_at_write_deadline_when_redis_stops_during_the_function(
    make: MakeSubject, is_async: bool
) -> None:
    """The lookup is answered, then Redis stops while the function runs: the write-back is
    abandoned at ``write_timeout_sec`` and the call returns the function's value."""
    with EmbeddedRedis() as server:
        write_timeout = 0.2
        subject = make(
            server.url,
            is_async=is_async,
            breaker_failures=0,
            write_timeout_sec=write_timeout,
            hook=lambda uid: server.pause(),
        )
        try:
            with subject.cache.enable():
                seconds = await subject.fresh("w")
        finally:
            server.resume()
        assert write_timeout * 0.9 <= seconds < write_timeout + SLOW_CALL, seconds
        assert subject.timeouts() == 1
        assert subject.gauge() == 0
