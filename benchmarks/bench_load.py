"""Load: a sweep of concurrency, gcache against bare redis-py at the same concurrency, one run.

Each cell is a burst: ``N`` coroutines started at once with ``asyncio.gather`` (10, 100, 300,
1,000, 3,000), or ``N`` threads (10, 50, 200), each making ``CALLS`` calls in a row over ``KEYS``
keys (caller ``c``'s ``j``-th call reads key ``(c + j) % KEYS``), after a warm-up that fills the
cache. Subjects: bare redis-py GETs on the same keys (``redis.asyncio`` or sync, a blocking pool
of ``POOL_SIZE`` as gcache's), and gcache REMOTE only untracked and tracked (default settings
but for the pool size) and LOCAL+REMOTE tracked. Subjects take turns cell by cell and repeat
``REPEAT`` times; the median repetition counts.

Reported per cell: calls per second and the ratio against the bare GETs of the same cell, the
share of calls served from the cache (that did not reach the function), how many times the
function ran, Redis commands per call (INFO commandstats), p50 and p99 call latency, and how
often the circuit breaker opened. The bar: every cell 100% served with no breaker opening, and
REMOTE only at 100 and more coroutines at least the bare GETs' throughput.
"""

from __future__ import annotations

import asyncio
import pickle
import statistics
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio

from benchmarks._harness import GCACHE, POOL_SIZE, Result, bare_async_client, gcache_errors, make_gcache, user
from gcache import CacheLayer, GCache, GCacheKeyConfig
from gcache._envelope import HEADER_SIZE

__all__ = ["COROUTINES", "THREADS", "run"]

COROUTINES = (10, 100, 300, 1_000, 3_000)
THREADS = (10, 50, 200)
CALLS, KEYS, REPEAT = 20, 100, 3
TTL = 600
PREFIX = "bench-load"
REMOTE_ONLY = GCacheKeyConfig(ttl_sec={CacheLayer.REMOTE: TTL}, ramp={CacheLayer.REMOTE: 100})
BOTH = GCacheKeyConfig.enabled(TTL)
SUBJECTS = (  # name, config, tracked
    (f"{GCACHE}, REMOTE only", REMOTE_ONLY, False),
    (f"{GCACHE}, REMOTE only, tracked", REMOTE_ONLY, True),
    (f"{GCACHE}, LOCAL+REMOTE, tracked", BOTH, True),
)


@dataclass
class Cell:
    """One subject at one concurrency: its repetitions."""

    seconds: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    runs: int = 0  # calls that reached the function
    commands: int = 0
    errors: int = 0
    opened: int = 0


def run(redis_url: str, admin_url: str) -> list[Result]:
    """``redis_url`` for gcache and bare redis-py; ``admin_url`` for INFO commandstats."""
    results = asyncio.run(_coroutines(redis_url, admin_url))
    results += _threads(redis_url, admin_url)
    return results


def _bare_keys(prefix: str) -> list[str]:
    return ["{" + f"{prefix}:bare:{i}" + "}#Load" for i in range(KEYS)]


def _payload() -> bytes:
    return pickle.dumps(user("0"), protocol=pickle.HIGHEST_PROTOCOL) + b"\0" * HEADER_SIZE


