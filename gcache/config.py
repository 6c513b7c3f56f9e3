"""Configuration objects: what the cache is connected to and how each use case behaves."""

from __future__ import annotations

import functools
import json
import logging
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from gcache.errors import ConfigError, RedisConfigConflictError, UseCaseNameIsReservedError
from gcache.original_wire import MAX_FUTURE_BUFFER_SECONDS
from gcache.redis_config import RedisConfig
from gcache.signing import signing_keys_from
from gcache.urns import DEFAULT_URN_PREFIX, WATERMARK_USE_CASE, entity_key, value_key, watermark_key

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = [
    "CacheConfigProvider",
    "CacheLayer",
    "GCacheConfig",
    "GCacheKey",
    "GCacheKeyConfig",
    "RedisConfig",
    "Serializer",
]


class CacheLayer(Enum):
    """The layers of the read-through chain, checked in this order."""

    NOOP = "noop"
    """The original library's placeholder for "no layer": accepted in configs and ignored."""

    LOCAL = "local"
    """In-process TTL cache: fastest, private to one process."""

    REMOTE = "remote"
    """Redis: shared by every process, one network round trip."""

    # Members are singletons compared by identity; hashing by identity too keeps the per-call
    # ttl_sec/ramp lookups in C (Enum's own __hash__ is Python code hashing the name).
    __hash__ = object.__hash__


_LEGACY_LAYERS = {"noop"}  # the original library's placeholder layer; configs that name it still load


def _layer(name: CacheLayer | str, where: str) -> CacheLayer | None:
    if isinstance(name, CacheLayer):
        return None if name is CacheLayer.NOOP else name
    if isinstance(name, str):
        lowered = name.lower()
        if lowered in _LEGACY_LAYERS:
            return None
        for layer in (CacheLayer.LOCAL, CacheLayer.REMOTE):
            if layer.value == lowered:
                return layer
    raise ConfigError(f"{where}: unknown cache layer {name!r} (expected one of 'local', 'remote')")


def _number(value: Any) -> Any:
    """A number given as text (``"60"``, from an environment or a stored config) as the number,
    as the original library's pydantic model took it; anything else unchanged, for the checks."""
    if isinstance(value, str):
        text = value.strip()
        try:
            number = float(text)
        except ValueError:
            return value
        return int(number) if number.is_integer() and "." not in text and "e" not in text.lower() else number
    return value


