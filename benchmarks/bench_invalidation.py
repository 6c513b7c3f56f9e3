"""Invalidation across processes: propagation lag and stale reads, gcache against the original.

Several worker processes (``_invalidation_worker``) read a handful of tracked entities in a loop
through a GCache. The function behind the cache reads the entity's version from a source of
truth kept in the same Redis, outside the cache prefix (``bench:source:*``), between two pauses,
so one call takes a few milliseconds and calls race with the writer. The writer (this process)
bumps an entity's version and then calls ``ainvalidate``, a few hundred times at a steady rate.

Two layer set-ups, LOCAL+REMOTE and REMOTE only, each run with gcache as it is and with workers
that imitate the original library (entries stamped at write time, no invalidation bus; see
``_invalidation_worker.imitate_original``): four configurations, one after the other, in the same
run on the same Redis. With LOCAL+REMOTE both differences show; with REMOTE only, the write stamp
alone.

What is measured (``time.time()`` of the writer and the workers: one host, one clock):

- A **stale read** started after an ``ainvalidate`` of its entity had returned and returned a
  version older than the one that invalidation followed. A read that started earlier is not
  stale, whatever it returned. Each stale read is counted once, with the layer that served it.
- For each (invalidation, worker) pair:
  - **propagation lag**: from the return of ``ainvalidate`` to the start of the worker's first
    read that sees the new version (or a later one). Its floor is the time until the worker's
    next read of that entity, so it cannot show lags shorter than the read interval (reported).
  - **staleness**, for pairs with a stale read (a *stale window*): from the return to the start
    of the worker's last read that still returned an older version.
- Windows still open when the workers stop (no fresh read yet) count with their last stale read,
  a lower bound, and are reported as open.
- The bus, in gcache's workers: when each invalidation was applied (after ``_on_bus_message``
  returned), against the writer's return and against the publish time the message carries (the
  Redis server's clock, the same clock as ``time.time()`` on this host). A stale read that
  started after its worker had applied the invalidation would be a gcache bug: LOCAL must not
  serve it then, and REMOTE never may. The library's own ``gcache_bus_lag_seconds`` is shown
  beside the direct figure.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import json
import math
import os
import pathlib
import random
import select
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio
from prometheus_client import CollectorRegistry

from benchmarks._invalidation_worker import FUNCTION, KEY_TYPE, LOCAL, REMOTE, Records, read_records
from gcache import GCache, GCacheConfig, RedisConfig

__all__ = ["Outcome", "Setup", "parameters", "run", "tables"]

WORKERS = 3
ENTITIES = 4
INVALIDATIONS = 300
# Mean seconds between invalidations. The gaps are exponential (writes arrive at random, at a
# steady rate): a gap shorter than a call of the function is what lets a call race the next
# invalidation of its entity. With even gaps longer than a call, readers would rarely race.
INTERVAL = 0.010
FUNCTION_SLEEP = (0.0005, 0.0025)  # each of the function's two pauses (asyncio rounds up to 1 ms)
PACE = 0.0002  # seconds of non-cache work a worker does between rounds of reads
LOCAL_TTL = 5.0
REMOTE_TTL = 30.0
ROOT = pathlib.Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Setup:
    name: str
    mode: str  # "gcache" or "original"
    local_ttl: float  # 0: LOCAL is off
    tail: float  # seconds the workers keep reading after the last invalidation


SETUPS = (
    Setup("gcache, LOCAL+REMOTE", "gcache", LOCAL_TTL, 0.5),
    # LOCAL entries nobody invalidates live out their TTL: read until every one has expired.
    Setup("original imitation, LOCAL+REMOTE", "original", LOCAL_TTL, LOCAL_TTL + 0.5),
    Setup("gcache, REMOTE only", "gcache", 0, 0.5),
    Setup("original imitation, REMOTE only", "original", 0, 0.5),
)


@dataclass
class Outcome:
    setup: Setup
    invalidations: int = 0
    reads: int = 0
    stale: int = 0
    stale_by_layer: dict[int, int] = field(default_factory=lambda: {LOCAL: 0, REMOTE: 0, FUNCTION: 0})
    pairs: int = 0
    open_windows: int = 0
    lag_ms: list[float] = field(default_factory=list)
    staleness_ms: list[float] = field(default_factory=list)
    read_interval_ms: float = 0.0
    invalidate_ms: list[float] = field(default_factory=list)
    applied_ms: list[float] = field(default_factory=list)  # return of ainvalidate -> applied by a worker
    published_ms: list[float] = field(default_factory=list)  # publish (Redis clock) -> applied
    stale_after_bus: int = 0
    bus_lag_buckets: dict[float, float] = field(default_factory=dict)
    bus_lag_sum: float = 0.0
    remote_writes: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass(frozen=True)
class Invalidation:
    entity: int
    version: int
    returned: float  # the writer's time.time() when ainvalidate returned


def run(redis_url: str, admin_url: str) -> list[Outcome]:
    """``redis_url`` for gcache; ``admin_url`` for the source of truth (MSET, INCR), on one server."""
    token = os.urandom(4).hex()
    with tempfile.TemporaryDirectory(prefix="gcache-bench-") as tmp:
        return [
            _run_setup(redis_url, admin_url, setup, f"{token}-{n}", pathlib.Path(tmp))
            for n, setup in enumerate(SETUPS)
        ]


def _run_setup(redis_url: str, admin_url: str, setup: Setup, token: str, tmp: pathlib.Path) -> Outcome:
    began = time.monotonic()
    prefix = f"bench-invalidation-{token}"
    source_prefix = f"bench:source:{token}:"
    client = redis.Redis.from_url(admin_url)
    outcome = Outcome(setup)
    # The URLs in the environment, not on the command line, which other users can read.
    env = {**os.environ, "BENCH_REDIS_URL": redis_url, "BENCH_SOURCE_URL": admin_url}
    procs: list[subprocess.Popen[str]] = []
    paths = [tmp / f"{token}-{w}.bin" for w in range(WORKERS)]
    try:
        client.mset({f"{source_prefix}{i}": 0 for i in range(ENTITIES)})
        for path in paths:
            spec = {
                "mode": setup.mode,
                "prefix": prefix,
                "source_prefix": source_prefix,
                "entities": ENTITIES,
                "local_ttl": setup.local_ttl,
                "remote_ttl": REMOTE_TTL,
                "function_sleep": FUNCTION_SLEEP,
                "pace": PACE,
                "max_seconds": INVALIDATIONS * INTERVAL * 3 + setup.tail + 30,  # if never told to stop
                "out_path": str(path),
            }
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "benchmarks._invalidation_worker", json.dumps(spec)],
                    cwd=ROOT,
                    env=env,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        deadline = time.monotonic() + 30
        for proc in procs:
            _wait_ready(proc, deadline)
        log = asyncio.run(
            _write(redis_url, admin_url, prefix, source_prefix, setup.tail, outcome.invalidate_ms)
        )
        stats = [_stop(proc) for proc in procs]
        _analyse(outcome, log, [read_records(str(path)) for path in paths], [s["bus_applied"] for s in stats])
        for s in stats:
            for le, count in s["bus_lag_buckets"].items():
                outcome.bus_lag_buckets[float(le)] = outcome.bus_lag_buckets.get(float(le), 0) + count
            outcome.bus_lag_sum += s["bus_lag_sum"]
            for result, count in s["remote_writes"].items():
                outcome.remote_writes[result] = outcome.remote_writes.get(result, 0) + count
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        try:
            stale_keys = list(client.scan_iter(match="{" + prefix + ":*"))
            client.delete(*stale_keys, *(f"{source_prefix}{i}" for i in range(ENTITIES)))
        finally:
            client.close()
    outcome.seconds = time.monotonic() - began
    return outcome


async def _write(
    redis_url: str, admin_url: str, prefix: str, source_prefix: str, tail: float, invalidate_ms: list[float]
) -> list[Invalidation]:
    """The writer: bump an entity's version in the source, then invalidate it; steadily."""
    client = redis.asyncio.Redis.from_url(admin_url)
    writer = GCache(
        GCacheConfig(
            redis_config=RedisConfig(url=redis_url), urn_prefix=prefix, metrics_registry=CollectorRegistry()
        )
    )
    log: list[Invalidation] = []
    try:
        await asyncio.sleep(0.2)  # the readers settle on LOCAL hits
        for _ in range(INVALIDATIONS):
            entity = random.randrange(ENTITIES)
            version = int(await client.incr(f"{source_prefix}{entity}"))
            start = time.perf_counter()
            await writer.ainvalidate(KEY_TYPE, str(entity))
            returned = time.time()
            invalidate_ms.append((time.perf_counter() - start) * 1000)
            log.append(Invalidation(entity, version, returned))
            await asyncio.sleep(random.expovariate(1 / INTERVAL))
        await asyncio.sleep(tail)
    finally:
        await writer.aclose()
        await client.aclose()
    return log


