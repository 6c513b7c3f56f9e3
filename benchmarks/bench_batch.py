"""A page of 50 ids: ``cached_many`` against 50 single cached calls and one bare MGET.

- **Cold LOCAL, warm REMOTE** (a REMOTE-only use case, so every call reads Redis): a batch of 50
  against one bare redis-py ``MGET`` of the 50 keys (values as large as gcache's, not unpickled;
  the floor). Target: at most 1.3x, untracked (a tracked page also reads each entity's fence: a
  hundred reads, reported against the same MGET without a target). Beside it, the same MGET with
  each value unpickled (what a hand-written batch cache must do at least), and 50 single calls of
  the same entries. Timed in alternating batches of 20 pages (``time_interleaved``).
- **Reads unbounded** (``max_value_bytes=None``, as the MGET: nothing bounds what it reads), the
  same pages: gcache then sends one MGET for a batch instead of a bounded GETRANGE a key.
- **10 of the 50 missing** (deleted before each call): one batch, whose function runs once with the
  10 ids, against 50 single calls, whose function runs 10 times (counted, a condition).

Sync and async, untracked and tracked.
"""

from __future__ import annotations

import asyncio
import pickle
import statistics
import time
from collections.abc import Iterable
from typing import Any

from benchmarks._harness import (
    Result,
    abatch,
    atime_interleaved,
    bare_async_client,
    bare_sync_client,
    batch,
    make_gcache,
    time_interleaved,
    user,
)
from gcache import CacheLayer, GCache, GCacheKey, GCacheKeyConfig
from gcache._envelope import HEADER_SIZE

__all__ = ["run"]

PREFIX = "bench-batch"
IDS = [str(i) for i in range(50)]
MISSING = IDS[::5]  # 10 ids
REMOTE_ONLY = GCacheKeyConfig(ttl_sec={CacheLayer.REMOTE: 3600}, ramp={CacheLayer.REMOTE: 100})
TARGET = 1.3
# Many short batches, alternating: this shared machine's speed moves within a second (a page's own
# CPU, Redis stubbed out, ran 47-90 µs in one minute); the median batch is a typical one.
CALLS, REPEAT = 20, 75
SINGLE_PAGES = 20  # pages of 50 single calls, each about 25 batched pages long: timed apart
MISS_CALLS = 50


def _functions(cache: GCache, tracked: bool, counts: dict[str, int]) -> dict[str, Any]:
    name = "Tracked" if tracked else "Plain"

    def load(ids: Iterable[str]) -> dict[str, Any]:
        ids = list(ids)
        counts["batch"] += 1
        return {i: user(i) for i in ids}

    async def aload(ids: Iterable[str]) -> dict[str, Any]:
        return load(ids)

    def one(user_id: str) -> Any:
        counts["single"] += 1
        return user(user_id)

    async def aone(user_id: str) -> Any:
        return one(user_id)

    many: dict[str, Any] = {
        "key_type": "user_id",
        "ids_arg": "ids",
        "track_for_invalidation": tracked,
        "default_config": REMOTE_ONLY,
    }
    single: dict[str, Any] = {
        "key_type": "user_id",
        "id_arg": "user_id",
        "track_for_invalidation": tracked,
        "default_config": REMOTE_ONLY,
    }
    return {
        "sync many": cache.cached_many(use_case=f"Sync{name}", **many)(load),
        "async many": cache.cached_many(use_case=f"Async{name}", **many)(aload),
        "sync one": cache.cached(use_case=f"Sync{name}", **single)(one),
        "async one": cache.cached(use_case=f"Async{name}", **single)(aone),
    }