def _layer_map(values: Mapping[Any, Any] | None, where: str, *, upper: float | None) -> dict[CacheLayer, Any]:
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where} must be a mapping of layer to number, got {values!r}")
    result: dict[CacheLayer, Any] = {}
    for name, value in values.items():
        layer = _layer(name, where)
        if layer is None:
            continue
        value = _number(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{where}[{layer.value}] must be a finite number, got {value!r}")
        if value < 0 or (upper is not None and value > upper):
            bound = f"between 0 and {upper:g}" if upper is not None else "0 or more"
            raise ConfigError(f"{where}[{layer.value}] must be {bound}, got {value!r}")
        result[layer] = value
    return result


_NUMBERS = ("ttl_jitter", "fail_safe_sec", "soft_timeout_sec", "lock_sec", "refresh_ahead")  # off at 0
_OPTIONS = (*_NUMBERS, "ramp_by")  # each omitted from dumps at its default (0, "call")
_RAMP_BY = ("call", "key")
_FRACTIONS = {"ttl_jitter": "between 0 and 1", "refresh_ahead": "0 (off) or above 0 and below 1"}
_FIELDS = {"ttl_sec", "ramp", *_OPTIONS}


@dataclass
class GCacheKeyConfig:
    """TTL and ramp per layer for one use case, as returned by the config provider.

    A layer takes part in a call when its TTL is above 0 and a draw against its ramp (0-100, a
    percentage of calls, or of keys with ``ramp_by="key"``) succeeds; a layer missing from either
    mapping is off.

    The other fields are off by default and steer how the use case behaves under trouble.

    Args:
        ttl_sec: seconds an entry lives in each layer.
        ramp: percentage of calls that use each layer.
        ramp_by: ``"call"`` (default): a ramp below 100 is one random draw per call; ``"key"``:
            it takes the same share of keys on every call, in every process (a stable hash of
            the key), so a partial ramp caches those keys fully and shows their real hit rate.
        ttl_jitter: a fraction (0-1) by which each write may shorten its TTL, drawn at random,
            so entries written together do not all expire together.
        fail_safe_sec: keep entries this long past their TTL; when the function raises (or
            outlasts ``soft_timeout_sec``) the stale value is served instead. Invalidated entries
            are never served.
        soft_timeout_sec: with ``fail_safe_sec``, a call whose function runs longer than this
            returns the stale value (when there is one) and lets the function finish in the
            background, where its value refreshes the cache.
        lock_sec: distributed single flight: the first process to miss a key holds a Redis lock
            for at most this long while it computes; the others wait for its value (at most as
            long) instead of running the function too. 0: off.
        refresh_ahead: a fraction of the TTL (above 0, below 1): a hit on an entry older than
            that returns the entry at once and starts one background refresh of it (one per
            process; one in the fleet with ``lock_sec``), written back under the same fence as
            a miss's write, so an invalidation during the refresh wins. 0 or None: off.

    Raises:
        ConfigError: a negative TTL, a ramp outside 0-100, or an unknown layer name; a jitter
            outside 0-1, a refresh_ahead outside 0-1 or of 1, a negative duration, a soft timeout
            without fail-safe, or a ``ramp_by`` other than "call" or "key".
    """

    ttl_sec: dict[CacheLayer, float] = field(default_factory=dict)
    ramp: dict[CacheLayer, float] = field(default_factory=dict)
    ttl_jitter: float = 0.0
    fail_safe_sec: float = 0.0
    soft_timeout_sec: float = 0.0
    lock_sec: float = 0.0
    refresh_ahead: float = 0.0
    ramp_by: str = "call"

    def __post_init__(self) -> None:
        self.ttl_sec = _layer_map(self.ttl_sec, "GCacheKeyConfig.ttl_sec", upper=None)
        self.ramp = _layer_map(self.ramp, "GCacheKeyConfig.ramp", upper=100)
        if self.ramp_by not in _RAMP_BY:
            raise ConfigError(f'GCacheKeyConfig.ramp_by must be "call" or "key", got {self.ramp_by!r}')
        if self.refresh_ahead is None:  # off, as 0
            self.refresh_ahead = 0.0
        for name in _NUMBERS:
            value = _number(getattr(self, name))
            setattr(self, name, value)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"GCacheKeyConfig.{name} must be a finite number, got {value!r}")
            if value < 0 or (name == "ttl_jitter" and value > 1) or (name == "refresh_ahead" and value >= 1):
                bound = _FRACTIONS.get(name, "0 or more")
                raise ConfigError(f"GCacheKeyConfig.{name} must be {bound}, got {value!r}")
        if self.soft_timeout_sec and not self.fail_safe_sec:
            raise ConfigError(
                "GCacheKeyConfig.soft_timeout_sec needs fail_safe_sec: without a grace period "
                "there is no stale value to serve"
            )

    @staticmethod
    def enabled(ttl_sec: float) -> GCacheKeyConfig:
        """Every layer on for every call, with one TTL."""
        return GCacheKeyConfig(
            ttl_sec=dict.fromkeys(CacheLayer, ttl_sec), ramp=dict.fromkeys(CacheLayer, 100)
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, layers named by their string values; options only when set."""
        data: dict[str, Any] = {
            "ttl_sec": {layer.value: v for layer, v in self.ttl_sec.items()},
            "ramp": {layer.value: v for layer, v in self.ramp.items()},
        }
        for name in _OPTIONS:
            if getattr(self, name) not in (0, "call"):  # not the default
                data[name] = getattr(self, name)
        return data

    # -- the original library's GCacheKeyConfig was a pydantic model: its spellings ------------

    def model_dump(
        self,
        *,
        include: set[str] | None = None,
        exclude: set[str] | None = None,
        **_pydantic_options: Any,
    ) -> dict[str, Any]:
        """:meth:`to_dict`, with pydantic's ``include``/``exclude``; its other options (``mode``,
        ``by_alias``, ...) change nothing here, the dict being JSON-ready already."""
        data = self.to_dict()
        return {
            k: v for k, v in data.items() if (include is None or k in include) and k not in (exclude or ())
        }

    def model_dump_json(self, *, indent: int | None = None, **pydantic_options: Any) -> str:
        return json.dumps(self.model_dump(**pydantic_options), indent=indent)

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> GCacheKeyConfig:
        """A copy (its dicts always copied), with ``update`` applied and checked."""
        unknown = set(update or ()) - _FIELDS
        if unknown:
            raise ConfigError(f"GCacheKeyConfig.model_copy: unknown fields {sorted(unknown)}")
        fields = {
            "ttl_sec": dict(self.ttl_sec),
            "ramp": dict(self.ramp),
            **{n: getattr(self, n) for n in _OPTIONS},
        }
        return GCacheKeyConfig(**{**fields, **dict(update or {})})

    @classmethod
    def model_validate(cls, obj: Any) -> GCacheKeyConfig:
        """A config from a dict (or a config), as pydantic's ``model_validate``."""
        if isinstance(obj, GCacheKeyConfig):
            return obj.model_copy()
        return cls.from_dict(obj)

    @classmethod
    def model_validate_json(cls, data: str | bytes) -> GCacheKeyConfig:
        return cls.loads(data)

    def dumps(self) -> str:
        return json.dumps(self.to_dict())

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> GCacheKeyConfig:
        if not isinstance(data, Mapping):
            raise ConfigError(f"GCacheKeyConfig must be a mapping, got {data!r}")
        unknown = sorted(map(str, set(data) - _FIELDS))
        if unknown and len(unknown) == len(data):  # nothing known: surely a mistake
            raise ConfigError(f"GCacheKeyConfig: no known field, only unknown ones: {', '.join(unknown)}")
        if unknown:  # ignored, as the original's pydantic model ignored them; told, as likely typos
            _told_unknown_fields(unknown)
        options = {name: data[name] for name in _OPTIONS if name in data}
        return GCacheKeyConfig(
            ttl_sec=dict(data.get("ttl_sec") or {}), ramp=dict(data.get("ramp") or {}), **options
        )

    @staticmethod
    def loads(data: str | bytes | Mapping[str, Any]) -> GCacheKeyConfig:
        """Parse a config from JSON text or an already-decoded dict."""
        if isinstance(data, (str, bytes)):
            try:
                data = json.loads(data)
            except ValueError as exc:
                raise ConfigError(f"GCacheKeyConfig: invalid JSON: {exc}") from exc
        return GCacheKeyConfig.from_dict(data)  # type: ignore[arg-type]

    @staticmethod
    def load_configs(data: str | Mapping[str, Any], env: str | None = None) -> GCacheKeyConfigs:
        """Parse ``{use_case: config}``; a value may itself map environment names to configs.

        With ``env`` (or, when it is None, the ``GCACHE_ENV`` environment variable), a use case
        given per environment has that environment's config, and is left out when it has none
        (its calls take ``default_config``); a use case given once keeps its config in every
        environment. An ``env`` that no use case names is a ``ConfigError`` (a typo would leave
        every per-environment use case out). Without either, every environment is kept:
        ``{use_case: {env: config}}``.
        """
        if env is None:
            env = os.environ.get("GCACHE_ENV") or None
        if env is not None and (not isinstance(env, str) or not env):
            raise ConfigError(f"GCacheKeyConfig.load_configs: env must be a non-empty string, got {env!r}")
        if isinstance(data, str):
            try:
                raw = json.loads(data)
            except ValueError as exc:
                raise ConfigError(f"GCacheKeyConfig.load_configs: invalid JSON: {exc}") from exc
        else:
            raw = data
        if not isinstance(raw, Mapping):
            raise ConfigError(f"GCacheKeyConfig.load_configs: expected an object of use cases, got {raw!r}")
        configs: GCacheKeyConfigs = {}
        for use_case, value in raw.items():
            if isinstance(value, (str, bytes)):  # the original's stored schema: a config as JSON text
                configs[use_case] = GCacheKeyConfig.loads(value)
            elif isinstance(value, Mapping) and set(value) <= _FIELDS:
                configs[use_case] = GCacheKeyConfig.from_dict(value)
            elif isinstance(value, Mapping):
                configs[use_case] = {env: GCacheKeyConfig.loads(v) for env, v in value.items()}
            else:
                raise ConfigError(f"config for use case {use_case!r} must be a mapping, got {value!r}")
        return configs if env is None else _of_environment(configs, env)

    @staticmethod
    def dump_configs(data: GCacheKeyConfigs) -> str:
        out: dict[str, Any] = {}
        for use_case, value in data.items():
            if isinstance(value, GCacheKeyConfig):
                out[use_case] = value.to_dict()
            else:
                out[use_case] = {env: cfg.to_dict() for env, cfg in value.items()}
        return json.dumps(out, indent=2)


