"""A reader process of tests/behaviour/test_sentinel_failover.py.

    SENTINEL_CONFIG=JSON python -m tests.behaviour._sentinel_reader --out DIR/NAME --source FILE

The RedisConfig's keywords come as JSON in the environment, not on the command line, which other
users can read: they carry passwords. Builds a GCache (LOCAL + REMOTE, tracked), subscribes to
the bus, then reads ids 0 to 11 in a loop. The cached function answers ``<version>:<id>``, the
version read from ``FILE`` (the system of record the test changes before invalidating). Every
read is a line ``[start, id, value]`` of ``OUT.jsonl`` (``start`` is ``time.time()`` before
the call); a call that raises is a line ``[start, id, null, error]``. ``OUT.ready`` appears once
the bus is subscribed; the loop ends when ``OUT.stop`` appears.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from prometheus_client import CollectorRegistry

from gcache import GCache, GCacheConfig, GCacheKeyConfig, RedisConfig


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--source", required=True)
    args = parser.parse_args()
    options = json.loads(os.environ["SENTINEL_CONFIG"])
    options["sentinels"] = [tuple(entry) for entry in options["sentinels"]]
    cache = GCache(GCacheConfig(redis_config=RedisConfig(**options), metrics_registry=CollectorRegistry()))

    @cache.cached(
        key_type="user_id",
        id_arg="uid",
        use_case="GetUser",
        track_for_invalidation=True,
        default_config=GCacheKeyConfig.enabled(300),
    )
    def read(uid: str) -> str:
        with open(args.source) as file:
            return f"{file.read().strip()}:{uid}"

    if not cache.start(timeout=10):
        raise SystemExit("the bus did not subscribe")
    open(args.out + ".ready", "w").close()
    with open(args.out + ".jsonl", "w") as out, cache.enable():
        while not os.path.exists(args.out + ".stop"):
            for uid in map(str, range(12)):
                start = time.time()
                try:
                    out.write(json.dumps([start, uid, read(uid)]) + "\n")
                except Exception as exc:  # counted by the test: a cached call must never raise
                    out.write(json.dumps([start, uid, None, repr(exc)]) + "\n")
            time.sleep(0.005)
    cache.close()


if __name__ == "__main__":
    main()
