"""Sticky ramp, ``GCacheKeyConfig(ramp_by="key")``, on a real Redis: a ramp takes the same share
of keys on every call and in every process, the share within binomial bounds, ramps nesting
across ramps and layers, 0 and 100 exact, direct access, metrics, and the config option itself.

Which keys a ramp should take is known in advance: ``key_share`` of the value key, which the
read-through must follow exactly; the bounds check that the hash spreads keys as a ramp promises.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry

from gcache import CacheLayer, ConfigError, GCache, GCacheKey, GCacheKeyConfig
from gcache.readthrough import decisions
from gcache.readthrough.decisions import key_share
from tests.conftest import sample

LOCAL, REMOTE = CacheLayer.LOCAL, CacheLayer.REMOTE
KEYS = [f"u{i}" for i in range(2000)]
USE_CASE = "Sticky"
Maker = Callable[..., GCache]
ROOT = Path(__file__).resolve().parents[2]


def by_key(local: float | None = None, remote: float | None = None) -> GCacheKeyConfig:
    """A sticky config: TTL 60 in each layer given a ramp."""
    ramp = {layer: r for layer, r in ((LOCAL, local), (REMOTE, remote)) if r is not None}
    return GCacheKeyConfig(ttl_sec=dict.fromkeys(ramp, 60.0), ramp=ramp, ramp_by="key")


def urn(uid: str, use_case: str = USE_CASE) -> str:
    return GCacheKey("user_id", uid, use_case).urn


def expected(ramp: float, keys: list[str] = KEYS) -> set[str]:
    return {k for k in keys if key_share(urn(k)) < ramp}


def binomial_bounds(n: int, p: float, alpha: float = 1e-6) -> tuple[int, int]:
    """The narrowest symmetric-in-tails [lo, hi] outside which Binomial(n, p) falls with
    probability below ``alpha`` (each tail below alpha / 2), from the exact distribution."""

    def pmf(k: int) -> float:
        return math.exp(
            math.lgamma(n + 1)
            - math.lgamma(k + 1)
            - math.lgamma(n - k + 1)
            + k * math.log(p)
            + (n - k) * math.log(1 - p)
        )

    lo, tail = 0, 0.0
    while tail + pmf(lo) < alpha / 2:
        tail += pmf(lo)
        lo += 1
    hi, tail = n, 0.0
    while tail + pmf(hi) < alpha / 2:
        tail += pmf(hi)
        hi -= 1
    return lo, hi


async def call(fn: Callable[..., Any], *args: Any) -> Any:
    result = fn(*args)
    return await result if inspect.isawaitable(result) else result


def counted(
    cache: GCache, is_async: bool, config: GCacheKeyConfig, runs: dict[str, int]
) -> Callable[..., Any]:
    """A cached function of either kind that counts its runs per id."""

    def body(uid: str) -> str:
        runs[uid] = runs.get(uid, 0) + 1
        return uid

    async def abody(uid: str) -> str:
        return body(uid)

    decorate = cache.cached(key_type="user_id", id_arg="uid", use_case=USE_CASE, default_config=config)
    return decorate(abody if is_async else body)


async def cached_keys(
    fn: Callable[..., Any], runs: dict[str, int], times: int = 2, keys: list[str] = KEYS
) -> set[str]:
    """The keys a layer kept: each called ``times``; a kept key ran once, any other every time."""
    for _ in range(times):
        for uid in keys:
            assert await call(fn, uid) == uid
    assert {runs[k] for k in keys} <= {1, times}, "a key got different decisions on different calls"
    return {k for k in keys if runs[k] == 1}


def stored(client: redis.Redis) -> set[str]:
    """The ids whose entry is in Redis."""
    urns = {k.decode() if isinstance(k, bytes) else k for k in client.keys("*")}
    return {k for k in KEYS if urn(k) in urns}


@pytest.mark.parametrize("ramp", [10, 50])
async def test_share_of_keys_is_the_ramp_within_binomial_bounds_and_every_call_agrees(
    ramp: int, is_async: bool, make_cache: Maker, registry: CollectorRegistry
) -> None:
    cache = make_cache()
    runs: dict[str, int] = {}
    fn = counted(cache, is_async, by_key(local=ramp), runs)
    with cache.enable():
        kept = await cached_keys(fn, runs, times=3)

    assert kept == expected(ramp)
    lo, hi = binomial_bounds(len(KEYS), ramp / 100)
    assert lo <= len(kept) <= hi, (lo, len(kept), hi)
    # Counted as a call ramp counts: one lookup or one ramped_down per call and layer.
    out = len(KEYS) - len(kept)
    assert (
        sample(
            registry, "gcache_disabled_counter_total", use_case=USE_CASE, layer="LOCAL", reason="ramped_down"
        )
        == 3 * out
    )
    assert sample(registry, "gcache_request_counter_total", use_case=USE_CASE, layer="LOCAL") == 3 * len(kept)


async def test_ramps_nest_across_ramps_and_layers(
    is_async: bool, make_cache: Maker, redis_client: redis.Redis, registry: CollectorRegistry
) -> None:
    assert expected(10) <= expected(50)
    cache = make_cache()
    runs: dict[str, int] = {}
    fn = counted(cache, is_async, by_key(local=50, remote=10), runs)
    with cache.enable():
        for uid in KEYS:
            await call(fn, uid)
        in_remote = stored(redis_client)
        for uid in KEYS:
            await call(fn, uid)
    served = {k for k in KEYS if runs[k] == 1}  # by LOCAL or REMOTE on the second call

    assert in_remote == expected(10)
    assert served == expected(50)  # REMOTE's keys are among LOCAL's: one share per key
    assert in_remote <= served
    # REMOTE is asked once LOCAL fell through: every key's first call (ramped down out of its
    # 10 %), and the second calls of keys out of LOCAL's 50 % (out of REMOTE's too).
    ramped_down = sample(
        registry, "gcache_disabled_counter_total", use_case=USE_CASE, layer="REMOTE", reason="ramped_down"
    )
    assert ramped_down == (len(KEYS) - len(expected(10))) + (len(KEYS) - len(expected(50)))


@pytest.mark.parametrize(("ramp", "kept"), [(0, 0), (100, 200)])
async def test_ramp_zero_and_hundred_are_exact_and_hash_nothing(
    ramp: int,
    kept: int,
    is_async: bool,
    make_cache: Maker,
    registry: CollectorRegistry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_hash(urn: str) -> float:
        raise AssertionError("a ramp of 0 or 100 needs no share")

    monkeypatch.setattr(decisions, "key_share", no_hash)
    cache = make_cache()
    runs: dict[str, int] = {}
    fn = counted(cache, is_async, by_key(local=ramp, remote=ramp), runs)
    with cache.enable():
        assert len(await cached_keys(fn, runs, keys=KEYS[:200])) == kept
    ramped_down = sample(registry, "gcache_disabled_counter_total", use_case=USE_CASE, reason="ramped_down")
    assert ramped_down == (0 if ramp else 2 * 2 * 200)  # both layers, every call


async def test_ramp_by_call_still_draws_per_call(
    make_cache: Maker, registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_hash(urn: str) -> float:
        raise AssertionError("ramp_by='call' needs no share")

    monkeypatch.setattr(decisions, "key_share", no_hash)
    cache = make_cache()
    runs: dict[str, int] = {}
    config = GCacheKeyConfig(ttl_sec={LOCAL: 60}, ramp={LOCAL: 50})
    fn = counted(cache, False, config, runs)
    with cache.enable():
        for _ in range(200):
            fn("one")
    lookups = sample(registry, "gcache_request_counter_total", use_case=USE_CASE, layer="LOCAL")
    assert 0 < lookups < 200  # one key, both decisions: a draw per call


_SECOND_PROCESS = """
import json, sys
from gcache import CacheLayer, GCache, GCacheConfig, GCacheKeyConfig
keys = json.loads(sys.argv[1])
cache = GCache(GCacheConfig())  # LOCAL only: the decision needs no Redis
config = GCacheKeyConfig(ttl_sec={CacheLayer.LOCAL: 60}, ramp={CacheLayer.LOCAL: 10}, ramp_by="key")
runs = {}
@cache.cached(key_type="user_id", id_arg="uid", use_case="Sticky", default_config=config)
def body(uid):
    runs[uid] = runs.get(uid, 0) + 1
    return uid
