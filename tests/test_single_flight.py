"""Stampede protection: concurrent misses of one key run the function once (in-process single
flight, sync threads and async tasks), and once per fleet with the distributed lock."""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry

from gcache import CacheLayer, GCache, GCacheKeyConfig, RemoteError
from gcache.single_flight import Flight, FlightTable
from gcache.urns import entity_key, lock_key, watermark_key
from tests.conftest import sample, wait_until

LOCAL, REMOTE = CacheLayer.LOCAL, CacheLayer.REMOTE
REMOTE_ONLY = GCacheKeyConfig(ttl_sec={REMOTE: 60}, ramp={REMOTE: 100})
BOTH = GCacheKeyConfig(ttl_sec={LOCAL: 60, REMOTE: 60}, ramp={LOCAL: 100, REMOTE: 100})
LOCAL_ONLY = GCacheKeyConfig(ttl_sec={LOCAL: 60}, ramp={LOCAL: 100})
CALLERS = 500
JOINED = "gcache_single_flight_counter_total"
WORKER = Path(__file__).with_name("_lock_worker.py")


# -- the flight itself -------------------------------------------------------------------------


def test_a_flight_wakes_threads_and_tasks_of_other_loops_with_its_value() -> None:
    flight = Flight(owner=None, read=None, of=0)
    woken: list[str] = []

    def thread_waiter() -> None:
        assert flight.wait()
        woken.append(f"thread {flight.value}")

    def loop_waiter() -> None:
        async def main() -> None:
            assert await flight.await_done()
            woken.append(f"task {flight.value}")

        asyncio.run(main())

    threads = [threading.Thread(target=thread_waiter), threading.Thread(target=loop_waiter)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    assert woken == []
    flight.succeed(42)
    for t in threads:
        t.join(timeout=5)
    assert sorted(woken) == ["task 42", "thread 42"]
    assert flight.wait(0) is True  # done: no waiting
    assert flight.done_at > 0


async def test_a_flight_wait_can_time_out_and_failures_are_shared_or_abandoned() -> None:
    flight = Flight(owner=None, read=None, of=0)
    assert await flight.await_done(0.01) is False
    assert flight.wait(0.01) is False
    error = ValueError("source down")
    flight.fail(error)
    assert await flight.await_done(0.01) is True
    assert flight.error is error
    assert not flight.abandoned

    cancelled = Flight(owner=None, read=None, of=0)
    cancelled.fail(asyncio.CancelledError())
    assert cancelled.abandoned
    assert cancelled.error is None  # a cancellation is the leader's own, not the waiters'


def test_flight_table_claims_once_replaces_only_what_it_saw_and_sweeps_finished_flights() -> None:
    table = FlightTable()
    first, second = Flight(1, None, 0), Flight(2, None, 0)
    assert table.claim("k", first, None) is first
    assert table.claim("k", second, None) is first  # taken: the caller joins or runs alone
    first.succeed("v")
    assert table.claim("k", second, first) is second  # replaces the finished flight it saw
    assert table.claim("k", Flight(3, None, 0), first) is second  # not what it saw: keeps the newer
    table.forget("k")
    assert table.get("k") is None
    table.claim("old", first, None)
    table.claim("running", Flight(4, None, 0), None)
    first.done_at -= 5
    table._swept_at -= 5
    table.sweep()
    assert table.get("old") is None
    assert table.get("running") is not None
    assert len(table) == 1


# -- stampedes in one process ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "tracked"),
    [(REMOTE_ONLY, False), (REMOTE_ONLY, True), (BOTH, True), (LOCAL_ONLY, False), (LOCAL_ONLY, True)],
    ids=["remote", "remote-tracked", "local+remote-tracked", "local", "local-tracked"],
)
async def test_500_concurrent_async_callers_on_a_cold_key_run_the_function_once(
    make_cache: Callable[..., GCache],
    registry: CollectorRegistry,
    redis_client: redis.Redis,
    config: GCacheKeyConfig,
    tracked: bool,
) -> None:
    cache = make_cache()
    calls: list[str] = []

    @cache.cached(
        key_type="user_id",
        id_arg="uid",
        use_case="Stampede",
        default_config=config,
        track_for_invalidation=tracked,
    )
    async def get(uid: str) -> dict[str, str]:
        calls.append(uid)
        await asyncio.sleep(0.05)
        return {"uid": uid}

    with cache.enable():
        results = await asyncio.gather(*(get("cold") for _ in range(CALLERS)))
    assert results == [{"uid": "cold"}] * CALLERS
    assert calls == ["cold"]
    joined = sample(registry, JOINED, use_case="Stampede", result="joined")
    if tracked:  # each caller reads REMOTE first; one whose read came after the leader's write hits
        hits = sample(registry, "gcache_request_counter_total", use_case="Stampede", layer="REMOTE") - sample(
            registry, "gcache_miss_counter_total", use_case="Stampede", layer="REMOTE"
        )
        assert joined + hits == CALLERS - 1
        assert joined > 0
    else:
        assert joined == CALLERS - 1
    if config is not LOCAL_ONLY:
        assert any(b"Stampede" in key for key in redis_client.keys("*"))


