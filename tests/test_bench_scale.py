"""The sizing model (benchmarks/bench_scale.py): its arithmetic, and what it measures on a real
server, where the figures are exact: a REMOTE hit is one Redis command, a miss two (GET, SET),
a tracked hit four."""

from __future__ import annotations

import pytest

from benchmarks import bench_scale
from benchmarks.bench_scale import (
    DELIVERY,
    IDLE,
    INVALIDATE,
    MISS,
    MISS_TRACKED,
    REMOTE_HIT,
    REMOTE_HIT_TRACKED,
    Cost,
    enough_up_to,
    project,
)
from gcache._embedded_redis import EmbeddedRedis

COSTS = {
    REMOTE_HIT: Cost(1, 80, 120, 10.0),
    REMOTE_HIT_TRACKED: Cost(3, 200, 600, 20.0),
    MISS: Cost(2, 300, 10, 30.0),
    MISS_TRACKED: Cost(16, 800, 500, 100.0),
    INVALIDATE: Cost(6, 250, 20, 30.0),
    DELIVERY: Cost(0, 0, 130, 1.0),
    IDLE: Cost(0, 0, 0, 1_000.0),
}


def test_the_model_adds_each_kind_of_call_at_its_rate() -> None:
    load = project(COSTS, 10, 100, local_hit=0.9, remote_hit=0.5, tracked=False, invalidations_per_sec=2)
    # 100 lookups/s reach Redis: 50 hits, 50 misses; 2 invalidations, each delivered to 10 buses
    assert load.calls == pytest.approx(102)
    assert load.commands == pytest.approx(50 * 1 + 50 * 2 + 2 * 6)
    assert load.mb_out == pytest.approx((50 * 120 + 50 * 10 + 2 * 20 + 20 * 130) / 1e6)
    assert load.core == pytest.approx((50 * 10 + 50 * 30 + 2 * 30 + 20 * 1 + 1_000) / 1e6)
    assert load.deliveries == 20
    tracked = project(COSTS, 10, 100, local_hit=0.9, remote_hit=0.5)
    assert tracked.commands == pytest.approx(50 * 3 + 50 * 16)


def test_a_cluster_spreads_the_calls_but_every_node_hears_every_message() -> None:
    one = project(COSTS, 100, 100, local_hit=0.0, remote_hit=1.0, tracked=False, invalidations_per_sec=40)
    each = project(
        COSTS, 100, 100, local_hit=0.0, remote_hit=1.0, tracked=False, invalidations_per_sec=40, primaries=4
    )
    assert each.calls == pytest.approx(one.calls / 4)
    assert each.commands == pytest.approx(one.commands / 4)
    # 40 messages/s reach every node: 10 published there, 30 forwarded, each delivered to the 25
    # processes subscribed through it
    assert each.deliveries == pytest.approx(40 * 25)
    assert each.mb_out == pytest.approx((10_000 / 4 * 120 + 10 * 20 + (40 * 25 + 30) * 130) / 1e6)


def test_one_redis_is_enough_up_to_its_headroom() -> None:
    up_to = enough_up_to(COSTS, local_hit=0.0, tracked=False)
    at = project(COSTS, 1, up_to, local_hit=0.0, tracked=False)
    assert at.core == pytest.approx(bench_scale.HEADROOM)
    assert enough_up_to(COSTS, local_hit=0.9, tracked=False) == pytest.approx(
        (bench_scale.HEADROOM - 0.001) / (0.1 * (0.95 * 10 + 0.05 * 30) / 1e6)
    )


@pytest.mark.redis
def test_per_call_costs_on_a_real_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_scale, "CALLS", 200)
    monkeypatch.setattr(bench_scale, "SUBSCRIBERS", 4)
    monkeypatch.setattr(bench_scale, "ROUNDS", 1)
    with EmbeddedRedis() as server:
        costs = bench_scale.per_call(server.url, server.admin_url)
    # A connection opened during a run (a thread's first write, say) adds its handshake's commands.
    assert costs[REMOTE_HIT].commands == pytest.approx(1.0, abs=0.02)  # one GET
    assert costs[MISS].commands == pytest.approx(2.0, abs=0.02)  # GET, then SET
    # one round trip: TIME, GET, HMGET of the fence, INFO replication (the fence's replication id)
    assert costs[REMOTE_HIT_TRACKED].commands == pytest.approx(4.0, abs=0.02)
    assert costs[REMOTE_HIT_TRACKED].bytes_out > costs[REMOTE_HIT].bytes_out
    assert costs[DELIVERY].commands == pytest.approx(0.0, abs=0.01)  # a delivery is no command
    assert costs[DELIVERY].bytes_out > 50  # the message, to each subscriber
    assert all(c.cpu_us >= 0 for c in costs.values())
