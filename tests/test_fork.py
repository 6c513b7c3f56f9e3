"""Fork safety: a cache built, connected and used before ``fork()`` behaves in each child as if
built there (``multiprocessing`` with the fork start method, as a pre-fork server forks).

The tests are plain functions, not coroutines: a child forked from inside a running event loop
could not start one of its own on Python 3.11. Each child reports through a queue; a child that
hangs (waiting on a parent's thread, lock or flight) fails the test at its timeout.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import queue
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio
from prometheus_client import CollectorRegistry

from gcache import CacheLayer, GCache, GCacheConfig, GCacheKeyConfig, RedisConfig, RemoteError, single_flight
from gcache._fork import forks
from gcache.metrics import CountingValue
from tests.conftest import sample

pytestmark = [
    pytest.mark.redis,
    # Python 3.12+ warns that forking a process with threads may deadlock: what this file tests.
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

LONG = GCacheKeyConfig.enabled(300)
REMOTE_ONLY = GCacheKeyConfig(ttl_sec={CacheLayer.REMOTE: 300}, ramp={CacheLayer.REMOTE: 100})
_fork_context = multiprocessing.get_context("fork")


class Child:
    """``body()`` run in a forked child; :meth:`result` is what it returned (or its traceback)."""

    def __init__(self, body: Callable[[], Any]) -> None:
        self._queue: Any = _fork_context.Queue()

        def run() -> None:
            try:
                self._queue.put(("ok", body()))
            except BaseException:
                self._queue.put(("error", traceback.format_exc()))

        self.process = _fork_context.Process(target=run, daemon=True)
        self.process.start()

    def result(self, timeout: float = 30.0) -> Any:
        try:
            status, value = self._queue.get(timeout=timeout)
        except queue.Empty:
            self.process.kill()
            raise AssertionError(f"the child did not answer in {timeout}s: it hangs") from None
        finally:
            self.process.join(5)
        if status == "error":
            raise AssertionError(f"the child failed:\n{value}")
        return value


def text(raw: object) -> str:
    """A source value as text ("" when missing)."""
    return raw.decode() if isinstance(raw, bytes) else ""


_loops: dict[int, asyncio.AbstractEventLoop] = {}


def run_async(coroutine: Any) -> Any:
    """Run ``coroutine`` on this process's own loop, kept open so that the caches close their
    connections on it; a child makes its own (its parent's loop is the parent's)."""
    pid = os.getpid()
    if pid not in _loops:
        _loops[pid] = asyncio.new_event_loop()
    return _loops[pid].run_until_complete(coroutine)


@pytest.fixture
def caches(
    redis_url: str, redis_client: redis.Redis, registry: CollectorRegistry
) -> Iterator[Callable[..., GCache]]:
    built: list[GCache] = []

    def make(**overrides: Any) -> GCache:
        options: dict[str, Any] = {"redis_config": RedisConfig(url=redis_url), "metrics_registry": registry}
        options.update(overrides)
        cache = GCache(GCacheConfig(**options))
        built.append(cache)
        return cache

    yield make
    for cache in built:
        cache.close()
    loop = _loops.pop(os.getpid(), None)
    if loop is not None:
        loop.close()


def posts(cache: GCache, source: redis.Redis, is_async: bool) -> Callable[[str], Any]:
    """A tracked cached read of ``post:<id>``, called the same way for sync and async."""
    options: dict[str, Any] = {
        "key_type": "post_id",
        "id_arg": "post_id",
        "use_case": "Post",
        "track_for_invalidation": True,
        "default_config": LONG,
    }
    if is_async:

        @cache.cached(**options)
        async def aget(post_id: str) -> str:
            return text(source.get(f"post:{post_id}"))

        def call_async(post_id: str) -> Any:
            async def run() -> Any:
                with cache.enable():
                    return await aget(post_id)

            return run_async(run())

        return call_async

    @cache.cached(**options)
    def get(post_id: str) -> str:
        return text(source.get(f"post:{post_id}"))

    def call(post_id: str) -> Any:
        with cache.enable():
            return get(post_id)

    return call


def test_forked_children_hear_each_others_invalidations(
    is_async: bool, caches: Callable[..., GCache], redis_client: redis.Redis, redis_admin_url: str
) -> None:
    """The parent subscribed and cached before forking; one child's invalidation reaches the other
    child and the parent, whose LOCAL all held the old value."""
    cache = caches()
    get = posts(cache, redis.Redis.from_url(redis_admin_url), is_async)
    redis_client.set("post:1", "old")
    assert cache.start()
    assert get("1") == "old"
    read_old = _fork_context.Event()
    written = _fork_context.Event()

    def reader() -> list[str]:
        assert cache.start(), "the child's own bus did not come up"
        seen = [get("1"), get("1")]  # the second from LOCAL
        read_old.set()
        assert written.wait(20)
        deadline = time.monotonic() + 5
        while get("1") != "new" and time.monotonic() < deadline:
            time.sleep(0.01)
        seen.append(get("1"))
        return seen

    def writer() -> str:
        assert cache.start()
        assert read_old.wait(20)
        redis_client.set("post:1", "new")
        cache.invalidate("post_id", "1")
        written.set()
        return str(get("1"))

    readers = Child(reader)
    assert Child(writer).result() == "new"
    # Delivered by the bus (no TTL runs out in the test): the reader serves "new" as soon as it
    # has heard, and then for good.
    assert readers.result() == ["old", "old", "new"]
    assert get("1") == "new"


def test_child_starts_with_none_of_its_parents_state(
    caches: Callable[..., GCache],
    redis_client: redis.Redis,
    redis_admin_url: str,
    registry: CollectorRegistry,
) -> None:
    """Bus, identity, breaker, gauges, LOCAL, flights: what the parent had at the fork, the child
    has not, and it builds its own."""
    cache = caches(breaker_failures=3, breaker_probe_sec=60)
    source = redis.Redis.from_url(redis_admin_url)
    get = posts(cache, source, is_async=False)

    @cache.cached(key_type="user_id", id_arg="uid", use_case="Plain", default_config=LONG)
    def plain(uid: str) -> str:
        return f"plain {uid} computed in {multiprocessing.current_process().pid}"

    redis_client.set("post:1", "one")
    assert cache.start()
    assert get("1") == "one"
    with cache.enable():
        parent_plain = plain("1")
    parent_origin = cache._remote.origin  # type: ignore[union-attr]
    for _ in range(3):  # Redis "failing" three times in a row: the parent's breaker opens
        cache._remote.breaker.failure(redis.ConnectionError("down"))  # type: ignore[union-attr]
    assert cache._remote.breaker.is_open  # type: ignore[union-attr]
    assert sample(registry, "gcache_breaker_open") == 1
    assert sample(registry, "gcache_bus_connected") == 1

    def child() -> dict[str, Any]:
        state: dict[str, Any] = {
            "origin_differs": cache._remote.origin != parent_origin,  # type: ignore[union-attr]
            "breaker_open": cache._remote.breaker.is_open,  # type: ignore[union-attr]
            "breaker_gauge": sample(registry, "gcache_breaker_open"),
            "bus_gauge_before": sample(registry, "gcache_bus_connected"),
            "subscribed_before": cache.bus_subscribed,
        }
        with cache.enable():
            state["plain"] = plain("1")  # untracked LOCAL entries are kept
        state["tracked_local_hits"] = sample(
            registry, "gcache_request_counter_total", use_case="Post", layer="LOCAL"
        ) - sample(registry, "gcache_miss_counter_total", use_case="Post", layer="LOCAL")
        get("1")  # dropped at the fork: not from LOCAL
        state["tracked_local_hits_after"] = sample(
            registry, "gcache_request_counter_total", use_case="Post", layer="LOCAL"
        ) - sample(registry, "gcache_miss_counter_total", use_case="Post", layer="LOCAL")
        state["started"] = cache.start()
        state["bus_gauge_after"] = sample(registry, "gcache_bus_connected")
        state["forks"] = forks()
        return state

    state = Child(child).result()
    assert state.pop("tracked_local_hits_after") == state.pop("tracked_local_hits")
    assert state == {
        "origin_differs": True,
        "breaker_open": False,  # the parent's probe thread is not the child's: it would stay open
        "breaker_gauge": 0,
        "bus_gauge_before": 0,  # the parent's subscription is not the child's
        "subscribed_before": False,  # truthful: not yet (asking starts the child's own bus)
        "plain": parent_plain,
        "started": True,
        "bus_gauge_after": 1,
        "forks": forks() + 1,
    }
    assert cache._remote.breaker.is_open  # type: ignore[union-attr]
    assert sample(registry, "gcache_bus_connected") == 1  # the parent's own, untouched


def test_child_does_not_wait_for_a_flight_its_parent_was_leading(
    is_async: bool, caches: Callable[..., GCache]
) -> None:
    """A miss in progress in another thread of the parent at the fork: in the child nobody will
    finish it, so the child's caller runs the function itself."""
    cache = caches()
    release = threading.Event()
    running = threading.Event()

    if is_async:

        @cache.cached(key_type="user_id", id_arg="uid", use_case="Slow", default_config=LONG)
        async def aslow(uid: str) -> str:
            if multiprocessing.parent_process() is None:  # only the parent's call blocks
                running.set()
                await asyncio.to_thread(release.wait, 20)
            return f"slow {uid}"

        def call() -> Any:
            async def run() -> Any:
                with cache.enable():
                    return await aslow("1")

            return run_async(run())

    else:

        @cache.cached(key_type="user_id", id_arg="uid", use_case="Slow", default_config=LONG)
        def slow(uid: str) -> str:
            if multiprocessing.parent_process() is None:
                running.set()
                release.wait(20)
            return f"slow {uid}"

        def call() -> Any:
            with cache.enable():
                return slow("1")

    leader = threading.Thread(target=call)
    leader.start()
    assert running.wait(10)
    try:
        assert Child(call).result(timeout=15) == "slow 1"
    finally:
        release.set()
        leader.join(10)


