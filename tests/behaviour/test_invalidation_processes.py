"""Invalidation across real processes: how long other processes keep serving an invalidated value.

Three worker processes (tests/behaviour/_invalidation_worker.py) read a few entities in a loop through a
tracked use case with LOCAL and REMOTE on; this test process bumps the source of truth and then
invalidates. The cache lives on a private Redis that the test kills mid-run and restarts on the
same port; the source of truth lives on the session Redis, so it survives the outage.

For every invalidation and every worker, the staleness window is how long after the invalidation
returned that worker still returned an older version to reads that started after the return (0
when it never did). Only the bus propagation lag can make it non-zero: REMOTE is exact. All
processes share the host clock, so ``time.time()`` stamps are comparable.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, NamedTuple

import pytest
import redis
import redis.asyncio

from gcache import GCache, RedisConfig, RemoteError
from gcache._embedded_redis import EmbeddedRedis
from tests.behaviour._invalidation_worker import KEY_TYPE, USE_CASE, source_key

ROOT = Path(__file__).resolve().parents[2]
WORKERS = 3
ENTITIES = ("1", "2", "3")
STEADY_SEC = 5.0  # writing before the cache's Redis is killed
OUTAGE_SEC = 1.0
AFTER_SEC = 5.0  # writing after it is back
WRITE_EVERY = 0.025  # seconds between invalidations, on average
RETRY_EVERY = 0.05  # seconds between attempts of an invalidation Redis refused
BOUND_SEC = 1.0  # no worker serves an invalidated version for longer than this
FAST = {"socket_timeout": 0.5, "socket_connect_timeout": 0.5}


class Invalidation(NamedTuple):
    returned: float  # time.time() just after ainvalidate returned
    entity: str
    version: int  # written to the source before the invalidation


class Read(NamedTuple):
    start: float
    entity: str
    version: int
    computed: bool
    how: object = None  # with --trace: how the read was served (tests/behaviour/_race_trace.py)


@dataclass
class Writes:
    invalidations: list[Invalidation] = field(default_factory=list)
    failed: list[float] = field(default_factory=list)  # when an attempt raised RemoteError


@dataclass
class Worker:
    index: int
    out: Path
    process: subprocess.Popen[bytes]
    log: IO[bytes]

    @property
    def ready(self) -> bool:
        return Path(f"{self.out}.ready").exists()

    def log_text(self) -> str:
        self.log.flush()
        return Path(f"{self.out}.log").read_text(errors="replace")

    def reads(self) -> list[Read]:
        with open(f"{self.out}.jsonl") as lines:
            return [Read(s, e, v, bool(c), *how) for s, e, v, c, *how in map(json.loads, lines)]

    def summary(self) -> dict[str, object]:
        with open(f"{self.out}.summary.json") as file:
            found: dict[str, object] = json.load(file)
            return found


def spawn(
    index: int,
    cache_url: str,
    source_url: str,
    tmp: Path,
    *,
    mode: str | None = None,
    entities: tuple[str, ...] = ENTITIES,
    extra: tuple[str, ...] = (),
) -> Worker:
    """A worker process; sync and async take turns unless ``mode`` says which."""
    out = tmp / f"worker{index}"
    log = open(f"{out}.log", "wb")  # noqa: SIM115 (closed by stop_all)
    args = [
        sys.executable,
        "-W",
        "error",
        "-m",
        "tests.behaviour._invalidation_worker",
        "--out",
        str(out),
        "--mode",
        mode or ("async" if index % 2 else "sync"),
        "--entities",
        ",".join(entities),
        "--max-seconds",
        "40",
        "--seed",
        str(index),
        *extra,
    ]
    env = {
        **os.environ,
        "CACHE_URL": cache_url,  # in the environment, not the command line: their passwords
        "SOURCE_URL": source_url,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    return Worker(index, out, process, log)


def stop_all(workers: list[Worker]) -> None:
    """Terminate, then kill, every worker still running; by process id, never by name."""
    for worker in workers:
        if worker.process.poll() is None:
            worker.process.send_signal(signal.SIGTERM)
    for worker in workers:
        try:
            worker.process.wait(timeout=3)
        except subprocess.TimeoutExpired:
            worker.process.kill()
            worker.process.wait(timeout=5)
        worker.log.close()


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    """The test's worker processes, always stopped at the end."""
    running: list[Worker] = []
    try:
        yield running
    finally:
        stop_all(running)


async def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


