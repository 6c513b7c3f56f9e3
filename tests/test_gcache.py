"""The GCache facade end to end on a real Redis: enable(), read-through order, config provider,
ramps, TTLs, keys, several instances, sync functions and flushing.

Most behaviours run twice, once for an async and once for a sync decorated function: ``twin``
turns one plain body into either, keeping its signature and names, and ``call`` awaits the
result only when there is something to await.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry

from gcache import (
    CacheLayer,
    ConfigError,
    GCache,
    GCacheConfig,
    GCacheKey,
    GCacheKeyConfig,
    IdArgError,
    RedisConfig,
    UseCaseIsAlreadyRegisteredError,
    UseCaseNameIsReservedError,
)
from tests.conftest import sample

MODES = ["async", "sync"]
LOCAL, REMOTE = CacheLayer.LOCAL, CacheLayer.REMOTE
ENABLED = GCacheKeyConfig.enabled(60)
LOCAL_ONLY = GCacheKeyConfig(ttl_sec={LOCAL: 60}, ramp={LOCAL: 100})
REMOTE_ONLY = GCacheKeyConfig(ttl_sec={REMOTE: 60}, ramp={REMOTE: 100})

Maker = Callable[..., GCache]


def twin(mode: str, body: Callable[..., Any]) -> Callable[..., Any]:
    """``body`` itself (sync), or a coroutine function with the same signature and names."""
    if mode == "sync":
        return body

    @functools.wraps(body)
    async def async_body(*args: Any, **kwargs: Any) -> Any:
        return body(*args, **kwargs)

    return async_body


async def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a decorated function of either kind and return its value."""
    result = fn(*args, **kwargs)
    if inspect.isawaitable(result):
        return await result
    return result


def call_in_thread_context(fn: Callable[..., Any], *args: Any) -> Any:
    """Call ``fn`` from a thread with no event loop (an async one gets a private loop)."""
    result = fn(*args)
    if inspect.isawaitable(result):

        async def wait() -> Any:
            return await result

        return asyncio.run(wait())
    return result