def test_child_does_not_block_on_locks_its_parent_held_at_the_fork(
    caches: Callable[..., GCache], registry: CollectorRegistry
) -> None:
    """Another thread of the parent holds gcache's locks at the fork (LOCAL, epochs, flights,
    counters, logs, the loop thread, Redis connections): in the child every one is free."""
    cache = caches()

    @cache.cached(
        key_type="user_id", id_arg="uid", use_case="Held", track_for_invalidation=True, default_config=LONG
    )
    def held(uid: str) -> str:
        return f"held {uid}"

    assert cache.start()
    with cache.enable():
        held("1")
    store = cache._local.store("Held", "user_id", tracked=True)
    locks = [
        store._lock,
        cache._local.epochs._lock,
        cache._local._lock,
        single_flight._WAITERS,
        CountingValue._lock,
        cache._errors._lock,
        cache._loop_thread._lock,
        cache._remote._sync_lock,  # type: ignore[union-attr]
        cache._bus._lock,  # type: ignore[union-attr]
    ]
    holding, done = threading.Event(), threading.Event()

    def hold() -> None:
        for lock in locks:
            lock.acquire()
        holding.set()
        done.wait(30)
        for lock in locks:
            lock.release()

    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(10)

    def child() -> list[str]:
        assert cache.start()
        with cache.enable():
            values = [held("2"), held("2")]
        cache.invalidate("user_id", "2")
        cache._errors.warning(("test",), "logged in the child")
        sample(registry, "gcache_request_counter_total")  # a scrape reads every counter
        cache.close()
        return values

    try:
        assert Child(child).result(timeout=20) == ["held 2", "held 2"]
    finally:
        done.set()
        holder.join(10)