async def write(
    cache: GCache,
    source: redis.asyncio.Redis,
    stop: asyncio.Event,
    writes: Writes,
    entities: tuple[str, ...] = ENTITIES,
    every: float = WRITE_EVERY,
) -> None:
    """Bump an entity in the source, THEN invalidate it; retry an invalidation Redis refused."""
    rng = random.Random(0)
    while not stop.is_set():
        entity = rng.choice(entities)
        version = int(await source.incr(source_key(entity)))
        while True:
            try:
                await cache.ainvalidate(KEY_TYPE, entity)
            except RemoteError:
                writes.failed.append(time.time())
                if stop.is_set():
                    break
                await asyncio.sleep(RETRY_EVERY)
                continue
            writes.invalidations.append(Invalidation(time.time(), entity, version))
            break
        await asyncio.sleep(rng.uniform(0.5, 1.5) * every)


async def write_through_an_outage(
    cache: GCache,
    source_url: str,
    server: EmbeddedRedis,
    writes: Writes,
    entities: tuple[str, ...],
    every: float,
    steady_sec: float,
    after_sec: float,
) -> tuple[float, float]:
    """Write for ``steady_sec``, kill the cache's Redis for OUTAGE_SEC, restart it on the same port
    (empty), write ``after_sec`` more; returns when it was killed and when it was back."""
    source = redis.asyncio.Redis.from_url(source_url)
    stop = asyncio.Event()
    writing = asyncio.create_task(write(cache, source, stop, writes, entities, every))
    try:
        await asyncio.sleep(steady_sec)
        killed_at = time.time()
        server.kill()
        await asyncio.sleep(OUTAGE_SEC)
        await asyncio.to_thread(server.start)
        restarted_at = time.time()
        await asyncio.sleep(after_sec)
    finally:
        stop.set()
        await asyncio.wait_for(writing, 10)
        await source.aclose()
    return killed_at, restarted_at


async def stop_workers(workers: list[Worker], timeout: float) -> None:
    """Ask every worker to stop, and check each exited cleanly."""
    for worker in workers:
        await asyncio.to_thread(Path(f"{worker.out}.stop").touch)
    for worker in workers:
        assert await asyncio.to_thread(worker.process.wait, timeout) == 0, worker.log_text()


# -- analysis ------------------------------------------------------------------------------------


def staleness_windows(reads: list[Read], invalidations: list[Invalidation]) -> list[float]:
    """Per invalidation: how long after it returned this worker still served an older version.

    A read is stale for an invalidation of its entity that returned before the read started and
    wrote a higher version than the read returned. Versions of one entity grow with time (the
    writer is sequential), so a read is stale for a contiguous run of invalidations.
    """
    windows = [0.0] * len(invalidations)
    by_entity: dict[str, list[int]] = {}
    for i, inv in enumerate(invalidations):
        by_entity.setdefault(inv.entity, []).append(i)
    for indexes in by_entity.values():
        versions = [invalidations[i].version for i in indexes]
        assert versions == sorted(versions), "the writer's versions must grow"
    for read in reads:
        indexes = by_entity.get(read.entity, [])
        returned = [invalidations[i].returned for i in indexes]
        versions = [invalidations[i].version for i in indexes]
        before = bisect.bisect_left(returned, read.start)  # returned before the read started
        fresh = bisect.bisect_right(versions, read.version)  # wrote no more than the read saw
        for k in range(fresh, before):
            i = indexes[k]
            windows[i] = max(windows[i], read.start - invalidations[i].returned)
    return windows


def describe_stale(
    reads: dict[int, list[Read]], invalidations: list[Invalidation], killed_at: float, restarted_at: float
) -> str:
    """Each stale read, with the invalidations of its entity around it (times from the kill)."""
    lines = [f"Redis killed at 0, restarted at {restarted_at - killed_at:+.4f} s"]
    for i, worker_reads in sorted(reads.items()):
        for read in worker_reads:
            missed = [
                inv
                for inv in invalidations
                if inv.entity == read.entity and inv.returned < read.start and inv.version > read.version
            ]
            if not missed:
                continue
            lines.append(
                f"worker {i}: read of {read.entity} started {read.start - killed_at:+.4f} s got version "
                f"{read.version} (ran the function itself: {read.computed})"
            )
            if read.how is not None:
                lines.append(f"    served: {json.dumps(read.how)}")
            for inv in invalidations:
                if inv.entity == read.entity and abs(inv.returned - read.start) < 2.0:
                    when = inv.returned - killed_at
                    lines.append(f"    invalidation returned {when:+.4f} s, version {inv.version}")
    return "\n".join(lines)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def metric(summary: dict[str, object], name: str, **labels: str) -> float:
    """Sum of a worker's metric samples with this name and these labels."""
    metrics = summary["metrics"]
    assert isinstance(metrics, dict)
    total = 0.0
    for key, value in metrics.items():
        sample_name, _, rest = key.partition("{")
        found = dict(pair.split("=", 1) for pair in rest.rstrip("}").split(",") if pair)
        if sample_name == name and all(found.get(k) == v for k, v in labels.items()):
            total += float(value)
    return total


