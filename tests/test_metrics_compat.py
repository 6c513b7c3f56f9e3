"""The original library's metrics (rungalileo/gcache 2.0.5), pinned: names, label names, label
values and buckets, so that its users' dashboards and alerts read gcache's series unchanged."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry

from gcache import CacheLayer, GCache, GCacheKey, GCacheKeyConfig
from gcache.metrics import LAYER_GLOBAL, LAYER_KEY, LAYER_LOCAL, LAYER_NONE, LAYER_REMOTE
from tests.conftest import sample

_UC = ("use_case", "key_type")
ORIGINAL: dict[str, tuple[str, tuple[str, ...]]] = {  # its metrics.py, name: (type, label names)
    "gcache_disabled_counter": ("counter", (*_UC, "layer", "reason")),
    "gcache_miss_counter": ("counter", (*_UC, "layer")),
    "gcache_request_counter": ("counter", (*_UC, "layer")),
    "gcache_error_counter": ("counter", (*_UC, "layer", "error", "in_fallback")),
    "gcache_invalidation_counter": ("counter", ("key_type", "layer")),
    "gcache_get_timer": ("histogram", (*_UC, "layer")),
    "gcache_fallback_timer": ("histogram", (*_UC, "layer")),
    "gcache_serialization_timer": ("histogram", (*_UC, "layer", "operation")),
    "gcache_size_histogram": ("histogram", (*_UC, "layer")),
}
# Its timers' buckets ([0.001] + prometheus_client's defaults) and its size buckets, as `le` values.
ORIGINAL_TIMER_LE = {"0.001", "0.005", "0.01", "0.025", "0.05", "0.075", "0.1", "0.25", "0.5", "0.75"}
ORIGINAL_TIMER_LE |= {"1.0", "2.5", "5.0", "7.5", "10.0", "+Inf"}
ORIGINAL_SIZE_LE = {"100.0", "1000.0", "10000.0", "100000.0", "1e+06", "1e+07", "+Inf"}

LOCAL, REMOTE = CacheLayer.LOCAL, CacheLayer.REMOTE
BOTH = GCacheKeyConfig.enabled(60)


def make_get(cache: GCache, is_async: bool, use_case: str, **options: Any) -> Callable[..., Awaitable[Any]]:
    """A cached ``(uid)`` function, awaitable either way (sync runs in a thread)."""
    options = {"key_type": "user_id", "id_arg": "uid", "use_case": use_case, **options}
    if is_async:

        @cache.cached(**options)
        async def get_async(uid: Any) -> Any:
            if uid == "fail":
                raise LookupError(uid)
            return uid

        return get_async

    @cache.cached(**options)
    def get_sync(uid: Any) -> Any:
        if uid == "fail":
            raise LookupError(uid)
        return uid

    async def run(uid: Any) -> Any:
        return await asyncio.to_thread(get_sync, uid)

    return run


class Unprintable:
    def __str__(self) -> str:
        raise ValueError("no key for this one")


async def original_traffic(make_cache: Callable[..., GCache], is_async: bool) -> None:
    """Calls that move each of the original's metrics with each of its label values."""
    cache = make_cache()
    get = make_get(cache, is_async, "Compat", default_config=BOTH)
    await get("1")  # outside enable(): disabled{layer="GLOBAL", reason="context"}
    with cache.enable():
        await get("1")  # LOCAL and REMOTE miss, a dump and a size
        await get("1")  # a LOCAL hit
        with contextlib.suppress(LookupError):
            await get("fail")
        await get(Unprintable())  # error{layer="key creation"}
    other = make_cache()  # an empty LOCAL: a REMOTE hit, a load
    with other.enable():
        await make_get(other, is_async, "Compat", default_config=BOTH)("1")
    if is_async:
        await cache.ainvalidate("user_id", "1")
    else:
        await asyncio.to_thread(cache.invalidate, "user_id", "1")


async def test_each_of_the_originals_metrics_has_its_name_labels_and_label_values(
    make_cache: Callable[..., GCache], registry: CollectorRegistry, is_async: bool
) -> None:
    await original_traffic(make_cache, is_async)
    families = {m.name: m for m in registry.collect()}
    layers: set[str] = set()
    for name, (kind, labels) in ORIGINAL.items():
        family = families[name]
        assert family.type == kind, name
        assert family.samples, name
        for s in family.samples:
            assert set(s.labels) - {"le"} == set(labels), (name, s.labels)
            layers.add(s.labels["layer"])
    assert layers == {"LOCAL", "REMOTE", "GLOBAL", "key creation"}
    assert (LAYER_LOCAL, LAYER_REMOTE, LAYER_GLOBAL, LAYER_KEY) == (
        "LOCAL",
        "REMOTE",
        "GLOBAL",
        "key creation",
    )
    assert (LOCAL.name, REMOTE.name, CacheLayer.NOOP.name) == (LAYER_LOCAL, LAYER_REMOTE, LAYER_NONE)

    def count(name: str, **labels: str) -> float:
        return sample(registry, name, **labels)

    uc = {"use_case": "Compat", "key_type": "user_id"}
    assert count("gcache_disabled_counter_total", **uc, layer="GLOBAL", reason="context") == 1
    assert count("gcache_request_counter_total", **uc, layer="LOCAL") == 4  # 1, 1, fail; the other's 1
    assert count("gcache_miss_counter_total", **uc, layer="LOCAL") == 3
    assert count("gcache_request_counter_total", **uc, layer="REMOTE") == 3  # 1, fail; the other's 1
    assert count("gcache_miss_counter_total", **uc, layer="REMOTE") == 2
    errors = {
        (s.labels["layer"], s.labels["error"], s.labels["in_fallback"]): s.value
        for s in families["gcache_error_counter"].samples
        if s.name == "gcache_error_counter_total"
    }
    assert errors == {("REMOTE", "LookupError", "True"): 1, ("key creation", "ValueError", "False"): 1}
    assert count("gcache_invalidation_counter_total", key_type="user_id", layer="REMOTE") == 1
    assert count("gcache_invalidation_counter_total", key_type="user_id", layer="LOCAL") == 1
    for layer, lookups in (("LOCAL", 4), ("REMOTE", 3)):
        assert count("gcache_get_timer_count", **uc, layer=layer) == lookups
    assert count("gcache_fallback_timer_count", **uc, layer="REMOTE") == 2  # "1" and "fail"
    assert count("gcache_serialization_timer_count", **uc, layer="REMOTE", operation="dump") == 1
    assert count("gcache_serialization_timer_count", **uc, layer="REMOTE", operation="load") == 1
    assert count("gcache_size_histogram_count", **uc, layer="REMOTE") == 1

    def les(name: str) -> set[str]:
        return {s.labels["le"] for s in families[name].samples if s.name == f"{name}_bucket"}

    for timer in ("gcache_get_timer", "gcache_fallback_timer", "gcache_serialization_timer"):
        assert les(timer) >= ORIGINAL_TIMER_LE, timer  # every bound of the original, and finer ones
    assert les("gcache_size_histogram") == ORIGINAL_SIZE_LE