with cache.enable():
    for _ in range(2):
        for uid in keys:
            body(uid)
print(json.dumps(sorted(k for k in keys if runs[k] == 1)))
"""


def second_process_keys() -> set[str]:
    """The keys a fresh interpreter's LOCAL keeps at a sticky 10 %, its ``hash()`` salted apart."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "12345"}
    done = subprocess.run(
        [sys.executable, "-c", _SECOND_PROCESS, json.dumps(KEYS)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout))


async def test_a_second_process_takes_the_same_keys(is_async: bool, make_cache: Maker) -> None:
    cache = make_cache()
    runs: dict[str, int] = {}
    fn = counted(cache, is_async, by_key(local=10), runs)
    with cache.enable():
        here = await cached_keys(fn, runs)

    assert second_process_keys() == here == expected(10)


async def test_direct_access_follows_the_key_share(
    is_async: bool, make_cache: Maker, redis_client: redis.Redis
) -> None:
    cache = make_cache()
    config = by_key(remote=10)
    for uid in KEYS:
        key = GCacheKey("user_id", uid, USE_CASE, default_config=config)
        if is_async:
            await cache.aput(key, uid)
        else:
            cache.put(key, uid)
    assert stored(redis_client) == expected(10)


def test_key_share_is_a_stable_point_of_0_to_100() -> None:
    assert key_share("{urn:user_id:1}#Sticky") == key_share("{urn:user_id:1}#Sticky")
    shares = [key_share(urn(k)) for k in KEYS]
    assert all(0 <= s < 100 for s in shares)
    assert len(set(shares)) == len(shares)
    assert {k for k in KEYS if key_share(urn(k, "Other")) < 10} != expected(10)  # per use case