GCacheKeyConfigs = dict[str, GCacheKeyConfig | dict[str, GCacheKeyConfig]]


def _of_environment(configs: GCacheKeyConfigs, env: str) -> GCacheKeyConfigs:
    """``load_configs``'s configs of one environment (see there)."""
    chosen: GCacheKeyConfigs = {}
    named: set[str] = set()
    for use_case, value in configs.items():
        if isinstance(value, GCacheKeyConfig):
            chosen[use_case] = value
            continue
        named.update(value)
        if env in value:
            chosen[use_case] = value[env]
    if named and env not in named:
        raise ConfigError(
            f"GCacheKeyConfig.load_configs: no use case has a config for environment {env!r} "
            f"(the environments given: {', '.join(sorted(named))})"
        )
    return chosen


def _tolerant(init: Callable[..., None]) -> Callable[..., None]:
    """The dataclass's ``__init__``, which also takes (and tells of) keywords it does not know, as
    the original's pydantic model ignored them (``GCacheKeyConfig(use_case=..., ...)`` ran there).
    Type checkers still see the dataclass's own signature, so typed code is told of a typo."""

    @functools.wraps(init)
    def __init__(self: GCacheKeyConfig, *args: Any, **kwargs: Any) -> None:
        unknown = sorted(set(kwargs) - _FIELDS)
        if unknown:
            _told_unknown_fields(unknown)
            for name in unknown:
                del kwargs[name]
        init(self, *args, **kwargs)

    return __init__


