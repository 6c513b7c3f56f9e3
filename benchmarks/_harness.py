"""What the scenarios share: the result record, interleaved median-of-N timing, the cached value,
gcache and bare redis-py set-up, the pool notes, and a description of the machine.

Timing: each subject and its baseline are timed in alternating batches (subject, baseline,
subject, ...) and the median batch of each is kept. Alternating spreads a burst of load on the
machine over both sides, and the median leaves out the disturbed batches and the lucky ones
alike. The best batch, kept before, let one quiet moment decide a side: on this shared machine
the REMOTE hit ratios of six runs then spread from 0.99x to 1.29x; with the median, three runs
stayed within 1.06x-1.13x.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import statistics
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio
from prometheus_client import CollectorRegistry

from gcache import GCache, GCacheConfig, RedisConfig
from gcache._loop_thread import LoopThread
from gcache.remote import RemoteCache

__all__ = [
    "AIOCACHE_POOL_NOTE",
    "BARE_POOL_NOTE",
    "BASELINE",
    "CASHEWS_POOL_NOTE",
    "GCACHE_POOL_NOTE",
    "GCACHE",
    "GCACHE_TRACKED",
    "TIMES",
    "TRACKED_FLOOR",
    "POOL_SIZE",
    "AsyncBatch",
    "Result",
    "SyncBatch",
    "abatch",
    "atime_interleaved",
    "bare_async_client",
    "bare_sync_client",
    "batch",
    "environment",
    "gcache_errors",
    "make_gcache",
    "redis_parts",
    "rows",
    "script_floor",
    "server_version",
    "time_interleaved",
    "user",
]

GCACHE = "gcache"
GCACHE_TRACKED = "gcache, tracked"
BASELINE = "baseline"
TRACKED_FLOOR = "tracked Redis calls alone"
TIMES = "\N{MULTIPLICATION SIGN}"
POOL_SIZE = 64  # connections per client, the same for every library in every REMOTE scenario

SyncBatch = Callable[[], float]  # runs one batch, returns the seconds it took
AsyncBatch = Callable[[], Awaitable[float]]


def user(user_id: str) -> dict[str, Any]:
    """The cached value everywhere: a small dict of three fields, as a service would cache."""
    return {"id": user_id, "name": "Ada Lovelace", "active": True}


@dataclass
class Result:
    """One row of the results table.

    ``value`` and ``baseline_value`` are in ``unit``. ``target`` is the ratio the subject must stay
    under (or, with ``higher_is_better``, reach); ``conditions`` are further yes/no requirements
    (no errors, everything served from the cache). A rival library's row names in ``rival_of`` the
    gcache subject of the same scenario that must beat it.
    """

    scenario: str
    subject: str
    value: float
    unit: str
    baseline: str
    baseline_value: float
    target: float | None = None
    higher_is_better: bool = False
    conditions: dict[str, bool] = field(default_factory=dict)
    rival_of: str | None = None
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.value / self.baseline_value if self.baseline_value else float("nan")

    def better_than(self, other: Result) -> bool:
        return self.value > other.value if self.higher_is_better else self.value < other.value

    def target_met(self) -> bool | None:
        """Whether the ratio target and every condition hold; None when the row has no target."""
        if self.target is None and not self.conditions:
            return None
        ok = all(self.conditions.values())
        if self.target is not None:
            ok = ok and (self.ratio >= self.target if self.higher_is_better else self.ratio <= self.target)
        return ok

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> Result:
        return Result(**data)


def rows(scenario: str, times: Mapping[str, float], baseline: str, target: float) -> list[Result]:
    """The rows of a timed scenario (µs/op): gcache's subjects carry the target, every other
    subject (a rival library) is compared with gcache's untracked subject.

    A subject named ``TRACKED_FLOOR`` (gcache's tracked Redis calls alone, through its
    ``RemoteCache``, without the read-through around them) is no row of its own: the tracked row's
    note compares with it, since they cost more than a GET (more commands, or a script).
    """
    found = []
    for subject, us in times.items():
        if subject in (BASELINE, TRACKED_FLOOR):
            continue
        ours = subject.startswith(GCACHE)
        found.append(
            Result(
                scenario,
                subject,
                us,
                "µs/op",
                baseline,
                times[BASELINE],
                target=target if ours else None,
                rival_of=None if ours else GCACHE,
                note=(
                    f"its Redis calls alone {times[TRACKED_FLOOR]:.0f} µs: "
                    f"{us / times[TRACKED_FLOOR]:.2f}{TIMES} of them"
                    if subject == GCACHE_TRACKED and TRACKED_FLOOR in times
                    else ""
                ),
            )
        )
    return found


def script_floor(redis_url: str) -> RemoteCache:
    """gcache's own Redis access layer, to time its tracked calls without the read-through (its
    reads bounded as a GCache's are by default)."""
    return RemoteCache(
        redis_config=RedisConfig(url=redis_url, max_connections=POOL_SIZE),
        client_factory=None,
        compute_limit_ms=300_000,
        loop_thread=LoopThread("bench-floor"),
        max_value_bytes=GCacheConfig.max_value_bytes,
    )


