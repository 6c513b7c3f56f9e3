"""The operator's tools on a real Redis Cluster whose primary hangs (issue 20): ``top`` names the
node whose breaker is open, the admin app's ``GET /health`` gives each node's breaker, and
``inspect`` the node and slot of an entity, asking that node alone. (Through Redis Sentinel:
``tests/remote/test_sentinel.py``.)"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from redis.crc import key_slot

from gcache import CacheLayer, GCache, GCacheConfig, GCacheKeyConfig, RedisConfig
from gcache.top import render, snapshot
from tests._cluster import Cluster, cluster
from tests.behaviour._sentinel import reader
from tests.test_operator import run
from tests.web.test_admin import health

pytestmark = pytest.mark.slow
MODES = pytest.mark.parametrize("mode", ["async", "sync"])
REMOTE_ONLY = GCacheKeyConfig(ttl_sec={CacheLayer.REMOTE: 300}, ramp={CacheLayer.REMOTE: 100})
IDS = [str(i) for i in range(30)]


def value_key(id: str) -> str:
    return "{urn:gcache:user_id:" + id + "}#GetUser"


# -- a Redis Cluster whose primary hangs -----------------------------------------------------------


@pytest.fixture(scope="module")
def hung_cluster() -> Iterator[Cluster]:
    with cluster(node_timeout_ms=60000) as c:  # no failover: the hanging primary stays one
        yield c


@MODES
async def test_health_top_and_inspect_name_the_cluster_node_whose_breaker_is_open(
    hung_cluster: Cluster, mode: str, capsys: pytest.CaptureFixture[str]
) -> None:
    c = hung_cluster
    registry = CollectorRegistry()
    config = RedisConfig(url=c.nodes[0].url, cluster=True)
    cache = GCache(
        GCacheConfig(redis_config=config, metrics_registry=registry, read_timeout_sec=0.1,
                     breaker_failures=2, breaker_probe_sec=0.2)
    )  # fmt: skip
    read = reader(cache, mode, {"version": "v1", "calls": 0}, tracked=True, config=REMOTE_ONLY)
    try:
        for id in IDS:
            await read(id)
        primaries = c.primaries()
        hanging, alive = primaries[1], primaries[0]
        node = f"127.0.0.1:{hanging.port}"
        lost = [id for id in IDS if c.owner(value_key(id)) is hanging]
        kept = next(id for id in IDS if c.owner(value_key(id)) is alive)
        hanging.pause()
        try:
            for _ in range(3):
                for id in lost:
                    assert await read(id) == f"v1:{id}"  # served uncached
            states = {state["node"]: state for state in (await health(cache))["node_breakers"]}
            assert states[node]["open"] is True
            assert states[node]["failures"] >= 2
            assert [name for name, state in states.items() if state["open"]] == [node]
            assert {f"127.0.0.1:{p.port}" for p in primaries} <= set(states)  # every node known
            view = render(snapshot(generate_latest(registry).decode()), {}, 1.0)
            assert f"breaker open: 1 (cluster nodes: {node})   bus subscriptions: " in view

            code, out, err = run(capsys, "inspect", f"user_id:{kept}", "--redis-url", alive.url, "--cluster")
            assert code == 0, err
            lines = out.splitlines()
            slot = key_slot(value_key(kept).encode())
            assert lines[1] == f"  node: 127.0.0.1:{alive.port} (cluster slot {slot}, its primary)"
            assert lines[3].endswith(": the same (the fence is of this node's replication history)")
        finally:
            hanging.resume()

        for _ in range(100):  # the probe is a caller's call: read its ids until it closes
            for id in lost:
                await read(id)
            if not any(state["open"] for state in cache.health()["node_breakers"]):
                break
            await asyncio.sleep(0.05)
        assert not any(state["open"] for state in (await health(cache))["node_breakers"])
        view = render(snapshot(generate_latest(registry).decode()), {}, 1.0)
        assert "breaker open: 0   bus subscriptions: " in view  # no node named
    finally:
        await cache.aclose()