@pytest.mark.parametrize("bad", ["Key", "keys", "", None, 1])
def test_ramp_by_must_be_call_or_key(bad: Any) -> None:
    with pytest.raises(ConfigError, match=r'ramp_by must be "call" or "key", got'):
        GCacheKeyConfig(ttl_sec={LOCAL: 5}, ramp={LOCAL: 10}, ramp_by=bad)
    with pytest.raises(ConfigError, match="ramp_by"):
        GCacheKeyConfig.loads(json.dumps({"ttl_sec": {"local": 5}, "ramp_by": bad}))


def test_ramp_by_round_trips_and_is_omitted_at_its_default() -> None:
    sticky = by_key(local=10, remote=5)
    assert sticky.to_dict()["ramp_by"] == "key"
    assert GCacheKeyConfig.loads(sticky.dumps()) == sticky
    assert GCacheKeyConfig.model_validate(sticky.model_dump()) == sticky
    assert sticky.model_copy(update={"ramp_by": "call"}).ramp_by == "call"
    configs = GCacheKeyConfig.load_configs(GCacheKeyConfig.dump_configs({"S": sticky, "E": {"prod": sticky}}))
    assert configs == {"S": sticky, "E": {"prod": sticky}}
    plain = GCacheKeyConfig(ttl_sec={LOCAL: 5}, ramp={LOCAL: 10})
    assert plain.ramp_by == "call"
    assert "ramp_by" not in plain.to_dict()
    assert "ramp_by" not in plain.model_dump()
