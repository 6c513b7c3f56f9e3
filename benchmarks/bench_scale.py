"""Sizing: what a fleet of processes costs one Redis, from per-call costs measured on a real server.

**1. Per call, measured.** For each kind of call that reaches Redis (a REMOTE hit, a miss and its
write-back, untracked and tracked, and an invalidation), ``CALLS`` sync calls run against the
server, by ``THREADS`` threads at once (``ROUNDS`` rounds of every kind in turn, the median
kept), while the harness reads Redis's own counters before and
after, through its admin login: the commands executed (``INFO commandstats``, scripts' inner
commands included) and bytes received and sent (``total_net_input_bytes`` / ``output``), less
what an empty interval costs (the harness's own INFO and its reply), and the main thread's CPU
time (``used_cpu_user_main_thread`` + ``sys``), less its idle CPU. Redis runs its commands
and, without ``io-threads``, its network I/O on that one thread: the main thread's CPU is what
runs out. An invalidation is measured
with the measuring GCache's own bus subscribed, then with ``SUBSCRIBERS`` more (raw pub/sub
connections on gcache's channel, as each process's bus is one), which gives the cost of each
delivery apart from the invalidation's own.

**2. The model.** A fleet of N processes making M calls/s each, a share ``local_hit`` served by
LOCAL (0 with LOCAL off), a share ``remote_hit`` of the rest served by REMOTE, the rest missing
and written back; invalidations at I/s, each delivered to every process's bus. Each per-second
figure is the sum of rate x measured cost. One Redis is enough while its main thread stays under
``HEADROOM`` of a core (and its network under the NIC's bandwidth, which the figures show).

**3. The check.** ``WORKERS`` processes, each paced at ``RATE`` calls/s over ``KEYS`` keys for
``SECONDS`` s (LOCAL+REMOTE, then REMOTE only, tracked), while this process invalidates at
``INVALIDATE_RATE``/s. The model predicts the server's commands, bytes and CPU from the calls the
workers counted by kind (their metrics) and the invalidations; the measured counters are set
beside it.

Measured on loopback, on this machine: a Redis with many more clients serves more commands per
wake-up of its event loop, so the CPU per call at scale is lower than here; the model is on the
safe side. In a cluster the keys spread over the primaries by slot, so each node carries its share
of the calls, but a classic PUBLISH reaches every node: the bus's cost does not shrink with nodes.
"""

from __future__ import annotations

import contextvars
import itertools
import math
import multiprocessing
import os
import queue
import statistics
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import redis

from benchmarks._harness import make_gcache, user
from gcache import CacheLayer, GCache, GCacheKeyConfig
from gcache.urns import bus_channel

__all__ = ["Cost", "Load", "parameters", "project", "run", "table"]

CALLS = 3_000
ROUNDS = 5
THREADS = 8
SUBSCRIBERS = 16
HEADROOM = 0.7  # of one core: past it, latency grows with the queue
WORKERS, RATE, KEYS, SECONDS, INVALIDATE_RATE = 3, 200, 300, 4.0, 20.0
LOCAL_TTL, REMOTE_TTL = 60, 600
PREFIX = "bench-scale"
KEY_TYPE = "user_id"

REMOTE_HIT, REMOTE_HIT_TRACKED = "REMOTE hit", "REMOTE hit, tracked"
MISS, MISS_TRACKED = "miss + write-back", "miss + write-back, tracked"
INVALIDATE, DELIVERY = "invalidate (no subscriber)", "bus delivery (each subscriber)"
IDLE = "idle, per second (serverCron)"
KINDS = (REMOTE_HIT, REMOTE_HIT_TRACKED, MISS, MISS_TRACKED, INVALIDATE, DELIVERY)


@dataclass(frozen=True)
class Cost:
    """What one call costs the Redis server."""

    commands: float
    bytes_in: float
    bytes_out: float
    cpu_us: float  # the main thread's CPU time

    def __add__(self, other: Cost) -> Cost:
        return Cost(*(a + b for a, b in zip(self.astuple(), other.astuple(), strict=True)))

    def __mul__(self, k: float) -> Cost:
        return Cost(*(a * k for a in self.astuple()))

    def __sub__(self, other: Cost) -> Cost:
        return self + other * -1

    def astuple(self) -> tuple[float, float, float, float]:
        return (self.commands, self.bytes_in, self.bytes_out, self.cpu_us)


