"""Race harness: once an invalidation returned, no read that starts afterwards sees older data.

DESIGN.md, "Invalidation: never serve what was invalidated". A fake source of truth holds a
version per entity. Readers call a tracked cached function that reads the source after a random
delay (and returns after another one), so reads, computations, cache writes and invalidations
interleave in every order. One writer bumps an entity's version in the source and THEN
invalidates it, recording when the invalidation returned and the version it wrote. The checker
then looks for a violation: a read that started after an invalidation of its entity returned,
yet returned a version lower than the one written before that invalidation.

The same checker is run against deliberately broken caches (a delete-on-invalidate dict, which
has the read-compute-write race; an untracked use case, which ignores invalidations) and must
find violations there, so a zero here means something. Every run also asserts that the cache
served hits and that the library refused stale writes (computations really raced invalidations).
The clock-skew variant runs with ``time.time``/``time.time_ns`` 30 s ahead of or behind the Redis
clock for the whole process. One test replays the same-instance overlap step by step.
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import random
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import pytest
import redis
from prometheus_client import CollectorRegistry

from gcache import CacheLayer, GCache, GCacheKeyConfig, RedisConfig, RemoteError
from gcache.remote import RemoteCache
from tests.behaviour._failover import pair
from tests.conftest import sample

KEY_TYPE = "user_id"
ENTITIES = ("1", "2", "3")
READERS = 8
ROUNDS = 400  # invalidations per run
MAX_DELAY = 0.002  # the function waits up to this before reading the source, and again after

BOTH = GCacheKeyConfig.enabled(60)
REMOTE_ONLY = GCacheKeyConfig(ttl_sec={CacheLayer.REMOTE: 60}, ramp={CacheLayer.REMOTE: 100})
# refresh_ahead: entries of 0.3 s refreshed once 3 ms old, so that background refreshes (fenced
# writes) run all through the race
AHEAD_TTL, AHEAD = 0.3, 0.01

MODES = pytest.mark.parametrize("mode", ["async", "sync"])
SETUPS = pytest.mark.parametrize(
    "setup", ["same_instance", "other_instance", "merged_reads", "failing_reads"]
)

REQUESTS = "gcache_request_counter_total"
MISSES = "gcache_miss_counter_total"
ERRORS = "gcache_error_counter_total"
WRITES = "gcache_write_counter_total"


# -- records and the checker ----------------------------------------------------------------------


class Read(NamedTuple):
    start: float  # time.monotonic() just before the call
    entity: str
    version: int


class Invalidation(NamedTuple):
    returned: float  # time.monotonic() just after invalidate returned
    entity: str
    version: int  # written to the source before the invalidation


class Violation(NamedTuple):
    read: Read
    required: int  # the highest version written before an invalidation that returned before the read
    late: float  # seconds from the first invalidation the read should have seen to the read's start


def find_violations(reads: list[Read], invalidations: list[Invalidation]) -> list[Violation]:
    """Reads that started after an invalidation of their entity returned but saw an older version."""
    returned: dict[str, list[float]] = {}
    floor: dict[str, list[int]] = {}  # running maximum of the versions, in order of return
    for inv in sorted(invalidations):
        returned.setdefault(inv.entity, []).append(inv.returned)
        versions = floor.setdefault(inv.entity, [])
        versions.append(max(inv.version, versions[-1] if versions else inv.version))
    found = []
    for read in reads:
        times = returned.get(read.entity)
        if not times:
            continue
        before = bisect.bisect_left(times, read.start)  # invalidations that returned before the start
        versions = floor[read.entity]
        if before and read.version < versions[before - 1]:
            first = bisect.bisect_right(versions, read.version)  # the first one it should have seen
            found.append(Violation(read, versions[before - 1], read.start - times[first]))
    return found


def describe(violations: list[Violation]) -> str:
    if not violations:
        return "no violations"
    late = sorted(v.late for v in violations)
    shown = "; ".join(
        f"entity {v.read.entity} got v{v.read.version}, needed v{v.required}, {v.late * 1000:.2f} ms late"
        for v in violations[:5]
    )
    return (
        f"{len(violations)} reads started after an invalidation returned yet saw an older version "
        f"(up to {late[-1] * 1000:.1f} ms after it, median {late[len(late) // 2] * 1000:.2f} ms): {shown}"
    )


# -- the source of truth and the subjects under test ----------------------------------------------


class Source:
    """Versioned values per entity, in process, behind a lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._versions = dict.fromkeys(ENTITIES, 0)
        self.computations = 0

    def read(self, entity: str) -> int:
        with self._lock:
            return self._versions[entity]

    def bump(self, entity: str) -> int:
        with self._lock:
            self._versions[entity] += 1
            return self._versions[entity]

    def computed(self) -> None:
        """Counts a run of the function (a read the cache did not serve)."""
        with self._lock:
            self.computations += 1


