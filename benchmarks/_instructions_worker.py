"""One measured process of the instruction-count benchmark (started by ``bench_instructions``).

Usage: ``BENCH_REDIS_URL=... python -m benchmarks._instructions_worker <case> <calls>`` (the URL,
with its password, in the environment: other users can read a command line). The worker sets
its case up, warms it up (so connections, pools, caches and metric children exist), makes
``calls`` calls of it and exits. ``bench_instructions`` runs it under callgrind twice, with two
call counts, and takes the difference: set-up, warm-up and interpreter start-up cancel out.

Each worker gets a Redis database of its own, so its first call is always a miss, whose one-off
costs (the write client connecting, redis-py's lazy imports) stay in the warm-up. On a shared
database it was left to chance which worker missed, and the counts moved by millions of
instructions.

Cases (see ``CASES``): a gcache hit and its floor, for LOCAL and REMOTE, sync and async, the same
functions, keys and values as ``bench_hits``; and a tracked REMOTE hit (``track_for_invalidation``:
TIME, INFO replication, GET and HMGET in one write), whose floor is the untracked one's, and
the same without failover fencing (``failover_fencing=False``: no INFO); and a signed REMOTE hit
(``signing_keys``: one HMAC more), whose floor is the unsigned gcache hit; and a page of 50 ids
on cold LOCAL (``cached_many``, REMOTE only, untracked and tracked), whose floor is one bare
MGET of 50 keys, as in ``bench_batch``."""

from __future__ import annotations

import asyncio
import os
import pickle
import sys
from collections.abc import Callable
from typing import Any

import cachetools

from benchmarks._harness import bare_async_client, bare_sync_client, gcache_errors, make_gcache, user
from benchmarks.bench_hits import ID, LOCAL_ONLY, REMOTE_ONLY, TTL, read_through_ttl_cache
from benchmarks.bench_signing import KEY as SIGNING_KEY
from gcache import GCache
from gcache._envelope import HEADER_SIZE
from gcache.urns import entity_key, value_key

__all__ = ["CASES", "main"]

CASES = (
    "sync LOCAL gcache",
    "sync LOCAL baseline",
    "async LOCAL gcache",
    "async LOCAL baseline",
    "sync REMOTE gcache",
    "sync REMOTE baseline",
    "async REMOTE gcache",
    "async REMOTE baseline",
    "sync REMOTE tracked",
    "async REMOTE tracked",
    "sync REMOTE unfenced",
    "async REMOTE unfenced",
    "sync REMOTE signed",
    "async REMOTE signed",
    "sync BATCH gcache",
    "sync BATCH baseline",
    "async BATCH gcache",
    "async BATCH baseline",
    "sync BATCH tracked",
    "async BATCH tracked",
)
BATCH_IDS = [str(i) for i in range(50)]  # bench_batch's page
WARM_UP = 300
PREFIX = "bench-instructions"
_CACHES: list[GCache] = []  # the case's gcache, checked for errors at the end
_RAN = [0]  # runs of the cached function: one, the first call's, when the rest hit


def _stored(redis_url: str, id: str = "1") -> str:
    """The bare baseline's key, holding a value as large as gcache's (as in ``bench_hits``)."""
    key = "{" + PREFIX + f":bare:{id}" + "}#RemoteBare"
    client = bare_sync_client(redis_url)
    client.set(key, pickle.dumps(user(ID), protocol=pickle.HIGHEST_PROTOCOL) + b"\0" * HEADER_SIZE)
    client.close()
    return key


def _cached_many(mode: str, redis_url: str, tracked: bool) -> Callable[[], Any]:
    """gcache's ``cached_many`` function of the page, enabled for the life of the process."""
    cache = make_gcache(redis_url, PREFIX, read_timeout_sec=5.0, write_timeout_sec=5.0)
    _CACHES.append(cache)
    use_case = f"Batch{mode.title()}{'Tracked' if tracked else ''}"
    client = bare_sync_client(redis_url)
    client.delete(*(value_key(entity_key(PREFIX, "user_id", i), (), use_case) for i in BATCH_IDS))
    client.close()
    decorate = cache.cached_many(
        key_type="user_id",
        ids_arg="ids",
        use_case=use_case,
        default_config=REMOTE_ONLY,
        track_for_invalidation=tracked,
    )

    def sync_users(ids: list[str]) -> dict[str, Any]:
        _RAN[0] += 1
        return {i: user(i) for i in ids}

    async def async_users(ids: list[str]) -> dict[str, Any]:
        return sync_users(ids)

    cache.enable().__enter__()
    page = decorate(sync_users if mode == "sync" else async_users)
    return lambda: page(BATCH_IDS)


