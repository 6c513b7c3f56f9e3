"""``python -m gcache demo``: gcache in front of a slow data source, explained by its own numbers.

A newcomer should be able to read this file top to bottom: a simulated database (every read
sleeps), three cached functions with different layer set-ups, a config provider, traffic with a
few hot users, an update followed by ``ainvalidate``, and a table read back from the Prometheus
metrics the library publishes. ``--serve`` then keeps steady mixed traffic going so ``/metrics``
has something real to show (Prometheus, Grafana).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import redis.asyncio
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from gcache import (
    CacheLayer,
    GCache,
    GCacheConfig,
    GCacheKey,
    GCacheKeyConfig,
    RedisConfig,
    start_metrics_server,
)
from gcache._embedded_redis import EmbeddedRedis

__all__ = ["DemoOptions", "run"]

URN_PREFIX = "urn:gcache-demo"  # its own prefix, so flushing the demo's keys touches nothing else
LOCAL_MAX_ENTRIES = 8  # small on purpose: the long tail of users is served by Redis
USER_COUNT = 40
CURRENCIES = ("EUR", "GBP", "JPY", "CHF")
NAMES = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Ken", "Margaret", "Donald", "Frances", "Niklaus")

LOCAL, REMOTE = CacheLayer.LOCAL, CacheLayer.REMOTE


def say(text: str = "") -> None:
    """Print and flush at once: the demo is often read through a pipe (tests, ``tee``)."""
    print(text, flush=True)


@dataclass
class DemoOptions:
    """What the command line can change; the defaults give a run of a few seconds."""

    calls: int = 300
    serve: bool = False
    duration: float | None = None  # with serve: stop after this many seconds
    port: int = 0  # 0: any free port
    metrics_host: str = "127.0.0.1"
    redis_url: str | None = None  # None: REDIS_URL from the environment, else an embedded server
    concurrency: int = 10
    latency_ms: float = 20.0
    seed: int = 7


# -- the slow data source ----------------------------------------------------------------------


@dataclass(frozen=True)
class User:
    """Frozen: LOCAL hands every caller the same object, so cached values must not be mutated."""

    id: int
    name: str
    plan: str


@dataclass(frozen=True)
class Order:
    id: int
    user_id: int
    status: str
    total: float


class SourceError(Exception):
    """A failed read of the simulated database (only in ``--serve``, now and then)."""


class SlowSource:
    """Stands in for a database or a remote service: every read sleeps, and is counted."""

    def __init__(self, latency_sec: float, rng: random.Random, failure_rate: float = 0.0) -> None:
        self.latency_sec = latency_sec
        self.failure_rate = failure_rate
        self.rate_failure_rate = 0.0  # the exchange-rate API fails more often than the database
        self.reads: Counter[str] = Counter()
        self._rng = rng
        self._lock = threading.Lock()  # sync reads run in worker threads
        self._plans: dict[int, str] = {}

    def _read(self, what: str) -> None:
        rate = self.rate_failure_rate if what == "rate" else self.failure_rate
        with self._lock:
            self.reads[what] += 1
            failed = rate > 0 and self._rng.random() < rate
        if failed:
            raise SourceError(f"simulated database timeout reading {what}")

    def _user(self, user_id: int) -> User:
        default = "pro" if user_id % 3 == 0 else "free"
        name = NAMES[(user_id - 1) % len(NAMES)]
        return User(user_id, name, self._plans.get(user_id, default))

    async def aread_user(self, user_id: int) -> User:
        await asyncio.sleep(self.latency_sec)
        self._read("user")
        return self._user(user_id)

    def read_orders(self, user_id: int, status: str) -> tuple[Order, ...]:
        time.sleep(self.latency_sec)
        self._read("orders")
        return tuple(
            Order(user_id * 100 + n, user_id, status, round(9.99 * (n + user_id % 7), 2))
            for n in range(1 + user_id % 3)
        )

    async def aread_rate(self, currency: str) -> float:
        await asyncio.sleep(self.latency_sec)
        self._read("rate")
        return {"EUR": 1.0, "GBP": 0.86, "JPY": 162.4, "CHF": 0.95}.get(currency, 1.0)

    def set_plan(self, user_id: int, plan: str) -> None:
        """A write in the application: the next read sees it, a cache does not until invalidated."""
        self._plans[user_id] = plan

    def plan_of(self, user_id: int) -> str:
        return self._user(user_id).plan


# -- configuration: what each use case caches, and where ---------------------------------------

USE_CASE_CONFIGS: dict[str, GCacheKeyConfig] = {
    # Hot, shared data: a short-lived copy in each process, a longer one in Redis.
    "GetUser": GCacheKeyConfig(ttl_sec={LOCAL: 30, REMOTE: 300}, ramp={LOCAL: 100, REMOTE: 100}),
    # Bigger values, read from a sync code path: Redis only, so every process sees one copy.
    "GetOrders": GCacheKeyConfig(ttl_sec={REMOTE: 120}, ramp={REMOTE: 100}),
    # Reference data from an API that fails now and then: each process keeps its own copy, no
    # Redis at all, fresh for 2 s; when the API fails, a rate up to 10 minutes old (fail-safe)
    # beats an error.
    "GetExchangeRate": GCacheKeyConfig(ttl_sec={LOCAL: 2}, ramp={LOCAL: 100}, fail_safe_sec=600),
}

USE_CASE_DESCRIPTIONS: dict[str, str] = {
    "GetUser": "async get_user(user_id)",
    "GetOrders": "sync  get_orders(user_id, status)",
    "GetExchangeRate": "async get_exchange_rate(currency)",
}


def config_provider(key: GCacheKey) -> GCacheKeyConfig | None:
    """Called on every cached call, so TTLs and ramps can change at run time.

    A real service would read a config service or a JSON file (``GCacheKeyConfig.load_configs``);
    returning None falls back to the decorator's ``default_config``.
    """
    return USE_CASE_CONFIGS.get(key.use_case)


class Service:
    """The application code: the source's reads, wrapped by ``gcache.cached``."""

    def __init__(self, cache: GCache, source: SlowSource) -> None:
        @cache.cached(key_type="user_id", id_arg="user_id", use_case="GetUser", track_for_invalidation=True)
        async def get_user(user_id: int) -> User:
            return await source.aread_user(user_id)

        # ``status`` is another argument: it becomes part of the key (?status=open).
        @cache.cached(key_type="user_id", id_arg="user_id", use_case="GetOrders", track_for_invalidation=True)
        def get_orders(user_id: int, status: str) -> tuple[Order, ...]:
            return source.read_orders(user_id, status)

        @cache.cached(key_type="currency", id_arg="currency", use_case="GetExchangeRate")
        async def get_exchange_rate(currency: str) -> float:
            return await source.aread_rate(currency)

        self.get_user = get_user
        self.get_orders = get_orders
        self.get_exchange_rate = get_exchange_rate