@dataclass
class Subject:
    """What a run drives: how a reader reads an entity and how the writer invalidates one.

    Exactly the pair for the run's mode is set: ``aread``/``ainvalidate`` or ``read``/``invalidate``.
    """

    aread: Callable[[str], Awaitable[int]] | None = None
    ainvalidate: Callable[[str], Awaitable[None]] | None = None
    read: Callable[[str], int] | None = None
    invalidate: Callable[[str], None] | None = None


def cached_subject(
    mode: str,
    source: Source,
    reader: GCache,
    writer: GCache,
    *,
    use_case: str,
    config: GCacheKeyConfig,
    tracked: bool = True,
) -> Subject:
    """A cached function on ``reader`` over the source; ``writer`` invalidates."""
    decorate = reader.cached(
        key_type=KEY_TYPE,
        id_arg="uid",
        use_case=use_case,
        track_for_invalidation=tracked,
        default_config=config,
    )
    if mode == "async":

        async def acompute(uid: str) -> int:
            await asyncio.sleep(random.uniform(0, MAX_DELAY))
            version = source.read(uid)
            await asyncio.sleep(random.uniform(0, MAX_DELAY))
            source.computed()
            return version

        afn = decorate(acompute)

        async def aread(entity: str) -> int:
            with reader.enable():
                version: int = await afn(entity)
                return version

        async def ainvalidate(entity: str) -> None:
            await writer.ainvalidate(KEY_TYPE, entity)

        return Subject(aread=aread, ainvalidate=ainvalidate)

    def compute(uid: str) -> int:
        time.sleep(random.uniform(0, MAX_DELAY))
        version = source.read(uid)
        time.sleep(random.uniform(0, MAX_DELAY))
        source.computed()
        return version

    fn = decorate(compute)

    def read(entity: str) -> int:
        with reader.enable():
            version: int = fn(entity)
            return version

    def invalidate(entity: str) -> None:
        writer.invalidate(KEY_TYPE, entity)

    return Subject(read=read, invalidate=invalidate)


class NaiveCache:
    """A dict that deletes on invalidation: it has the read-compute-write race gcache closes.

    A reader that read the source before the writer's bump stores its value after the writer's
    delete, and the old version is then served to reads that start after the invalidation.
    """

    def __init__(self, source: Source) -> None:
        self._source = source
        self._values: dict[str, int] = {}

    def subject(self, mode: str) -> Subject:
        source, values = self._source, self._values
        if mode == "async":

            async def aread(entity: str) -> int:
                version = values.get(entity)
                if version is None:
                    await asyncio.sleep(random.uniform(0, MAX_DELAY))
                    version = source.read(entity)
                    await asyncio.sleep(random.uniform(0, MAX_DELAY))
                    source.computed()
                    values[entity] = version
                return version

            async def ainvalidate(entity: str) -> None:
                values.pop(entity, None)

            return Subject(aread=aread, ainvalidate=ainvalidate)

        def read(entity: str) -> int:
            version = values.get(entity)
            if version is None:
                time.sleep(random.uniform(0, MAX_DELAY))
                version = source.read(entity)
                time.sleep(random.uniform(0, MAX_DELAY))
                source.computed()
                values[entity] = version
            return version

        def invalidate(entity: str) -> None:
            values.pop(entity, None)

        return Subject(read=read, invalidate=invalidate)


# -- the harness ------------------------------------------------------------------------------------


