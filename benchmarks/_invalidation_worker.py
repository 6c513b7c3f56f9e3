"""One reader process of the invalidation benchmark (started by ``bench_invalidation``).

Usage: ``BENCH_REDIS_URL=... BENCH_SOURCE_URL=... python -m benchmarks._invalidation_worker '<json
spec>'`` (the URLs, with their passwords, in the environment: other users can read a command
line). The worker builds a GCache on the first URL, with its source on the second, reads every
entity once (warm-up), prints ``ready`` and then reads the entities in rounds until a line
arrives on stdin (or stdin closes, or ``max_seconds`` pass). Every read is recorded: when
it started (``time.time()``), which entity, the version it returned and the layer that served it
(LOCAL, REMOTE or the function). The records go to ``out_path`` as packed arrays; a JSON line on
stdout reports what the worker's own Prometheus registry saw (bus lag, remote write results) and
when each invalidation from the bus was applied.

With ``mode == "original"`` the worker imitates the original library; see :func:`imitate_original`.
"""

from __future__ import annotations

import array
import asyncio
import json
import os
import random
import sys
import threading
import time
from typing import Any

import redis.asyncio
from prometheus_client import CollectorRegistry

from gcache import CacheLayer, GCache, GCacheConfig, GCacheKeyConfig, RedisConfig
from gcache.bus import BusMessage, InvalidationBus
from gcache.local import MISS
from gcache.readthrough import UseCase
from gcache.remote import TrackedRead

__all__ = [
    "FUNCTION",
    "KEY_TYPE",
    "LOCAL",
    "REMOTE",
    "USE_CASE",
    "Records",
    "imitate_original",
    "read_records",
    "write_records",
]

LOCAL, REMOTE, FUNCTION = 0, 1, 2  # the layer that served a read
KEY_TYPE = "bench_entity"
USE_CASE = "BenchInvalidation"


class _Probe:
    """What served the current read (the worker reads one entity at a time)."""

    local_hit = False
    computed = False


_probe = _Probe()


def _observe_local_hits() -> None:
    """Record whether LOCAL answered; a pass-through wrapper, installed in both modes alike."""
    local_get = UseCase.local_get

    def observed(self: UseCase, urn: str, entity: str) -> Any:
        value = local_get(self, urn, entity)
        _probe.local_hit = value is not MISS
        return value

    UseCase.local_get = observed  # type: ignore[method-assign,assignment]


def imitate_original() -> None:
    """Make this process's GCache behave like the original library on invalidation.

    Must run before the GCache is built; the caller then sets ``epochs.trusted = True``.

    The original library differs in exactly two ways that matter here, and both are imitated:

    1. It stamps a REMOTE entry with the time of the *write*. An invalidation that lands while
       the function runs (after it read its source, before the write) sets a watermark below
       that stamp, so the value computed from the old source is served as fresh until the next
       invalidation or its TTL. Imitation: tracked remote writes pass ``read=None``, which makes
       gcache's write script stamp the entry with the server time of the write and skip the
       nonce check, as an untimed direct ``put`` does.
    2. It checks the watermark only in Redis and has no cross-process LOCAL invalidation: a
       process keeps serving its LOCAL entry until the LOCAL TTL ends, whatever another process
       invalidated. Imitation: the invalidation bus never starts, and the caller marks the local
       epochs as trusted (as if the bus were subscribed), so tracked LOCAL entries are filled and
       served but only this process's own invalidations (none, in a reader) would bump them.

    Everything else (the read script, the watermark comparison, ``ainvalidate``) is gcache's own
    and equals the original's: the watermark is set to the invalidation's time, never lowered.
    """
    aremote_put = UseCase.aremote_put
    remote_put = UseCase.remote_put

    async def aremote_put_at_write_time(
        self: UseCase,
        urn: str,
        entity: str,
        value: Any,
        ttl: float,
        read: TrackedRead | None,
        grace: float = 0.0,
    ) -> bool:
        return await aremote_put(self, urn, entity, value, ttl, None, grace)

    def remote_put_at_write_time(
        self: UseCase,
        urn: str,
        entity: str,
        value: Any,
        ttl: float,
        read: TrackedRead | None,
        grace: float = 0.0,
    ) -> bool:
        return remote_put(self, urn, entity, value, ttl, None, grace)

    def never_start(self: InvalidationBus) -> None:
        return None

    UseCase.aremote_put = aremote_put_at_write_time  # type: ignore[method-assign,assignment]
    UseCase.remote_put = remote_put_at_write_time  # type: ignore[method-assign,assignment]
    InvalidationBus.ensure_started = never_start  # type: ignore[method-assign]


def _observe_bus(applied: list[tuple[str, float, int]]) -> None:
    """Record when each invalidation from the bus was applied (host clock) and published (Redis clock).

    A pass-through wrapper; must be installed before the GCache is built (it binds the method).
    """
    on_message = GCache._on_bus_message

    def observed(self: GCache, message: BusMessage, lag_sec: float) -> None:
        on_message(self, message, lag_sec)
        if message.kind == "invalidate":
            applied.append((message.target, time.time(), message.published_us))

    GCache._on_bus_message = observed  # type: ignore[method-assign,assignment]


