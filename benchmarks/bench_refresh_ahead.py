"""A hot key across its TTL boundary, with and without ``refresh_ahead``: the latency of the
callers near expiry.

One hot key of a LOCAL + REMOTE use case (untracked and tracked), TTL ``TTL`` s in both layers,
whose function takes ``FUNCTION_SEC`` (``asyncio.sleep``). ``CALLERS`` tasks call it back to back
(a pause of ``PAUSE_SEC`` between calls) for ``CYCLES`` TTLs, once with ``refresh_ahead`` off and
once with ``refresh_ahead=AHEAD``, in the same process against the same Redis, one run after the
other (off first, then on, then off and on again: the figures are the second pair's, the first
warms up).

**Near expiry**: a call issued within ``NEAR_BEFORE`` s before or ``NEAR_AFTER`` s after a moment
an entry of that run expired or would have expired, which is each write's time + TTL (the
function's return, in either run; a refreshed entry's old expiry counts too). Without refresh
those are the callers that meet the miss and wait for the function; with it, the same moments of
the entries' lives. The figures: p50, p99 and the largest latency of those calls, of all calls,
the function's runs, and the ratio of the p99 near expiry with refresh to the one without.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from benchmarks._harness import make_gcache
from gcache import CacheLayer, GCache, GCacheKeyConfig

__all__ = ["run", "table"]

TTL = 1.0
AHEAD = 0.8
FUNCTION_SEC = 0.02
CALLERS = 20
PAUSE_SEC = 0.001
CYCLES = 6
NEAR_BEFORE, NEAR_AFTER = 0.1, 0.05
PREFIX = "bench-refresh-ahead"


def _config(ahead: float) -> GCacheKeyConfig:
    both = (CacheLayer.LOCAL, CacheLayer.REMOTE)
    ttls: dict[CacheLayer, float] = dict.fromkeys(both, TTL)
    ramps: dict[CacheLayer, float] = dict.fromkeys(both, 100)
    return GCacheKeyConfig(ttl_sec=ttls, ramp=ramps, refresh_ahead=ahead)


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def _run_once(cache: GCache, use_case: str, tracked: bool, ahead: float) -> dict[str, Any]:
    writes: list[float] = []  # when each run of the function returned (its entry's write)

    options: dict[str, Any] = {"default_config": _config(ahead), "track_for_invalidation": tracked}

    @cache.cached(key_type="hot", id_arg="key", use_case=use_case, **options)
    async def hot(key: str) -> str:
        await asyncio.sleep(FUNCTION_SEC)
        writes.append(time.monotonic())
        return key

    calls: list[tuple[float, float]] = []  # (issued, latency)
    with cache.enable():
        await hot("k")  # filled: the run starts with a fresh entry
        end = time.monotonic() + CYCLES * TTL

        async def caller() -> None:
            while (now := time.monotonic()) < end:
                await hot("k")
                calls.append((now, time.monotonic() - now))
                await asyncio.sleep(PAUSE_SEC)

        await asyncio.gather(*(caller() for _ in range(CALLERS)))
        await asyncio.sleep(FUNCTION_SEC * 3)  # a refresh still running lands before the flush
    await cache.aflushall()
    expiries = [w + TTL for w in writes]
    near = [lat for issued, lat in calls if any(-NEAR_BEFORE <= issued - e <= NEAR_AFTER for e in expiries)]
    every = [lat for _, lat in calls]
    return {
        "runs": len(writes),
        "calls": len(calls),
        "near": len(near),
        "near_p50": statistics.median(near) if near else float("nan"),
        "near_p99": _quantile(near, 0.99),
        "near_max": max(near, default=float("nan")),
        "all_p99": _quantile(every, 0.99),
    }


def run(redis_url: str) -> list[dict[str, Any]]:
    """One row per (tracked, refresh_ahead) of the measured pair."""
    cache = make_gcache(redis_url, PREFIX)
    cache.start()
    rows: list[dict[str, Any]] = []
    try:
        for tracked in (False, True):
            kind = "tracked" if tracked else "untracked"
            measured: dict[float, dict[str, Any]] = {}
            for round_ in range(2):
                for ahead in (0.0, AHEAD):
                    name = f"Hot{kind.title()}{int(ahead * 100)}R{round_}"
                    measured[ahead] = asyncio.run(_run_once(cache, name, tracked, ahead))
            off, on = measured[0.0], measured[AHEAD]
            for ahead, figures in ((0.0, off), (AHEAD, on)):
                rows.append({
                    "use case": kind, "refresh_ahead": ahead, **figures,
                    "ratio": figures["near_p99"] / off["near_p99"],
                })  # fmt: skip
    finally:
        cache.close()
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    def ms(seconds: float) -> str:
        return f"{seconds * 1000:.2f} ms"

    lines = [
        "| use case | refresh_ahead | function runs | calls | near expiry | p50 near | p99 near | max near "
        "| p99 all | p99 near / without |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['use case']} | {r['refresh_ahead'] or 'off'} | {r['runs']} | {r['calls']:,} "
            f"| {r['near']:,} "
            f"| {ms(r['near_p50'])} | {ms(r['near_p99'])} | {ms(r['near_max'])} | {ms(r['all_p99'])} "
            f"| {r['ratio']:.4f} |"
        )
    return "\n".join(lines)


def parameters() -> str:
    return (
        f"A hot key, LOCAL + REMOTE, TTL {TTL:g} s; function {FUNCTION_SEC * 1000:g} ms; {CALLERS} async "
        f"callers back to back ({PAUSE_SEC * 1000:g} ms pause) for {CYCLES} TTLs; refresh_ahead={AHEAD:g}; "
        f"near expiry: issued from {NEAR_BEFORE * 1000:g} ms before to {NEAR_AFTER * 1000:g} ms after an "
        "entry's write + TTL."
    )
