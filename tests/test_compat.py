"""Code written for the original gcache (rungalileo/gcache 2.0.5) runs unchanged (issue 15): its
exception names and import paths, ``except`` clauses, ``@enable()``, ``CacheLayer.NOOP``, ports
given as text. The deliberate differences are listed in the README's compatibility section."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
import redis

import gcache.exceptions as original_exceptions
from gcache import CacheLayer, GCache, GCacheConfig, GCacheKeyConfig, RedisConfig
from gcache.config import GCacheKey
from gcache.errors import ConfigError, IdArgError, RemoteError
from gcache.exceptions import (
    FuncArgDoesNotExist,
    GCacheError,
    GCacheKeyConstructionError,
    KeyArgDoesNotExist,
    RedisConfigConflict,
    UseCaseIsAlreadyRegistered,
    UseCaseNameIsReserved,
)
from tests.behaviour.test_fail_open import FAST, refused_url
from tests.test_gcache import Maker, call, twin

LOCAL_ONLY = GCacheKeyConfig(ttl_sec={CacheLayer.LOCAL: 60}, ramp={CacheLayer.LOCAL: 100})

ORIGINAL_NAMES = (
    "GCacheError",
    "ReentrantSyncFunctionDetected",
    "GCacheKeyConstructionError",
    "GCacheAlreadyInstantiated",
    "KeyArgDoesNotExist",
    "FuncArgDoesNotExist",
    "GCacheDisabled",
    "RedisConfigConflict",
    "UseCaseIsAlreadyRegistered",
    "MissingKeyConfig",
    "UseCaseNameIsReserved",
)


def test_every_exception_name_of_the_original_imports_from_gcache_exceptions() -> None:
    for name in ORIGINAL_NAMES:
        error = getattr(original_exceptions, name)
        assert issubclass(error, GCacheError), name
    assert GCacheKey.__module__ == "gcache.config"  # `from gcache.config import GCacheKey` works


def test_a_bad_id_arg_is_caught_by_the_original_names_and_by_ours() -> None:
    cache = GCache()

    def f(user_id: str) -> str:
        return user_id

    for catch in (KeyArgDoesNotExist, GCacheKeyConstructionError, IdArgError, ConfigError, ValueError):
        with pytest.raises(catch, match="id_arg 'uid' is not a parameter"):
            cache.cached(key_type="user_id", id_arg="uid", use_case=f"Bad{catch.__name__}")(f)
    cache.close()


def test_a_bad_ignore_args_or_arg_adapters_name_is_func_arg_does_not_exist() -> None:
    cache = GCache()

    def f(user_id: str, page: int) -> str:
        return user_id

    with pytest.raises(FuncArgDoesNotExist, match="ignore_args name 'pg'") as ignored:
        cache.cached(key_type="user_id", id_arg="user_id", use_case="I", ignore_args=["pg"])(f)
    assert not isinstance(ignored.value, KeyArgDoesNotExist)  # siblings, as in the original
    with pytest.raises(FuncArgDoesNotExist, match="arg_adapters name 'pg'"):
        cache.cached(key_type="user_id", id_arg="user_id", use_case="A", arg_adapters={"pg": str})(f)
    cache.close()


def test_the_original_aliases_are_our_classes() -> None:
    cache = GCache()

    def f(user_id: str) -> str:
        return user_id

    def g(user_id: str) -> str:
        return user_id

    cache.cached(key_type="user_id", id_arg="user_id", use_case="Once")(f)
    with pytest.raises(UseCaseIsAlreadyRegistered):  # another function (f again would replace it)
        cache.cached(key_type="user_id", id_arg="user_id", use_case="Once")(g)
    with pytest.raises(UseCaseNameIsReserved):
        cache.cached(key_type="user_id", id_arg="user_id", use_case="watermark")(f)
    with pytest.raises(RedisConfigConflict):
        GCacheConfig(redis_config=RedisConfig(), redis_client_factory=lambda: None)
    cache.close()


async def test_except_redis_error_written_for_the_original_catches_a_failed_invalidation(
    make_cache: Maker, is_async: bool
) -> None:
    cache = make_cache(
        redis_config=RedisConfig(url=refused_url(), redis_py_options=dict(FAST)), start_bus=False
    )

    async def invalidate() -> None:
        if is_async:
            await cache.ainvalidate("user_id", "1")
        else:
            cache.invalidate("user_id", "1")

    async def flush() -> None:
        if is_async:
            await cache.aflushall()
        else:
            cache.flushall()

    for operation in (invalidate, flush):
        caught: BaseException | None = None
        try:  # as code written for the original catches it
            await operation()
        except redis.RedisError as exc:
            caught = exc
        assert isinstance(caught, RemoteError)
        assert isinstance(caught.cause, redis.ConnectionError)


async def test_enable_decorates_sync_and_async_functions(make_cache: Maker, is_async: bool) -> None:
    cache = make_cache()
    calls: list[str] = []

    def body(user_id: str) -> str:
        calls.append(user_id)
        return f"user {user_id}"

    cached = cache.cached(
        key_type="user_id", id_arg="user_id", use_case="Decorated", default_config=LOCAL_ONLY
    )(twin("async" if is_async else "sync", body))

    def handler(user_id: str) -> Any:
        assert cache.is_enabled
        return cached(user_id)

    async def ahandler(user_id: str) -> Any:
        assert cache.is_enabled
        return await cached(user_id)

    enabled_handler = cache.enable()(ahandler if is_async else handler)
    assert enabled_handler.__name__ == ("ahandler" if is_async else "handler")

    assert await call(enabled_handler, "1") == "user 1"
    assert await call(enabled_handler, "1") == "user 1"  # cached: the decorator enabled it
    assert not cache.is_enabled  # and restored it after each call
    assert await call(cached, "1") == "user 1"  # outside: runs the function
    assert calls == ["1", "1"]


def test_cache_layer_noop_exists_and_configs_naming_it_load() -> None:
    assert CacheLayer.NOOP.value == "noop"
    config = GCacheKeyConfig(
        ttl_sec={CacheLayer.NOOP: 5, CacheLayer.LOCAL: 10}, ramp={CacheLayer.NOOP: 100, CacheLayer.LOCAL: 100}
    )
    assert config.ttl_sec == {CacheLayer.LOCAL: 10}
    assert config.ramp == {CacheLayer.LOCAL: 100}


def test_ports_and_databases_given_as_text_are_numbers() -> None:
    config = RedisConfig(host="cache.internal", port="6380", db=" 2 ")  # type: ignore[arg-type]

    assert config.port == 6380
    assert config.db == 2
    assert config.url == "redis://cache.internal:6380/2"
    with pytest.raises(ConfigError, match=r"RedisConfig\.port must be an integer from 1 to 65535, got 'abc'"):
        RedisConfig(port="abc")  # type: ignore[arg-type]


# -- GCacheKeyConfig: the original's pydantic spellings and coercions --------------------------


def test_numbers_given_as_text_are_taken_as_the_original_took_them() -> None:
    config = GCacheKeyConfig(
        ttl_sec={"LOCAL": "60", CacheLayer.REMOTE: " 300 "},  # type: ignore[dict-item]
        ramp={"local": "100", "remote": "12.5"},  # type: ignore[dict-item]
        lock_sec="2",  # type: ignore[arg-type]
    )
    assert config.ttl_sec == {CacheLayer.LOCAL: 60, CacheLayer.REMOTE: 300}
    assert config.ramp == {CacheLayer.LOCAL: 100, CacheLayer.REMOTE: 12.5}
    assert config.lock_sec == 2
    with pytest.raises(ConfigError, match=r"ttl_sec\[local\] must be a finite number, got 'sixty'"):
        GCacheKeyConfig(ttl_sec={"local": "sixty"}, ramp={})  # type: ignore[dict-item]


def test_model_validate_dump_and_copy_work_as_pydantic_s() -> None:
    data = {"ttl_sec": {"LOCAL": 10, "REMOTE": "60"}, "ramp": {"LOCAL": 100, "REMOTE": 50}}
    config = GCacheKeyConfig.model_validate(data)

    assert config == GCacheKeyConfig(
        ttl_sec={CacheLayer.LOCAL: 10, CacheLayer.REMOTE: 60},
        ramp={CacheLayer.LOCAL: 100, CacheLayer.REMOTE: 50},
    )
    assert GCacheKeyConfig.model_validate(config) == config
    assert GCacheKeyConfig.model_validate(config) is not config
    dumped = config.model_dump(mode="json")
    assert dumped == {"ttl_sec": {"local": 10, "remote": 60}, "ramp": {"local": 100, "remote": 50}}
    assert config.model_dump(include={"ramp"}) == {"ramp": {"local": 100, "remote": 50}}
    assert config.model_dump(exclude={"ramp"}) == {"ttl_sec": {"local": 10, "remote": 60}}
    assert json.loads(config.model_dump_json(indent=2)) == dumped
    assert GCacheKeyConfig.model_validate_json(config.model_dump_json()) == config

    copy = config.model_copy(update={"ramp": {"LOCAL": 0}})
    assert copy.ramp == {CacheLayer.LOCAL: 0}  # the update is checked and converted
    assert config.ramp[CacheLayer.REMOTE] == 50  # the original untouched
    copy.ttl_sec[CacheLayer.LOCAL] = 1
    assert config.ttl_sec[CacheLayer.LOCAL] == 10  # dicts are copied
    with pytest.raises(ConfigError, match="unknown fields"):
        config.model_copy(update={"ttl": 1})
    with pytest.raises(ConfigError, match=r"ramp\[local\] must be between 0 and 100"):
        config.model_copy(update={"ramp": {"LOCAL": 500}})


def test_load_configs_reads_the_original_s_stored_schema_of_json_strings() -> None:
    one = json.dumps({"ttl_sec": {"LOCAL": 60}, "ramp": {"LOCAL": 100}})
    stored = json.dumps({"GetUser": one, "GetOrders": {"prod": one, "dev": {"ttl_sec": {}, "ramp": {}}}})

    configs = GCacheKeyConfig.load_configs(stored)

    expected = GCacheKeyConfig(ttl_sec={CacheLayer.LOCAL: 60}, ramp={CacheLayer.LOCAL: 100})
    assert configs["GetUser"] == expected
    orders = configs["GetOrders"]
    assert isinstance(orders, dict)
    assert orders["prod"] == expected
    assert orders["dev"] == GCacheKeyConfig()
    assert GCacheKeyConfig.load_configs(GCacheKeyConfig.dump_configs(configs)) == configs


def test_keys_naming_one_entry_are_equal_whatever_their_tracking_config_or_serializer() -> None:
    plain = GCacheKey("user_id", "1", "GetUser", args=[("page", "2")])
    other = GCacheKey(
        "user_id", "1", "GetUser", args=[("page", "2")], invalidation_tracking=True, default_config=LOCAL_ONLY
    )

    assert plain == other
    assert hash(plain) == hash(other)
    assert len({plain, other}) == 1
    assert plain != GCacheKey("user_id", "1", "GetUser", args=[("page", "3")])
    assert plain != GCacheKey("user_id", "1", "GetUser", args=[("page", "2")], urn_prefix="other")
    assert plain != "{urn:gcache:user_id:1}?page=2#GetUser"


async def test_a_sync_cached_function_called_inside_an_event_loop_is_told(
    make_cache: Maker, caplog: pytest.LogCaptureFixture
) -> None:
    cache = make_cache(signing_keys=["compat-signing-key-0123456789"])
    calls: list[str] = []

    @cache.cached(key_type="user_id", id_arg="user_id", use_case="SyncInLoop", default_config=LOCAL_ONLY)
    def get(user_id: str) -> str:
        calls.append(user_id)
        return user_id

    told = "called in an async context"
    with caplog.at_level(logging.WARNING, logger="gcache"), cache.enable():
        assert await asyncio.to_thread(get, "0") == "0"  # a thread without a loop: nothing to tell
        assert not [r for r in caplog.records if told in r.getMessage()]
        for i in range(5):
            assert get(str(i)) == str(i)  # on the loop: blocks it
        assert get("1") == "1"  # a LOCAL hit blocks nothing
    lines = [r.getMessage() for r in caplog.records if told in r.getMessage()]
    assert len(lines) == 1  # rate-limited
    assert "'SyncInLoop'" in lines[0]
    assert "asyncio.to_thread" in lines[0]
    assert calls == ["0", "1", "2", "3", "4"]


def test_a_stored_config_s_unknown_fields_are_ignored_and_told_once(caplog: pytest.LogCaptureFixture) -> None:
    """As the original's pydantic model: a stored config with a field gcache does not know loads
    (its known fields kept), and the names are told once, as likely typos."""
    stored = {"ttl_sec": {"REMOTE": "60"}, "ramp": {"REMOTE": 100}, "use_case": "x", "tll_sec": 5}
    with caplog.at_level(logging.WARNING, logger="gcache"):
        first = GCacheKeyConfig.loads(json.dumps(stored))
        again = GCacheKeyConfig.model_validate(stored)
    assert first == again == GCacheKeyConfig(ttl_sec={CacheLayer.REMOTE: 60}, ramp={CacheLayer.REMOTE: 100})
    told = [r.getMessage() for r in caplog.records if "does not know" in r.getMessage()]
    assert len(told) == 1
    assert "tll_sec, use_case" in told[0]
