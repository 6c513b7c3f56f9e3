"""Invalidations never lost (issue 20): one Redis did not take waits in the outbox and is applied
when Redis answers, and meanwhile the issuing process serves none of the entity's old entries.

Real Redis throughout: a private ``EmbeddedRedis`` killed (SIGKILL) or paused (SIGSTOP) and
brought back on the same port, or the suite's server with the invalidation itself made to fail
(the instance's ``invalidate``/``ainvalidate`` raising ``RemoteError`` while reads and writes
still work: the case where serving REMOTE's old entries would be possible). Sync and async.
Many waiting are replayed a pipeline per chunk: the round trips are counted (gcache's writes,
the server's socket reads and command statistics).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry

from gcache import GCache, GCacheConfig, RedisConfig, RemoteError
from gcache import _envelope as envelope
from gcache._embedded_redis import EmbeddedRedis
from gcache.remote import scripts
from gcache.urns import original_entity_key, original_value_key, watermark_key
from tests.behaviour._failover import pair
from tests.behaviour.test_invalidation import (
    BOTH,
    MODES,
    REMOTE_ONLY,
    Fn,
    fence_key,
    invalidate,
    stored,
    value_key,
)
from tests.conftest import count_writes, sample

DEPTH = "gcache_invalidation_outbox"
REPLAYS = "gcache_invalidation_replay_counter_total"
DROPPED = "gcache_invalidation_outbox_dropped_counter_total"
DISABLED = "gcache_disabled_counter_total"
MISS_REASONS = "gcache_miss_reason_counter_total"
BUS = "gcache_bus_message_counter_total"
REPLAYED_WITHIN = 10.0  # seconds for the outbox to drain once Redis answers (backoff at most 2 s)
USE_CASE = "Outbox"
FAST_FAILING = {"socket_timeout": 0.5, "socket_connect_timeout": 0.5}  # an invalidation's bounds


def fail_invalidations(
    monkeypatch: pytest.MonkeyPatch, cache: GCache, during: Callable[[], Any] | None = None
) -> None:
    """This cache's invalidations fail as a dropped connection would; reads and writes work.
    ``during`` runs first, while the invalidation is in flight (awaited by the async twin)."""
    remote = cache._remote
    assert remote is not None

    def refused(*args: Any) -> Any:
        if during is not None:
            during()
        raise RemoteError("invalidate", redis.ConnectionError("injected: connection refused"))

    async def arefused(*args: Any) -> Any:
        if during is not None:
            await during()
        raise RemoteError("invalidate", redis.ConnectionError("injected: connection refused"))

    async def replays_refused(*args: Any) -> Any:  # the caller's invalidation alone runs ``during``
        raise RemoteError("invalidate", redis.ConnectionError("injected: connection refused"))

    monkeypatch.setattr(remote, "invalidate", refused)
    monkeypatch.setattr(remote, "ainvalidate", arefused)
    # The outbox's replays, on the loop thread: one may start (backoff 50 ms) while the test still
    # awaits what ``during`` did, which must run once.
    monkeypatch.setattr(remote, "ainvalidate_many", replays_refused)


async def drained(cache: GCache, registry: CollectorRegistry, timeout: float = REPLAYED_WITHIN) -> float:
    """Wait (without blocking the loop) until the outbox is empty; the seconds it took."""
    start = time.monotonic()
    while sample(registry, DEPTH) or len(cache._outbox):
        assert time.monotonic() - start < timeout, f"outbox not drained within {timeout} s"
        await asyncio.sleep(0.02)
    return time.monotonic() - start


def fence_w(client: redis.Redis, id: str) -> int:
    return int(client.hget(fence_key(id), "w") or 0)


def server_us(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1_000_000 + int(micros)


# -- Redis killed or paused, then back --------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as s:
        yield s


def private_cache(server: EmbeddedRedis, registry: CollectorRegistry, **overrides: Any) -> GCache:
    return private_cache_at(server.url, registry, **overrides)


def private_cache_at(url: str, registry: CollectorRegistry, **overrides: Any) -> GCache:
    options: dict[str, Any] = {
        "redis_config": RedisConfig(url=url, redis_py_options=FAST_FAILING),
        "metrics_registry": registry,
        "breaker_probe_sec": 0.05,
        **overrides,
    }
    cache = GCache(GCacheConfig(**options))
    cache.start()
    return cache


@pytest.mark.slow
@MODES
async def test_an_invalidation_while_redis_is_killed_is_applied_when_it_is_back(
    server: EmbeddedRedis, mode: str
) -> None:
    registry = CollectorRegistry()
    cache = private_cache(server, registry)
    fn = Fn(cache, mode, use_case=USE_CASE, config=BOTH)
    admin = redis.Redis.from_url(server.admin_url)
    try:
        with cache.enable():
            assert await fn("1") == await fn("1") == ("1", 0, 1)
            killed_at = server_us(admin)
            server.kill()
            with pytest.raises(RemoteError):
                await invalidate(cache, mode, "user_id", "1")
            assert sample(registry, DEPTH) == 1
            for n in (2, 3, 4):  # down: the function runs every time, never the old value
                assert await fn("1") == ("1", 0, n)
            server.start()
            admin = redis.Redis.from_url(server.admin_url)
            start = time.monotonic()
            while len(cache._outbox):  # between the restart and the replay: still run each time
                n = fn.n + 1
                assert await fn("1") == ("1", 0, n)
                assert time.monotonic() - start < REPLAYED_WITHIN, "not replayed in time"
                await asyncio.sleep(0.02)
        assert sample(registry, DEPTH) == 0
        assert sample(registry, REPLAYS, result="applied") == 1
        # A restart without persistence lost the fence: the replay made it anew, its watermark
        # past the moment of the kill, so whatever was stamped before it is refused.
        assert fence_w(admin, "1") > killed_at
    finally:
        await cache.aclose()
        admin.close()


@pytest.mark.slow
@MODES
async def test_an_invalidation_while_redis_is_paused_raises_the_watermark_over_the_old_entry(
    server: EmbeddedRedis, mode: str
) -> None:
    """The old entry survives the outage (a pause keeps the dataset and the replication id, so
    only the watermark can refuse it): after the replay a second GCache does not serve it."""
    registry, other_registry = CollectorRegistry(), CollectorRegistry()
    cache = private_cache(server, registry)
    fn = Fn(cache, mode, use_case=USE_CASE, config=BOTH)
    admin = redis.Redis.from_url(server.admin_url)
    other: GCache | None = None
    try:
        with cache.enable():
            assert await fn("1") == ("1", 0, 1)
        old = stored(admin, value_key(USE_CASE, "1"))
        before = fence_w(admin, "1")
        server.pause()
        try:
            with pytest.raises(RemoteError):
                await invalidate(cache, mode, "user_id", "1")
            assert sample(registry, DEPTH) == 1
            with cache.enable():
                for n in (2, 3, 4):  # the function runs every time
                    assert await fn("1") == ("1", 0, n)
        finally:
            server.resume()
        await drained(cache, registry)
        assert sample(registry, REPLAYS, result="applied") == 1
        assert admin.get(value_key(USE_CASE, "1")) == old  # still there, and now under the watermark
        assert fence_w(admin, "1") > before
        assert envelope.decode(old).stamp_us <= fence_w(admin, "1")
        other = private_cache(server, other_registry)
        other_fn = Fn(other, mode, use_case=USE_CASE, config=BOTH)
        with other.enable():
            assert await other_fn("1") == ("1", 0, 1)  # its own function: the old entry refused
        assert sample(other_registry, MISS_REASONS, layer="REMOTE", reason="invalidated") == 1
    finally:
        await cache.aclose()
        if other is not None:
            await other.aclose()
        admin.close()


# -- Redis answers, the invalidation fails ----------------------------------------------------------


@dataclass
class Refusing:
    """A GCache on the suite's Redis whose invalidations fail (reads and writes work) until
    :meth:`answer`."""

    cache: GCache
    registry: CollectorRegistry
    redis: redis.Redis
    monkeypatch: pytest.MonkeyPatch

    def metric(self, name: str, **labels: str) -> float:
        return sample(self.registry, name, **labels)

    async def answer(self) -> None:
        """Redis takes invalidations again; returns once the outbox has drained."""
        self.monkeypatch.undo()
        self.cache._outbox.wake()
        await drained(self.cache, self.registry)


@pytest.fixture
def refusing(
    make_cache: Callable[..., GCache],
    redis_client: redis.Redis,
    registry: CollectorRegistry,
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[..., Refusing]:
    def make(**overrides: Any) -> Refusing:
        cache = make_cache(breaker_probe_sec=0.05, **overrides)
        fail_invalidations(monkeypatch, cache)
        return Refusing(cache, registry, redis_client, monkeypatch)

    return make


@MODES
async def test_a_held_entity_is_served_by_neither_layer_until_its_invalidation_is_applied(
    refusing: Callable[..., Refusing], mode: str
) -> None:
    r = refusing()
    fn = Fn(r.cache, mode, use_case=USE_CASE, config=BOTH)
    with r.cache.enable():
        assert await fn("1") == ("1", 0, 1)
        assert await fn("2") == ("2", 0, 2)
    old = stored(r.redis, value_key(USE_CASE, "1"))
    with pytest.raises(RemoteError):
        await invalidate(r.cache, mode, "user_id", "1")
    assert r.metric(DEPTH) == 1
    with r.cache.enable():
        for n in (3, 4, 5):  # REMOTE still holds the old entry under the old watermark
            assert await fn("1") == ("1", 0, n)
        assert await fn("2") == ("2", 0, 2)  # another entity: cached as before
    assert r.metric(DISABLED, use_case=USE_CASE, layer="REMOTE", reason="invalidation_pending") == 3
    assert r.redis.get(value_key(USE_CASE, "1")) == old  # nothing written back meanwhile
    await r.answer()
    assert r.metric(REPLAYS, result="applied") == 1
    with r.cache.enable():
        assert await fn("1") == ("1", 0, 6)  # the old entry refused by the raised watermark
        assert await fn("1") == ("1", 0, 6)  # and the new one cached
    assert r.metric(MISS_REASONS, use_case=USE_CASE, layer="REMOTE", reason="invalidated") == 1


@MODES
async def test_repeats_merge_into_one_replay_with_the_largest_buffer(
    refusing: Callable[..., Refusing], mode: str
) -> None:
    r = refusing()
    for buffer_ms in (0, 60_000, 100):
        with pytest.raises(RemoteError):
            await invalidate(r.cache, mode, "user_id", "1", future_buffer_ms=buffer_ms)
    assert r.metric(DEPTH) == 1
    before = server_us(r.redis)
    await r.answer()
    after = server_us(r.redis)
    assert r.metric(REPLAYS, result="applied") == 1
    # One replay, at a server time between the two readings, with the 60 s buffer.
    assert before + 60_000_000 <= fence_w(r.redis, "1") <= after + 60_000_000


@MODES
async def test_a_full_outbox_drops_the_oldest_and_holds_every_tracked_entity_until_it_drains(
    refusing: Callable[..., Refusing], caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    r = refusing(invalidation_outbox_size=2)
    fn = Fn(r.cache, mode, use_case=USE_CASE, config=REMOTE_ONLY)
    with r.cache.enable():
        for id in ("1", "2", "3", "9"):
            await fn(id)
    assert fn.n == 4
    watermarks = {id: fence_w(r.redis, id) for id in ("1", "2", "3")}
    for id in ("1", "2", "3"):
        with pytest.raises(RemoteError):
            await invalidate(r.cache, mode, "user_id", id)
    assert r.metric(DEPTH) == 2
    assert r.metric(DROPPED, reason="full") == 1
    assert "dropped the invalidation of '{urn:gcache:user_id:1}'" in caplog.text
    with r.cache.enable():
        assert await fn("9") == ("9", 0, 5)  # never invalidated, but REMOTE is not trusted now
    await r.answer()
    assert fence_w(r.redis, "2") > watermarks["2"]
    assert fence_w(r.redis, "3") > watermarks["3"]
    assert fence_w(r.redis, "1") == watermarks["1"]  # the dropped one never reached Redis
    with r.cache.enable():
        assert await fn("9") == ("9", 0, 4)  # drained: REMOTE trusted again


@pytest.mark.parametrize("raises", [True, False], ids=["raises", "returns"])
@MODES
async def test_invalidation_outbox_raises_decides_whether_a_kept_invalidation_raises(
    refusing: Callable[..., Refusing], mode: str, raises: bool
) -> None:
    r = refusing(invalidation_outbox_raises=raises)
    if raises:
        with pytest.raises(RemoteError):
            await invalidate(r.cache, mode, "user_id", "1")
    else:
        await invalidate(r.cache, mode, "user_id", "1")
    assert r.metric(DEPTH) == 1
    assert r.metric("gcache_error_counter_total", layer="REMOTE", error="ConnectionError") == 1


@MODES
async def test_without_an_outbox_a_failed_invalidation_raises_and_is_lost(
    refusing: Callable[..., Refusing], mode: str
) -> None:
    r = refusing(invalidation_outbox_size=0, invalidation_outbox_raises=False)
    fn = Fn(r.cache, mode, use_case=USE_CASE, config=REMOTE_ONLY)
    with r.cache.enable():
        assert await fn("1") == ("1", 0, 1)
    with pytest.raises(RemoteError):  # nothing kept: raised whatever invalidation_outbox_raises says
        await invalidate(r.cache, mode, "user_id", "1")
    assert r.metric(DEPTH) == 0
    with r.cache.enable():
        assert await fn("1") == ("1", 0, 1)  # REMOTE's entry served: what the outbox prevents


@MODES
async def test_legacy_compat_invalidation_is_replayed_into_the_originals_watermark(
    refusing: Callable[..., Refusing], mode: str
) -> None:
    r = refusing(legacy_compat=True)
    fn = Fn(r.cache, mode, use_case=USE_CASE, config=REMOTE_ONLY)
    entity = original_entity_key("urn:gcache", "user_id", "1")
    key = original_value_key(entity, (), USE_CASE, tracked=True)
    with r.cache.enable():
        assert await fn("1") == ("1", 0, 1)
    old = stored(r.redis, key)
    with pytest.raises(RemoteError):
        await invalidate(r.cache, mode, "user_id", "1")
    with r.cache.enable():
        assert await fn("1") == ("1", 0, 2)  # held: the original's entry is not served
    assert r.redis.get(key) == old
    before_ms = server_us(r.redis) // 1000
    await r.answer()
    assert int(r.redis.get(watermark_key(entity)) or 0) >= before_ms  # the original's string, ms
    with r.cache.enable():
        assert await fn("1") == ("1", 0, 3)  # the old entry refused under the replayed watermark


@MODES
async def test_close_gives_up_what_waits_counted_and_logged(
    refusing: Callable[..., Refusing], caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    r = refusing()
    with pytest.raises(RemoteError):
        await invalidate(r.cache, mode, "user_id", "1")
    if mode == "async":
        await r.cache.aclose()
    else:
        r.cache.close()
    assert r.metric(DROPPED, reason="closed") == 1
    assert r.metric(DEPTH) == 0
    assert "GCache closed with 1 invalidation(s) Redis never took" in caplog.text
    assert fence_w(r.redis, "1") == 0  # Redis never got it: a crash would lose it the same way


@MODES
async def test_a_read_racing_a_failed_invalidation_leaves_no_old_value_in_local(
    refusing: Callable[..., Refusing], monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """A call that reads REMOTE while the invalidation is in flight (after its first LOCAL bump,
    before Redis refuses it) may return the old value, as it started first, but what it filled
    LOCAL with is stale once the invalidation has raised."""
    r = refusing()
    fn = Fn(r.cache, mode, use_case=USE_CASE, config=BOTH)
    raced: list[tuple[str, int, int]] = []

    async def concurrent_read() -> None:
        raced.append(await fn("1"))

    def sync_concurrent_read() -> None:
        raced.append(fn._func("1"))

    with r.cache.enable():
        assert await fn("1") == ("1", 0, 1)
        monkeypatch.undo()
        during = concurrent_read if mode == "async" else sync_concurrent_read
        fail_invalidations(monkeypatch, r.cache, during=during)
        with pytest.raises(RemoteError):
            await invalidate(r.cache, mode, "user_id", "1")
        assert raced == [("1", 0, 1)]  # REMOTE's entry, read before Redis refused
        assert await fn("1") == ("1", 0, 2)  # not the LOCAL copy the racing read made


def batch_fn(cache: GCache, mode: str) -> tuple[Callable[[list[str]], Any], list[list[str]]]:
    """A tracked ``cached_many`` function (sync or async by ``mode``) called as a coroutine, each id's
    value ``(id, run)`` with ``run`` the number of its runs so far; and the ids of each run, sorted."""
    asked: list[list[str]] = []
    decorate = cache.cached_many(
        key_type="user_id",
        ids_arg="uids",
        use_case=USE_CASE,
        track_for_invalidation=True,
        default_config=BOTH,
    )

    def compute(uids: list[str]) -> dict[str, tuple[str, int]]:
        asked.append(sorted(uids))
        return {uid: (uid, len(asked)) for uid in uids}

    async def acompute(uids: list[str]) -> dict[str, tuple[str, int]]:
        return compute(uids)

    cached: Callable[[list[str]], Any] = decorate(acompute if mode == "async" else compute)

    async def call(uids: list[str]) -> Any:
        result = cached(uids)
        return await result if mode == "async" else result

    return call, asked


@MODES
async def test_a_batch_runs_the_function_for_its_held_ids_only(
    refusing: Callable[..., Refusing], mode: str
) -> None:
    r = refusing()
    call, asked = batch_fn(r.cache, mode)
    with r.cache.enable():
        assert await call(["1", "2"]) == {"1": ("1", 1), "2": ("2", 1)}
    with pytest.raises(RemoteError):
        await invalidate(r.cache, mode, "user_id", "1")
    with r.cache.enable():
        assert await call(["1", "2"]) == {"1": ("1", 2), "2": ("2", 1)}
        r.cache._local.clear("flushed")  # LOCAL gone: REMOTE still holds both old entries
        assert await call(["1", "2"]) == {"1": ("1", 3), "2": ("2", 1)}
    assert asked == [["1", "2"], ["1"], ["1"]]
    await r.answer()
    with r.cache.enable():
        assert await call(["1", "2"]) == {"1": ("1", 4), "2": ("2", 1)}  # the old "1" refused
        assert await call(["1", "2"]) == {"1": ("1", 4), "2": ("2", 1)}  # and the new one cached


# -- many waiting: replayed in chunks, a pipeline each ---------------------------------------------

MANY = 2_000
EVALSHA = b"$7\r\nEVALSHA\r\n"


def watermarks(client: redis.Redis, ids: list[str]) -> list[int]:
    pipe = client.pipeline(transaction=False)
    for id in ids:
        pipe.hget(fence_key(id), "w")
    return [int(w or 0) for w in pipe.execute()]


def reads_processed(client: redis.Redis) -> int:
    """The server's reads from its clients' sockets so far, after this one."""
    return int(client.info("stats")["total_reads_processed"])


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
@MODES
async def test_many_waiting_invalidations_are_replayed_a_pipeline_per_chunk_and_none_is_served_stale(
    refusing: Callable[..., Refusing], make_cache: Callable[..., GCache], mode: str, signed: bool
) -> None:
    """2,000 entities cached, here and in another process's LOCAL, then invalidated while Redis
    refuses invalidations (reads work, the old entries stay): once it takes them again, 4
    pipelines of 500 apply them all (the writes gcache sent, and the server's reads of its
    sockets, not 2,000 of each), every watermark above its entry, each item's bus message
    published (signed with signing keys: each accepted), and neither process serves an old entry."""
    keys: dict[str, Any] = {"signing_keys": ["outbox-signing-key-0123456789"]} if signed else {}
    r = refusing(invalidation_outbox_raises=False, **keys)
    ids = [str(n) for n in range(MANY)]
    call, asked = batch_fn(r.cache, mode)
    other_registry = CollectorRegistry()
    other = make_cache(metrics_registry=other_registry, **keys)
    other_call, other_asked = batch_fn(other, mode)
    with r.cache.enable(), other.enable():
        assert await call(ids) == {id: (id, 1) for id in ids}
        assert await other_call(ids) == {id: (id, 1) for id in ids}  # REMOTE's, now in its LOCAL
    assert other_asked == []
    before = watermarks(r.redis, ids)
    for id in ids:
        await invalidate(r.cache, mode, "user_id", id)
    assert r.metric(DEPTH) == MANY
    with r.cache.enable():
        assert await call(ids[:3]) == {id: (id, 2) for id in ids[:3]}  # held: run, not served
    r.redis.script_load(scripts.INVALIDATE)  # as after any invalidation: no NOSCRIPT here
    failed = r.metric(REPLAYS, result="failed")  # tried while refused
    r.monkeypatch.undo()  # Redis takes invalidations again
    with pytest.MonkeyPatch.context() as counting:
        sent = count_writes(counting)
        reads = reads_processed(r.redis)
        r.cache._outbox.wake()
        await drained(r.cache, r.registry)
        reads = reads_processed(r.redis) - reads - 1
    pipelines = [w for w in sent if EVALSHA in w]
    assert [w.count(EVALSHA) for w in pipelines] == [500] * 4
    assert reads < MANY / 20  # a pipeline of 500 is read in a few reads; one by one: 2,000
    assert r.metric(REPLAYS, result="applied") == MANY
    assert r.metric(REPLAYS, result="failed") == failed
    assert r.metric(BUS, key_type="user_id", direction="published", kind="invalidate") == MANY
    assert not r.cache._local.epochs.held
    after = watermarks(r.redis, ids)
    old = max(envelope.decode(stored(r.redis, value_key(USE_CASE, id))).stamp_us for id in ids)
    assert all(a > b for a, b in zip(after, before, strict=True))
    assert min(after) >= old
    start = time.monotonic()
    while sample(other_registry, BUS, key_type="user_id", direction="received", kind="invalidate") < MANY:
        assert time.monotonic() - start < REPLAYED_WITHIN, "the bus messages did not all arrive"
        await asyncio.sleep(0.02)
    samples = [s for m in other_registry.collect() for s in m.samples if s.value]
    assert [s for s in samples if s.labels.get("direction") == "dropped"] == []  # none refused
    with other.enable():
        assert await other_call(ids) == {id: (id, 1) for id in ids}  # its own run for every id
    assert other_asked == [sorted(ids)]
    assert sample(other_registry, MISS_REASONS, layer="REMOTE", reason="invalidated") == MANY
    with r.cache.enable():
        assert await call(ids) == {id: (id, 1) for id in ids}  # this process: the other's new entries
    assert [len(run) for run in asked] == [MANY, 3]


@MODES
async def test_an_item_whose_script_fails_in_its_chunk_waits_and_the_rest_are_applied(
    refusing: Callable[..., Refusing], mode: str
) -> None:
    """Redis answers the chunk but one entity's script fails there (its fence key holds a list:
    WRONGTYPE): that one stays waiting and held, retried with backoff until it applies; the
    others of its chunk and the chunks after it are applied in the same round."""
    r = refusing()
    r.cache._outbox._chunk = 10
    ids = [str(n) for n in range(30)]
    fn = Fn(r.cache, mode, use_case=USE_CASE, config=BOTH)
    for id in ids:
        with pytest.raises(RemoteError):
            await invalidate(r.cache, mode, "user_id", id)
    r.redis.rpush(fence_key("15"), b"not a fence")
    r.monkeypatch.undo()
    r.cache._outbox.wake()
    start = time.monotonic()
    while r.metric(REPLAYS, result="applied") < 29:
        assert time.monotonic() - start < REPLAYED_WITHIN, "not replayed in time"
        await asyncio.sleep(0.02)
    assert r.metric(DEPTH) == 1
    assert r.metric(REPLAYS, result="failed") >= 1
    assert sorted(r.cache._local.epochs.held) == ["{urn:gcache:user_id:15}"]
    assert all(w > 0 for w in watermarks(r.redis, [id for id in ids if id != "15"]))
    with r.cache.enable():
        assert await fn("15") == ("15", 0, 1)
        assert await fn("15") == ("15", 0, 2)  # held: run every time
        assert await fn("16") == await fn("16") == ("16", 0, 3)  # applied: cached again
    r.redis.delete(fence_key("15"))
    await drained(r.cache, r.registry)
    assert r.metric(REPLAYS, result="applied") == 30
    assert fence_w(r.redis, "15") > 0
    assert not r.cache._local.epochs.held


@pytest.mark.slow
@MODES
async def test_many_invalidations_while_redis_is_killed_are_applied_in_few_round_trips_once_back(
    server: EmbeddedRedis, mode: str
) -> None:
    """2,000 entities invalidated while Redis is killed; restarted, it has lost the scripts too
    (each chunk's first EVALSHA answers NOSCRIPT: that item runs through the script, which loads
    it, and the rest go in one more pipeline): all applied, every watermark past the kill, in a
    few dozen reads of the new server's sockets, connecting included, not 2,000."""
    registry = CollectorRegistry()
    cache = private_cache(server, registry, invalidation_outbox_raises=False)
    ids = [str(n) for n in range(MANY)]
    admin = redis.Redis.from_url(server.admin_url)
    try:
        call, asked = batch_fn(cache, mode)
        with cache.enable():
            assert await call(ids) == {id: (id, 1) for id in ids}
        killed_at = server_us(admin)
        admin.close()
        server.kill()
        for id in ids:
            await invalidate(cache, mode, "user_id", id)
        assert sample(registry, DEPTH) == MANY
        server.start()
        admin = redis.Redis.from_url(server.admin_url)
        await drained(cache, registry)
        assert reads_processed(admin) < MANY / 20
        stats = admin.info("commandstats")
        evalsha = stats["cmdstat_evalsha"]
        # The first chunk's 500 NOSCRIPT, and its first item's through the script before the load
        assert (evalsha["calls"] - evalsha["failed_calls"], evalsha["failed_calls"]) == (MANY, 501)
        assert stats["cmdstat_script|load"]["calls"] == 1
        assert sample(registry, REPLAYS, result="applied") == MANY
        assert min(watermarks(admin, ids)) > killed_at
        with cache.enable():
            assert await call(ids[:5]) == {id: (id, 2) for id in ids[:5]}  # released: cached anew
            assert await call(ids[:5]) == {id: (id, 2) for id in ids[:5]}
        assert [len(run) for run in asked] == [MANY, 5]
    finally:
        await cache.aclose()
        admin.close()