def hits(summary: dict[str, object], layer: str) -> float:
    requests = metric(summary, "gcache_request_counter_total", use_case=USE_CASE, layer=layer)
    return requests - metric(summary, "gcache_miss_counter_total", use_case=USE_CASE, layer=layer)


def mean_bus_lag(summary: dict[str, object]) -> float:
    """Publish to receipt, on the Redis clock, as the worker's own histogram measured it."""
    count = metric(summary, "gcache_bus_lag_seconds_count")
    return metric(summary, "gcache_bus_lag_seconds_sum") / count if count else 0.0


# -- the test ------------------------------------------------------------------------------------


async def test_workers_stop_serving_invalidated_version_within_bound_across_cache_redis_restart(
    make_cache: Callable[..., GCache],
    redis_admin_url: str,
    redis_client: redis.Redis,
    workers: list[Worker],
    tmp_path: Path,
) -> None:
    # The source of truth lives on the session Redis (emptied by redis_client); the cache on its own.
    writes = Writes()
    with EmbeddedRedis() as server:
        for index in range(WORKERS):
            workers.append(spawn(index, server.url, redis_admin_url, tmp_path))
        try:
            await wait_for(
                lambda: all(w.ready or w.process.poll() is not None for w in workers), 30, "workers ready"
            )
            assert all(w.ready for w in workers), "a worker exited before it was ready"
            cache = make_cache(
                redis_config=RedisConfig(url=server.url, redis_py_options=dict(FAST)), start_bus=False
            )
            killed_at, restarted_at = await write_through_an_outage(
                cache, redis_admin_url, server, writes, ENTITIES, WRITE_EVERY, STEADY_SEC, AFTER_SEC
            )
            cache_client = redis.Redis.from_url(server.admin_url)
            try:
                cached_again = cache_client.keys("*#" + USE_CASE)
            finally:
                cache_client.close()
            await stop_workers(workers, timeout=15)
        except BaseException:
            for worker in workers:
                print(f"--- worker {worker.index} log ---\n{worker.log_text()}")
            raise

    reads = {w.index: w.reads() for w in workers}
    summaries = {w.index: w.summary() for w in workers}
    invalidations = writes.invalidations
    windows = {i: staleness_windows(reads[i], invalidations) for i in reads}
    every = [w for ws in windows.values() for w in ws]

    print(
        f"\n{len(invalidations)} invalidations ({len(writes.failed)} attempts refused during the "
        f"outage), reads per worker {[len(reads[i]) for i in sorted(reads)]}"
    )
    print(
        "staleness window after ainvalidate returned, per (invalidation, worker): "
        f"p50 {percentile(every, 50) * 1000:.2f} ms, p99 {percentile(every, 99) * 1000:.2f} ms, "
        f"max {max(every) * 1000:.2f} ms; non-zero {sum(1 for w in every if w > 0)} of {len(every)}"
    )
    for i in sorted(reads):
        outage = sum(1 for r in reads[i] if killed_at < r.start < restarted_at)
        after = [r for r in reads[i] if r.start > restarted_at]
        print(
            f"worker {i}: {len(reads[i])} reads, {outage} during the outage, "
            f"{sum(1 for r in after if not r.computed)} of {len(after)} served by the cache after the "
            f"restart; hits local {hits(summaries[i], 'LOCAL'):.0f} "
            f"remote {hits(summaries[i], 'REMOTE'):.0f}, "
            f"bus reconnects {metric(summaries[i], 'gcache_bus_reconnect_counter_total'):.0f}, mean bus "
            f"lag {mean_bus_lag(summaries[i]) * 1000:.2f} ms, max window "
            f"{max(windows[i]) * 1000:.2f} ms"
        )

    # Enough happened to measure: invalidations on both sides of the outage, and refused ones in it.
    assert len(invalidations) >= 200
    assert any(inv.returned < killed_at for inv in invalidations)
    assert any(inv.returned > restarted_at for inv in invalidations)
    assert any(killed_at < t < restarted_at for t in writes.failed)

    # The bound holds, before, during and after the outage, and most windows are (almost) zero.
    assert max(every) < BOUND_SEC
    assert sum(1 for w in every if w <= 0.010) >= 0.9 * len(every)

    for i in sorted(reads):
        during = [r for r in reads[i] if killed_at < r.start < restarted_at]
        after = [r for r in reads[i] if r.start > restarted_at + 1.0]
        assert len(during) > 0, f"worker {i} stopped serving while the cache's Redis was down"
        assert any(not r.computed for r in after), f"worker {i} served nothing from the cache after restart"
        assert hits(summaries[i], "LOCAL") > 0
        assert hits(summaries[i], "REMOTE") > 0
        assert metric(summaries[i], "gcache_bus_reconnect_counter_total") >= 1
        assert summaries[i]["bus_subscribed"] is True
    assert cached_again, "no entry was written to the cache's Redis after it restarted"