def run_threads(*targets: Callable[[], None]) -> None:
    """Run the targets in threads at once; re-raise the first exception any of them raised."""
    errors: list[BaseException] = []

    def guarded(target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except BaseException as exc:
                errors.append(exc)

        return run

    threads = [threading.Thread(target=guarded(t)) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
        assert not thread.is_alive()
    if errors:
        raise errors[0]


def keys_of(client: redis.Redis) -> set[str]:
    return {k.decode() if isinstance(k, bytes) else k for k in client.keys("*")}


class Counter:
    """A body that counts its calls and returns ``(id, n-th call)``."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, uid: str) -> tuple[str, int]:
        self.calls.append(uid)
        return uid, len(self.calls)


def counting(mode: str, counter: Counter) -> Callable[..., Any]:
    def fetch(uid: str) -> tuple[str, int]:
        return counter(uid)

    return twin(mode, fetch)


# -- enable() ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_function_is_called_every_time_outside_enable(
    mode: str, make_cache: Maker, redis_client: redis.Redis, registry: CollectorRegistry
) -> None:
    cache = make_cache()
    counter = Counter()
    fn = cache.cached(key_type="user_id", id_arg="uid", use_case="Ctx", default_config=ENABLED)(
        counting(mode, counter)
    )

    assert not cache.is_enabled
    assert await call(fn, "1") == ("1", 1)
    assert await call(fn, "1") == ("1", 2)

    assert counter.calls == ["1", "1"]
    assert redis_client.dbsize() == 0
    assert (
        sample(registry, "gcache_disabled_counter_total", use_case="Ctx", reason="context", layer="GLOBAL")
        == 2
    )
    assert sample(registry, "gcache_request_counter_total", use_case="Ctx") == 0


@pytest.mark.parametrize("mode", MODES)
async def test_results_are_cached_inside_enable(
    mode: str, make_cache: Maker, redis_client: redis.Redis, registry: CollectorRegistry
) -> None:
    cache = make_cache()
    counter = Counter()
    fn = cache.cached(key_type="user_id", id_arg="uid", use_case="Ctx", default_config=ENABLED)(
        counting(mode, counter)
    )

    with cache.enable():
        assert cache.is_enabled
        assert await call(fn, "1") == ("1", 1)
        assert await call(fn, "1") == ("1", 1)
    assert not cache.is_enabled

    assert counter.calls == ["1"]
    assert keys_of(redis_client) == {"{urn:gcache:user_id:1}#Ctx"}
    assert sample(registry, "gcache_disabled_counter_total", use_case="Ctx", reason="context") == 0


@pytest.mark.parametrize("mode", MODES)
async def test_nested_enable_false_turns_caching_off_for_inner_block_only(
    mode: str, make_cache: Maker, redis_client: redis.Redis, registry: CollectorRegistry
) -> None:
    cache = make_cache()
    counter = Counter()
    fn = cache.cached(key_type="user_id", id_arg="uid", use_case="Nest", default_config=ENABLED)(
        counting(mode, counter)
    )

    with cache.enable():
        assert await call(fn, "1") == ("1", 1)
        with cache.enable(False):
            assert not cache.is_enabled
            assert await call(fn, "1") == ("1", 2)
            assert await call(fn, "2") == ("2", 3)
        assert cache.is_enabled
        assert await call(fn, "1") == ("1", 1)

    assert counter.calls == ["1", "1", "2"]
    assert keys_of(redis_client) == {"{urn:gcache:user_id:1}#Nest"}
    assert sample(registry, "gcache_disabled_counter_total", use_case="Nest", reason="context") == 2


@pytest.mark.parametrize("mode", MODES)
async def test_enable_restores_state_when_block_raises(mode: str, make_cache: Maker) -> None:
    cache = make_cache()
    counter = Counter()
    fn = cache.cached(key_type="user_id", id_arg="uid", use_case="Raise", default_config=ENABLED)(
        counting(mode, counter)
    )

    async def fail_inside_enable() -> None:
        with cache.enable():
            assert await call(fn, "1") == ("1", 1)
            raise KeyError("boom")

    with pytest.raises(KeyError):
        await fail_inside_enable()
    assert not cache.is_enabled
    assert await call(fn, "1") == ("1", 2)

    with cache.enable():
        with pytest.raises(KeyError), cache.enable(False):
            raise KeyError("inner")
        assert cache.is_enabled
        assert await call(fn, "1") == ("1", 1)
    assert not cache.is_enabled
    assert counter.calls == ["1", "1"]


@pytest.mark.parametrize("mode", MODES)
async def test_enable_does_not_leak_to_other_threads(
    mode: str, make_cache: Maker, registry: CollectorRegistry
) -> None:
    cache = make_cache()
    idents: list[tuple[str, int]] = []

    def fetch(uid: str) -> str:
        idents.append((uid, threading.get_ident()))
        return f"user-{uid}"

    # LOCAL only: threads with private event loops need no Redis connection of their own.
    fn = cache.cached(key_type="user_id", id_arg="uid", use_case="Thr", default_config=LOCAL_ONLY)(
        twin(mode, fetch)
    )
    inside_entered = threading.Event()
    outside_done = threading.Event()
    seen: dict[str, bool] = {}
    thread_ids: dict[str, int] = {}

    def inside() -> None:
        thread_ids["inside"] = threading.get_ident()
        seen["inside_before"] = cache.is_enabled
        with cache.enable():
            inside_entered.set()
            assert outside_done.wait(5)
            seen["inside"] = cache.is_enabled
            assert call_in_thread_context(fn, "in") == "user-in"
            assert call_in_thread_context(fn, "in") == "user-in"
        seen["inside_after"] = cache.is_enabled

    def outside() -> None:
        thread_ids["outside"] = threading.get_ident()
        assert inside_entered.wait(5)
        seen["outside"] = cache.is_enabled
        assert call_in_thread_context(fn, "out") == "user-out"
        assert call_in_thread_context(fn, "out") == "user-out"
        outside_done.set()

    with cache.enable():  # the test's own thread is inside enable() the whole time
        run_threads(inside, outside)
        assert cache.is_enabled

    assert seen == {
        "inside_before": False,
        "inside": True,
        "inside_after": False,
        "outside": False,
    }
    assert idents == [
        ("out", thread_ids["outside"]),
        ("out", thread_ids["outside"]),
        ("in", thread_ids["inside"]),
    ]
    assert sample(registry, "gcache_disabled_counter_total", use_case="Thr", reason="context") == 2
    assert sample(registry, "gcache_request_counter_total", use_case="Thr", layer="LOCAL") == 2


async def test_one_enable_object_shared_by_concurrent_tasks(make_cache: Maker) -> None:
    cache = make_cache()
    caching = cache.enable()  # built once, e.g. by a middleware, entered by every request
    first_in, second_in = asyncio.Event(), asyncio.Event()

    async def first() -> tuple[bool, bool]:
        with caching:
            inside = cache.is_enabled
            first_in.set()
            await second_in.wait()
        return inside, cache.is_enabled

    async def second() -> tuple[bool, bool]:
        await first_in.wait()
        with caching:
            inside = cache.is_enabled
            second_in.set()
            await asyncio.sleep(0.01)  # the first task leaves its block while this one is inside
        return inside, cache.is_enabled

    assert list(await asyncio.gather(first(), second())) == [(True, False), (True, False)]
    assert not cache.is_enabled


async def test_one_enable_object_shared_by_concurrent_threads(make_cache: Maker) -> None:
    cache = make_cache()
    caching = cache.enable()
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, tuple[bool, bool]] = {}

    def first() -> None:
        try:
            with caching:
                inside = cache.is_enabled
                first_in.set()
                assert second_in.wait(5)
        finally:
            first_out.set()
        seen["first"] = (inside, cache.is_enabled)

    def second() -> None:
        assert first_in.wait(5)
        with caching:
            inside = cache.is_enabled
            second_in.set()
            assert first_out.wait(5)
        seen["second"] = (inside, cache.is_enabled)

    run_threads(first, second)
    assert seen == {"first": (True, False), "second": (True, False)}


@pytest.mark.parametrize("mode", MODES)
async def test_tasks_created_inside_enable_inherit_it(mode: str, make_cache: Maker) -> None:
    cache = make_cache()
    counter = Counter()
    fn = cache.cached(key_type="user_id", id_arg="uid", use_case="Task", default_config=ENABLED)(
        counting(mode, counter)
    )

    async def child(uid: str) -> tuple[bool, Any, Any]:
        return cache.is_enabled, await call(fn, uid), await call(fn, uid)

    with cache.enable():
        inherited = asyncio.create_task(child("1"))
    assert await inherited == (True, ("1", 1), ("1", 1))

    not_inherited = asyncio.create_task(child("2"))  # created outside enable()
    with cache.enable():
        assert await not_inherited == (False, ("2", 2), ("2", 3))
    assert counter.calls == ["1", "2", "2"]


@pytest.mark.parametrize("mode", MODES)
async def test_task_enable_false_does_not_affect_parent(mode: str, make_cache: Maker) -> None:
    cache = make_cache()
    counter = Counter()
    fn = cache.cached(key_type="user_id", id_arg="uid", use_case="Task", default_config=ENABLED)(
        counting(mode, counter)
    )
    entered = asyncio.Event()
    proceed = asyncio.Event()

    async def child() -> tuple[bool, Any]:
        with cache.enable(False):
            entered.set()
            await proceed.wait()
            return cache.is_enabled, await call(fn, "1")

    with cache.enable():
        assert await call(fn, "1") == ("1", 1)
        task = asyncio.create_task(child())
        await entered.wait()
        assert cache.is_enabled  # the child is inside enable(False) right now
        assert await call(fn, "1") == ("1", 1)
        proceed.set()
        assert await task == (False, ("1", 2))
        assert cache.is_enabled
        assert await call(fn, "1") == ("1", 1)
    assert counter.calls == ["1", "1"]


@pytest.fixture
def local_cache() -> Iterator[GCache]:
    """A LOCAL-only GCache: enable() needs no Redis."""
    cache = GCache(GCacheConfig(metrics_registry=CollectorRegistry()))
    yield cache
    cache.close()


def crossed_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "left in another context" in r.getMessage()]


@pytest.mark.parametrize("scope", ["enable", "refresh"])
def test_a_block_exited_in_an_unrelated_context_changes_nothing_and_warns_once(
    scope: str, local_cache: GCache, caplog: pytest.LogCaptureFixture
) -> None:
    # FastAPI's sync generator dependency: __enter__ and __exit__ each run in a fresh copy of
    # the request's context, in thread-pool threads.
    for _ in range(3):
        block = local_cache.enable() if scope == "enable" else local_cache.refresh()
        entered = contextvars.copy_context()
        entered.run(block.__enter__)
        assert entered.run(lambda: local_cache.is_enabled)
        exiting = contextvars.copy_context()
        exiting.run(block.__exit__, None, None, None)  # raised ValueError before
        assert not exiting.run(lambda: local_cache.is_enabled)
    assert not local_cache.is_enabled
    [told] = crossed_warnings(caplog)  # once, not once per block
    for words in ("FastAPI", "def dep(): with gcache.enable(): yield", "gcache.web.CacheMiddleware",
                  "async dependency"):  # fmt: skip
        assert words in told
    assert "left as it was" in told
    assert [r.levelname for r in caplog.records if r.getMessage() == told] == ["WARNING"]


def test_an_unrelated_exit_leaves_an_outer_block_of_its_context_alone(
    local_cache: GCache, caplog: pytest.LogCaptureFixture
) -> None:
    # CacheMiddleware around the request and a sync generator dependency inside it: the
    # dependency's exit context holds the middleware's entry, which is not the dependency's.
    with local_cache.enable():
        block = local_cache.enable(False)
        contextvars.copy_context().run(block.__enter__)
        exiting = contextvars.copy_context()
        exiting.run(block.__exit__, None, None, None)
        assert exiting.run(lambda: local_cache.is_enabled)  # the middleware's state, untouched
        assert local_cache.is_enabled
    assert not local_cache.is_enabled  # and the middleware's own exit still restores
    assert len(crossed_warnings(caplog)) == 1


def test_a_block_exited_in_a_copy_of_its_context_restores_the_state_before_it(
    local_cache: GCache, caplog: pytest.LogCaptureFixture
) -> None:
    block = local_cache.enable()
    block.__enter__()
    copy = contextvars.copy_context()  # e.g. a task created inside the block finishes it
    copy.run(block.__exit__, None, None, None)
    assert not copy.run(lambda: local_cache.is_enabled)
    assert local_cache.is_enabled  # the entering context is still inside its block
    block.__exit__(None, None, None)
    assert not local_cache.is_enabled
    [told] = crossed_warnings(caplog)
    assert "the state before it was restored" in told
    assert caplog.records[-1].getMessage() == told  # the proper exit told nothing more


# -- read-through order --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_remote_hit_fills_local(mode: str, make_cache: Maker, redis_client: redis.Redis) -> None:
    other_registry = CollectorRegistry()
    first = make_cache()
    second = make_cache(metrics_registry=other_registry)
    counter = Counter()
    fa = first.cached(key_type="user_id", id_arg="uid", use_case="Fill", default_config=ENABLED)(
        counting(mode, counter)
    )
    fb = second.cached(key_type="user_id", id_arg="uid", use_case="Fill", default_config=ENABLED)(
        counting(mode, counter)
    )
    key = "{urn:gcache:user_id:1}#Fill"

    with first.enable(), second.enable():
        assert await call(fa, "1") == ("1", 1)
        assert keys_of(redis_client) == {key}
        assert await call(fb, "1") == ("1", 1)  # REMOTE hit on the second instance
        assert sample(other_registry, "gcache_request_counter_total", layer="REMOTE") == 1

        assert redis_client.delete(key) == 1
        assert await call(fb, "1") == ("1", 1)  # from the LOCAL entry the REMOTE hit wrote
        assert await call(fa, "1") == ("1", 1)  # from the LOCAL entry the function's result wrote

    assert counter.calls == ["1"]
    assert redis_client.dbsize() == 0
    assert sample(other_registry, "gcache_request_counter_total", use_case="Fill", layer="LOCAL") == 2
    assert sample(other_registry, "gcache_request_counter_total", use_case="Fill", layer="REMOTE") == 1


@pytest.mark.parametrize("mode", MODES)
async def test_values_come_from_remote_when_local_is_off(
    mode: str, make_cache: Maker, redis_client: redis.Redis, registry: CollectorRegistry
) -> None:
    first = make_cache()
    second = make_cache(metrics_registry=CollectorRegistry())
    counter = Counter()
    fa = first.cached(key_type="user_id", id_arg="uid", use_case="Rem", default_config=REMOTE_ONLY)(
        counting(mode, counter)
    )
    fb = second.cached(key_type="user_id", id_arg="uid", use_case="Rem", default_config=REMOTE_ONLY)(
        counting(mode, counter)
    )
    key = "{urn:gcache:user_id:1}#Rem"

    with first.enable(), second.enable():
        assert await call(fa, "1") == ("1", 1)
        assert redis_client.exists(key) == 1
        assert await call(fb, "1") == ("1", 1)
        assert await call(fa, "1") == ("1", 1)
        assert counter.calls == ["1"]

        redis_client.delete(key)  # nothing is kept in LOCAL: the next call recomputes
        assert await call(fa, "1") == ("1", 2)
        assert redis_client.exists(key) == 1

    assert sample(registry, "gcache_request_counter_total", use_case="Rem", layer="REMOTE") == 3
    assert sample(registry, "gcache_request_counter_total", use_case="Rem", layer="LOCAL") == 0


@pytest.mark.parametrize("mode", MODES)
async def test_local_only_cache_serves_from_process_without_redis(
    mode: str, redis_client: redis.Redis, registry: CollectorRegistry
) -> None:
    cache = GCache(GCacheConfig(metrics_registry=registry))
    try:
        counter = Counter()
        fn = cache.cached(key_type="user_id", id_arg="uid", use_case="Loc", default_config=ENABLED)(
            counting(mode, counter)
        )
        with cache.enable():
            assert await call(fn, "1") == ("1", 1)
            assert await call(fn, "1") == ("1", 1)
        assert counter.calls == ["1"]
        assert redis_client.dbsize() == 0
        assert sample(registry, "gcache_request_counter_total", use_case="Loc", layer="LOCAL") == 2
        assert sample(registry, "gcache_request_counter_total", use_case="Loc", layer="REMOTE") == 0
    finally:
        await cache.aclose()


# -- config provider -----------------------------------------------------------------------------


def get_posts(user_id: str, page: int = 1) -> list[str]:
    return [f"{user_id}-post-{page}"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider_kind", ["sync", "async"])
async def test_provider_is_called_once_per_call_with_the_key(
    mode: str, provider_kind: str, make_cache: Maker, redis_client: redis.Redis
) -> None:
    seen: list[GCacheKey] = []

    def sync_provider(key: GCacheKey) -> GCacheKeyConfig:
        seen.append(key)
        return ENABLED

    async def async_provider(key: GCacheKey) -> GCacheKeyConfig:
        seen.append(key)
        return ENABLED

    cache = make_cache(cache_config_provider=sync_provider if provider_kind == "sync" else async_provider)
    calls: list[tuple[str, int]] = []

    def body(user_id: str, page: int = 1) -> list[str]:
        calls.append((user_id, page))
        return get_posts(user_id, page)

    fn = cache.cached(key_type="user_id", id_arg="user_id", use_case="GetPosts")(twin(mode, body))

    with cache.enable():
        for _ in range(3):
            assert await call(fn, "123", page=2) == ["123-post-2"]

    assert calls == [("123", 2)]
    assert len(seen) == 3
    key = seen[0]
    assert (key.key_type, key.id, key.use_case, tuple(key.args)) == (
        "user_id",
        "123",
        "GetPosts",
        (("page", "2"),),
    )
    assert key.urn == "{urn:gcache:user_id:123}?page=2#GetPosts"
    assert all(k == key for k in seen)
    assert keys_of(redis_client) == {"{urn:gcache:user_id:123}?page=2#GetPosts"}


@pytest.mark.parametrize("mode", MODES)
async def test_provider_ramp_change_takes_effect_on_next_call(
    mode: str, make_cache: Maker, registry: CollectorRegistry
) -> None:
    current = {"config": ENABLED}
    cache = make_cache(cache_config_provider=lambda key: current["config"])
    counter = Counter()
    fn = cache.cached(key_type="user_id", id_arg="uid", use_case="Ramp")(counting(mode, counter))

    with cache.enable():
        assert await call(fn, "1") == ("1", 1)
        assert await call(fn, "1") == ("1", 1)

        current["config"] = GCacheKeyConfig(ttl_sec={LOCAL: 60, REMOTE: 60}, ramp={LOCAL: 0, REMOTE: 0})
        assert await call(fn, "1") == ("1", 2)
        assert await call(fn, "1") == ("1", 3)
        for layer in ("LOCAL", "REMOTE"):
            assert (
                sample(
                    registry,
                    "gcache_disabled_counter_total",
                    use_case="Ramp",
                    layer=layer,
                    reason="ramped_down",
                )
                == 2
            )

        current["config"] = ENABLED
        assert await call(fn, "1") == ("1", 1)  # the entry written before the ramp-down
    assert counter.calls == ["1", "1", "1"]


@pytest.mark.parametrize("mode", MODES)
async def test_provider_ttl_change_takes_effect_on_next_call(
    mode: str, make_cache: Maker, redis_client: redis.Redis
) -> None:
    current = {"config": GCacheKeyConfig(ttl_sec={LOCAL: 0.2, REMOTE: 10}, ramp={LOCAL: 100, REMOTE: 100})}
    cache = make_cache(cache_config_provider=lambda key: current["config"])
    counter = Counter()
    fn = cache.cached(key_type="user_id", id_arg="uid", use_case="Ttl")(counting(mode, counter))

    with cache.enable():
        assert await call(fn, "1") == ("1", 1)
        pttl_1 = redis_client.pttl("{urn:gcache:user_id:1}#Ttl")
        assert 9_000 < pttl_1 <= 10_000

        current["config"] = GCacheKeyConfig(ttl_sec={LOCAL: 60, REMOTE: 20}, ramp={LOCAL: 100, REMOTE: 100})
        assert await call(fn, "2") == ("2", 2)
        pttl_2 = redis_client.pttl("{urn:gcache:user_id:2}#Ttl")
        assert 19_000 < pttl_2 <= 20_000

        redis_client.delete("{urn:gcache:user_id:1}#Ttl", "{urn:gcache:user_id:2}#Ttl")
        await asyncio.sleep(0.3)
        assert await call(fn, "1") == ("1", 3)  # LOCAL entry written with 0.2 s expired
        assert await call(fn, "2") == ("2", 2)  # LOCAL entry written with 60 s still there
    assert counter.calls == ["1", "2", "1"]


@pytest.mark.parametrize("mode", MODES)
async def test_provider_none_uses_default_config(
    mode: str, make_cache: Maker, redis_client: redis.Redis
) -> None:
    seen: list[GCacheKey] = []

    def provider(key: GCacheKey) -> None:
        seen.append(key)

    cache = make_cache(cache_config_provider=provider)
    counter = Counter()
    fn = cache.cached(key_type="user_id", id_arg="uid", use_case="Def", default_config=REMOTE_ONLY)(
        counting(mode, counter)
    )

    with cache.enable():
        assert await call(fn, "1") == ("1", 1)
        assert await call(fn, "1") == ("1", 1)

    assert counter.calls == ["1"]
    assert len(seen) == 2
    assert seen[0].default_config is REMOTE_ONLY
    assert keys_of(redis_client) == {"{urn:gcache:user_id:1}#Def"}
    assert 59_000 < redis_client.pttl("{urn:gcache:user_id:1}#Def") <= 60_000


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("with_provider", [True, False])
async def test_missing_config_calls_function_uncached(
    mode: str,
    with_provider: bool,
    make_cache: Maker,
    redis_client: redis.Redis,
    registry: CollectorRegistry,
) -> None:
    cache = make_cache(cache_config_provider=(lambda key: None) if with_provider else None)
    counter = Counter()
    fn = cache.cached(key_type="user_id", id_arg="uid", use_case="Miss")(counting(mode, counter))

    with cache.enable():
        assert await call(fn, "1") == ("1", 1)
        assert await call(fn, "1") == ("1", 2)

    assert redis_client.dbsize() == 0
    for layer in ("LOCAL", "REMOTE"):  # counted per layer, as the original counts it
        assert sample(
            registry, "gcache_disabled_counter_total", use_case="Miss", layer=layer, reason="missing_config"
        ) == (2)
    assert sample(registry, "gcache_disabled_counter_total", use_case="Miss") == 4
    assert sample(registry, "gcache_request_counter_total", use_case="Miss") == 0


@pytest.mark.parametrize("mode", MODES)
async def test_provider_error_fails_open(
    mode: str, make_cache: Maker, redis_client: redis.Redis, registry: CollectorRegistry
) -> None:
    def provider(key: GCacheKey) -> GCacheKeyConfig:
        raise RuntimeError("config service down")

    cache = make_cache(cache_config_provider=provider)
    counter = Counter()
    # no default_config and no earlier answer to fall back on (tests/readthrough/test_config_fallback.py)
    fn = cache.cached(key_type="user_id", id_arg="uid", use_case="Err")(counting(mode, counter))

    with cache.enable():
        assert await call(fn, "1") == ("1", 1)
        assert await call(fn, "1") == ("1", 2)

    assert redis_client.dbsize() == 0
    for layer in ("LOCAL", "REMOTE"):  # counted per layer, as the original counts it
        assert sample(
            registry, "gcache_disabled_counter_total", use_case="Err", layer=layer, reason="config_error"
        ) == (2)
    assert (
        sample(
            registry,
            "gcache_error_counter_total",
            use_case="Err",
            layer="config resolution",
            error="RuntimeError",
            in_fallback="False",
        )
        == 2
    )


@pytest.mark.parametrize("mode", MODES)
async def test_provider_wrong_type_is_config_error(
    mode: str, make_cache: Maker, redis_client: redis.Redis, registry: CollectorRegistry
) -> None:
    cache = make_cache(cache_config_provider=lambda key: ENABLED.to_dict())
    counter = Counter()
    # no default_config to fall back on (tests/readthrough/test_config_fallback.py)
    fn = cache.cached(key_type="user_id", id_arg="uid", use_case="Typ")(counting(mode, counter))

    with cache.enable():
        assert await call(fn, "1") == ("1", 1)
        assert await call(fn, "1") == ("1", 2)

    assert redis_client.dbsize() == 0
    for layer in ("LOCAL", "REMOTE"):
        assert sample(
            registry, "gcache_disabled_counter_total", use_case="Typ", layer=layer, reason="config_error"
        ) == (2)
    assert (
        sample(
            registry,
            "gcache_error_counter_total",
            use_case="Typ",
            layer="config resolution",
            error="TypeError",
            in_fallback="False",
        )
        == 2
    )


# -- ramp ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("ramp", "expected_calls", "expected_lookups"), [(0, 5, 0), (100, 1, 5)])
async def test_ramp_zero_never_and_hundred_always_uses_layer(
    mode: str,
    ramp: int,
    expected_calls: int,
    expected_lookups: int,
    make_cache: Maker,
    registry: CollectorRegistry,
) -> None:
    cache = make_cache()
    counter = Counter()
    config = GCacheKeyConfig(ttl_sec={LOCAL: 60}, ramp={LOCAL: ramp})
    fn = cache.cached(key_type="user_id", id_arg="uid", use_case="R", default_config=config)(
        counting(mode, counter)
    )

    with cache.enable():
        for _ in range(5):
            await call(fn, "1")

    assert len(counter.calls) == expected_calls
    assert sample(registry, "gcache_request_counter_total", use_case="R", layer="LOCAL") == expected_lookups
    assert sample(registry, "gcache_disabled_counter_total", use_case="R", layer="LOCAL") == (
        5 - expected_lookups
    )


@pytest.mark.parametrize("mode", MODES)
async def test_ramp_fifty_uses_layer_about_half_the_calls(
    mode: str, make_cache: Maker, registry: CollectorRegistry
) -> None:
    cache = make_cache()
    counter = Counter()
    config = GCacheKeyConfig(ttl_sec={LOCAL: 60}, ramp={LOCAL: 50})
    fn = cache.cached(key_type="user_id", id_arg="uid", use_case="Half", default_config=config)(
        counting(mode, counter)
    )

    with cache.enable():
        for _ in range(400):
            await call(fn, "1")

    lookups = sample(registry, "gcache_request_counter_total", use_case="Half", layer="LOCAL")
    ramped_down = sample(
        registry, "gcache_disabled_counter_total", use_case="Half", layer="LOCAL", reason="ramped_down"
    )
    assert 120 <= lookups <= 280
    assert lookups + ramped_down == 400
    # Calls that skipped the layer ran the function; of the others only the first one missed.
    assert len(counter.calls) == 400 - lookups + 1


# -- TTL -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_local_ttl_expires(mode: str, make_cache: Maker) -> None:
    cache = make_cache()
    counter = Counter()
    config = GCacheKeyConfig(ttl_sec={LOCAL: 0.2}, ramp={LOCAL: 100})
    fn = cache.cached(key_type="user_id", id_arg="uid", use_case="T", default_config=config)(
        counting(mode, counter)
    )

    with cache.enable():
        assert await call(fn, "1") == ("1", 1)
        assert await call(fn, "1") == ("1", 1)
        await asyncio.sleep(0.3)
        assert await call(fn, "1") == ("1", 2)
        assert await call(fn, "1") == ("1", 2)
    assert counter.calls == ["1", "1"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("tracked", [False, True])
async def test_remote_ttl_is_set_on_redis_key(
    mode: str, tracked: bool, make_cache: Maker, redis_client: redis.Redis
) -> None:
    cache = make_cache()
    config = GCacheKeyConfig(ttl_sec={REMOTE: 30}, ramp={REMOTE: 100})
    fn = cache.cached(
        key_type="user_id",
        id_arg="uid",
        use_case="P",
        default_config=config,
        track_for_invalidation=tracked,
    )(counting(mode, Counter()))

    with cache.enable():
        await call(fn, "1")

    pttl = redis_client.pttl("{urn:gcache:user_id:1}#P")
    assert 29_000 < pttl <= 30_000


# -- None results and exceptions -----------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_none_result_is_cached(mode: str, make_cache: Maker, redis_client: redis.Redis) -> None:
    first = make_cache()
    second = make_cache(metrics_registry=CollectorRegistry())
    calls: list[str] = []

    def find(uid: str) -> None:
        calls.append(uid)

    fa = first.cached(key_type="user_id", id_arg="uid", use_case="None", default_config=ENABLED)(
        twin(mode, find)
    )
    fb = second.cached(key_type="user_id", id_arg="uid", use_case="None", default_config=ENABLED)(
        twin(mode, find)
    )

    with first.enable(), second.enable():
        assert await call(fa, "1") is None
        assert await call(fa, "1") is None  # LOCAL
        assert await call(fb, "1") is None  # REMOTE
    assert calls == ["1"]
    assert redis_client.exists("{urn:gcache:user_id:1}#None") == 1


class LookupFailedError(Exception):
    pass


@pytest.mark.parametrize("mode", MODES)
async def test_function_exception_propagates_and_is_not_cached(
    mode: str, make_cache: Maker, redis_client: redis.Redis, registry: CollectorRegistry
) -> None:
    cache = make_cache()
    calls: list[str] = []
    errors = [LookupFailedError("first"), LookupFailedError("second")]

    def fetch(uid: str) -> str:
        calls.append(uid)
        raise errors[len(calls) - 1]

    fn = cache.cached(key_type="user_id", id_arg="uid", use_case="Exc", default_config=ENABLED)(
        twin(mode, fetch)
    )

    with cache.enable():
        with pytest.raises(LookupFailedError) as first:
            await call(fn, "1")
        assert first.value is errors[0]
        with pytest.raises(LookupFailedError) as second:
            await call(fn, "1")
        assert second.value is errors[1]

    assert calls == ["1", "1"]
    assert redis_client.dbsize() == 0
    assert (
        sample(
            registry,
            "gcache_error_counter_total",
            use_case="Exc",
            error="LookupFailedError",
            in_fallback="True",
        )
        == 2
    )


# -- keys ----------------------------------------------------------------------------------------


class User:
    def __init__(self, id: int) -> None:
        self.id = id


@pytest.mark.parametrize("mode", MODES)
async def test_key_reflects_adapters_ignored_args_and_id_extractor(
    mode: str, make_cache: Maker, redis_client: redis.Redis
) -> None:
    cache = make_cache()
    calls: list[tuple[int, int]] = []

    def posts(user: User, page: int, request_id: str, tags: list[str]) -> str:
        calls.append((user.id, page))
        return f"{user.id}:{page}:{','.join(tags)}"

    fn = cache.cached(
        key_type="user_id",
        id_arg=("user", lambda u: u.id),
        use_case="GetPosts",
        arg_adapters={"tags": lambda t: "+".join(sorted(t))},
        ignore_args=["request_id"],
        default_config=ENABLED,
    )(twin(mode, posts))

    with cache.enable():
        assert await call(fn, User(123), 2, "req-1", ["b", "a"]) == "123:2:b,a"
        assert keys_of(redis_client) == {"{urn:gcache:user_id:123}?page=2&tags=a+b#GetPosts"}
        # Another request id, keyword arguments, same tags in another order: the same entry.
        assert await call(fn, User(123), tags=["a", "b"], request_id="req-2", page=2) == "123:2:b,a"
        assert calls == [(123, 2)]

        assert await call(fn, User(123), 3, "req-3", []) == "123:3:"
    assert keys_of(redis_client) == {
        "{urn:gcache:user_id:123}?page=2&tags=a+b#GetPosts",
        "{urn:gcache:user_id:123}?page=3&tags=#GetPosts",
    }
    assert calls == [(123, 2), (123, 3)]


@pytest.mark.parametrize("mode", MODES)
async def test_key_of_plain_id_and_default_argument(
    mode: str, make_cache: Maker, redis_client: redis.Redis
) -> None:
    cache = make_cache()
    fn = cache.cached(key_type="user_id", id_arg="user_id", use_case="GetPosts", default_config=ENABLED)(
        twin(mode, get_posts)
    )

    with cache.enable():
        assert await call(fn, "123", 2) == ["123-post-2"]
        assert await call(fn, "123") == ["123-post-1"]
        assert await call(fn, user_id="123", page=1) == ["123-post-1"]

    assert keys_of(redis_client) == {
        "{urn:gcache:user_id:123}?page=2#GetPosts",
        "{urn:gcache:user_id:123}?page=1#GetPosts",
    }


@pytest.mark.parametrize("mode", MODES)
async def test_method_shares_entry_across_instances(
    mode: str, make_cache: Maker, redis_client: redis.Redis
) -> None:
    cache = make_cache()
    calls: list[tuple[str, str]] = []

    def load(self: Repo, uid: str) -> str:
        calls.append((self.name, uid))
        return f"user-{uid}"

    class Repo:
        def __init__(self, name: str) -> None:
            self.name = name

        fetch = cache.cached(key_type="user_id", id_arg="uid", use_case="Repo.fetch", default_config=ENABLED)(
            twin(mode, load)
        )

    with cache.enable():
        assert await call(Repo("a").fetch, "7") == "user-7"
        assert await call(Repo("b").fetch, "7") == "user-7"
        assert await call(Repo("c").fetch, uid="7") == "user-7"

    assert calls == [("a", "7")]
    assert keys_of(redis_client) == {"{urn:gcache:user_id:7}#Repo.fetch"}


@pytest.mark.parametrize("mode", MODES)
async def test_default_use_case_is_module_and_function_name(
    mode: str, make_cache: Maker, redis_client: redis.Redis, registry: CollectorRegistry
) -> None:
    cache = make_cache()

    def fetch(uid: str) -> str:
        return uid

    fn = cache.cached(key_type="user_id", id_arg="uid", default_config=ENABLED)(twin(mode, fetch))
    expected = "tests.test_gcache.fetch"  # as the original library names it: no <locals>

    with cache.enable():
        assert await call(fn, "1") == "1"

    assert fn.use_case == expected
    assert keys_of(redis_client) == {"{urn:gcache:user_id:1}#" + expected}
    assert sample(registry, "gcache_request_counter_total", use_case=expected, layer="LOCAL") == 1


@pytest.mark.parametrize("mode", MODES)
async def test_duplicate_use_case_raises_at_decoration(mode: str, make_cache: Maker) -> None:
    cache = make_cache()
    cache.cached(key_type="user_id", id_arg="uid", use_case="Dup")(twin(mode, get_posts_by_uid))

    # another function: refused (the same one decorated again replaces it: tests/test_redecorate.py)
    with pytest.raises(UseCaseIsAlreadyRegisteredError, match="Dup"):
        cache.cached(key_type="user_id", id_arg="uid", use_case="Dup")(twin(mode, get_other_posts))
    with pytest.raises(UseCaseIsAlreadyRegisteredError, match="Dup"):
        cache.cached(key_type="org_id", id_arg="uid", use_case="Dup")(get_other_posts)


def get_posts_by_uid(uid: str) -> list[str]:
    return [uid]


def get_other_posts(uid: str) -> list[str]:
    return [uid]


@pytest.mark.parametrize("mode", MODES)
async def test_watermark_use_case_is_reserved(mode: str, make_cache: Maker) -> None:
    cache = make_cache()

    with pytest.raises(UseCaseNameIsReservedError, match="watermark"):
        cache.cached(key_type="user_id", id_arg="uid", use_case="watermark")(twin(mode, get_posts_by_uid))


@pytest.mark.parametrize("mode", MODES)
async def test_wrong_id_arg_raises_id_arg_error_naming_it(mode: str, make_cache: Maker) -> None:
    cache = make_cache()

    with pytest.raises(IdArgError, match="'user_uid'"):
        cache.cached(key_type="user_id", id_arg="user_uid", use_case="Wrong")(twin(mode, get_posts_by_uid))
    with pytest.raises(IdArgError, match="'user_uid'"):
        cache.cached(key_type="user_id", id_arg=("user_uid", str), use_case="Wrong")(
            twin(mode, get_posts_by_uid)
        )
    # The failed decorations did not take the name.
    cache.cached(key_type="user_id", id_arg="uid", use_case="Wrong")(twin(mode, get_posts_by_uid))


async def test_generator_functions_are_rejected(make_cache: Maker) -> None:
    cache = make_cache()

    def numbers(uid: str) -> Iterator[str]:
        yield uid

    async def anumbers(uid: str) -> AsyncIterator[str]:
        yield uid

    with pytest.raises(ConfigError, match="generator"):
        cache.cached(key_type="user_id", id_arg="uid", use_case="Gen")(numbers)
    with pytest.raises(ConfigError, match="generator"):
        cache.cached(key_type="user_id", id_arg="uid", use_case="Gen")(anumbers)


@pytest.mark.parametrize("mode", MODES)
async def test_decorator_keeps_name_doc_and_wrapped(mode: str, make_cache: Maker) -> None:
    cache = make_cache()

    def find_user(uid: str) -> str:
        """Find a user by id."""
        return uid

    raw = twin(mode, find_user)
    fn = cache.cached(key_type="user_id", id_arg="uid", use_case="Wraps")(raw)

    assert fn.__name__ == "find_user"
    assert fn.__doc__ == "Find a user by id."
    assert fn.__wrapped__ is raw
    assert inspect.iscoroutinefunction(fn) == (mode == "async")
    assert list(inspect.signature(fn).parameters) == ["uid"]


# -- several instances in one process ------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_instances_with_different_prefixes_keep_separate_keys(
    mode: str, make_cache: Maker, redis_client: redis.Redis
) -> None:
    first = make_cache(urn_prefix="urn:first")
    second = make_cache(urn_prefix="urn:second")
    counter_a, counter_b = Counter(), Counter()
    # The same use_case name on both instances is allowed.
    fa = first.cached(key_type="user_id", id_arg="uid", use_case="Get", default_config=REMOTE_ONLY)(
        counting(mode, counter_a)
    )
    fb = second.cached(key_type="user_id", id_arg="uid", use_case="Get", default_config=REMOTE_ONLY)(
        counting(mode, counter_b)
    )

    with first.enable(), second.enable():
        assert await call(fa, "1") == ("1", 1)
        assert await call(fb, "1") == ("1", 1)
        assert await call(fa, "1") == ("1", 1)
        assert await call(fb, "1") == ("1", 1)

    assert counter_a.calls == ["1"]
    assert counter_b.calls == ["1"]
    assert keys_of(redis_client) == {"{urn:first:user_id:1}#Get", "{urn:second:user_id:1}#Get"}


@pytest.mark.parametrize("mode", MODES)
async def test_closing_one_instance_does_not_affect_another(
    mode: str, make_cache: Maker, redis_client: redis.Redis
) -> None:
    first = make_cache()
    second = make_cache()
    counter_a, counter_b = Counter(), Counter()
    fa = first.cached(key_type="user_id", id_arg="uid", use_case="A", default_config=REMOTE_ONLY)(
        counting(mode, counter_a)
    )
    fb = second.cached(key_type="user_id", id_arg="uid", use_case="B", default_config=REMOTE_ONLY)(
        counting(mode, counter_b)
    )

    with first.enable(), second.enable():
        assert await call(fa, "1") == ("1", 1)
        assert await call(fb, "1") == ("1", 1)
        redis_client.delete("{urn:gcache:user_id:1}#A", "{urn:gcache:user_id:1}#B")

        await first.aclose()

        assert await call(fb, "1") == ("1", 2)
        assert await call(fb, "1") == ("1", 2)
        assert await call(fa, "1") == ("1", 2)  # still works, without Redis
        assert await call(fa, "1") == ("1", 3)

    assert keys_of(redis_client) == {"{urn:gcache:user_id:1}#B"}


def test_context_manager_closes_cache(
    redis_url: str, redis_client: redis.Redis, registry: CollectorRegistry
) -> None:
    counter = Counter()
    key = "{urn:gcache:user_id:1}#Cm"
    with GCache(GCacheConfig(redis_config=RedisConfig(url=redis_url), metrics_registry=registry)) as cache:
        fn = cache.cached(key_type="user_id", id_arg="uid", use_case="Cm", default_config=REMOTE_ONLY)(
            counting("sync", counter)
        )
        with cache.enable():
            assert fn("1") == ("1", 1)
            assert fn("1") == ("1", 1)
        assert redis_client.exists(key) == 1
        assert "closed=False" in repr(cache)

    assert "closed=True" in repr(cache)
    redis_client.delete(key)
    with cache.enable():
        assert fn("1") == ("1", 2)
        assert fn("1") == ("1", 3)
    assert redis_client.dbsize() == 0


async def test_async_context_manager_closes_cache(
    redis_url: str, redis_client: redis.Redis, registry: CollectorRegistry
) -> None:
    counter = Counter()
    key = "{urn:gcache:user_id:1}#Acm"
    async with GCache(
        GCacheConfig(redis_config=RedisConfig(url=redis_url), metrics_registry=registry)
    ) as cache:
        fn = cache.cached(key_type="user_id", id_arg="uid", use_case="Acm", default_config=REMOTE_ONLY)(
            counting("async", counter)
        )
        with cache.enable():
            assert await fn("1") == ("1", 1)
            assert await fn("1") == ("1", 1)
        assert redis_client.exists(key) == 1

    assert "closed=True" in repr(cache)
    redis_client.delete(key)
    with cache.enable():
        assert await fn("1") == ("1", 2)
        assert await fn("1") == ("1", 3)
    assert redis_client.dbsize() == 0


# -- sync functions ------------------------------------------------------------------------------


@pytest.mark.parametrize("provider_kind", ["sync", "async"])
async def test_sync_function_runs_in_callers_thread(
    provider_kind: str, make_cache: Maker, redis_client: redis.Redis
) -> None:
    def sync_provider(key: GCacheKey) -> GCacheKeyConfig:
        return ENABLED

    async def async_provider(key: GCacheKey) -> GCacheKeyConfig:
        return ENABLED

    cache = make_cache(cache_config_provider=sync_provider if provider_kind == "sync" else async_provider)
    ran_in: list[tuple[str, int]] = []

    @cache.cached(key_type="user_id", id_arg="uid", use_case="Here")
    def fetch(uid: str) -> str:
        ran_in.append((uid, threading.get_ident()))
        return f"user-{uid}"

    worker: dict[str, int] = {}

    def in_worker() -> None:
        worker["ident"] = threading.get_ident()
        with cache.enable():
            assert fetch("2") == "user-2"
            assert fetch("2") == "user-2"

    with cache.enable():
        assert fetch("1") == "user-1"
        assert fetch("1") == "user-1"
    run_threads(in_worker)

    assert ran_in == [("1", threading.get_ident()), ("2", worker["ident"])]
    assert keys_of(redis_client) == {"{urn:gcache:user_id:1}#Here", "{urn:gcache:user_id:2}#Here"}


@pytest.mark.parametrize("provider_kind", ["sync", "async"])
async def test_sync_cached_function_can_call_another(
    provider_kind: str, make_cache: Maker, redis_client: redis.Redis
) -> None:
    def sync_provider(key: GCacheKey) -> GCacheKeyConfig:
        return ENABLED

    async def async_provider(key: GCacheKey) -> GCacheKeyConfig:
        return ENABLED

    cache = make_cache(cache_config_provider=sync_provider if provider_kind == "sync" else async_provider)
    calls: list[str] = []

    @cache.cached(key_type="user_id", id_arg="uid", use_case="Inner")
    def inner(uid: str) -> int:
        calls.append("inner")
        return int(uid) * 10

    @cache.cached(key_type="user_id", id_arg="uid", use_case="Outer")
    def outer(uid: str) -> int:
        calls.append("outer")
        return inner(uid) + 1

    with cache.enable():
        assert outer("4") == 41
        assert outer("4") == 41
        assert inner("4") == 40

    assert calls == ["outer", "inner"]
    assert keys_of(redis_client) == {"{urn:gcache:user_id:4}#Inner", "{urn:gcache:user_id:4}#Outer"}


async def test_sync_function_inside_running_event_loop_returns_cached_values(
    make_cache: Maker, redis_client: redis.Redis, registry: CollectorRegistry
) -> None:
    asyncio.get_running_loop()  # this test runs inside the loop, as an async web handler would
    first = make_cache()
    second = make_cache(metrics_registry=CollectorRegistry())
    counter = Counter()
    fa = first.cached(key_type="user_id", id_arg="uid", use_case="Loop", default_config=ENABLED)(
        counting("sync", counter)
    )
    fb = second.cached(key_type="user_id", id_arg="uid", use_case="Loop", default_config=ENABLED)(
        counting("sync", counter)
    )

    async def in_task() -> Any:
        return fa("1")

    with first.enable(), second.enable():
        assert fa("1") == ("1", 1)
        assert fa("1") == ("1", 1)
        assert await asyncio.create_task(in_task()) == ("1", 1)
        assert fb("1") == ("1", 1)  # from Redis, read with the running loop in this thread

    assert counter.calls == ["1"]
    assert keys_of(redis_client) == {"{urn:gcache:user_id:1}#Loop"}
    assert sample(registry, "gcache_request_counter_total", use_case="Loop", layer="LOCAL") == 3


def test_sync_function_with_async_provider_without_event_loop(
    redis_url: str, redis_client: redis.Redis, registry: CollectorRegistry
) -> None:
    seen: list[GCacheKey] = []

    async def provider(key: GCacheKey) -> GCacheKeyConfig:
        await asyncio.sleep(0)
        seen.append(key)
        return ENABLED

    cache = GCache(
        GCacheConfig(
            redis_config=RedisConfig(url=redis_url),
            metrics_registry=registry,
            cache_config_provider=provider,
        )
    )
    try:
        counter = Counter()
        fn = cache.cached(key_type="user_id", id_arg="uid", use_case="AProv")(counting("sync", counter))
        with cache.enable():
            assert fn("1") == ("1", 1)
            assert fn("1") == ("1", 1)
        assert counter.calls == ["1"]
        assert [k.urn for k in seen] == ["{urn:gcache:user_id:1}#AProv"] * 2
        assert keys_of(redis_client) == {"{urn:gcache:user_id:1}#AProv"}
    finally:
        cache.close()


# -- flushall ------------------------------------------------------------------------------------


@pytest.mark.parametrize("flush_mode", MODES)
async def test_flushall_removes_only_this_caches_keys(
    flush_mode: str, make_cache: Maker, redis_client: redis.Redis
) -> None:
    cache = make_cache()
    neighbour = make_cache(urn_prefix="urn:gcache2", metrics_registry=CollectorRegistry())
    counter, tracked_counter, neighbour_counter = Counter(), Counter(), Counter()
    fn = cache.cached(key_type="user_id", id_arg="uid", use_case="F", default_config=ENABLED)(
        counting("async", counter)
    )
    tracked = cache.cached(
        key_type="user_id", id_arg="uid", use_case="T", default_config=ENABLED, track_for_invalidation=True
    )(counting("sync", tracked_counter))
    other = neighbour.cached(key_type="user_id", id_arg="uid", use_case="F", default_config=ENABLED)(
        counting("async", neighbour_counter)
    )
    redis_client.set("other", 1)
    redis_client.set("urn:gcache:no-braces", 1)

    with cache.enable(), neighbour.enable():
        await fn("1")
        await fn("2")
        tracked("3")
        await other("1")
        own = {
            "{urn:gcache:user_id:1}#F",
            "{urn:gcache:user_id:2}#F",
            "{urn:gcache:user_id:3}#T",
            "{urn:gcache:user_id:3}#watermark",
        }
        foreign = {"other", "urn:gcache:no-braces", "{urn:gcache2:user_id:1}#F"}
        assert keys_of(redis_client) == own | foreign

        deleted = await cache.aflushall() if flush_mode == "async" else cache.flushall()

        assert deleted == 4
        assert keys_of(redis_client) == foreign
        # LOCAL is empty too: the functions run again.
        assert await fn("1") == ("1", 3)
        assert tracked("3") == ("3", 2)
        # The other prefix kept its LOCAL and REMOTE entries.
        assert await other("1") == ("1", 1)
    assert neighbour_counter.calls == ["1"]
    assert redis_client.get("other") == b"1"


@pytest.mark.parametrize("flush_mode", MODES)
async def test_flushall_on_empty_cache_returns_zero(
    flush_mode: str, make_cache: Maker, redis_client: redis.Redis
) -> None:
    cache = make_cache()
    redis_client.set("other", 1)

    deleted = await cache.aflushall() if flush_mode == "async" else cache.flushall()

    assert deleted == 0
    assert keys_of(redis_client) == {"other"}


async def test_flushall_leaves_keys_of_a_longer_prefix_untouched(
    make_cache: Maker, redis_client: redis.Redis
) -> None:
    parent = make_cache()  # urn:gcache
    tenant = make_cache(urn_prefix="urn:gcache:tenant1", metrics_registry=CollectorRegistry())
    fp = parent.cached(key_type="user_id", id_arg="uid", use_case="P", default_config=REMOTE_ONLY)(
        counting("async", Counter())
    )
    ft = tenant.cached(key_type="user_id", id_arg="uid", use_case="T", default_config=REMOTE_ONLY)(
        counting("async", Counter())
    )

    with parent.enable(), tenant.enable():
        await fp("1")
        await ft("1")
    assert keys_of(redis_client) == {"{urn:gcache:user_id:1}#P", "{urn:gcache:tenant1:user_id:1}#T"}

    assert await parent.aflushall() == 1
    assert keys_of(redis_client) == {"{urn:gcache:tenant1:user_id:1}#T"}


@pytest.mark.parametrize("mode", MODES)
def test_two_functions_sharing_a_default_use_case_are_told_at_decoration(
    mode: str, make_cache: Maker
) -> None:
    cache = make_cache()

    class Users:
        def get(self, uid: str) -> str:
            return uid

    class Orders:
        def get(self, uid: str) -> str:
            return uid

    cache.cached(key_type="user_id", id_arg="uid", default_config=ENABLED)(twin(mode, Users.get))
    with pytest.raises(UseCaseIsAlreadyRegisteredError) as told:
        cache.cached(key_type="user_id", id_arg="uid", default_config=ENABLED)(twin(mode, Orders.get))
    message = str(told.value)
    assert "use_case 'tests.test_gcache.get'" in message
    assert "Orders.get" in message  # both functions named
    assert "Users.get" in message
    assert "give each its own use_case=" in message


async def test_an_unpicklable_value_is_kept_in_local_and_the_log_says_so(
    make_cache: Callable[..., GCache],
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    is_async: bool,
) -> None:
    """A value pickle refuses is served and kept in LOCAL; the warning says it was not written to
    REMOTE (not "served uncached", which would be untrue)."""
    cache = make_cache()
    both = GCacheKeyConfig(
        ttl_sec={CacheLayer.LOCAL: 60, CacheLayer.REMOTE: 60},
        ramp={CacheLayer.LOCAL: 100, CacheLayer.REMOTE: 100},
    )
    runs: list[str] = []
    decorate = cache.cached(key_type="user", id_arg="uid", use_case="Unpicklable", default_config=both)

    def compute(uid: str) -> Any:
        runs.append(uid)
        return lambda: uid  # a lambda: pickle refuses it

    if is_async:

        async def read_async(uid: str) -> Any:
            return compute(uid)

        read: Callable[..., Any] = decorate(read_async)
    else:
        read = decorate(compute)
    with caplog.at_level(logging.WARNING, logger="gcache"), cache.enable():
        first = await read("1") if is_async else read("1")
        second = await read("1") if is_async else read("1")
    assert first is second  # the second from LOCAL
    assert runs == ["1"]
    assert redis_client.keys("*Unpicklable*") == []
    (line,) = [r.getMessage() for r in caplog.records if "remote write failed" in r.getMessage()]
    assert "kept in LOCAL" in line
    assert "not stored in REMOTE" in line
    assert "served uncached" not in line