def _commands(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return sum(int(entry["calls"]) for entry in stats.values() if isinstance(entry, dict))


def _opened(cache: GCache) -> int:
    registry = cache.config.metrics_registry
    assert registry is not None
    return int(
        sum(
            s.value
            for m in registry.collect()
            for s in m.samples
            if s.name == "gcache_breaker_transition_counter_total" and s.labels.get("state") == "open"
        )
    )


@dataclass
class Subject:
    name: str
    cache: GCache | None  # None: the bare GETs
    call: Callable[[int], Any]
    runs: list[int] = field(default_factory=lambda: [0])  # calls that reached the function


def _functions(
    runs: list[int],
) -> tuple[Callable[[int], dict[str, Any]], Callable[[int], Awaitable[dict[str, Any]]]]:
    """The function to cache, sync and async, counting its runs in ``runs`` (by closure: a
    default argument would be part of the key)."""

    def load(item: int) -> dict[str, Any]:
        runs[0] += 1
        return user(str(item))

    async def aload(item: int) -> dict[str, Any]:
        return load(item)

    return load, aload


def _gcache_subjects(redis_url: str, prefix: str, is_async: bool) -> list[Subject]:
    """gcache's subjects, each a cache with one decorated function counting its runs."""
    subjects = []
    for i, (name, config, tracked) in enumerate(SUBJECTS):
        cache = make_gcache(redis_url, f"{prefix}-{i}")
        runs = [0]
        load, aload = _functions(runs)
        call = cache.cached(**_options(config, tracked))(aload if is_async else load)
        subjects.append(Subject(name, cache, call, runs))
    return subjects


class _Counts:
    """What a subject's counters say before a repetition, to add the difference to its cell."""

    def __init__(self, subject: Subject, admin: redis.Redis) -> None:
        subject.runs[0] = 0
        self._subject, self._admin = subject, admin
        self._errors = gcache_errors(subject.cache) if subject.cache is not None else 0
        self._opened = _opened(subject.cache) if subject.cache is not None else 0
        self._commands = _commands(admin)

    def add_to(self, cell: Cell, seconds: float, latencies: list[float]) -> None:
        subject = self._subject
        cell.seconds.append(seconds)
        cell.commands += _commands(self._admin) - self._commands - 1  # less the INFO itself
        cell.latencies += latencies
        cell.runs += subject.runs[0]
        if subject.cache is not None:
            cell.errors += gcache_errors(subject.cache) - self._errors
            cell.opened += _opened(subject.cache) - self._opened


async def _coroutines(redis_url: str, admin_url: str) -> list[Result]:
    admin = redis.Redis.from_url(admin_url)
    client = bare_async_client(redis_url)
    keys = _bare_keys(PREFIX)
    for key in keys:
        await client.set(key, _payload(), ex=TTL)
    subjects = [
        Subject("bare", None, lambda i: client.get(keys[i])),
        *_gcache_subjects(redis_url, PREFIX + "-a", True),
    ]
    results: list[Result] = []
    try:
        for subject in subjects:
            if subject.cache is not None:
                await subject.cache.astart()
                subject.cache.enable().__enter__()
            for i in range(KEYS):
                await subject.call(i)
        for n in COROUTINES:
            cells = {subject.name: Cell() for subject in subjects}
            for _ in range(REPEAT):
                for subject in subjects:
                    counts = _Counts(subject, admin)
                    latencies: list[float] = []

                    async def caller(
                        c: int, call: Callable[[int], Any] = subject.call, out: list[float] = latencies
                    ) -> None:
                        for j in range(CALLS):
                            start = time.perf_counter()
                            await call((c + j) % KEYS)
                            out.append(time.perf_counter() - start)

                    start = time.perf_counter()
                    await asyncio.gather(*(caller(c) for c in range(n)))
                    counts.add_to(cells[subject.name], time.perf_counter() - start, latencies)
            results += _cell_results(f"{n:,} coroutines", n, cells, throughput_bar=n >= 100)
    finally:
        for subject in subjects:
            if subject.cache is not None:
                await subject.cache.aflushall()
                await subject.cache.aclose()
        await client.delete(*keys)
        await client.aclose()
        admin.close()
    return results


def _threads(redis_url: str, admin_url: str) -> list[Result]:
    admin = redis.Redis.from_url(admin_url)
    pool = redis.BlockingConnectionPool.from_url(redis_url, max_connections=POOL_SIZE)
    client = redis.Redis(connection_pool=pool)
    keys = _bare_keys(PREFIX + "-t")
    for key in keys:
        client.set(key, _payload(), ex=TTL)
    subjects = [
        Subject("bare", None, lambda i: client.get(keys[i])),
        *_gcache_subjects(redis_url, PREFIX + "-t", False),
    ]
    results: list[Result] = []
    try:
        for subject in subjects:
            if subject.cache is not None:
                subject.cache.start()
            for i in range(KEYS):
                _enabled_call(subject.cache, subject.call, i)
        for n in THREADS:
            cells = {subject.name: Cell() for subject in subjects}
            for _ in range(REPEAT):
                for subject in subjects:
                    counts = _Counts(subject, admin)
                    latencies: list[float] = []
                    barrier = threading.Barrier(n + 1)

                    def caller(
                        c: int,
                        subject: Subject = subject,
                        barrier: threading.Barrier = barrier,
                        out: list[float] = latencies,
                    ) -> None:
                        barrier.wait()
                        for j in range(CALLS):
                            start = time.perf_counter()
                            _enabled_call(subject.cache, subject.call, (c + j) % KEYS)
                            out.append(time.perf_counter() - start)

                    threads = [threading.Thread(target=caller, args=(c,)) for c in range(n)]
                    for thread in threads:
                        thread.start()
                    barrier.wait()
                    start = time.perf_counter()
                    for thread in threads:
                        thread.join()
                    counts.add_to(cells[subject.name], time.perf_counter() - start, latencies)
            results += _cell_results(f"{n} threads", n, cells, throughput_bar=False)
    finally:
        for subject in subjects:
            if subject.cache is not None:
                subject.cache.flushall()
                subject.cache.close()
        client.delete(*keys)
        client.close()
        admin.close()
    return results


def _options(config: GCacheKeyConfig, tracked: bool) -> dict[str, Any]:
    return {
        "key_type": "item_id",
        "id_arg": "item",
        "use_case": "Load",
        "track_for_invalidation": tracked,
        "default_config": config,
    }


def _enabled_call(cache: GCache | None, call: Callable[[int], Any], item: int) -> Any:
    if cache is None:
        return call(item)
    with cache.enable():
        return call(item)


def _cell_results(label: str, n: int, cells: dict[str, Cell], *, throughput_bar: bool) -> list[Result]:
    """Rows of one concurrency; ``throughput_bar``: REMOTE only must reach the bare GETs' rate."""
    calls = n * CALLS
    bare = cells["bare"]
    floor = calls / statistics.median(bare.seconds)
    bare_commands = bare.commands / (calls * REPEAT)
    found = []
    for name, cell in cells.items():
        if name == "bare":
            continue
        total = calls * REPEAT
        served = 1 - cell.runs / total
        lat = sorted(cell.latencies)
        p50, p99 = lat[len(lat) // 2], lat[int(len(lat) * 0.99)]
        remote_only = "REMOTE only" in name
        found.append(
            Result(
                f"load, {label}",
                name,
                calls / statistics.median(cell.seconds),
                "ops/s",
                f"bare redis-py GET, same concurrency ({bare_commands:.2f} commands per call)",
                floor,
                target=1.0 if remote_only and throughput_bar else None,
                higher_is_better=True,
                conditions={
                    "all served from the cache": cell.runs == 0,
                    "breaker never opened": cell.opened == 0,
                },
                note=(
                    f"{served:.1%} from the cache, {cell.runs} function runs, {cell.errors} cache errors, "
                    f"{cell.commands / total:.2f} Redis commands per call, p50 {p50 * 1e3:.2f} ms, "
                    f"p99 {p99 * 1e3:.2f} ms, breaker opened {cell.opened} times"
                ),
            )
        )
    return found
