"""A config provider that fails (raises, or answers something else than a config) does not turn
caching off: the call is served with the provider's last good answer for the use case, else the
decorator's ``default_config``, and only with neither is it uncached (as before).

Each failure is counted in ``gcache_error_counter{layer="config"}`` and logged rate-limited; the
``disabled{reason="config_error"}`` count stays for the calls that do go uncached.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from gcache import GCacheKey, GCacheKeyConfig
from gcache.metrics import LAYER_CONFIG
from tests.conftest import sample
from tests.test_gcache import ENABLED, LOCAL_ONLY, Maker, call, twin


class Provider:
    """Answers ``answer`` until told to fail, then raises (or answers ``bad``)."""

    def __init__(self, answer: GCacheKeyConfig | None) -> None:
        self.answer = answer
        self.failing = False
        self.bad: Any = None  # with failing, answer this instead of raising (when not None)
        self.asked = 0

    def __call__(self, key: GCacheKey) -> GCacheKeyConfig | None:
        self.asked += 1
        if self.failing:
            if self.bad is not None:
                return self.bad  # type: ignore[no-any-return]
            raise RuntimeError("config service down")
        return self.answer


def decorated(
    cache: Any, is_async: bool, many: bool, default: GCacheKeyConfig | None, calls: list[str]
) -> Any:
    mode = "async" if is_async else "sync"
    if many:

        def users(user_ids: list[str]) -> dict[str, str]:
            calls.extend(user_ids)
            return {uid: f"user {uid}" for uid in user_ids}

        fn = cache.cached_many(
            key_type="user_id", ids_arg="user_ids", use_case="Fallback", default_config=default
        )(twin(mode, users))

        async def one(uid: str) -> str:
            return (await call(fn, [uid]))[uid]  # type: ignore[no-any-return]

        return one

    def user(user_id: str) -> str:
        calls.append(user_id)
        return f"user {user_id}"

    fn = cache.cached(key_type="user_id", id_arg="user_id", use_case="Fallback", default_config=default)(
        twin(mode, user)
    )

    async def single(uid: str) -> str:
        return await call(fn, uid)  # type: ignore[no-any-return]

    return single


def config_errors(registry: CollectorRegistry) -> float:
    return sample(registry, "gcache_error_counter_total", use_case="Fallback", layer=LAYER_CONFIG)


def disabled_config_error(registry: CollectorRegistry) -> float:
    return sample(registry, "gcache_disabled_counter_total", use_case="Fallback", reason="config_error")


@pytest.mark.parametrize("many", [False, True], ids=["cached", "cached_many"])
@pytest.mark.parametrize("failure", ["raises", "bad-answer"])
async def test_a_failing_provider_serves_its_last_good_answer(
    is_async: bool,
    many: bool,
    failure: str,
    make_cache: Maker,
    registry: CollectorRegistry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider = Provider(ENABLED)
    cache = make_cache(cache_config_provider=provider)
    calls: list[str] = []
    get = decorated(cache, is_async, many, None, calls)  # no default_config: only the last answer
    with cache.enable():
        assert await get("1") == "user 1"
        provider.failing = True
        if failure == "bad-answer":
            provider.bad = {"ttl_sec": {"local": 60}}  # a dict, not a GCacheKeyConfig
        with caplog.at_level(logging.WARNING, logger="gcache"):
            assert await get("1") == "user 1"  # still a hit
            assert await get("2") == "user 2"  # a miss, cached under the last good answer
            assert await get("2") == "user 2"
    assert calls == ["1", "2"]
    assert provider.asked == 4  # a failure is never reused: the provider is asked on every call
    assert config_errors(registry) == 3
    assert disabled_config_error(registry) == 0
    lines = [r.getMessage() for r in caplog.records if "config provider failed" in r.getMessage()]
    assert len(lines) == 1  # rate-limited
    assert "use case 'Fallback'" in lines[0]
    assert "served with its last good answer" in lines[0]


@pytest.mark.parametrize("many", [False, True], ids=["cached", "cached_many"])
@pytest.mark.parametrize("default", [LOCAL_ONLY, None], ids=["default_config", "no-default"])
async def test_a_failing_provider_with_no_earlier_answer_serves_default_config_else_uncached(
    is_async: bool,
    many: bool,
    default: GCacheKeyConfig | None,
    make_cache: Maker,
    registry: CollectorRegistry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider = Provider(ENABLED)
    provider.failing = True
    cache = make_cache(cache_config_provider=provider)
    calls: list[str] = []
    get = decorated(cache, is_async, many, default, calls)
    with caplog.at_level(logging.WARNING, logger="gcache"), cache.enable():
        assert [await get("1") for _ in range(3)] == ["user 1"] * 3
    assert config_errors(registry) == 3
    served = [r.getMessage() for r in caplog.records if "config provider failed" in r.getMessage()]
    if default is not None:
        assert calls == ["1"]
        assert disabled_config_error(registry) == 0
        assert "served with default_config" in served[0]
    else:  # uncached, as before: counted for each layer
        assert calls == ["1"] * 3
        for layer in ("LOCAL", "REMOTE"):
            assert sample(registry, "gcache_disabled_counter_total", layer=layer, reason="config_error") == 3
        assert "served uncached" in served[0]


async def test_a_provider_that_answered_none_last_falls_back_to_default_config(
    is_async: bool, make_cache: Maker, registry: CollectorRegistry
) -> None:
    """None is an answer ("use default_config"): a later failure does not revive an older one."""
    provider = Provider(ENABLED)
    cache = make_cache(cache_config_provider=provider)
    calls: list[str] = []
    get = decorated(cache, is_async, False, None, calls)
    with cache.enable():
        assert await get("1") == "user 1"
        provider.answer = None  # no default_config: uncached
        assert await get("2") == "user 2"
        provider.failing = True
        assert await get("2") == "user 2"
        assert await get("3") == "user 3"
    assert calls == ["1", "2", "2", "3"]
    assert disabled_config_error(registry) == 4  # two failing calls uncached, LOCAL and REMOTE each
