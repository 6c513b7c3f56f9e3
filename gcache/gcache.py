"""The GCache facade: decorating functions, switching caching on, invalidating, direct access."""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
import logging
import os
import sys
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar, overload

from gcache import _fork
from gcache._log import ErrorLog
from gcache._loop_thread import LoopThread
from gcache.bus import InvalidationBus
from gcache.config import GCacheConfig, GCacheKeyConfig, Serializer
from gcache.errors import (
    ConfigError,
    KeyArgDoesNotExist,
    UseCaseIsAlreadyRegisteredError,
    UseCaseNameIsReservedError,
)
from gcache.exposition import multiprocess_enabled
from gcache.health import health_report
from gcache.invalidates import invalidating
from gcache.keys import KeyBuilder
from gcache.local import LocalLayer
from gcache.management import Management
from gcache.metrics import FastHistogram, Metrics, UseCaseMetrics
from gcache.original_wire import Envelope
from gcache.outbox import InvalidationOutbox
from gcache.readthrough import REFRESH, Runtime, UseCase
from gcache.redis_config import url_db
from gcache.remote import RemoteCache
from gcache.signing import Signer, signing_keys_from
from gcache.urns import WATERMARK_USE_CASE, PartHasher, bus_channel

__all__ = ["CachedFunction", "GCache"]

F = TypeVar("F", bound=Callable[..., Any])
P = ParamSpec("P")
Bound = ParamSpec("Bound")
R = TypeVar("R", covariant=True)
Receiver = TypeVar("Receiver")


class CachedFunction(Protocol[P, R]):
    """What ``@cached`` and ``@cached_many`` return, for type checkers: the function's own
    parameters and result (``CachedFunction[[user_id: str], User]``), the attributes gcache adds
    (``use_case``) and those of ``functools.wraps``; as a method, bound without its first one."""

    use_case: str  # the use case's name: the decorator's use_case, or module and qualified name
    __name__: str
    __qualname__: str

    @property
    def __wrapped__(self) -> Callable[P, R]: ...

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R: ...

    @overload
    def __get__(self, instance: None, owner: type[Any] | None = None) -> CachedFunction[P, R]: ...

    @overload
    def __get__(
        self: CachedFunction[Concatenate[Receiver, Bound], R],
        instance: Receiver,
        owner: type[Any] | None = None,
    ) -> CachedFunction[Bound, R]: ...

    def __get__(self, instance: Any, owner: type[Any] | None = None) -> Any: ...


_instances = itertools.count(1)


def _tells_mistakes(choice: bool | None) -> bool:
    """GCacheConfig.tell_mistakes, with None resolved: development mode or GCACHE_DEBUG=1."""
    if choice is not None:
        return choice
    return bool(sys.flags.dev_mode) or os.environ.get("GCACHE_DEBUG") == "1"


_CROSSED = (
    "a gcache.enable()/refresh() block was left in another context than the one it was entered "
    "in, so it did not switch caching on (or off) for the code that ran between; {what}, and "
    "nothing raised. FastAPI does this with a sync generator dependency "
    "(`def dep(): with gcache.enable(): yield`): it enters and exits it in different thread-pool "
    "contexts, and the endpoint runs uncached. Use the middleware "
    "(app.add_middleware(gcache.web.CacheMiddleware, gcache=gcache)) or an async dependency "
    "(`async def dep(): with gcache.enable(): yield`)"
)


