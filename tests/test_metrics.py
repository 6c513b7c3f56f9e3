"""Prometheus metrics: names, label sets, exact movements, prefixes and the ways to serve them."""

from __future__ import annotations

import asyncio
import pickle
import sys
import threading
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram

from gcache import (
    CacheLayer,
    ConfigError,
    GCache,
    GCacheConfig,
    GCacheKeyConfig,
    _envelope,
    make_metrics_app,
    start_metrics_server,
)
from gcache import metrics as metrics_module
from gcache._embedded_redis import free_port
from gcache.metrics import CountingValue, FastCounter, FastHistogram, SummingValue
from tests.conftest import sample

BOTH = GCacheKeyConfig.enabled(60)
LOCAL_ONLY = GCacheKeyConfig(ttl_sec={CacheLayer.LOCAL: 60}, ramp={CacheLayer.LOCAL: 100})
REMOTE_ONLY = GCacheKeyConfig(ttl_sec={CacheLayer.REMOTE: 60}, ramp={CacheLayer.REMOTE: 100})

_UC = {"use_case", "key_type"}
DOCUMENTED: dict[str, tuple[str, set[str]]] = {
    "gcache_request_counter": ("counter", {*_UC, "layer"}),
    "gcache_miss_counter": ("counter", {*_UC, "layer"}),
    "gcache_miss_reason_counter": ("counter", {*_UC, "layer", "reason"}),
    "gcache_disabled_counter": ("counter", {*_UC, "layer", "reason"}),
    "gcache_error_counter": ("counter", {*_UC, "layer", "error", "in_fallback"}),
    "gcache_invalidation_counter": ("counter", {"key_type", "layer"}),
    "gcache_get_timer": ("histogram", {*_UC, "layer"}),
    "gcache_fallback_timer": ("histogram", {*_UC, "layer"}),
    "gcache_serialization_timer": ("histogram", {*_UC, "layer", "operation"}),
    "gcache_size_histogram": ("histogram", {*_UC, "layer"}),
}
DISABLED_REASONS = {"context", "ramped_down", "missing_config", "config_error", "server_down"}

Call = Callable[..., Awaitable[Any]]


def cached_fn(
    cache: GCache,
    is_async: bool,
    calls: list[str],
    *,
    use_case: str,
    config: GCacheKeyConfig = BOTH,
    tracked: bool = False,
) -> Call:
    """A cached ``(uid, region="eu")`` function, awaitable either way (sync runs in a thread)."""
    options: dict[str, Any] = {
        "key_type": "user_id",
        "id_arg": "uid",
        "use_case": use_case,
        "default_config": config,
        "track_for_invalidation": tracked,
    }
    if is_async:

        @cache.cached(**options)
        async def get_async(uid: str, region: str = "eu") -> dict[str, Any]:
            calls.append(uid)
            return {"uid": uid, "region": region}

        return get_async

    @cache.cached(**options)
    def get_sync(uid: str, region: str = "eu") -> dict[str, Any]:
        calls.append(uid)
        return {"uid": uid, "region": region}

    async def run(uid: str, region: str = "eu") -> Any:
        return await asyncio.to_thread(get_sync, uid, region)

    return run


def failing_fn(cache: GCache, is_async: bool, use_case: str) -> Call:
    options: dict[str, Any] = {
        "key_type": "user_id",
        "id_arg": "uid",
        "use_case": use_case,
        "default_config": BOTH,
    }
    if is_async:

        @cache.cached(**options)
        async def fail_async(uid: str) -> None:
            raise LookupError(uid)

        return fail_async

    @cache.cached(**options)
    def fail_sync(uid: str) -> None:
        raise LookupError(uid)

    async def run(uid: str) -> Any:
        return await asyncio.to_thread(fail_sync, uid)

    return run


async def invalidate(cache: GCache, is_async: bool, key_type: str, id: str) -> None:
    if is_async:
        await cache.ainvalidate(key_type, id)
    else:
        await asyncio.to_thread(cache.invalidate, key_type, id)