async def test_missing_config_and_config_error_are_counted_per_layer_as_the_original(
    make_cache: Callable[..., GCache], registry: CollectorRegistry, is_async: bool
) -> None:
    answers: dict[str, Any] = {}

    def provider(key: GCacheKey) -> GCacheKeyConfig | None:
        answer = answers[key.use_case]
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[no-any-return]

    cache = make_cache(cache_config_provider=provider)
    answers.update(
        NoConfig=None,
        Broken=RuntimeError("config service down"),
        LocalOnly=GCacheKeyConfig(ttl_sec={LOCAL: 60}, ramp={LOCAL: 100}),
        NoRemoteRamp=GCacheKeyConfig(ttl_sec={LOCAL: 60, REMOTE: 60}, ramp={LOCAL: 100}),
    )
    with cache.enable():
        for use_case in answers:
            get = make_get(cache, is_async, use_case)
            for _ in range(2):
                await get("1")  # LocalOnly and NoRemoteRamp: a miss, then a LOCAL hit

    def disabled(use_case: str, layer: str, reason: str) -> float:
        return sample(
            registry, "gcache_disabled_counter_total", use_case=use_case, layer=layer, reason=reason
        )

    for layer in ("LOCAL", "REMOTE"):  # every layer falls through to the next: each counts
        assert disabled("NoConfig", layer, "missing_config") == 2
        assert disabled("Broken", layer, "config_error") == 2
    # A layer missing from ttl_sec or ramp is missing_config, counted when the call reaches it:
    # REMOTE only on the LOCAL miss, not on the LOCAL hit.
    assert disabled("LocalOnly", "REMOTE", "missing_config") == 1
    assert disabled("NoRemoteRamp", "REMOTE", "missing_config") == 1
    assert sample(registry, "gcache_disabled_counter_total", use_case="LocalOnly", layer="LOCAL") == 0
    assert (
        sample(
            registry,
            "gcache_error_counter_total",
            use_case="Broken",
            layer="config resolution",
            in_fallback="False",
        )
        == 2
    )
    assert sample(registry, "gcache_request_counter_total", use_case="NoConfig") == 0


async def test_remote_ramp_is_counted_only_when_local_fell_through(
    make_cache: Callable[..., GCache], registry: CollectorRegistry, is_async: bool
) -> None:
    cache = make_cache()
    config = GCacheKeyConfig(ttl_sec={LOCAL: 60, REMOTE: 60}, ramp={LOCAL: 100, REMOTE: 0})
    get = make_get(cache, is_async, "RampedRemote", default_config=config)
    with cache.enable():
        for _ in range(5):
            await get("1")  # a LOCAL miss, then four LOCAL hits
    labels = {"use_case": "RampedRemote"}
    assert (
        sample(registry, "gcache_disabled_counter_total", **labels, layer="REMOTE", reason="ramped_down") == 1
    )
    assert sample(registry, "gcache_request_counter_total", **labels, layer="LOCAL") == 5
    assert sample(registry, "gcache_request_counter_total", **labels, layer="REMOTE") == 0


async def test_misses_never_outnumber_lookups_and_each_has_one_reason(
    make_cache: Callable[..., GCache], registry: CollectorRegistry, is_async: bool
) -> None:
    """Each lookup that falls through counts one miss and one reason: 1 - miss / request stays
    within 0..1."""
    cache = make_cache()
    config = GCacheKeyConfig(ttl_sec={REMOTE: 60}, ramp={REMOTE: 100}, fail_safe_sec=60)
    get = make_get(cache, is_async, "Ratio", default_config=config)
    with cache.enable():
        for uid in ("1", "2", "1", "3", "1"):
            await get(uid)
    for layer in ("LOCAL", "REMOTE"):
        requests = sample(registry, "gcache_request_counter_total", use_case="Ratio", layer=layer)
        misses = sample(registry, "gcache_miss_counter_total", use_case="Ratio", layer=layer)
        reasons = sample(registry, "gcache_miss_reason_counter_total", use_case="Ratio", layer=layer)
        assert misses <= requests
        assert reasons == misses
    assert sample(registry, "gcache_request_counter_total", use_case="Ratio", layer="REMOTE") == 5
    assert sample(registry, "gcache_miss_counter_total", use_case="Ratio", layer="REMOTE") == 3