ZERO = Cost(0.0, 0.0, 0.0, 0.0)


@dataclass(frozen=True)
class Load:
    """What a fleet costs one Redis per second."""

    calls: float  # calls reaching Redis (lookups, write-backs, invalidations)
    commands: float
    mb_in: float
    mb_out: float
    core: float  # share of one core the main thread is busy
    deliveries: float  # bus messages delivered


def _counters(admin: redis.Redis) -> Cost:
    info: dict[str, Any] = admin.execute_command("INFO", "stats", "cpu", "commandstats")  # type: ignore[no-untyped-call]
    commands = sum(v["calls"] for k, v in info.items() if k.startswith("cmdstat_"))
    cpu = info["used_cpu_user_main_thread"] + info["used_cpu_sys_main_thread"]
    return Cost(commands, info["total_net_input_bytes"], info["total_net_output_bytes"], cpu * 1e6)


def _subscribers(admin: redis.Redis, channel: str) -> int:
    return int(admin.pubsub_numsub(channel)[0][1])


def idle_cpu_us(admin: redis.Redis, seconds: float = 2.0) -> float:
    """The main thread's CPU per second with no client calling (its timers: ``serverCron``)."""
    before = _counters(admin)
    time.sleep(seconds)
    return (_counters(admin) - before).cpu_us / seconds


def _measure(admin: redis.Redis, idle_us: float, call: Callable[[int], object]) -> Cost:
    """Per call of ``call(i)``, made CALLS times by THREADS threads at once (the server then sees
    several clients, as with a fleet), less an empty interval's bytes and the idle CPU."""
    before = _counters(admin)
    empty = _counters(admin) - before
    start = _counters(admin)
    began = time.monotonic()
    _threads(call, CALLS)
    spent = _counters(admin) - start - empty
    cpu = spent.cpu_us - idle_us * (time.monotonic() - began)
    return Cost(
        spent.commands / CALLS, spent.bytes_in / CALLS, spent.bytes_out / CALLS, max(cpu, 0.0) / CALLS
    )


def _threads(call: Callable[[int], object], n: int) -> None:
    """``call(i)`` for i in range(n), by THREADS threads, each in a copy of this context (enable()'s)."""
    with ThreadPoolExecutor(THREADS) as pool:
        done = [
            pool.submit(contextvars.copy_context().run, lambda t=t: [call(i) for i in range(t, n, THREADS)])
            for t in range(THREADS)
        ]
        for future in done:
            future.result()


def _config(local: bool) -> GCacheKeyConfig:
    layers = [CacheLayer.LOCAL, CacheLayer.REMOTE] if local else [CacheLayer.REMOTE]
    ttls: dict[CacheLayer, float] = {CacheLayer.LOCAL: LOCAL_TTL, CacheLayer.REMOTE: REMOTE_TTL}
    return GCacheKeyConfig(
        ttl_sec={layer: ttls[layer] for layer in layers}, ramp=dict.fromkeys(layers, 100.0)
    )


def _cached(cache: GCache, use_case: str, tracked: bool, local: bool) -> Callable[[str], Any]:
    @cache.cached(
        key_type=KEY_TYPE, id_arg="user_id", use_case=use_case, track_for_invalidation=tracked,
        default_config=_config(local),
    )  # fmt: skip
    def get_user(user_id: str) -> dict[str, Any]:
        return user(user_id)

    return get_user


def _median(costs: list[Cost]) -> Cost:
    """Field by field: the server's CPU per call moves with how many calls each wake-up of its
    event loop finds, which the machine's other load moves too."""
    return Cost(*(statistics.median(field) for field in zip(*(c.astuple() for c in costs), strict=True)))


