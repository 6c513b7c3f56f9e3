"""Cached calls while Redis fails: latency per call and the share of right values.

Faults, each on its own private process or socket on 127.0.0.1 (never the scenarios' shared
Redis):

- **healthy**: a working Redis, the baseline every fault is compared with;
- **killed**: the Redis process is killed (SIGKILL) after the caches have connected: connects
  are refused;
- **paused**: the Redis process is stopped (SIGSTOP) after the caches have connected: connects
  succeed (the kernel still accepts them) and nothing is answered;
- **hanging**: a ``HangingListener`` from the start: accepts connections, never answers (a
  frozen host, a black-holing network);
- **full**: ``--maxmemory 8mb --maxmemory-policy noeviction``, filled past its limit after the
  caches have connected: reads are answered, every write is refused with OOM.

Two configurations:

- **gcache defaults**: ``GCacheConfig()`` as shipped: a 50 ms deadline on lookups, 250 ms on
  write-backs, redis-py's retries off, a circuit breaker that opens after 5 failures in a row and
  probes Redis every second.
- **bare**: what the cache would do without those protections: ``breaker_failures=0``,
  ``read_timeout_sec=None``, ``write_timeout_sec=None``, and a plain redis-py client as a user
  would construct it, ``redis.asyncio.Redis(host=..., port=..., username=..., password=...,
  socket_timeout=1.0, socket_connect_timeout=1.0)``, handed to gcache through
  ``redis_client_factory``. That client keeps redis-py 8's default retry policy,
  ``Retry(ExponentialWithJitterBackoff(base=0.01, cap=1), 10)`` (10 retries; a connection's
  handshake is retried the same way), which a ``RedisConfig`` cannot express: its
  ``redis_py_options`` go to gcache's sync and asyncio clients alike, and a retry object belongs
  to one of the two. Through the factory, sync callers reach that client on gcache's background
  loop thread. (``Redis.from_url`` would build a client
  with no retries at all in redis-py 8.1: only the constructor has the default policy.) The
  socket timeouts are RedisConfig's defaults.

The cached function sleeps 1 ms (``time.sleep`` / ``asyncio.sleep``) and returns a small dict;
the use case is REMOTE only and every call uses a new id, so every call is a lookup that misses,
the function, and a write-back (the path that touches Redis most). Calls arrive in waves of
``WAVE`` concurrent callers (threads for the sync function, tasks for the async one). Each
(fault, configuration) gives its sync and async callers a GCache each (so each has its own
breaker), which ran one healthy wave first when the fault allows it (a running service has its
connections open when the fault strikes; the hanging listener never answers, so there the caches
start cold). Each caller makes ``WAVES`` waves, except in the slow cells, the bare configuration
under a killed, paused or hanging Redis: a call there costs seconds (about 4 s refused, 15 s
hanging: 11 tries of a 1 s timeout, plus backoff), so it makes one wave (``WAVE`` calls) and its
p99 is its max. The sync callers run, then the async ones; in the slow cells, which only wait,
both at the same time.

Reported per (fault, configuration, caller): calls, latency p50 / p99 / max, the share of calls
that returned the function's value (the rest raised or returned something else), the p50 over
the same caller's healthy p50 in the same configuration, the cache-side errors gcache counted
(``gcache_error_counter`` during the measured calls, each served uncached) and whether the
breaker opened. gcache's own log lines (one per kind of error and interval) are silenced: the
table counts the errors.

Latencies are wall-clock times with ``WAVE`` callers at once, so on a small machine they include
waiting for a core; compare a fault with the healthy row of the same configuration and caller
(the ratio column), both measured in this run.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import statistics
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio
from prometheus_client import CollectorRegistry

from benchmarks._harness import gcache_errors, make_gcache, redis_parts, user
from gcache import CacheLayer, GCache, GCacheConfig, GCacheKeyConfig
from gcache._embedded_redis import EmbeddedRedis, HangingListener

__all__ = ["CONFIGS", "FAULTS", "Cell", "parameters", "run", "table"]

WAVE = 20  # concurrent callers per wave
WAVES = 10  # waves per caller: 200 calls
SLOW_WAVES = 1  # bare configuration under killed / paused / hanging: 20 calls, seconds each
FUNCTION_SEC = 0.001
SOCKET_TIMEOUT = 1.0  # RedisConfig's default socket and connect timeouts
PREFIX = "bench-faults"
USE_CASE = "Faults"
REMOTE_ONLY = GCacheKeyConfig(ttl_sec={CacheLayer.REMOTE: 600}, ramp={CacheLayer.REMOTE: 100})

HEALTHY, KILLED, PAUSED, HANGING, FULL = "healthy", "killed", "paused", "hanging", "full"
FAULTS = (HEALTHY, KILLED, PAUSED, HANGING, FULL)
DEFAULTS, BARE = "gcache defaults", "bare"
CONFIGS = (DEFAULTS, BARE)
CALLERS = ("sync", "async")
SLOW = {(BARE, KILLED), (BARE, PAUSED), (BARE, HANGING)}

# gcache logs each kind of Redis error (rate-limited, with its traceback); here the errors are
# counted in the table instead, so its log lines stay out of the report.
QUIET = logging.getLogger("bench-faults")
QUIET.addHandler(logging.NullHandler())
QUIET.propagate = False


@dataclass
class Cell:
    fault: str
    config: str
    caller: str
    latencies: list[float]
    right: int
    errors: int  # cache-side errors gcache counted
    breaker_opened: int

    @property
    def calls(self) -> int:
        return len(self.latencies)

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies)


def run() -> list[Cell]:
    return asyncio.run(_run())


async def _run() -> list[Cell]:
    cells: list[Cell] = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=WAVE, thread_name_prefix="bench-faults") as pool:
        for fault in FAULTS:
            for config in CONFIGS:
                began = time.perf_counter()
                found = await _fault(fault, config, pool)
                cells.extend(found)
                print(
                    f"  {fault:8} {config:16} "
                    + "  ".join(f"{c.caller} p50 {_ms(c.p50)} max {_ms(max(c.latencies))} ms" for c in found)
                    + f"  ({time.perf_counter() - began:.1f} s)",
                    flush=True,
                )
    return cells


def _make(config: str, url: str) -> GCache:
    if config == DEFAULTS:
        return make_gcache(url, PREFIX, logger=QUIET)
    parts = redis_parts(url)

    def plain_client() -> redis.asyncio.Redis:
        # redis-py's constructor defaults, including its retry policy (10 retries with backoff).
        return redis.asyncio.Redis(
            host=parts["host"],
            port=parts["port"],
            db=parts["db"],
            username=parts["username"],
            password=parts["password"],
            socket_timeout=SOCKET_TIMEOUT,
            socket_connect_timeout=SOCKET_TIMEOUT,
        )

    return GCache(
        GCacheConfig(
            redis_client_factory=plain_client,
            urn_prefix=PREFIX,
            metrics_registry=CollectorRegistry(),
            logger=QUIET,
            breaker_failures=0,
            read_timeout_sec=None,
            write_timeout_sec=None,
        )
    )


@contextlib.asynccontextmanager
async def _environment(fault: str) -> AsyncIterator[tuple[str, Callable[[], None], Callable[[], None]]]:
    """The Redis URL for the fault, a function that brings the fault on, and one that ends it."""
    if fault == HANGING:
        with HangingListener() as listener:
            yield listener.url, lambda: None, lambda: None
        return
    args = ("--maxmemory", "8mb", "--maxmemory-policy", "noeviction") if fault == FULL else ()
    with EmbeddedRedis(None, *args) as server:

        def inject() -> None:
            if fault == KILLED:
                server.kill()
            elif fault == PAUSED:
                server.pause()
            elif fault == FULL:
                server.fill()

        def recover() -> None:
            if fault == PAUSED:
                server.resume()

        yield server.url, inject, recover


async def _fault(fault: str, config: str, pool: concurrent.futures.ThreadPoolExecutor) -> list[Cell]:
    waves = SLOW_WAVES if (config, fault) in SLOW else WAVES
    async with _environment(fault) as (url, inject, recover):
        caches = {caller: _make(config, url) for caller in CALLERS}
        try:
            sync_fn, async_fn = _functions(caches["sync"], caches["async"])
            if fault != HANGING:  # a running service has its connections open before the fault
                warm = [f"warm-{i}" for i in range(WAVE)]
                await _sync_wave(caches["sync"], sync_fn, pool, warm)
                await _async_wave(caches["async"], async_fn, warm)
            errors_before = {caller: gcache_errors(cache) for caller, cache in caches.items()}
            inject()
            try:
                sync_run = _caller(waves, lambda ids: _sync_wave(caches["sync"], sync_fn, pool, ids))
                async_run = _caller(waves, lambda ids: _async_wave(caches["async"], async_fn, ids))
                if (config, fault) in SLOW:  # both only wait: run them at the same time
                    sync_outcome, async_outcome = await asyncio.gather(sync_run, async_run)
                else:
                    sync_outcome = await sync_run
                    async_outcome = await async_run
            finally:
                recover()
            outcomes = {"sync": sync_outcome, "async": async_outcome}
            return [
                Cell(
                    fault,
                    config,
                    caller,
                    outcomes[caller][0],
                    outcomes[caller][1],
                    gcache_errors(caches[caller]) - errors_before[caller],
                    _opened(caches[caller]),
                )
                for caller in CALLERS
            ]
        finally:
            for cache in caches.values():
                await cache.aclose()


Outcome = tuple[list[float], int]  # latencies, calls that returned the function's value


async def _caller(waves: int, wave: Callable[[list[str]], Any]) -> Outcome:
    latencies: list[float] = []
    right = 0
    for w in range(waves):
        ids = [f"{w}-{i}" for i in range(WAVE)]
        found: Outcome = await wave(ids)
        latencies += found[0]
        right += found[1]
    return latencies, right


def _functions(sync_cache: GCache, async_cache: GCache) -> tuple[Callable[[str], Any], Callable[[str], Any]]:
    options: dict[str, Any] = {
        "key_type": "user_id",
        "id_arg": "user_id",
        "use_case": USE_CASE,
        "default_config": REMOTE_ONLY,
    }

    @sync_cache.cached(**options)
    def load_sync(user_id: str) -> dict[str, Any]:
        time.sleep(FUNCTION_SEC)
        return user(user_id)

    @async_cache.cached(**options)
    async def load_async(user_id: str) -> dict[str, Any]:
        await asyncio.sleep(FUNCTION_SEC)
        return user(user_id)

    return load_sync, load_async


async def _sync_wave(
    cache: GCache, fn: Callable[[str], Any], pool: concurrent.futures.ThreadPoolExecutor, ids: list[str]
) -> Outcome:
    def timed(user_id: str) -> tuple[float, bool]:
        with cache.enable():
            start = time.perf_counter()
            try:
                ok = fn(user_id) == user(user_id)
            except Exception:
                ok = False
            return time.perf_counter() - start, ok

    loop = asyncio.get_running_loop()
    done = await asyncio.gather(*[loop.run_in_executor(pool, timed, user_id) for user_id in ids])
    return [seconds for seconds, _ in done], sum(ok for _, ok in done)


async def _async_wave(cache: GCache, fn: Callable[[str], Any], ids: list[str]) -> Outcome:
    async def timed(user_id: str) -> tuple[float, bool]:
        start = time.perf_counter()
        try:
            ok = await fn(user_id) == user(user_id)
        except Exception:
            ok = False
        return time.perf_counter() - start, ok

    with cache.enable():
        done = await asyncio.gather(*[timed(f"a{user_id}") for user_id in ids])
    return [seconds for seconds, _ in done], sum(ok for _, ok in done)


def _opened(cache: GCache) -> int:
    registry = cache.config.metrics_registry
    assert registry is not None
    total = 0.0
    for metric in registry.collect():
        for sample in metric.samples:
            if (
                sample.name == "gcache_breaker_transition_counter_total"
                and sample.labels.get("state") == "open"
            ):
                total += sample.value
    return int(total)


def _ms(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:.2f}" if ms < 10 else f"{ms:.1f}" if ms < 100 else f"{ms:.0f}"


def parameters() -> str:
    return (
        f"Waves of {WAVE} concurrent callers, {WAVES} waves ({WAVE * WAVES} calls) per caller, except "
        f"the bare configuration under a killed, paused or hanging Redis: {SLOW_WAVES} wave "
        f"({WAVE * SLOW_WAVES} calls), since each call there costs seconds. The function sleeps "
        f"{FUNCTION_SEC * 1000:g} ms; REMOTE only; a new id per call (lookup miss, function, "
        "write-back). Sync and async callers each have their own GCache and run one after the "
        "other (at the same time in the bare configuration's 20-call cells, which only wait). "
        "gcache defaults: read deadline 50 ms, write deadline 250 ms, no "
        "redis-py retries, breaker after 5 failures, probe every 1 s. bare: no breaker, no gcache "
        "deadlines, a plain `redis.asyncio.Redis(host, port, socket_timeout=1.0, "
        "socket_connect_timeout=1.0)` with redis-py's default retries (10, exponential backoff with "
        "jitter) through `redis_client_factory`."
    )


def table(cells: list[Cell]) -> str:
    healthy = {(c.config, c.caller): c.p50 for c in cells if c.fault == HEALTHY}
    lines = [
        "| fault | configuration | caller | calls | p50 (ms) | p99 (ms) | max (ms) | right values "
        "| p50 / healthy p50 | cache errors counted | breaker opened |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for c in cells:
        base = healthy.get((c.config, c.caller))
        ratio = f"{c.p50 / base:.2f}\N{MULTIPLICATION SIGN}" if base else "n/a"
        opened = "n/a (off)" if c.config == BARE else ("yes" if c.breaker_opened else "no")
        lines.append(
            f"| {c.fault} | {c.config} | {c.caller} | {c.calls} | {_ms(c.p50)} | {_ms(c.pct(0.99))} "
            f"| {_ms(max(c.latencies))} | {c.right / c.calls:.0%} | {ratio} | {c.errors} | {opened} |"
        )
    return "\n".join(lines)
