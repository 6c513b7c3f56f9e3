"""Mistakes a user makes are told or refused, never silently cached: calls the function would
reject, a key type nobody caches, calls after close, key parts that make every call a miss.

Each told mistake is one WARNING on the ``gcache`` logger, checked by its text, and then never
again for the same use case, key type or part.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry

from gcache import CacheLayer, ConfigError, GCache, GCacheConfig, GCacheKey, GCacheKeyConfig, RedisConfig
from tests.conftest import sample
from tests.test_gcache import ENABLED, REMOTE_ONLY, Maker, call, twin

LOCAL_ONLY = GCacheKeyConfig(ttl_sec={CacheLayer.LOCAL: 60}, ramp={CacheLayer.LOCAL: 100})


def decorate(cache: GCache, use_case: str, body: Any, is_async: bool, id_arg: str = "user_id") -> Any:
    """``body`` cached under ``use_case``, as a sync function or a coroutine function."""
    return cache.cached(key_type="user_id", id_arg=id_arg, use_case=use_case, default_config=ENABLED)(
        twin("async" if is_async else "sync", body)
    )


def told(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "gcache" and text in r.getMessage()]


# -- arguments the function would reject --------------------------------------------------------


@pytest.mark.parametrize("config", [LOCAL_ONLY, REMOTE_ONLY], ids=["local", "remote"])
@pytest.mark.parametrize(
    ("args", "kwargs", "error"),
    [
        ((6,), {"pgae": 2}, "unexpected keyword argument 'pgae'"),
        ((6, 2, 3), {}, "positional arguments but 3 were given"),
        ((6, 1), {"page": 1}, "multiple values for argument 'page'"),
        ((), {"page": 1}, "missing 1 required positional argument: 'user_id'"),
    ],
    ids=["misspelled", "too-many", "twice", "missing"],
)
async def test_call_the_function_would_reject_raises_its_type_error_on_a_warm_key(
    is_async: bool,
    make_cache: Maker,
    config: GCacheKeyConfig,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    error: str,
) -> None:
    cache = make_cache()
    calls: list[tuple[Any, int]] = []

    def posts(user_id: Any, page: int = 1) -> str:
        calls.append((user_id, page))
        return f"posts of {user_id}, page {page}"

    fn = cache.cached(key_type="user_id", id_arg="user_id", use_case="Posts", default_config=config)(
        twin("async" if is_async else "sync", posts)
    )
    with cache.enable():
        assert await call(fn, 6) == "posts of 6, page 1"
        assert await call(fn, 6, page=1) == "posts of 6, page 1"  # warm, in every form that binds
        with pytest.raises(TypeError, match=error.replace("(", r"\(").replace(")", r"\)")):
            await call(fn, *args, **kwargs)
    assert calls == [(6, 1)]


# -- a key type no use case has -------------------------------------------------------------------


async def test_invalidating_a_key_type_no_use_case_has_warns_once_and_is_applied(
    is_async: bool, make_cache: Maker, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    cache = make_cache()
    cache.cached(key_type="user_id", id_arg="uid", use_case="U", default_config=ENABLED)(lambda uid: uid)
    cache.cached(key_type="org_id", id_arg="oid", use_case="O", default_config=ENABLED)(lambda oid: oid)

    async def invalidate(key_type: str, id: str) -> None:
        if is_async:
            await cache.ainvalidate(key_type, id)
        else:
            cache.invalidate(key_type, id)

    with caplog.at_level(logging.WARNING, logger="gcache"):
        await invalidate("userid", "1")
        await invalidate("userid", "2")
        await invalidate("user_id", "1")
    assert told(caplog, "no use case") == [
        "gcache: invalidate('userid', ...): no use case of this GCache has key_type 'userid' (its key "
        "types: 'org_id', 'user_id'); a typo? Applied all the same, as another process may cache it"
    ]
    # Applied all the same: the fence of the unknown key type was raised in Redis.
    assert redis_client.exists("{urn:gcache:userid:1}#watermark", "{urn:gcache:userid:2}#watermark") == 2


async def test_an_original_watermark_met_by_a_tracked_read_is_told_once(
    is_async: bool, make_cache: Maker, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """A fence key holding the original gcache's string watermark (a process without
    legacy_compat on a shared prefix): the tracked read makes it a fence and says so, once."""
    fence = "{urn:gcache:user_id:1}#watermark"
    cache = make_cache()
    fn = cache.cached(
        key_type="user_id",
        id_arg="user_id",
        use_case="Mixed",
        track_for_invalidation=True,
        default_config=REMOTE_ONLY,
    )(twin("async" if is_async else "sync", lambda user_id: f"user-{user_id}"))
    with caplog.at_level(logging.WARNING, logger="gcache"):
        for id in ("1", "2"):
            redis_client.set(fence.replace(":1}", f":{id}}}"), "1700000000000")
            with cache.enable():
                assert await call(fn, id) == f"user-{id}"
    (message,) = told(caplog, "held the original gcache's watermark")
    assert message.startswith(f"gcache: {fence} held the original gcache's watermark (a string)")
    assert redis_client.type(fence) == b"hash"  # a fence now


def test_invalidating_with_no_use_case_at_all_says_so(caplog: pytest.LogCaptureFixture) -> None:
    with GCache() as cache, caplog.at_level(logging.WARNING, logger="gcache"):
        cache.invalidate("user_id", "1")
    assert told(caplog, "its key types: none: it has no use case yet")


def test_direct_access_counts_as_a_use_case_of_its_key_type(caplog: pytest.LogCaptureFixture) -> None:
    with GCache() as cache, caplog.at_level(logging.WARNING, logger="gcache"), cache.enable():
        key = GCacheKey("team_id", "1", "Team", default_config=LOCAL_ONLY)
        assert cache.get(key, lambda: "team") == "team"
        cache.invalidate("team_id", "1")
    assert told(caplog, "no use case") == []


# -- calls after close ----------------------------------------------------------------------------


async def test_calls_after_close_are_served_uncached_with_one_warning(
    is_async: bool,
    redis_url: str,
    redis_client: redis.Redis,
    registry: CollectorRegistry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache = GCache(GCacheConfig(redis_config=RedisConfig(url=redis_url), metrics_registry=registry))
    calls: list[str] = []

    def get(uid: str) -> str:
        calls.append(uid)
        return f"user {uid}"

    fn = decorate(cache, "Closed", get, is_async, id_arg="uid")
    with cache.enable():
        assert await call(fn, "1") == "user 1"
        assert await call(fn, "1") == "user 1"  # a LOCAL hit
    if is_async:
        await cache.aclose()
    else:
        cache.close()
    with caplog.at_level(logging.WARNING, logger="gcache"), cache.enable():
        assert [await call(fn, "1") for _ in range(3)] == ["user 1"] * 3
    assert calls == ["1"] * 4  # the LOCAL entry is not served after close
    assert told(caplog, "after its GCache") == [
        "gcache: use case 'Closed' called after its GCache (prefix 'urn:gcache') was closed: served "
        "uncached from now on (close the cache when the application stops, after its last call)"
    ]
    assert sample(registry, "gcache_disabled_counter_total", use_case="Closed", reason="closed") == 3


def test_direct_put_after_close_is_dropped_and_told(caplog: pytest.LogCaptureFixture) -> None:
    cache = GCache()
    key = GCacheKey("user_id", "1", "Put", default_config=LOCAL_ONLY)
    cache.close()
    with caplog.at_level(logging.WARNING, logger="gcache"), cache.enable():
        cache.put(key, "stored?")
        assert cache.get(key, lambda: "computed") == "computed"
    assert len(told(caplog, "use case 'Put' called after its GCache")) == 1


# -- key parts that make every call a miss --------------------------------------------------------


class Request:
    """Like a framework's request object: no ``__str__``, so it renders with its address."""


