"""One process of tests/test_single_flight.py's fleet: miss a cold key with the distributed lock on.

argv: "sync" | "async", worker number; the environment: ``LOCK_TEST_REDIS_URL`` (the cache's,
not on the command line for its password) and ``LOCK_TEST_COUNTER_URL`` (the same server's admin
login). Waits for ``lock-test:go`` (so the four processes miss at the same moment), calls the
cached function once, and prints a JSON line with the value and this process's single-flight
counts. The function counts its runs in Redis.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

import redis
from prometheus_client import CollectorRegistry

from gcache import CacheLayer, GCache, GCacheConfig, GCacheKeyConfig, RedisConfig

CONFIG = GCacheKeyConfig(ttl_sec={CacheLayer.REMOTE: 60}, ramp={CacheLayer.REMOTE: 100}, lock_sec=5)


def main() -> None:
    url, mode, number = os.environ["LOCK_TEST_REDIS_URL"], sys.argv[1], sys.argv[2]
    registry = CollectorRegistry()
    cache = GCache(
        GCacheConfig(
            redis_config=RedisConfig(url=url), metrics_registry=registry, urn_prefix=f"urn:fleet-{mode}"
        )
    )
    counter = redis.Redis.from_url(os.environ["LOCK_TEST_COUNTER_URL"])  # INCR, SADD: not gcache's

    def compute(uid: str) -> str:
        counter.incr("lock-test:calls")
        time.sleep(0.3)  # long enough for every other process to find the lock taken
        return f"user-{uid}"

    def sget(uid: str) -> str:
        return compute(uid)

    async def aget(uid: str) -> str:
        return await asyncio.to_thread(compute, uid)

    cached = cache.cached(key_type="user_id", id_arg="uid", use_case="Fleet", default_config=CONFIG)
    get_async, get_sync = (cached(aget), sget) if mode == "async" else (aget, cached(sget))
    counter.sadd("lock-test:ready", number)
    while not counter.exists("lock-test:go"):
        time.sleep(0.001)
    with cache.enable():
        value = asyncio.run(get_async("1")) if mode == "async" else get_sync("1")
    counts = {
        s.labels["result"]: s.value
        for metric in registry.collect()
        for s in metric.samples
        if s.name == "gcache_single_flight_counter_total"
    }
    cache.close()
    print(
        json.dumps(
            {
                "value": value,
                "lock_acquired": counts.get("lock_acquired", 0),
                "lock_waited": counts.get("lock_waited", 0),
                "lock_timeout": counts.get("lock_timeout", 0),
            }
        )
    )


if __name__ == "__main__":
    main()
