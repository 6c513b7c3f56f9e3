"""Typed keys (``GCacheConfig(typed_keys=...)``, issue 19): ``1`` and ``"1"``, ``None`` and
``"None"``, ``True`` and ``"True"`` get different entries, alike in calls, ``cached_many``,
direct access and ``invalidate()``; without it every key is what it was, byte for byte.

Real Redis; sync and async functions, tracked and untracked use cases.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import pytest
import redis

from gcache import CacheLayer, ConfigError, GCache, GCacheConfig, GCacheKey, GCacheKeyConfig
from gcache.urns import typed_part

pytestmark = pytest.mark.redis

BOTH = GCacheKeyConfig(
    ttl_sec={CacheLayer.LOCAL: 60, CacheLayer.REMOTE: 60},
    ramp={CacheLayer.LOCAL: 100, CacheLayer.REMOTE: 100},
)
CONFIG: dict[str, Any] = {"default_config": BOTH}


@pytest.fixture(params=[False, True], ids=["untracked", "tracked"])
def tracked(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def test_a_typed_part_names_the_type_of_anything_but_a_string() -> None:
    assert [typed_part(v) for v in (1, "1", None, "None", True, "True", 1.5, (1, "1"))] == [
        "!int!1", "1", "!NoneType!None", "None", "!bool!True", "True", "!float!1.5", "!tuple!(1, '1')",
    ]  # fmt: skip
    assert typed_part("!int!1") == "!!int!1"  # a string spelled like a typed part stays apart
    assert typed_part(uuid.UUID(int=1)) == "!uuid.UUID!00000000-0000-0000-0000-000000000001"
    values = [1, "1", "!int!1", "!!int!1", "!", "!!", "", None, "None", True, "True", 1.0, (1,), "(1,)"]
    assert len({typed_part(v) for v in values}) == len(values)


def test_typed_keys_takes_a_bool_or_key_types() -> None:
    assert GCacheConfig(typed_keys={"user_id"}).typed_keys == frozenset({"user_id"})
    assert GCacheConfig(typed_keys={"user_id"}).typed_for("user_id")
    assert not GCacheConfig(typed_keys={"user_id"}).typed_for("org_id")
    assert GCacheConfig(typed_keys=True).typed_for("org_id")
    for bad in ("user_id", [], [""], 1):
        with pytest.raises(ConfigError, match="typed_keys"):
            GCacheConfig(typed_keys=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="typed_keys"):
        GCacheConfig(typed_keys=True, legacy_compat=True)


def cached_function(cache: GCache, is_async: bool, tracked: bool, runs: list[Any]) -> Callable[..., Any]:
    decorate = cache.cached(
        key_type="user_id", id_arg="user_id", use_case="Typed", track_for_invalidation=tracked, **CONFIG
    )
    if is_async:

        async def aget(user_id: Any, flag: Any = None) -> str:
            runs.append((user_id, flag))
            return f"{type(user_id).__name__}:{user_id}:{flag!r}"

        return decorate(aget)

    def get(user_id: Any, flag: Any = None) -> str:
        runs.append((user_id, flag))
        return f"{type(user_id).__name__}:{user_id}:{flag!r}"

    return decorate(get)


async def call(function: Callable[..., Any], is_async: bool, *args: Any) -> Any:
    return await function(*args) if is_async else await asyncio.to_thread(function, *args)


def value_keys(client: redis.Redis) -> list[str]:
    keys: list[bytes] = client.keys("*")  # type: ignore[assignment]
    return sorted(k.decode() for k in keys if not k.endswith(b"#watermark"))


async def test_default_keys_are_unchanged_byte_for_byte(
    make_cache: Callable[..., GCache], redis_client: redis.Redis, is_async: bool, tracked: bool
) -> None:
    cache = make_cache()
    runs: list[Any] = []
    get = cached_function(cache, is_async, tracked, runs)
    with cache.enable():
        assert await call(get, is_async, 1) == "int:1:None"
        assert await call(get, is_async, "1") == "int:1:None"  # str(): one entry for both
        assert await call(get, is_async, 1, True) == "int:1:True"
        assert await call(get, is_async, 1, "True") == "int:1:True"
    assert len(runs) == 2
    assert value_keys(redis_client) == [
        "{urn:gcache:user_id:1}?flag=None#Typed",
        "{urn:gcache:user_id:1}?flag=True#Typed",
    ]


async def test_typed_keys_give_1_and_str_1_their_own_entries(
    make_cache: Callable[..., GCache], redis_client: redis.Redis, is_async: bool, tracked: bool
) -> None:
    cache = make_cache(typed_keys=True)
    runs: list[Any] = []
    get = cached_function(cache, is_async, tracked, runs)
    with cache.enable():
        for _ in range(2):  # the second round is served from the cache
            assert await call(get, is_async, 1) == "int:1:None"
            assert await call(get, is_async, "1") == "str:1:None"
            assert await call(get, is_async, None) == "NoneType:None:None"
            assert await call(get, is_async, "None") == "str:None:None"
            assert await call(get, is_async, "1", True) == "str:1:True"
            assert await call(get, is_async, "1", "True") == "str:1:'True'"
    assert len(runs) == 6
    assert value_keys(redis_client) == [
        "{urn:gcache:user_id:!NoneType!None}?flag=!NoneType!None#Typed",
        "{urn:gcache:user_id:!int!1}?flag=!NoneType!None#Typed",
        "{urn:gcache:user_id:1}?flag=!NoneType!None#Typed",
        "{urn:gcache:user_id:1}?flag=!bool!True#Typed",
        "{urn:gcache:user_id:1}?flag=True#Typed",
        "{urn:gcache:user_id:None}?flag=!NoneType!None#Typed",
    ]


async def test_typed_keys_of_some_key_types_only(
    make_cache: Callable[..., GCache], redis_client: redis.Redis, is_async: bool
) -> None:
    cache = make_cache(typed_keys={"org_id"})
    runs: list[Any] = []
    get = cached_function(cache, is_async, False, runs)  # user_id: not typed
    with cache.enable():
        assert await call(get, is_async, 1) == "int:1:None"
        assert await call(get, is_async, "1") == "int:1:None"
    assert value_keys(redis_client) == ["{urn:gcache:user_id:1}?flag=None#Typed"]


async def test_invalidating_an_int_id_reaches_the_int_keyed_entry_only(
    make_cache: Callable[..., GCache], redis_client: redis.Redis, is_async: bool
) -> None:
    cache = make_cache(typed_keys=True)
    runs: list[Any] = []
    get = cached_function(cache, is_async, True, runs)
    with cache.enable():
        await call(get, is_async, 1)
        await call(get, is_async, "1")
        if is_async:
            await cache.ainvalidate("user_id", 1)
        else:
            await asyncio.to_thread(cache.invalidate, "user_id", 1)
        assert redis_client.exists("{urn:gcache:user_id:!int!1}#watermark")
        assert redis_client.hget("{urn:gcache:user_id:1}#watermark", "w") is not None  # its fence, not raised
        runs.clear()
        assert await call(get, is_async, 1) == "int:1:None"
        assert await call(get, is_async, "1") == "str:1:None"
    assert runs == [(1, None)]  # the int-keyed entry was invalidated, the str-keyed one served


async def test_direct_access_keys_as_calls_do(
    make_cache: Callable[..., GCache], redis_client: redis.Redis, is_async: bool
) -> None:
    cache = make_cache(typed_keys=True)

    def key(id: Any) -> GCacheKey:
        given: Any = [("flag", None)]  # values as given, typed as the id is (GCacheKey says str)
        return GCacheKey("user_id", id, "Direct", given, True, BOTH)

    async def put(id: Any, value: str) -> None:
        await cache.aput(key(id), value) if is_async else await asyncio.to_thread(cache.put, key(id), value)

    async def get(id: Any) -> Any:
        if is_async:

            async def afallback() -> str:
                return "computed"

            return await cache.aget(key(id), afallback)
        return await asyncio.to_thread(cache.get, key(id), lambda: "computed")

    async def delete(id: Any) -> bool:
        return await cache.adelete(key(id)) if is_async else await asyncio.to_thread(cache.delete, key(id))

    with cache.enable():
        await put(1, "int one")
        await put("1", "str one")
        assert value_keys(redis_client) == [
            "{urn:gcache:user_id:!int!1}?flag=!NoneType!None#Direct",
            "{urn:gcache:user_id:1}?flag=!NoneType!None#Direct",
        ]
        assert (await get(1), await get("1")) == ("int one", "str one")
        assert await delete(1)
        assert value_keys(redis_client) == ["{urn:gcache:user_id:1}?flag=!NoneType!None#Direct"]
        assert (await get(1), await get("1")) == ("computed", "str one")


async def test_cached_many_keys_each_id_as_a_single_call_does(
    make_cache: Callable[..., GCache], redis_client: redis.Redis, is_async: bool, tracked: bool
) -> None:
    cache = make_cache(typed_keys=True)
    asked: list[list[Any]] = []

    def load(ids: Iterable[Any]) -> dict[Any, str]:
        ids = list(ids)
        asked.append(ids)
        return {i: f"{type(i).__name__}:{i}" for i in ids}

    decorate = cache.cached_many(
        key_type="user_id", ids_arg="ids", use_case="Many", track_for_invalidation=tracked, **CONFIG
    )
    if is_async:

        async def aload(ids: Iterable[Any]) -> dict[Any, str]:
            return load(ids)

        many: Callable[..., Any] = decorate(aload)
    else:
        many = decorate(load)

    shared = {"key_type": "user_id", "use_case": "Many", "track_for_invalidation": tracked, **CONFIG}

    @cache.cached(id_arg="user_id", **shared)
    def single(user_id: Any) -> str:
        return f"single:{user_id}"

    with cache.enable():
        first = await call(many, is_async, [1, "1", None, "None"])
        second = await call(many, is_async, ["1", 1])
        assert single(1) == "int:1"  # the batch's entry of the int id, read by a single call
    assert first == {1: "int:1", "1": "str:1", None: "NoneType:None", "None": "str:None"}
    assert second == {"1": "str:1", 1: "int:1"}
    assert asked == [[1, "1", None, "None"]]
    assert value_keys(redis_client) == [
        "{urn:gcache:user_id:!NoneType!None}#Many",
        "{urn:gcache:user_id:!int!1}#Many",
        "{urn:gcache:user_id:1}#Many",
        "{urn:gcache:user_id:None}#Many",
    ]
