"""1,000 concurrent async callers over 100 keys: throughput, errors and hit rate.

Scenario (6) of the benchmark issue. Callers arrive in waves: each wave is one
``asyncio.gather`` of 1,000 calls over 100 ids (each id 10 times). After a warm-up that fills
the cache, ``WAVES`` waves are timed, ``REPEAT`` times, subjects taking turns; the best
repetition gives the calls per second.

The floor is bare redis-py: the same 1,000 concurrent GETs over 100 keys on one
``redis.asyncio`` client. Every client has a pool of ``POOL_SIZE`` connections whose callers
wait for a free one (see the pool notes in the table). For each subject the run also reports
how many calls raised, how many cache-side errors gcache counted (it serves those calls
uncached), and the share of calls served from the cache (calls that did not reach the function).

gcache runs twice: REMOTE only (every call is one Redis round trip, like the floor; this is the
row with the target) and LOCAL+REMOTE tracked (the usual set-up: after warm-up every call is a
LOCAL hit). cashews and aiocache use their Redis backends; cashews coalesces concurrent calls of
one key by default, so it makes about 100 round trips per wave where the others make 1,000.
"""

from __future__ import annotations

import asyncio
import pickle
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio

from benchmarks import _rivals
from benchmarks._harness import (
    GCACHE,
    Result,
    bare_async_client,
    gcache_errors,
    make_gcache,
    user,
)
from gcache import CacheLayer, GCache, GCacheKeyConfig
from gcache._envelope import HEADER_SIZE

__all__ = ["CALLERS", "KEYS", "TARGET", "run"]

TARGET = 0.8
CALLERS, KEYS = 1_000, 100
WAVES, REPEAT, WARMUP_WAVES = 5, 5, 2
TTL = 600
PREFIX = "bench-concurrency"
SCENARIO = f"{CALLERS:,} concurrent callers, {KEYS} keys"
BASELINE_NAME = "redis.asyncio GET, same concurrency"
REMOTE_ONLY = GCacheKeyConfig(ttl_sec={CacheLayer.REMOTE: TTL}, ramp={CacheLayer.REMOTE: 100})
BOTH = GCacheKeyConfig.enabled(TTL)
GCACHE_REMOTE = f"{GCACHE}, REMOTE only"
GCACHE_BOTH = f"{GCACHE}, LOCAL+REMOTE, tracked"


@dataclass
class Subject:
    name: str
    call: Callable[[str], Awaitable[Any]]
    cache: GCache | None = None  # whose error counter to read
    calls: list[int] = field(default_factory=lambda: [0])  # calls that reached the function
    raised: int = 0
    errors: int = 0
    commands: int = 0  # Redis commands the server ran during the timed waves
    best: float = float("inf")


def run(redis_url: str, admin_url: str) -> list[Result]:
    """``redis_url`` for gcache and bare redis-py; ``admin_url`` for the rivals (see bench_hits)
    and INFO commandstats."""
    return asyncio.run(_run(redis_url, admin_url))


def _counting(subject_calls: list[int]) -> Callable[[str], Awaitable[dict[str, Any]]]:
    async def load_user(user_id: str) -> dict[str, Any]:
        subject_calls[0] += 1
        return user(user_id)

    return load_user


