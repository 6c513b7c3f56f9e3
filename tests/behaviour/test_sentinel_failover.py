"""Sentinel failovers on real processes (issue 20): a primary, its replica and three sentinels.

The primary is killed mid-load (threads for sync callers, tasks for async ones) and the
sentinels promote the replica: no exception reaches a cached caller, caching resumes on the
promoted node within a bound, and no read started after ``invalidate`` returned is served the
invalidated value, in the invalidating GCache or another. The lost-watermark case is forced (the
replica stopped and cut off before the invalidation, then the primary killed): reads fail closed.
A reader process on the same config counts its reads too. The figures (time to resume, worst
call latency, stale reads) are printed (``pytest -s``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry

from gcache import CacheLayer, GCache, GCacheConfig, GCacheKeyConfig, RemoteError
from gcache.remote import scripts
from gcache.remote.sentinel import MasterClient
from gcache.urns import bus_channel
from tests.behaviour._sentinel import SERVICE, Reader, Sentinels, cached_read, reader, sentinels

MODES = pytest.mark.parametrize("mode", ["async", "sync"])
BOTH = GCacheKeyConfig.enabled(300)
REMOTE_ONLY = GCacheKeyConfig(ttl_sec={CacheLayer.REMOTE: 300}, ramp={CacheLayer.REMOTE: 100})
IDS = [str(i) for i in range(12)]
INVALIDATED = ["0", "1", "2"]
CHANNEL = bus_channel("urn:gcache")
ROOT = Path(__file__).resolve().parents[2]
SHAS = [redis.Redis().register_script(script).sha for script in (scripts.READ_TRACKED, scripts.WRITE_TRACKED)]


def make(s: Sentinels) -> GCache:
    return GCache(GCacheConfig(redis_config=s.config(), metrics_registry=CollectorRegistry()))


class Load:
    """Workers calling cached functions over :data:`IDS` until stopped, each call recorded as
    (GCache name, id, start, seconds, value); an exception is kept, never raised."""

    def __init__(
        self, mode: str, calls: dict[str, tuple[GCache, Callable[[str], Any]]], workers: int = 3
    ) -> None:
        self.mode, self.calls, self.workers = mode, calls, workers
        self.records: list[tuple[str, str, float, float, str]] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._running: list[Any] = []

    def start(self) -> None:
        for name in self.calls:
            for _ in range(self.workers):
                if self.mode == "async":
                    self._running.append(asyncio.ensure_future(self._acall(name)))
                else:
                    thread = threading.Thread(target=self._call, args=(name,), daemon=True)
                    thread.start()
                    self._running.append(thread)

    def _call(self, name: str) -> None:
        cache, fn = self.calls[name]
        with cache.enable():
            while not self._stop.is_set():
                for uid in IDS:
                    start = time.perf_counter()
                    try:
                        value = fn(uid)
                    except BaseException as exc:  # a cached call must never raise
                        self.errors.append(exc)
                        continue
                    self.records.append((name, uid, start, time.perf_counter() - start, value))
                time.sleep(0.005)

    async def _acall(self, name: str) -> None:
        cache, fn = self.calls[name]
        with cache.enable():
            while not self._stop.is_set():
                for uid in IDS:
                    start = time.perf_counter()
                    try:
                        value = await fn(uid)
                    except Exception as exc:
                        self.errors.append(exc)
                        continue
                    self.records.append((name, uid, start, time.perf_counter() - start, value))
                await asyncio.sleep(0.005)

    async def stop(self) -> None:
        self._stop.set()
        for running in self._running:
            if isinstance(running, threading.Thread):
                await asyncio.to_thread(running.join, 10)
            else:
                await asyncio.wait_for(running, 10)

    def stale(self, name: str, after: float) -> int:
        """Reads by ``name`` of an invalidated id started after ``after`` and served v1."""
        return sum(
            1 for n, uid, start, _, value in self.records
            if n == name and uid in INVALIDATED and start >= after and value.startswith("v1:")
        )  # fmt: skip


async def until_resumed(
    probe: Reader, source: dict[str, Any], uid: str = "probe", timeout: float = 15.0
) -> float:
    """Seconds until a probe read is served from the cache (its function not run): caching resumed."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        calls = source["calls"]
        await probe(uid)
        if source["calls"] == calls:
            return time.perf_counter() - start
        await asyncio.sleep(0.02)
    raise AssertionError(f"caching did not resume within {timeout} s")


async def until(done: Callable[[], bool], what: str, timeout: float = 10.0) -> float:
    start = time.perf_counter()
    while not done():
        assert time.perf_counter() - start < timeout, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.02)
    return time.perf_counter() - start