def per_call(url: str, admin_url: str) -> dict[str, Cost]:
    """Step 1: the server's cost of each kind of call, the median of ROUNDS rounds."""
    admin = redis.Redis.from_url(admin_url)
    idle_us = idle_cpu_us(admin)
    cache = make_gcache(url, f"{PREFIX}-{os.urandom(3).hex()}")
    fresh = itertools.count()
    calls: dict[str, Callable[[int], None]] = {}
    try:
        cache.start()  # the bus subscribed (and its clock measured) before anything is measured
        with cache.enable():
            for tracked, hit, miss in ((False, REMOTE_HIT, MISS), (True, REMOTE_HIT_TRACKED, MISS_TRACKED)):
                get_user = _cached(cache, f"Scale{'Tracked' if tracked else ''}", tracked, local=False)

                def hit_one(i: int, f: Callable[[str], Any] = get_user) -> None:
                    f(str(i % KEYS))

                def miss_one(i: int, f: Callable[[str], Any] = get_user) -> None:
                    f(f"new-{next(fresh)}")

                calls[hit], calls[miss] = hit_one, miss_one

            def invalidate(i: int) -> None:
                cache.invalidate(KEY_TYPE, f"other-{i % KEYS}")  # not the entities the hits read

            calls[INVALIDATE] = invalidate
            for call in calls.values():  # the entries, and every thread's connections, made first
                _threads(call, KEYS)
            rounds: dict[str, list[Cost]] = {kind: [] for kind in calls}
            for _ in range(ROUNDS):
                for kind, call in calls.items():
                    rounds[kind].append(_measure(admin, idle_us, call))
            costs = {kind: _median(measured) for kind, measured in rounds.items()}

            channel = bus_channel(cache.config.urn_prefix or "")
            own = _subscribers(admin, channel)  # this GCache's bus
            listeners = [admin.pubsub() for _ in range(SUBSCRIBERS)]
            try:
                for listener in listeners:
                    listener.subscribe(channel)
                    listener.get_message(timeout=5)  # the confirmation
                heard = _median([_measure(admin, idle_us, invalidate) for _ in range(ROUNDS)])
            finally:
                for listener in listeners:
                    listener.close()
            each = (heard - costs[INVALIDATE]) * (1 / SUBSCRIBERS)
            costs[DELIVERY] = Cost(each.commands, each.bytes_in, each.bytes_out, max(each.cpu_us, 0.0))
            costs[INVALIDATE] = costs[INVALIDATE] - costs[DELIVERY] * own
    finally:
        cache.close()
        admin.close()
    costs[IDLE] = Cost(0.0, 0.0, 0.0, idle_us)
    return costs


def project(
    costs: Mapping[str, Cost],
    processes: float,
    calls_per_sec: float,
    *,
    local_hit: float,
    remote_hit: float = 0.95,
    tracked: bool = True,
    invalidations_per_sec: float = 0.0,
    primaries: int = 1,
) -> Load:
    """Step 2: what ``processes`` x ``calls_per_sec`` cost one Redis per second, or each primary
    of a cluster of ``primaries``: the calls and invalidations spread over them by slot, and so do
    the bus subscriptions (a process's bus subscribes through one node), but a classic PUBLISH
    reaches every node, counted as one more delivery on each."""
    lookups = processes * calls_per_sec * (1 - local_hit) / primaries
    hits, misses = lookups * remote_hit, lookups * (1 - remote_hit)
    hit, miss = (REMOTE_HIT_TRACKED, MISS_TRACKED) if tracked else (REMOTE_HIT, MISS)
    own_invalidations = invalidations_per_sec / primaries  # the ones whose fences this node holds
    # every message reaches every node; each node delivers it to the processes subscribed to it
    deliveries = invalidations_per_sec * processes / primaries
    forwarded = invalidations_per_sec - own_invalidations
    total = (
        costs[hit] * hits
        + costs[miss] * misses
        + costs[INVALIDATE] * own_invalidations
        + costs[DELIVERY] * (deliveries + forwarded)
        + costs[IDLE]
    )
    return Load(
        calls=lookups + own_invalidations,
        commands=total.commands,
        mb_in=total.bytes_in / 1e6,
        mb_out=total.bytes_out / 1e6,
        core=total.cpu_us / 1e6,
        deliveries=deliveries,
    )


def enough_up_to(costs: Mapping[str, Cost], *, local_hit: float, tracked: bool = True) -> float:
    """The fleet's calls per second at which one Redis's main thread reaches HEADROOM."""
    idle = project(costs, 0, 0, local_hit=local_hit, tracked=tracked).core
    per_call = project(costs, 1, 1, local_hit=local_hit, tracked=tracked).core - idle
    return (HEADROOM - idle) / per_call if per_call > 0 else math.inf


