"""gcache on a real Redis Cluster: three primaries and their replicas on loopback (:mod:`tests._cluster`).

The hash tag keeps an entity's entries and its fence in one slot, so every script runs on one
node; flushall has to visit every primary. The nodes share one set of credentials: gcache logs
in to every node with its URL's, as the application user; the harness as the admin.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry
from redis.crc import key_slot

from gcache import CacheLayer, GCache, GCacheConfig, GCacheKey, GCacheKeyConfig, RedisConfig, RemoteError
from gcache import _envelope as envelope
from gcache._embedded_redis import EmbeddedRedis
from gcache.errors import ReplicasNotConfirmed
from tests._cluster import Cluster, cluster
from tests.behaviour.test_outbox import drained, fail_invalidations
from tests.conftest import commands_run, node_replid

REMOTE_ONLY = GCacheKeyConfig(ttl_sec={CacheLayer.REMOTE: 60}, ramp={CacheLayer.REMOTE: 100})
MODES = pytest.mark.parametrize("mode", ["sync", "async"])


@pytest.fixture(scope="module")
def the_cluster() -> Iterator[Cluster]:
    """Three primaries, each with a replica (:mod:`tests._cluster`)."""
    with cluster() as c:
        yield c
        assert c.acl_denials() == [], "a node refused gcache's user a command gcache needs"


@pytest.fixture(scope="module")
def primaries_only() -> Iterator[Cluster]:
    """Three primaries without replicas, for counting each node's reads (a replica's REPLCONF ACK
    every second is a read of its primary)."""
    with cluster(replicas=0) as c:
        yield c
        for admin in _counting.values():
            admin.close()
        _counting.clear()


@pytest.fixture(scope="module")
def cluster_nodes(the_cluster: Cluster) -> list[EmbeddedRedis]:
    """The primaries."""
    return the_cluster.primaries()


@pytest.fixture(scope="module")
def cluster_url(cluster_nodes: list[EmbeddedRedis]) -> str:
    return cluster_nodes[0].url


@pytest.fixture
def cluster_client(cluster_nodes: list[EmbeddedRedis]) -> Iterator[redis.RedisCluster]:
    """An admin client of the cluster, emptied before each test."""
    client = redis.RedisCluster.from_url(cluster_nodes[0].admin_url)
    client.flushall()
    yield client
    client.close()


def _cache(url: str, **options: Any) -> GCache:
    return GCache(
        GCacheConfig(
            redis_config=RedisConfig(url=url, cluster=True), metrics_registry=CollectorRegistry(), **options
        )
    )


def test_sync_functions_cache_and_invalidate_on_cluster(
    cluster_url: str, cluster_client: redis.RedisCluster
) -> None:
    calls: list[int] = []
    with _cache(cluster_url) as cache:

        @cache.cached(key_type="user_id", id_arg="uid", use_case="C", track_for_invalidation=True,
                      default_config=REMOTE_ONLY)  # fmt: skip
        def get(uid: int) -> int:
            calls.append(uid)
            return uid * 10

        with cache.enable():
            assert [get(i) for i in range(30)] == [i * 10 for i in range(30)]
            assert [get(i) for i in range(30)] == [i * 10 for i in range(30)]
            assert len(calls) == 30
            cache.invalidate("user_id", 7)
            assert get(7) == 70
            assert calls.count(7) == 2

    slots = {key_slot(f"{{urn:gcache:user_id:{i}}}#C".encode()) for i in range(30)}
    assert len(slots) > 1  # the entities really are spread over the cluster
    assert key_slot(b"{urn:gcache:user_id:7}#C") == key_slot(b"{urn:gcache:user_id:7}#watermark")
    assert cluster_client.exists("{urn:gcache:user_id:7}#watermark") == 1


async def test_async_functions_cache_invalidate_and_flush_on_cluster(
    cluster_url: str, cluster_client: redis.RedisCluster
) -> None:
    calls: list[int] = []
    cluster_client.set("other-app-key", b"1")
    async with _cache(cluster_url) as cache:

        @cache.cached(key_type="user_id", id_arg="uid", use_case="AC", track_for_invalidation=True,
                      default_config=REMOTE_ONLY)  # fmt: skip
        async def get(uid: int) -> int:
            calls.append(uid)
            return uid * 10

        with cache.enable():
            assert [await get(i) for i in range(30)] == [i * 10 for i in range(30)]
            assert [await get(i) for i in range(30)] == [i * 10 for i in range(30)]
            assert len(calls) == 30
            await cache.ainvalidate("user_id", 3)
            assert await get(3) == 30
            assert calls.count(3) == 2
        # Every tracked write creates its entity's fence: 30 values + 30 fences, on all primaries.
        assert await cache.aflushall() == 60
    assert cluster_client.exists("other-app-key") == 1
    assert [k for k in cluster_client.scan_iter(match="{urn:gcache:*")] == []


def _sent(cluster_client: redis.RedisCluster) -> int:
    """Bytes every primary has sent its clients so far."""
    sent = 0
    for node in cluster_client.get_primaries():  # type: ignore[no-untyped-call]
        sent += int(node.redis_connection.info("stats")["total_net_output_bytes"])
    return sent


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("tracked", [False, True], ids=["untracked", "tracked"])
async def test_a_planted_giant_on_a_cluster_is_read_bounded_and_a_too_large_miss(
    cluster_url: str, cluster_client: redis.RedisCluster, mode: str, tracked: bool
) -> None:
    """On a cluster a value is read by redis-py's GETRANGE, a tracked one by the read script's."""
    mib = 1024 * 1024
    registry = CollectorRegistry()
    config = GCacheConfig(
        redis_config=RedisConfig(url=cluster_url, cluster=True),
        metrics_registry=registry,
        max_value_bytes=mib,
    )
    urn = "{urn:gcache:user_id:1}#Giant"
    head = envelope.encode(pickle.dumps("planted"), envelope.SERIALIZER_PICKLE, 0, time.time_ns() // 1000)
    cluster_client.set(urn, head)
    cluster_client.setrange(urn, 64 * mib - 1, b"\0")  # 64 MiB, padded by Redis itself
    calls: list[int] = []
    async with GCache(config) as cache:

        def body(uid: int) -> int:
            calls.append(uid)
            return uid * 10

        async def abody(uid: int) -> int:
            return body(uid)

        decorate = cache.cached(key_type="user_id", id_arg="uid", use_case="Giant",
                                track_for_invalidation=tracked, default_config=REMOTE_ONLY)  # fmt: skip
        with cache.enable():
            before = _sent(cluster_client)
            assert (decorate(body)(1) if mode == "sync" else await decorate(abody)(1)) == 10
            sent = _sent(cluster_client) - before
        assert cache._remote is not None
        assert (cache._remote.breaker.failures, cache._remote.breaker.is_open) == (0, False)

    assert calls == [1]
    misses = registry.get_sample_value(
        "gcache_miss_reason_counter_total",
        {"use_case": "Giant", "key_type": "user_id", "layer": "REMOTE", "reason": "too_large"},
    )
    assert misses == 1
    assert mib < sent < mib + 256 * 1024
    assert cluster_client.strlen(urn) < 1_000  # rewritten with the function's value


def test_the_operator_commands_work_on_a_cluster(
    cluster_nodes: list[EmbeddedRedis], cluster_client: redis.RedisCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from gcache.__main__ import main

    url = cluster_nodes[0].url
    with _cache(url) as cache:

        @cache.cached(key_type="user_id", id_arg="uid", use_case="Ops", track_for_invalidation=True,
                      default_config=REMOTE_ONLY)  # fmt: skip
        def get(uid: int) -> int:
            return uid

        with cache.enable():
            for uid in range(30):  # entities spread over the three nodes' slots
                get(uid)

    def run(*argv: str) -> tuple[int, str]:
        code = main([*argv, "--cluster", "--redis-url", url])
        return code, capsys.readouterr().out

    code, out = run("inspect", "user_id:7", "--json")
    assert code == 0
    assert [e["verdict"] for e in json.loads(out)["entries"]] == ["fresh"]
    code, out = run("stats", "--json", "--no-memory")
    assert code == 0
    stats = json.loads(out)
    assert (stats["by_use_case"], stats["fences"], stats["tracked"]) == ({"user_id Ops": 30}, 30, 30)
    assert run("invalidate", "user_id", "7")[0] == 0
    assert [e["verdict"] for e in json.loads(run("inspect", "user_id:7", "--json")[1])["entries"]] == [
        "invalidated"
    ]
    assert (
        run("flush", "--dry-run")[1]
        == "would delete 60 keys of prefix 'urn:gcache' (dry run: nothing deleted)\n"
    )
    assert run("flush", "--yes")[1] == "deleted 60 keys of prefix 'urn:gcache'\n"
    assert cluster_client.dbsize() == 0


def _batch(
    cache: GCache, use_case: str, tracked: bool, mode: str, load: Callable[[list[int]], dict[int, int]]
) -> Callable[[list[int]], Awaitable[Any]]:
    """``load`` as a ``cached_many`` function (sync or async by ``mode``), called as a coroutine."""

    async def aload(ids: list[int]) -> dict[int, int]:
        return load(ids)

    decorate = cache.cached_many(key_type="user_id", ids_arg="ids", use_case=use_case,
                                 track_for_invalidation=tracked, default_config=REMOTE_ONLY)  # fmt: skip
    many = decorate(load if mode == "sync" else aload)

    async def call(ids: list[int]) -> Any:
        return many(ids) if mode == "sync" else await many(ids)  # type: ignore[misc]

    return call


def _reads_processed(nodes: list[EmbeddedRedis]) -> list[int]:
    """Each node's count of reads from its clients' sockets (INFO stats), its admin's INFO
    included: one read each, on a connection opened once (a new one's handshake is read in a
    varying number of reads, as the kernel coalesces its commands)."""
    counts = []
    for node in nodes:
        admin = _counting.get(node.port)
        if admin is None:
            admin = _counting[node.port] = redis.Redis.from_url(node.admin_url)
        counts.append(int(admin.info("stats")["total_reads_processed"]))
    return counts


_counting: dict[int, redis.Redis] = {}  # each node's counting connection (the module's cluster's)


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize(
    ("tracked", "bound"),
    [(False, True), (True, True), (False, False)],
    ids=["untracked", "tracked", "unbounded"],
)
async def test_a_batch_reads_every_node_in_one_round_trip_each_and_invalidates_one_id_on_a_cluster(
    primaries_only: Cluster, tracked: bool, bound: bool, mode: str
) -> None:
    """Unbounded reads too: a cluster's page is never an MGET (its keys span slots), a GET a key."""
    nodes = primaries_only.nodes
    cluster_client = redis.RedisCluster.from_url(nodes[0].admin_url)
    cluster_client.flushall()
    asked: list[list[int]] = []
    async with _cache(nodes[0].url, **({} if bound else {"max_value_bytes": None})) as cache:

        def load(ids: list[int]) -> dict[int, int]:
            asked.append(list(ids))
            return {i: i * 10 for i in ids if i != 13}

        call = _batch(cache, "Many", tracked, mode, load)

        ids = list(range(30))
        expected = {i: i * 10 for i in ids if i != 13}
        with cache.enable():
            assert await call(ids) == expected
            assert await call(list(reversed(ids))) == dict(reversed(expected.items()))  # from Redis
            trips = []
            for _ in range(2):  # the first may still open a connection to a node
                idle = _reads_processed(nodes)
                before = _reads_processed(nodes)  # what counting costs: the admin's connection
                assert await call(ids) == expected
                after = _reads_processed(nodes)
                trips.append([c - b - (b - a) for a, b, c in zip(idle, before, after, strict=True)])
            if tracked:
                await cache.ainvalidate("user_id", 7)
            else:
                await cache.adelete(GCacheKey("user_id", "7", "Many", default_config=REMOTE_ONLY))
            assert await call(ids) == expected

    assert asked == [ids, [13], [13], [13], [7, 13]]  # then from Redis; then 7 alone (13 has none)
    slots = {key_slot(f"{{urn:gcache:user_id:{i}}}#Many".encode()) for i in ids}
    names = {cluster_client.nodes_manager.get_node_from_slot(slot).name for slot in slots}
    cluster_client.close()
    assert len(names) == 3  # the batch really spans the cluster's nodes
    # One write per node for its ~10 reads (key by key: one read event each), beside the counting's.
    assert trips[-1] == [1, 1, 1]


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_tracked_batch_on_a_cluster_node_without_the_script_reads_through_it(
    cluster_url: str, cluster_client: redis.RedisCluster, cluster_nodes: list[EmbeddedRedis], mode: str
) -> None:
    """A node that lost the read script (SCRIPT FLUSH, a restart) answers the batch's EVALSHA with
    NOSCRIPT: those ids read again through the script, which loads it; nothing is counted as an error."""
    registry = CollectorRegistry()
    config = GCacheConfig(redis_config=RedisConfig(url=cluster_url, cluster=True), metrics_registry=registry)
    async with GCache(config) as cache:
        call = _batch(cache, "NoScript", True, mode, lambda ids: {i: i + 1 for i in ids})

        ids = list(range(20))
        with cache.enable():
            assert await call(ids) == {i: i + 1 for i in ids}
            for node in cluster_nodes:
                with redis.Redis.from_url(node.admin_url) as admin:
                    admin.script_flush()
            assert await call(ids) == {i: i + 1 for i in ids}
    families = {m.name: m for m in registry.collect()}
    errors = [s for s in families["gcache_error_counter"].samples if s.name.endswith("_total") and s.value]
    assert errors == []
    hits = [s.value for s in families["gcache_request_counter"].samples if s.name.endswith("_total")]
    assert sum(hits) == 2 * len(ids)  # both batches asked REMOTE for every id
    assert sum(1 for k in cluster_client.scan_iter("*#NoScript")) == len(ids)  # stored once, read back


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_waiting_invalidations_are_replayed_in_a_pipeline_per_node_on_a_cluster(
    primaries_only: Cluster, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """600 invalidations the cluster refused (its nodes also lost the script: each answers the
    first pipeline NOSCRIPT, then loads it through one item): two chunks, a pipeline per node
    each, every watermark raised, in a few reads per node where one at a time takes 200 each."""
    nodes = primaries_only.nodes
    admin = redis.RedisCluster.from_url(nodes[0].admin_url)
    admin.flushall()
    registry = CollectorRegistry()
    config = GCacheConfig(
        redis_config=RedisConfig(url=nodes[0].url, cluster=True),
        metrics_registry=registry,
        invalidation_outbox_raises=False,
    )
    ids = [str(n) for n in range(600)]
    async with GCache(config) as cache:
        fail_invalidations(monkeypatch, cache)
        for id in ids:
            if mode == "async":
                await cache.ainvalidate("user_id", id)
            else:
                cache.invalidate("user_id", id)
        assert len(cache._outbox) == len(ids)
        for node in nodes:
            with redis.Redis.from_url(node.admin_url) as node_admin:
                node_admin.script_flush()
        monkeypatch.undo()
        idle = _reads_processed(nodes)
        before = _reads_processed(nodes)  # what counting costs: the admin's connection
        cache._outbox.wake()
        await drained(cache, registry)
        after = _reads_processed(nodes)
        applied = registry.get_sample_value("gcache_invalidation_replay_counter_total", {"result": "applied"})
    trips = [c - b - (b - a) for a, b, c in zip(idle, before, after, strict=True)]
    pipe = admin.pipeline(transaction=False)  # type: ignore[no-untyped-call]
    for id in ids:
        pipe.hget(f"{{urn:gcache:user_id:{id}}}#watermark", "w")
    watermarks = [int(w or 0) for w in pipe.execute()]
    slots = {key_slot(f"{{urn:gcache:user_id:{id}}}#watermark".encode()) for id in ids}
    owners = {admin.nodes_manager.get_node_from_slot(slot).name for slot in slots}
    admin.close()
    assert applied == len(ids)
    assert min(watermarks) > 0
    assert len(owners) == 3  # the replay really spans the cluster's nodes
    assert all(0 < trip < 40 for trip in trips), trips  # one at a time: about 200 a node


def _fence(id: str) -> str:
    return f"{{urn:gcache:user_id:{id}}}#watermark"


def _ids_by_owner(the_cluster: Cluster, ids: list[str]) -> dict[int, list[str]]:
    """The ids by the port of the primary that holds their fence."""
    owners: dict[int, list[str]] = {}
    for id in ids:
        owners.setdefault(the_cluster.owner(_fence(id)).port, []).append(id)
    return owners


def _replicas_online(the_cluster: Cluster) -> None:
    """Until every primary has its replica and that replica acknowledges a write (a replica
    just synced acknowledges new writes only after a while, up to a second)."""
    deadline = time.monotonic() + 20
    for primary in the_cluster.primaries():
        admin = the_cluster.admin(primary)
        key = next(
            f"harness-sync:{n}" for n in range(10_000) if the_cluster.owner(f"harness-sync:{n}") == primary
        )
        while True:
            try:
                the_cluster.replica_of(primary)
                admin.set(key, "1")
                if admin.wait(1, 1000) >= 1:
                    break
            except AssertionError:  # not attached yet
                pass
            assert time.monotonic() < deadline, f"{primary}'s replica never came online"
            time.sleep(0.05)


def _replica_watermark(the_cluster: Cluster, id: str) -> int:
    replica = the_cluster.replica_of(the_cluster.owner(_fence(id)))
    with redis.Redis.from_url(replica.admin_url) as client:
        client.execute_command("READONLY")
        return int(client.hget(_fence(id), "w") or 0)


async def _invalidate(cache: GCache, mode: str, id: str) -> None:
    if mode == "async":
        await cache.ainvalidate("user_id", id)
    else:
        cache.invalidate("user_id", id)


@MODES
async def test_invalidate_replicas_waits_on_the_node_that_took_the_fence(
    the_cluster: Cluster, cluster_url: str, cluster_client: redis.RedisCluster, mode: str
) -> None:
    """invalidate_replicas on a cluster: each invalidation's WAIT follows its script on a
    connection of the fence's node. Returned: that node's replica has the watermark. With that
    replica paused, the invalidation raises ReplicasNotConfirmed (applied on the primary) while
    those of the other shards return: a WAIT on any other node, or on a connection without the
    write, would have confirmed it."""
    _replicas_online(the_cluster)
    ids = [str(n) for n in range(12)]
    owners = _ids_by_owner(the_cluster, ids)
    assert len(owners) == 3
    config = GCacheConfig(
        redis_config=RedisConfig(url=cluster_url, cluster=True),
        metrics_registry=CollectorRegistry(),
        invalidate_replicas=1,
        invalidate_wait_ms=300,
    )
    async with GCache(config) as cache:
        for id in ids:
            await _invalidate(cache, mode, id)
        assert all(_replica_watermark(the_cluster, id) > 0 for id in ids)
        paused_port, held = next(iter(owners.items()))
        replica = the_cluster.replica_of(the_cluster.by_port(paused_port))
        replica.pause()
        try:
            before = int(cluster_client.hget(_fence(held[0]), "w") or 0)
            with pytest.raises(RemoteError) as raised:
                await _invalidate(cache, mode, held[0])
            assert isinstance(raised.value.cause, ReplicasNotConfirmed)
            assert (raised.value.cause.wanted, raised.value.cause.confirmed) == (1, 0)
            assert int(cluster_client.hget(_fence(held[0]), "w") or 0) > before  # the primary has it
            for port, others in owners.items():
                if port != paused_port:
                    await _invalidate(cache, mode, others[0])  # other shards confirm
        finally:
            replica.resume()


@MODES
async def test_replayed_invalidations_wait_per_node_on_a_cluster(
    the_cluster: Cluster,
    cluster_url: str,
    cluster_client: redis.RedisCluster,
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
) -> None:
    """The outbox's replays with invalidate_replicas on a cluster: one connection per node, each
    chunk's scripts there and that node's WAIT after them. A paused replica makes its shard's
    items unconfirmed (applied on the primary, released) and the other shards' applied."""
    _replicas_online(the_cluster)
    ids = [str(n) for n in range(30)]
    owners = _ids_by_owner(the_cluster, ids)
    registry = CollectorRegistry()
    config = GCacheConfig(
        redis_config=RedisConfig(url=cluster_url, cluster=True),
        metrics_registry=registry,
        invalidate_replicas=1,
        invalidate_wait_ms=300,
        invalidation_outbox_raises=False,
    )
    paused_port, held = next(iter(owners.items()))
    replica = the_cluster.replica_of(the_cluster.by_port(paused_port))
    async with GCache(config) as cache:
        fail_invalidations(monkeypatch, cache)
        for id in ids:
            await _invalidate(cache, mode, id)
        assert len(cache._outbox) == len(ids)
        replica.pause()
        try:
            monkeypatch.undo()
            cache._outbox.wake()
            await drained(cache, registry)
        finally:
            replica.resume()
        counted = {
            result: registry.get_sample_value("gcache_invalidation_replay_counter_total", {"result": result})
            for result in ("applied", "unconfirmed")
        }
    assert counted == {"applied": len(ids) - len(held), "unconfirmed": len(held)}
    assert all(int(cluster_client.hget(_fence(id), "w") or 0) > 0 for id in ids)


@MODES
@pytest.mark.parametrize("fencing", [True, False], ids=["fencing", "no-fencing"])
async def test_a_cluster_s_tracked_hits_run_info_only_with_failover_fencing(
    the_cluster: Cluster,
    cluster_url: str,
    cluster_client: redis.RedisCluster,
    cluster_nodes: list[EmbeddedRedis],
    mode: str,
    fencing: bool,
) -> None:
    """A cluster's tracked reads are READ_TRACKED's: without failover fencing it trusts an
    existing fence (no INFO in the script), whatever its history; with it, one INFO a read."""
    config = GCacheConfig(
        redis_config=RedisConfig(url=cluster_url, cluster=True),
        metrics_registry=CollectorRegistry(),
        failover_fencing=fencing,
    )
    asked: list[int] = []
    ids = list(range(12))
    expected = {i: i * 10 for i in ids}
    admins = [redis.Redis.from_url(node.admin_url) for node in cluster_nodes]
    try:
        async with GCache(config) as cache:

            def load(ids: list[int]) -> dict[int, int]:
                asked.extend(ids)
                return {i: i * 10 for i in ids}

            def one(uid: int) -> int:
                return load([uid])[uid]

            async def aone(uid: int) -> int:
                return one(uid)

            call = _batch(cache, "Fencing", True, mode, load)
            decorate = cache.cached(key_type="user_id", id_arg="uid", use_case="FencingOne",
                                    track_for_invalidation=True, default_config=REMOTE_ONLY)  # fmt: skip
            cached_one = decorate(one if mode == "sync" else aone)

            async def single(uid: int) -> Any:
                return cached_one(uid) if mode == "sync" else await cached_one(uid)  # type: ignore[misc]

            with cache.enable():
                assert await call(ids) == expected
                assert await single(0) == 0
                for admin in admins:
                    admin.config_resetstat()
                for _ in range(3):
                    assert await call(ids) == expected
                    assert await single(0) == 0
                stats = [commands_run(admin) for admin in admins]
                fence = "{urn:gcache:user_id:5}#watermark"
                cluster_client.hset(fence, "r", "f" * 40)  # as a promoted replica inherits it
                assert await call([5]) == {5: 50}
                remade = cluster_client.hget(fence, "r")
                with redis.Redis.from_url(the_cluster.owner(fence).admin_url) as owner:
                    replid = node_replid(owner)
    finally:
        for admin in admins:
            admin.close()

    assert sum(s.get("cmdstat_evalsha", 0) for s in stats) == 3 * 13  # every read its script
    assert sum(s.get("cmdstat_info", 0) for s in stats) == (3 * 13 if fencing else 0)
    # Fencing: the fence of another history made anew, its entry computed again; else trusted.
    assert asked == ids + [0] + ([5] if fencing else [])
    assert remade == (replid if fencing else b"f" * 40)