async def traffic(make_cache: Callable[..., GCache], is_async: bool, uid: str, region: str) -> None:
    """Calls that move every documented metric: hits, misses, errors, invalidations, loads."""
    cache = make_cache()
    calls: list[str] = []
    get = cached_fn(cache, is_async, calls, use_case="Traffic", tracked=True)
    fail = failing_fn(cache, is_async, "Failing")
    await get(uid, region)  # outside enable(): disabled{reason="context"}
    with cache.enable():
        await get(uid, region)
        await get(uid, region)
        with pytest.raises(LookupError):
            await fail(uid)
        await invalidate(cache, is_async, "user_id", uid)
        await get(uid, region)
    other = make_cache()  # an empty LOCAL: the next call is a REMOTE hit (a load)
    get_other = cached_fn(other, is_async, [], use_case="Traffic", tracked=True)
    with other.enable():
        await get_other(uid, region)


async def test_every_documented_metric_has_exactly_its_labels_after_traffic(
    make_cache: Callable[..., GCache], registry: CollectorRegistry, is_async: bool
) -> None:
    await traffic(make_cache, is_async, "u-1", "eu")
    families = {m.name: m for m in registry.collect()}
    for name, (kind, labels) in DOCUMENTED.items():
        assert name in families, name
        family = families[name]
        assert family.type == kind, name
        assert family.samples, f"{name} has no samples after traffic"
        for s in family.samples:
            assert set(s.labels) - {"le"} == labels, (name, s)
    assert {s.labels["operation"] for s in families["gcache_serialization_timer"].samples} == {"dump", "load"}
    assert {s.labels["reason"] for s in families["gcache_disabled_counter"].samples} <= DISABLED_REASONS
    assert sample(registry, "gcache_disabled_counter_total", use_case="Traffic", reason="context") == 1
    assert (
        sample(
            registry,
            "gcache_error_counter_total",
            use_case="Failing",
            error="LookupError",
            in_fallback="True",
        )
        == 1
    )
    assert sample(registry, "gcache_invalidation_counter_total", key_type="user_id", layer="LOCAL") == 1
    assert sample(registry, "gcache_invalidation_counter_total", key_type="user_id", layer="REMOTE") == 1


async def test_labels_never_carry_ids_or_argument_values_after_traffic(
    make_cache: Callable[..., GCache], registry: CollectorRegistry, is_async: bool
) -> None:
    uid, region = "id-7d1c0ffee", "region-b16b00b5"
    await traffic(make_cache, is_async, uid, region)
    samples = [s for m in registry.collect() for s in m.samples]
    assert samples
    for s in samples:
        for value in s.labels.values():
            assert uid not in value, s
            assert region not in value, s


async def test_metrics_move_exactly_as_documented_when_scripted(
    make_cache: Callable[..., GCache],
    registry: CollectorRegistry,
    redis_client: redis.Redis,
    is_async: bool,
) -> None:
    def count(name: str, **labels: str) -> float:
        return sample(registry, name, use_case="Scripted", key_type="user_id", **labels)

    request, miss = "gcache_request_counter_total", "gcache_miss_counter_total"
    reason = "gcache_miss_reason_counter_total"
    cache = make_cache()
    calls: list[str] = []
    get = cached_fn(cache, is_async, calls, use_case="Scripted")
    value = {"uid": "1", "region": "eu"}

    with cache.enable():
        assert await get("1") == value
    assert count(request, layer="LOCAL") == 1
    assert count(miss, layer="LOCAL") == 1
    assert count(reason, layer="LOCAL", reason="not_found") == 1
    assert count(request, layer="REMOTE") == 1
    assert count(miss, layer="REMOTE") == 1
    assert count(reason, layer="REMOTE", reason="not_found") == 1
    assert count(miss) == 2
    assert count(reason) == 2
    assert count("gcache_get_timer_count", layer="LOCAL") == 1
    assert count("gcache_get_timer_count", layer="REMOTE") == 1
    assert count("gcache_fallback_timer_count", layer="REMOTE") == 1
    assert count("gcache_fallback_timer_count") == 1
    assert count("gcache_serialization_timer_count", layer="REMOTE", operation="dump") == 1
    assert count("gcache_serialization_timer_count", operation="load") == 0
    raw = redis_client.get("{urn:gcache:user_id:1}?region=eu#Scripted")
    assert isinstance(raw, bytes)
    payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    assert raw[_envelope.HEADER_SIZE :] == payload
    assert count("gcache_size_histogram_count", layer="REMOTE") == 1
    assert count("gcache_size_histogram_sum", layer="REMOTE") == len(payload)
    assert count("gcache_error_counter_total") == 0
    assert count("gcache_disabled_counter_total") == 0

    with cache.enable():
        assert await get("1") == value  # a LOCAL hit
    assert calls == ["1"]
    assert count(request, layer="LOCAL") == 2
    assert count(request, layer="REMOTE") == 1
    assert count(miss) == 2
    assert count("gcache_get_timer_count", layer="LOCAL") == 2  # every lookup is timed
    assert count("gcache_fallback_timer_count") == 1
    assert count("gcache_serialization_timer_count", operation="dump") == 1

    other = make_cache()  # same Redis, same registry, empty LOCAL
    other_calls: list[str] = []
    get_other = cached_fn(other, is_async, other_calls, use_case="Scripted")
    with other.enable():
        assert await get_other("1") == value  # a REMOTE hit
    assert other_calls == []
    assert count(request, layer="LOCAL") == 3
    assert count(miss, layer="LOCAL") == 2
    assert count(reason, layer="LOCAL", reason="not_found") == 2
    assert count(request, layer="REMOTE") == 2
    assert count(miss, layer="REMOTE") == 1
    assert count("gcache_serialization_timer_count", layer="REMOTE", operation="load") == 1
    assert count("gcache_serialization_timer_count", operation="dump") == 1
    assert count("gcache_fallback_timer_count") == 1
    assert count("gcache_size_histogram_count") == 1