# -- traffic -----------------------------------------------------------------------------------


class Traffic:
    """Calls the service like request handlers would: a few hot users get most of the calls."""

    def __init__(self, cache: GCache, service: Service, source: SlowSource, rng: random.Random) -> None:
        self.cache = cache
        self.service = service
        self.source = source
        self.rng = rng
        self.calls: Counter[str] = Counter()  # per use case, made inside gcache.enable()
        self.uncached = 0  # calls made outside gcache.enable(): the function runs, nothing is cached
        self.source_errors = 0
        self.invalidations = 0
        self.new_user_share = 0.0  # share of calls on users never seen before (serve mode)
        self.uncached_share = 0.0  # share of calls made outside gcache.enable() (serve mode)
        self._ids = list(range(1, USER_COUNT + 1))
        self._weights = [1 / i**1.1 for i in self._ids]  # Zipf-like: user 1 is the hottest

    def pick_user(self) -> int:
        if self.new_user_share and self.rng.random() < self.new_user_share:
            return self.rng.randint(USER_COUNT + 1, 1_000_000)
        return self.rng.choices(self._ids, self._weights)[0]

    def _count(self, use_case: str) -> None:
        if self.cache.is_enabled:
            self.calls[use_case] += 1
        else:
            self.uncached += 1

    async def user(self, user_id: int) -> User:
        self._count("GetUser")
        return await self.service.get_user(user_id)

    async def orders(self, user_id: int, status: str) -> tuple[Order, ...]:
        self._count("GetOrders")
        # A sync function called from async code: in a worker thread, so the event loop is not
        # blocked. to_thread copies the context, so gcache.enable() applies there too.
        return await asyncio.to_thread(self.service.get_orders, user_id, status)

    async def rate(self, currency: str) -> float:
        self._count("GetExchangeRate")
        return await self.service.get_exchange_rate(currency)

    async def one_call(self) -> None:
        """One request: 60 % user profile, 25 % order list, 15 % exchange rate."""
        kind = self.rng.random()
        try:
            with self.cache.enable(self.rng.random() >= self.uncached_share):
                if kind < 0.60:
                    await self.user(self.pick_user())
                elif kind < 0.85:
                    await self.orders(self.pick_user(), self.rng.choice(("open", "shipped")))
                else:
                    await self.rate(self.rng.choice(CURRENCIES))
        except SourceError:
            self.source_errors += 1  # the cache passes the function's exception on, caches nothing

    async def burst(self, user_id: int, size: int) -> None:
        """``size`` concurrent calls for one user: a failing read fails them all (they share it)."""

        async def one() -> None:
            try:
                await self.user(user_id)
            except SourceError:
                self.source_errors += 1

        await asyncio.gather(*(one() for _ in range(size)))

    async def batch(self, size: int) -> None:
        """``size`` calls at once, as concurrent requests would make them."""
        await asyncio.gather(*(self.one_call() for _ in range(size)))

    async def update_plan(self, user_id: int, plan: str) -> None:
        """The write path: change the source, then invalidate every cached entry of the user."""
        self.source.set_plan(user_id, plan)
        await self.cache.ainvalidate("user_id", user_id)
        self.invalidations += 1