def _wait_for_stop(stop: threading.Event) -> None:
    sys.stdin.readline()  # a line, or EOF when the parent goes away
    stop.set()


def _registry_stats(registry: CollectorRegistry) -> dict[str, Any]:
    buckets: dict[str, float] = {}
    writes: dict[str, float] = {}
    lag_sum = 0.0
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name == "gcache_bus_lag_seconds_bucket":
                buckets[sample.labels["le"]] = sample.value
            elif sample.name == "gcache_bus_lag_seconds_sum":
                lag_sum = sample.value
            elif sample.name == "gcache_write_counter_total" and sample.labels.get("layer") == "remote":
                writes[sample.labels["result"]] = writes.get(sample.labels["result"], 0) + sample.value
    return {"bus_lag_buckets": buckets, "bus_lag_sum": lag_sum, "remote_writes": writes}


Records = tuple["array.array[float]", "array.array[int]", "array.array[int]", "array.array[int]"]


async def run(spec: dict[str, Any]) -> tuple[Records, dict[str, Any]]:
    """Read until told to stop; the records of every read and what the registry and bus saw."""
    stop = threading.Event()
    threading.Thread(target=_wait_for_stop, args=(stop,), daemon=True).start()
    original = spec["mode"] == "original"
    _observe_local_hits()
    applied: list[tuple[str, float, int]] = []
    _observe_bus(applied)
    if original:
        imitate_original()
    registry = CollectorRegistry()
    cache = GCache(
        GCacheConfig(
            redis_config=RedisConfig(url=os.environ["BENCH_REDIS_URL"]),
            urn_prefix=spec["prefix"],
            metrics_registry=registry,
        )
    )
    if original:
        cache._local.epochs.trusted = True  # no bus, yet LOCAL tracked entries are used
    elif not await cache.astart(timeout=10):
        raise RuntimeError("the invalidation bus did not subscribe within 10 s")
    source = redis.asyncio.Redis.from_url(os.environ["BENCH_SOURCE_URL"])
    ttl = {CacheLayer.REMOTE: spec["remote_ttl"]}
    if spec["local_ttl"]:
        ttl[CacheLayer.LOCAL] = spec["local_ttl"]
    config = GCacheKeyConfig(ttl_sec=ttl, ramp={layer: 100 for layer in ttl})
    low, high = spec["function_sleep"]
    source_prefix = spec["source_prefix"]

    @cache.cached(
        key_type=KEY_TYPE,
        id_arg="entity",
        use_case=USE_CASE,
        track_for_invalidation=True,
        default_config=config,
    )
    async def load(entity: str) -> int:
        """The source read: the version is read between two pauses, as a query's snapshot is."""
        _probe.computed = True
        await asyncio.sleep(random.uniform(low, high))
        raw = await source.get(source_prefix + entity)
        await asyncio.sleep(random.uniform(low, high))
        return int(raw or 0)

    ids = [str(i) for i in range(spec["entities"])]
    starts = array.array("d")
    versions = array.array("q")
    entities = array.array("b")
    layers = array.array("b")
    pace = spec["pace"]
    try:
        with cache.enable():
            for entity in ids:
                await load(entity)
            print("ready", flush=True)
            deadline = time.monotonic() + spec["max_seconds"]
            while not stop.is_set() and time.monotonic() < deadline:
                for index, entity in enumerate(ids):
                    _probe.local_hit = _probe.computed = False
                    start = time.time()
                    version = await load(entity)
                    starts.append(start)
                    versions.append(version)
                    entities.append(index)
                    layers.append(LOCAL if _probe.local_hit else FUNCTION if _probe.computed else REMOTE)
                # Non-cache work between rounds. time.sleep, not asyncio.sleep: it releases the GIL
                # as real work on I/O does, and is not rounded up to epoll's 1 ms. Nothing else
                # runs on this loop (one reader, one read at a time), so blocking it delays nothing.
                time.sleep(pace)  # noqa: ASYNC251
    finally:
        await source.aclose()
        await cache.aclose()
    return (starts, versions, entities, layers), {**_registry_stats(registry), "bus_applied": applied}


def write_records(path: str, records: Records) -> None:
    with open(path, "wb") as out:
        for column in records:
            out.write(len(column).to_bytes(8, "little"))
            column.tofile(out)


def read_records(path: str) -> Records:
    """Starts, versions, entity indexes and layers, as the worker wrote them."""
    found: list[Any] = []
    with open(path, "rb") as f:
        for code in ("d", "q", "b", "b"):
            records = array.array(code)
            records.fromfile(f, int.from_bytes(f.read(8), "little"))
            found.append(records)
    return found[0], found[1], found[2], found[3]


def main() -> int:
    spec = json.loads(sys.argv[1])
    records, stats = asyncio.run(run(spec))
    write_records(spec["out_path"], records)
    print(json.dumps(stats), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
