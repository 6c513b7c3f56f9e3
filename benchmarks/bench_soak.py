"""Soak: mixed traffic for minutes, sampling what could grow, to see that memory levels off.

One process, one GCache on Redis: 200 coroutines call three use cases (tracked LOCAL+REMOTE,
tracked REMOTE only, untracked LOCAL+REMOTE) over 20,000 ids, half the calls on a few hot ids
and half spread over all, so LOCAL (5,000 entries a use case) fills, evicts and expires; a
writer invalidates a random id about 50 times a second; the functions take 0-2 ms. Every
``every`` seconds it samples the resident set size, LOCAL entries, the flight tables (single
flights and merged reads), the per-entity epoch table and the counts of calls, function runs and
cache errors, deadline timeouts apart: a write-back not answered within ``write_timeout_sec`` on
a machine saturated by the soak itself is the deadline doing its work (served, counted), while
any other error is a fault of gcache.

Levelling off means: after the first third (the warm-up: LOCAL filling), the largest RSS of the
last third is within 10 % of the largest of the middle third, and so do the flight tables
(within half as much again, plus one entry per caller: they hold the misses of the last quarter
second). ``python -m benchmarks soak`` runs it for 5 minutes and writes results/soak.md;
``run(redis_url, seconds=...)`` takes any length (the test suite runs 15 s).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass
from typing import Any

from benchmarks._harness import make_gcache
from gcache import CacheLayer, GCache, GCacheKeyConfig

__all__ = ["Sample", "levels_off", "run", "table"]

CALLERS, IDS, INVALIDATIONS_PER_SEC = 200, 20_000, 50
BOTH = GCacheKeyConfig(
    ttl_sec={CacheLayer.LOCAL: 20, CacheLayer.REMOTE: 60},
    ramp={CacheLayer.LOCAL: 100, CacheLayer.REMOTE: 100},
)
REMOTE_ONLY = GCacheKeyConfig(ttl_sec={CacheLayer.REMOTE: 60}, ramp={CacheLayer.REMOTE: 100})


@dataclass
class Sample:
    at: float  # seconds since the start
    rss_mb: float
    local_entries: int
    flights: int  # single flights and merged reads held, every use case
    epochs: int  # entities with an invalidation epoch of their own
    calls: int
    runs: int  # calls that reached a function
    errors: int  # cache errors other than deadline timeouts
    timeouts: int  # Redis operations that exceeded their deadline (served uncached, counted)


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def _sample(cache: GCache, start: float, calls: int, runs: int) -> Sample:
    use_cases = list(cache._use_cases)
    registry = cache.config.metrics_registry
    assert registry is not None
    errors = timeouts = 0.0
    for metric in registry.collect():
        for s in metric.samples:
            if s.name != "gcache_error_counter_total":
                continue
            if s.labels["error"] == "TimeoutError":
                timeouts += s.value
            else:
                errors += s.value
    return Sample(
        at=time.monotonic() - start,
        rss_mb=_rss_mb(),
        local_entries=sum(len(uc.local) for uc in use_cases),
        flights=sum(len(uc.flights) + len(uc.reads) for uc in use_cases),
        epochs=len(cache._local.epochs._by_entity),
        calls=calls,
        runs=runs,
        errors=int(errors),
        timeouts=int(timeouts),
    )


def run(
    redis_url: str, seconds: float = 300.0, every: float = 10.0, local_entries: int = 5_000
) -> list[Sample]:
    """Samples of a soak of ``seconds``; ``local_entries`` bounds each use case's LOCAL store."""
    return asyncio.run(_run(redis_url, seconds, every, local_entries))


async def _run(redis_url: str, seconds: float, every: float, local_entries: int) -> list[Sample]:
    cache = make_gcache(redis_url, "bench-soak", local_max_entries=local_entries)
    await cache.astart()
    counts = {"calls": 0, "runs": 0}

    def function() -> Any:
        async def load(item: int) -> dict[str, Any]:
            counts["runs"] += 1
            await asyncio.sleep(random.random() * 0.002)
            return {"id": item, "payload": "x" * 200}

        return load

    functions = [
        cache.cached(
            key_type="item_id",
            id_arg="item",
            use_case=name,
            track_for_invalidation=tracked,
            default_config=config,
        )(function())
        for name, config, tracked in (
            ("SoakTracked", BOTH, True),
            ("SoakTrackedRemote", REMOTE_ONLY, True),
            ("SoakPlain", BOTH, False),
        )
    ]
    start = time.monotonic()
    deadline = start + seconds
    samples = [_sample(cache, start, 0, 0)]

    def pick(rng: random.Random) -> int:  # half the calls on a few hot ids, half over all of them
        if rng.random() < 0.5:
            return min(IDS - 1, int(rng.paretovariate(1.2)) - 1)
        return rng.randrange(IDS)

    async def caller(seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < deadline:
            await rng.choice(functions)(pick(rng))
            counts["calls"] += 1

    async def writer() -> None:
        rng = random.Random(-1)
        while time.monotonic() < deadline:
            await cache.ainvalidate("item_id", pick(rng))
            await asyncio.sleep(1 / INVALIDATIONS_PER_SEC)

    async def sampler() -> None:
        while time.monotonic() < deadline:
            await asyncio.sleep(min(every, max(0.0, deadline - time.monotonic())))
            samples.append(_sample(cache, start, counts["calls"], counts["runs"]))

    try:
        with cache.enable():
            await asyncio.gather(*(caller(i) for i in range(CALLERS)), writer(), sampler())
    finally:
        await cache.aflushall()
        await cache.aclose()
    return samples


def levels_off(samples: list[Sample]) -> bool:
    """The criterion of the module's docstring."""
    third = max(1, len(samples) // 3)
    middle, last = samples[third : 2 * third], samples[2 * third :]
    if not middle or not last:
        return False
    rss = max(s.rss_mb for s in last) <= 1.1 * max(s.rss_mb for s in middle)
    # Finished flights linger a quarter of a second for reads that raced their write: the tables
    # hold about (misses per second) / 4 entries, which moves with the traffic, not with time.
    flights = max(s.flights for s in last) <= 1.5 * max(s.flights for s in middle) + CALLERS
    return rss and flights


def table(samples: list[Sample]) -> str:
    lines = [
        "| s | RSS MB | LOCAL entries | flights | epochs | calls | function runs | cache errors | timeouts |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in samples:
        lines.append(
            f"| {s.at:.0f} | {s.rss_mb:.1f} | {s.local_entries:,} | {s.flights} | {s.epochs:,} | "
            f"{s.calls:,} | {s.runs:,} | {s.errors} | {s.timeouts} |"
        )
    lines.append("")
    lines.append(f"levels off: {'yes' if levels_off(samples) else 'no'}")
    return "\n".join(lines)