class _Enable:
    """``with gcache.enable(flag):`` — sets caching on or off for this context, then restores it;
    or ``@gcache.enable()`` on a function, sync or async.

    The tokens to restore are kept in a ContextVar, not on this object, so one object may be
    entered by several tasks or threads at once (a middleware that builds it once). Each entry
    of that stack also names the object that pushed it, so a block left in another context than
    the one it was entered in is recognised: when the exit context holds the block's entry (a
    copy of the entering context), the value before the block is restored there; when it does
    not (FastAPI's sync generator dependencies), nothing is changed. Either way ``told`` is
    called (a WARNING, once per GCache) and nothing raises.
    """

    __slots__ = ("_tokens", "_told", "_value", "_var")

    def __init__(
        self,
        var: ContextVar[int],
        tokens: ContextVar[tuple[tuple[_Enable, Token[int]], ...]],
        value: int,
        told: Callable[[bool], object],
    ) -> None:
        self._var = var
        self._tokens = tokens
        self._value = value
        self._told = told

    def __enter__(self) -> None:
        token = self._var.set(self._value)
        self._tokens.set((*self._tokens.get(), (self, token)))

    def __exit__(self, *exc: object) -> None:
        stack = self._tokens.get()
        if not stack or stack[-1][0] is not self:
            self._told(False)  # entered in a context this one does not descend from: nothing to undo
            return
        token = stack[-1][1]
        self._tokens.set(stack[:-1])
        try:
            self._var.reset(token)
        except (ValueError, RuntimeError):  # a copy of the entering context: restore by value
            old = token.old_value
            self._var.set(False if old is Token.MISSING else old)
            self._told(True)

    def __call__(self, func: F) -> F:
        """``@gcache.enable()`` on a function: each call runs inside ``with gcache.enable():``."""
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_enabled(*args: Any, **kwargs: Any) -> Any:
                with self:
                    return await func(*args, **kwargs)

            return async_enabled  # type: ignore[return-value]

        @functools.wraps(func)
        def enabled(*args: Any, **kwargs: Any) -> Any:
            with self:
                return func(*args, **kwargs)

        return enabled  # type: ignore[return-value]


