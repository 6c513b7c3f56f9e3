"""The read-through decisions for one use case, and the sync and async drivers that run them.

Every decision that needs no I/O (config fallback, which layers take part, whether a remote
entry is fresh, who may share whose result, what to count) is a plain method here, written
once. ``aread_through`` and ``read_through`` are the two drivers (entered from the function
:meth:`UseCase.wrap` makes): they do the I/O those decisions ask for and are kept line-for-line
alike, so a diff between them shows any drift.

A miss goes: (tracked) the REMOTE read, whose fence decides who may join a flight; the single
flight (join a running one or lead a new one); the leader's work (untracked REMOTE read, the
distributed lock, the function, the write-backs); then each caller takes the outcome, or a stale
value (fail-safe) when the function failed or outlasted the soft timeout.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import inspect
import math
import random
import threading
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from gcache import _envelope, _fork
from gcache._codec import Codec
from gcache._envelope import untracked_pickle
from gcache.config import CacheLayer, GCacheKeyConfig, Serializer
from gcache.errors import RemoteError
from gcache.keys import (
    _ID,
    _KEY_TYPE,
    ArgumentsDoNotBind,
    GCacheKey,
    KeyBuilder,
    KeyPartWatch,
    lock_key,
    value_key,
    value_key_tail,
    watermark_key,
)
from gcache.local import MISS, LocalStore
from gcache.metrics import LAYER_ALL, LAYER_NONE, UseCaseMetrics
from gcache.remote import new_nonce
from gcache.single_flight import Flight, FlightTable

if TYPE_CHECKING:
    from gcache._log import ErrorLog
    from gcache._loop_thread import LoopThread
    from gcache.local import Epochs
    from gcache.remote import RemoteCache, TrackedRead

__all__ = ["Miss", "Runtime", "UseCase"]

_LOCAL, _REMOTE = CacheLayer.LOCAL, CacheLayer.REMOTE
_WRITE_RESULTS = {1: "stored", 0: "invalidated", -1: "fence_replaced", -2: "too_slow"}
_LOCK_POLL = (0.005, 0.05)  # distributed single flight: first and longest pause between polls (s)
_TIMING_MASK = 15  # LOCAL lookups and REMOTE reads timed: the 1st, 17th, 33rd, ... of a use case
_perf = time.perf_counter
_monotonic = time.monotonic
_random = random.random


class Runtime:
    """What every use case of one GCache shares: the prefix, the layers, the provider, the logs."""

    def __init__(
        self,
        *,
        prefix: str,
        enabled: ContextVar[bool],
        provider: Callable[[GCacheKey], Any] | None,
        remote: RemoteCache | None,
        epochs: Epochs,
        errors: ErrorLog,
        loop_thread: LoopThread,
        config_reuse_sec: float = 0.0,
        max_value_bytes: int | None = None,
    ) -> None:
        self.prefix = prefix
        self.config_reuse_sec = config_reuse_sec
        self.max_value_bytes = max_value_bytes
        self.enabled = enabled
        self.provider = provider
        self.remote = remote
        self.epochs = epochs
        self.errors = errors
        self.loop_thread = loop_thread
        self._workers: concurrent.futures.ThreadPoolExecutor | None = None
        self._workers_lock = threading.Lock()
        self.background: set[asyncio.Future[Any]] = set()  # refreshes outliving a soft timeout

    def workers(self) -> concurrent.futures.ThreadPoolExecutor:
        """Threads for sync functions that run past a soft timeout (created on first use)."""
        with self._workers_lock:
            if self._workers is None:
                self._workers = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="gcache-refresh")
            return self._workers

    def after_fork_in_child(self) -> None:
        """The parent's refresh threads and background tasks do not exist in this process."""
        _fork.leave_untouched(self._workers)
        self._workers = None
        self._workers_lock = threading.Lock()
        self.background = set()

    def close(self) -> None:
        with self._workers_lock:
            workers, self._workers = self._workers, None
        if workers is not None:
            workers.shutdown(wait=False)


class Miss:
    """One call's miss: what the layers said, and what the leader's work needs."""

    __slots__ = (
        "began",
        "config",
        "entity",
        "epoch",
        "key",
        "local_ttl",
        "of",
        "read",
        "read_at",
        "reads_first",
        "remote_ttl",
        "stale",
        "stale_layer",
        "token",
        "urn",
    )

    def __init__(
        self,
        urn: str,
        entity: str,
        config: GCacheKeyConfig,
        local_ttl: float,
        remote_ttl: float,
        epoch: int,
        of: int,
        reads_first: bool,
        began: float = 0.0,
    ) -> None:
        self.urn = urn
        self.entity = entity
        self.config = config
        self.local_ttl = local_ttl
        self.remote_ttl = remote_ttl  # set to 0 when Redis fails during this call
        self.epoch = epoch  # LOCAL epoch at the start (-1: LOCAL may not be filled)
        self.of = of  # the entity's LOCAL invalidation epoch at the start
        self.read: TrackedRead | None = None  # the latest tracked read
        self.read_at = math.inf  # when the latest REMOTE read was sent (monotonic)
        self.reads_first = reads_first  # see UseCase.miss
        self.began = began  # tracked: when this miss began (monotonic), after the call started
        self.stale: Any = MISS  # fail-safe: an entry past its TTL, not invalidated
        self.stale_layer = ""
        self.token: bytes | None = None  # the distributed lock, while this call holds it
        self.key: tuple[str, tuple[tuple[str, str], ...]] | None = None  # (id, pairs), for watch_key