async def test_key_part_rendered_with_an_object_address_is_told_with_the_fix(
    is_async: bool, make_cache: Maker, caplog: pytest.LogCaptureFixture
) -> None:
    cache = make_cache()

    def handler(user_id: str, request: Request) -> str:
        return f"user {user_id}"

    fn = decorate(cache, "Leaky", handler, is_async)
    with caplog.at_level(logging.WARNING, logger="gcache"), cache.enable():
        for _ in range(5):
            assert await call(fn, "1", Request()) == "user 1"
    [message] = told(caplog, "key part")
    assert message.startswith(
        f"gcache: use case 'Leaky': key part 'request' renders as '<{Request.__module__}.Request object at 0x"
    )
    assert message.endswith(
        ">', a new value for every object, so calls cannot hit the cache and each one stores an "
        "entry; leave it out with ignore_args=['request'], or key it by arg_adapters={'request': ...}"
    )


async def test_id_rendered_with_an_object_address_is_told(
    is_async: bool, make_cache: Maker, caplog: pytest.LogCaptureFixture
) -> None:
    cache = make_cache()

    def profile(user: object) -> str:
        return "profile"

    fn = decorate(cache, "ById", profile, is_async, id_arg="user")
    with caplog.at_level(logging.WARNING, logger="gcache"), cache.enable():
        await call(fn, Request())
        await call(fn, Request())
    [message] = told(caplog, "key part")
    assert f"key part 'id' renders as '<{Request.__module__}.Request object at 0x" in message
    assert message.endswith("id_arg=(name, lambda obj: obj.id)")


