# mypy: ignore-errors
"""A pod of the ORIGINAL gcache in a rolling deploy (``test_rolling_deploy.py``), run by the
original's own python (``tests._pypi.original_python``) with ``-I``, so ``gcache`` is the original.

Usage: ``python -I _original_deploy_worker.py <redis url> <urn prefix>``, then one JSON command a
line on stdin, one JSON answer a line on stdout:

- ``{"op": "read", "use_case": ..., "id": ...}``: the cached function's value (the function reads
  the "database", the plain Redis key ``db:<id>``) and how often this process ran it;
- ``{"op": "invalidate", "id": ...}``: ``gcache.ainvalidate("user", id)``;
- ``{"op": "errors"}``: the warnings and errors the original logged (WRONGTYPE would be one).

Its use cases are REMOTE only: the original never tells another process's LOCAL tier of an
invalidation, its own or ours.
"""

import asyncio
import json
import logging
import sys
from urllib.parse import urlsplit

import redis

from gcache import CacheLayer, GCache, GCacheConfig, GCacheKeyConfig, RedisConfig

url, prefix = sys.argv[1], sys.argv[2]
parts = urlsplit(url)
database = redis.Redis.from_url(url)
logged = []


class Recorder(logging.Handler):
    def emit(self, record):
        logged.append(record.getMessage())


logger = logging.getLogger("original-gcache")
logger.addHandler(Recorder(level=logging.WARNING))
logger.propagate = False

cache = GCache(
    GCacheConfig(
        redis_config=RedisConfig(
            username=parts.username or "", password=parts.password or "", host=parts.hostname, port=parts.port
        ),
        urn_prefix=prefix,
        logger=logger,
    )
)
REMOTE_ONLY = GCacheKeyConfig(ttl_sec={CacheLayer.REMOTE: 300}, ramp={CacheLayer.REMOTE: 100})
runs = {"GetUser": 0, "GetName": 0, "GetProfile": 0}


def value_of(uid):
    raw = database.get(f"db:{uid}")
    return None if raw is None else raw.decode()


@cache.cached(
    key_type="user", id_arg="uid", use_case="GetUser", track_for_invalidation=True, default_config=REMOTE_ONLY
)
async def get_user(uid):
    runs["GetUser"] += 1
    return {"id": uid, "version": value_of(uid)}


@cache.cached(key_type="user", id_arg="uid", use_case="GetName", default_config=REMOTE_ONLY)
async def get_name(uid):
    runs["GetName"] += 1
    return {"id": uid, "version": value_of(uid)}


functions = {"GetUser": get_user, "GetName": get_name}
try:  # 3.0: a tracked use case in the JSON envelope, which its Go client reads too
    from gcache import Envelope, JsonSerializer

    @cache.cached(
        key_type="user",
        id_arg="uid",
        use_case="GetProfile",
        track_for_invalidation=True,
        default_config=REMOTE_ONLY,
        serializer=JsonSerializer(),
        envelope=Envelope.JSON,
    )
    async def get_profile(uid):
        runs["GetProfile"] += 1
        return {"id": uid, "version": value_of(uid)}

    functions["GetProfile"] = get_profile
except ImportError:  # 2.x: pickle only
    pass


async def main():
    with cache.enable():
        for line in sys.stdin:
            command = json.loads(line)
            op = command["op"]
            if op == "read":
                value = await functions[command["use_case"]](command["id"])
                answer = {"value": value, "runs": runs[command["use_case"]]}
            elif op == "invalidate":
                await cache.ainvalidate("user", command["id"])
                answer = {"ok": True}
            elif op == "errors":
                answer = {"errors": logged, "use_cases": sorted(functions)}
            else:
                answer = {"error": f"unknown op {op!r}"}
            print(json.dumps(answer), flush=True)


asyncio.run(main())