def set_version(path: Path, version: str) -> None:
    """The reader process's system of record, replaced whole (never read half written)."""
    path.with_suffix(".new").write_text(version)
    os.replace(path.with_suffix(".new"), path)


def start_reader(s: Sentinels, out: str, version: Path) -> subprocess.Popen[bytes]:
    """A reader process (``_sentinel_reader``) on the same Sentinel config."""
    env = {**os.environ, "SENTINEL_CONFIG": json.dumps(s.config_options())}
    command = [
        sys.executable,
        "-m",
        "tests.behaviour._sentinel_reader",
        "--out",
        out,
        "--source",
        str(version),
    ]
    return subprocess.Popen(command, env=env, cwd=ROOT)


def stop_reader(process: subprocess.Popen[bytes], out: str) -> list[list[Any]]:
    """Stop the reader process; its reads."""
    Path(out + ".stop").touch()
    try:
        process.wait(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=5)
    if not os.path.exists(out + ".jsonl"):
        return []
    with open(out + ".jsonl") as file:
        return [json.loads(line) for line in file if line.strip()]


def process_stale(reads: list[list[Any]], after: float) -> int:
    """The reader process's reads of an invalidated id started after ``after`` and served v1."""
    return sum(
        1
        for start, uid, value, *_ in reads
        if uid in INVALIDATED and start >= after and str(value)[:3] == "v1:"
    )


async def invalidate(cache: GCache, mode: str, uid: str) -> None:
    if mode == "async":
        await cache.ainvalidate("user_id", uid)
    else:
        await asyncio.to_thread(cache.invalidate, "user_id", uid)


@pytest.mark.slow
@MODES
async def test_killing_the_primary_mid_load_raises_nothing_and_caching_resumes_exactly(
    mode: str, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.INFO, logger="gcache")
    with sentinels() as s:
        source: dict[str, Any] = {"version": "v1", "calls": 0}
        probed: dict[str, Any] = {"version": "v1", "calls": 0}
        caches = {"invalidator": make(s), "other": make(s), "remote": make(s)}
        configs = {"invalidator": BOTH, "other": BOTH, "remote": REMOTE_ONLY}
        calls = {
            name: (cache, cached_read(cache, mode, source, tracked=True, config=configs[name]))
            for name, cache in caches.items()
        }
        probe = reader(caches["remote"], "async", probed, tracked=True, config=REMOTE_ONLY, use_case="Probe")
        load = Load(mode, calls)
        version, out = tmp_path / "version", str(tmp_path / "reader")
        set_version(version, "v1")
        process = start_reader(s, out, version)
        try:
            await until(lambda: os.path.exists(out + ".ready"), "the reader process subscribed", 30)
            for cache in caches.values():
                assert await cache.astart()
            assert await probe("probe") == "v1:probe"
            load.start()
            await asyncio.sleep(0.5)
            await asyncio.to_thread(s.synced)

            killed = time.perf_counter()
            s.kill_primary()
            with pytest.raises(RemoteError):  # no master yet: a management operation raises
                await invalidate(caches["invalidator"], mode, IDS[-1])
            promoted = await asyncio.to_thread(s.until_promoted)  # the loop keeps serving the load
            await until_resumed(probe, probed)
            resumed = time.perf_counter() - killed
            # Every bus subscribed again, on the promoted node: the 3 GCaches' and the process's.
            await until(
                lambda: s.replica_admin.pubsub_numsub(CHANNEL)[0][1] == 4, "the buses on the new master"
            )
            await asyncio.sleep(0.3)

            source["version"] = "v2"
            set_version(version, "v2")
            for uid in INVALIDATED:
                await invalidate(caches["invalidator"], mode, uid)
            returned, returned_wall = time.perf_counter(), time.time()
            await asyncio.sleep(1.0)
            after_resume = [r for r in load.records if r[2] >= killed + resumed]
            await load.stop()
            reads = stop_reader(process, out)
            errors = [r for r in reads if r[2] is None]
            stale_process = process_stale(reads, returned_wall)
            stale_process_late = process_stale(reads, returned_wall + 0.1)

            assert load.errors == []
            assert len(load.records) > 500
            stale = {name: load.stale(name, returned) for name in caches}
            # The other GCache's LOCAL tier hears of it over the bus, which delivers within ms.
            stale_late = load.stale("other", returned + 0.1)
            worst = max(record[3] for record in load.records)
            print(
                f"\n[sentinel kill mid-load, {mode}] promoted after {promoted:.2f} s, caching resumed "
                f"{resumed:.2f} s after the kill; worst call {worst * 1000:.0f} ms over "
                f"{len(load.records)} calls; stale reads after invalidate returned: {stale} "
                f"(other, from 100 ms on: {stale_late}); a reader process: {len(reads)} reads, "
                f"{len(errors)} raised, {stale_process} stale after invalidate returned "
                f"({stale_process_late} from 100 ms on)"
            )
            assert errors == []
            assert stale_process_late == 0
            assert sum(1 for r in reads if r[0] >= returned_wall + 0.1) > 0  # it read on after
            assert stale["invalidator"] == 0
            assert stale["remote"] == 0
            assert stale_late == 0
            assert resumed < 10.0
            assert worst < 3.0
            assert after_resume  # the load went on after caching resumed
            assert any("invalidation bus subscribed again" in r.getMessage() for r in caplog.records)
            # Caching, not only serving: every id is cached again, the invalidated ones at v2.
            calls_now = source["calls"]
            for cache, fn in calls.values():
                with cache.enable():
                    for uid in INVALIDATED:
                        assert await fn(uid) if mode == "async" else fn(uid) == f"v2:{uid}"
                    for uid in IDS:
                        await fn(uid) if mode == "async" else fn(uid)
            assert source["calls"] == calls_now
        finally:
            await load.stop()
            stop_reader(process, out)
            for cache in caches.values():
                await cache.aclose()


