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
import redis
from prometheus_client import CollectorRegistry
from redis.crc import key_slot

from gcache import CacheLayer, GCache, GCacheConfig, GCacheKeyConfig, RedisConfig, RemoteError
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

    def __init__(self, source: Source, cache: GCache, mode: str) -> None:
        self.source = source
        self.cache = cache
        self.read = source.reader(cache, mode)
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


def make(c: Cluster, registry: CollectorRegistry) -> GCache:
    config = RedisConfig(url=c.nodes[0].url, cluster=True)
    return GCache(GCacheConfig(redis_config=config, metrics_registry=registry))


def errors(registry: CollectorRegistry) -> dict[str, float]:
    """``gcache_error_counter`` by error name."""
    found: dict[str, float] = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == "gcache_error_counter_total" and sample.value:
                name = sample.labels["error"]
                found[name] = found.get(name, 0) + sample.value
    return found


@asynccontextmanager
async def loaded(mode: str) -> AsyncIterator[tuple[Cluster, CollectorRegistry, Rounds]]:
    """A loaded GCache on a cluster that keeps serving the slots of live primaries while
    another's are down (``cluster-require-full-coverage no``; with Redis's default every node
    answers CLUSTERDOWN until the promotion)."""
    with cluster(node_timeout_ms=NODE_TIMEOUT_MS, full_coverage=False) as c:
        source = Source()
        registry = CollectorRegistry()
        cache = make(c, registry)
        try:
            rounds = Rounds(source, cache, mode)
            assert await rounds.round() == set(IDS)
            # every id from REMOTE (an asyncio call that opens a node's first connection may
            # spend its deadline doing so: served uncached, cached the next round)
            await until_resumed(rounds, time.monotonic(), 5)
            yield c, registry, rounds
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
    async with loaded(mode) as (c, _, rounds):
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
        print(
            f"\n{mode} kill {which}: promoted after {promotion:.2f} s, caching back after {resumed:.2f} s, "
            f"worst call {rounds.worst * 1000:.0f} ms, stale {rounds.stale}, "
            f"other shards uncached {sorted(ran - lost)}"
        )
        assert ran <= lost, f"other shards served uncached: {sorted(ran - lost)}"
        assert rounds.stale == 0


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
            rounds = Rounds(source, cache, mode)
            assert await rounds.round() == set(IDS)
            await until_resumed(rounds, time.monotonic(), 5)  # every shard cached, the URL's node dead
        finally:
            await cache.aclose()


@MODES
async def test_reads_in_a_migrating_slot_are_served_at_once_and_cached_once_it_settles(mode: str) -> None:
    """Mid-migration a tracked read of an entity whose keys are not all on one side is answered
    TRYAGAIN: served uncached at once (redis-py would retry and sleep), no outage counted; the
    first read after the slot settles stores it."""
    async with loaded(mode) as (c, registry, rounds):
        fresh = 1000  # an entity never read: its fence and entry are made in the migrating slot
        rounds.source.version[fresh] = "v1"
        slot = key_slot(value_key(fresh).encode())
        source = c.owner(value_key(fresh))
        target = next(p for p in c.primaries() if p is not source)
        moving = {i for i in IDS if key_slot(value_key(i).encode()) == slot}
        c.set_slot(slot, "IMPORTING", c.node_id(source), on=[target])
        c.set_slot(slot, "MIGRATING", c.node_id(target), on=[source])
        worst = 0.0
        for _ in range(20):
            start = time.perf_counter()
            assert await rounds.read(fresh) == "v1"
            worst = max(worst, time.perf_counter() - start)
        assert rounds.source.ran.count(fresh) == 20  # not cached mid-migration
        assert await rounds.round() <= moving  # the other slots' ids: from REMOTE
        assert c.move_keys(slot, source, target) >= 0
        c.set_slot(slot, "NODE", c.node_id(target), on=c.primaries())
        assert await rounds.read(fresh) == "v1"
        assert await rounds.read(fresh) == "v1"
        assert rounds.source.ran.count(fresh) == 21  # stored once the slot settled
        assert errors(registry) == {"SlotMigrating": 20}  # the node answered: no outage
        print(f"\n{mode} migrating slot: worst read {worst * 1000:.0f} ms, then cached")
        assert worst < 0.1