def _cached(
    mode: str, kind: str, redis_url: str, tracked: bool = False, signed: bool = False, fencing: bool = True
) -> Callable[[str], Any]:
    """gcache's cached function of the case, enabled for the life of the process."""
    # Under valgrind a call runs some 50 times slower: the default 50 ms read deadline would fire,
    # and a timed-out read (counted, logged, served uncached) costs far more than a hit.
    keys: dict[str, Any] = {"signing_keys": [SIGNING_KEY]} if signed else {}
    if not fencing:
        keys["failover_fencing"] = False
    cache = make_gcache(redis_url, PREFIX, read_timeout_sec=5.0, write_timeout_sec=5.0, **keys)
    _CACHES.append(cache)
    use_case = f"{kind}{mode.title()}{'Tracked' if tracked else ''}{'Signed' if signed else ''}"
    use_case += "" if fencing else "Unfenced"
    client = bare_sync_client(redis_url)
    client.delete(value_key(entity_key(PREFIX, "user_id", ID), (), use_case))  # an earlier run's
    client.close()
    decorate = cache.cached(
        key_type="user_id",
        id_arg="user_id",
        use_case=use_case,
        default_config=LOCAL_ONLY if kind == "LOCAL" else REMOTE_ONLY,
        track_for_invalidation=tracked,
    )

    def sync_user(user_id: str) -> dict[str, Any]:
        _RAN[0] += 1
        return user(user_id)

    async def async_user(user_id: str) -> dict[str, Any]:
        _RAN[0] += 1
        return user(user_id)

    cache.enable().__enter__()  # in the calling context: the process's, or the async run's task
    return decorate(sync_user if mode == "sync" else async_user)


def _case(case: str, redis_url: str) -> Callable[[], Any]:
    """One call of ``case``: a plain call, or (async) a call returning the awaitable."""
    mode, kind, subject = case.split()
    if kind == "BATCH":
        if subject != "baseline":
            return _cached_many(mode, redis_url, tracked=subject == "tracked")
        admin_url = os.environ["BENCH_REDIS_ADMIN_URL"]  # gcache's login may not run MGET
        keys = [_stored(admin_url, i) for i in BATCH_IDS]
        bare: Any = bare_sync_client(admin_url) if mode == "sync" else bare_async_client(admin_url)
        return lambda: bare.mget(keys)
    if subject in ("gcache", "tracked", "signed", "unfenced"):
        cached_user = _cached(
            mode,
            kind,
            redis_url,
            tracked=subject in ("tracked", "unfenced"),
            signed=subject == "signed",
            fencing=subject != "unfenced",
        )
        return lambda: cached_user(ID)
    if kind == "LOCAL":
        bare_local, abare_local = read_through_ttl_cache(cachetools.TTLCache(10_000, TTL))
        local = bare_local if mode == "sync" else abare_local
        return lambda: local(ID)
    key = _stored(redis_url)
    client: Any = bare_sync_client(redis_url) if mode == "sync" else bare_async_client(redis_url)
    return lambda: client.get(key)


def _all_hits() -> int:
    """0 when every call but the first (a miss) was a hit; else 1, with a message."""
    errors = sum(gcache_errors(cache) for cache in _CACHES)
    ran = _RAN[0] if _CACHES else 1
    if errors or ran != 1:
        print(f"{errors} cache errors, the function ran {ran} times: not every call hit", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str]) -> int:
    case, calls, redis_url = argv[0], int(argv[1]), os.environ["BENCH_REDIS_URL"]
    if case not in CASES:
        print(f"unknown case {case!r}; one of: {', '.join(CASES)}", file=sys.stderr)
        return 2
    if case.startswith("sync"):
        call = _case(case, redis_url)
        for _ in range(WARM_UP):
            call()
        for _ in range(calls):
            call()
        return _all_hits()

    async def run() -> None:
        acall = _case(case, redis_url)
        for _ in range(WARM_UP):
            await acall()
        for _ in range(calls):
            await acall()

    asyncio.run(run())
    return _all_hits()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
