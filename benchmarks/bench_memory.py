"""Resident memory per 100k LOCAL entries: gcache against a bare cachetools.TTLCache.

Each subject runs in a fresh Python process (``REDIS_URL=... python -m benchmarks.bench_memory
SUBJECT N``, the URL in the environment for its password): it imports what it needs, builds its
cache, reads VmRSS from /proc/self/status, fills ``N`` entries, collects garbage and reads VmRSS
again. The difference, scaled to 100,000
entries, is the figure. The entries are the same for both: the same key strings (gcache's key
format, so both hold keys of the same length) and values (a dict of three fields, built per
entry). gcache fills its LOCAL layer through a cached sync function with a LOCAL-only config,
once untracked (no Redis) and once tracked (the invalidation bus subscribed, entries carry
their entity's epoch).
"""

from __future__ import annotations

import gc
import json
import os
import pathlib
import resource
import subprocess
import sys
from typing import Any

from benchmarks._harness import Result, user

__all__ = ["ENTRIES", "run"]

ROOT = pathlib.Path(__file__).resolve().parent.parent
ENTRIES = 100_000
SCENARIO = "memory, 100k LOCAL entries"
USE_CASE = "Memory"
SUBJECTS = {"ttlcache": "TTLCache", "gcache": "gcache", "gcache-tracked": "gcache, tracked"}


def rss_bytes() -> int:
    """Resident set size now (VmRSS), or the peak from getrusage where /proc is missing."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def key(prefix: str, user_id: str) -> str:
    return "{" + prefix + ":user_id:" + user_id + "}#" + USE_CASE


def measure(subject: str, entries: int, redis_url: str | None) -> dict[str, Any]:
    """Fill ``entries`` into one subject's cache in this process; bytes of RSS they took."""
    import cachetools
    from prometheus_client import CollectorRegistry

    from gcache import CacheLayer, GCache, GCacheConfig, GCacheKeyConfig, RedisConfig

    prefix = "urn:gcache"
    ttl = 600
    ids = [str(i) for i in range(entries)]  # built before the first reading: not part of the figure
    if subject == "ttlcache":
        store: cachetools.TTLCache[str, dict[str, Any]] = cachetools.TTLCache(entries, ttl)
        gc.collect()
        before = rss_bytes()
        for user_id in ids:
            store[key(prefix, user_id)] = user(user_id)
        held = len(store)
    else:
        tracked = subject == "gcache-tracked"
        cache = GCache(
            GCacheConfig(
                redis_config=RedisConfig(url=redis_url) if tracked else None,
                urn_prefix=prefix,
                local_max_entries=entries,
                metrics_registry=CollectorRegistry(),
            )
        )
        if not cache.start():
            raise RuntimeError("gcache's invalidation bus did not subscribe")

        @cache.cached(
            key_type="user_id",
            id_arg="user_id",
            use_case=USE_CASE,
            track_for_invalidation=tracked,
            default_config=GCacheKeyConfig(ttl_sec={CacheLayer.LOCAL: ttl}, ramp={CacheLayer.LOCAL: 100}),
        )
        def load_user(user_id: str) -> dict[str, Any]:
            return user(user_id)

        with cache.enable():
            load_user("warm-up")  # the first call sets up what every use case has once
            gc.collect()
            before = rss_bytes()
            for user_id in ids:
                load_user(user_id)
        held = _local_entries(cache)
    gc.collect()
    after = rss_bytes()
    if subject != "ttlcache":
        cache.close()
    return {"subject": subject, "entries": held, "before": before, "after": after}


def _local_entries(cache: Any) -> int:
    registry = cache.config.metrics_registry
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name == "gcache_local_entries" and sample.labels.get("use_case") == USE_CASE:
                return int(sample.value)
    return -1


def run(redis_url: str) -> list[Result]:
    figures = {}
    for subject in SUBJECTS:
        command = [sys.executable, "-m", "benchmarks.bench_memory", subject, str(ENTRIES)]
        env = {**os.environ, "REDIS_URL": redis_url}  # not on the command line: its password
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=300, check=False, cwd=ROOT, env=env
        )
        if done.returncode != 0:
            raise RuntimeError(f"memory worker {subject} failed:\n{done.stderr}")
        figures[subject] = json.loads(done.stdout.strip().splitlines()[-1])
    baseline = figures["ttlcache"]

    def per_100k(figure: dict[str, Any]) -> float:
        return float(figure["after"] - figure["before"]) / ENTRIES * 100_000 / 1e6

    results = []
    for subject in ("gcache", "gcache-tracked"):
        figure = figures[subject]
        held = figure["entries"]
        per_entry = (figure["after"] - figure["before"]) / ENTRIES
        results.append(
            Result(
                SCENARIO,
                SUBJECTS[subject],
                per_100k(figure),
                "MB",
                f"TTLCache with the same {baseline['entries']:,} entries",
                per_100k(baseline),
                note=f"{held:,} entries held; {per_entry:.0f} B per entry",
            )
        )
    return results


def main(argv: list[str]) -> int:
    subject, entries = argv[0], int(argv[1])
    url = os.environ.get("REDIS_URL")
    if subject not in SUBJECTS:
        print(f"unknown subject {subject!r}; choose from {', '.join(SUBJECTS)}", file=sys.stderr)
        return 2
    print(json.dumps(measure(subject, entries, url)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