def run(redis_url: str, admin_url: str) -> list[Result]:
    """``admin_url`` for the bare MGET (the admin login's: gcache's own may be denied it)."""
    cache = make_gcache(redis_url, PREFIX)
    unbounded = make_gcache(redis_url, f"{PREFIX}-unbounded", max_value_bytes=None)
    counts = {"batch": 0, "single": 0}
    variants = [  # (what the scenario adds, its functions, tracked)
        ("", _functions(cache, False, counts), False),
        (" tracked", _functions(cache, True, counts), True),
        (", reads unbounded", _functions(unbounded, False, counts), False),
    ]
    client = bare_sync_client(admin_url)
    aclient = bare_async_client(admin_url)
    payload = pickle.dumps(user(IDS[0]), protocol=pickle.HIGHEST_PROTOCOL) + b"\0" * HEADER_SIZE
    bare_keys = ["{" + f"{PREFIX}:bare:{i}" + "}#Bare" for i in IDS]
    for key in bare_keys:
        client.set(key, payload)
    results: list[Result] = []
    try:
        with cache.enable(), unbounded.enable():
            for suffix, fns, tracked in variants:
                fns["sync many"](IDS)  # warm REMOTE
                asyncio.run(fns["async many"](IDS))
                one = fns["sync one"]
                times = time_interleaved(
                    {
                        "bare": batch(client.mget, (bare_keys,), CALLS),
                        "decoded": batch(lambda: _decoded(client.mget(bare_keys)), (), CALLS),
                        "many": batch(fns["sync many"], (IDS,), CALLS),
                    },
                    CALLS,
                    REPEAT,
                )
                times["one"] = _single_calls(lambda: [one(i) for i in IDS])  # noqa: B023
                results += _rows(f"sync page of 50{suffix}, cold LOCAL", times)
                times = asyncio.run(_async_times(fns, aclient, bare_keys))
                results += _rows(f"async page of 50{suffix}, cold LOCAL", times)
                if not suffix.endswith("unbounded"):
                    results.append(_missing(cache, fns, tracked, counts))
    finally:
        for each in (cache, unbounded):
            each.flushall()
            each.close()
        client.delete(*bare_keys)
    return results


async def _async_times(fns: dict[str, Any], aclient: Any, bare_keys: list[str]) -> dict[str, float]:
    one = fns["async one"]

    async def decoded() -> list[Any]:
        return _decoded(await aclient.mget(bare_keys))

    async def singles() -> None:
        for i in IDS:
            await one(i)

    times = await atime_interleaved(
        {
            "bare": abatch(aclient.mget, (bare_keys,), CALLS),
            "decoded": abatch(decoded, (), CALLS),
            "many": abatch(fns["async many"], (IDS,), CALLS),
        },
        CALLS,
        REPEAT,
    )
    start = time.perf_counter()
    for _ in range(SINGLE_PAGES):
        await singles()
    times["one"] = (time.perf_counter() - start) / SINGLE_PAGES * 1e6
    await aclient.aclose()
    return times


def _single_calls(page: Any) -> float:
    """µs a page of 50 single calls, the mean of SINGLE_PAGES."""
    start = time.perf_counter()
    for _ in range(SINGLE_PAGES):
        page()
    return (time.perf_counter() - start) / SINGLE_PAGES * 1e6


def _decoded(values: list[Any]) -> list[Any]:
    """What a hand-written batch over MGET must do too: each value's frame (as long as gcache's,
    at its end here) dropped, the rest unpickled."""
    return [pickle.loads(memoryview(value)[: len(value) - HEADER_SIZE]) for value in values]


def _rows(scenario: str, times: dict[str, float]) -> list[Result]:
    bare = times["bare"]
    mget = f"{'redis.asyncio' if scenario.startswith('async') else 'redis-py'} MGET of 50"
    return [
        Result(
            scenario,
            "cached_many",
            times["many"],
            "µs/page",
            mget,
            bare,
            target=None if "tracked" in scenario else TARGET,
        ),
        Result(
            scenario,
            "cached_many",
            times["many"],
            "µs/page",
            f"{mget}, each value unpickled",
            times["decoded"],
        ),
        Result(scenario, "50 cached calls", times["one"], "µs/page", mget, bare),
    ]


def _missing(cache: GCache, fns: dict[str, Any], tracked: bool, counts: dict[str, int]) -> Result:
    """10 of 50 missing before each page: the batch's function once a page, the singles' 10 times."""
    tag = "Tracked" if tracked else "Plain"
    many_times, one_times = [], []
    counts.update(batch=0, single=0)
    for _ in range(MISS_CALLS):
        _forget(cache, f"Sync{tag}", tracked)
        start = time.perf_counter()
        fns["sync many"](IDS)
        many_times.append(time.perf_counter() - start)
        _forget(cache, f"Sync{tag}", tracked)
        start = time.perf_counter()
        for i in IDS:
            fns["sync one"](i)
        one_times.append(time.perf_counter() - start)
    suffix = " tracked" if tracked else ""
    return Result(
        f"sync page of 50{suffix}, 10 missing",
        "cached_many",
        statistics.median(many_times) * 1e6,
        "µs/page",
        "50 cached calls",
        statistics.median(one_times) * 1e6,
        conditions={
            "one function call a page": counts["batch"] == MISS_CALLS,
            "the singles' ten": counts["single"] == 10 * MISS_CALLS,
        },
        note=f"function calls: batch {counts['batch']}, singles {counts['single']}",
    )


def _forget(cache: GCache, use_case: str, tracked: bool) -> None:
    for i in MISSING:
        cache.delete(
            GCacheKey("user_id", i, use_case, invalidation_tracking=tracked, default_config=REMOTE_ONLY)
        )