# -- step 3: a fleet of real processes against the model -----------------------------------------


def _worker(url: str, prefix: str, local: bool, start_at: float, results: Any) -> None:
    cache = make_gcache(url, prefix)
    registry = cache.config.metrics_registry
    assert registry is not None
    get_user = _cached(cache, "ScaleFleet", tracked=True, local=local)
    with cache.enable():
        if local:
            cache.start()  # the bus subscribed before the first call: tracked LOCAL is trusted
        time.sleep(max(0.0, start_at - time.time()))
        began = time.monotonic()
        for n in itertools.count():
            due = began + n / RATE
            now = time.monotonic()
            if now - began >= SECONDS:
                break
            if due > now:
                time.sleep(due - now)
            get_user(str((n * 7919 + os.getpid()) % KEYS))
    counts: dict[str, float] = {}
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name in ("gcache_request_counter_total", "gcache_miss_counter_total"):
                key = f"{sample.name}:{sample.labels['layer']}"
                counts[key] = counts.get(key, 0.0) + sample.value
    cache.close()
    results.put(counts)


def fleet(url: str, admin_url: str, costs: Mapping[str, Cost], local: bool) -> dict[str, Any]:
    """Step 3: WORKERS real processes, the server's counters against the model's prediction."""
    admin = redis.Redis.from_url(admin_url)
    prefix = f"{PREFIX}-fleet-{os.urandom(3).hex()}"
    writer = make_gcache(url, prefix)
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    start_at = time.time() + 3.0  # the workers import and connect first
    procs = [
        context.Process(target=_worker, args=(url, prefix, local, start_at, results)) for _ in range(WORKERS)
    ]
    for proc in procs:
        proc.start()
    time.sleep(max(0.0, start_at - time.time() - 0.2))
    subscribers = _subscribers(admin, bus_channel(prefix))
    before = _counters(admin)
    measured_from = time.monotonic()
    invalidations = 0
    began = time.monotonic()
    while time.monotonic() - began < SECONDS:
        writer.invalidate(KEY_TYPE, str(invalidations % KEYS))
        invalidations += 1
        time.sleep(max(0.0, began + invalidations / INVALIDATE_RATE - time.monotonic()))
    try:
        counts = [results.get(timeout=SECONDS + 60) for _ in procs]
    except queue.Empty:
        raise RuntimeError(
            f"a fleet worker gave no counts (exit codes {[p.exitcode for p in procs]})"
        ) from None
    for proc in procs:
        proc.join(timeout=30)
    spent = _counters(admin) - before
    seconds = time.monotonic() - measured_from
    writer.close()
    admin.close()
    remote = sum(c.get("gcache_request_counter_total:REMOTE", 0.0) for c in counts)
    missed = sum(c.get("gcache_miss_counter_total:REMOTE", 0.0) for c in counts)
    local_lookups = sum(c.get("gcache_request_counter_total:LOCAL", 0.0) for c in counts)
    local_missed = sum(c.get("gcache_miss_counter_total:LOCAL", 0.0) for c in counts)
    predicted = (
        costs[REMOTE_HIT_TRACKED] * (remote - missed)
        + costs[MISS_TRACKED] * missed
        + costs[INVALIDATE] * invalidations
        + costs[DELIVERY] * (invalidations * subscribers)
        + costs[IDLE] * seconds
    )
    return {
        "local": local,
        "calls": local_lookups if local else remote,
        "local_hits": local_lookups - local_missed,
        "remote_lookups": remote,
        "remote_misses": missed,
        "invalidations": invalidations,
        "subscribers": subscribers,
        "measured": spent,
        "predicted": predicted,
    }


def run(url: str, admin_url: str) -> dict[str, Any]:
    costs = per_call(url, admin_url)
    return {"costs": costs, "fleet": [fleet(url, admin_url, costs, local) for local in (True, False)]}


# -- the report ------------------------------------------------------------------------------------

SIZES = ((10, 100), (100, 100), (100, 1_000), (1_000, 1_000))
LOCAL_SHARES = ((0.0, "off"), (0.9, "on, 90 % hits"))
CLUSTERS = (3, 6)  # primaries: the last size again, per node of a cluster