def test_factory_client_cache_works_in_child_after_parent_used_the_loop_thread(
    caches: Callable[..., GCache], redis_client: redis.Redis, redis_url: str
) -> None:
    """Sync calls of a ``redis_client_factory`` cache run on gcache's loop thread: the parent's does
    not exist in the child, which must start its own rather than wait on a loop nobody runs."""
    cache = caches(redis_config=None, redis_client_factory=lambda: redis.asyncio.Redis.from_url(redis_url))
    calls: list[str] = []

    @cache.cached(key_type="user_id", id_arg="uid", use_case="Factory", default_config=REMOTE_ONLY)
    def get(uid: str) -> str:
        calls.append(uid)
        return f"value {uid}"

    with cache.enable():
        assert get("1") == "value 1"

    def child() -> list[Any]:
        with cache.enable():
            return [get("1"), get("2"), len(calls)]

    # "1" from Redis, "2" computed in the child (its calls list is a copy of the parent's).
    assert Child(child).result(timeout=15) == ["value 1", "value 2", 2]
    assert redis_client.exists("{urn:gcache:user_id:2}#Factory") == 1
    with cache.enable():
        assert get("2") == "value 2"  # the parent's loop thread and connection still serve it
    assert calls == ["1"]


def test_closed_cache_stays_closed_in_the_child(caches: Callable[..., GCache]) -> None:
    cache = caches()
    cache.close()

    def child() -> str:
        return repr(cache)

    assert "closed=True" in Child(child).result()


def test_child_replays_the_invalidations_waiting_in_its_parents_outbox(
    caches: Callable[..., GCache], redis_client: redis.Redis, registry: CollectorRegistry
) -> None:
    """The parent's waiting invalidation is kept in the child (held, counted) and replayed there
    too: the child's Redis takes it while the parent's still refuses."""
    cache = caches(breaker_probe_sec=0.05)
    remote = cache._remote
    assert remote is not None

    def refused(*args: Any) -> Any:
        raise RemoteError("invalidate", redis.ConnectionError("injected: connection refused"))

    async def arefused(*args: Any) -> Any:
        refused()

    remote.invalidate, remote.ainvalidate = refused, arefused  # type: ignore[method-assign, assignment]
    remote.ainvalidate_many = arefused  # type: ignore[method-assign, assignment]  # the outbox's replays
    with pytest.raises(RemoteError):
        cache.invalidate("post_id", "1")
    assert sample(registry, "gcache_invalidation_outbox") == 1

    def child() -> dict[str, Any]:
        state: dict[str, Any] = {"depth_at_fork": sample(registry, "gcache_invalidation_outbox")}
        del remote.invalidate, remote.ainvalidate, remote.ainvalidate_many  # this process's Redis answers
        deadline = time.monotonic() + 10
        while len(cache._outbox) and time.monotonic() < deadline:
            time.sleep(0.02)
        state["depth_after"] = sample(registry, "gcache_invalidation_outbox")
        state["applied"] = sample(registry, "gcache_invalidation_replay_counter_total", result="applied")
        state["held"] = sorted(cache._local.epochs.held)
        return state

    assert Child(child).result() == {"depth_at_fork": 1, "depth_after": 0, "applied": 1, "held": []}
    assert int(redis_client.hget("{urn:gcache:post_id:1}#watermark", "w") or 0) > 0  # the child's replay
    assert len(cache._outbox) == 1  # the parent's still waits: its Redis still refuses
    del remote.invalidate, remote.ainvalidate, remote.ainvalidate_many