async def _run(redis_url: str, admin_url: str) -> list[Result]:
    ids = [str(i) for i in range(KEYS)]
    client = bare_async_client(redis_url)
    stats = redis.asyncio.Redis.from_url(admin_url)
    payload = pickle.dumps(user("0"), protocol=pickle.HIGHEST_PROTOCOL) + b"\0" * HEADER_SIZE
    bare_keys = {i: "{" + PREFIX + ":bare:" + i + "}#Concurrency" for i in ids}
    for key in bare_keys.values():
        await client.set(key, payload, ex=TTL)

    async def bare_get(user_id: str) -> Any:
        return await client.get(bare_keys[user_id])

    subjects = [Subject("baseline", bare_get)]
    caches: list[GCache] = []
    for name, config, tracked in ((GCACHE_REMOTE, REMOTE_ONLY, False), (GCACHE_BOTH, BOTH, True)):
        cache = make_gcache(redis_url, f"{PREFIX}-{len(caches)}")
        await cache.astart()
        caches.append(cache)
        subject = Subject(name, _noop, cache)
        subject.call = cache.cached(
            key_type="user_id",
            id_arg="user_id",
            use_case="Concurrency",
            default_config=config,
            track_for_invalidation=tracked,
        )(_counting(subject.calls))
        subjects.append(subject)
    rivals = _rivals.rivals_redis(admin_url, TTL, PREFIX)
    for rival in rivals:
        subject = Subject(rival.name, _noop)
        subject.call = rival.decorate(_counting(subject.calls))
        subjects.append(subject)

    try:
        with _enabled(caches):
            for subject in subjects:
                for user_id in ids:  # fill the cache, then let every subject settle in
                    await subject.call(user_id)
                for _ in range(WARMUP_WAVES):
                    await _wave(subject, ids)
                subject.calls[0] = 0
                subject.raised = 0
                subject.errors = -gcache_errors(subject.cache) if subject.cache is not None else 0
            for _ in range(REPEAT):
                for subject in subjects:
                    before = await _commands(stats)
                    start = time.perf_counter()
                    for _ in range(WAVES):
                        await _wave(subject, ids)
                    subject.best = min(subject.best, time.perf_counter() - start)
                    subject.commands += await _commands(stats) - before - 1  # less the INFO itself
            for subject in subjects:
                if subject.cache is not None:
                    subject.errors += gcache_errors(subject.cache)
    finally:
        for rival in rivals:
            await rival.close()
        for cache in caches:
            await cache.aflushall()
            await cache.aclose()
        await client.delete(*bare_keys.values())
        await client.aclose()
        await stats.aclose()
    return _results(subjects)


async def _commands(client: redis.asyncio.Redis) -> int:
    """Commands the Redis server has run so far (INFO commandstats)."""
    stats = await client.info("commandstats")
    return sum(int(entry["calls"]) for entry in stats.values() if isinstance(entry, dict))


async def _noop(user_id: str) -> None:
    return None


class _enabled:
    """``enable()`` of several caches at once."""

    def __init__(self, caches: list[GCache]) -> None:
        self._blocks = [cache.enable() for cache in caches]

    def __enter__(self) -> None:
        for block in self._blocks:
            block.__enter__()

    def __exit__(self, *exc: object) -> None:
        for block in reversed(self._blocks):
            block.__exit__(*exc)


async def _wave(subject: Subject, ids: list[str]) -> None:
    call = subject.call
    outcomes = await asyncio.gather(*[call(ids[i % KEYS]) for i in range(CALLERS)], return_exceptions=True)
    subject.raised += sum(isinstance(outcome, BaseException) for outcome in outcomes)


def _results(subjects: list[Subject]) -> list[Result]:
    baseline = subjects[0]
    timed_calls = CALLERS * WAVES
    total_calls = timed_calls * REPEAT
    floor = timed_calls / baseline.best
    found = []
    baseline_name = (
        f"{BASELINE_NAME} ({baseline.raised} raised, "
        f"{baseline.commands / total_calls:.2f} Redis commands per call)"
    )
    for subject in subjects[1:]:
        served = 1 - subject.calls[0] / total_calls
        ours = subject.cache is not None
        note = f"{subject.raised} raised, "
        note += f"{subject.errors} cache errors, " if ours else ""
        note += f"{served:.1%} from the cache, {subject.commands / total_calls:.2f} Redis commands per call"
        found.append(
            Result(
                SCENARIO,
                subject.name,
                timed_calls / subject.best,
                "ops/s",
                baseline_name,
                floor,
                target=TARGET if ours else None,
                higher_is_better=True,
                conditions=(
                    {
                        "no errors": subject.raised == 0 and subject.errors == 0,
                        "every call from the cache": subject.calls[0] == 0,
                    }
                    if ours
                    else {}
                ),
                rival_of=None if ours else GCACHE_REMOTE,
                note=note,
            )
        )
    return found
