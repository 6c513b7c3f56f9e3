"""``@gcache.invalidates``: a write function that invalidates what it changed (issue 16), on a
real Redis, for sync and async write functions; a second GCache stands for another process."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry

from gcache import CacheLayer, GCache, GCacheKeyConfig, RedisConfig
from gcache.errors import ConfigError, FutureBufferTooLargeError, KeyArgDoesNotExist, RemoteError
from tests.behaviour.test_fail_open import FAST, refused_url
from tests.conftest import sample, wait_until
from tests.test_gcache import Maker, call, twin

BOTH = GCacheKeyConfig.enabled(60)
REMOTE_ONLY = GCacheKeyConfig(ttl_sec={CacheLayer.REMOTE: 60}, ramp={CacheLayer.REMOTE: 100})


class Users:
    """A source of truth, a reader cached in one process and a writer in another."""

    def __init__(
        self,
        reader: GCache,
        writer: GCache,
        is_async: bool,
        config: GCacheKeyConfig = REMOTE_ONLY,  # exact across processes, with no bus lag
        **invalidates: Any,
    ) -> None:
        self.names: dict[str, str] = {"1": "ada", "2": "grace", "3": "alan"}
        self.reads = 0
        mode = "async" if is_async else "sync"

        def get(user_id: str) -> str:
            self.reads += 1
            return self.names[user_id]

        def rename(user_id: str, name: str) -> str:
            if name == "":
                raise ValueError("a name is required")
            self.names[user_id] = name
            return name

        def rename_all(user_ids: list[str], suffix: str = "!") -> None:
            for user_id in user_ids:
                self.names[user_id] += suffix

        self.get = reader.cached(
            key_type="user_id", id_arg="user_id", use_case="GetUser", default_config=config,
            track_for_invalidation=True,
        )(twin(mode, get))  # fmt: skip
        self.rename = writer.invalidates("user_id", "user_id", **invalidates)(twin(mode, rename))
        self.rename_all = writer.invalidates("user_id", ids=lambda user_ids, suffix="!": user_ids)(
            twin(mode, rename_all)
        )


async def test_a_write_invalidates_its_entity_in_every_process(make_cache: Maker, is_async: bool) -> None:
    reader_registry = CollectorRegistry()
    reader = make_cache(metrics_registry=reader_registry)
    writer = make_cache(metrics_registry=CollectorRegistry())
    users = Users(reader, writer, is_async, config=BOTH)
    with reader.enable():
        assert await call(users.get, "1") == "ada"
        assert await call(users.get, "1") == "ada"  # LOCAL
        assert users.reads == 1

        assert await call(users.rename, "1", "ada lovelace") == "ada lovelace"  # the function's result

        wait_until(  # the reader's LOCAL copy goes when the bus brings the invalidation
            lambda: sample(reader_registry, "gcache_bus_message_counter_total", direction="received") >= 1,
            what="the bus",
        )
        assert await call(users.get, "1") == "ada lovelace"
        assert await call(users.get, "1") == "ada lovelace"
        assert users.reads == 2


async def test_a_write_is_seen_at_once_through_redis(make_cache: Maker, is_async: bool) -> None:
    reader, writer = make_cache(metrics_registry=CollectorRegistry()), make_cache()
    users = Users(reader, writer, is_async)  # REMOTE only: exact the moment the write returns
    with reader.enable():
        assert await call(users.get, "1") == "ada"
        assert await call(users.get, "1") == "ada"
        await call(users.rename, "1", "countess")
        assert await call(users.get, "1") == "countess"
        assert await call(users.get, "2") == "grace"
    assert users.reads == 3


async def test_a_write_that_raises_invalidates_nothing_and_its_error_reaches_the_caller(
    make_cache: Maker, redis_client: redis.Redis, is_async: bool
) -> None:
    reader, writer = make_cache(metrics_registry=CollectorRegistry()), make_cache()
    users = Users(reader, writer, is_async)
    with reader.enable():
        await call(users.get, "1")
        with pytest.raises(ValueError, match="a name is required"):
            await call(users.rename, "1", "")
        assert await call(users.get, "1") == "ada"
        assert users.reads == 1  # still cached: nothing was invalidated
    assert not redis_client.keys("*#watermark") or all(
        int(redis_client.hget(k, "w") or 0) == 0 for k in redis_client.keys("*#watermark")
    )


async def test_ids_invalidates_every_entity_a_write_changed(make_cache: Maker, is_async: bool) -> None:
    reader, writer = make_cache(metrics_registry=CollectorRegistry()), make_cache()
    users = Users(reader, writer, is_async)
    with reader.enable():
        for user_id in ("1", "2", "3"):
            await call(users.get, user_id)
        await call(users.rename_all, ["1", "3"], suffix="?")
        assert [await call(users.get, u) for u in ("1", "2", "3")] == ["ada?", "grace", "alan?"]
    assert users.reads == 5  # 1 and 3 again; 2 served from the cache


async def test_the_future_buffer_travels_with_the_invalidation(make_cache: Maker, is_async: bool) -> None:
    reader, writer = make_cache(metrics_registry=CollectorRegistry()), make_cache()
    users = Users(reader, writer, is_async, future_buffer_ms=300)
    with reader.enable():
        await call(users.get, "1")
        await call(users.get, "1")
        assert users.reads == 1
        await call(users.rename, "1", "lagging")
        await call(users.get, "1")
        await call(users.get, "1")  # inside the buffer: computed again, not stored
        assert users.reads == 3
        await asyncio.sleep(0.35)
        await call(users.get, "1")
        await call(users.get, "1")  # stored once the buffer is over
        assert users.reads == 4


def test_bad_options_are_told_at_decoration(make_cache: Maker) -> None:
    cache = make_cache(max_future_buffer_ms=1000)

    def write(user_id: str) -> None:
        return None

    with pytest.raises(KeyArgDoesNotExist, match="id_arg 'uid' is not a parameter of"):
        cache.invalidates("user_id", "uid")(write)
    with pytest.raises(ConfigError, match=r"give id_arg \(one entity\) or ids"):
        cache.invalidates("user_id")(write)
    with pytest.raises(ConfigError, match="not both"):
        cache.invalidates("user_id", "user_id", ids=lambda user_id: [user_id])(write)
    with pytest.raises(FutureBufferTooLargeError):
        cache.invalidates("user_id", "user_id", future_buffer_ms=5000)
    with pytest.raises(ConfigError, match="key_type must be a non-empty string"):
        cache.invalidates("", "user_id")


async def test_a_write_whose_invalidation_redis_refuses_raises_remote_error(
    make_cache: Maker, is_async: bool
) -> None:
    cache = make_cache(
        redis_config=RedisConfig(url=refused_url(), redis_py_options=dict(FAST)), start_bus=False
    )
    written: list[str] = []

    def write(user_id: str) -> str:
        written.append(user_id)
        return "done"

    decorated = cache.invalidates("user_id", ("user", lambda user: user["id"]))(
        twin("async" if is_async else "sync", lambda user: write(user["id"]))
    )
    with pytest.raises(RemoteError, match="redis invalidate failed"):
        await call(decorated, {"id": "7"})
    assert written == ["7"]  # the write happened; the error says its invalidation did not


def test_the_decorated_function_keeps_its_name_and_signature(make_cache: Maker) -> None:
    cache = make_cache()

    async def save_user(user_id: str, name: str = "x") -> int:
        """Saves."""
        return 1

    decorated = cache.invalidates("user_id", "user_id")(save_user)
    assert decorated.__name__ == "save_user"
    assert decorated.__doc__ == "Saves."
    import inspect

    assert str(inspect.signature(decorated)) == "(user_id: 'str', name: 'str' = 'x') -> 'int'"
    assert inspect.iscoroutinefunction(decorated)
