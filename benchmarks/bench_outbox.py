"""The invalidation outbox's replay: how long 10,000 waiting invalidations take to apply once
Redis answers, and how many reads (round trips) the server processed for them.

``python -m benchmarks.bench_outbox [items] [runs]``: a private Redis; a GCache whose outbox is
filled directly (``InvalidationOutbox.keep``, as a failed invalidation fills it) while its
breaker reads as open, so nothing is replayed yet; then the breaker reads as closed, the outbox
is woken and the time until it is empty is taken. Twice per run: with the scripts loaded, and
after ``SCRIPT FLUSH`` (what a restarted Redis has lost: the first EVALSHA answers NOSCRIPT).
Reported: the median over the runs, and the server's ``total_reads_processed`` per replay.

Runs against whatever ``gcache`` is on the path, so the same script measures a checkout before
and after a change to the outbox.
"""

from __future__ import annotations

import statistics
import sys
import time

import redis
from prometheus_client import CollectorRegistry

from gcache import GCache, GCacheConfig, RedisConfig
from gcache._embedded_redis import EmbeddedRedis
from gcache.urns import entity_key, watermark_key

ITEMS = 10_000
RUNS = 5


def replay(cache: GCache, admin: redis.Redis, items: int, flush_scripts: bool) -> tuple[float, int]:
    """Seconds from the wake to an empty outbox, and the server's reads meanwhile."""
    outbox = cache._outbox
    failing = [True]
    outbox._failing = lambda: failing[0]
    previous = outbox._wake  # the last drain's: this one's is new
    for n in range(items):
        entity = entity_key("urn:gcache", "user_id", str(n))
        assert outbox.keep(entity, watermark_key(entity), "user_id", 0)
    while outbox._wake is previous:  # the drain started, backing off while "failing"
        time.sleep(0.001)
    if flush_scripts:
        admin.script_flush()
    reads = int(admin.info("stats")["total_reads_processed"])
    failing[0] = False
    start = time.perf_counter()
    outbox.wake()
    while len(outbox):
        time.sleep(0.0005)
    seconds = time.perf_counter() - start
    return seconds, int(admin.info("stats")["total_reads_processed"]) - reads - 1  # the INFO itself


def main(items: int, runs: int) -> None:
    with EmbeddedRedis() as server:
        admin = redis.Redis.from_url(server.admin_url)
        cache = GCache(
            GCacheConfig(redis_config=RedisConfig(url=server.url), metrics_registry=CollectorRegistry())
        )
        cache.start()
        try:
            cache.invalidate("user_id", "warm")  # the scripts loaded, the connection opened
            for flush_scripts in (False, True):
                measured = [replay(cache, admin, items, flush_scripts) for _ in range(runs)]
                seconds = statistics.median(s for s, _ in measured)
                reads = statistics.median(r for _, r in measured)
                kind = "after SCRIPT FLUSH" if flush_scripts else "scripts loaded"
                print(
                    f"{items} waiting, {kind}: replayed in {seconds * 1000:.0f} ms (median of {runs}: "
                    f"{', '.join(f'{s * 1000:.0f}' for s, _ in measured)}), {reads:.0f} server reads"
                )
        finally:
            cache.close()
            admin.close()


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3])) if len(sys.argv) > 2 else main(ITEMS, RUNS)