async def test_argument_new_on_every_call_is_told_after_a_window_of_misses(
    is_async: bool, make_cache: Maker, caplog: pytest.LogCaptureFixture
) -> None:
    cache = make_cache()
    stamps = iter(range(10**6))

    def feed(user_id: str, request_id: int) -> str:
        return f"feed {user_id}"

    fn = decorate(cache, "Feed", feed, is_async)
    with caplog.at_level(logging.WARNING, logger="gcache"), cache.enable():
        for _ in range(63):  # four users, each call with a new request id
            await call(fn, str(next(stamps) % 4), next(stamps))
        assert told(caplog, "key part") == []
        for _ in range(200):
            await call(fn, str(next(stamps) % 4), next(stamps))
    assert told(caplog, "key part") == [
        "gcache: use case 'Feed': key part 'request_id' took a new value on each of the last 64 misses "
        "while the rest of the key repeated, so calls cannot hit the cache and each one stores an entry; "
        "leave it out with ignore_args=['request_id'], or key it by arg_adapters={'request_id': ...}"
    ]


async def test_arguments_that_repeat_are_not_told(
    is_async: bool, make_cache: Maker, caplog: pytest.LogCaptureFixture
) -> None:
    """Pagination: pages repeat across users, ids are many; a high-cardinality id alone is fine."""
    cache = make_cache()

    def page(user_id: str, page: int) -> str:
        return f"{user_id}:{page}"

    fn = decorate(cache, "Pages", page, is_async)
    with caplog.at_level(logging.WARNING, logger="gcache"), cache.enable():
        for user in range(100):
            for p in range(3):
                await call(fn, str(user), p)
        for user in range(100, 300):
            await call(fn, str(user), 0)
    assert told(caplog, "key part") == []


# -- a development aid: calls outside enable(), calls with no config (GCacheConfig.tell_mistakes) --


def decorate_many(cache: GCache, use_case: str, is_async: bool, config: GCacheKeyConfig | None) -> Any:
    def users(user_ids: list[str]) -> dict[str, str]:
        return {uid: f"user {uid}" for uid in user_ids}

    return cache.cached_many(
        key_type="user_id", ids_arg="user_ids", use_case=use_case, default_config=config
    )(twin("async" if is_async else "sync", users))