async def test_every_metric_is_prefixed_and_shared_when_metrics_prefix_set(
    make_cache: Callable[..., GCache], registry: CollectorRegistry, is_async: bool
) -> None:
    first = make_cache(metrics_prefix="myapp_")
    second = make_cache(metrics_prefix="myapp_")  # same registry and prefix: no duplicate error
    get_first = cached_fn(first, is_async, [], use_case="First")
    get_second = cached_fn(second, is_async, [], use_case="Second")
    with first.enable(), second.enable():
        await get_first("1")
        await get_second("1")
        await get_second("2")
    names = {m.name for m in registry.collect()}
    assert names
    assert all(name.startswith("myapp_gcache_") for name in names), names
    assert {f"myapp_{name}" for name in DOCUMENTED} <= names
    assert sample(registry, "myapp_gcache_request_counter_total", use_case="First", layer="LOCAL") == 1
    assert sample(registry, "myapp_gcache_request_counter_total", use_case="Second", layer="LOCAL") == 2
    assert sample(registry, "gcache_request_counter_total") == 0


async def test_local_entries_gauge_counts_entries_when_filled_and_flushed(
    make_cache: Callable[..., GCache], registry: CollectorRegistry, is_async: bool
) -> None:
    cache = make_cache()
    get = cached_fn(cache, is_async, [], use_case="Entries", config=LOCAL_ONLY)
    other = cached_fn(cache, is_async, [], use_case="Other", config=LOCAL_ONLY)
    gauge = "gcache_local_entries"
    assert sample(registry, gauge, use_case="Entries", key_type="user_id") == 0
    with cache.enable():
        for uid in ("1", "2", "3", "1"):
            await get(uid)
        await other("1")
    assert sample(registry, gauge, use_case="Entries", key_type="user_id") == 3
    assert sample(registry, gauge, use_case="Other", key_type="user_id") == 1
    if is_async:
        await cache.aflushall()
    else:
        await asyncio.to_thread(cache.flushall)
    assert sample(registry, gauge, use_case="Entries", key_type="user_id") == 0


def test_metrics_served_over_http_when_server_started(registry: CollectorRegistry) -> None:
    with GCache(GCacheConfig(metrics_registry=registry)) as cache:

        @cache.cached(key_type="user_id", id_arg="uid", use_case="Http", default_config=LOCAL_ONLY)
        def get(uid: str) -> str:
            return uid

        with cache.enable():
            assert get("1") == "1"
        port = free_port()
        server, thread = start_metrics_server(port=port, addr="127.0.0.1", registry=registry)
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                status = response.status
                body = response.read().decode()
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
    assert status == 200
    assert 'gcache_request_counter_total{key_type="user_id",layer="LOCAL",use_case="Http"} 1.0' in body