@pytest.mark.slow
@MODES
async def test_a_watermark_the_promoted_replica_never_received_fails_closed(mode: str) -> None:
    """The lost-watermark case under Sentinel: the replica held back before the invalidation,
    then the primary killed and the replica promoted by the sentinels. No read after
    ``invalidate`` returned is v1, during the outage or after, in either GCache."""
    fence, value = "{urn:gcache:user_id:1}#watermark", "{urn:gcache:user_id:1}#GetUser"
    with sentinels() as s:
        source: dict[str, Any] = {"version": "v1", "calls": 0}
        probed: dict[str, Any] = {"version": "v1", "calls": 0}
        invalidator, other = make(s), make(s)
        readers = [reader(c, mode, source, tracked=True, config=BOTH) for c in (invalidator, other)]
        probe = reader(other, "async", probed, tracked=True, config=REMOTE_ONLY, use_case="Probe")
        try:
            assert [await r("1") for r in readers] == ["v1:1", "v1:1"]  # in both LOCAL tiers
            assert await probe("probe") == "v1:probe"
            s.synced()
            before = s.replica_admin.hgetall(fence)
            # Redis 7 does not replicate SCRIPT LOAD: the promoted node will have no scripts.
            assert s.replica_admin.script_exists(*SHAS) == [False] * len(SHAS)

            s.hold_back()
            source["version"] = "v2"
            await invalidate(invalidator, mode, "1")  # returned: from here on v1 is stale
            assert int(s.primary_admin.hgetall(fence)[b"w"]) > int(before[b"w"])
            killed = time.perf_counter()
            s.kill_primary()
            assert s.replica_admin.hgetall(fence) == before  # the raised watermark is lost
            assert s.replica_admin.exists(value) == 1  # and v1's entry is there, stamped above it

            served: list[str] = []
            promotion = asyncio.ensure_future(asyncio.to_thread(s.until_promoted))
            while not promotion.done():  # through the outage
                served += [await r("1") for r in readers]
                await asyncio.sleep(0.01)
            promoted = promotion.result()
            await until_resumed(probe, probed)
            resumed = time.perf_counter() - killed
            served += [await r("1") for _ in range(30) for r in readers]
            stale = served.count("v1:1")
            print(
                f"\n[sentinel lost watermark, {mode}] promoted after {promoted:.2f} s, caching resumed "
                f"{resumed:.2f} s after the kill; stale reads: {stale} of {len(served)}"
            )
            assert stale == 0
            assert resumed < 10.0
            # The fence was made anew in the promoted node's history, and the entity cached again.
            assert s.replica_admin.script_exists(*SHAS) == [True] * len(SHAS)  # loaded on NOSCRIPT
            made = s.replica_admin.hgetall(fence)
            assert made[b"n"] != before[b"n"]
            assert made[b"r"] == str(s.replica_admin.info("replication")["master_replid"]).encode()
            calls = source["calls"]
            assert [await r("1") for r in readers] == ["v2:1", "v2:1"]
            assert source["calls"] == calls
        finally:
            for cache in (invalidator, other):
                await cache.aclose()