def _wait_ready(proc: subprocess.Popen[str], deadline: float) -> None:
    assert proc.stdout is not None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("an invalidation worker was not ready in time")
        readable, _, _ = select.select([proc.stdout], [], [], remaining)
        if readable:
            line = proc.stdout.readline()
            if line.strip() == "ready":
                return
            if not line:
                raise RuntimeError(f"an invalidation worker exited with {proc.wait()} before it was ready")


def _stop(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = proc.communicate("stop\n", timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"an invalidation worker exited with {proc.returncode}")
    stats: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return stats


def _analyse(
    outcome: Outcome, log: list[Invalidation], workers: list[Records], bus: list[list[list[Any]]]
) -> None:
    outcome.invalidations = len(log)
    by_entity: list[list[Invalidation]] = [[] for _ in range(ENTITIES)]
    for inv in log:
        by_entity[inv.entity].append(inv)
    intervals: list[float] = []
    for (starts_all, versions_all, entities_all, layers_all), messages in zip(workers, bus, strict=True):
        outcome.reads += len(starts_all)
        # When this worker applied each entity's invalidations, in order: the k-th message about an
        # entity is the writer's k-th invalidation of it (pub/sub keeps order and, while the
        # subscription stays up, loses nothing).
        applied: list[list[float]] = [[] for _ in range(ENTITIES)]
        for target, at, published_us in messages:
            applied[int(target.rstrip("}").rsplit(":", 1)[1])].append(at)
            outcome.published_ms.append((at - published_us / 1e6) * 1000)
        for entity, invs in enumerate(by_entity):
            picked = [i for i, e in enumerate(entities_all) if e == entity]
            starts = [starts_all[i] for i in picked]
            versions = [versions_all[i] for i in picked]
            layers = [layers_all[i] for i in picked]
            intervals.extend(b - a for a, b in itertools.pairwise(starts))
            returned = [inv.returned for inv in invs]
            written = [inv.version for inv in invs]
            heard = applied[entity]
            outcome.applied_ms.extend(
                (at - inv.returned) * 1000 for at, inv in zip(heard, invs, strict=False)
            )
            for start, version, layer in zip(starts, versions, layers, strict=True):
                before = bisect.bisect_left(returned, start)  # invalidations returned before the read
                if before and version < written[before - 1]:
                    outcome.stale += 1
                    outcome.stale_by_layer[layer] += 1
                    # The first invalidation this read is stale against: had this worker applied
                    # it before the read started, LOCAL must not have served the old version.
                    first = bisect.bisect_right(written, version)
                    if first < len(heard) and heard[first] < start:
                        outcome.stale_after_bus += 1
            # sufmin[j]: the lowest version returned from read j on (non-decreasing in j).
            sufmin = versions[:]
            for j in range(len(sufmin) - 2, -1, -1):
                sufmin[j] = min(sufmin[j], sufmin[j + 1])
            fresh = 0
            for inv in invs:
                outcome.pairs += 1
                first = bisect.bisect_right(starts, inv.returned)
                # The first fresh read never moves back: versions and return times both grow.
                fresh = max(fresh, first)
                while fresh < len(versions) and versions[fresh] < inv.version:
                    fresh += 1
                last_stale = bisect.bisect_left(sufmin, inv.version) - 1
                if fresh < len(versions):
                    outcome.lag_ms.append((starts[fresh] - inv.returned) * 1000)
                else:
                    outcome.open_windows += 1
                if last_stale >= first:
                    outcome.staleness_ms.append((starts[last_stale] - inv.returned) * 1000)
    outcome.read_interval_ms = statistics.median(intervals) * 1000 if intervals else math.nan


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _three(values: list[float]) -> str:
    if not values:
        return "n/a"
    return " / ".join(f"{_ms(v)}" for v in (_pct(values, 0.5), _pct(values, 0.99), max(values)))


def _ms(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.2f}" if value < 10 else f"{value:.1f}"


def _bus_lag(outcome: Outcome) -> str:
    buckets = sorted(outcome.bus_lag_buckets.items())
    total = buckets[-1][1] if buckets else 0
    if not total:
        return "n/a (no bus)"

    def at(q: float) -> str:
        le = next(le for le, count in buckets if count >= q * total)
        return "+Inf" if math.isinf(le) else f"≤ {_ms(le * 1000)}"

    return f"{outcome.bus_lag_sum / total * 1000:.2f} / {at(0.5)} / {at(0.99)}"


def parameters() -> str:
    return (
        f"{WORKERS} reader processes, {ENTITIES} tracked entities, {INVALIDATIONS} invalidations per "
        f"configuration, exponential gaps of {INTERVAL * 1000:.0f} ms on average (bump the source's "
        f"version, then `ainvalidate`); the function reads the source between two pauses of "
        f"{FUNCTION_SLEEP[0] * 1000:g}-{FUNCTION_SLEEP[1] * 1000:g} ms (asyncio.sleep, about 1-3 ms "
        f"each); LOCAL TTL {LOCAL_TTL:g} s, REMOTE TTL {REMOTE_TTL:g} s; async workers, "
        f"{PACE * 1000:g} ms of other work between rounds of reads."
    )


def tables(outcomes: list[Outcome]) -> str:
    main = [
        "| configuration | invalidations | reads | stale reads | stale reads on LOCAL / REMOTE / "
        "function | stale windows (open at end) | staleness p50 / p99 / max (ms) | "
        "propagation lag p50 / p99 / max (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for o in outcomes:
        by = o.stale_by_layer
        rate = o.stale / o.reads * 100 if o.reads else 0.0
        main.append(
            f"| {o.setup.name} | {o.invalidations} | {o.reads} | {o.stale} ({rate:.2f} %) | "
            f"{by[LOCAL]} / {by[REMOTE]} / {by[FUNCTION]} | "
            f"{len(o.staleness_ms)} of {o.pairs} ({o.open_windows}) | {_three(o.staleness_ms)} | "
            f"{_three(o.lag_ms)} |"
        )
    detail = [
        "| configuration | remote writes stored / refused as stale | stale reads started after the worker "
        "applied the invalidation | read interval per entity (ms, median) | ainvalidate p50 (ms) | seconds |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for o in outcomes:
        stored = o.remote_writes.get("stored", 0)
        refused = sum(v for k, v in o.remote_writes.items() if k != "stored")
        after_bus = str(o.stale_after_bus) if o.published_ms else "n/a (no bus)"
        detail.append(
            f"| {o.setup.name} | {stored:.0f} / {refused:.0f} | {after_bus} | {o.read_interval_ms:.2f} | "
            f"{_pct(o.invalidate_ms, 0.5):.2f} | {o.seconds:.1f} |"
        )
    bus = [
        "| configuration | messages applied | ainvalidate returned → applied p50 / p99 / max (ms) | "
        "published → applied p50 / p99 / max (ms) | gcache_bus_lag_seconds mean / p50 / p99 (ms) |",
        "|---|---:|---:|---:|---:|",
    ]
    for o in outcomes:
        if o.published_ms:
            bus.append(
                f"| {o.setup.name} | {len(o.published_ms)} | {_three(o.applied_ms)} | "
                f"{_three(o.published_ms)} | {_bus_lag(o)} |"
            )
    return "\n\n".join("\n".join(t) for t in (main, detail, bus))