@dataclass
class Outcome:
    reads: list[Read] = field(default_factory=list)
    invalidations: list[Invalidation] = field(default_factory=list)

    @property
    def violations(self) -> list[Violation]:
        return find_violations(self.reads, self.invalidations)

    def reads_after_an_invalidation(self) -> int:
        """Reads that started after at least one invalidation of their entity had returned."""
        first: dict[str, float] = {}
        for inv in self.invalidations:
            first[inv.entity] = min(inv.returned, first.get(inv.entity, inv.returned))
        return sum(1 for r in self.reads if r.entity in first and r.start > first[r.entity])


def _pause(rng: random.Random) -> float:
    """The writer's pause before a round; a third of the rounds follow the previous at once."""
    return 0.0 if rng.random() < 1 / 3 else rng.uniform(0, 0.003)


def _next_entity(rng: random.Random, last: str) -> str:
    """Often the entity just invalidated, so invalidations land on computations in flight."""
    return last if rng.random() < 0.4 else rng.choice(ENTITIES)


Hook = Callable[[int], None]  # called by the writer before each round, with its number


async def arun(
    subject: Subject, source: Source, *, seed: int, rounds: int = ROUNDS, hook: Hook | None = None
) -> Outcome:
    """READERS asyncio tasks read while one task bumps and invalidates ``rounds`` times."""
    aread, ainvalidate = subject.aread, subject.ainvalidate
    assert aread is not None
    assert ainvalidate is not None
    outcome = Outcome()
    done = False

    async def reader(rng: random.Random) -> None:
        while not done:
            entity = rng.choice(ENTITIES)
            start = time.monotonic()
            version = await aread(entity)
            outcome.reads.append(Read(start, entity, version))
            await asyncio.sleep(0)  # a LOCAL hit never yields: let the writer run

    async def writer(rng: random.Random) -> None:
        nonlocal done
        entity = rng.choice(ENTITIES)
        try:
            for n in range(rounds):
                pause = _pause(rng)
                await asyncio.sleep(pause)
                if hook is not None:
                    hook(n)
                entity = _next_entity(rng, entity)
                version = source.bump(entity)
                await ainvalidate(entity)
                outcome.invalidations.append(Invalidation(time.monotonic(), entity, version))
        finally:
            done = True

    rngs = [random.Random(seed * 100 + i) for i in range(READERS + 1)]
    await asyncio.gather(writer(rngs[0]), *(reader(rng) for rng in rngs[1:]))
    return outcome


def run_threads(
    subject: Subject, source: Source, *, seed: int, rounds: int = ROUNDS, hook: Hook | None = None
) -> Outcome:
    """READERS threads read while one thread bumps and invalidates ``rounds`` times."""
    read, invalidate = subject.read, subject.invalidate
    assert read is not None
    assert invalidate is not None
    done = threading.Event()

    def reader(rng: random.Random) -> list[Read]:
        reads: list[Read] = []
        while not done.is_set():
            entity = rng.choice(ENTITIES)
            start = time.monotonic()
            version = read(entity)
            reads.append(Read(start, entity, version))
            time.sleep(0)  # let the writer have the GIL between reads
        return reads

    def writer(rng: random.Random) -> list[Invalidation]:
        invalidations: list[Invalidation] = []
        entity = rng.choice(ENTITIES)
        try:
            for n in range(rounds):
                time.sleep(_pause(rng))
                if hook is not None:
                    hook(n)
                entity = _next_entity(rng, entity)
                version = source.bump(entity)
                invalidate(entity)
                invalidations.append(Invalidation(time.monotonic(), entity, version))
        finally:
            done.set()
        return invalidations

    rngs = [random.Random(seed * 100 + i) for i in range(READERS + 1)]
    with concurrent.futures.ThreadPoolExecutor(READERS + 1, thread_name_prefix="race") as pool:
        writing = pool.submit(writer, rngs[0])
        reading = [pool.submit(reader, rng) for rng in rngs[1:]]
        outcome = Outcome(invalidations=writing.result())
        for future in reading:
            outcome.reads.extend(future.result())
    return outcome


async def run(mode: str, subject: Subject, source: Source, *, seed: int, hook: Hook | None = None) -> Outcome:
    if mode == "async":
        return await arun(subject, source, seed=seed, hook=hook)
    return await asyncio.to_thread(run_threads, subject, source, seed=seed, hook=hook)