@pytest.mark.slow
@MODES
async def test_the_bus_and_the_pools_follow_a_master_sentinel_demotes_alive(mode: str) -> None:
    """A manual failover (SENTINEL FAILOVER): the old master answers as one for seconds more
    (Sentinel reconfigures it only after 8 s). Within about a second the buses subscribe on the
    new master and the pools leave the old one: an invalidation then raises the new master's
    watermark and reaches the other GCache's LOCAL tier over the new master's bus."""
    fence = "{urn:gcache:user_id:1}#watermark"
    with sentinels() as s:
        source: dict[str, Any] = {"version": "v1", "calls": 0}
        invalidator, other = make(s), make(s)
        read_other = reader(other, mode, source, tracked=True, config=BOTH)
        read_invalidator = reader(invalidator, mode, source, tracked=True, config=BOTH, use_case="Warm")
        try:
            assert await invalidator.astart()
            assert await other.astart()
            assert await read_other("1") == "v1:1"
            await read_invalidator("1")  # its pools open, on the old master
            await invalidate(invalidator, mode, "1")  # its ADMIN connection too
            assert await read_other("1") == "v1:1"
            assert s.primary_admin.pubsub_numsub(CHANNEL)[0][1] == 2
            await asyncio.to_thread(s.synced)

            switched = time.perf_counter()
            assert s.sentinel_admins[0].sentinel_failover(SERVICE)
            await asyncio.to_thread(s.until_promoted)
            moved = await until(
                lambda: (
                    s.replica_admin.pubsub_numsub(CHANNEL)[0][1] == 2
                    and s.primary_admin.pubsub_numsub(CHANNEL)[0][1] == 0
                ),
                "both buses on the new master, none left on the old one",
            )
            assert s.primary_admin.info("replication")["role"] == "master"  # the old one, still
            await until(lambda: other.bus_subscribed, "the other bus up")
            # Refilled after the promotion (the fence made anew, its failover buffer passed), then
            # cached again.
            await until_resumed(read_other, source, "1")

            source["version"] = "v2"
            before = s.replica_admin.hgetall(fence)
            await invalidate(invalidator, mode, "1")
            returned = time.perf_counter()
            after = s.replica_admin.hgetall(fence)
            assert int(after[b"w"]) > int(before.get(b"w", 0))  # on the new master
            served: list[str] = []
            while not served or served[-1] != "v2:1":
                assert time.perf_counter() - returned < 1.0, "the other GCache never heard the invalidation"
                served.append(await read_other("1"))
            heard = time.perf_counter() - returned
            print(
                f"\n[sentinel manual failover, {mode}] buses on the new master {moved:.2f} s after it was "
                f"named, {time.perf_counter() - switched:.2f} s after SENTINEL FAILOVER; the other GCache "
                f"served v2 {heard * 1000:.1f} ms after invalidate returned"
            )
        finally:
            for cache in (invalidator, other):
                await cache.aclose()


@pytest.mark.slow
@MODES
async def test_a_switch_master_message_moves_the_bus_and_the_pools_without_waiting_for_a_check(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bus listens to the sentinels' ``+switch-master``: with the once-a-second check made
    hourly, a manual failover still moves both buses off the live old master, and the
    invalidating GCache's pools with them (its invalidation raises the new master's watermark)."""
    monkeypatch.setattr(MasterClient, "check_every", 3600.0)
    fence = "{urn:gcache:user_id:1}#watermark"
    with sentinels() as s:
        source: dict[str, Any] = {"version": "v1", "calls": 0}
        invalidator, other = make(s), make(s)
        read_other = reader(other, mode, source, tracked=True, config=BOTH)
        try:
            assert await invalidator.astart()
            assert await other.astart()
            assert await read_other("1") == "v1:1"
            await invalidate(invalidator, mode, "1")  # its ADMIN connection, on the old master
            await until(lambda: s.primary_admin.pubsub_numsub(CHANNEL)[0][1] == 2, "both buses subscribed")
            await asyncio.to_thread(s.synced)
            switched = time.perf_counter()
            assert s.sentinel_admins[0].sentinel_failover(SERVICE)
            await asyncio.to_thread(s.until_promoted)
            promoted = time.perf_counter() - switched
            moved = await until(
                lambda: (
                    s.replica_admin.pubsub_numsub(CHANNEL)[0][1] == 2
                    and s.primary_admin.pubsub_numsub(CHANNEL)[0][1] == 0
                ),
                "both buses on the new master, none left on the old one",
                timeout=8.0,  # the old master is reconfigured (its subscribers dropped) after 8 s
            )
            assert s.primary_admin.info("replication")["role"] == "master"  # the old one, still live
            before = s.replica_admin.hgetall(fence)
            await invalidate(invalidator, mode, "1")
            assert int(s.replica_admin.hgetall(fence)[b"w"]) > int(before.get(b"w", 0))  # the new master's
            print(
                f"\n[sentinel switch-master, {mode}] promoted {promoted:.2f} s after SENTINEL FAILOVER; "
                f"buses on the new master {moved:.2f} s after that, with no check due"
            )
        finally:
            for cache in (invalidator, other):
                await cache.aclose()