@pytest.mark.parametrize("many", [False, True], ids=["cached", "cached_many"])
async def test_calls_outside_enable_are_told_once_per_use_case_with_the_fix(
    is_async: bool,
    many: bool,
    make_cache: Maker,
    registry: CollectorRegistry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache = make_cache(tell_mistakes=True)
    if many:
        fns = [decorate_many(cache, name, is_async, ENABLED) for name in ("Outside", "Outside2")]
        args: Any = (["1", "2"],)
    else:
        fns = [
            decorate(cache, name, lambda user_id: f"user {user_id}", is_async)
            for name in ("Outside", "Outside2")
        ]
        args = ("1",)
    with caplog.at_level(logging.WARNING, logger="gcache"):
        for _ in range(3):
            for fn in fns:
                await call(fn, *args)
        with cache.enable():  # inside: nothing more to tell
            await call(fns[0], *args)
    lines = told(caplog, "outside gcache.enable()")
    assert len(lines) == 2
    assert "(use case 'Outside')" in lines[0]
    assert "(use case 'Outside2')" in lines[1]
    assert "with gcache.enable():" in lines[0]
    assert "CacheMiddleware" in lines[0]
    assert sample(registry, "gcache_disabled_counter_total", use_case="Outside", reason="context") == 3


@pytest.mark.parametrize("many", [False, True], ids=["cached", "cached_many"])
@pytest.mark.parametrize("provider", [False, True], ids=["no-provider", "provider-answers-none"])
async def test_calls_with_no_config_are_told_once_per_use_case_with_the_fix(
    is_async: bool, many: bool, provider: bool, make_cache: Maker, caplog: pytest.LogCaptureFixture
) -> None:
    options: dict[str, Any] = {"tell_mistakes": True}
    if provider:
        options["cache_config_provider"] = lambda key: None
    cache = make_cache(**options)
    if many:
        fn = decorate_many(cache, "NoConfig", is_async, None)
        args: Any = (["1"],)
    else:
        fn = cache.cached(key_type="user_id", id_arg="user_id", use_case="NoConfig")(
            twin("async" if is_async else "sync", lambda user_id: f"user {user_id}")
        )
        args = ("1",)
    with caplog.at_level(logging.WARNING, logger="gcache"), cache.enable():
        for _ in range(3):
            await call(fn, *args)
    lines = told(caplog, "has no config")
    assert len(lines) == 1
    assert "(use case 'NoConfig')" in lines[0]
    assert "default_config=GCacheKeyConfig(...)" in lines[0]
    assert ("the config provider answered None" in lines[0]) is provider
    assert ("have the provider answer for this use case" in lines[0]) is provider


def test_direct_access_with_no_config_is_told_in_its_own_words(caplog: pytest.LogCaptureFixture) -> None:
    cache = GCache(GCacheConfig(tell_mistakes=True, metrics_registry=CollectorRegistry()))
    key = GCacheKey("user_id", "1", "DirectNoConfig")
    with caplog.at_level(logging.WARNING, logger="gcache"), cache.enable():
        assert [cache.get(key, lambda: "computed") for _ in range(2)] == ["computed"] * 2
    lines = told(caplog, "has no config")
    assert len(lines) == 1
    assert "direct access to use case 'DirectNoConfig'" in lines[0]
    assert "give the GCacheKey default_config=GCacheKeyConfig(...)" in lines[0]
    cache.close()


@pytest.mark.parametrize(
    ("choice", "env", "tells"),
    [(None, None, False), (None, "1", True), (None, "0", False), (False, "1", False), (True, None, True)],
)
async def test_tell_mistakes_is_on_with_gcache_debug_unless_turned_off(
    choice: bool | None,
    env: str | None,
    tells: bool,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert not sys.flags.dev_mode  # the tests do not run in development mode
    if env is None:
        monkeypatch.delenv("GCACHE_DEBUG", raising=False)
    else:
        monkeypatch.setenv("GCACHE_DEBUG", env)
    cache = GCache(GCacheConfig(tell_mistakes=choice, metrics_registry=CollectorRegistry()))
    fn = decorate(cache, "Debug", lambda user_id: user_id, False)
    with caplog.at_level(logging.WARNING, logger="gcache"):
        fn("1")
    assert len(told(caplog, "outside gcache.enable()")) == int(tells)
    cache.close()


def test_tell_mistakes_is_on_in_python_development_mode() -> None:
    program = (
        "import logging, sys\n"
        "logging.basicConfig(stream=sys.stdout, format='%(levelname)s %(message)s')\n"
        "from gcache import GCache, GCacheConfig\n"
        "cache = GCache(GCacheConfig())\n"
        "@cache.cached(key_type='user_id', id_arg='user_id', use_case='DevMode')\n"
        "def get(user_id): return user_id\n"
        "get('1'); get('2')\n"
        "cache.close()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "GCACHE_DEBUG"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    out = subprocess.run(
        [sys.executable, "-X", "dev", "-c", program],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    ).stdout
    assert out.count("outside gcache.enable()") == 1
    assert "WARNING gcache: cached function get" in out


def test_tell_mistakes_must_be_a_bool_or_none() -> None:
    with pytest.raises(ConfigError, match="tell_mistakes"):
        GCacheConfig(tell_mistakes="yes")  # type: ignore[arg-type]