# -- the cache under test --------------------------------------------------------------------------


def build(
    setup: str,
    mode: str,
    source: Source,
    make_cache: Callable[..., GCache],
    use_case: str,
    ahead: bool = False,
) -> tuple[Subject, GCache]:
    """The subject for a setup, and the GCache the readers use.

    same_instance: readers and writer share one GCache with LOCAL and REMOTE.
    other_instance: readers on a second GCache on the same Redis (as another process would be),
    REMOTE only: the exact guarantee across processes is REMOTE's.
    merged_reads: as other_instance, with two pooled connections for the readers, so that most
    tracked reads queue for one and merge into a read another reader has not sent yet.
    failing_reads: as other_instance, with one reader's REMOTE read in four failing once sent (as
    a timed-out read would): callers without a read of their own, or waiting on a read that
    failed, have no fences to compare, and must still take no older computation.

    Reads get a 2 s deadline: under the whole suite a reply can wait past the 50 ms default for
    the busy loop to read it, which serves that read uncached (the deadline's matter, tested in
    test_faults.py), while this harness asserts that every read was served.

    ``ahead``: the same layers with short TTLs and ``refresh_ahead``, so most hits start a
    background refresh that races the invalidations.
    """
    both, remote_only = BOTH, REMOTE_ONLY
    if ahead:
        both, remote_only = (
            GCacheKeyConfig(
                ttl_sec=dict.fromkeys(c.ttl_sec, AHEAD_TTL), ramp=dict(c.ramp), refresh_ahead=AHEAD
            )
            for c in (BOTH, REMOTE_ONLY)
        )
    writer = make_cache(read_timeout_sec=2.0)
    if setup == "same_instance":
        return cached_subject(mode, source, writer, writer, use_case=use_case, config=both), writer
    if setup == "merged_reads":
        assert writer.config.redis_config is not None
        narrow = RedisConfig(url=writer.config.redis_config.url, max_connections=2, pool_timeout=10)
        reader = make_cache(redis_config=narrow, read_timeout_sec=2.0)
    else:
        reader = make_cache(read_timeout_sec=2.0)
        if setup == "failing_reads":
            fail_some_reads(reader, random.Random(7), 0.25)
    return cached_subject(mode, source, reader, writer, use_case=use_case, config=remote_only), reader


def fail_some_reads(cache: GCache, rng: random.Random, share: float) -> None:
    """Make ``share`` of ``cache``'s tracked REMOTE reads fail after they were sent."""
    remote = cache._remote
    assert remote is not None
    read_tracked, aread_tracked = remote.read_tracked, remote.aread_tracked

    def failing(kwargs: dict[str, Any]) -> bool:
        if rng.random() >= share:
            return False
        sending = kwargs.get("sending")
        if sending is not None:
            sending()  # sent: no other caller may take it
        return True

    def sync_read(*args: Any, **kwargs: Any) -> Any:
        if failing(kwargs):
            raise RemoteError("read", redis.TimeoutError("timed out (the harness's)"))
        return read_tracked(*args, **kwargs)

    async def async_read(*args: Any, **kwargs: Any) -> Any:
        if failing(kwargs):
            await asyncio.sleep(0)
            raise RemoteError("read", redis.TimeoutError("timed out (the harness's)"))
        return await aread_tracked(*args, **kwargs)

    remote.read_tracked, remote.aread_tracked = sync_read, async_read  # type: ignore[method-assign]


@dataclass
class Served:
    reads: int
    hits: int
    local_hits: int
    remote_hits: int
    refused_writes: int  # values the library computed but refused to store: races it caught
    joined: int = 0  # reads that took a concurrent read's computation (single flight)
    merged: int = 0  # reads served by a concurrent caller's tracked REMOTE read, not yet sent when joined

    @property
    def hit_ratio(self) -> float:
        return self.hits / self.reads if self.reads else 0.0


