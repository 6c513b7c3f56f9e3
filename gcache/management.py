"""What a GCache does besides decorating: direct key access, invalidation, deletion, flushing,
and what other processes' invalidations (the bus) and the breaker do to this one.

Each operation acts on the layers a use case has; a Redis failure is counted, logged and raised
to the caller as :class:`~gcache.errors.RemoteError` (an invalidation is never skipped silently:
one Redis did not take also waits in the outbox, :mod:`gcache.outbox`, until it does).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from typing import Any

from gcache._log import ErrorLog
from gcache.bus import BusMessage, InvalidationBus
from gcache.config import GCacheConfig, GCacheKeyConfig
from gcache.errors import ConfigError, FutureBufferTooLargeError, RemoteError, ReplicasNotConfirmed
from gcache.keys import GCacheKey
from gcache.local import LocalLayer
from gcache.metrics import LAYER_LOCAL, LAYER_REMOTE, Metrics
from gcache.outbox import InvalidationOutbox, Pending
from gcache.readthrough import Runtime, UseCase
from gcache.readthrough.decisions import Miss
from gcache.readthrough.reporting import too_long
from gcache.remote import RemoteCache
from gcache.urns import (
    PartHasher,
    entity_key,
    entity_of,
    key_type_of,
    original_entity_key,
    original_value_key,
    owned_by,
    typed_part,
    value_key,
    watermark_key,
)

__all__ = ["MAX_DIRECT_USE_CASES", "OTHER_KEY_TYPES", "Management"]

MAX_DIRECT_USE_CASES = 1000  # distinct (use case, key type, tracking) names through direct access

OTHER_KEY_TYPES = "other"  # the label of bus messages for key types this process does not cache


class Management:
    """The management operations of :class:`~gcache.GCache` (a mixin: GCache holds the state).

    About 280 lines: a sync and an async twin of each of six operations, and the bus's three
    callbacks; splitting them would part each twin from the checks it shares.
    """

    config: GCacheConfig
    _prefix: str
    _enabled: ContextVar[int]
    _metrics: Metrics
    _local: LocalLayer
    _remote: RemoteCache | None
    _errors: ErrorLog
    _runtime: Runtime
    _direct: dict[tuple[Any, ...], UseCase]
    _direct_names: set[tuple[str, str, bool]]
    _use_cases: weakref.WeakSet[UseCase]
    _key_types: set[str]
    _closed: bool
    _bus: InvalidationBus | None
    _bus_up: threading.Event
    _outbox: InvalidationOutbox
    _hasher: PartHasher | None
    _use_case: Callable[..., UseCase]  # GCache's: registers a use case

    def _for_key(self, key: GCacheKey) -> UseCase:
        if not isinstance(key, GCacheKey):
            raise ConfigError(f"expected a GCacheKey, got {key!r}")
        ident = (
            key.use_case,
            key.key_type,
            key.invalidation_tracking,
            id(key.default_config),
            id(key.serializer),
        )
        uc = self._direct.get(ident)
        if uc is None:
            name = (key.use_case, key.key_type, key.invalidation_tracking)
            if name not in self._direct_names:
                # Each name keeps a LOCAL store and metric series for good: names from caller
                # input would grow them without end.
                if len(self._direct_names) >= MAX_DIRECT_USE_CASES:
                    raise ConfigError(
                        f"direct access: use case {key.use_case!r} would be the "
                        f"{MAX_DIRECT_USE_CASES + 1}th name used through aget/aput/adelete; each keeps a "
                        "LOCAL store and metric series, so use case names must be a fixed set, not input"
                    )
                self._direct_names.add(name)
            if len(self._direct) > 1000:
                self._direct.clear()
            uc = self._direct[ident] = self._use_case(
                key.use_case,
                key.key_type,
                key.invalidation_tracking,
                key.default_config,
                key.serializer,
                None,
            )
        return uc

    def _part(self, key_type: str) -> Callable[[Any], str]:
        """How an id or argument value of ``key_type`` becomes a key part, as calls render it:
        ``str()`` or with its type (``typed_keys``), a long one by its hash (``key_hash_secret``)."""
        part: Callable[[Any], str] = typed_part if self.config.typed_for(key_type) else str
        hasher = self._hasher
        if hasher is None:
            return part
        return lambda value: hasher(part(value))

    def _where(self, key: GCacheKey) -> tuple[UseCase, str, str, tuple[tuple[str, str], ...]]:
        """Raises KeyTooLongError for a key over ``max_key_length``: direct access raises it."""
        uc = self._for_key(key)
        if self.config.legacy_compat:  # the original's keys (see urns.original_value_key)
            entity, pairs = original_entity_key(self._prefix, key.key_type, key.id), tuple(key.args)
            urn = original_value_key(entity, pairs, key.use_case, tracked=key.invalidation_tracking)
        elif self._hasher is None and not self.config.typed_keys:
            entity, pairs = entity_key(self._prefix, key.key_type, key.id), tuple(key.args)
            urn = value_key(entity, pairs, key.use_case)
        else:  # as calls key them: with types, long parts by their hash
            part = self._part(key.key_type)
            entity = entity_key(self._prefix, key.key_type, part(key.given_id))
            pairs = tuple((name, part(value)) for name, value in key.given_args)
            urn = value_key(entity, pairs, key.use_case)
        if len(urn) > self.config.max_key_length:
            raise too_long(urn, self.config.max_key_length)
        return uc, entity, urn, pairs

    # -- direct key access -----------------------------------------------------------------------

    async def aget(self, key: GCacheKey, fallback: Callable[[], Awaitable[Any]]) -> Any:
        """Read ``key`` through the layers; on a miss ``fallback()`` computes the value.

        Follows the same rules as a cached function, ``enable()`` and ``refresh()`` included.
        """
        uc, entity, urn, pairs = self._where(key)
        flag = self._enabled.get()
        if not flag:
            uc.m.disabled_context.inc()
            return await fallback()
        return await uc.aread_through(urn, entity, key.id, pairs, fallback, (), {}, refresh=flag is not True)

    def get(self, key: GCacheKey, fallback: Callable[[], Any]) -> Any:
        """Sync twin of :meth:`aget`; ``fallback`` is a plain function."""
        uc, entity, urn, pairs = self._where(key)
        flag = self._enabled.get()
        if not flag:
            uc.m.disabled_context.inc()
            return fallback()
        return uc.read_through(urn, entity, key.id, pairs, fallback, (), {}, refresh=flag is not True)

    async def aput(self, key: GCacheKey, value: Any) -> None:
        """Write ``value`` to every layer the key's config turns on, without calling a fallback.

        A tracked key first reads its fence (creating it if need be) and is stamped with the
        server time of that read, so invalidations that happened before it do not hide it and
        later ones do; the entry is signed with what the read returned. Failures are counted,
        not raised.
        """
        target = self._put_target(key)
        if target is None:
            return
        uc, entity, urn, pairs = target
        config = await uc.aconfig(key.id, pairs)
        if config is None:
            return
        local_ttl, remote_ttl = uc.layers(config, urn)
        await uc.awrite_back(uc.miss(urn, entity, config, local_ttl, remote_ttl, stale=False), value)

    def put(self, key: GCacheKey, value: Any) -> None:
        """Sync twin of :meth:`aput`."""
        target = self._put_target(key)
        if target is None:
            return
        uc, entity, urn, pairs = target
        config = uc.config(key.id, pairs)
        if config is None:
            return
        local_ttl, remote_ttl = uc.layers(config, urn)
        uc.write_back(uc.miss(urn, entity, config, local_ttl, remote_ttl, stale=False), value)

    async def adelete(self, key: GCacheKey) -> bool:
        """Remove one entry from both layers; True if either held it.

        Raises:
            RemoteError: Redis failed (the LOCAL entry is gone all the same).
        """
        uc, _entity, urn, _pairs = self._where(key)
        uc.flights.forget(urn)
        deleted = self._local.delete(urn)
        if uc.remote is not None:
            deleted = await self._remote_op(uc.remote.adelete(urn), key.key_type) or deleted
            self._metrics.bus_message.labels(key.key_type, "published", "delete").inc()
        return deleted

    def _groups(
        self, keys: Iterable[GCacheKey]
    ) -> list[tuple[UseCase, list[GCacheKey], tuple[tuple[str, str], ...]]]:
        """``keys`` by use case and other arguments: each group is one batch read."""
        groups: dict[tuple[Any, ...], tuple[UseCase, list[GCacheKey], tuple[tuple[str, str], ...]]] = {}
        for key in keys:
            uc, _entity, _urn, pairs = self._where(key)
            group = groups.setdefault((id(uc), pairs), (uc, [], pairs))
            group[1].append(key)
        return list(groups.values())

    def _batch_ids(self, keys: list[GCacheKey]) -> tuple[list[str], dict[str, GCacheKey]]:
        """One group's (one key type's) rendered ids, distinct, and the key of each."""
        part = self._part(keys[0].key_type)
        originals: dict[str, GCacheKey] = {}
        for key in keys:
            originals.setdefault(part(key.given_id), key)
        return list(originals), originals

    async def aget_many(
        self,
        keys: Iterable[GCacheKey],
        fallback: Callable[[list[GCacheKey]], Awaitable[Mapping[GCacheKey, Any]]],
    ) -> dict[GCacheKey, Any]:
        """:meth:`aget` of many keys: LOCAL, then REMOTE in one round trip per use case (and other
        arguments), then ``fallback(missing keys)`` once per group, its values written back. Returns
        the keys that have a value, in the given order (a key ``fallback`` leaves out has none)."""
        keys = list(keys)
        flag = self._enabled.get()
        if not flag:  # off: uncached
            return dict(await fallback(keys))
        found: dict[GCacheKey, Any] = {}
        for uc, group, pairs in self._groups(keys):  # inside refresh(): fallback runs, values replaced
            ids, originals = self._batch_ids(group)
            read = uc.aread_many(
                ids, originals, pairs, fallback, (group,), {}, _replace_keys, flag is not True
            )
            found.update(await read)
        return {key: found[key] for key in keys if key in found}

    def get_many(
        self, keys: Iterable[GCacheKey], fallback: Callable[[list[GCacheKey]], Mapping[GCacheKey, Any]]
    ) -> dict[GCacheKey, Any]:
        """Sync twin of :meth:`aget_many`; ``fallback`` is a plain function."""
        keys = list(keys)
        flag = self._enabled.get()
        if not flag:
            return dict(fallback(keys))
        found: dict[GCacheKey, Any] = {}
        for uc, group, pairs in self._groups(keys):
            ids, originals = self._batch_ids(group)
            refresh = flag is not True
            found.update(uc.read_many(ids, originals, pairs, fallback, (group,), {}, _replace_keys, refresh))
        return {key: found[key] for key in keys if key in found}

    async def aput_many(self, items: Mapping[GCacheKey, Any]) -> None:
        """:meth:`aput` of many items: per use case, the tracked keys' fences read in one round
        trip, then every REMOTE write in one (one per node of a cluster), then LOCAL."""
        batches: _PutBatches = {}
        for key, value in items.items():
            target = self._put_target(key)
            if target is not None:
                uc, entity, urn, pairs = target
                _add_put(batches, uc, entity, urn, await uc.aconfig(key.id, pairs), value)
        for uc, writes in batches.values():
            await uc.aread_fences([m for m, _ in writes])
            await uc.awrite_back_many(writes)

    def put_many(self, items: Mapping[GCacheKey, Any]) -> None:
        """Sync twin of :meth:`aput_many`."""
        batches: _PutBatches = {}
        for key, value in items.items():
            target = self._put_target(key)
            if target is not None:
                uc, entity, urn, pairs = target
                _add_put(batches, uc, entity, urn, uc.config(key.id, pairs), value)
        for uc, writes in batches.values():
            uc.read_fences([m for m, _ in writes])
            uc.write_back_many(writes)

    def _put_target(self, key: GCacheKey) -> tuple[UseCase, str, str, tuple[tuple[str, str], ...]] | None:
        """Where a put of ``key`` goes; None after its use case was closed (told)."""
        where = self._where(key)
        if where[0].closed:
            where[0].used_after_close()
            return None
        return where

    async def adelete_many(self, keys: Iterable[GCacheKey]) -> int:
        """:meth:`adelete` of each key; how many existed."""
        return sum([await self.adelete(key) for key in keys])

    def delete_many(self, keys: Iterable[GCacheKey]) -> int:
        """Sync twin of :meth:`adelete_many`."""
        return sum(self.delete(key) for key in keys)

    def delete(self, key: GCacheKey) -> bool:
        """Sync twin of :meth:`adelete`."""
        uc, _entity, urn, _pairs = self._where(key)
        uc.flights.forget(urn)
        deleted = self._local.delete(urn)
        if uc.remote is not None:
            remote = uc.remote
            deleted = self._remote_sync_op(lambda: remote.delete(urn), key.key_type) or deleted
            self._metrics.bus_message.labels(key.key_type, "published", "delete").inc()
        return deleted

    # -- invalidation and flushing ---------------------------------------------------------------

    def _check_buffer(self, future_buffer_ms: Any) -> None:
        if (
            isinstance(future_buffer_ms, bool)
            or not isinstance(future_buffer_ms, int)
            or future_buffer_ms < 0
        ):
            raise ConfigError(
                f"invalidate(): future_buffer_ms must be a non-negative integer, got {future_buffer_ms!r}"
            )
        if future_buffer_ms > self.config.max_future_buffer_ms:
            raise FutureBufferTooLargeError(
                f"invalidate(): future_buffer_ms={future_buffer_ms} exceeds max_future_buffer_ms="
                f"{self.config.max_future_buffer_ms}"
            )

    def _fence(self, key_type: str, id: Any, future_buffer_ms: int) -> tuple[str, str]:
        if not isinstance(key_type, str) or not key_type:
            raise ConfigError(f"invalidate(): key_type must be a non-empty string, got {key_type!r}")
        self._check_buffer(future_buffer_ms)
        if key_type not in self._key_types:
            self._unknown_key_type(key_type)
        id = self._part(key_type)(id)
        if self.config.legacy_compat:
            entity = original_entity_key(self._prefix, key_type, id)
        else:
            entity = entity_key(self._prefix, key_type, id)
        self._local.invalidate(entity, key_type, future_buffer_ms / 1000)
        self._metrics.invalidation.labels(key_type, LAYER_LOCAL).inc()
        return entity, watermark_key(entity)

    def _unknown_key_type(self, key_type: str) -> None:
        known = ", ".join(repr(k) for k in sorted(self._key_types)) or "none: it has no use case yet"
        self._errors.once(
            ("unknown_key_type", key_type),
            f"invalidate({key_type!r}, ...): no use case of this GCache has key_type {key_type!r} "
            f"(its key types: {known}); a typo? Applied all the same, as another process may cache it",
        )

    async def ainvalidate(self, key_type: str, id: Any, future_buffer_ms: int = 0) -> None:
        """Make every tracked entry of the entity stale, in this process at once and in Redis.

        When this returns, no call that starts afterwards is served an entry computed before it.
        ``future_buffer_ms`` also makes entries computed in the next milliseconds stale, for
        sources that lag (read replicas).

        When Redis does not take it, it waits in the invalidation outbox (``invalidation_outbox_size``)
        and is replayed until Redis does; meanwhile this process runs the entity's tracked calls
        uncached (neither REMOTE nor LOCAL), so it serves none of its old entries.

        Raises:
            FutureBufferTooLargeError: the buffer is above ``max_future_buffer_ms``.
            RemoteError: Redis did not take the invalidation. Kept in the outbox, it raises all
                the same unless ``invalidation_outbox_raises`` is False (retrying is safe: a
                retry merges with the waiting one, or applies it); not kept (no outbox), the
                entity's REMOTE entries may be served until their TTL. With
                ``invalidate_replicas``, also when the primary took it but too few replicas
                confirmed it in time (``cause``: ``ReplicasNotConfirmed``; not kept): it holds
                unless the primary fails over, and then reads fail closed (README, "Guarantees
                through failover"); retry it to be sure.
        """
        entity, fence = self._fence(key_type, id, future_buffer_ms)
        if self._remote is not None and not self._closed:
            waiting = self._outbox.version(fence)
            try:
                await self._remote.ainvalidate(fence, future_buffer_ms)
            except RemoteError as exc:
                if self._not_taken(exc, entity, fence, key_type, future_buffer_ms, waiting):
                    raise
                return
            self._taken(entity, fence, key_type, future_buffer_ms, waiting)

    def invalidate(self, key_type: str, id: Any, future_buffer_ms: int = 0) -> None:
        """Sync twin of :meth:`ainvalidate`."""
        entity, fence = self._fence(key_type, id, future_buffer_ms)
        if self._remote is not None and not self._closed:
            waiting = self._outbox.version(fence)
            try:
                self._remote.invalidate(fence, future_buffer_ms)
            except RemoteError as exc:
                if self._not_taken(exc, entity, fence, key_type, future_buffer_ms, waiting):
                    raise
                return
            self._taken(entity, fence, key_type, future_buffer_ms, waiting)

    def _taken(self, entity: str, fence: str, key_type: str, future_buffer_ms: int, waiting: int) -> None:
        """Redis took the invalidation: applied here too, and the one waiting in the outbox when it
        was sent (``waiting``: its version) is done if it covers it."""
        self._invalidated_remotely(entity, key_type, future_buffer_ms)
        self._outbox.applied(fence, future_buffer_ms, waiting)

    def _not_taken(
        self, exc: RemoteError, entity: str, fence: str, key_type: str, future_buffer_ms: int, waiting: int
    ) -> bool:
        """An invalidation that failed in Redis, counted and logged; whether to raise it.

        One the primary applied but too few replicas confirmed (``WAIT``) is taken as applied
        (the second epoch bump) and raised, not kept: replaying cannot make a replica confirm
        sooner, and a failover fails closed. Any other goes to the outbox, and the entity's epoch
        is bumped again once it is held: a read that started after the first bump read REMOTE's
        old entry (its watermark never rose), and its LOCAL fill must not be served."""
        if isinstance(exc.cause, ReplicasNotConfirmed):
            self._management_failed(exc, key_type)
            self._taken(entity, fence, key_type, future_buffer_ms, waiting)
            return True
        kept = self._outbox.keep(entity, fence, key_type, future_buffer_ms)
        if kept:  # held now; what a read filled LOCAL with since the first bump is stale too
            self._local.invalidate(entity, key_type, future_buffer_ms / 1000)
        raises = not kept or self.config.invalidation_outbox_raises
        if not kept:
            fate = "raised to the caller"
        elif raises:
            fate = "kept in the outbox for replay, and raised to the caller"
        else:
            fate = "kept in the outbox for replay"
        self._management_failed(exc, key_type, fate)
        return raises

    async def _replay(self, items: Sequence[Pending]) -> list[str | RemoteError]:
        """The outbox's replay of a chunk of invalidations (on the loop thread), each as
        ``ainvalidate`` applies it, all in one round trip (one per cluster node): ``"applied"``,
        ``"unconfirmed"`` (the primary took it, too few replicas confirmed it), or the
        ``RemoteError`` of one Redis did not take; raises ``RemoteError`` when Redis took none."""
        remote = self._remote
        assert remote is not None
        results: list[str | RemoteError] = []
        replies = await remote.ainvalidate_many([(item.fence, item.buffer_ms) for item in items])
        for item, reply in zip(items, replies, strict=True):
            result = "applied"
            if isinstance(reply, RemoteError):
                if not isinstance(reply.cause, ReplicasNotConfirmed):
                    results.append(reply)
                    continue
                result = "unconfirmed"
            self._invalidated_remotely(item.entity, item.key_type, item.buffer_ms)
            results.append(result)
        return results

    def _invalidated_remotely(self, entity: str, key_type: str, future_buffer_ms: int) -> None:
        # A read in this process between the first LOCAL bump and the watermark's rise took the
        # new epoch yet read the still-fresh REMOTE value; bumping again makes its fill stale.
        self._local.invalidate(entity, key_type, future_buffer_ms / 1000)
        self._metrics.invalidation.labels(key_type, LAYER_REMOTE).inc()
        self._metrics.bus_message.labels(key_type, "published", "invalidate").inc()

    async def aflushall(self) -> int:
        """Delete every entry of this cache: LOCAL, and the Redis keys under ``urn_prefix``.

        Uses SCAN and UNLINK on this cache's prefix only, never FLUSHALL/FLUSHDB. Returns the
        number of Redis keys deleted.
        """
        self._flush_local()
        if self._remote is None or self._closed:
            return 0
        deleted: int = await self._remote_op(self._remote.aflush(self._prefix), "*")
        return deleted

    def flushall(self) -> int:
        """Sync twin of :meth:`aflushall`."""
        self._flush_local()
        if self._remote is None or self._closed:
            return 0
        remote = self._remote
        deleted: int = self._remote_sync_op(lambda: remote.flush(self._prefix), "*")
        return deleted

    def _flush_local(self) -> None:
        self._local.clear("flushed")
        for uc in list(self._use_cases):
            uc.flights.clear()
            uc.reads.clear()

    async def _remote_op(self, op: Awaitable[Any], key_type: str) -> Any:
        try:
            return await op
        except RemoteError as exc:
            self._management_failed(exc, key_type)
            raise

    def _remote_sync_op(self, op: Callable[[], Any], key_type: str) -> Any:
        try:
            return op()
        except RemoteError as exc:
            self._management_failed(exc, key_type)
            raise

    def _management_failed(self, exc: RemoteError, key_type: str, fate: str = "raised to the caller") -> None:
        self._metrics.error.labels("", key_type, LAYER_REMOTE, type(exc.cause).__name__, "False").inc()
        self._runtime.errors.warning(("", exc.operation, fate), f"{exc} ({fate})")

    # -- the invalidation bus (called on gcache's loop thread) ----------------------------------

    def _on_bus_message(self, message: BusMessage, lag_sec: float) -> None:
        """Apply another process's invalidation, deletion or flush to LOCAL.

        Anyone who can PUBLISH on the channel can send one: a target outside this cache's
        prefix is refused (ValueError: the bus counts it as dropped), a future buffer is capped
        at ``max_future_buffer_ms`` as ``invalidate()`` caps its own, and only key types this
        process has use cases for get a label of their own (the others count as ``other``), so
        forged messages cannot grow the metrics' series.
        """
        if message.kind == "flush":
            self._local.clear("flushed")
            key_type = ""
        else:
            if not owned_by(message.target, self._prefix):
                raise ValueError(f"target outside prefix {self._prefix!r}")
            entity = entity_of(message.target)
            key_type = key_type_of(entity, self._prefix)
            if message.kind == "invalidate":
                buffer_ms = min(message.buffer_ms, self.config.max_future_buffer_ms)
                self._local.invalidate(entity, key_type, buffer_ms / 1000)
            else:
                self._local.delete(message.target)
        label = key_type if key_type in self._key_types or not key_type else OTHER_KEY_TYPES
        self._metrics.bus_message.labels(label, "received", message.kind).inc()
        self._metrics.bus_lag.observe(lag_sec)

    def _on_bus_dropped(self, reason: str) -> None:
        self._metrics.bus_message.labels("", "dropped", reason).inc()

    def _on_bus_up(self) -> None:
        self._outbox.wake()  # Redis answers again
        self._local.trust()
        self._bus_up.set()
        self._metrics.bus_connected.inc()
        if self._bus is not None and self._bus.connections > 1:
            self._metrics.bus_reconnect.inc()

    def _on_bus_down(self) -> None:
        self._bus_up.clear()
        self._local.distrust()
        self._metrics.bus_connected.dec()

    def _on_breaker(self, is_open: bool) -> None:
        if is_open:
            self._metrics.breaker_open.inc()
            self._metrics.breaker_transition.labels("open").inc()
            self._errors.warning(
                ("breaker", self._prefix),
                f"Redis is failing: circuit breaker open, REMOTE skipped for {self._prefix!r} until "
                "a probe gets an answer",
            )
        else:
            self._outbox.wake()
            self._metrics.breaker_open.dec()
            self._metrics.breaker_transition.labels("closed").inc()
            self._errors.info(
                ("breaker", self._prefix, "closed"),
                f"Redis answers again: circuit breaker closed, REMOTE back for {self._prefix!r}",
            )

    def _on_node_breaker(self, node: str, is_open: bool) -> None:
        """A cluster node's breaker (``RedisConfig(cluster=True)``): its slots alone out of REMOTE."""
        self._metrics.breaker_node_open.labels(node).set(1 if is_open else 0)
        if is_open:
            self._metrics.breaker_open.inc()
            self._metrics.breaker_transition.labels("open").inc()
            self._errors.warning(
                ("breaker", self._prefix, node),
                f"Redis cluster node {node} is failing: its breaker is open, REMOTE skipped for its "
                f"slots of {self._prefix!r} until a probe gets an answer or its slots move",
            )
        else:
            self._metrics.breaker_open.dec()
            self._metrics.breaker_transition.labels("closed").inc()
            self._errors.info(
                ("breaker", self._prefix, node, "closed"),
                f"Redis cluster node {node} answers again: its breaker closed for {self._prefix!r}",
            )


_PutBatches = dict[int, tuple[UseCase, list[tuple[Miss, Any]]]]  # by use case: its misses and values


def _add_put(
    batches: _PutBatches, uc: UseCase, entity: str, urn: str, config: GCacheKeyConfig | None, value: Any
) -> None:
    """A put's miss (the layers its config turns on) into its use case's batch; none without a config."""
    if config is not None:
        local_ttl, remote_ttl = uc.layers(config, urn)
        m = uc.miss(urn, entity, config, local_ttl, remote_ttl, stale=False)
        batches.setdefault(id(uc), (uc, []))[1].append((m, value))


def _replace_keys(
    args: tuple[Any, ...], kwargs: dict[str, Any], keys: list[Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A direct batch's ``with_ids``: the fallback is asked for the missing keys alone."""
    return (keys,), kwargs