@MODES
async def test_an_invalidation_the_promoted_replica_never_received_is_not_lost_on_a_cluster(
    mode: str,
) -> None:
    """The lost-watermark case on a cluster: the replica's resync held back before the
    invalidation, then the primary killed and the replica promoted by ``CLUSTER FAILOVER
    TAKEOVER``. The promoted replica holds the old watermark and the old entry; the fence's
    replication id is not the new primary's, so nothing read after ``invalidate`` returned is the
    invalidated version (the reads fail closed, then the entity is cached anew)."""
    async with loaded(mode) as (c, _, rounds):
        target = 7
        fence = "{urn:gcache:user_id:" + str(target) + "}#watermark"
        primary = c.owner(value_key(target))
        inherited = c.admin(primary).hgetall(fence)  # the replica has it (hold_back waits for it)
        replica = c.hold_back(primary)
        rounds.source.version[target] = "v2"
        cache = rounds.cache
        if mode == "async":
            await cache.ainvalidate("user_id", target)
        else:
            cache.invalidate("user_id", target)
        # from here on v1 is stale: every read below is checked against v2
        assert c.admin(primary).hgetall(fence) != inherited
        taken = time.monotonic()
        await asyncio.get_running_loop().run_in_executor(None, c.take_over, primary, replica)
        assert c.admin(replica).hgetall(fence) == inherited  # the lost watermark: not there
        assert c.admin(replica).exists(value_key(target)) == 1  # and the old entry is
        resumed = await until_resumed(rounds, taken, RESUME_BOUND_S + 10)
        for _ in range(5):
            await rounds.round()
        print(
            f"\n{mode} lost watermark, takeover: caching back after {resumed:.2f} s, "
            f"worst call {rounds.worst * 1000:.0f} ms, stale {rounds.stale}"
        )
        assert rounds.stale == 0


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(
        s.value
        for family in registry.collect()
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


@MODES
async def test_a_hanging_primary_is_skipped_by_its_own_breaker_alone(mode: str) -> None:
    """A primary that stops answering (SIGSTOP; no failover: a long node timeout) opens its own
    breaker after ``breaker_failures`` timeouts: its ids are then served uncached without
    waiting for it (counted as REMOTE disabled, server_down), every other shard from REMOTE
    all along; once it answers again, a probe closes its breaker and its ids are cached again."""
    with cluster(node_timeout_ms=60000) as c:
        registry = CollectorRegistry()
        cache = make(c, registry)
        source = Source()
        try:
            rounds = Rounds(source, cache, mode)
            assert await rounds.round() == set(IDS)
            await until_resumed(rounds, time.monotonic(), 5)
            before = sum(errors(registry).values())  # a first connection's, if any
            hanging = c.primaries()[1]
            node = f"127.0.0.1:{hanging.port}"
            lost = ids_on(c, [hanging])
            hanging.pause()
            try:
                for _ in range(5):
                    assert await rounds.round() == lost  # the others: from REMOTE
                assert sample(registry, "gcache_breaker_node_open", node=node) == 1
                assert sample(registry, "gcache_breaker_open") == 1
                skipped = sample(registry, "gcache_disabled_counter_total", reason="server_down")
                timeouts = sum(errors(registry).values()) - before
                assert skipped > 0
                # 5 rounds of its ids, but only the breaker's 5 failures (and a probe or two) waited
                assert timeouts <= 5 + 2, errors(registry)
                assert skipped + timeouts == 5 * len(lost)
                # a management operation is still attempted (and fails: the node does not answer)
                with pytest.raises(RemoteError) as raised:
                    await cache.ainvalidate("user_id", sorted(lost)[0])
                assert isinstance(raised.value.cause, redis.TimeoutError)
            finally:
                hanging.resume()
            deadline = time.monotonic() + 10
            while await rounds.round():
                assert time.monotonic() < deadline, "the node's breaker did not close"
                await asyncio.sleep(0.1)
            assert sample(registry, "gcache_breaker_node_open", node=node) == 0
            assert sample(registry, "gcache_breaker_open") == 0
        finally:
            await cache.aclose()


def test_a_sync_cluster_connection_opens_under_the_connect_bound() -> None:
    """issue 19's connect bound on a cluster: a node that accepts connections and never answers
    (SIGSTOP) fails a sync call's opening as a ``ConnectTimeout`` after ``socket_connect_timeout``
    (the node pools' connection class is gcache's), not as the lookup's ``TimeoutError``."""
    with cluster(node_timeout_ms=60000) as c:
        registry = CollectorRegistry()
        options = {"socket_connect_timeout": 0.3, "socket_timeout": 1.0}
        config = RedisConfig(url=c.nodes[0].url, cluster=True, redis_py_options=options)
        cache = GCache(GCacheConfig(redis_config=config, metrics_registry=registry))
        source = Source()
        hanging = next(p for p in c.primaries() if p is not c.nodes[0])
        on_it = sorted(ids_on(c, [hanging]))[0]
        read = source.reader(cache, "sync")
        try:
            hanging.pause()  # before the client's first connection to it
            try:
                assert asyncio.run(read(on_it)) == "v1"  # served uncached
            finally:
                hanging.resume()
            assert errors(registry) == {"ConnectTimeout": 1}
            assert asyncio.run(read(on_it)) == "v1"
            assert asyncio.run(read(on_it)) == "v1"
            assert source.ran.count(on_it) == 2  # then cached
        finally:
            cache.close()


def bus_node(c: Cluster) -> list[Any]:
    """The live nodes holding a pub/sub connection of gcache's user (a bus's)."""
    return [
        n
        for n in c.alive()
        if any(client.get("user") == "gcache" for client in c.admin(n).client_list(_type="pubsub"))
    ]


async def test_the_bus_follows_the_topology_when_its_node_dies() -> None:
    """The bus subscribes on a node of the topology; when that node is killed it subscribes
    again on another live one (not on the URL's node alone, which may be the dead one)."""
    with cluster(node_timeout_ms=NODE_TIMEOUT_MS, full_coverage=False) as c:
        cache = make(c, CollectorRegistry())
        source = Source()
        decorate = cache.cached(
            key_type="user_id", id_arg="uid", use_case="Both", track_for_invalidation=True,
            default_config=GCacheKeyConfig.enabled(300),
        )  # fmt: skip
        fn = decorate(lambda uid: source.version[uid])
        try:
            with cache.enable():
                assert fn(1) == "v1"  # the bus starts on first need
            bus = cache._bus
            assert bus is not None
            deadline = time.monotonic() + 10
            while not bus.subscribed or not bus_node(c):
                assert time.monotonic() < deadline, "the bus did not subscribe"
                await asyncio.sleep(0.05)
            [first] = bus_node(c)
            before = bus.connections
            c.kill(first)
            deadline = time.monotonic() + 10
            while not (bus.subscribed and bus.connections > before and bus_node(c)):
                assert time.monotonic() < deadline, f"the bus did not come back: {bus.last_error}"
                await asyncio.sleep(0.05)
            assert first not in bus_node(c)
        finally:
            await cache.aclose()