def served(registry: CollectorRegistry, use_case: str, reads: int) -> Served:
    def hits(layer: str) -> int:
        requests = sample(registry, REQUESTS, use_case=use_case, layer=layer)
        return int(requests - sample(registry, MISSES, use_case=use_case, layer=layer))

    refused = sum(
        sample(registry, WRITES, use_case=use_case, layer=layer, result="invalidated")
        for layer in ("LOCAL", "REMOTE")
    )
    local, remote = hits("LOCAL"), hits("REMOTE")
    joined = int(sample(registry, "gcache_single_flight_counter_total", use_case=use_case, result="joined"))
    merged = int(
        sample(registry, "gcache_single_flight_counter_total", use_case=use_case, result="read_merged")
    )
    return Served(reads, local + remote, local, remote, int(refused), joined, merged)


def report(label: str, outcome: Outcome, result: Served | None = None) -> None:
    line = (
        f"{label}: {len(outcome.reads)} reads ({outcome.reads_after_an_invalidation()} after an "
        f"invalidation), {len(outcome.invalidations)} invalidations, "
        f"{len(outcome.violations)} violations"
    )
    if result is not None:
        line += (
            f", hit ratio {result.hit_ratio:.2f} (local {result.local_hits}, remote "
            f"{result.remote_hits}), {result.refused_writes} stale writes refused, {result.joined} joined, "
            f"{result.merged} merged reads"
        )
    print(line)


async def check_exact(
    setup: str,
    mode: str,
    make_cache: Callable[..., GCache],
    registry: CollectorRegistry,
    *,
    use_case: str,
    seed: int,
    ahead: bool = False,
) -> None:
    source = Source()
    subject, reader = build(setup, mode, source, make_cache, use_case, ahead)
    outcome = await run(mode, subject, source, seed=seed)
    result = served(registry, use_case, len(outcome.reads))
    report(f"{setup}/{mode}", outcome, result)

    violations = outcome.violations
    assert violations == [], describe(violations)
    assert len(outcome.invalidations) == ROUNDS
    assert len(outcome.reads) >= (1000 if setup == "merged_reads" else 2000)  # two connections: slower
    assert outcome.reads_after_an_invalidation() >= 1000
    # The cache really served: a harness where every read misses would prove nothing.
    failed = int(sample(registry, ERRORS, use_case=use_case))  # REMOTE reads that failed
    if setup == "failing_reads":
        assert failed > len(outcome.reads) / 10
    else:
        assert failed == 0
    # every read was a hit, a merged read's value, computed, or took a concurrent computation
    hits = result.hits - failed  # a failed read is a request that found neither a hit nor a miss
    if ahead:  # refreshes compute and read REMOTE (counted as lookups) for no read of their own
        await asyncio.sleep(0.1)  # those still running when the readers stopped land first
        counted = {
            r: sample(registry, "gcache_refresh_counter_total", use_case=use_case, result=r)
            for r in ("refreshed", "refused")
        }
        # refreshes really raced the invalidations; failing reads hold each key back for a second
        # after a failed refresh, so there only a few run (4 to 30 seen, by the machine's load)
        assert sum(counted.values()) > (0 if setup == "failing_reads" else 20)
        if setup != "failing_reads":  # there a failed read holds its key back: few refreshes
            assert counted["refused"] > 0  # some lost to an invalidation
        assert hits + result.merged + source.computations + result.joined >= len(outcome.reads)
    else:
        assert hits + result.merged + source.computations + result.joined == len(outcome.reads)
    assert result.hit_ratio > 0.3
    assert result.refused_writes > 0  # computations really raced invalidations
    if setup == "same_instance":
        assert result.local_hits > 0
    else:
        assert result.remote_hits > 0
    if setup == "merged_reads":
        assert result.merged > result.reads / 10  # the race ran through merged reads
    assert reader.bus_subscribed


# -- the checker itself ------------------------------------------------------------------------------


def test_checker_flags_only_reads_started_after_invalidation_with_older_version() -> None:
    invalidations = [Invalidation(10.0, "1", 3), Invalidation(20.0, "1", 5), Invalidation(15.0, "2", 1)]
    reads = [
        Read(9.0, "1", 0),  # started before any invalidation: anything goes
        Read(10.0, "1", 2),  # started as it returned, not after
        Read(11.0, "1", 3),
        Read(12.0, "1", 2),  # violation: needs 3
        Read(21.0, "1", 4),  # violation: needs 5
        Read(21.0, "1", 6),
        Read(16.0, "2", 0),  # violation: needs 1
        Read(16.0, "3", 0),  # never invalidated
    ]
    assert find_violations(reads, invalidations) == [
        Violation(reads[3], 3, 2.0),
        Violation(reads[4], 5, 1.0),
        Violation(reads[6], 1, 1.0),
    ]


