"""What signing keys cost a hit: the same hits as ``bench_hits``, signed against unsigned.

Each row's baseline is gcache's own hit without keys, measured in the same interleaved run, so
the ratio is the HMAC's share alone: one HMAC-SHA-256 over the key and the entry per REMOTE hit,
nothing on a LOCAL hit (its target says so: within noise of unsigned). The REMOTE rows have no
target: they report the HMAC's price, which the README states.
"""

from __future__ import annotations

import asyncio
from typing import Any

from benchmarks._harness import (
    GCACHE,
    GCACHE_TRACKED,
    Result,
    abatch,
    atime_interleaved,
    batch,
    make_gcache,
    time_interleaved,
)
from benchmarks.bench_hits import (
    ID,
    LOCAL_CALLS,
    LOCAL_ONLY,
    LOCAL_REPEAT,
    REMOTE_CALLS,
    REMOTE_ONLY,
    REMOTE_REPEAT,
    _functions,
)
from gcache import GCache, GCacheKeyConfig

__all__ = ["KEY", "run"]

KEY = "benchmark-signing-key-0123456789abcdef"
PREFIX = "bench-signing"
LOCAL_TARGET = 1.05  # unaffected: the ratio's own noise
REMOTE_TARGET = None  # reported, not a bar
UNSIGNED, SIGNED = "gcache, no keys", "gcache, signing_keys"


def _pair(unsigned: GCache, signed: GCache, layer: str, config: GCacheKeyConfig) -> dict[str, Any]:
    return {"unsigned": _functions(unsigned, layer, config), "signed": _functions(signed, layer, config)}


def run(redis_url: str) -> list[Result]:
    unsigned = make_gcache(redis_url, PREFIX + "-plain")
    signed = make_gcache(redis_url, PREFIX + "-signed", signing_keys=[KEY])
    for cache in (unsigned, signed):
        if not cache.start():
            raise RuntimeError("gcache's invalidation bus did not subscribe; tracked LOCAL would be off")
    functions = {"LOCAL": _pair(unsigned, signed, "Local", LOCAL_ONLY)}
    functions["REMOTE"] = _pair(unsigned, signed, "Remote", REMOTE_ONLY)
    results: list[Result] = []
    try:
        with unsigned.enable(), signed.enable():
            for layer, calls, repeat, target in (
                ("LOCAL", LOCAL_CALLS, LOCAL_REPEAT, LOCAL_TARGET),
                ("REMOTE", REMOTE_CALLS, REMOTE_REPEAT, REMOTE_TARGET),
            ):
                for subject in (GCACHE, GCACHE_TRACKED):
                    pair = functions[layer]
                    times = time_interleaved(
                        {
                            UNSIGNED: batch(pair["unsigned"][f"sync {subject}"], (ID,), calls),
                            SIGNED: batch(pair["signed"][f"sync {subject}"], (ID,), calls),
                        },
                        calls,
                        repeat,
                    )
                    results.append(_row(f"sync {layer} hit{_tracked(subject)}, signed", times, target))
            results += asyncio.run(_async_part(functions))
    finally:
        for cache in (unsigned, signed):
            cache.flushall()
            cache.close()
    return results


async def _async_part(functions: dict[str, dict[str, Any]]) -> list[Result]:
    results: list[Result] = []
    for layer, calls, repeat, target in (
        ("LOCAL", LOCAL_CALLS, LOCAL_REPEAT, LOCAL_TARGET),
        ("REMOTE", REMOTE_CALLS, REMOTE_REPEAT, REMOTE_TARGET),
    ):
        for subject in (GCACHE, GCACHE_TRACKED):
            pair = functions[layer]
            times = await atime_interleaved(
                {
                    UNSIGNED: abatch(pair["unsigned"][f"async {subject}"], (ID,), calls),
                    SIGNED: abatch(pair["signed"][f"async {subject}"], (ID,), calls),
                },
                calls,
                repeat,
            )
            results.append(_row(f"async {layer} hit{_tracked(subject)}, signed", times, target))
    return results


def _tracked(subject: str) -> str:
    return " tracked" if subject == GCACHE_TRACKED else ""


def _row(scenario: str, times: dict[str, float], target: float | None) -> Result:
    return Result(scenario, SIGNED, times[SIGNED], "µs/op", UNSIGNED, times[UNSIGNED], target=target)