LOAD_WORKERS, LOAD_COROUTINES = 4, 200
LOAD_ENTITIES = tuple(str(i) for i in range(100))


@pytest.mark.slow
async def test_four_workers_of_200_coroutines_never_read_an_invalidated_version_through_a_restart(
    make_cache: Callable[..., GCache],
    redis_admin_url: str,
    redis_client: redis.Redis,
    workers: list[Worker],
    tmp_path: Path,
) -> None:
    """Load and invalidations at once: 4 processes x 200 coroutines read 100 entities through a
    tracked REMOTE-only use case (their concurrent reads of one key merge), a writer bumps a
    random entity's version and invalidates it about 50 times a second, and the cache's Redis is
    killed and restarted mid-run. No read that started after an invalidation returned sees an
    older version, no cached call raises, and caching resumes by itself."""
    writes = Writes()
    with EmbeddedRedis() as server:
        for index in range(LOAD_WORKERS):
            workers.append(
                spawn(
                    index,
                    server.url,
                    redis_admin_url,
                    tmp_path,
                    mode="async",
                    entities=LOAD_ENTITIES,
                    extra=("--coroutines", str(LOAD_COROUTINES), "--remote-only", "--trace"),
                )
            )
        try:
            await wait_for(
                lambda: all(w.ready or w.process.poll() is not None for w in workers), 30, "workers ready"
            )
            assert all(w.ready for w in workers), "a worker exited before it was ready"
            cache = make_cache(
                redis_config=RedisConfig(url=server.url, redis_py_options=dict(FAST)), start_bus=False
            )
            killed_at, restarted_at = await write_through_an_outage(
                cache, redis_admin_url, server, writes, LOAD_ENTITIES, 0.02, 4.0, 4.0
            )
            await stop_workers(workers, timeout=30)
        except BaseException:
            for worker in workers:
                print(f"--- worker {worker.index} log ---\n{worker.log_text()[-3000:]}")
            raise

    reads = {w.index: w.reads() for w in workers}
    summaries = {w.index: w.summary() for w in workers}
    invalidations = writes.invalidations
    stale = {i: sum(1 for w in staleness_windows(reads[i], invalidations) if w > 0) for i in reads}
    merged = {
        i: metric(summaries[i], "gcache_single_flight_counter_total", use_case=USE_CASE, result="read_merged")
        for i in reads
    }
    print(
        f"\n{len(invalidations)} invalidations, reads per worker {[len(reads[i]) for i in sorted(reads)]}, "
        f"merged reads {[int(merged[i]) for i in sorted(merged)]}, "
        f"raised {[summaries[i]['raised'] for i in sorted(summaries)]} (the function's errors "
        f"{[summaries[i]['source_failed'] for i in sorted(summaries)]}), stale {stale}"
    )
    assert len(invalidations) >= 200
    assert any(inv.returned > restarted_at for inv in invalidations)
    assert stale == dict.fromkeys(reads, 0), describe_stale(reads, invalidations, killed_at, restarted_at)
    for i in sorted(reads):
        # Only the function's own errors reach callers (its source, the session Redis, times out
        # now and then on a loop this loaded), to its caller and to those sharing its run; the
        # cache itself raised nothing.
        assert summaries[i]["raised"] == summaries[i]["source_failed"]
        after = [r for r in reads[i] if r.start > restarted_at + 1.0]
        assert any(not r.computed for r in after), f"worker {i} served nothing from the cache after restart"
        assert sum(1 for r in reads[i] if killed_at < r.start < restarted_at) > 0
        assert hits(summaries[i], "REMOTE") > 0
    assert sum(merged.values()) > 0