@MODES
async def test_checker_finds_violations_when_cache_is_naive_delete_on_invalidate_dict(mode: str) -> None:
    source = Source()
    outcome = await run(mode, NaiveCache(source).subject(mode), source, seed=7)
    report(f"naive dict/{mode}", outcome)
    assert len(outcome.violations) > 0


@MODES
async def test_checker_finds_violations_when_use_case_is_untracked(
    make_cache: Callable[..., GCache], mode: str
) -> None:
    source = Source()
    writer = make_cache()
    reader = make_cache()
    subject = cached_subject(
        mode, source, reader, writer, use_case="Untracked", config=REMOTE_ONLY, tracked=False
    )
    outcome = await run(mode, subject, source, seed=8)
    report(f"untracked/{mode}", outcome)
    assert len(outcome.violations) > 0


# -- one overlap, step by step ------------------------------------------------------------------------


@MODES
async def test_local_is_not_refilled_with_invalidated_value_when_read_overlaps_invalidation(
    make_cache: Callable[..., GCache], monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """The race harness's same-instance case, made deterministic.

    The invalidation's Redis round trip is held up (as a slow network would) while a read of the
    same entity runs in this process. That read overlaps the invalidation, so either version is
    fine for it; but once the invalidation has returned, the next read must see the new version.
    """
    cache = make_cache()
    source = Source()
    subject = cached_subject(mode, source, cache, cache, use_case="Overlap", config=BOTH)
    landed, release = threading.Event(), threading.Event()

    if mode == "async":
        aread = subject.aread
        assert aread is not None
        original_ainvalidate = RemoteCache.ainvalidate

        async def slow_ainvalidate(self: RemoteCache, fence: str, future_buffer_ms: int) -> int:
            landed.set()
            await asyncio.to_thread(release.wait, 5)
            return await original_ainvalidate(self, fence, future_buffer_ms)

        monkeypatch.setattr(RemoteCache, "ainvalidate", slow_ainvalidate)
        assert await aread("1") == 0  # cached on both layers

        async def awrite() -> None:
            source.bump("1")
            await cache.ainvalidate(KEY_TYPE, "1")

        writing = asyncio.ensure_future(awrite())
        await asyncio.to_thread(landed.wait, 5)
        assert await aread("1") in (0, 1)  # overlaps the invalidation
        release.set()
        await asyncio.wait_for(writing, 5)
        assert await aread("1") == 1  # started after the invalidation returned
        return

    read = subject.read
    assert read is not None
    original_invalidate = RemoteCache.invalidate

    def slow_invalidate(self: RemoteCache, fence: str, future_buffer_ms: int) -> int:
        landed.set()
        release.wait(5)
        return original_invalidate(self, fence, future_buffer_ms)

    monkeypatch.setattr(RemoteCache, "invalidate", slow_invalidate)

    def write() -> None:
        source.bump("1")
        cache.invalidate(KEY_TYPE, "1")

    def scenario() -> None:
        assert read("1") == 0  # cached on both layers
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            writing = pool.submit(write)
            assert landed.wait(5)
            assert read("1") in (0, 1)  # overlaps the invalidation
            release.set()
            writing.result(5)
        assert read("1") == 1  # started after the invalidation returned

    await asyncio.to_thread(scenario)


# -- zero violations ----------------------------------------------------------------------------------


@MODES
@SETUPS
async def test_no_read_sees_invalidated_version_when_readers_race_writer(
    make_cache: Callable[..., GCache], registry: CollectorRegistry, setup: str, mode: str
) -> None:
    await check_exact(setup, mode, make_cache, registry, use_case="Race", seed=1)


@MODES
@SETUPS
async def test_no_read_sees_invalidated_version_when_refreshes_ahead_race_writer(
    make_cache: Callable[..., GCache], registry: CollectorRegistry, setup: str, mode: str
) -> None:
    await check_exact(setup, mode, make_cache, registry, use_case="RaceAhead", seed=3, ahead=True)


@MODES
@SETUPS
@pytest.mark.parametrize("skew_sec", [30.0, -30.0], ids=["ahead", "behind"])
async def test_no_read_sees_invalidated_version_when_host_clock_skewed(
    make_cache: Callable[..., GCache],
    registry: CollectorRegistry,
    monkeypatch: pytest.MonkeyPatch,
    setup: str,
    mode: str,
    skew_sec: float,
) -> None:
    # Patched before the caches exist, so every host-clock reading of the run is off by skew_sec;
    # the harness itself measures with time.monotonic, which is left alone.
    real_time, real_time_ns = time.time, time.time_ns
    monkeypatch.setattr(time, "time", lambda: real_time() + skew_sec)
    monkeypatch.setattr(time, "time_ns", lambda: real_time_ns() + int(skew_sec * 1e9))
    await check_exact(setup, mode, make_cache, registry, use_case="Skewed", seed=2)


# -- through a failover ------------------------------------------------------------------------------

HELD, PROMOTED = ROUNDS // 4, ROUNDS // 4 + 20  # the rounds the replica misses, and the promotion


def retrying(subject: Subject) -> Subject:
    """The subject with each invalidation retried until it returns: the writer records only the
    ones that returned, and one may meet a connection the failover closed."""
    ainvalidate, invalidate = subject.ainvalidate, subject.invalidate
    if ainvalidate is not None:

        async def aretry(entity: str) -> None:
            for attempt in range(5):
                try:
                    return await ainvalidate(entity)
                except RemoteError:
                    if attempt == 4:
                        raise

        subject.ainvalidate = aretry
    if invalidate is not None:

        def retry(entity: str) -> None:
            for attempt in range(5):
                try:
                    return invalidate(entity)
                except RemoteError:
                    if attempt == 4:
                        raise

        subject.invalidate = retry
    return subject


@pytest.mark.slow
@MODES
@pytest.mark.parametrize("setup", ["same_instance", "other_instance"])
async def test_no_read_sees_invalidated_version_when_a_replica_that_missed_invalidations_is_promoted(
    make_cache: Callable[..., GCache], registry: CollectorRegistry, setup: str, mode: str
) -> None:
    """Mid-run the replica is stopped and cut off (round HELD), the writer's next 20 invalidations
    return having reached the primary alone, then the primary is killed and the replica promoted
    (round PROMOTED), and the readers go on through the same address: no read that started after
    an invalidation returned, lost ones included, sees an older version."""
    with pair() as p:
        options = {"redis_config": RedisConfig(url=p.url), "read_timeout_sec": 2.0, "breaker_failures": 0}
        writer = make_cache(**options)
        reader = writer if setup == "same_instance" else make_cache(**options)
        source = Source()
        config = BOTH if setup == "same_instance" else REMOTE_ONLY
        subject = retrying(cached_subject(mode, source, reader, writer, use_case="Failover", config=config))
        promoted_at: list[float] = []

        def hook(n: int) -> None:
            if n == HELD:
                p.hold_back()
            elif n == PROMOTED:
                p.fail_over()
                promoted_at.append(time.monotonic())

        outcome = await run(mode, subject, source, seed=5, hook=hook)
        result = served(registry, "Failover", len(outcome.reads))
        report(f"failover {setup}/{mode}", outcome, result)

        assert outcome.violations == [], describe(outcome.violations)
        assert len(outcome.invalidations) == ROUNDS
        # The lost invalidations were real: the promoted node never had their watermarks.
        assert p.replica_admin.info("replication")["master_replid2"] != "0"
        after = [r for r in outcome.reads if r.start > promoted_at[0]]
        assert len(after) >= 500
        assert result.hits > 0
        # Caching resumed on the promoted node: its fences are of its own history.
        replid = str(p.replica_admin.info("replication")["master_replid"]).encode()
        fences = [p.replica_admin.hgetall(fence) for fence in p.replica_admin.scan_iter("*#watermark")]
        assert fences
        assert all(f[b"r"] == replid for f in fences)
