"""One reader process of tests/behaviour/test_invalidation_processes.py.

    CACHE_URL=URL SOURCE_URL=URL python -m tests.behaviour._invalidation_worker --out DIR/NAME
        [--mode sync|async] [--entities 1,2,3] [--max-seconds 60] [--seed N]
        [--coroutines N] [--remote-only] [--trace]

The URLs come in the environment, not on the command line, which other users can read: they
carry passwords. Builds a GCache (LOCAL + REMOTE on ``CACHE_URL``, or REMOTE alone with
``--remote-only``, tracked use case), subscribes to the invalidation bus, then reads the entities
in a loop (async: in ``--coroutines`` concurrent loops). A cached call that raises is counted
(``raised`` in the summary, with how many of them were the function's own read of the source
failing), not fatal.
The cached function reads the source of truth, ``source:user:<id>`` on ``SOURCE_URL`` (a
version number; missing is 0), between two short random delays. Every read is written to
``OUT.jsonl`` as ``[start, entity, version, computed]``: ``start`` is ``time.time()`` just
before the call, ``computed`` 1 when the function ran (the cache did not serve it). With
``--trace`` (async) a read the function did not compute for its caller has a fifth element, how
it was served (see tests/behaviour/_race_trace.py).
``OUT.ready`` appears once the bus is subscribed; the loop ends when ``OUT.stop`` appears (or
after ``--max-seconds``), and ``OUT.summary.json`` holds the worker's own metrics.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import json
import os
import random
import time
from typing import IO

import redis
import redis.asyncio
from prometheus_client import CollectorRegistry

from gcache import CacheLayer, GCache, GCacheConfig, GCacheKeyConfig, RedisConfig
from tests.behaviour import _race_trace

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
        self.raised = 0  # cached calls that raised
        # Of those, the ones that raised an error of the function's own read of the source: its
        # caller's, or a caller's that shared its run (single flight shares the exception).
        self.source_failed = 0
        self._source_errors: list[BaseException] = []
        # Per thread and per task: the function runs in its caller's context (or the leader's).
        self.computed: contextvars.ContextVar[bool] = contextvars.ContextVar("computed", default=False)

    def source_error(self, exc: BaseException) -> None:
        self._source_errors.append(exc)

    def call_raised(self, exc: BaseException) -> None:
        self.raised += 1
        if any(exc is seen for seen in self._source_errors):
            self.source_failed += 1

    def mark_computed(self) -> None:
        self.computed.set(True)

    def read(self, start: float, entity: str, version: int) -> None:
        computed = 1 if self.computed.get() else 0
        self.computed.set(False)
        record: list[object] = [start, entity, version, computed]
        trace = _race_trace.TRACE.get()
        if trace is not None and not computed:
            record.append(trace)
        self._file.write(json.dumps(record) + "\n")
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
            "raised": self.raised,
            "source_failed": self.source_failed,
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


REMOTE_ONLY = GCacheKeyConfig(ttl_sec={CacheLayer.REMOTE: 60}, ramp={CacheLayer.REMOTE: 100})


def make_cache(cache_url: str, registry: CollectorRegistry) -> GCache:
    return GCache(
        GCacheConfig(
            redis_config=RedisConfig(url=cache_url, redis_py_options=dict(TIMEOUTS)),
            metrics_registry=registry,
        )
    )


def run_sync(args: argparse.Namespace, entities: list[str], recorder: Recorder) -> None:
    registry = CollectorRegistry()
    cache = make_cache(os.environ["CACHE_URL"], registry)
    source = redis.Redis.from_url(os.environ["SOURCE_URL"], socket_timeout=0.5, socket_connect_timeout=0.5)
    rng = random.Random(args.seed)

    @cache.cached(key_type=KEY_TYPE, id_arg="uid", use_case=USE_CASE, track_for_invalidation=True,
                  default_config=REMOTE_ONLY if args.remote_only else CONFIG)  # fmt: skip
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
    cache = make_cache(os.environ["CACHE_URL"], registry)
    source = redis.asyncio.Redis.from_url(
        os.environ["SOURCE_URL"], socket_timeout=0.5, socket_connect_timeout=0.5
    )
    rng = random.Random(args.seed)

    @cache.cached(key_type=KEY_TYPE, id_arg="uid", use_case=USE_CASE, track_for_invalidation=True,
                  default_config=REMOTE_ONLY if args.remote_only else CONFIG)  # fmt: skip
    async def version_of(uid: str) -> int:
        await asyncio.sleep(rng.uniform(0, MAX_DELAY))
        try:
            read_at = time.time()
            raw = await source.get(source_key(uid))
        except Exception as exc:
            recorder.source_error(exc)  # the function's own error: it reaches its caller, as it should
            raise
        await asyncio.sleep(rng.uniform(0, MAX_DELAY))
        recorder.mark_computed()
        _race_trace.note("fn", read_at, int(raw or 0))  # the leader's trace, when traced
        return int(raw or 0)

    try:
        if not await cache.astart(timeout=10):
            raise RuntimeError("the invalidation bus did not subscribe")
        recorder.ready()
        deadline = time.monotonic() + args.max_seconds

        async def loop(seed: int) -> None:
            picks = random.Random(seed)
            while time.monotonic() < deadline and not recorder.stopped():
                for _ in range(20):
                    entity = picks.choice(entities)
                    if args.trace:
                        _race_trace.TRACE.set([])
                    start = time.time()
                    try:
                        version = await version_of(entity)
                    except Exception as exc:
                        recorder.call_raised(exc)
                        continue
                    recorder.read(start, entity, version)
                    await asyncio.sleep(PAUSE)

        with cache.enable():
            await asyncio.gather(*(loop(args.seed * 1000 + c) for c in range(args.coroutines)))
    finally:
        recorder.close(cache, registry)
        await cache.aclose()
        await source.aclose()


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--out", required=True, help="path prefix of this worker's files")
    parser.add_argument("--mode", choices=["sync", "async"], default="sync")
    parser.add_argument("--entities", default="1,2,3")
    parser.add_argument("--max-seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--coroutines", type=int, default=1, help="async: concurrent read loops")
    parser.add_argument("--remote-only", action="store_true", help="REMOTE alone: exact, no bus lag")
    parser.add_argument("--trace", action="store_true", help="async: record how each read was served")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    entities = args.entities.split(",")
    recorder = Recorder(args.out)
    if args.trace:
        _race_trace.install()
    if args.mode == "async":
        asyncio.run(run_async(args, entities, recorder))
    else:
        run_sync(args, entities, recorder)


if __name__ == "__main__":
    main()
