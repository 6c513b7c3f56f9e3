"""The run: start Redis if needed, tell the story (traffic, an update and ``ainvalidate``, a Redis
problem, the keys), print the table, and with ``--serve`` keep steady traffic going."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import signal
import time
from collections.abc import Iterator

import redis.asyncio
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from gcache import GCache, GCacheConfig, RedisConfig, start_metrics_server
from gcache._embedded_redis import EmbeddedRedis
from gcache.demo.options import CURRENCIES, LOCAL_MAX_ENTRIES, URN_PREFIX, USER_COUNT, DemoOptions, say
from gcache.demo.report import avoided, format_table, read_rows
from gcache.demo.service import USE_CASE_CONFIGS, USE_CASE_DESCRIPTIONS, Service, config_provider
from gcache.demo.source import SlowSource
from gcache.demo.traffic import PEER_CALLS_PER_BATCH, PEER_USE_CASE, Peer, Traffic
from gcache.redis_config import mask_url
from gcache.signing import ENV_SIGNING_KEYS

__all__ = ["run"]

# -- the run -----------------------------------------------------------------------------------


def run(options: DemoOptions) -> int:
    """The whole demo; returns the exit code. Everything it starts is stopped before it returns."""
    say("gcache demo: a two-tier read-through cache (LOCAL -> REMOTE/Redis -> function)")
    redis_url = options.redis_url or os.environ.get("REDIS_URL")
    embedded = not redis_url
    with contextlib.ExitStack() as stack:
        if redis_url:
            shown = mask_url(redis_url)
            say(f"  Redis    {shown} (from REDIS_URL); keys under {URN_PREFIX} are flushed first")
        else:
            try:
                server = stack.enter_context(EmbeddedRedis())
            except (FileNotFoundError, RuntimeError) as exc:
                say(f"  Redis    cannot start an embedded redis-server: {exc}")
                say("           set REDIS_URL=redis://host:port/0 to use an existing server")
                return 1
            redis_url = server.url
            say(f"  Redis    no REDIS_URL set: started a private redis-server, {mask_url(redis_url)}")

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
        signing_keys = _signing_keys()
        metrics_url = f"http://{host}:{http.server_port}/metrics"
        code = asyncio.run(_main(options, redis_url, registry, metrics_url, signing_keys))
    say()
    say("Done: cache closed, /metrics stopped" + (", redis-server stopped." if embedded else "."))
    return code


def _signing_keys() -> list[str] | None:
    """The keys both of the demo's instances sign with: ``GCACHE_SIGNING_KEYS`` when it is set
    (None: GCacheConfig reads it), else one made for this run, as a fleet shares one."""
    if os.environ.get(ENV_SIGNING_KEYS, "").strip():
        say(f"  Signing  entries and bus messages signed with the keys of {ENV_SIGNING_KEYS}")
        return None
    say(
        f"  Signing  entries and bus messages signed with a key made for this run ({ENV_SIGNING_KEYS}: yours)"
    )
    return [secrets.token_urlsafe(32)]


async def _main(
    options: DemoOptions,
    redis_url: str,
    registry: CollectorRegistry,
    metrics_url: str,
    signing_keys: list[str] | None,
) -> int:
    stop = asyncio.Event()
    with _stop_on_signals(stop):
        cache = GCache(
            GCacheConfig(
                cache_config_provider=config_provider,
                redis_config=RedisConfig(url=redis_url),
                urn_prefix=URN_PREFIX,
                metrics_registry=registry,
                local_max_entries=LOCAL_MAX_ENTRIES,
                signing_keys=signing_keys,
                require_signing=True,
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
        say(f"  Redis    does not answer at {mask_url(redis_url)}: {problem}")
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
    peer = Peer(redis_url, registry, traffic, traffic.cache.config.signing_keys)
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
        f"{calls:,} calls, {avoided(calls, functions)} without the function,"
        f" {_plural(traffic.invalidations, 'invalidation')},"
        f" {_plural(traffic.source_errors, 'source error')} caught"
    )


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")
