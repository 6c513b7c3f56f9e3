"""The read-through decisions for one use case, and the sync and async drivers that run them.

Every decision that needs no I/O (config fallback, which layers take part, whether a remote
entry is fresh, what to count) is a plain method here, written once. ``acall`` and ``call`` are
the two drivers: they do the I/O those decisions ask for and are kept line-for-line alike, so a
diff between them shows any drift.
"""

from __future__ import annotations

import inspect
import random
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from gcache import _envelope
from gcache._codec import Codec
from gcache.config import CacheLayer, GCacheKeyConfig, Serializer
from gcache.errors import RemoteError
from gcache.keys import _ID, _KEY_TYPE, GCacheKey, KeyBuilder, value_key, watermark_key
from gcache.local import MISS, LocalStore
from gcache.metrics import LAYER_ALL, LAYER_NONE, UseCaseMetrics

if TYPE_CHECKING:
    from gcache._log import ErrorLog
    from gcache._loop_thread import LoopThread
    from gcache.local import Epochs
    from gcache.remote import RemoteCache, TrackedRead

__all__ = ["Runtime", "UseCase"]

_LOCAL, _REMOTE = CacheLayer.LOCAL, CacheLayer.REMOTE
_WRITE_RESULTS = {1: "stored", 0: "invalidated", -1: "fence_replaced", -2: "too_slow"}
_LOCAL_TIMING_MASK = 15  # gcache_get_timer{layer="local"}: lookups 1, 17, 33, ... of a use case
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
    ) -> None:
        self.prefix = prefix
        self.config_reuse_sec = config_reuse_sec
        self.enabled = enabled
        self.provider = provider
        self.remote = remote
        self.epochs = epochs
        self.errors = errors
        self.loop_thread = loop_thread


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
        self.local = local
        self.remote = runtime.remote
        self.m = metrics
        self.keys = keys
        self._tick = 0
        self._reused: tuple[Any, float] | None = None  # (provider answer, reuse until)
        self._entity_head = "{" + f"{runtime.prefix}:{key_type.translate(_KEY_TYPE)}:"

    # -- decisions (no I/O) ----------------------------------------------------------------------

    def entity(self, id: str) -> str:
        return self._entity_head + id.translate(_ID) + "}"  # keys.entity_key, constant part built once

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
        """TTL of LOCAL and REMOTE for this call, 0 for a layer that sits it out."""
        local_ttl = self._ttl(config, _LOCAL, "local")
        remote = self.remote
        if remote is None:
            return local_ttl, 0
        remote_ttl = self._ttl(config, _REMOTE, "remote")
        if remote_ttl and remote.breaker.is_open:
            self.m.disabled("remote", "server_down").inc()
            return local_ttl, 0
        return local_ttl, remote_ttl

    def _ttl(self, config: GCacheKeyConfig, layer: CacheLayer, name: str) -> float:
        ttl = config.ttl_sec.get(layer, 0)
        if ttl <= 0:
            return 0  # the layer is not set up for this use case: nothing was ramped down
        ramp = config.ramp.get(layer, 0)
        if ramp >= 100:
            return ttl
        if ramp <= 0 or _random() * 100 >= ramp:
            self.m.disabled(name, "ramped_down").inc()
            return 0
        return ttl

    def local_get(self, urn: str, entity: str) -> Any:
        self.m.request_local.inc()
        tick = self._tick
        self._tick = tick + 1
        if tick & _LOCAL_TIMING_MASK:
            value, reason = self.local.get(urn, entity)
        else:  # timing costs more than the lookup: the first one, then one in 16, is measured
            start = _perf()
            value, reason = self.local.get(urn, entity)
            self.m.get_local.observe(_perf() - start)
        if reason is not None:
            self.m.miss("local", reason).inc()
        return value

    def local_put(self, urn: str, entity: str, value: Any, ttl: float, epoch: int) -> None:
        refused = self.local.put(urn, entity, value, ttl, epoch)
        if refused is None:
            self.m.local_stored.inc()
        else:
            self.m.write("local", refused).inc()

    def fresh(self, raw: bytes | None, read: TrackedRead | None) -> _envelope.Envelope | None:
        """The envelope of a remote entry that may be served, or None (the miss is counted)."""
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

    def envelope(self, payload: bytes, flags: int) -> bytes:
        self.m.size.observe(len(payload))
        return _envelope.encode(payload, self.codec.serializer_id, flags, time.time_ns() // 1000)

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

    def function_failed(self, layer: str, exc: BaseException) -> None:
        self.m.error(layer, type(exc).__name__, "true").inc()

    @staticmethod
    def fallback_layer(local_ttl: float, remote_ttl: float) -> str:
        return "remote" if remote_ttl else ("local" if local_ttl else LAYER_NONE)

    # -- async driver ----------------------------------------------------------------------------

    async def acall(
        self, func: Callable[..., Awaitable[Any]], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """A decorated coroutine function's call."""
        if not self.rt.enabled.get():
            self.m.disabled_context.inc()
            return await func(*args, **kwargs)
        try:
            id, pairs = self.keys.build(args, kwargs)  # type: ignore[union-attr]
            entity = self.entity(id)
            urn = value_key(entity, pairs, self.use_case)
        except Exception as exc:
            self.key_error(exc)
            return await func(*args, **kwargs)
        return await self.aread_through(urn, entity, id, pairs, func, args, kwargs)

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
        config = self._resolved(None) if self.rt.provider is None else await self.aconfig(id, pairs)
        if config is None:
            return await self.afunction(LAYER_NONE, func, args, kwargs)
        local_ttl, remote_ttl = self.layers(config)
        if local_ttl:
            value = self.local_get(urn, entity)
            if value is not MISS:
                return value
        epoch = self.rt.epochs.start(entity)
        read = None
        if remote_ttl:
            try:
                value, read = await self.aremote_get(urn, entity)
            except Exception as exc:
                self.remote_error(exc, "remote read failed")
                remote_ttl = 0
            else:
                if value is not MISS:
                    if local_ttl:
                        self.local_put(urn, entity, value, local_ttl, epoch)
                    return value
        value = await self.afunction(self.fallback_layer(local_ttl, remote_ttl), func, args, kwargs)
        if remote_ttl:
            try:
                if not await self.aremote_put(urn, entity, value, remote_ttl, read):
                    local_ttl = 0  # Redis says the value is already stale: LOCAL must not keep it
            except Exception as exc:
                self.remote_error(exc, "remote write failed")
        if local_ttl:
            self.local_put(urn, entity, value, local_ttl, epoch)
        return value

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

    async def aremote_get(self, urn: str, entity: str) -> tuple[Any, TrackedRead | None]:
        remote = self.remote
        assert remote is not None
        self.m.request_remote.inc()
        start = _perf()
        if self.tracked:
            read: TrackedRead | None = await remote.aread_tracked(urn, watermark_key(entity))
            raw = read.raw  # type: ignore[union-attr]
        else:
            read, raw = None, await remote.aget(urn)
        self.m.get_remote.observe(_perf() - start)
        env = self.fresh(raw, read)
        if env is None:
            return MISS, read
        start = _perf()
        try:
            value = await self.codec.aload(env) if self.codec.is_async else self.codec.load(env)
        except Exception as exc:
            self.m.miss("remote", "undecodable").inc()
            self.remote_error(exc, "stored value could not be loaded")
            return MISS, read
        self.m.load.observe(_perf() - start)
        return value, read

    async def aremote_put(
        self, urn: str, entity: str, value: Any, ttl: float, read: TrackedRead | None
    ) -> bool:
        """Write to Redis; False when the write was refused because the value is stale."""
        remote = self.remote
        assert remote is not None
        start = _perf()
        payload, flags = await self.codec.adump(value) if self.codec.is_async else self.codec.dump(value)
        self.m.dump.observe(_perf() - start)
        envelope = self.envelope(payload, flags)
        ttl_ms = max(1, int(ttl * 1000))
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

    def call(self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """A decorated plain function's call."""
        if not self.rt.enabled.get():
            self.m.disabled_context.inc()
            return func(*args, **kwargs)
        try:
            id, pairs = self.keys.build(args, kwargs)  # type: ignore[union-attr]
            entity = self.entity(id)
            urn = value_key(entity, pairs, self.use_case)
        except Exception as exc:
            self.key_error(exc)
            return func(*args, **kwargs)
        return self.read_through(urn, entity, id, pairs, func, args, kwargs)

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
        config = self._resolved(None) if self.rt.provider is None else self.config(id, pairs)
        if config is None:
            return self.function(LAYER_NONE, func, args, kwargs)
        local_ttl, remote_ttl = self.layers(config)
        if local_ttl:
            value = self.local_get(urn, entity)
            if value is not MISS:
                return value
        epoch = self.rt.epochs.start(entity)
        read = None
        if remote_ttl:
            try:
                value, read = self.remote_get(urn, entity)
            except Exception as exc:
                self.remote_error(exc, "remote read failed")
                remote_ttl = 0
            else:
                if value is not MISS:
                    if local_ttl:
                        self.local_put(urn, entity, value, local_ttl, epoch)
                    return value
        value = self.function(self.fallback_layer(local_ttl, remote_ttl), func, args, kwargs)
        if remote_ttl:
            try:
                if not self.remote_put(urn, entity, value, remote_ttl, read):
                    local_ttl = 0  # Redis says the value is already stale: LOCAL must not keep it
            except Exception as exc:
                self.remote_error(exc, "remote write failed")
        if local_ttl:
            self.local_put(urn, entity, value, local_ttl, epoch)
        return value

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

    def remote_get(self, urn: str, entity: str) -> tuple[Any, TrackedRead | None]:
        remote = self.remote
        assert remote is not None
        self.m.request_remote.inc()
        start = _perf()
        if self.tracked:
            read: TrackedRead | None = remote.read_tracked(urn, watermark_key(entity))
            raw = read.raw  # type: ignore[union-attr]
        else:
            read, raw = None, remote.get(urn)
        self.m.get_remote.observe(_perf() - start)
        env = self.fresh(raw, read)
        if env is None:
            return MISS, read
        start = _perf()
        try:
            value = (
                self.rt.loop_thread.run(lambda: self.codec.aload(env))
                if self.codec.is_async
                else self.codec.load(env)
            )
        except Exception as exc:
            self.m.miss("remote", "undecodable").inc()
            self.remote_error(exc, "stored value could not be loaded")
            return MISS, read
        self.m.load.observe(_perf() - start)
        return value, read

    def remote_put(self, urn: str, entity: str, value: Any, ttl: float, read: TrackedRead | None) -> bool:
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
        ttl_ms = max(1, int(ttl * 1000))
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
