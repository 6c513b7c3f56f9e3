"""``GCacheKeyConfig(refresh_ahead=...)``: a hit past that fraction of its entry's TTL returns the
entry at once and refreshes it in the background, once per key in the process (once in the fleet
with ``lock_sec``), fenced as a miss's write. On a real Redis, sync and async, tracked and
untracked, LOCAL-only, REMOTE-only and both.

The function tells when it runs (an event) and can be held (a gate), so no test sleeps to learn
that a refresh ran; the only sleeps age an entry past its refresh point.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry

from gcache import CacheLayer, ConfigError, GCache, GCacheKeyConfig
from gcache.epochs import Epochs
from gcache.local import LocalStore
from tests.conftest import sample
from tests.readthrough.test_fail_safe import eventually, invalidate, stored_value, value_key

LOCAL, REMOTE = CacheLayer.LOCAL, CacheLayer.REMOTE
TTL = 1.0  # seconds; refreshes are due after AHEAD of it
AHEAD = 0.5
AGE = 0.6  # past the refresh point, well before expiry
REFRESH = "gcache_refresh_counter_total"
LAYERS = {"local": (LOCAL,), "remote": (REMOTE,), "both": (LOCAL, REMOTE)}


def config(layers: str, ttl: float = TTL, **options: Any) -> GCacheKeyConfig:
    chosen = LAYERS[layers]
    return GCacheKeyConfig(
        ttl_sec=dict.fromkeys(chosen, ttl), ramp=dict.fromkeys(chosen, 100), refresh_ahead=AHEAD, **options
    )


@pytest.fixture(params=[False, True], ids=["untracked", "tracked"])
def tracked(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


class Source:
    """The cached function's source: ``value`` as it is when a run starts. A run sets ``ran``;
    while ``gate`` is set and not open it waits for it; ``fail`` makes it raise."""

    def __init__(self) -> None:
        self.value = "v1"
        self.reads = 0
        self.ran = threading.Event()
        self.gate: threading.Event | None = None
        self.fail = False

    def start(self) -> tuple[str, threading.Event | None]:
        self.reads += 1
        self.ran.set()
        if self.fail:
            raise RuntimeError("source down")
        return self.value, self.gate


def cached(
    cache: GCache, is_async: bool, source: Source, conf: GCacheKeyConfig, *, tracked: bool
) -> Callable[[str], Awaitable[Any]]:
    """The cached function, awaitable either way: a sync one is called from a worker thread, as
    a sync caller without an event loop calls it (its refresh runs on gcache's workers)."""
    options: dict[str, Any] = {
        "key_type": "user_id", "id_arg": "uid", "use_case": "Ahead", "default_config": conf,
        "track_for_invalidation": tracked,
    }  # fmt: skip
    if is_async:

        @cache.cached(**options)
        async def aread(uid: str) -> str:
            value, gate = source.start()
            if gate is not None:  # held off the loop: the test's own awaits go on meanwhile
                assert await asyncio.to_thread(gate.wait, 10)
            return value

        return aread

    @cache.cached(**options)
    def read(uid: str) -> str:
        value, gate = source.start()
        if gate is not None:
            assert gate.wait(10)
        return value

    async def call(uid: str) -> Any:
        return await asyncio.to_thread(read, uid)

    return call


async def ran(source: Source) -> None:
    """Wait (without blocking the loop, where async refreshes run) for the function to run."""
    await eventually(source.ran.is_set, what="the function to run")
    source.ran.clear()


def subject(
    make_cache: Callable[..., GCache], is_async: bool, conf: GCacheKeyConfig, *, tracked: bool
) -> tuple[GCache, Source, Callable[[str], Awaitable[Any]]]:
    """A cache, a source and the cached function over it."""
    cache = make_cache()
    source = Source()
    return cache, source, cached(cache, is_async, source, conf, tracked=tracked)


async def fill_and_age(get: Callable[[str], Awaitable[Any]], source: Source) -> None:
    """Fill key 1 and let its entry age past the refresh point."""
    assert await get("1") == "v1"
    await ran(source)
    await asyncio.sleep(AGE)


def refreshes(registry: CollectorRegistry, result: str) -> float:
    return sample(registry, REFRESH, use_case="Ahead", result=result)


@pytest.mark.parametrize("layers", ["local", "remote", "both"])
async def test_a_hit_past_the_point_is_served_at_once_and_refreshed_in_the_background(
    make_cache: Callable[..., GCache],
    registry: CollectorRegistry,
    redis_client: redis.Redis,
    is_async: bool,
    tracked: bool,
    layers: str,
) -> None:
    cache, source, get = subject(make_cache, is_async, config(layers), tracked=tracked)
    with cache.enable():
        assert await get("1") == "v1"
        await ran(source)
        assert await get("1") == "v1"  # a hit before the point starts nothing
        await asyncio.sleep(AGE)
        source.value, source.gate = "v2", threading.Event()
        start = time.monotonic()
        assert await get("1") == "v1"  # past the point: the current value, while the refresh is held
        assert time.monotonic() - start < 0.2
        await ran(source)  # the refresh runs the function...
        assert await get("1") == "v1"  # ...and until it lands the old value is served
        source.gate.set()
        await eventually(lambda: refreshes(registry, "refreshed") == 1, what="the refresh to land")
        assert source.reads == 2
        assert await get("1") == "v2"  # the refreshed entry, a hit
        assert source.reads == 2
        if REMOTE in LAYERS[layers]:
            assert stored_value(redis_client, value_key("Ahead", "1")) == "v2"
            assert redis_client.pttl(value_key("Ahead", "1")) > (1 - AHEAD) * TTL * 1000  # a new TTL
    assert refreshes(registry, "refresh_failed") == 0


@pytest.mark.parametrize("layers", ["local", "remote"])
async def test_many_hits_past_the_point_start_one_refresh(
    make_cache: Callable[..., GCache], registry: CollectorRegistry, is_async: bool, tracked: bool, layers: str
) -> None:
    cache, source, get = subject(make_cache, is_async, config(layers), tracked=tracked)
    with cache.enable():
        await fill_and_age(get, source)
        source.value, source.gate = "v2", threading.Event()
        assert await asyncio.gather(*(get("1") for _ in range(20))) == ["v1"] * 20
        await ran(source)
        assert await asyncio.gather(*(get("1") for _ in range(20))) == ["v1"] * 20
        source.gate.set()
        await eventually(lambda: refreshes(registry, "refreshed") == 1, what="the refresh to land")
        assert await get("1") == "v2"
    assert source.reads == 2  # the first call and one refresh, for 41 calls


async def test_with_lock_sec_one_process_refreshes_for_the_fleet(
    make_cache: Callable[..., GCache], registry: CollectorRegistry, is_async: bool, tracked: bool
) -> None:
    cache = make_cache()
    other_registry = CollectorRegistry()
    other = make_cache(metrics_registry=other_registry)  # another process
    source, elsewhere = Source(), Source()
    conf = config("remote", lock_sec=5)
    get = cached(cache, is_async, source, conf, tracked=tracked)
    get_elsewhere = cached(other, is_async, elsewhere, conf, tracked=tracked)
    with cache.enable(), other.enable():
        await fill_and_age(get, source)
        source.value = elsewhere.value = "v2"
        source.gate = threading.Event()
        assert await get("1") == "v1"
        await ran(source)  # this process holds the lock while its function runs
        assert await get_elsewhere("1") == "v1"  # the other's hit is due too...
        await eventually(lambda: refreshes(other_registry, "locked") == 1, what="the other to find the lock")
        assert await get_elsewhere("1") == "v1"  # ...and it holds back for a while
        source.gate.set()
        await eventually(lambda: refreshes(registry, "refreshed") == 1, what="the refresh to land")
        assert await get_elsewhere("1") == "v2"  # not due: nothing more to refresh
    assert source.reads == 2
    assert elsewhere.reads == 0
    assert refreshes(other_registry, "locked") == 1
    assert refreshes(other_registry, "refreshed") == 0


@pytest.mark.parametrize("layers", ["local", "remote", "both"])
async def test_an_invalidation_during_the_refresh_wins(
    make_cache: Callable[..., GCache],
    registry: CollectorRegistry,
    redis_client: redis.Redis,
    is_async: bool,
    layers: str,
) -> None:
    """The refresh's function read its source (v2) before an invalidation that followed a change
    (v3): its value is refused in every layer, and the next read computes v3."""
    cache, source, get = subject(make_cache, is_async, config(layers), tracked=True)
    with cache.enable():
        await fill_and_age(get, source)
        source.value, source.gate = "v2", threading.Event()
        assert await get("1") == "v1"
        await ran(source)  # the refresh has read v2 and is held
        source.value = "v3"
        await invalidate(cache, is_async, "1")
        source.gate.set()
        await eventually(lambda: refreshes(registry, "refused") == 1, what="the write to be refused")
        assert refreshes(registry, "refreshed") == 0
        if REMOTE in LAYERS[layers]:
            assert stored_value(redis_client, value_key("Ahead", "1")) == "v1"  # left as it was: stale
        assert await get("1") == "v3"
        assert source.reads == 3  # invalidated, so the next call ran the function


@pytest.mark.parametrize("layers", ["local", "remote", "both"])
async def test_a_failed_refresh_is_counted_and_the_current_entry_stays(
    make_cache: Callable[..., GCache],
    registry: CollectorRegistry,
    redis_client: redis.Redis,
    is_async: bool,
    tracked: bool,
    layers: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache, source, get = subject(make_cache, is_async, config(layers), tracked=tracked)
    with cache.enable():
        await fill_and_age(get, source)
        source.fail = True
        assert await get("1") == "v1"
        await eventually(lambda: refreshes(registry, "refresh_failed") == 1, what="the refresh to fail")
        for _ in range(5):  # still served, and not tried again at once
            assert await get("1") == "v1"
        assert source.reads == 2
        if REMOTE in LAYERS[layers]:
            assert stored_value(redis_client, value_key("Ahead", "1")) == "v1"
    assert sample(registry, "gcache_error_counter_total", use_case="Ahead", in_fallback="True") == 1
    assert "background refresh (refresh_ahead) for use case 'Ahead' failed: RuntimeError" in caplog.text


@pytest.mark.parametrize("failing", ["reads", "writes"])
async def test_a_refresh_whose_redis_fails_writes_nothing(
    make_cache: Callable[..., GCache],
    registry: CollectorRegistry,
    is_async: bool,
    tracked: bool,
    monkeypatch: pytest.MonkeyPatch,
    failing: str,
) -> None:
    cache, source, get = subject(make_cache, is_async, config("both"), tracked=tracked)
    with cache.enable():
        await fill_and_age(get, source)
        remote = cache._remote
        assert remote is not None

        def down(*args: Any, **kwargs: Any) -> Any:
            raise ConnectionError("Redis down")

        async def adown(*args: Any, **kwargs: Any) -> Any:
            raise ConnectionError("Redis down")

        names = ("get", "read_tracked", "get_with_ttl") if failing == "reads" else ("set", "write_tracked")
        for name in names:
            monkeypatch.setattr(remote, name, down)
            monkeypatch.setattr(remote, "a" + name, adown)
        source.value = "v2"
        assert await get("1") == "v1"  # LOCAL
        await eventually(lambda: refreshes(registry, "refresh_failed") == 1, what="the refresh to fail")
        assert await get("1") == "v1"  # LOCAL's entry stays too
        assert source.reads == (1 if failing == "reads" else 2)  # no read, no function run


async def test_off_by_default_a_hit_past_the_point_refreshes_nothing(
    make_cache: Callable[..., GCache], registry: CollectorRegistry, is_async: bool
) -> None:
    cache = make_cache()
    source = Source()
    conf = GCacheKeyConfig(ttl_sec={LOCAL: TTL, REMOTE: TTL}, ramp={LOCAL: 100, REMOTE: 100})
    get = cached(cache, is_async, source, conf, tracked=False)
    with cache.enable():
        await get("1")
        await asyncio.sleep(AGE + 0.1)
        assert await get("1") == "v1"
        await asyncio.sleep(0.1)
    assert source.reads == 1
    assert refreshes(registry, "refreshed") == 0


# -- where an entry's age comes from ---------------------------------------------------------------


def test_local_entries_are_judged_against_their_own_ttl() -> None:
    now = [100.0]
    store = LocalStore(10, Epochs(timer=lambda: now[0]), tracked=False, timer=lambda: now[0])
    store.put("short", "e", 1, ttl=5.0, epoch=0, grace=60.0)  # a jittered TTL, with a grace
    store.put("long", "e", 1, ttl=10.0, epoch=0)
    assert not store.due("short", 0.8)
    assert not store.due("long", 0.8)
    now[0] = 103.9
    assert not store.due("short", 0.8)
    now[0] = 104.0  # 80 % of its own 5 s, not of the grace
    assert store.due("short", 0.8)
    assert not store.due("long", 0.8)
    now[0] = 108.0
    assert store.due("long", 0.8)
    assert not store.due("missing", 0.8)


@pytest.mark.parametrize("tracked", [False, True], ids=["untracked", "tracked"])
async def test_remote_entries_written_with_jitter_and_grace_are_judged_against_their_own_ttl(
    make_cache: Callable[..., GCache], registry: CollectorRegistry, redis_client: redis.Redis, tracked: bool
) -> None:
    """An entry written with a jittered TTL of 1 s (configured 4 s) and 30 s of grace: due after
    half of its own second, where the configured TTL (or the grace) would say much later."""
    cache = make_cache()
    source = Source()
    conf = GCacheKeyConfig(
        ttl_sec={REMOTE: 4.0}, ramp={REMOTE: 100}, ttl_jitter=0.75, fail_safe_sec=30, refresh_ahead=AHEAD
    )
    get = cached(cache, True, source, conf, tracked=tracked)
    with cache.enable():
        await get("1")
        key = value_key("Ahead", "1")
        redis_client.pexpire(key, 31_000)  # as if the jitter drew its largest cut: 1 s + grace
        await asyncio.sleep(0.2)  # due by the configured 4 s, not by its own 1 s
        assert await get("1") == "v1"
        await asyncio.sleep(0.15)
        assert source.reads == 1
        await asyncio.sleep(AGE - 0.35)
        source.value = "v2"
        assert await get("1") == "v1"
        await eventually(lambda: refreshes(registry, "refreshed") == 1, what="the refresh to land")
        assert stored_value(redis_client, key) == "v2"


# -- the option ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [1, 1.0, 1.5, -0.1, "x", True, float("nan")])
def test_refresh_ahead_outside_its_range_is_refused(bad: Any) -> None:
    with pytest.raises(ConfigError, match=r"GCacheKeyConfig\.refresh_ahead must be"):
        GCacheKeyConfig(ttl_sec={REMOTE: 60}, ramp={REMOTE: 100}, refresh_ahead=bad)


def test_refresh_ahead_is_off_by_default_none_is_off_and_it_round_trips() -> None:
    assert GCacheKeyConfig().refresh_ahead == 0
    assert GCacheKeyConfig(refresh_ahead=None).refresh_ahead == 0  # type: ignore[arg-type]
    assert GCacheKeyConfig.loads('{"ttl_sec": {"remote": 1}, "refresh_ahead": null}').refresh_ahead == 0
    conf = GCacheKeyConfig(ttl_sec={REMOTE: 60}, ramp={REMOTE: 100}, refresh_ahead="0.8")  # type: ignore[arg-type]
    assert conf.refresh_ahead == 0.8
    assert conf.to_dict()["refresh_ahead"] == 0.8
    assert "refresh_ahead" not in GCacheKeyConfig().to_dict()
    assert GCacheKeyConfig.loads(conf.dumps()) == conf
    assert GCacheKeyConfig.model_validate(conf.model_dump()) == conf
    assert GCacheKeyConfig.model_validate_json(conf.model_dump_json()) == conf
    assert conf.model_copy(update={"refresh_ahead": 0.5}).refresh_ahead == 0.5
    assert GCacheKeyConfig.load_configs(GCacheKeyConfig.dump_configs({"U": conf})) == {"U": conf}


def cached_batch(
    cache: GCache,
    is_async: bool,
    source: Source,
    conf: GCacheKeyConfig,
    *,
    tracked: bool,
    asked: list[list[str]],
) -> Callable[[list[str]], Awaitable[Any]]:
    """``cached`` for a ``cached_many`` function of use case "Ahead": each id's value is the
    source's; ``asked`` records the ids of each run."""
    options: dict[str, Any] = {
        "key_type": "user_id", "ids_arg": "uids", "use_case": "Ahead", "default_config": conf,
        "track_for_invalidation": tracked,
    }  # fmt: skip

    def load(uids: list[str]) -> dict[str, str]:
        asked.append(list(uids))
        value, gate = source.start()
        if gate is not None:
            assert gate.wait(10)
        return {uid: f"{value}-{uid}" for uid in uids}

    if is_async:

        @cache.cached_many(**options)
        async def aread(uids: list[str]) -> dict[str, str]:
            return await asyncio.to_thread(load, uids)  # held off the loop

        return aread

    read = cache.cached_many(**options)(load)

    async def call(uids: list[str]) -> Any:
        return await asyncio.to_thread(read, uids)

    return call


async def fill_batch_and_age(get: Callable[[list[str]], Awaitable[Any]], source: Source) -> None:
    """Fill keys 1 and 2 in one batch and let their entries age past the refresh point."""
    assert await get(["1", "2"]) == {"1": "v1-1", "2": "v1-2"}
    await ran(source)
    await asyncio.sleep(AGE)


@pytest.mark.parametrize("layers", ["local", "remote", "both"])
async def test_a_batch_past_the_point_is_served_at_once_and_its_due_ids_refreshed_in_one_call(
    make_cache: Callable[..., GCache],
    registry: CollectorRegistry,
    redis_client: redis.Redis,
    is_async: bool,
    tracked: bool,
    layers: str,
) -> None:
    cache = make_cache()
    source, asked = Source(), list[list[str]]()
    get = cached_batch(cache, is_async, source, config(layers), tracked=tracked, asked=asked)
    with cache.enable():
        await fill_batch_and_age(get, source)
        assert await get(["3"]) == {"3": "v1-3"}  # a fresh entry beside the due ones
        await ran(source)
        source.value, source.gate = "v2", threading.Event()
        assert await get(["1", "2", "3"]) == {"1": "v1-1", "2": "v1-2", "3": "v1-3"}  # at once
        await ran(source)  # one refresh, held
        assert await get(["2", "1"]) == {"2": "v1-2", "1": "v1-1"}  # due, but refreshing: no second
        source.gate.set()
        await eventually(lambda: refreshes(registry, "refreshed") == 2, what="the refresh to land")
        assert await get(["1", "2", "3"]) == {"1": "v2-1", "2": "v2-2", "3": "v1-3"}
        assert asked == [["1", "2"], ["3"], ["1", "2"]]  # the due ids, once, together
        if REMOTE in LAYERS[layers]:
            assert stored_value(redis_client, value_key("Ahead", "1")) == "v2-1"
    assert refreshes(registry, "refresh_failed") == 0


@pytest.mark.parametrize("layers", ["local", "remote", "both"])
async def test_an_invalidation_during_a_batch_refresh_wins_for_its_id(
    make_cache: Callable[..., GCache], registry: CollectorRegistry, is_async: bool, layers: str
) -> None:
    cache, source, asked = make_cache(), Source(), list[list[str]]()
    get = cached_batch(cache, is_async, source, config(layers), tracked=True, asked=asked)
    with cache.enable():
        await fill_batch_and_age(get, source)
        source.value, source.gate = "v2", threading.Event()
        assert await get(["1", "2"]) == {"1": "v1-1", "2": "v1-2"}
        await ran(source)  # the refresh read v2 and is held
        source.value = "v3"
        await invalidate(cache, is_async, "1")
        source.gate.set()
        await eventually(lambda: refreshes(registry, "refused") == 1, what="id 1's write to be refused")
        assert refreshes(registry, "refreshed") == 1  # id 2's landed
        assert await get(["1", "2"]) == {"1": "v3-1", "2": "v2-2"}
        assert asked == [["1", "2"], ["1", "2"], ["1"]]  # invalidated: 1 computed again


async def test_a_batch_refresh_under_a_sticky_ramp_writes_remote_only_for_the_keys_remote_holds(
    make_cache: Callable[..., GCache], registry: CollectorRegistry, redis_client: redis.Redis, is_async: bool
) -> None:
    """``ramp_by="key"`` with REMOTE at 50 %: each id's refresh takes REMOTE part as its key does."""
    from gcache.readthrough.decisions import key_share

    ids = [str(i) for i in range(40)]
    held = {i for i in ids if key_share(value_key("Ahead", i)) < 50}
    assert 0 < len(held) < len(ids)
    conf = GCacheKeyConfig(
        ttl_sec={LOCAL: TTL, REMOTE: TTL}, ramp={LOCAL: 100, REMOTE: 50}, ramp_by="key", refresh_ahead=AHEAD
    )
    cache, source, asked = make_cache(), Source(), list[list[str]]()
    get = cached_batch(cache, is_async, source, conf, tracked=False, asked=asked)
    with cache.enable():
        await get(ids)
        await ran(source)
        await asyncio.sleep(AGE)
        source.value = "v2"
        assert await get(ids) == {i: f"v1-{i}" for i in ids}
        await eventually(lambda: refreshes(registry, "refreshed") == len(ids), what="the refresh to land")
        assert await get(ids) == {i: f"v2-{i}" for i in ids}
    assert asked == [ids, ids]
    in_redis = {i for i in ids if redis_client.exists(value_key("Ahead", i))}
    assert in_redis == held
    assert all(stored_value(redis_client, value_key("Ahead", i)) == f"v2-{i}" for i in held)
