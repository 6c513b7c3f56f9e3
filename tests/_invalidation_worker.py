"""One reader process of tests/test_invalidation_processes.py.

    python -m tests._invalidation_worker --cache-url URL --source-url URL --out DIR/NAME
        [--mode sync|async] [--entities 1,2,3] [--max-seconds 60] [--seed N]

Builds a GCache (LOCAL + REMOTE on ``--cache-url``, tracked use case), subscribes to the
invalidation bus, then reads the entities in a loop. The cached function reads the source of
truth, ``source:user:<id>`` on ``--source-url`` (a version number; missing is 0), between two
short random delays. Every read is written to ``OUT.jsonl`` as ``[start, entity, version,
computed]``: ``start`` is ``time.time()`` just before the call, ``computed`` 1 when the function
ran (the cache did not serve it). ``OUT.ready`` appears once the bus is subscribed; the loop ends
when ``OUT.stop`` appears (or after ``--max-seconds``), and ``OUT.summary.json`` holds the
worker's own metrics.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import threading
import time
from typing import IO

import redis
import redis.asyncio
from prometheus_client import CollectorRegistry

from gcache import GCache, GCacheConfig, GCacheKeyConfig, RedisConfig

KEY_TYPE = "user_id"
USE_CASE = "ProcessRace"
CONFIG = GCacheKeyConfig.enabled(60)
TIMEOUTS = {"socket_timeout": 0.5, "socket_connect_timeout": 0.5}
MAX_DELAY = 0.001  # before and after reading the source
PAUSE = 0.0005  # between reads
FLUSH_EVERY = 500  # reads


def source_key(entity: str) -> str:
    return f"source:user:{entity}"


class Recorder:
    """Read records in JSON lines, and what the worker's metrics say at the end."""

    def __init__(self, out: str) -> None:
        self.out = out
        self._file: IO[str] = open(out + ".jsonl", "w")  # noqa: SIM115 (closed in close())
        self.reads = 0
        self.computed = threading.local()

    def mark_computed(self) -> None:
        self.computed.flag = True

    def read(self, start: float, entity: str, version: int) -> None:
        computed = 1 if getattr(self.computed, "flag", False) else 0
        self.computed.flag = False
        self._file.write(json.dumps([start, entity, version, computed]) + "\n")
        self.reads += 1
        if self.reads % FLUSH_EVERY == 0:
            self._file.flush()

    def stopped(self) -> bool:
        return os.path.exists(self.out + ".stop")

    def ready(self) -> None:
        with open(self.out + ".ready", "w") as ready:
            ready.write(str(os.getpid()))

    def close(self, cache: GCache, registry: CollectorRegistry) -> None:
        self._file.close()
        summary = {
            "pid": os.getpid(),
            "reads": self.reads,
            "bus_subscribed": cache.bus_subscribed,
            "metrics": _metrics(registry),
        }
        with open(self.out + ".summary.json.tmp", "w") as file:
            json.dump(summary, file)
        os.replace(self.out + ".summary.json.tmp", self.out + ".summary.json")


def _metrics(registry: CollectorRegistry) -> dict[str, float]:
    """Every sample of the worker's registry, keyed by name and labels (``_created`` ones left out)."""
    found: dict[str, float] = {}
    for metric in registry.collect():
        for s in metric.samples:
            if s.name.endswith("_created"):
                continue
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            found[f"{s.name}{{{labels}}}"] = s.value
    return found


def make_cache(cache_url: str, registry: CollectorRegistry) -> GCache:
    return GCache(
        GCacheConfig(
            redis_config=RedisConfig(url=cache_url, redis_py_options=dict(TIMEOUTS)),
            metrics_registry=registry,
        )
    )


def run_sync(args: argparse.Namespace, entities: list[str], recorder: Recorder) -> None:
    registry = CollectorRegistry()
    cache = make_cache(args.cache_url, registry)
    source = redis.Redis.from_url(args.source_url, socket_timeout=0.5, socket_connect_timeout=0.5)
    rng = random.Random(args.seed)

    @cache.cached(key_type=KEY_TYPE, id_arg="uid", use_case=USE_CASE, track_for_invalidation=True,
                  default_config=CONFIG)  # fmt: skip
    def version_of(uid: str) -> int:
        time.sleep(rng.uniform(0, MAX_DELAY))
        raw = source.get(source_key(uid))
        time.sleep(rng.uniform(0, MAX_DELAY))
        recorder.mark_computed()
        return int(raw or 0)

    try:
        if not cache.start(timeout=10):
            raise RuntimeError("the invalidation bus did not subscribe")
        recorder.ready()
        deadline = time.monotonic() + args.max_seconds
        with cache.enable():
            while time.monotonic() < deadline and not recorder.stopped():
                for _ in range(20):
                    entity = rng.choice(entities)
                    start = time.time()
                    recorder.read(start, entity, version_of(entity))
                    time.sleep(PAUSE)
    finally:
        recorder.close(cache, registry)
        cache.close()
        source.close()


async def run_async(args: argparse.Namespace, entities: list[str], recorder: Recorder) -> None:
    registry = CollectorRegistry()
    cache = make_cache(args.cache_url, registry)
    source = redis.asyncio.Redis.from_url(args.source_url, socket_timeout=0.5, socket_connect_timeout=0.5)
    rng = random.Random(args.seed)

    @cache.cached(key_type=KEY_TYPE, id_arg="uid", use_case=USE_CASE, track_for_invalidation=True,
                  default_config=CONFIG)  # fmt: skip
    async def version_of(uid: str) -> int:
        await asyncio.sleep(rng.uniform(0, MAX_DELAY))
        raw = await source.get(source_key(uid))
        await asyncio.sleep(rng.uniform(0, MAX_DELAY))
        recorder.mark_computed()
        return int(raw or 0)

    try:
        if not await cache.astart(timeout=10):
            raise RuntimeError("the invalidation bus did not subscribe")
        recorder.ready()
        deadline = time.monotonic() + args.max_seconds
        with cache.enable():
            while time.monotonic() < deadline and not recorder.stopped():
                for _ in range(20):
                    entity = rng.choice(entities)
                    start = time.time()
                    recorder.read(start, entity, await version_of(entity))
                    await asyncio.sleep(PAUSE)
    finally:
        recorder.close(cache, registry)
        await cache.aclose()
        await source.aclose()


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--cache-url", required=True)
    parser.add_argument("--source-url", required=True)
    parser.add_argument("--out", required=True, help="path prefix of this worker's files")
    parser.add_argument("--mode", choices=["sync", "async"], default="sync")
    parser.add_argument("--entities", default="1,2,3")
    parser.add_argument("--max-seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    entities = args.entities.split(",")
    recorder = Recorder(args.out)
    if args.mode == "async":
        asyncio.run(run_async(args, entities, recorder))
    else:
        run_sync(args, entities, recorder)


if __name__ == "__main__":
    main()