# -- timing ----------------------------------------------------------------------------------------


def batch(fn: Callable[..., object], args: tuple[Any, ...], n: int) -> SyncBatch:
    """A batch of ``n`` calls ``fn(*args)``."""

    def run() -> float:
        start = time.perf_counter()
        for _ in range(n):
            fn(*args)
        return time.perf_counter() - start

    return run


def abatch(fn: Callable[..., Awaitable[object]], args: tuple[Any, ...], n: int) -> AsyncBatch:
    """A batch of ``n`` awaited calls ``fn(*args)``."""

    async def run() -> float:
        start = time.perf_counter()
        for _ in range(n):
            await fn(*args)
        return time.perf_counter() - start

    return run


def time_interleaved(batches: Mapping[str, SyncBatch], n: int, repeat: int) -> dict[str, float]:
    """Microseconds per call of each batch, median of ``repeat`` alternating runs (after a warm-up)."""
    for run in batches.values():
        run()
    seen: dict[str, list[float]] = {name: [] for name in batches}
    for _ in range(repeat):
        for name, run in batches.items():
            seen[name].append(run())
    return {name: statistics.median(seconds) / n * 1e6 for name, seconds in seen.items()}


async def atime_interleaved(batches: Mapping[str, AsyncBatch], n: int, repeat: int) -> dict[str, float]:
    """Async twin of :func:`time_interleaved`."""
    for run in batches.values():
        await run()
    seen: dict[str, list[float]] = {name: [] for name in batches}
    for _ in range(repeat):
        for name, run in batches.items():
            seen[name].append(await run())
    return {name: statistics.median(seconds) / n * 1e6 for name, seconds in seen.items()}


# -- the libraries -----------------------------------------------------------------------------------


def make_gcache(redis_url: str, prefix: str, **config: Any) -> GCache:
    """A gcache on ``redis_url`` with a private metrics registry and a pool of POOL_SIZE."""
    return GCache(
        GCacheConfig(
            redis_config=RedisConfig(url=redis_url, max_connections=POOL_SIZE),
            urn_prefix=prefix,
            metrics_registry=CollectorRegistry(),
            **config,
        )
    )


def gcache_errors(cache: GCache) -> int:
    """Cache-side errors gcache counted (and served uncached), from its private registry."""
    registry = cache.config.metrics_registry
    assert registry is not None
    total = 0.0
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name == "gcache_error_counter_total":
                total += sample.value
    return int(total)


def redis_parts(url: str) -> dict[str, Any]:
    """Host, port, db, username and password of a ``redis://`` URL, for libraries that take them
    apart (aiocache takes no username: give it a URL whose user is ``default``)."""
    parts = urlsplit(url)
    db = parts.path.lstrip("/")
    return {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 6379,
        "db": int(db) if db.isdigit() else 0,
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else None,
    }


def bare_async_client(url: str) -> redis.asyncio.Redis:
    """A redis.asyncio client with a blocking pool of POOL_SIZE (callers wait for a connection)."""
    pool = redis.asyncio.BlockingConnectionPool.from_url(url, max_connections=POOL_SIZE)
    return redis.asyncio.Redis.from_pool(pool)


def bare_sync_client(url: str) -> redis.Redis:
    """A redis-py client with a blocking pool of POOL_SIZE, like gcache's sync client."""
    return redis.Redis.from_pool(redis.BlockingConnectionPool.from_url(url, max_connections=POOL_SIZE))


CASHEWS_POOL_NOTE = f"cashews: its default BlockingConnectionPool, max_connections={POOL_SIZE}"
AIOCACHE_POOL_NOTE = (
    f"aiocache: pool_max_size={POOL_SIZE}, connection_pool_class=BlockingConnectionPool "
    "(its default pool fails at once when full)"
)
GCACHE_POOL_NOTE = f"gcache: RedisConfig(max_connections={POOL_SIZE}) (a blocking pool)"
BARE_POOL_NOTE = f"redis-py: BlockingConnectionPool(max_connections={POOL_SIZE})"


# -- the machine ---------------------------------------------------------------------------------------


def environment() -> dict[str, str]:
    """Facts that qualify the figures: interpreter, cores, load, date, libraries."""
    load = os.getloadavg()
    facts = {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "python": f"{platform.python_implementation()} {platform.python_version()} on {platform.machine()}",
        "cores": str(os.cpu_count()),
        "load": f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}",
        "redis-py": redis.__version__,
    }
    for name in ("hiredis", "cachetools", "cashews", "aiocache"):
        try:
            facts[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            facts[name] = "not installed"
    return facts


def server_version(url: str) -> str:
    client = redis.Redis.from_url(url)
    try:
        info = client.info("server")
        return str(info.get("redis_version", "?"))
    finally:
        client.close()