class GCache(Management):
    """A two-tier read-through cache: LOCAL (in-process) then REMOTE (Redis) then the function.

    Several instances may live in one process; each owns its Redis clients and must be closed
    (``close()``/``aclose()``, or use it as a context manager).

    This class wires the parts together and decorates functions; direct access, invalidation
    and flushing are :class:`~gcache.management.Management`'s. About 280 lines, most of them the
    wiring in ``__init__`` and the decorator's checks of its arguments.

    Args:
        config: connections and behaviour; ``GCacheConfig()`` gives a LOCAL-only cache.

    Raises:
        ConfigError: the configuration is invalid.
    """

    def __init__(self, config: GCacheConfig | None = None) -> None:
        config = config if config is not None else GCacheConfig()
        if not isinstance(config, GCacheConfig):
            raise ConfigError(f"GCache takes a GCacheConfig, got {config!r}")
        self.config = config
        self._prefix: str = config.urn_prefix or "urn:gcache"
        instance = next(_instances)
        # False, True, or REFRESH (inside refresh()): what the decorated functions read first.
        self._enabled: ContextVar[int] = ContextVar(f"gcache_enabled_{instance}", default=False)
        self._enable_tokens: ContextVar[tuple[tuple[_Enable, Token[int]], ...]] = ContextVar(
            f"gcache_enable_tokens_{instance}", default=()
        )
        self._metrics = Metrics.get(config.metrics_registry, config.metrics_prefix)
        self._local = LocalLayer(
            config.local_max_entries, self._count_dropped, max_bytes=config.local_max_bytes
        )
        self._loop_thread = LoopThread("gcache-loop")
        logger = config.logger if config.logger is not None else logging.getLogger("gcache")
        errors = ErrorLog(logger, config.error_log_interval_sec)
        self._errors = errors
        keys = signing_keys_from(config.signing_keys)
        if config.require_signing and not keys:
            raise ConfigError(
                "GCacheConfig.require_signing is set but there are no signing keys: give "
                "GCacheConfig(signing_keys=[...]) or set GCACHE_SIGNING_KEYS"
            )
        if keys and config.legacy_compat:
            raise ConfigError(
                "GCacheConfig.legacy_compat: the original gcache's entries carry no signature, "
                "but GCACHE_SIGNING_KEYS gives signing keys: unset it for this cache"
            )
        self._signer = Signer(keys) if keys else None
        secret = config.key_hash_secret
        self._hasher = (
            None
            if secret is None
            else PartHasher(
                secret.encode() if isinstance(secret, str) else secret, config.hash_parts_longer_than
            )
        )
        self._remote: RemoteCache | None = None
        self._bus: InvalidationBus | None = None
        self._bus_up = threading.Event()
        if config.redis_config is not None or config.redis_client_factory is not None:
            # A factory's database is unknown until it is called: its channel is db 0's.
            channel = bus_channel(
                self._prefix, url_db(config.redis_config.url or "") if config.redis_config else 0
            )
            self._remote = RemoteCache(
                redis_config=config.redis_config,
                client_factory=config.redis_client_factory,
                compute_limit_ms=int(config.tracked_compute_limit_sec * 1000),
                loop_thread=self._loop_thread,
                channel=channel,
                signer=self._signer,
                read_timeout=config.read_timeout_sec,
                write_timeout=config.write_timeout_sec,
                breaker_failures=config.breaker_failures,
                breaker_probe_sec=config.breaker_probe_sec,
                on_breaker=self._on_breaker,
                on_node_breaker=self._on_node_breaker,
                max_value_bytes=config.max_value_bytes,  # bounds every value read
                legacy_compat=config.legacy_compat,
                on_foreign_watermark=self._on_foreign_watermark,
                failover_buffer_ms=config.failover_buffer_ms,
                invalidate_replicas=config.invalidate_replicas,
                invalidate_wait_ms=config.invalidate_wait_ms,
                failover_fencing=config.failover_fencing,
                on_info_refused=self._on_info_refused,
                on_mget_refused=self._on_mget_refused,
                on_pool_wait=tuple(
                    FastHistogram(self._metrics.pool_wait.labels(pool)).observe
                    for pool in ("read", "write", "admin")
                ),
            )
            # Other processes' invalidations reach LOCAL only through the bus: tracked LOCAL
            # entries are used once it is subscribed (it starts on the first tracked LOCAL use).
            self._bus = InvalidationBus(
                channel=channel,
                origin=self._remote.origin,
                connect=self._remote.new_bus_client,
                loop_thread=self._loop_thread,
                on_message=self._on_bus_message,
                on_up=self._on_bus_up,
                on_down=self._on_bus_down,
                errors=errors,
                on_dropped=self._on_bus_dropped,
                signer=self._signer,
                accept_unsigned=config.accept_unsigned_messages,
            )
            self._local.epochs.trusted = False
            self._local.epochs.wake = self._bus.ensure_started
        self._runtime = Runtime(
            prefix=self._prefix,
            enabled=self._enabled,
            provider=config.cache_config_provider,
            remote=self._remote,
            epochs=self._local.epochs,
            errors=errors,
            loop_thread=self._loop_thread,
            config_reuse_sec=config.config_reuse_sec,
            max_value_bytes=config.max_value_bytes,
            max_key_length=config.max_key_length,
            signer=self._signer,
            hasher=self._hasher,
            timer_sample_every=config.timer_sample_every,
            legacy_compat=config.legacy_compat,
            tell_mistakes=_tells_mistakes(config.tell_mistakes),
        )
        remote = self._remote
        self._outbox = InvalidationOutbox(
            config.invalidation_outbox_size if remote is not None else 0,
            epochs=self._local.epochs,
            apply=self._replay,
            submit=self._loop_thread.submit,
            failing=lambda: remote is not None and remote.breaker.is_open,
            metrics=self._metrics,
            errors=errors,
        )
        self._registered: dict[str, str] = {}  # use case -> the function that has it
        # use case -> (its UseCase, "single" or "many"): a cached and a cached_many of one name share
        self._named: dict[str, tuple[UseCase, str]] = {}
        # use case -> {"single" or "many": the function's module.qualname}: the same function
        # decorated again (a notebook cell run twice, importlib.reload) replaces its registration
        self._wheres: dict[str, dict[str, str]] = {}
        self._direct: dict[tuple[Any, ...], UseCase] = {}
        self._direct_names: set[tuple[str, str, bool]] = set()  # bounded: see Management._for_key
        self._use_cases: weakref.WeakSet[UseCase] = weakref.WeakSet()
        self._key_types: set[str] = set()  # of every use case, to tell a mistyped invalidation
        self._closed = False
        _fork.track(self)

    def _after_fork_in_child(self) -> None:
        """Become, in a forked child, the cache it would be if built there (see :mod:`gcache._fork`).

        A new bus identity (the parent's would make this process ignore its siblings'
        invalidations as its own echo), no connections, loop thread, probe, flights or refresh
        threads of the parent's, fresh locks, and tracked LOCAL entries dropped until this
        process's own bus is subscribed. Untracked LOCAL entries are kept.
        """
        if self._closed:
            return
        self._loop_thread.after_fork_in_child()
        self._errors.after_fork_in_child()
        self._bus_up = threading.Event()
        if self._remote is not None:
            self._remote.after_fork_in_child()
        if self._bus is not None and self._remote is not None:
            self._bus.after_fork_in_child(self._remote.origin)
        self._local.after_fork_in_child(trusted=self._bus is None)
        self._runtime.after_fork_in_child()
        self._outbox.after_fork_in_child()
        for uc in list(self._use_cases):
            uc.flights.clear()
            uc.reads.clear()
            uc.refreshing.clear()

    # -- the invalidation bus ----------------------------------------------------------------------

    def start(self, timeout: float = 5.0) -> bool:
        """Subscribe to the invalidation bus now and wait until it is (at most ``timeout`` s).

        The bus also starts by itself on the first use of a tracked LOCAL entry; until it is
        subscribed those calls skip LOCAL. Call this at start-up (a FastAPI lifespan, a worker's
        init) to have tracked LOCAL hits from the first request. Returns whether the bus is
        subscribed; always True for a LOCAL-only cache, which needs no bus.
        """
        if self._bus is None:
            return True
        self._bus.ensure_started()
        return self._told_if_down(self._bus_up.wait(timeout), timeout)

    def _told_if_down(self, up: bool, timeout: float) -> bool:
        """``start``'s answer; when False, a WARNING says what that means and, if known, why."""
        if not up and self._bus is not None:
            why = self._bus.last_error or "no answer from Redis yet"
            self._errors.warning(
                ("bus", "start"),
                f"invalidation bus not subscribed within {timeout:g} s ({why}): tracked use cases "
                "skip LOCAL until it is (it keeps trying in the background; REMOTE still serves)",
            )
        return up

    @property
    def bus_subscribed(self) -> bool:
        """Whether this process hears invalidations from others (always True when LOCAL only).

        While False, tracked use cases skip LOCAL. Useful in a readiness probe: in a forked child
        whose parent had the bus up, asking starts the child's own (False until it is up).
        """
        if self._bus is None:
            return True
        if self._bus.resume:  # a forked child whose parent had it up: subscribe again
            self._bus.ensure_started()
        return self._bus_up.is_set()

    def health(self, waiting: int = 20) -> dict[str, Any]:
        """What this process's failover machinery is doing now, read from memory (no Redis
        call): the breaker, each cluster node's, the bus, the outbox with its ``waiting`` oldest
        entities, the master Sentinel last named (see :func:`gcache.health.health_report`)."""
        bus_up = self._bus is not None and self._bus_up.is_set()
        config = self.config.redis_config
        return health_report(self._remote, self._bus, bus_up, self._outbox, config, waiting)

    async def astart(self, timeout: float = 5.0) -> bool:
        """Async twin of :meth:`start`; waits without blocking the event loop."""
        if self._bus is None:
            return True
        self._bus.ensure_started()
        return self._told_if_down(await asyncio.to_thread(self._bus_up.wait, timeout), timeout)

    # -- switching caching on ------------------------------------------------------------------

    def enable(self, enabled: bool = True) -> _Enable:
        """Turn caching on (or, with ``False``, off) for the block; blocks nest. Also a decorator:
        ``@gcache.enable()`` runs each call of a function (sync or async) inside it.

        The state lives in a ContextVar: it follows asyncio tasks created inside the block, and
        each thread starts with caching off. A block exited in another context than the one it
        was entered in (FastAPI's sync generator dependencies) never raises: it restores the
        exiting context's state or leaves it alone, and says so once in a WARNING.
        """
        return _Enable(self._enabled, self._enable_tokens, bool(enabled), self._told_crossed_enable)

    def refresh(self) -> _Enable:
        """Read past the cache for the block, and refresh it: each cached call runs its function
        and writes the value back to the layers it takes part in (a request's
        ``Cache-Control: no-cache``). Tracked values are written under the same fence rules as a
        miss's; concurrent calls of one key do not share the run. Also a decorator."""
        return _Enable(self._enabled, self._enable_tokens, REFRESH, self._told_crossed_enable)

    def _told_crossed_enable(self, restored: bool) -> None:
        what = (
            "the state before it was restored in the exiting context"
            if restored
            else ("the exiting context's state was left as it was")
        )
        self._errors.once(("enable_crossed_contexts",), _CROSSED.format(what=what))

    @property
    def is_enabled(self) -> bool:
        return bool(self._enabled.get())

    # -- decorating ----------------------------------------------------------------------------

    def cached(
        self,
        *,
        key_type: str,
        id_arg: str | tuple[str, Callable[[Any], Any]],
        use_case: str | None = None,
        arg_adapters: dict[str, Callable[[Any], Any]] | None = None,
        ignore_args: Sequence[str] | None = None,
        track_for_invalidation: bool = False,
        default_config: GCacheKeyConfig | None = None,
        serializer: Serializer | None = None,
        envelope: Envelope | str = Envelope.PICKLE,
    ) -> Callable[[Callable[P, R]], CachedFunction[P, R]]:
        """Cache a function (sync or async) under ``key_type`` + the value of ``id_arg``.

        Args:
            key_type: the kind of entity the id names (``user_id``); invalidation targets it.
            id_arg: the parameter holding the id, or ``(parameter, extractor)``.
            use_case: names this cache in keys, metrics and config; default ``module.function_name``
                (two functions of one cache with the same default name: an error, give one a use_case).
            arg_adapters: parameter -> function giving the string used in the key.
            ignore_args: parameters left out of the key.
            track_for_invalidation: entries honour ``invalidate(key_type, id)``.
            default_config: used when the provider returns None (or there is no provider).
            serializer: REMOTE serialization (default: ``GCacheConfig.serializer``, else pickle).
            envelope: with ``GCacheConfig(legacy_compat=True)``, how the original gcache 3.0
                frames this use case's entries: ``Envelope.PICKLE`` (default), ``JSON`` (a
                serializer returning str) or ``PROTO`` (one returning bytes), which its Go client
                reads too.

        Raises:
            ConfigError: a name that is not a parameter, a duplicate or reserved use_case, or a
                bad option; raised now, at decoration.
        """
        if not isinstance(key_type, str) or not key_type:
            raise ConfigError(f"cached(): key_type must be a non-empty string, got {key_type!r}")
        if default_config is not None and not isinstance(default_config, GCacheKeyConfig):
            raise ConfigError(f"cached(): default_config must be a GCacheKeyConfig, got {default_config!r}")
        if ignore_args is not None and (
            isinstance(ignore_args, str) or not isinstance(ignore_args, Sequence)
        ):
            raise ConfigError(f"cached(): ignore_args must be a list of names, got {ignore_args!r}")

        framing = self._envelope(envelope, serializer if serializer is not None else self.config.serializer)

        typed = self.config.typed_for(key_type)  # GCacheConfig.typed_keys

        def decorate(func: Callable[P, R]) -> CachedFunction[P, R]:
            name, where = _named(func, use_case, "cached")
            known, again = self._known(name, where, "single")
            if known is not None and (known[1] == "many" or again):  # again: "both", the many kept
                shared = known[0]
                self._check_shared(shared, name, key_type, track_for_invalidation, serializer, where)
                if shared.missing_ttl:
                    raise ConfigError(
                        f"cached(): use_case {name!r} of {where} is a cached_many with cache_missing: an id "
                        "it found absent has no value for a single call; give one another use_case"
                    )
                if not again:
                    self._named[name] = (shared, "both")
                    self._registered[name] = f"{self._registered[name]} and {where}"
                    self._wheres[name]["single"] = where
                single_keys = KeyBuilder(func, id_arg, arg_adapters, ignore_args, typed)
                wrapper_shared: Any = shared.wrap(func, single_keys)
                functools.update_wrapper(wrapper_shared, func)
                wrapper_shared.use_case = name
                return wrapper_shared  # type: ignore[no-any-return]
            if name in self._registered:
                default = (
                    " (the default use_case: module and function name, which two functions share); "
                    "give each its own use_case=..."
                    if use_case is None
                    else ""
                )
                raise UseCaseIsAlreadyRegisteredError(
                    f"use_case {name!r} of {where} is already used by {self._registered[name]}{default}"
                )
            if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
                raise ConfigError(
                    f"cached(): {func.__qualname__} is a generator; its result cannot be cached"
                )
            keys = KeyBuilder(func, id_arg, arg_adapters, ignore_args, typed)
            chosen = serializer if serializer is not None else self.config.serializer
            uc = self._use_case(name, key_type, track_for_invalidation, default_config, chosen, keys, framing)
            self._registered[name] = where
            self._named[name] = (uc, "single")
            self._wheres[name] = {"single": where}

            wrapper: Any = uc.wrap(func)
            functools.update_wrapper(wrapper, func)
            wrapper.use_case = name
            return wrapper  # type: ignore[no-any-return]

        return decorate

    def cached_many(
        self,
        *,
        key_type: str,
        ids_arg: str,
        use_case: str | None = None,
        arg_adapters: dict[str, Callable[[Any], Any]] | None = None,
        ignore_args: Sequence[str] | None = None,
        track_for_invalidation: bool = False,
        default_config: GCacheKeyConfig | None = None,
        serializer: Serializer | None = None,
        cache_missing: bool = False,
        missing_ttl_sec: float | None = None,
    ) -> Callable[[Callable[P, R]], CachedFunction[P, R]]:
        """Cache a batch function (sync or async) ``f(ids, ...) -> Mapping[id, value]`` per id.

        A call looks each id up in LOCAL, the rest in REMOTE in one round trip (on one server; on
        a cluster key by key), calls the function once with the ids still missing, writes each value back and
        returns the ids that have a value, in the caller's order. Each id's entry is the one a
        ``cached`` function of the same ``use_case``, ``key_type`` and other arguments has: name
        both alike to share entries (and single flights).

        Args:
            ids_arg: the parameter holding the iterable of ids.
            cache_missing: keep "no value" for an id the function's mapping leaves out, for
                ``missing_ttl_sec`` (default: the layer's TTL), so it is not asked again.
            The others: as :meth:`cached`.

        Raises:
            ConfigError: as :meth:`cached`; a shared use case whose key_type, tracking or serializer
                differ, or with ``cache_missing`` (a single call has no "no value").
        """
        if not isinstance(key_type, str) or not key_type:
            raise ConfigError(f"cached_many(): key_type must be a non-empty string, got {key_type!r}")
        if not isinstance(ids_arg, str) or not ids_arg:
            raise ConfigError(f"cached_many(): ids_arg must be a parameter name, got {ids_arg!r}")
        if default_config is not None and not isinstance(default_config, GCacheKeyConfig):
            raise ConfigError(
                f"cached_many(): default_config must be a GCacheKeyConfig, got {default_config!r}"
            )
        if missing_ttl_sec is not None and not cache_missing:
            raise ConfigError("cached_many(): missing_ttl_sec is for cache_missing=True")
        if missing_ttl_sec is not None and (
            isinstance(missing_ttl_sec, bool)
            or not isinstance(missing_ttl_sec, (int, float))
            or missing_ttl_sec <= 0
        ):
            raise ConfigError(
                f"cached_many(): missing_ttl_sec must be a number above 0, got {missing_ttl_sec!r}"
            )
        if cache_missing and self.config.legacy_compat:
            raise ConfigError(
                "cached_many(): cache_missing has no frame in the original gcache's formats (legacy_compat)"
            )

        typed = self.config.typed_for(key_type)  # GCacheConfig.typed_keys

        def decorate(func: Callable[P, R]) -> CachedFunction[P, R]:
            name, where = _named(func, use_case, "cached_many")
            if not (inspect.iscoroutinefunction(func) or callable(func)) or inspect.isgeneratorfunction(func):
                raise ConfigError(f"cached_many(): {func.__qualname__} must return a mapping, not yield")
            try:
                keys = KeyBuilder(func, ids_arg, arg_adapters, ignore_args, typed)
            except KeyArgDoesNotExist as exc:  # told in this decorator's words
                raise KeyArgDoesNotExist(str(exc).replace(": id_arg ", ": ids_arg ", 1)) from None
            chosen = serializer if serializer is not None else self.config.serializer
            known, again = self._known(name, where, "many")
            if known is not None and (known[1] == "single" or again) and not cache_missing:
                uc = known[0]  # again: "both", the single kept
                self._check_shared(uc, name, key_type, track_for_invalidation, serializer, where)
                if not again:
                    self._named[name] = (uc, "both")
                    self._registered[name] = f"{self._registered[name]} and {where}"
                    self._wheres[name]["many"] = where
            elif name in self._registered:
                why = " (with cache_missing a batch cannot share a single call's use case)"
                raise UseCaseIsAlreadyRegisteredError(
                    f"use_case {name!r} of {where} is already used by {self._registered[name]}"
                    + (why if known and cache_missing else "")
                )
            else:
                uc = self._use_case(name, key_type, track_for_invalidation, default_config, chosen, keys)
                self._registered[name] = where
                self._named[name] = (uc, "many")
                self._wheres[name] = {"many": where}
            if cache_missing:
                uc.missing_ttl = float(missing_ttl_sec) if missing_ttl_sec is not None else float("inf")
            wrapper: Any = uc.wrap_many(func, keys)
            functools.update_wrapper(wrapper, func)
            wrapper.use_case = name
            return wrapper  # type: ignore[no-any-return]

        return decorate

    def _known(self, name: str, where: str, kind: str) -> tuple[tuple[UseCase, str] | None, bool]:
        """The registration of use case ``name`` (None: none), and whether the function at
        ``where`` (module.qualname) already has it as a ``kind`` ("single" or "many"): decorated
        again, by a notebook cell run twice or ``importlib.reload``. A registration of that
        function alone is forgotten (returned as None), to be made anew; one it shares with a
        ``kind`` of the other sort is kept, and its wrapper made again."""
        known = self._named.get(name)
        again = known is not None and self._wheres.get(name, {}).get(kind) == where
        if again and known is not None and known[1] == kind:
            del self._named[name], self._registered[name], self._wheres[name]
            return None, False
        return known, again

    def _check_shared(
        self,
        uc: UseCase,
        name: str,
        key_type: str,
        tracked: bool,
        serializer: Serializer | None,
        where: str,
    ) -> None:
        """A cached and a cached_many sharing ``name`` must key and store alike."""
        chosen = serializer if serializer is not None else self.config.serializer
        differs = [
            what
            for what, same in (
                ("key_type", uc.key_type == key_type),
                ("track_for_invalidation", uc.tracked == tracked),
                ("serializer", uc.serializer is chosen),
            )
            if not same
        ]
        if differs:
            raise ConfigError(
                f"use_case {name!r} of {where} shares the entries of {self._registered[name]}, but its "
                f"{', '.join(differs)} differ: give it the same, or another use_case"
            )

    def invalidates(
        self,
        key_type: str,
        id_arg: str | tuple[str, Callable[[Any], Any]] | None = None,
        *,
        ids: Callable[..., Iterable[Any]] | None = None,
        future_buffer_ms: int = 0,
    ) -> Callable[[F], F]:
        """Decorate a write function (sync or async): after it returns without raising, the
        entity it changed is invalidated, as ``invalidate(key_type, id, future_buffer_ms)``.

        Args:
            key_type: the kind of entity written.
            id_arg: the parameter holding its id, or ``(parameter, extractor)``; or
            ids: for a function that changes several entities, a callable taking the function's
                arguments and returning their ids.
            future_buffer_ms: passed to each invalidation (sources that lag: replicas).

        Raises:
            ConfigError: at decoration, for a bad ``id_arg`` (``KeyArgDoesNotExist``) or options.
            RemoteError: from a call whose write succeeded but whose invalidation Redis did not
                take (the entity's REMOTE entries may be served until their TTL; retry it).
        """
        if not isinstance(key_type, str) or not key_type:
            raise ConfigError(f"invalidates(): key_type must be a non-empty string, got {key_type!r}")
        self._check_buffer(future_buffer_ms)  # told now, at decoration, not on the first write

        def decorate(func: F) -> F:
            return invalidating(self, func, key_type, id_arg, ids, future_buffer_ms)

        return decorate

    def _envelope(self, envelope: Envelope | str, serializer: Serializer | None) -> Envelope:
        """``cached(envelope=...)`` checked: the original's framings, JSON and PROTO with a serializer."""
        try:
            framing = Envelope(envelope)
        except ValueError:
            names = ", ".join(repr(e.value) for e in Envelope)
            raise ConfigError(f"cached(): envelope must be one of {names}, got {envelope!r}") from None
        if framing is Envelope.PICKLE:
            return framing
        if not self.config.legacy_compat:
            raise ConfigError(
                f"cached(envelope={framing.value!r}) frames entries as the original gcache 3.0 does: "
                "it needs GCacheConfig(legacy_compat=True)"
            )
        if serializer is None:
            raise ConfigError(
                f"cached(envelope={framing.value!r}) needs a serializer returning "
                f"{'str' if framing is Envelope.JSON else 'bytes'} (the envelope carries its output)"
            )
        return framing

    def _on_foreign_watermark(self, fence: str) -> None:
        self._errors.once(
            ("foreign_watermark",),
            f"{fence} held the original gcache's watermark (a string), written by a process "
            "of the original library or of gcache with legacy_compat on this prefix; it is now a "
            "gcache fence, and those processes no longer honour this process's invalidations of "
            "it. While the two share this Redis, give every gcache process "
            "GCacheConfig(legacy_compat=True) (README: Migrating from the original gcache)",
        )

    def _on_info_refused(self, refused: bool) -> None:
        """Tracked reads found INFO refused (``refused``), or answered again."""
        gauge = self._metrics.failover_fencing_off
        if not refused:
            gauge.dec()
            return
        gauge.inc()
        self._errors.once(
            ("info_refused",),
            f"Redis refuses INFO to the tracked reads of {self._prefix!r} (an ACL user "
            "without +info, or a server without INFO): their fences carry no replication id, so "
            "failover fencing is off and a promoted replica's or restarted primary's rolled-back "
            "fences would be trusted. Allow it (+info|replication in the user's ACL), or say it is "
            "intended with GCacheConfig(failover_fencing=False) (README: Guarantees through failover)",
        )

    def _on_mget_refused(self) -> None:
        self._errors.once(
            ("mget_refused",),
            f"Redis refuses MGET to the batches of {self._prefix!r} (an ACL user without +mget): "
            "cached_many reads with max_value_bytes=None send a GET an id instead, one round trip "
            "still, at more cost to Redis. Allow it (+mget in the user's ACL)",
        )

    def _use_case(
        self,
        name: str,
        key_type: str,
        tracked: bool,
        default_config: GCacheKeyConfig | None,
        serializer: Serializer | None,
        keys: KeyBuilder | None,
        envelope: Envelope = Envelope.PICKLE,
    ) -> UseCase:
        self._key_types.add(key_type)
        store = self._local.store(name, key_type, tracked=tracked)
        metrics = UseCaseMetrics(self._metrics, name, key_type)
        if multiprocess_enabled():
            store.on_size = metrics.local_entries.set  # each process writes its own count
        else:
            metrics.local_entries.set_function(store.__len__)
        uc = UseCase(
            self._runtime,
            use_case=name,
            key_type=key_type,
            tracked=tracked,
            default_config=default_config,
            serializer=serializer,
            local=store,
            metrics=metrics,
            keys=keys,
            envelope=envelope,
        )
        if self._closed:
            uc.remote, uc.closed = None, True
        self._use_cases.add(uc)
        return uc

    def _count_dropped(self, use_case: str, key_type: str, reason: str, count: int) -> None:
        self._metrics.local_dropped.labels(use_case, key_type, reason).inc(count)

    # -- lifecycle -------------------------------------------------------------------------------

    def close(self) -> None:
        """Close Redis connections and the helper thread.

        Cached functions keep working, uncached (each use case says so once in a WARNING);
        direct puts are dropped. Invalidations still waiting in the outbox are given up, counted
        (``gcache_invalidation_outbox_dropped_counter{reason="closed"}``) and logged: Redis
        never took them.
        """
        self._closed = True
        self._outbox.close()
        if self._bus is not None:
            self._bus.stop()
        if self._remote is not None:
            self._remote.close()
        self._runtime.close()  # before the use cases are marked closed: no call slips to LOCAL
        self._detach_remote()
        self._loop_thread.stop()

    async def aclose(self) -> None:
        """Async twin of :meth:`close`; closes the running loop's connections gracefully."""
        self._closed = True
        self._outbox.close()
        if self._bus is not None:
            self._bus.stop()
        if self._remote is not None:
            await self._remote.aclose()
        self._runtime.close()  # before the use cases are marked closed: no call slips to LOCAL
        self._detach_remote()
        self._loop_thread.stop()

    def _detach_remote(self) -> None:
        if self._remote is not None and self._remote.info_refused:  # a closed GCache no longer counts
            self._remote.info_refused = False
            self._metrics.failover_fencing_off.dec()
        self._runtime.remote = None
        for uc in self._use_cases:
            uc.remote, uc.closed = None, True

    def __enter__(self) -> GCache:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self) -> GCache:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        layers = "local+remote" if self._remote is not None else "local"
        return f"GCache(prefix={self._prefix!r}, layers={layers}, closed={self._closed})"


def _named(func: Callable[..., Any], use_case: str | None, decorator: str) -> tuple[str, str]:
    """A decorated function's use case (the original library's default: module and function
    name, not ``__qualname__``), checked, and where it is defined, for errors."""
    name = use_case if use_case is not None else f"{func.__module__}.{func.__name__}"
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{decorator}(): use_case must be a non-empty string, got {name!r}")
    if name == WATERMARK_USE_CASE:
        raise UseCaseNameIsReservedError(f"use_case {WATERMARK_USE_CASE!r} is reserved by gcache")
    return name, f"{func.__module__}.{func.__qualname__}"
