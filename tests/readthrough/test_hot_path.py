"""The hot path does what the performance issue asks of it, seen from outside.

A hit (LOCAL, or REMOTE untracked and tracked) is profiled with ``sys.setprofile``: it binds no
signature, looks up no metric label, hops to no thread and formats no log record; a sync REMOTE
hit registers no single flight. A REMOTE hit is one round trip (one write to the socket), of one
GETRANGE (a read bounded by ``max_value_bytes``; GET with no limit) or (tracked) a pipeline of
TIME, INFO replication, GETRANGE and HMGET, counted by the real server (``INFO commandstats``).
Speed itself is measured in ``benchmarks/``, not here.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

import pytest
import redis

from gcache import CacheLayer, GCache, GCacheKeyConfig
from tests.conftest import commands_run

LOCAL, REMOTE = CacheLayer.LOCAL, CacheLayer.REMOTE
CONFIGS = {
    "local": GCacheKeyConfig(ttl_sec={LOCAL: 60}, ramp={LOCAL: 100}),
    "remote": GCacheKeyConfig(ttl_sec={REMOTE: 60}, ramp={REMOTE: 100}),
}
FORBIDDEN = {
    ("inspect", "signature"): "a signature inspected per call",
    ("inspect", "bind"): "arguments bound to a signature per call",
    ("prometheus_client.metrics", "labels"): "a metric label looked up per call",
    ("asyncio.tasks", "run_coroutine_threadsafe"): "a hop to an event-loop thread",
    ("asyncio.threads", "to_thread"): "a hop to a worker thread",
    ("asyncio.base_events", "run_in_executor"): "a hop to an executor",
    ("gcache._loop_thread", "run"): "a hop to gcache's loop thread",
    ("logging", "getMessage"): "a log record formatted",
    ("logging", "format"): "a log record formatted",
}


def make_function(cache: GCache, is_async: bool, layer: str, tracked: bool) -> Callable[[str], Any]:
    """A cached ``(uid)`` function whose calls are awaitable either way."""
    options: dict[str, Any] = {
        "key_type": "user_id",
        "id_arg": "uid",
        "use_case": f"Hot{layer.title()}{'Tracked' if tracked else ''}{'Async' if is_async else 'Sync'}",
        "default_config": CONFIGS[layer],
        "track_for_invalidation": tracked,
    }
    if is_async:

        @cache.cached(**options)
        async def get_async(uid: str) -> dict[str, str]:
            return {"uid": uid}

        return get_async

    @cache.cached(**options)
    def get_sync(uid: str) -> dict[str, str]:
        return {"uid": uid}

    async def call(uid: str) -> dict[str, str]:  # in this thread: a sync hit needs no event loop
        return get_sync(uid)

    return call


async def profiled(call: Callable[[str], Any], times: int) -> set[tuple[str, str]]:
    """(module, function) of every Python function the calls ran, with their values checked."""
    seen: set[tuple[str, str]] = set()

    def record(frame: FrameType, event: str, arg: object) -> None:
        if event == "call":
            seen.add((frame.f_globals.get("__name__", "?"), frame.f_code.co_name))

    sys.setprofile(record)
    try:
        for _ in range(times):
            assert await call("7") == {"uid": "7"}
    finally:
        sys.setprofile(None)
    return seen


@pytest.mark.parametrize(
    ("layer", "tracked"),
    [("local", False), ("local", True), ("remote", False), ("remote", True)],
    ids=["local", "local-tracked", "remote", "remote-tracked"],
)
async def test_a_hit_binds_no_signature_looks_up_no_label_and_hops_no_thread(
    make_cache: Callable[..., GCache], is_async: bool, layer: str, tracked: bool
) -> None:
    cache = make_cache()
    call = make_function(cache, is_async, layer, tracked)
    with cache.enable():
        await call("7")  # the miss that fills the layer
        await call("7")  # the first hit binds what later hits reuse
        seen = await profiled(call, 20)

    assert (
        "gcache.readthrough.usecase",
        "async_wrapper" if is_async else "sync_wrapper",
    ) in seen  # saw the call
    found = {FORBIDDEN[name]: name for name in seen if name in FORBIDDEN}
    assert found == {}
    assert not any(module.startswith("logging") for module, _ in seen)
    if not is_async and layer == "remote" and not tracked:  # a thread reads for itself: no flight
        assert ("gcache.single_flight", "__init__") not in seen
    # A tracked read is led as a flight that other callers may merge into until it is sent.


@pytest.mark.parametrize("bounded", [True, False], ids=["bounded", "unbounded"])
@pytest.mark.parametrize("tracked", [False, True], ids=["untracked", "tracked"])
async def test_a_remote_hit_is_one_round_trip(
    make_cache: Callable[..., GCache],
    redis_client: redis.Redis,
    redis_writes: list[bytes],
    is_async: bool,
    tracked: bool,
    bounded: bool,
) -> None:
    options = {} if bounded else {"max_value_bytes": None}
    cache = make_cache(start_bus=False, **options)  # nothing else talks to Redis meanwhile
    call = make_function(cache, is_async, "remote", tracked)
    with cache.enable():
        await call("7")
        await call("7")  # connections open
        redis_client.config_resetstat()
        redis_writes.clear()
        for _ in range(10):
            await call("7")
        await asyncio.sleep(0)
        sent = list(redis_writes)
    stats = commands_run(redis_client)
    assert len(sent) == 10  # one write to Redis per hit, whatever it holds
    read = "cmdstat_getrange" if bounded else "cmdstat_get"  # at most max_value_bytes, framed, + 1
    if tracked:  # the value, the entity's fence and the server time, pipelined
        assert stats == {"cmdstat_time": 10, "cmdstat_info": 10, read: 10, "cmdstat_hmget": 10}
    else:
        assert stats == {read: 10}