def parameters() -> str:
    return (
        f"Per call: the median of {ROUNDS} rounds of {CALLS} sync calls of each kind by {THREADS} "
        f"threads (REMOTE only, a 3-field dict value), an invalidation with 1 and {SUBSCRIBERS + 1} "
        "bus subscribers. Fleet check: {WORKERS} processes x "
        f"{RATE} calls/s x {SECONDS:.0f} s over {KEYS} keys (tracked), {INVALIDATE_RATE:.0f} "
        f"invalidations/s. Model: REMOTE hit 95 % of lookups, tracked, 10 invalidations/s; one "
        f"Redis is enough while its main thread stays under {HEADROOM:.0%} of a core."
    )


def table(outcome: Mapping[str, Any]) -> str:
    costs: Mapping[str, Cost] = outcome["costs"]
    lines = [
        "Per call, what the Redis server spends:",
        "",
        "| call | commands | bytes in | bytes out | main-thread CPU µs |",
        "|---|---:|---:|---:|---:|",
    ]
    for kind in KINDS:
        c = costs[kind]
        lines.append(f"| {kind} | {c.commands:.2f} | {c.bytes_in:.0f} | {c.bytes_out:.0f} | {c.cpu_us:.1f} |")
    lines.append(f"| {IDLE} | | | | {costs[IDLE].cpu_us:.0f} |")
    lines += [
        "",
        "The model, per second on one Redis or each primary of a cluster (tracked use cases, 95 % "
        "REMOTE hits, 10 invalidations/s):",
        "",
        "| processes x calls/s | LOCAL | calls reaching Redis | commands | MB in | MB out | main thread "
        "| bus deliveries |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    rows = [(processes, rate, share, name, 1) for processes, rate in SIZES for share, name in LOCAL_SHARES]
    rows += [(1_000, 1_000, 0.9, "on, 90 % hits", primaries) for primaries in CLUSTERS]
    for processes, rate, share, name, primaries in rows:
        load = project(costs, processes, rate, local_hit=share, invalidations_per_sec=10, primaries=primaries)
        fleet = f"{processes:,} x {rate:,}" + (f", each of {primaries} primaries" if primaries > 1 else "")
        lines.append(
            f"| {fleet} | {name} | {load.calls:,.0f} | {load.commands:,.0f} | "
            f"{load.mb_in:.1f} | {load.mb_out:.1f} | {load.core:.0%} of a core | {load.deliveries:,.0f} |"
        )
    lines += ["", f"One Redis is enough (main thread under {HEADROOM:.0%} of a core) up to, fleet-wide:", ""]
    for tracked in (False, True):
        for share, name in LOCAL_SHARES:
            up_to = enough_up_to(costs, local_hit=share, tracked=tracked)
            lines.append(f"- {'tracked' if tracked else 'untracked'}, LOCAL {name}: {up_to:,.0f} calls/s")
    lines += [
        "",
        "The model against a fleet of real processes (the server's counters over the run). Commands and "
        "bytes are the model's to a few per cent; the CPU of a lightly loaded server is higher per "
        "call than the model's (each call wakes its event loop alone), and lower near saturation "
        "(many calls per wake-up), which the per-call figures, made by concurrent callers, stand for:",
        "",
        "| LOCAL | calls | LOCAL hits | REMOTE lookups | misses | invalidations | bus subscribers | "
        "commands measured / model | bytes out measured / model | CPU µs measured / model |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for f in outcome["fleet"]:
        m, p = f["measured"], f["predicted"]
        lines.append(
            f"| {'on' if f['local'] else 'off'} | {f['calls']:,.0f} | {f['local_hits']:,.0f} | "
            f"{f['remote_lookups']:,.0f} | {f['remote_misses']:,.0f} | {f['invalidations']} | "
            f"{f['subscribers']} | {m.commands:,.0f} / {p.commands:,.0f} "
            f"({_ratio(m.commands, p.commands)}) | "
            f"{m.bytes_out:,.0f} / {p.bytes_out:,.0f} ({_ratio(m.bytes_out, p.bytes_out)}) | "
            f"{m.cpu_us:,.0f} / {p.cpu_us:,.0f} ({_ratio(m.cpu_us, p.cpu_us)}) |"
        )
    return "\n".join(lines)


def _ratio(measured: float, predicted: float) -> str:
    return f"{measured / predicted:.2f}x" if predicted else "n/a"