@pytest.mark.slow
@MODES
async def test_a_chunk_redis_does_not_answer_leaves_it_and_the_rest_waiting_until_redis_is_back(
    server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """Redis is paused after the first chunk's round trip: the second times out, the round ends
    (the third is not sent), 20 of 30 wait and stay held; resumed, all are applied."""
    registry = CollectorRegistry()
    cache = private_cache(server, registry, invalidation_outbox_raises=False)
    cache._outbox._chunk = 10
    ids = [str(n) for n in range(30)]
    admin = redis.Redis.from_url(server.admin_url)
    remote = cache._remote
    assert remote is not None
    try:
        fail_invalidations(monkeypatch, cache)
        for id in ids:
            await invalidate(cache, mode, "user_id", id)
        monkeypatch.undo()
        replay = remote.ainvalidate_many
        paused: list[bool] = []

        async def pause_after_the_first(items: Any) -> Any:
            results = await replay(items)
            if not paused:
                server.pause()
                paused.append(True)
            return results

        monkeypatch.setattr(remote, "ainvalidate_many", pause_after_the_first)
        before = sample(registry, REPLAYS, result="failed")
        cache._outbox.wake()
        start = time.monotonic()
        while sample(registry, REPLAYS, result="failed") == before:
            assert time.monotonic() - start < REPLAYED_WITHIN, "the second chunk not tried"
            await asyncio.sleep(0.02)
        assert sample(registry, REPLAYS, result="failed") == before + 10  # the second chunk's
        assert sample(registry, REPLAYS, result="applied") == 10
        assert len(cache._outbox) == 20
        assert cache._local.epochs.held == {f"{{urn:gcache:user_id:{n}}}" for n in range(10, 30)}
        server.resume()
        await drained(cache, registry)
        assert sample(registry, REPLAYS, result="applied") == 30
        assert min(watermarks(admin, ids)) > 0
    finally:
        server.resume()
        await cache.aclose()
        admin.close()


@pytest.mark.slow
@MODES
async def test_with_invalidate_replicas_a_chunk_is_confirmed_by_one_wait_or_counted_unconfirmed(
    monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """Each chunk's pipeline ends in one WAIT: while the replica answers, every item is applied and
    the replica holds its watermark; while it is paused, each is applied on the primary alone,
    counted ``unconfirmed``, and released (replaying cannot make a replica confirm sooner)."""
    with pair() as p:
        # A replica just synced acknowledges new writes only after a while (up to a second): a
        # write of the harness's own, then its WAIT, so that the first chunk's is not the one
        # that waits for it past 300 ms.
        p.primary_admin.publish("harness-sync", "1")  # replicated, and no key
        p.synced()
        registry = CollectorRegistry()
        cache = private_cache_at(p.url, registry, invalidate_replicas=1, invalidate_wait_ms=300)
        try:
            for round, result in ((range(0, 30), "applied"), (range(30, 60), "unconfirmed")):
                ids = [str(n) for n in round]
                fail_invalidations(monkeypatch, cache)
                for id in ids:
                    with pytest.raises(RemoteError):
                        await invalidate(cache, mode, "user_id", id)
                if result == "unconfirmed":  # before the undo: a replay due meanwhile would be confirmed
                    p.replica.pause()
                monkeypatch.undo()
                cache._outbox.wake()
                await drained(cache, registry)
                p.replica.resume()
                assert sample(registry, REPLAYS, result=result) == 30
                assert min(watermarks(p.primary_admin, ids)) > 0
                assert not cache._local.epochs.held
            p.synced()
            assert min(watermarks(p.replica_admin, [str(n) for n in range(60)])) > 0
        finally:
            p.replica.resume()
            await cache.aclose()