async def test_metrics_served_by_asgi_app_when_called(registry: CollectorRegistry) -> None:
    async with GCache(GCacheConfig(metrics_registry=registry)) as cache:

        @cache.cached(key_type="user_id", id_arg="uid", use_case="Asgi", default_config=LOCAL_ONLY)
        async def get(uid: str) -> str:
            return uid

        with cache.enable():
            assert await get("1") == "1"

    app = make_metrics_app(registry)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/metrics", "query_string": b"", "headers": []}
    await app(scope, receive, send)
    assert sent[0]["type"] == "http.response.start"
    assert sent[0]["status"] == 200
    body = b"".join(m.get("body", b"") for m in sent[1:]).decode()
    assert 'gcache_request_counter_total{key_type="user_id",layer="LOCAL",use_case="Asgi"} 1.0' in body
    for name in DOCUMENTED:
        assert f"# TYPE {name}" in body


async def test_get_timer_counts_every_lookup_of_each_layer(
    make_cache: Callable[..., GCache], registry: CollectorRegistry, is_async: bool
) -> None:
    """gcache_get_timer's _count is gcache_request_counter's, per layer, hits and misses alike."""
    cache = make_cache()
    calls: list[str] = []
    get = cached_fn(cache, is_async, calls, use_case="Timed")
    with cache.enable():
        for uid in ("1", "2", "1", "1", "3", "2"):
            await get(uid)
    other = make_cache()  # an empty LOCAL over the same Redis: REMOTE hits
    get_other = cached_fn(other, is_async, [], use_case="Timed")
    with other.enable():
        for uid in ("1", "2", "1", "4"):
            await get_other(uid)
    assert calls == ["1", "2", "3"]
    for layer, lookups in (("LOCAL", 10), ("REMOTE", 6)):
        labels = {"use_case": "Timed", "layer": layer}
        assert sample(registry, "gcache_request_counter_total", **labels) == lookups
        assert sample(registry, "gcache_get_timer_count", **labels) == lookups
        assert sample(registry, "gcache_get_timer_bucket", le="+Inf", **labels) == lookups
        assert sample(registry, "gcache_get_timer_sum", **labels) > 0
    loads = sample(registry, "gcache_serialization_timer_count", use_case="Timed", operation="load")
    assert loads == 2  # the REMOTE hits of "1" and "2"; "4" missed


async def test_timer_sample_every_times_the_first_lookup_then_one_in_n(
    make_cache: Callable[..., GCache], registry: CollectorRegistry, is_async: bool
) -> None:
    cache = make_cache(timer_sample_every=16)
    calls: list[str] = []
    get = cached_fn(cache, is_async, calls, use_case="Sampled")
    remote = cached_fn(cache, is_async, calls, use_case="SampledRemote", config=REMOTE_ONLY)
    with cache.enable():
        for _ in range(33):
            await get("1")
        for _ in range(34):
            assert await remote("1") == {"uid": "1", "region": "eu"}
    assert calls == ["1", "1"]
    local = {"use_case": "Sampled", "layer": "LOCAL"}
    assert sample(registry, "gcache_request_counter_total", **local) == 33
    assert sample(registry, "gcache_get_timer_count", **local) == 3  # lookups 1, 17 and 33
    labels = {"use_case": "SampledRemote", "layer": "REMOTE"}
    assert sample(registry, "gcache_request_counter_total", **labels) == 34
    assert sample(registry, "gcache_get_timer_count", **labels) == 3  # reads 1, 17 and 33
    loads = sample(registry, "gcache_serialization_timer_count", use_case="SampledRemote", operation="load")
    assert loads == 2  # reads 17 and 33 found a value to load; read 1 missed
    assert sample(registry, "gcache_miss_counter_total", use_case="SampledRemote", layer="REMOTE") == 1


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2", None])
def test_timer_sample_every_other_than_a_positive_integer_is_a_config_error(bad: object) -> None:
    with pytest.raises(ConfigError, match="timer_sample_every must be an integer above 0"):
        GCacheConfig(timer_sample_every=bad)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=100.0, allow_nan=False), max_size=40))