GCacheKeyConfig.__init__ = _tolerant(GCacheKeyConfig.__init__)  # type: ignore[method-assign]


@dataclass(frozen=True, eq=False)
class GCacheKey:
    """One logical cache key: which entity, which use case, which other arguments.

    This is what config providers receive and what ``aget``/``aput``/``adelete`` take. ``args`` are
    (name, string value) pairs; they are rendered sorted by name. Two keys are equal when they
    name the same entry (the same ``urn``), as in the original library, whatever their tracking,
    default config or serializer.

    ``given_id`` and ``given_args`` keep the id and argument values as given, before ``str()``:
    with ``GCacheConfig.typed_keys`` direct access keys them with their types, as calls do (its
    ``urn``, ``str()`` of each, is then not the stored key, and ``1`` and ``"1"`` compare equal).
    """

    key_type: str
    id: str
    use_case: str
    args: Sequence[tuple[str, str]] = ()
    invalidation_tracking: bool = False
    default_config: GCacheKeyConfig | None = None
    serializer: Serializer | None = None
    urn_prefix: str = DEFAULT_URN_PREFIX
    prefix: str = field(init=False, repr=False, compare=False)
    urn: str = field(init=False, repr=False, compare=False)
    given_id: Any = field(init=False, repr=False, compare=False)
    given_args: tuple[tuple[str, Any], ...] = field(init=False, repr=False, compare=False)

    if TYPE_CHECKING:
        # The signature type checkers see: ids and argument values of any type go in (with
        # ``typed_keys`` their types count), and come out as ``id: str`` and string ``args``.
        def __init__(
            self,
            key_type: str,
            id: object,
            use_case: str,
            args: Iterable[tuple[str, object]] = (),
            invalidation_tracking: bool = False,
            default_config: GCacheKeyConfig | None = None,
            serializer: Serializer | None = None,
            urn_prefix: str = DEFAULT_URN_PREFIX,
        ) -> None: ...

    def __post_init__(self) -> None:
        if not isinstance(self.key_type, str) or not self.key_type:
            raise ConfigError(f"GCacheKey.key_type must be a non-empty string, got {self.key_type!r}")
        if not isinstance(self.use_case, str) or not self.use_case:
            raise ConfigError(f"GCacheKey.use_case must be a non-empty string, got {self.use_case!r}")
        if self.use_case == WATERMARK_USE_CASE:
            raise UseCaseNameIsReservedError(f"use_case {WATERMARK_USE_CASE!r} is reserved by gcache")
        given = tuple(sorted(((str(n), v) for n, v in self.args), key=lambda pair: pair[0]))
        object.__setattr__(self, "given_id", self.id)
        object.__setattr__(self, "given_args", given)
        args = tuple(sorted((str(n), str(v)) for n, v in self.args))
        object.__setattr__(self, "id", str(self.id))
        object.__setattr__(self, "args", args)
        entity = entity_key(self.urn_prefix, self.key_type, self.id)
        object.__setattr__(self, "prefix", entity)
        object.__setattr__(self, "urn", value_key(entity, args, self.use_case))

    @property
    def watermark_key(self) -> str:
        return watermark_key(self.prefix)

    def __hash__(self) -> int:
        return hash(self.urn)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GCacheKey):
            return NotImplemented
        return self.urn == other.urn

    def __str__(self) -> str:
        return self.urn