class UseCase:
    """One use case, settled when it is decorated (or first used by direct key access)."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        use_case: str,
        key_type: str,
        tracked: bool,
        default_config: GCacheKeyConfig | None,
        serializer: Serializer | None,
        local: LocalStore,
        metrics: UseCaseMetrics,
        keys: KeyBuilder | None = None,
    ) -> None:
        self.rt = runtime
        self.use_case = use_case
        self.key_type = key_type
        self.tracked = tracked
        self.default_config = default_config
        self.serializer = serializer
        self.codec = Codec(serializer)
        self._plain = not tracked and serializer is None  # see _envelope.untracked_pickle
        self.local = local
        self.remote = runtime.remote
        self.m = metrics
        self.keys = keys
        self._tick = 0  # LOCAL lookups so far
        self._reads = 0  # REMOTE reads so far
        self._reused: tuple[Any, float] | None = None  # (provider answer, reuse until)
        self._entity_head = "{" + f"{runtime.prefix}:{key_type.translate(_KEY_TYPE)}:"
        self._key_tail = value_key_tail(use_case)
        self.flights = FlightTable()
        self.reads: dict[str, Flight] = {}  # tracked REMOTE reads not sent yet, for merging
        self.closed = False  # the GCache was closed: calls are served uncached
        self.watch = KeyPartWatch() if keys is not None else None

    # -- decisions (no I/O) ----------------------------------------------------------------------

    def make_key(self, id: str, args: tuple[tuple[str, str], ...]) -> GCacheKey:
        return GCacheKey(
            self.key_type,
            id,
            self.use_case,
            args,
            self.tracked,
            self.default_config,
            self.serializer,
            self.rt.prefix,
        )

    def _keep(self, provided: Any) -> None:
        """Remember the provider's answer for ``config_reuse_sec`` (errors are never kept)."""
        if self.rt.config_reuse_sec:
            self._reused = (provided, _monotonic() + self.rt.config_reuse_sec)

    def _resolved(self, provided: Any) -> GCacheKeyConfig | None:
        config = self.default_config if provided is None else provided
        if config is None:
            self.m.disabled(LAYER_ALL, "missing_config").inc()
            return None
        if not isinstance(config, GCacheKeyConfig):
            self._config_error(
                TypeError(f"config provider returned {type(config).__name__}, not GCacheKeyConfig")
            )
            return None
        return config

    def _config_error(self, exc: BaseException) -> None:
        self.m.disabled(LAYER_ALL, "config_error").inc()
        self._error(LAYER_ALL, exc, "config provider failed")

    def layers(self, config: GCacheKeyConfig) -> tuple[float, float]:
        """TTL of LOCAL and REMOTE for this call, 0 for a layer that sits it out.

        A layer that is not set up (TTL 0) is out and nothing was ramped down; a layer at a ramp
        of 100 is in without a random draw; only a ramp in between asks :meth:`_ramped`.
        """
        ttls, ramps = config.ttl_sec, config.ramp
        local_ttl = ttls.get(_LOCAL, 0)
        if local_ttl <= 0:
            local_ttl = 0
        elif ramps.get(_LOCAL, 0) < 100:
            local_ttl = self._ramped(local_ttl, ramps.get(_LOCAL, 0), "local")
        remote = self.remote
        if remote is None:
            return local_ttl, 0
        remote_ttl = ttls.get(_REMOTE, 0)
        if remote_ttl <= 0:
            return local_ttl, 0
        if ramps.get(_REMOTE, 0) < 100:
            remote_ttl = self._ramped(remote_ttl, ramps.get(_REMOTE, 0), "remote")
        if remote_ttl and remote.breaker.is_open:
            self.m.disabled("remote", "server_down").inc()
            return local_ttl, 0
        return local_ttl, remote_ttl

    def _ramped(self, ttl: float, ramp: float, name: str) -> float:
        """``ttl`` for the share ``ramp`` (0-100) of calls, one random draw; 0 (counted) otherwise."""
        if ramp <= 0 or _random() * 100 >= ramp:
            self.m.disabled(name, "ramped_down").inc()
            return 0
        return ttl

    def local_get(self, urn: str, entity: str) -> Any:
        self.m.request_local.inc()
        tick = self._tick
        self._tick = tick + 1
        if tick & _TIMING_MASK:
            value, reason = self.local.get(urn, entity)
        else:  # timing costs more than the lookup: the first one, then one in 16, is measured
            start = _perf()
            value, reason = self.local.get(urn, entity)
            self.m.get_local.observe(_perf() - start)
        if reason is not None:
            self.m.miss("local", reason).inc()
        return value

    def local_put(
        self, urn: str, entity: str, value: Any, ttl: float, epoch: int, grace: float = 0.0
    ) -> None:
        refused = self.local.put(urn, entity, value, ttl, epoch, grace)
        if refused is None:
            self.m.local_stored.inc()
        else:
            self.m.write("local", refused).inc()

    def fresh(self, raw: bytes | None, read: TrackedRead | None) -> _envelope.Envelope | None:
        """The envelope of a remote entry that is not invalidated, or None (the miss is counted).

        Whether it is past its TTL (in a fail-safe grace period) is :meth:`expired`'s question.
        """
        if raw is None:
            self.m.miss("remote", "not_found").inc()
            return None
        try:
            env = _envelope.decode(raw)
        except _envelope.EnvelopeError as exc:
            self.m.miss("remote", exc.reason).inc()
            return None
        if env.serializer_id != self.codec.serializer_id:
            self.m.miss("remote", "serializer_mismatch").inc()
            return None
        if read is not None:
            if env.nonce != read.nonce:  # the fence it was written under was lost or replaced
                self.m.miss("remote", "fence_mismatch").inc()
                return None
            if env.stamp_us <= read.watermark_us:
                self.m.miss("remote", "invalidated").inc()
                return None
        return env

    def to_load(
        self, m: Miss, raw: bytes | None, read: TrackedRead | None, pttl_ms: int
    ) -> tuple[bytes, int, bool] | None:
        """What a REMOTE read found worth loading: payload, flags and whether it is past its TTL
        (a fail-safe entry kept as a stale value); None when there is nothing to load."""
        env = self.fresh(raw, read)
        if env is None:
            if raw is not None and m.stale_layer == "local":
                m.stale = MISS  # Redis holds a newer copy it refused: the LOCAL one is no better
            return None
        expired = self.expired(m, pttl_ms) if m.config.fail_safe_sec else False
        if expired and m.stale is not MISS:
            return None  # a stale LOCAL value is at hand already: no need to load this one
        return env.payload, env.flags, expired

    def expired(self, m: Miss, pttl_ms: int) -> bool:
        """Whether a fail-safe entry is past its TTL: it lives ``fail_safe_sec`` longer in Redis."""
        grace_ms = m.config.fail_safe_sec * 1000
        if grace_ms and 0 <= pttl_ms <= grace_ms:
            self.m.miss("remote", "expired").inc()
            return True
        return False

    def keep_stale(self, m: Miss, value: Any, layer: str) -> None:
        if m.stale is MISS:
            m.stale, m.stale_layer = value, layer

    def envelope(self, payload: bytes, flags: int) -> bytes | None:
        """The framed payload, or None when it is larger than ``max_value_bytes`` (counted)."""
        limit = self.rt.max_value_bytes
        if limit is not None and len(payload) > limit:
            self.m.write("remote", "too_large").inc()
            return None
        self.m.size.observe(len(payload))
        return _envelope.encode(payload, self.codec.serializer_id, flags, time.time_ns() // 1000)

    # -- misses: single flight, fail-safe, TTLs -------------------------------------------------

    def miss(
        self,
        urn: str,
        entity: str,
        config: GCacheKeyConfig,
        local_ttl: float,
        remote_ttl: float,
        *,
        stale: bool = True,
        shared_read: bool = True,
    ) -> Miss:
        """A miss's state; ``stale=False`` for a direct put, which serves nothing.

        Whether the miss reads REMOTE before the single flight, each caller for itself, is settled
        here. Tracked: the fence the read returns decides who may join whom. Soft timeout: a
        caller must know of a stale value before it decides how long to wait. A thread
        (``shared_read=False``): it would block on a socket either way, and its REMOTE hit then
        costs no single-flight bookkeeping (about a fifth of gcache's work on a hit); its misses
        still share one run of the function. Otherwise (event-loop tasks, which may be thousands
        on one key) the leader reads once for everyone.
        """
        epochs, tracked = self.rt.epochs, self.tracked
        # The epochs matter for filling LOCAL, and for who may join whose flight when tracked.
        epoch = epochs.start(entity) if local_ttl or tracked else -1
        of = epochs.of(entity) if tracked else 0
        reads_first = bool(remote_ttl) and (tracked or not shared_read or bool(config.soft_timeout_sec))
        began = _monotonic() if tracked else 0.0
        m = Miss(urn, entity, config, local_ttl, remote_ttl, epoch, of, reads_first, began)
        if stale and config.fail_safe_sec and local_ttl:
            self.keep_stale(m, self.local.get_stale(urn, entity), "local")
        return m

    def flight_for(self, m: Miss, owner: object) -> tuple[Flight, bool]:
        """The flight this miss takes part in, and whether it leads it."""
        flights = self.flights
        seen = flights.get(m.urn)
        if seen is not None and self.joinable(seen, m, owner):
            return seen, False
        mine = Flight(owner, m.read, m.of, _monotonic())
        winner = flights.setdefault(m.urn, mine) if seen is None else flights.claim(m.urn, mine, seen)
        if winner is mine or not self.joinable(winner, m, owner):
            return mine, True  # leads; a winner it cannot join keeps its place, this call runs alone
        return winner, False

    def joinable(self, flight: Flight, m: Miss, owner: object) -> bool:
        """May this miss take ``flight``'s outcome without breaking the invalidation guarantee?

        Untracked use cases have nothing to break. A tracked miss may take it when:

        - its own read saw the leader's fence with a watermark below the leader's read time (no
          invalidation since the leader read); or
        - the flight began after this miss did: the leader's function reads its source after
          every invalidation that returned before this call started; or
        - this call had REMOTE off (LOCAL only, a ramp, an open breaker), and the entity's LOCAL
          epoch is trusted and has not moved since the leader started: LOCAL's guarantee, under
          which other processes' invalidations arrive over the bus.

        A call that read or tried to read REMOTE and has no read on one side to compare (its
        read or the leader's failed) is not served by an older flight: the bus may not have
        brought an invalidation that returned before it started. A finished flight serves only
        callers whose read was sent before it finished (their miss raced its write).
        """
        if flight.owner == owner or flight.abandoned:
            return False  # a recursive call from the leader's own function must not wait for itself
        if flight.done_at and not m.read_at < flight.done_at:
            return False
        if not self.tracked:
            return True
        if m.of != flight.of:
            return False
        if m.read is not None and flight.read is not None:
            return m.read.nonce == flight.read.nonce and m.read.watermark_us < flight.read.now_us
        if flight.began > m.began:
            return True
        return not m.reads_first and m.epoch >= 0 and self.rt.epochs.trusted

    def merged(self, m: Miss, flight: Flight) -> Any:
        """A merged read's outcome, taken as this call's own read (see :meth:`amerged_read`)."""
        value, read_at, remote_ttl, stale, stale_layer = flight.value
        m.read, m.read_at = flight.read, read_at
        if not remote_ttl:
            m.remote_ttl = 0  # Redis failed: this call writes nothing back either
        if stale is not MISS:
            self.keep_stale(m, stale, stale_layer)
        if value is not MISS:
            self.m.single_flight("read_merged").inc()  # served: a miss goes on to the function's flight
            if m.local_ttl:  # the read ran after this call started: this call's epoch holds for it
                self.local_put(m.urn, m.entity, value, m.local_ttl, m.epoch, m.config.fail_safe_sec)
        return value

    def lead_read(self, m: Miss) -> Flight:
        flight = Flight(None, None, m.of)
        self.reads[m.urn] = flight
        return flight

    def read_landed(self, m: Miss, flight: Flight, value: Any) -> None:
        flight.read = m.read
        flight.succeed((value, m.read_at, m.remote_ttl, m.stale, m.stale_layer))
        if self.reads.get(m.urn) is flight:
            del self.reads[m.urn]

    def read_failed(self, m: Miss, flight: Flight, exc: BaseException) -> None:
        flight.fail(exc)
        if self.reads.get(m.urn) is flight:
            del self.reads[m.urn]

    def patience(self, m: Miss) -> float | None:
        """How long this call waits for the function: the soft timeout when a stale value is at hand."""
        soft = m.config.soft_timeout_sec
        return soft if soft and m.stale is not MISS else None

    def outcome(self, m: Miss, flight: Flight) -> Any:
        if flight.error is None:
            return flight.value
        if m.stale is MISS and flight.stale is not None:  # the leader's stale value, as good as ours
            m.stale, m.stale_layer = flight.stale[0], flight.stale_layer
        if m.stale is not MISS:
            return self.served_stale(m, "function_error")
        raise flight.error

    def served_stale(self, m: Miss, reason: str) -> Any:
        self.m.stale_served(m.stale_layer, reason).inc()
        return m.stale

    def write_ttls(self, m: Miss) -> tuple[float, float, float]:
        """LOCAL TTL, REMOTE TTL and grace for a write: shortened at random by ``ttl_jitter``."""
        jitter = m.config.ttl_jitter
        scale = 1.0 - jitter * _random() if jitter else 1.0
        return m.local_ttl * scale, m.remote_ttl * scale, m.config.fail_safe_sec

    def wrote(self, result: int) -> bool:
        self.m.write("remote", _WRITE_RESULTS.get(result, "unknown")).inc()
        return result == 1

    def key_error(self, exc: BaseException) -> None:
        self._error(LAYER_ALL, exc, "could not build the cache key")

    def remote_error(self, exc: BaseException, what: str) -> None:
        self._error("remote", exc, what)

    def _error(self, layer: str, exc: BaseException, what: str) -> None:
        cause = exc.cause if isinstance(exc, RemoteError) else exc  # label the redis-py error itself
        kind = type(cause).__name__
        self.m.error(layer, kind, "false").inc()
        self.rt.errors.warning(
            (self.use_case, layer, kind),
            f"{what} for use case {self.use_case!r} ({layer}): {kind}: {cause}; served uncached",
            exc,
        )

    def watch_key(self, id: str, pairs: tuple[tuple[str, str], ...]) -> None:
        """Tell (once per part) a key part that makes every call of this use case a miss."""
        assert self.watch is not None
        for part, why in self.watch.suspects(id, pairs):
            fix = (
                "pass the id itself, or give id_arg an extractor: id_arg=(name, lambda obj: obj.id)"
                if part == "id"
                else f"leave it out with ignore_args=[{part!r}], or key it by arg_adapters={{{part!r}: ...}}"
            )
            self.rt.errors.once(
                ("key_part", self.use_case, part),
                f"use case {self.use_case!r}: key part {part!r} {why}, so calls cannot hit the cache "
                f"and each one stores an entry; {fix}",
            )

    def used_after_close(self) -> None:
        self.m.disabled(LAYER_ALL, "closed").inc()
        self.rt.errors.once(
            ("closed", self.use_case),
            f"use case {self.use_case!r} called after its GCache (prefix {self.rt.prefix!r}) was "
            "closed: served uncached from now on (close the cache when the application stops, "
            "after its last call)",
        )

    def function_failed(self, layer: str, exc: BaseException) -> None:
        self.m.error(layer, type(exc).__name__, "true").inc()

    @staticmethod
    def fallback_layer(local_ttl: float, remote_ttl: float) -> str:
        return "remote" if remote_ttl else ("local" if local_ttl else LAYER_NONE)

    # -- the decorated function ------------------------------------------------------------------

    def wrap(self, func: Callable[..., Any]) -> Callable[..., Any]:
        """The decorated function, sync or async like ``func``.

        It builds the key itself and hands over to the driver's read-through: no method call in
        between, which on a hit would cost as much as the key (a coroutine, for async).
        """
        enabled, keys, disabled_context = self.rt.enabled, self.keys, self.m.disabled_context
        assert keys is not None
        build, entity_head, key_tail, use_case = keys.build, self._entity_head, self._key_tail, self.use_case
        key_error = self.key_error

        if inspect.iscoroutinefunction(func):
            aread_through = self.aread_through

            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                if not enabled.get():
                    disabled_context.inc()
                    return await func(*args, **kwargs)
                try:
                    id, pairs = build(args, kwargs)
                    entity = entity_head + id.translate(_ID) + "}"  # keys.entity_key, its head built once
                    urn = value_key(entity, pairs, use_case) if pairs else entity + key_tail
                except ArgumentsDoNotBind:  # the function's own TypeError, never a cached value
                    return await func(*args, **kwargs)
                except Exception as exc:
                    key_error(exc)
                    return await func(*args, **kwargs)
                return await aread_through(urn, entity, id, pairs, func, args, kwargs)

            return async_wrapper

        read_through = self.read_through

        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            if not enabled.get():
                disabled_context.inc()
                return func(*args, **kwargs)
            try:
                id, pairs = build(args, kwargs)
                entity = entity_head + id.translate(_ID) + "}"  # keys.entity_key, its head built once
                urn = value_key(entity, pairs, use_case) if pairs else entity + key_tail
            except ArgumentsDoNotBind:  # the function's own TypeError, never a cached value
                return func(*args, **kwargs)
            except Exception as exc:
                key_error(exc)
                return func(*args, **kwargs)
            return read_through(urn, entity, id, pairs, func, args, kwargs)

        return sync_wrapper

    # -- async driver ----------------------------------------------------------------------------

    async def aread_through(
        self,
        urn: str,
        entity: str,
        id: str,
        pairs: tuple[tuple[str, str], ...],
        func: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        if self.closed:
            self.used_after_close()
            return await self.afunction(LAYER_NONE, func, args, kwargs)
        if self.rt.provider is None:
            config = self.default_config or self._resolved(None)
        else:
            config = await self.aconfig(id, pairs)
        if config is None:
            return await self.afunction(LAYER_NONE, func, args, kwargs)
        local_ttl, remote_ttl = self.layers(config)
        if local_ttl:
            value = self.local_get(urn, entity)
            if value is not MISS:
                return value
        m = self.miss(urn, entity, config, local_ttl, remote_ttl)
        if m.reads_first:
            value = await (self.amerged_read(m) if self.tracked else self.aremote_read(m))
            if value is not MISS:
                return value
        owner = asyncio.current_task()
        while True:
            flight, leading = self.flight_for(m, owner)
            if leading:
                break
            self.m.joined.inc()
            if not await flight.await_done(self.patience(m)):
                return self.served_stale(m, "soft_timeout")
            if not flight.abandoned:
                return self.outcome(m, flight)
        if self.watch is not None:
            m.key = (id, pairs)  # for watch_key, if the leader runs the function
        patience = self.patience(m)
        if patience is None:
            await self.awork(m, flight, func, args, kwargs)
        else:  # the function may outlast the soft timeout: it goes on in the background
            task = asyncio.ensure_future(self.awork(m, flight, func, args, kwargs))
            self.rt.background.add(task)
            task.add_done_callback(self.rt.background.discard)
            if not await flight.await_done(patience):
                return self.served_stale(m, "soft_timeout")
        return flight.value if flight.error is None else self.outcome(m, flight)

    async def awork(
        self,
        m: Miss,
        flight: Flight,
        func: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        """The leader's part of a miss; its value or exception ends ``flight``."""
        try:
            value = MISS
            if m.remote_ttl and m.read_at == math.inf:  # an untracked read, shared with the joiners
                value = await self.aremote_read(m)
            if value is MISS and m.remote_ttl and m.config.lock_sec:
                value = await self.alock(m)
            if value is MISS:
                if m.key is not None:
                    self.watch_key(*m.key)
                try:
                    value = await self.afunction(
                        self.fallback_layer(m.local_ttl, m.remote_ttl), func, args, kwargs
                    )
                    await self.awrite_back(m, value)
                finally:
                    if m.token is not None:
                        await self.aunlock(m)
        except BaseException as exc:
            if m.stale is not MISS:
                flight.stale, flight.stale_layer = (m.stale,), m.stale_layer
            flight.fail(exc)
            self.flights.land(m.urn, flight, linger=m.reads_first)
            if not isinstance(exc, Exception):
                raise  # cancelled: the flight is abandoned, its waiters start over
            return
        flight.succeed(value)
        self.flights.land(m.urn, flight, linger=m.reads_first)

    async def amerged_read(self, m: Miss) -> Any:
        """Tracked: the REMOTE read of this call, merged with one of this key that another caller
        of this process started and has not sent yet.

        The rule: a caller may take another's read only while that read is not yet written to
        Redis. Redis then runs it after every invalidation that returned before this caller
        started, in any process, so its fence and value are as good as a read of the caller's
        own. A read already sent may have run before such an invalidation: it is never taken.
        """
        flight = self.reads.get(m.urn)
        if flight is not None and not flight.sent:
            await flight.await_done()
            if flight.error is None and not flight.abandoned:
                return self.merged(m, flight)
        flight = self.lead_read(m)
        try:
            value = await self.aremote_read(m, flight.mark_sent)
        except BaseException as exc:
            self.read_failed(m, flight, exc)
            raise
        self.read_landed(m, flight, value)
        return value

    async def aremote_read(self, m: Miss, sending: Callable[[], None] | None = None) -> Any:
        """The REMOTE value (LOCAL filled), or MISS; a failing Redis takes REMOTE out of this call."""
        remote = self.remote
        assert remote is not None
        self.m.request_remote.inc()
        reads = self._reads
        self._reads = reads + 1
        timed = not reads & _TIMING_MASK  # timing every read added a third to a hit's cost
        pttl = -1
        m.read_at = _monotonic()
        start = _perf() if timed else 0.0
        try:
            if self.tracked:
                fence, with_ttl = watermark_key(m.entity), bool(m.config.fail_safe_sec)
                read: TrackedRead | None = await remote.aread_tracked(
                    m.urn, fence, with_ttl=with_ttl, sending=sending
                )
                m.read = read
                raw, pttl = read.raw, read.pttl_ms  # type: ignore[union-attr]
            elif m.config.fail_safe_sec:
                read, (raw, pttl) = None, await remote.aget_with_ttl(m.urn)
            else:
                read, raw = None, await remote.aget(m.urn)
        except Exception as exc:
            self.remote_error(exc, "remote read failed")
            m.remote_ttl = 0
            return MISS
        if timed:
            self.m.get_remote.observe(_perf() - start)
        expired, flags = False, 0
        # The common hit, an untracked pickle without fail-safe, takes its payload at once.
        payload = untracked_pickle(raw) if self._plain and not m.config.fail_safe_sec else None
        if payload is None:
            found = self.to_load(m, raw, read, pttl)
            if found is None:
                return MISS
            payload, flags, expired = found
        if timed:
            start = _perf()
        try:
            codec = self.codec
            if codec.loads is not None:  # pickle: straight to C
                value = codec.loads(payload)
            else:
                value = await codec.aload(payload, flags) if codec.is_async else codec.load(payload, flags)
        except Exception as exc:
            self.m.miss("remote", "undecodable").inc()
            self.remote_error(exc, "stored value could not be loaded")
            return MISS
        if timed:
            self.m.load.observe(_perf() - start)
        if expired:
            self.keep_stale(m, value, "remote")
            return MISS
        if m.local_ttl:
            self.local_put(m.urn, m.entity, value, m.local_ttl, m.epoch, m.config.fail_safe_sec)
        return value

    async def awrite_back(self, m: Miss, value: Any) -> None:
        local_ttl, remote_ttl, grace = self.write_ttls(m)
        if m.remote_ttl:
            try:
                if not await self.aremote_put(m.urn, m.entity, value, remote_ttl, m.read, grace):
                    local_ttl = 0  # stale or too large: LOCAL must not keep it either
            except Exception as exc:
                self.remote_error(exc, "remote write failed")
        if local_ttl:
            self.local_put(m.urn, m.entity, value, local_ttl, m.epoch, grace)

    async def alock(self, m: Miss) -> Any:
        """Distributed single flight: MISS when this process is to run the function (holding the
        lock when it got it), else the value another process wrote meanwhile."""
        remote = self.remote
        assert remote is not None
        key, token = lock_key(m.urn), new_nonce()
        deadline = _monotonic() + m.config.lock_sec
        pause = _LOCK_POLL[0]
        try:
            while True:
                if await remote.atry_lock(key, token, int(m.config.lock_sec * 1000)):
                    m.token = token
                    # Another process may have written the value and let go of the lock between
                    # this call's read and its lock: read once more before running the function.
                    value = await self.aremote_read(m)
                    if value is not MISS:
                        await self.aunlock(m)
                        self.m.single_flight("lock_waited").inc()
                        return value
                    self.m.single_flight("lock_acquired").inc()
                    return MISS
                if _monotonic() + pause > deadline:
                    break
                await asyncio.sleep(pause)
                pause = min(pause * 2, _LOCK_POLL[1])
                value = await self.aremote_read(m)
                if value is not MISS:
                    self.m.single_flight("lock_waited").inc()
                    return value
                if not m.remote_ttl:
                    return MISS
        except Exception as exc:
            self.remote_error(exc, "distributed lock failed")
            return MISS
        self.m.single_flight("lock_timeout").inc()
        return MISS

    async def aunlock(self, m: Miss) -> None:
        assert self.remote is not None
        assert m.token is not None
        try:
            await self.remote.aunlock(lock_key(m.urn), m.token)
        except Exception as exc:
            self.remote_error(exc, "distributed lock release failed")  # it expires by itself
        m.token = None

    async def aconfig(self, id: str, pairs: tuple[tuple[str, str], ...]) -> GCacheKeyConfig | None:
        provider = self.rt.provider
        if provider is None:
            return self._resolved(None)
        reused = self._reused
        if reused is not None and reused[1] > _monotonic():
            return self._resolved(reused[0])
        try:
            provided = provider(self.make_key(id, pairs))
            if inspect.isawaitable(provided):
                provided = await provided
        except Exception as exc:
            self._config_error(exc)
            return None
        self._keep(provided)
        return self._resolved(provided)

    async def aremote_put(
        self, urn: str, entity: str, value: Any, ttl: float, read: TrackedRead | None, grace: float = 0.0
    ) -> bool:
        """Write to Redis for ``ttl`` (+ ``grace``); False when refused as stale or too large."""
        remote = self.remote
        assert remote is not None
        start = _perf()
        payload, flags = await self.codec.adump(value) if self.codec.is_async else self.codec.dump(value)
        self.m.dump.observe(_perf() - start)
        envelope = self.envelope(payload, flags)
        if envelope is None:
            return False
        ttl_ms = max(1, int((ttl + grace) * 1000))
        if self.tracked:
            t0, nonce = (read.now_us, read.nonce) if read is not None else (None, None)
            return self.wrote(
                await remote.awrite_tracked(urn, watermark_key(entity), t0, ttl_ms, nonce, envelope)
            )
        await remote.aset(urn, envelope, ttl_ms)
        return self.wrote(1)

    async def afunction(
        self, layer: str, func: Callable[..., Awaitable[Any]], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        start = _perf()
        try:
            return await func(*args, **kwargs)
        except Exception as exc:
            self.function_failed(layer, exc)
            raise
        finally:
            self.m.fallback(layer).observe(_perf() - start)

    # -- sync driver: the same steps; remote I/O on the sync client, in the caller's thread -----

    def read_through(
        self,
        urn: str,
        entity: str,
        id: str,
        pairs: tuple[tuple[str, str], ...],
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        if self.closed:
            self.used_after_close()
            return self.function(LAYER_NONE, func, args, kwargs)
        if self.rt.provider is None:
            config = self.default_config or self._resolved(None)
        else:
            config = self.config(id, pairs)
        if config is None:
            return self.function(LAYER_NONE, func, args, kwargs)
        local_ttl, remote_ttl = self.layers(config)
        if local_ttl:
            value = self.local_get(urn, entity)
            if value is not MISS:
                return value
        m = self.miss(urn, entity, config, local_ttl, remote_ttl, shared_read=False)
        if m.reads_first:
            value = self.merged_read(m) if self.tracked else self.remote_read(m)
            if value is not MISS:
                return value
        owner = threading.get_ident()
        while True:
            flight, leading = self.flight_for(m, owner)
            if leading:
                break
            self.m.joined.inc()
            if not flight.wait(self.patience(m)):
                return self.served_stale(m, "soft_timeout")
            if not flight.abandoned:
                return self.outcome(m, flight)
        if self.watch is not None:
            m.key = (id, pairs)  # for watch_key, if the leader runs the function
        patience = self.patience(m)
        if patience is None:
            self.work(m, flight, func, args, kwargs)
        else:  # the function may outlast the soft timeout: it goes on on a worker thread
            context = contextvars.copy_context()
            self.rt.workers().submit(context.run, self.work, m, flight, func, args, kwargs)
            if not flight.wait(patience):
                return self.served_stale(m, "soft_timeout")
        return flight.value if flight.error is None else self.outcome(m, flight)

    def work(
        self,
        m: Miss,
        flight: Flight,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        """The leader's part of a miss; its value or exception ends ``flight``."""
        try:
            value = MISS
            if m.remote_ttl and m.read_at == math.inf:  # an untracked read, shared with the joiners
                value = self.remote_read(m)
            if value is MISS and m.remote_ttl and m.config.lock_sec:
                value = self.lock(m)
            if value is MISS:
                if m.key is not None:
                    self.watch_key(*m.key)
                try:
                    value = self.function(self.fallback_layer(m.local_ttl, m.remote_ttl), func, args, kwargs)
                    self.write_back(m, value)
                finally:
                    if m.token is not None:
                        self.unlock(m)
        except BaseException as exc:
            if m.stale is not MISS:
                flight.stale, flight.stale_layer = (m.stale,), m.stale_layer
            flight.fail(exc)
            self.flights.land(m.urn, flight, linger=m.reads_first)
            if not isinstance(exc, Exception):
                raise  # interrupted: the flight is abandoned, its waiters start over
            return
        flight.succeed(value)
        self.flights.land(m.urn, flight, linger=m.reads_first)

    def merged_read(self, m: Miss) -> Any:
        """Sync twin of :meth:`amerged_read`: threads wait for the read another thread leads."""
        flight = self.reads.get(m.urn)
        if flight is not None and not flight.sent:
            flight.wait()
            if flight.error is None and not flight.abandoned:
                return self.merged(m, flight)
        flight = self.lead_read(m)
        try:
            value = self.remote_read(m, flight.mark_sent)
        except BaseException as exc:
            self.read_failed(m, flight, exc)
            raise
        self.read_landed(m, flight, value)
        return value

    def remote_read(self, m: Miss, sending: Callable[[], None] | None = None) -> Any:
        """Sync twin of :meth:`aremote_read`."""
        remote = self.remote
        assert remote is not None
        self.m.request_remote.inc()
        reads = self._reads
        self._reads = reads + 1
        timed = not reads & _TIMING_MASK  # timing every read added a third to a hit's cost
        pttl = -1
        m.read_at = _monotonic()
        start = _perf() if timed else 0.0
        try:
            if self.tracked:
                fence, with_ttl = watermark_key(m.entity), bool(m.config.fail_safe_sec)
                read: TrackedRead | None = remote.read_tracked(
                    m.urn, fence, with_ttl=with_ttl, sending=sending
                )
                m.read = read
                raw, pttl = read.raw, read.pttl_ms  # type: ignore[union-attr]
            elif m.config.fail_safe_sec:
                read, (raw, pttl) = None, remote.get_with_ttl(m.urn)
            else:
                read, raw = None, remote.get(m.urn)
        except Exception as exc:
            self.remote_error(exc, "remote read failed")
            m.remote_ttl = 0
            return MISS
        if timed:
            self.m.get_remote.observe(_perf() - start)
        expired, flags = False, 0
        # The common hit, an untracked pickle without fail-safe, takes its payload at once.
        payload = untracked_pickle(raw) if self._plain and not m.config.fail_safe_sec else None
        if payload is None:
            found = self.to_load(m, raw, read, pttl)
            if found is None:
                return MISS
            payload, flags, expired = found
        if timed:
            start = _perf()
        try:
            codec = self.codec
            if codec.loads is not None:  # pickle: straight to C
                value = codec.loads(payload)
            elif codec.is_async:
                value = self.rt.loop_thread.run(lambda: codec.aload(payload, flags))
            else:
                value = codec.load(payload, flags)
        except Exception as exc:
            self.m.miss("remote", "undecodable").inc()
            self.remote_error(exc, "stored value could not be loaded")
            return MISS
        if timed:
            self.m.load.observe(_perf() - start)
        if expired:
            self.keep_stale(m, value, "remote")
            return MISS
        if m.local_ttl:
            self.local_put(m.urn, m.entity, value, m.local_ttl, m.epoch, m.config.fail_safe_sec)
        return value

    def write_back(self, m: Miss, value: Any) -> None:
        local_ttl, remote_ttl, grace = self.write_ttls(m)
        if m.remote_ttl:
            try:
                if not self.remote_put(m.urn, m.entity, value, remote_ttl, m.read, grace):
                    local_ttl = 0  # stale or too large: LOCAL must not keep it either
            except Exception as exc:
                self.remote_error(exc, "remote write failed")
        if local_ttl:
            self.local_put(m.urn, m.entity, value, local_ttl, m.epoch, grace)

    def lock(self, m: Miss) -> Any:
        """Sync twin of :meth:`alock`."""
        remote = self.remote
        assert remote is not None
        key, token = lock_key(m.urn), new_nonce()
        deadline = _monotonic() + m.config.lock_sec
        pause = _LOCK_POLL[0]
        try:
            while True:
                if remote.try_lock(key, token, int(m.config.lock_sec * 1000)):
                    m.token = token
                    value = self.remote_read(m)  # see alock: the value may have landed meanwhile
                    if value is not MISS:
                        self.unlock(m)
                        self.m.single_flight("lock_waited").inc()
                        return value
                    self.m.single_flight("lock_acquired").inc()
                    return MISS
                if _monotonic() + pause > deadline:
                    break
                time.sleep(pause)
                pause = min(pause * 2, _LOCK_POLL[1])
                value = self.remote_read(m)
                if value is not MISS:
                    self.m.single_flight("lock_waited").inc()
                    return value
                if not m.remote_ttl:
                    return MISS
        except Exception as exc:
            self.remote_error(exc, "distributed lock failed")
            return MISS
        self.m.single_flight("lock_timeout").inc()
        return MISS

    def unlock(self, m: Miss) -> None:
        assert self.remote is not None
        assert m.token is not None
        try:
            self.remote.unlock(lock_key(m.urn), m.token)
        except Exception as exc:
            self.remote_error(exc, "distributed lock release failed")  # it expires by itself
        m.token = None

    def config(self, id: str, pairs: tuple[tuple[str, str], ...]) -> GCacheKeyConfig | None:
        provider = self.rt.provider
        if provider is None:
            return self._resolved(None)
        reused = self._reused
        if reused is not None and reused[1] > _monotonic():
            return self._resolved(reused[0])
        try:
            provided = provider(self.make_key(id, pairs))
            if inspect.isawaitable(provided):
                awaitable = provided
                provided = self.rt.loop_thread.run(lambda: awaitable)
        except Exception as exc:
            self._config_error(exc)
            return None
        self._keep(provided)
        return self._resolved(provided)

    def remote_put(
        self, urn: str, entity: str, value: Any, ttl: float, read: TrackedRead | None, grace: float = 0.0
    ) -> bool:
        remote = self.remote
        assert remote is not None
        start = _perf()
        payload, flags = (
            self.rt.loop_thread.run(lambda: self.codec.adump(value))
            if self.codec.is_async
            else self.codec.dump(value)
        )
        self.m.dump.observe(_perf() - start)
        envelope = self.envelope(payload, flags)
        if envelope is None:
            return False
        ttl_ms = max(1, int((ttl + grace) * 1000))
        if self.tracked:
            t0, nonce = (read.now_us, read.nonce) if read is not None else (None, None)
            return self.wrote(remote.write_tracked(urn, watermark_key(entity), t0, ttl_ms, nonce, envelope))
        remote.set(urn, envelope, ttl_ms)
        return self.wrote(1)

    def function(
        self, layer: str, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        start = _perf()
        try:
            return func(*args, **kwargs)
        except Exception as exc:
            self.function_failed(layer, exc)
            raise
        finally:
            self.m.fallback(layer).observe(_perf() - start)