def test_fast_histogram_child_records_exactly_what_observe_records(amounts: list[float]) -> None:
    registry = CollectorRegistry()
    buckets = (0.001, 0.01, 0.1, 1.0, 10.0)
    official = Histogram("official", "h", ["l"], buckets=buckets, registry=registry).labels("x")
    fast = FastHistogram(Histogram("fast", "h", ["l"], buckets=buckets, registry=registry).labels("x"))
    for amount in [*amounts, *buckets]:  # the bounds themselves: observe puts them in their own bucket
        official.observe(amount)
        fast.observe(amount)
    families = {m.name: m for m in registry.collect()}

    def recorded(name: str) -> list[tuple[str, dict[str, str], float]]:
        kept = [s for s in families[name].samples if s.name != f"{name}_created"]
        return [(s.name.removeprefix(name), s.labels, s.value) for s in kept]

    assert recorded("fast") == recorded("official")
    assert recorded("fast")[-2] == ("_count", {"l": "x"}, len(amounts) + len(buckets))


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(min_value=0.0, max_value=100.0, allow_nan=False), st.integers(1, 60)),
        max_size=20,
    ),
    st.booleans(),
)
def test_fast_histogram_observe_many_records_what_as_many_observes_record(
    batches: list[tuple[float, int]], gil: bool
) -> None:
    """A batch's lookups, timed together: ``observe_many(mean, n)`` is ``n`` observations."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(metrics_module, "_GIL", gil)  # without it: prometheus_client's values kept
        registry = CollectorRegistry()
        buckets = (0.001, 0.01, 0.1, 1.0, 10.0)
        official = Histogram("official", "h", ["l"], buckets=buckets, registry=registry).labels("x")
        fast = FastHistogram(Histogram("fast", "h", ["l"], buckets=buckets, registry=registry).labels("x"))
    for amount, n in [*batches, *((bound, 3) for bound in buckets)]:
        for _ in range(n):
            official.observe(amount)
        fast.observe_many(amount, n)
    families = {m.name: m for m in registry.collect()}

    def recorded(name: str) -> list[tuple[str, dict[str, str], float]]:
        kept = [s for s in families[name].samples if s.name != f"{name}_created"]
        return [(s.name.removeprefix(name), s.labels, s.value) for s in kept]

    fast_samples, official_samples = recorded("fast"), recorded("official")
    assert [s[:2] for s in fast_samples] == [s[:2] for s in official_samples]
    assert [s[2] for s in fast_samples] == pytest.approx([s[2] for s in official_samples])
    assert fast_samples[-2][2] == sum(n for _, n in batches) + 3 * len(buckets)


def test_fast_counter_add_adds_many_at_once_beside_inc() -> None:
    registry = CollectorRegistry()
    fast = FastCounter(Counter("many", "c", ["l"], registry=registry).labels("x"))
    fast.inc()
    fast.add(50)
    fast.inc()
    assert sample(registry, "many_total", l="x") == 52


def test_fast_counter_child_adds_one_per_inc() -> None:
    registry = CollectorRegistry()
    fast = FastCounter(Counter("fast", "c", ["l"], registry=registry).labels("x"))
    for _ in range(5):
        fast.inc()
    assert sample(registry, "fast_total", l="x") == 5


def test_fast_children_fall_back_to_the_public_methods_on_an_unknown_prometheus_client() -> None:
    class Child:
        """A child without prometheus_client's internals: only the public methods."""

        def __init__(self) -> None:
            self.seen: list[float] = []

        def inc(self, amount: float = 1) -> None:
            self.seen.append(amount)

        def observe(self, amount: float) -> None:
            self.seen.append(amount)

    counter, histogram = Child(), Child()
    fast_counter = FastCounter(counter)  # type: ignore[arg-type]
    fast_histogram = FastHistogram(histogram)  # type: ignore[arg-type]
    fast_counter.inc()
    fast_counter.add(3)
    fast_histogram.observe(0.5)
    fast_histogram.observe_many(0.25, 2)
    assert counter.seen == [1, 3]
    assert histogram.seen == [0.5, 0.25, 0.25]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.just(("tick", 0.0)),
            st.tuples(st.just("inc"), st.floats(min_value=0.0, max_value=1e6, allow_nan=False)),
            st.tuples(st.just("set"), st.floats(min_value=0.0, max_value=1e6, allow_nan=False)),
            st.just(("get", 0.0)),
        ),
        max_size=60,
    )
)
def test_counting_value_reads_what_a_mutex_value_reads_after_any_operations(
    operations: list[tuple[str, float]],
) -> None:
    """tick, inc(amount), set and get in any order: the value read is the model's every time."""
    counting, model = CountingValue(), 0.0
    for name, amount in operations:
        if name == "tick":
            counting.tick()
            model += 1
        elif name == "inc":
            counting.inc(amount)
            model += amount
        elif name == "set":
            counting.set(amount)
            model = amount
        else:
            assert counting.get() == pytest.approx(model)
    assert counting.get() == pytest.approx(model)
    assert counting.get() == pytest.approx(model)  # reading does not move it