# -- reading the library's metrics back --------------------------------------------------------


@dataclass
class Row:
    """One use case's line of the results table, computed from the Prometheus registry."""

    use_case: str
    calls: int
    local_hits: int | None  # None: the layer took no part
    remote_hits: int | None
    shared: int  # calls that took a concurrent call's result or tracked read (single flight)
    function_calls: int
    local_hit_sec: float | None
    remote_hit_sec: float | None
    miss_sec: float | None
    function_sec_total: float


class Samples:
    """A snapshot of the registry, summed over the labels a query leaves open."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._samples = [(s.name, s.labels, s.value) for metric in registry.collect() for s in metric.samples]

    def sum(self, name: str, labels: Mapping[str, str]) -> float:
        return sum(
            value
            for sample_name, sample_labels, value in self._samples
            if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items())
        )

    def mean(self, name: str, labels: Mapping[str, str]) -> float | None:
        count = self.sum(f"{name}_count", labels)
        return self.sum(f"{name}_sum", labels) / count if count else None


def read_rows(registry: CollectorRegistry, calls: Counter[str], prefix: str = "") -> list[Row]:
    """Hits per layer, function calls and latency per path, as the library's metrics report them.

    hits = lookups (gcache_request_counter) - misses (gcache_miss_counter). Latency per path adds up the mean
    lookup times (gcache_get_timer) and the mean time in the function (gcache_fallback_timer).
    """
    s = Samples(registry)
    m = prefix + "gcache_"
    rows = []
    for use_case in USE_CASE_CONFIGS:
        hits: dict[str, int | None] = {}
        lookup: dict[str, float] = {}
        for layer in ("local", "remote"):
            where = {"use_case": use_case, "layer": layer}
            requests = s.sum(f"{m}request_counter_total", where)
            misses = s.sum(f"{m}miss_counter_total", where)
            hits[layer] = int(requests - misses) if requests else None
            lookup[layer] = s.mean(f"{m}get_timer", where) or 0.0
        where = {"use_case": use_case}
        function_calls = int(s.sum(f"{m}fallback_timer_count", where))
        shared = sum(
            int(s.sum(f"{m}single_flight_counter_total", {**where, "result": result}))
            for result in ("joined", "read_merged")
        )
        function_mean = s.mean(f"{m}fallback_timer", where)
        rows.append(
            Row(
                use_case=use_case,
                calls=calls[use_case],
                local_hits=hits["local"],
                remote_hits=hits["remote"],
                shared=shared,
                function_calls=function_calls,
                local_hit_sec=lookup["local"] if hits["local"] else None,
                remote_hit_sec=lookup["local"] + lookup["remote"] if hits["remote"] else None,
                miss_sec=lookup["local"] + lookup["remote"] + function_mean if function_mean else None,
                function_sec_total=s.sum(f"{m}fallback_timer_sum", where),
            )
        )
    return rows


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 0.001:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _avoided(calls: int, function_calls: int) -> str:
    return f"{100 * (calls - function_calls) / calls:.1f}%" if calls else "-"


HEADER = (
    "use case",
    "calls",
    "LOCAL hits",
    "REMOTE hits",
    "shared",
    "function calls",
    "avoided",
    "local hit",
    "remote hit",
    "miss",
)


def format_table(rows: Sequence[Row]) -> list[str]:
    """Plain-text table, numbers right-aligned, with a total line."""
    body = [
        (
            r.use_case,
            _count(r.calls),
            _count(r.local_hits),
            _count(r.remote_hits),
            _count(r.shared),
            _count(r.function_calls),
            _avoided(r.calls, r.function_calls),
            _duration(r.local_hit_sec),
            _duration(r.remote_hit_sec),
            _duration(r.miss_sec),
        )
        for r in rows
    ]
    calls = sum(r.calls for r in rows)
    functions = sum(r.function_calls for r in rows)
    total = (
        "total",
        _count(calls),
        _count(sum(r.local_hits or 0 for r in rows)),
        _count(sum(r.remote_hits or 0 for r in rows)),
        _count(sum(r.shared for r in rows)),
        _count(functions),
        _avoided(calls, functions),
        "",
        "",
        "",
    )
    table = [HEADER, *body, total]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADER))]

    def render(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        return (
            "  "
            + "  ".join([first, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))]).rstrip()
        )

    rule = ["-" * w for w in widths]
    return [render(HEADER), render(rule), *(render(line) for line in body), render(rule), render(total)]


# -- the run -----------------------------------------------------------------------------------


def run(options: DemoOptions) -> int:
    """The whole demo; returns the exit code. Everything it starts is stopped before it returns."""
    say("gcache demo: a two-tier read-through cache (LOCAL -> REMOTE/Redis -> function)")
    redis_url = options.redis_url or os.environ.get("REDIS_URL")
    embedded = not redis_url
    with contextlib.ExitStack() as stack:
        if redis_url:
            say(f"  Redis    {_mask(redis_url)} (from REDIS_URL); keys under {URN_PREFIX} are flushed first")
        else:
            try:
                server = stack.enter_context(EmbeddedRedis())
            except (FileNotFoundError, RuntimeError) as exc:
                say(f"  Redis    cannot start an embedded redis-server: {exc}")
                say("           set REDIS_URL=redis://host:port/0 to use an existing server")
                return 1
            redis_url = server.url
            say(f"  Redis    no REDIS_URL set: started a private redis-server, {redis_url}")

        registry = CollectorRegistry()  # this run's numbers only, plus the usual process metrics
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        try:
            http, _thread = start_metrics_server(options.port, addr=options.metrics_host, registry=registry)
        except OSError as exc:
            say(f"  Metrics  cannot listen on {options.metrics_host}:{options.port}: {exc}")
            return 1
        stack.callback(http.server_close)
        stack.callback(http.shutdown)
        host = f"[{options.metrics_host}]" if ":" in options.metrics_host else options.metrics_host
        say(f"  Metrics  http://{host}:{http.server_port}/metrics")  # tests read the URL from this line
        say(f"  Source   a simulated database: every read sleeps {options.latency_ms:g} ms")
        metrics_url = f"http://{host}:{http.server_port}/metrics"
        code = asyncio.run(_main(options, redis_url, registry, metrics_url))
    say()
    say("Done: cache closed, /metrics stopped" + (", redis-server stopped." if embedded else "."))
    return code


async def _main(options: DemoOptions, redis_url: str, registry: CollectorRegistry, metrics_url: str) -> int:
    stop = asyncio.Event()
    with _stop_on_signals(stop):
        cache = GCache(
            GCacheConfig(
                cache_config_provider=config_provider,
                redis_config=RedisConfig(url=redis_url),
                urn_prefix=URN_PREFIX,
                metrics_registry=registry,
                local_max_entries=LOCAL_MAX_ENTRIES,
            )
        )
        try:
            return await _story(cache, options, redis_url, registry, metrics_url, stop)
        finally:
            await cache.aclose()


@contextlib.contextmanager
def _stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """SIGINT (Ctrl-C) and SIGTERM set ``stop``: the demo winds down and cleans up, exit code 0."""
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # Windows; not the main thread
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


async def _story(
    cache: GCache,
    options: DemoOptions,
    redis_url: str,
    registry: CollectorRegistry,
    metrics_url: str,
    stop: asyncio.Event,
) -> int:
    problem = await _redis_problem(redis_url)
    if problem is not None:
        say(f"  Redis    does not answer at {_mask(redis_url)}: {problem}")
        return 1
    await cache.aflushall()  # only this demo's keys (its urn_prefix), found with SCAN
    rng = random.Random(options.seed)
    source = SlowSource(options.latency_ms / 1000, rng)
    traffic = Traffic(cache, Service(cache, source), source, rng)

    say()
    say("Use cases (TTL per layer from the config provider, called on every call):")
    for use_case, config in USE_CASE_CONFIGS.items():
        layers = " + ".join(f"{layer.name} {config.ttl_sec[layer]:g} s" for layer in config.ttl_sec)
        tracked = ", tracked for invalidation" if use_case != "GetExchangeRate" else ""
        say(f"  {use_case:<16} {USE_CASE_DESCRIPTIONS[use_case]:<34} {layers}{tracked}")
    say(f"  LOCAL holds {LOCAL_MAX_ENTRIES} entries per use case (GCacheConfig.local_max_entries):")
    say("  the hot users stay in the process, the others are served from Redis.")

    say()
    started = time.perf_counter()
    with cache.enable():
        done = 0
        while done < options.calls and not stop.is_set():
            size = min(options.concurrency, options.calls - done)
            await traffic.batch(size)
            done += size
    say(f"Traffic: {done} calls in {time.perf_counter() - started:.2f} s, {options.concurrency} at a time")
    say(f"  over {USER_COUNT} users (a few hot ones get most calls) and {len(CURRENCIES)} currencies.")
    if stop.is_set():
        say("Interrupted before the end of the run.")
        return 130

    say()
    if not await _show_invalidation(traffic):
        return 1

    say()
    rows = read_rows(registry, traffic.calls)
    extra = sum(traffic.calls.values()) - done
    say(f"Results per use case, from this run's Prometheus metrics ({done} calls + {extra} for the update):")
    for line in format_table(rows):
        say(line)
    say("  latency is the mean per path: a local hit is one LOCAL lookup (gcache_get_timer); a remote hit")
    say("  adds the REMOTE lookup; a miss adds the function too (gcache_fallback_timer). Lookups that")
    say(f"  wait on Redis also wait for the event loop, shared by {options.concurrency} calls at a time.")
    calls = sum(r.calls for r in rows)
    functions = sum(r.function_calls for r in rows)
    spent = sum(r.function_sec_total for r in rows)
    if functions:
        say(
            f"  The source was read {functions} times ({spent:.2f} s); without gcache it would have been"
            f" read {calls} times (about {spent / functions * calls:.2f} s)."
        )

    say()
    await _show_keys(redis_url)

    if options.serve:
        say()
        await _serve(traffic, registry, options, metrics_url, redis_url, stop)
    return 0


async def _show_invalidation(traffic: Traffic) -> bool:
    """Update a hot user in the source and invalidate: the next read must return the new value."""
    user_id = 1
    with traffic.cache.enable():
        old = (await traffic.user(user_id)).plan
        new = "pro" if old != "pro" else "enterprise"
        say(f"Invalidation: user {user_id} changes plan from {old!r} to {new!r} in the source.")
        traffic.source.set_plan(user_id, new)
        stale = (await traffic.user(user_id)).plan
        say(f"  before ainvalidate: get_user({user_id}).plan == {stale!r}  (the cached copy, stale)")
        await traffic.cache.ainvalidate("user_id", user_id)
        traffic.invalidations += 1
        fresh = (await traffic.user(user_id)).plan
    if fresh != new:
        say(f"  after  ainvalidate: get_user({user_id}).plan == {fresh!r}: STALE, expected {new!r}")
        return False
    say(
        f"  after  ainvalidate: get_user({user_id}).plan == {fresh!r}  (old value {old!r}, new value {new!r})"
    )
    say(f"  ainvalidate made every cached entry of user {user_id} stale at once, in LOCAL and in Redis.")
    return True


async def _redis_problem(redis_url: str) -> str | None:
    """Why Redis cannot be used, or None: checked first, as the cache itself would fail open."""
    client = redis.asyncio.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=2)
    try:
        await client.ping()
    except (redis.RedisError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        await client.aclose()
    return None


async def _show_keys(redis_url: str) -> None:
    """A few of the demo's Redis keys, so the key format is seen once (user 1's, when present)."""
    client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    try:
        keys = sorted([key async for key in client.scan_iter(match="{" + URN_PREFIX + ":*", count=1000)])
    finally:
        await client.aclose()
    say(f"Redis keys ({len(keys)} in all), one of each kind:")
    notes = {
        "#GetUser": "get_user(1): {entity} (a Redis Cluster hash tag), #use case",
        "#GetOrders": "get_orders(1, 'open'): other arguments after '?'",
        "#watermark": "user 1's invalidation fence",
    }
    shown: list[tuple[str, str]] = []
    for suffix, note in notes.items():
        matching = [k for k in keys if k.endswith(suffix)]
        preferred = [k for k in matching if k.startswith("{" + URN_PREFIX + ":user_id:1}")]
        if matching:
            shown.append(((preferred or matching)[0], note if preferred else ""))
    width = max((len(key) for key, _ in shown), default=0)
    for key, note in shown:
        say(f"  {key:<{width}}  {note}".rstrip())


PEER_USE_CASE = "GetUserBadge"
PEER_CALLS_PER_BATCH = 2


class Peer:
    """Another process of the same service, played by a second GCache on the same Redis.

    It keeps its own LOCAL copies of (hot) users' badges. When the first instance invalidates a
    user, the invalidation bus (Redis pub/sub) tells this one, which drops its copies: an
    instance does not hear its own messages, it applied them before publishing.
    """

    def __init__(self, redis_url: str, registry: CollectorRegistry, traffic: Traffic) -> None:
        self.traffic = traffic
        self.cache = GCache(
            GCacheConfig(
                redis_config=RedisConfig(url=redis_url),
                urn_prefix=URN_PREFIX,
                metrics_registry=registry,
                local_max_entries=LOCAL_MAX_ENTRIES,
            )
        )
        source = traffic.source

        @self.cache.cached(
            key_type="user_id",
            id_arg="user_id",
            use_case=PEER_USE_CASE,
            track_for_invalidation=True,
            default_config=GCacheKeyConfig(ttl_sec={LOCAL: 30, REMOTE: 300}, ramp={LOCAL: 100, REMOTE: 100}),
        )
        async def get_user_badge(user_id: int) -> str:
            user = await source.aread_user(user_id)
            return f"{user.name} ({user.plan})"

        self.get_user_badge = get_user_badge

    async def one_call(self) -> None:
        try:
            with self.cache.enable():
                await self.get_user_badge(self.traffic.pick_user())
        except SourceError:
            self.traffic.source_errors += 1

    async def batch(self, size: int) -> None:
        await asyncio.gather(*(self.one_call() for _ in range(size)))


async def _serve(
    traffic: Traffic,
    registry: CollectorRegistry,
    options: DemoOptions,
    metrics_url: str,
    redis_url: str,
    stop: asyncio.Event,
) -> None:
    """Steady mixed traffic for dashboards: hits, misses, invalidations, failures, uncached calls."""
    until = f"{options.duration:g} s have passed" if options.duration else "Ctrl-C (SIGINT) or SIGTERM"
    say(f"Serving {metrics_url} with steady traffic until {until}:")
    say("  hits and misses (some users are new), an invalidation a second followed by concurrent calls")
    say("  for that user (single flight), a failing source read now and then (caught by the demo, or")
    say("  answered with a stale exchange rate by fail-safe), and a few calls outside gcache.enable().")
    say(f"  A second GCache on the same Redis, as another process of the service, caches {PEER_USE_CASE}")
    say("  and hears each invalidation over the invalidation bus.")
    traffic.source.failure_rate = 0.02
    traffic.source.rate_failure_rate = 0.3
    traffic.new_user_share = 0.05
    traffic.uncached_share = 0.02
    peer = Peer(redis_url, registry, traffic)
    try:
        await _steady_traffic(traffic, peer, registry, options, stop)
    finally:
        await peer.cache.aclose()


async def _steady_traffic(
    traffic: Traffic, peer: Peer, registry: CollectorRegistry, options: DemoOptions, stop: asyncio.Event
) -> None:
    started = last_report = last_invalidation = time.monotonic()
    deadline = started + options.duration if options.duration else None
    with traffic.cache.enable():
        while not stop.is_set():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            await traffic.batch(options.concurrency)
            await peer.batch(PEER_CALLS_PER_BATCH)
            if now - last_invalidation >= 1.0:
                user_id = traffic.pick_user()
                plan = "free" if traffic.source.plan_of(user_id) == "pro" else "pro"
                await traffic.update_plan(user_id, plan)
                # Concurrent requests for the user just invalidated: one runs the function, the
                # others share its value (gcache_single_flight_counter{result="joined"}).
                await traffic.burst(user_id, options.concurrency)
                last_invalidation = now
            if now - last_report >= 10.0:
                say(f"  [{now - started:4.0f} s] {_summary(traffic, registry)}")
                last_report = now
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.05)
    say(f"Stopped after {time.monotonic() - started:.1f} s: {_summary(traffic, registry)}")


def _summary(traffic: Traffic, registry: CollectorRegistry) -> str:
    rows = read_rows(registry, traffic.calls)
    calls = sum(r.calls for r in rows)
    functions = sum(r.function_calls for r in rows)
    return (
        f"{calls:,} calls, {_avoided(calls, functions)} without the function,"
        f" {_plural(traffic.invalidations, 'invalidation')},"
        f" {_plural(traffic.source_errors, 'source error')} caught"
    )


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def _mask(url: str) -> str:
    """The URL without its password, for printing."""
    with contextlib.suppress(ValueError):
        parts = urlsplit(url)
        if parts.password:
            return url.replace(f":{parts.password}@", ":***@", 1)
    return url