CacheConfigProvider = Callable[[GCacheKey], Awaitable[GCacheKeyConfig | None] | GCacheKeyConfig | None]
"""Called once per cached call (sync or async); ``None`` means "use the decorator's default_config"."""


class Serializer(ABC):
    """Turns values into bytes for Redis and back. ``dump`` and ``load`` may be sync or async.

    The default (no serializer) is pickle. A serializer applies only to the REMOTE layer: LOCAL
    keeps the Python object itself.
    """

    @abstractmethod
    def dump(self, obj: Any) -> bytes | str | Awaitable[bytes | str]: ...

    @abstractmethod
    def load(self, data: bytes | str) -> Any: ...


@dataclass
class GCacheConfig:
    """Everything a GCache instance needs.

    Args:
        cache_config_provider: sync or async ``(GCacheKey) -> GCacheKeyConfig | None``, called once
            per cached call; ``None`` falls back to the decorator's ``default_config``.
        redis_config: where Redis is; omit both this and ``redis_client_factory`` for LOCAL only.
        redis_client_factory: ``() -> redis.asyncio.Redis | RedisCluster``, for clients you build.
        urn_prefix: first part of every key; ``flushall`` finds this cache's keys by it.
        metrics_prefix: prepended to every metric name.
        logger: where errors are logged (rate-limited); default ``logging.getLogger("gcache")``.
        local_max_entries: LOCAL entries kept per use case (least recently used go first).
        local_max_bytes: also bound each use case's LOCAL values to this many bytes (sized by
            their pickled length on each fill; None: no byte bound).
        config_reuse_sec: reuse a use case's config provider answer for this long (0: ask on
            every call). Saves the provider call, and for a sync function with an async provider
            the thread hop; assumes the answer depends on the use case, not the id or args.
        max_future_buffer_ms: the largest ``future_buffer_ms`` an invalidation accepts.
        tracked_compute_limit_sec: a tracked value whose computation took longer than this is
            returned but not written to Redis; invalidation fences live at least this long, which
            keeps the invalidation guarantee exact.
        failover_buffer_ms: after a failover (or a primary's restart) each tracked entity's fence
            is made anew on first use, refusing every entry written before, with the watermark
            server-now + this: set it to the longest ``future_buffer_ms`` your invalidations
            use, so that the buffer of one lost in the failover still holds (README, "Guarantees
            through failover").
        failover_fencing: False: tracked reads send no ``INFO replication`` and trust a fence
            whatever replication history it was made in, which saves the server an INFO per read
            and about 450 bytes of reply (a sync tracked REMOTE hit measured 1.25-1.31x a bare GET
            instead of 1.34-1.41x): for a Redis with neither replicas nor persistence, or a
            deployment that accepts the risk. After a failover or a restart from RDB/AOF such
            reads trust rolled-back fences until a script makes them anew (README, "Guarantees
            through failover"). Processes of both kinds share one Redis without remaking each
            other's fences.
        invalidate_replicas: ``invalidate`` / ``ainvalidate`` return only once Redis's ``WAIT``
            confirms this many replicas have the raised watermark (0: no WAIT); on a cluster,
            the replicas of the node that took it.
        invalidate_wait_ms: how long that WAIT may take; fewer replicas by then raise
            ``RemoteError`` (its ``cause`` a ``ReplicasNotConfirmed``): the primary has the
            invalidation, so retrying is safe.
        invalidation_outbox_size: how many entities' invalidations Redis did not take are kept
            in this process and replayed until it does (the invalidation outbox; 0: none kept,
            each raises and is lost). Repeats of an entity are one item. Past the bound the
            oldest is dropped and every tracked entity runs uncached here until the outbox
            drains (README, "Invalidations while Redis fails").
        invalidation_outbox_raises: an invalidation kept in the outbox still raises
            ``RemoteError`` (True, the original library's behaviour); False: it returns once
            kept, and the outbox applies it when Redis answers.
        error_log_interval_sec: at most one log line per kind of error in this interval.
        metrics_registry: the prometheus_client registry (default: the global one).
        read_timeout_sec: deadline of one cache lookup in Redis (None: the client's own socket
            timeout). Past it the call is served uncached.
        write_timeout_sec: deadline of one write-back or lock operation (None: likewise).
            Invalidations, deletions and flushes use the client's socket timeout (1 s by default).
        breaker_failures: Redis failures in a row (connection errors, timeouts) that open the
            circuit breaker; while it is open REMOTE is skipped. 0: no breaker.
        breaker_probe_sec: while the breaker is open, Redis is probed (PING) this often in the
            background; the first answer closes it.
        max_value_bytes: a value whose serialized form is larger is served but not cached
            (None: no limit); a stored value larger than this is a miss, never loaded.
        max_key_length: a call whose rendered key is longer is served uncached, counted as a
            key error (``KeyTooLongError``): ids and arguments are often caller-controlled.
        serializer: REMOTE serialization of use cases that give none (None: pickle); e.g.
            ``gcache.serializers.JsonSerializer()``, whose loading runs no code.
        signing_keys: keys (str or bytes, 16 bytes at least) that sign every REMOTE entry and
            bus message; the first signs, all verify (rotation). An entry or message without a
            valid signature is never trusted. None: from ``GCACHE_SIGNING_KEYS``
            (comma-separated); no keys: unsigned, as the original library. Never shown in repr.
        require_signing: refuse to start (ConfigError) without signing keys.
        accept_unsigned_messages: with keys, still apply unsigned bus messages: for the deploy
            that turns signing on, while some processes have no keys yet (see SECURITY.md).
        key_hash_secret: with it, an id or argument value longer than ``hash_parts_longer_than``
            characters is keyed by its HMAC-SHA-256 under this secret (16 bytes at least; the
            same on every process, and never rotated: another secret is another key) instead of
            making the key too long. Never shown in repr.
        hash_parts_longer_than: see ``key_hash_secret``.
        timer_sample_every: ``gcache_get_timer`` times one lookup in this many, per use case
            and layer (1, the default: every lookup, so its ``_count`` is the number of
            lookups). Above 1 a LOCAL hit skips two clock reads and an observation on the other
            lookups; count lookups with ``gcache_request_counter`` then.
        legacy_compat: read and write the original gcache's keys, entries and watermarks
            (rungalileo/gcache 2.x and 3.0, and its Go client), so that its processes and ours
            share one Redis and prefix and honour each other's invalidations: for a rolling
            deploy from it, or a fleet that keeps both. Tracked use cases then sit LOCAL out,
            REMOTE keeps no fail-safe grace, and entries are unsigned (see the README's
            "Migrating from the original gcache").
        tell_mistakes: log (WARNING, once per use case) a cached function called outside any
            ``enable()``, and one called with no config (no provider answer and no
            ``default_config``), each naming the use case and the fix. None, the default: on
            when Python runs in development mode (``python -X dev``) or ``GCACHE_DEBUG=1``.
        typed_keys: key each id and argument with its type (``urns.typed_part``), so ``1`` and
            ``"1"``, ``None`` and ``"None"`` get different entries: True for every key type, or
            the key types (a set of names) that are keyed so. Per key type, not per use case: an
            entity is one key for every use case of its key type and for ``invalidate()``. False,
            the default: ``str()`` of each, today's keys.

    Raises:
        ConfigError: a bad value; RedisConfigConflictError when both Redis options are given.
    """

    cache_config_provider: CacheConfigProvider | None = None
    redis_config: RedisConfig | None = None
    redis_client_factory: Callable[[], Any] | None = None
    urn_prefix: str | None = "urn:gcache"
    metrics_prefix: str = ""
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None
    local_max_entries: int = 10_000
    local_max_bytes: int | None = None
    config_reuse_sec: float = 0.0
    max_future_buffer_ms: int = 3_600_000
    tracked_compute_limit_sec: float = 300.0
    failover_buffer_ms: int = 0
    failover_fencing: bool = True
    invalidate_replicas: int = 0
    invalidate_wait_ms: int = 100
    invalidation_outbox_size: int = 10_000
    invalidation_outbox_raises: bool = True
    error_log_interval_sec: float = 5.0
    metrics_registry: CollectorRegistry | None = None
    read_timeout_sec: float | None = 0.05
    write_timeout_sec: float | None = 0.25
    breaker_failures: int = 5
    breaker_probe_sec: float = 1.0
    max_value_bytes: int | None = 4 * 1024 * 1024
    max_key_length: int = 4096
    serializer: Serializer | None = None
    signing_keys: Sequence[str | bytes] | None = field(default=None, repr=False)
    require_signing: bool = False
    accept_unsigned_messages: bool = False
    key_hash_secret: str | bytes | None = field(default=None, repr=False)
    hash_parts_longer_than: int = 256
    timer_sample_every: int = 1
    legacy_compat: bool = False
    tell_mistakes: bool | None = None
    typed_keys: bool | Collection[str] = False

    def __post_init__(self) -> None:
        if self.redis_config is not None and self.redis_client_factory is not None:
            raise RedisConfigConflictError(
                "GCacheConfig: give redis_config or redis_client_factory, not both"
            )
        if self.redis_config is not None and not isinstance(self.redis_config, RedisConfig):
            raise ConfigError(f"GCacheConfig.redis_config must be a RedisConfig, got {self.redis_config!r}")
        if self.redis_client_factory is not None and not callable(self.redis_client_factory):
            raise ConfigError("GCacheConfig.redis_client_factory must be callable")
        if self.cache_config_provider is not None and not callable(self.cache_config_provider):
            raise ConfigError("GCacheConfig.cache_config_provider must be callable")
        if self.urn_prefix is None:
            self.urn_prefix = "urn:gcache"
        if not self.urn_prefix or any(c in self.urn_prefix for c in "{}*?[]\\"):
            raise ConfigError(
                f"GCacheConfig.urn_prefix must be non-empty and free of {{}}*?[]\\, got {self.urn_prefix!r}"
            )
        _positive("local_max_entries", self.local_max_entries, integer=True)
        if self.local_max_bytes is not None:
            _positive("local_max_bytes", self.local_max_bytes, integer=True)
        _positive("max_future_buffer_ms", self.max_future_buffer_ms, integer=True, zero=True)
        _positive("config_reuse_sec", self.config_reuse_sec, zero=True)
        _positive("tracked_compute_limit_sec", self.tracked_compute_limit_sec)
        _positive("failover_buffer_ms", self.failover_buffer_ms, integer=True, zero=True)
        _positive("invalidate_replicas", self.invalidate_replicas, integer=True, zero=True)
        _positive("invalidate_wait_ms", self.invalidate_wait_ms, integer=True)
        _positive("invalidation_outbox_size", self.invalidation_outbox_size, integer=True, zero=True)
        if not isinstance(self.invalidation_outbox_raises, bool):
            raise ConfigError(
                "GCacheConfig.invalidation_outbox_raises must be True or False, got "
                f"{self.invalidation_outbox_raises!r}"
            )
        _positive("error_log_interval_sec", self.error_log_interval_sec, zero=True)
        for name in ("read_timeout_sec", "write_timeout_sec"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        _positive("breaker_failures", self.breaker_failures, integer=True, zero=True)
        _positive("breaker_probe_sec", self.breaker_probe_sec)
        if self.max_value_bytes is not None:
            _positive("max_value_bytes", self.max_value_bytes, integer=True)
        _positive("max_key_length", self.max_key_length, integer=True)
        if self.serializer is not None and not (
            callable(getattr(self.serializer, "dump", None))
            and callable(getattr(self.serializer, "load", None))
        ):
            raise ConfigError(f"GCacheConfig.serializer must have dump() and load(), got {self.serializer!r}")
        for name in ("require_signing", "accept_unsigned_messages", "legacy_compat", "failover_fencing"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"GCacheConfig.{name} must be True or False, got {getattr(self, name)!r}")
        if self.tell_mistakes is not None and not isinstance(self.tell_mistakes, bool):
            raise ConfigError(
                f"GCacheConfig.tell_mistakes must be True, False or None, got {self.tell_mistakes!r}"
            )
        if not isinstance(self.typed_keys, bool):
            names = self.typed_keys
            if isinstance(names, str) or not isinstance(names, Collection) or not names:
                raise ConfigError(
                    f"GCacheConfig.typed_keys must be True, False or a set of key types, got {names!r}"
                )
            if not all(isinstance(n, str) and n for n in names):
                raise ConfigError(f"GCacheConfig.typed_keys: key types are non-empty strings, got {names!r}")
            self.typed_keys = frozenset(names)
        if self.signing_keys is not None:
            signing_keys_from(self.signing_keys)  # a bad key is told here, at configuration
        if self.legacy_compat:
            _legacy_compatible(self)
        _positive("hash_parts_longer_than", self.hash_parts_longer_than, integer=True)
        _positive("timer_sample_every", self.timer_sample_every, integer=True)
        if self.key_hash_secret is not None:
            secret = self.key_hash_secret
            if not isinstance(secret, (str, bytes)):
                raise ConfigError(
                    f"GCacheConfig.key_hash_secret must be str or bytes, got {type(secret).__name__}"
                )
            if len(secret.encode() if isinstance(secret, str) else secret) < 16:
                raise ConfigError("GCacheConfig.key_hash_secret must be 16 bytes at least")

    def typed_for(self, key_type: str) -> bool:
        """Whether ``key_type``'s ids and arguments are keyed with their types (``typed_keys``)."""
        typed = self.typed_keys
        return typed if isinstance(typed, bool) else key_type in typed


_TOLD_FIELDS: set[tuple[str, ...]] = set()


def _told_unknown_fields(names: list[str]) -> None:
    told = tuple(names)
    if told in _TOLD_FIELDS or len(_TOLD_FIELDS) > 100:
        return
    _TOLD_FIELDS.add(told)
    logging.getLogger("gcache").warning(
        "gcache: a GCacheKeyConfig was given fields gcache does not know, ignored: %s (known: %s)",
        ", ".join(names),
        ", ".join(sorted(_FIELDS)),
    )


def _legacy_compatible(config: GCacheConfig) -> None:
    """What ``legacy_compat`` cannot go with: the original's entries carry no signature, its
    watermarks outlive entries only within its caps, and it hashes no key parts."""
    if config.require_signing or config.signing_keys:
        raise ConfigError(
            "GCacheConfig.legacy_compat: the original gcache's entries carry no signature; "
            "signing_keys and require_signing cannot be used with it"
        )
    limit = MAX_FUTURE_BUFFER_SECONDS * 1000
    if config.max_future_buffer_ms > limit:
        raise ConfigError(
            f"GCacheConfig.legacy_compat: max_future_buffer_ms is {config.max_future_buffer_ms}, "
            f"above the original's {limit} ms (its watermarks would not outlive the entries they stop)"
        )
    if config.typed_keys:
        raise ConfigError("GCacheConfig.legacy_compat: typed_keys renders keys the original cannot find")
    if config.key_hash_secret is not None:
        raise ConfigError(
            "GCacheConfig.legacy_compat: key_hash_secret renders keys the original cannot find; "
            "hash sensitive parts with gcache.hash_component instead, as the original does"
        )


def _positive(name: str, value: Any, *, integer: bool = False, zero: bool = False) -> None:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value < 0 or (value == 0 and not zero):
        what = "an integer" if integer else "a number"
        bound = "0 or more" if zero else "above 0"
        raise ConfigError(f"GCacheConfig.{name} must be {what} {bound}, got {value!r}")