def test_counting_value_loses_no_tick_across_threads_and_reads_never_go_back() -> None:
    registry = CollectorRegistry()
    child = Counter("threads", "c", ["l"], registry=registry).labels("x")
    incs = [FastCounter(child).inc for _ in range(4)]  # one shared value: four FastCounters, one child
    per_thread, readings = 20_000, []
    start = threading.Barrier(len(incs) + 1)

    def ticking(inc: Callable[[], object]) -> None:
        start.wait()
        for _ in range(per_thread):
            inc()

    def reading() -> None:
        start.wait()
        for _ in range(2_000):
            readings.append(sample(registry, "threads_total", l="x"))

    threads = [threading.Thread(target=ticking, args=(inc,)) for inc in incs]
    threads.append(threading.Thread(target=reading))
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter allows
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old_interval)
    assert sample(registry, "threads_total", l="x") == len(incs) * per_thread
    assert readings == sorted(readings)
    assert readings[-1] <= len(incs) * per_thread


def test_fast_counter_shares_the_child_value_with_the_public_methods_and_reset() -> None:
    registry = CollectorRegistry()
    counter = Counter("mixed", "c", ["l"], registry=registry)
    child = counter.labels("x")
    child.inc(2.5)  # counted before a FastCounter took the child over: kept
    fast = FastCounter(child)
    assert isinstance(child._value, CountingValue)
    for _ in range(3):
        fast.inc()
    child.inc(4)
    assert sample(registry, "mixed_total", l="x") == 9.5
    child.reset()
    fast.inc()
    assert sample(registry, "mixed_total", l="x") == 1


def test_fast_counter_keeps_prometheus_value_where_counting_is_not_safe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without the GIL (a free-threaded build) the child keeps its locked value."""
    monkeypatch.setattr(metrics_module, "_GIL", False)
    registry = CollectorRegistry()
    child = Counter("nogil", "c", ["l"], registry=registry).labels("x")
    fast = FastCounter(child)
    fast.inc()
    fast.inc()
    assert not isinstance(child._value, CountingValue)
    assert sample(registry, "nogil_total", l="x") == 2


THREADS = 4


def test_summing_value_keeps_few_amounts_unread_and_loses_none_across_threads() -> None:
    """Observed from four threads and never scraped: the pending amounts stay bounded (folded
    every FOLD_EVERY observations of a bucket), and the sum and count are exact."""
    registry = CollectorRegistry()
    child = Histogram("summed", "h", ["l"], buckets=(0.5, 1.0), registry=registry).labels("x")
    observe = FastHistogram(child).observe
    summing = child._sum
    assert isinstance(summing, SummingValue)
    per_thread, start = 5_000, threading.Barrier(THREADS)

    def observing(amount: float) -> None:
        start.wait()
        for _ in range(per_thread):
            observe(amount)
            # Each of the three buckets folds every FOLD_EVERY of its own observations, but the
            # thread whose tick owes a fold may be switched out before it folds, while the others
            # go on appending: a bound in FOLD_EVERY per bucket and per thread, not in observations.
            assert len(summing._pending) <= (3 + THREADS) * metrics_module.FOLD_EVERY

    threads = [threading.Thread(target=observing, args=(amount,)) for amount in (0.25, 0.75, 2.0, 0.25)]
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old_interval)
    assert sample(registry, "summed_count", l="x") == 4 * per_thread
    assert sample(registry, "summed_bucket", l="x", le="0.5") == 2 * per_thread
    assert sample(registry, "summed_sum", l="x") == pytest.approx(per_thread * (0.25 + 0.75 + 2.0 + 0.25))
    child._sum.set(1.5)  # what prometheus_client's own methods do to it still holds
    child._sum.inc(1.0)
    assert sample(registry, "summed_sum", l="x") == 2.5