@pytest.mark.parametrize(("config", "tracked"), [(REMOTE_ONLY, False), (REMOTE_ONLY, True), (BOTH, True)])
def test_500_concurrent_threads_on_a_cold_key_run_the_sync_function_once(
    make_cache: Callable[..., GCache], registry: CollectorRegistry, config: GCacheKeyConfig, tracked: bool
) -> None:
    # 500 threads share one GIL: a reply can wait longer than the 50 ms read deadline for its
    # thread to run, which would test the deadline (tests/behaviour/test_faults.py does), not single flight.
    cache = make_cache(read_timeout_sec=2.0)
    calls: list[str] = []
    lock = threading.Lock()

    @cache.cached(
        key_type="user_id",
        id_arg="uid",
        use_case="SyncStampede",
        default_config=config,
        track_for_invalidation=tracked,
    )
    def get(uid: str) -> dict[str, str]:
        with lock:
            calls.append(uid)
        time.sleep(0.05)
        return {"uid": uid}

    results: list[Any] = []
    start = threading.Barrier(CALLERS)

    def caller() -> None:
        start.wait()
        with cache.enable():
            value = get("cold")
        with lock:
            results.append(value)

    threads = [threading.Thread(target=caller) for _ in range(CALLERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert results == [{"uid": "cold"}] * CALLERS
    assert calls == ["cold"]
    assert sample(registry, JOINED, use_case="SyncStampede", result="joined") > 0
    assert sample(registry, "gcache_error_counter_total", use_case="SyncStampede") == 0


async def concurrently(is_async: bool, call: Callable[[], Any], n: int) -> list[Any]:
    """``n`` concurrent calls: tasks on this loop, or threads for a sync function; results or exceptions."""
    if is_async:
        return list(await asyncio.gather(*(call() for _ in range(n)), return_exceptions=True))

    results: list[Any] = []

    def one() -> None:
        try:
            results.append(call())
        except Exception as exc:
            results.append(exc)

    # Threads of their own (the default executor has too few workers to be concurrent), each
    # in a copy of this context, so enable() applies there.
    threads = [threading.Thread(target=contextvars.copy_context().run, args=(one,)) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        await asyncio.to_thread(t.join, 10)
    return results


async def test_the_functions_exception_is_shared_and_nothing_is_cached(
    make_cache: Callable[..., GCache], registry: CollectorRegistry, is_async: bool
) -> None:
    cache = make_cache()
    calls: list[int] = []
    release = threading.Event()

    def compute() -> str:
        calls.append(1)
        release.wait(5)
        raise LookupError("no such user")

    if is_async:

        @cache.cached(key_type="user_id", id_arg="uid", use_case="Failing", default_config=BOTH)
        async def aget(uid: str) -> str:
            return await asyncio.to_thread(compute)

        get: Callable[[], Any] = lambda: aget("1")  # noqa: E731
    else:

        @cache.cached(key_type="user_id", id_arg="uid", use_case="Failing", default_config=BOTH)
        def sget(uid: str) -> str:
            return compute()

        get = lambda: sget("1")  # noqa: E731

    with cache.enable():
        pending = asyncio.ensure_future(concurrently(is_async, get, 20))
        await asyncio.to_thread(wait_until, lambda: len(calls) == 1, 5, "the leader to start")
        await asyncio.sleep(0.1)  # the others join meanwhile
        release.set()
        outcomes = await pending
    assert all(isinstance(o, LookupError) for o in outcomes), outcomes
    assert len(calls) == 1
    assert sample(registry, "gcache_error_counter_total", use_case="Failing", in_fallback="True") == 1
    assert sample(registry, JOINED, use_case="Failing", result="joined") == 19
    with cache.enable():
        release.set()
        with pytest.raises(LookupError):
            await get() if is_async else await asyncio.to_thread(get)
    assert len(calls) == 2  # nothing was cached


async def test_a_cancelled_leader_hands_the_key_to_a_waiter(
    make_cache: Callable[..., GCache], registry: CollectorRegistry
) -> None:
    cache = make_cache()
    calls: list[int] = []
    started = asyncio.Event()

    @cache.cached(key_type="user_id", id_arg="uid", use_case="Cancelled", default_config=BOTH)
    async def get(uid: str) -> str:
        calls.append(1)
        started.set()
        await asyncio.sleep(0.2)
        return f"user-{uid}"

    with cache.enable():
        leader = asyncio.ensure_future(get("1"))
        await started.wait()
        waiters = asyncio.gather(*(get("1") for _ in range(10)))
        await asyncio.sleep(0.02)
        leader.cancel()
        assert await waiters == ["user-1"] * 10  # no CancelledError leaked to them
    with pytest.raises(asyncio.CancelledError):
        await leader
    assert len(calls) == 2  # the cancelled run, and one waiter's
    assert await get("1") == "user-1"  # (outside enable(): uncached)


async def test_a_recursive_call_for_the_same_key_does_not_wait_for_itself(
    make_cache: Callable[..., GCache], is_async: bool
) -> None:
    cache = make_cache()
    depth: list[int] = []

    if is_async:

        @cache.cached(
            key_type="user_id", id_arg="uid", use_case="Recursive", default_config=BOTH, ignore_args=["n"]
        )
        async def aget(uid: str, n: int) -> int:
            depth.append(n)
            return n if n == 0 else await aget(uid, n - 1) + 1

        with cache.enable():
            assert await asyncio.wait_for(aget("1", 3), 5) == 3
    else:

        @cache.cached(
            key_type="user_id", id_arg="uid", use_case="Recursive", default_config=BOTH, ignore_args=["n"]
        )
        def sget(uid: str, n: int) -> int:
            depth.append(n)
            return n if n == 0 else sget(uid, n - 1) + 1

        def run() -> int:
            with cache.enable():
                return sget("1", 3)

        assert await asyncio.wait_for(asyncio.to_thread(run), 5) == 3
    assert depth == [3, 2, 1, 0]


async def test_a_caller_that_starts_after_an_invalidation_does_not_take_an_older_run(
    make_cache: Callable[..., GCache], registry: CollectorRegistry, is_async: bool
) -> None:
    cache = make_cache()
    source = {"plan": "free"}
    gate = threading.Event()
    calls: list[str] = []

    def compute() -> str:
        seen = source["plan"]  # the source is read first, then the slow part
        calls.append(seen)
        if len(calls) == 1:
            gate.wait(5)
        return seen

    call = plan_function(cache, is_async, compute, BOTH)

    first = asyncio.ensure_future(call())
    await asyncio.to_thread(wait_until, lambda: len(calls) == 1, 5, "the first run to read the source")
    source["plan"] = "pro"
    await cache.ainvalidate("user_id", "1")
    second = asyncio.ensure_future(call())  # starts after the invalidation returned
    await asyncio.to_thread(wait_until, lambda: len(calls) == 2, 5, "a second run of the function")
    gate.set()
    assert await second == "pro"
    assert await first == "free"  # concurrent with the invalidation: the old value is fair for it
    assert sample(registry, JOINED, use_case="Plan", result="joined") == 0


def failing_reads(
    cache: GCache, fail: Callable[[int], bool], gate: threading.Event | None = None
) -> list[int]:
    """Make the ``n``-th tracked REMOTE read of ``cache`` (from 0) fail where ``fail(n)``, as a
    timed-out or refused read would; with a ``gate``, the first read waits for it before failing.
    Returns the list of reads started."""
    remote = cache._remote
    assert remote is not None
    started: list[int] = []
    read_tracked, aread_tracked = remote.read_tracked, remote.aread_tracked

    def failed(n: int) -> RemoteError:
        return RemoteError("read", redis.TimeoutError(f"read {n} timed out (the test's)"))

    def sent(n: int, kwargs: dict[str, Any]) -> None:
        """A failing read was sent (no other caller may take it), as the real one would say."""
        sending = kwargs.get("sending")
        if fail(n) and sending is not None:
            sending()

    def sync_read(*args: Any, **kwargs: Any) -> Any:
        n = len(started)
        started.append(n)
        sent(n, kwargs)
        if n == 0 and gate is not None:
            gate.wait(5)
        if fail(n):
            raise failed(n)
        return read_tracked(*args, **kwargs)

    async def async_read(*args: Any, **kwargs: Any) -> Any:
        n = len(started)
        started.append(n)
        sent(n, kwargs)
        if n == 0 and gate is not None:
            await asyncio.to_thread(gate.wait, 5)
        if fail(n):
            raise failed(n)
        return await aread_tracked(*args, **kwargs)

    remote.read_tracked, remote.aread_tracked = sync_read, async_read  # type: ignore[method-assign]
    return started


def plan_function(
    cache: GCache, is_async: bool, compute: Callable[[], str], config: GCacheKeyConfig = REMOTE_ONLY
) -> Callable[[], Any]:
    """A tracked cached function of ``compute``; returns a coroutine function calling it enabled."""
    options: dict[str, Any] = {
        "key_type": "user_id",
        "id_arg": "uid",
        "use_case": "Plan",
        "default_config": config,
        "track_for_invalidation": True,
    }
    if is_async:

        @cache.cached(**options)
        async def aget(uid: str) -> str:
            return await asyncio.to_thread(compute)

        async def acall() -> str:
            with cache.enable():
                return await aget("1")

        return acall

    @cache.cached(**options)
    def sget(uid: str) -> str:
        return compute()

    def call() -> str:
        with cache.enable():
            return sget("1")

    return lambda: asyncio.to_thread(call)


async def test_a_caller_whose_read_failed_does_not_take_a_run_older_than_an_invalidation_of_another_process(
    make_cache: Callable[..., GCache], registry: CollectorRegistry, redis_client: redis.Redis, is_async: bool
) -> None:
    """Another process invalidated, the bus has not brought it yet (the LOCAL epoch has not
    moved and is trusted), and this caller's own REMOTE read failed: it has nothing to tell an
    older run from a good one, so it runs the function itself."""
    cache = make_cache()
    assert await cache.astart(timeout=5)
    source = {"plan": "free"}
    gate = threading.Event()
    calls: list[str] = []

    def compute() -> str:
        seen = source["plan"]
        calls.append(seen)
        if len(calls) == 1:
            gate.wait(5)
        return seen

    call = plan_function(cache, is_async, compute)
    failing_reads(cache, lambda n: n == 1)
    first = asyncio.ensure_future(call())
    await asyncio.to_thread(wait_until, lambda: len(calls) == 1, 5, "the first run to read the source")
    source["plan"] = "pro"
    # An invalidation from elsewhere whose bus message has not arrived: the watermark alone.
    fence = watermark_key(entity_key(cache.config.urn_prefix or "urn:gcache", "user_id", "1"))
    seconds, micros = redis_client.time()
    redis_client.hset(fence, "w", str(int(seconds) * 1_000_000 + int(micros)))
    second = asyncio.ensure_future(call())
    await asyncio.to_thread(wait_until, lambda: len(calls) == 2, 5, "a second run of the function")
    gate.set()

    assert await second == "pro"
    assert await first == "free"
    assert sample(registry, JOINED, use_case="Plan", result="joined") == 0


async def test_a_caller_with_the_breaker_open_and_no_local_does_not_take_a_run_older_than_an_invalidation(
    make_cache: Callable[..., GCache], registry: CollectorRegistry, redis_client: redis.Redis, is_async: bool
) -> None:
    """REMOTE alone is exact, also while the breaker is open. A REMOTE-only caller that finds
    the breaker open has no layer at all, so LOCAL's bus lag is no excuse: another process
    invalidated, its bus message has not arrived (the LOCAL epoch has not moved and is
    trusted), and the run in flight read the source before: the caller runs the function
    itself. (It took the older run, and served the old value, before; seen in the load test
    test_four_workers_of_200_coroutines_never_read_an_invalidated_version_through_a_restart.)"""
    cache = make_cache()
    assert await cache.astart(timeout=5)
    remote = cache._remote
    assert remote is not None
    source = {"plan": "free"}
    gate = threading.Event()
    calls: list[str] = []

    def compute() -> str:
        seen = source["plan"]
        calls.append(seen)
        if len(calls) == 1:
            gate.wait(5)
        return seen

    call = plan_function(cache, is_async, compute)
    first = asyncio.ensure_future(call())
    await asyncio.to_thread(wait_until, lambda: len(calls) == 1, 5, "the first run to read the source")
    source["plan"] = "pro"
    # An invalidation from elsewhere whose bus message has not arrived: the watermark alone.
    fence = watermark_key(entity_key(cache.config.urn_prefix or "urn:gcache", "user_id", "1"))
    seconds, micros = redis_client.time()
    redis_client.hset(fence, "w", str(int(seconds) * 1_000_000 + int(micros)))
    remote.breaker.is_open = True  # as after read timeouts under load: REMOTE sits the call out
    try:
        second = asyncio.ensure_future(call())

        def ran_or_joined() -> bool:
            return len(calls) == 2 or sample(registry, JOINED, use_case="Plan", result="joined") > 0

        await asyncio.to_thread(wait_until, ran_or_joined, 5, "the second call to run or join")
    finally:
        remote.breaker.is_open = False
        gate.set()

    assert await second == "pro"
    assert await first == "free"
    assert calls == ["free", "pro"]
    assert sample(registry, JOINED, use_case="Plan", result="joined") == 0


async def test_callers_without_reads_share_a_run_that_began_after_them(
    make_cache: Callable[..., GCache], registry: CollectorRegistry, is_async: bool
) -> None:
    """Both reads failed, so no fences to compare; but the run began after the waiting caller
    did, so its function read the source after anything that returned before that caller
    started: the caller may take its value."""
    cache = make_cache()
    assert await cache.astart(timeout=5)
    calls: list[str] = []
    gate = threading.Event()

    def compute() -> str:
        calls.append("run")
        return "pro"

    call = plan_function(cache, is_async, compute)
    started = failing_reads(cache, lambda n: True, gate)
    first = asyncio.ensure_future(call())  # its read waits for the gate, then fails
    await asyncio.to_thread(wait_until, lambda: len(started) == 1, 5, "the first read to start")
    second = asyncio.ensure_future(call())  # began later; its read fails at once; it leads a run
    await asyncio.to_thread(wait_until, lambda: len(started) == 2, 5, "the second read to start")
    await asyncio.sleep(0.05)
    gate.set()

    assert await first == "pro"
    assert await second == "pro"
    assert calls == ["run"]
    assert sample(registry, JOINED, use_case="Plan", result="joined") == 1


# -- the distributed lock ----------------------------------------------------------------------

LOCKED = GCacheKeyConfig(ttl_sec={REMOTE: 60}, ramp={REMOTE: 100}, lock_sec=2)


async def test_two_instances_with_the_lock_run_the_function_once_and_release_the_lock(
    make_cache: Callable[..., GCache], registry: CollectorRegistry, redis_client: redis.Redis, is_async: bool
) -> None:
    calls: list[str] = []
    gets: list[tuple[GCache, Callable[[str], Any]]] = []
    for n in range(2):  # two GCache instances on one Redis: two processes as far as locks go
        cache = make_cache(
            urn_prefix="urn:locked", metrics_registry=registry if n == 0 else CollectorRegistry()
        )

        def compute(uid: str) -> str:
            calls.append(uid)
            time.sleep(0.2)
            return f"user-{uid}"

        if is_async:

            @cache.cached(key_type="user_id", id_arg="uid", use_case="Locked", default_config=LOCKED)
            async def aget(uid: str) -> str:
                return await asyncio.to_thread(compute, uid)

            gets.append((cache, aget))
        else:

            @cache.cached(key_type="user_id", id_arg="uid", use_case="Locked", default_config=LOCKED)
            def sget(uid: str) -> str:
                return compute(uid)

            gets.append((cache, sget))

    async def call(cache: GCache, get: Callable[[str], Any]) -> str:
        with cache.enable():
            if is_async:
                return str(await get("1"))
            return str(await asyncio.to_thread(get, "1"))

    first = asyncio.ensure_future(call(*gets[0]))
    await asyncio.to_thread(wait_until, lambda: len(calls) == 1, 5, "the first instance to compute")
    assert list(await asyncio.gather(first, call(*gets[1]))) == ["user-1", "user-1"]
    assert calls == ["1"]
    assert sample(registry, JOINED, use_case="Locked", result="lock_acquired") == 1
    keys = [k.decode() if isinstance(k, bytes) else k for k in redis_client.keys("*")]
    value_key = next(k for k in keys if k.endswith("#Locked"))
    assert lock_key(value_key) not in keys  # released once the value was written


async def test_a_lock_holder_slower_than_the_bound_does_not_hold_the_others_forever(
    make_cache: Callable[..., GCache], registry: CollectorRegistry, redis_client: redis.Redis
) -> None:
    config = GCacheKeyConfig(ttl_sec={REMOTE: 60}, ramp={REMOTE: 100}, lock_sec=0.3)
    cache = make_cache(urn_prefix="urn:slow")
    calls: list[float] = []

    @cache.cached(key_type="user_id", id_arg="uid", use_case="Slow", default_config=config)
    async def get(uid: str) -> str:
        calls.append(time.monotonic())
        return f"user-{uid}"

    # Another process holds the lock and never writes the value.
    with cache.enable():
        await get("warm")  # renders the key once, so the lock key can be named
    value_key = next(
        k
        for k in (k.decode() if isinstance(k, bytes) else k for k in redis_client.keys("*"))
        if k.endswith("#Slow")
    )
    value_key = value_key.replace("warm", "1")
    redis_client.set(lock_key(value_key), b"someone else", px=10_000)
    started = time.monotonic()
    with cache.enable():
        assert await get("1") == "user-1"
    waited = calls[-1] - started
    assert 0.2 < waited < 2.0  # it waited about lock_sec, then computed itself
    assert sample(registry, JOINED, use_case="Slow", result="lock_timeout") == 1


def test_lock_key_stays_in_the_entity_slot_and_cannot_be_a_value_key() -> None:
    value = "{urn:gcache:user_id:1}?a=1#GetUser"
    assert lock_key(value) == "{urn:gcache:user_id:1}!lock?a=1#GetUser"
    assert lock_key("{urn:gcache:user_id:1}#GetUser").startswith("{urn:gcache:user_id:1}!")


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_four_processes_with_the_lock_run_the_function_once_in_total(
    redis_url: str, redis_admin_url: str, redis_client: redis.Redis, mode: str
) -> None:
    """Four processes miss one cold key at the same moment; the Redis lock lets one compute."""
    urls = {"LOCK_TEST_REDIS_URL": redis_url, "LOCK_TEST_COUNTER_URL": redis_admin_url}
    processes = [
        subprocess.Popen(
            [sys.executable, str(WORKER), mode, str(n)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
            env={**os.environ, **urls, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        )
        for n in range(4)
    ]
    wait_until(
        lambda: redis_client.scard("lock-test:ready") == 4 or any(p.poll() is not None for p in processes),
        30,
        "the four workers to be ready",
    )
    for p in processes:
        assert p.poll() is None, p.communicate()[1]
    redis_client.set("lock-test:go", b"1")
    reports = []
    for p in processes:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        reports.append(json.loads(out.strip().splitlines()[-1]))
    assert {r["value"] for r in reports} == {"user-1"}
    assert int(redis_client.get("lock-test:calls") or 0) == 1  # the function ran once in the fleet
    assert sum(r["lock_acquired"] for r in reports) == 1
    assert sum(r["lock_waited"] for r in reports) == 3


async def test_a_process_that_gets_the_lock_after_another_wrote_the_value_takes_that_value(
    make_cache: Callable[..., GCache], registry: CollectorRegistry, redis_client: redis.Redis, is_async: bool
) -> None:
    """B misses; before B takes the lock, A computes, writes and lets go: B must not compute too."""
    caches = [make_cache(urn_prefix="urn:raced", metrics_registry=r) for r in (CollectorRegistry(), registry)]
    calls: list[str] = []

    def make(name: str, cache: GCache) -> Callable[[str], Any]:
        decorate = cache.cached(key_type="user_id", id_arg="uid", use_case="Raced", default_config=LOCKED)
        if is_async:

            async def aget(uid: str) -> str:
                calls.append(name)
                return f"user-{uid}"

            return decorate(aget)

        def sget(uid: str) -> str:
            calls.append(name)
            return f"user-{uid}"

        return decorate(sget)

    gets = [make(name, cache) for name, cache in zip("AB", caches, strict=True)]
    remote_b = caches[1]._runtime.remote
    assert remote_b is not None
    if is_async:
        original_async = remote_b.atry_lock

        async def racing_async(key: str, token: bytes, ttl_ms: int) -> bool:
            with caches[0].enable():
                assert await gets[0]("1") == "user-1"  # A: computed, written, lock released
            return await original_async(key, token, ttl_ms)

        remote_b.atry_lock = racing_async  # type: ignore[method-assign]
        with caches[1].enable():
            got = await gets[1]("1")
    else:
        original = remote_b.try_lock

        def racing(key: str, token: bytes, ttl_ms: int) -> bool:
            with caches[0].enable():
                assert gets[0]("1") == "user-1"
            return original(key, token, ttl_ms)

        remote_b.try_lock = racing  # type: ignore[method-assign]
        with caches[1].enable():
            got = await asyncio.to_thread(gets[1], "1")
    assert got == "user-1"
    assert calls == ["A"]  # B read again once it held the lock, found A's value and let go
    assert sample(registry, JOINED, use_case="Raced", result="lock_waited") == 1
    assert sample(registry, JOINED, use_case="Raced", result="lock_acquired") == 0
    assert not [k for k in redis_client.keys("*") if b"!lock" in k]
