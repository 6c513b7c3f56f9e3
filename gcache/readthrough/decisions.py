"""The read-through's decisions for one use case, written once and without I/O.

Which layers a call takes part in (config, ramps, the breaker), what a LOCAL lookup or a REMOTE
read found (fresh, invalidated, expired in grace), what a miss writes back and for how long, and
what a caller is served when the function failed or outlasted the soft timeout. The drivers
(:mod:`gcache.readthrough._async` and the generated ``_sync``) do the I/O these ask for; who may
share whose read or run is :mod:`gcache.readthrough.sharing`'s.
"""

from __future__ import annotations

import hashlib
import math
import random
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, cast

from gcache import _envelope, original_wire
from gcache._codec import Codec, OriginalCodec
from gcache._log import summary
from gcache.config import CacheLayer, GCacheKeyConfig, Serializer
from gcache.keys import GCacheKey, KeyBuilder, KeyPartWatch
from gcache.local import MISS, LocalStore
from gcache.metrics import LAYER_CONFIG, LAYER_LOCAL, LAYER_REMOTE, UseCaseMetrics
from gcache.readthrough.original_entries import OriginalEntries
from gcache.remote.protocol import read_limit
from gcache.single_flight import Flight, FlightTable
from gcache.urns import KEY_TYPE_ESCAPES, escape_id, original_value_key, value_key, value_key_tail

LocalFills = tuple[list[str], list[float], list[int]]  # entities, LOCAL TTLs, LOCAL epochs

if TYPE_CHECKING:
    from gcache.readthrough.runtime import Runtime
    from gcache.remote import TrackedRead

__all__ = ["ABSENT", "Decisions", "Miss", "Unstored", "key_share"]

_LOCAL, _REMOTE = CacheLayer.LOCAL, CacheLayer.REMOTE
_WRITE_RESULTS = {1: "stored", 0: "invalidated", -1: "fence_replaced", -2: "too_slow"}
_perf = time.perf_counter
_monotonic = time.monotonic
_random = random.random
_blake2b = hashlib.blake2b


def key_share(urn: str) -> float:
    """Where a key stands in a ``ramp_by="key"`` ramp: a point of [0, 100) from the top 53 bits of
    the 8-byte BLAKE2b of its value key, so the same in every process and after restarts (unlike
    ``hash()``, salted per process). The key is in a layer's ramp when its share is below it.

    One share per key for both layers, so ramps nest: a key in REMOTE's ramp is in LOCAL's when
    LOCAL's is as large or larger, and a key in at 10 % stays in at 50 %. With a draw per layer a
    ramped REMOTE would feed a different set of keys than LOCAL keeps, so neither layer's hit rate
    would be that of a full rollout to those keys. The value key names the use case, so each use
    case ramps its own share of entities.
    """
    return (int.from_bytes(_blake2b(urn.encode(), digest_size=8).digest(), "big") >> 11) * (100 / 2**53)


class Unstored:
    """A function's result to return but not to store: ``cached_route`` wraps a response that
    may not be shared (a status, size or cookie it does not keep) in it, so that no layer is
    written and nothing is counted as an error. Its callers, joiners included, get the wrapper."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


class _Absent:
    """``ABSENT``: what ``cached_many`` keeps for an id its function returned no value for."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Any = _Absent()


class Miss:
    """One call's miss: what the layers said, and what the leader's work needs."""

    __slots__ = (
        "batch",
        "began",
        "config",
        "due",
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
        self.batch = False  # a cached_many call's: an ABSENT entry is its answer, not a miss
        self.token: bytes | None = None  # the distributed lock, while this call holds it
        self.key: tuple[str, tuple[tuple[str, str], ...]] | None = None  # (id, pairs), for watch_key
        self.due = False  # refresh_ahead: the REMOTE entry read is past its refresh point


class Decisions(OriginalEntries):
    """One use case's state and the decisions of its calls (see the module docstring).

    A class of about 250 lines: its state (``__init__``) is what every decision reads.
    """

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
        envelope: original_wire.Envelope = original_wire.Envelope.PICKLE,
    ) -> None:
        self.rt = runtime
        self.use_case = use_case
        self.function_name = use_case  # direct access has no function; wrap() names it
        self.key_type = key_type
        self.tracked = tracked
        self.default_config = default_config
        self.serializer = serializer
        self.codec = Codec(serializer)
        self.signer = runtime.signer
        # An untracked pickle's payload, taken with its header checked and nothing parsed (see
        # _envelope.untracked_pickle); None: every entry goes through fresh().
        self._plain: Callable[[bytes | None, str], bytes | None] | None = None
        self._plain_many: Callable[[list[bytes | None], int], list[bytes | None]] | None = None
        if not tracked and serializer is None:
            signer = runtime.signer
            self._plain = (
                _envelope.untracked_pickle if signer is None else partial(_envelope.signed_pickle, signer)
            )
            if signer is None:
                self._plain_many = _envelope.untracked_pickles
        self.unsigned_pickle = serializer is None and runtime.signer is None and runtime.remote is not None
        # The longest stored value worth loading: a planted giant is a miss, never unpickled or
        # kept in LOCAL (the same bound as writes, framed). REMOTE reads at most one byte more.
        limit = read_limit(runtime.max_value_bytes)
        self.read_limit = sys.maxsize if limit is None else limit
        self.local = local
        self.remote = runtime.remote
        self.m = metrics
        self.keys = keys
        # gcache_get_timer times every lookup, unless GCacheConfig.timer_sample_every asks for
        # one in N (the 1st, N+1st, ... of a use case and layer).
        self.sample_every = runtime.timer_sample_every
        if self.sample_every > 1:
            self.local_get = self.local_get_sampled  # type: ignore[method-assign]
        self._tick = 0  # LOCAL lookups so far, when sampled
        self._reads = 0  # REMOTE reads so far, when sampled
        self._reused: tuple[Any, float] | None = None  # (provider answer, reuse until)
        self._last_good: GCacheKeyConfig | None = None  # served while the provider fails
        self._entity_head = "{" + f"{runtime.prefix}:{key_type.translate(KEY_TYPE_ESCAPES)}:"
        self._key_tail = value_key_tail(use_case)
        self.legacy_compat = runtime.legacy_compat
        self.missing_ttl = 0.0  # cached_many(cache_missing=True): how long an absent id is kept
        self.wire_envelope = envelope  # how the original frames this use case's entries
        if runtime.legacy_compat:  # the original's entries and keys (see original_entries)
            self.codec = OriginalCodec(serializer)
            self._plain = self._plain_many = None
            self.unsigned_pickle = False
            self._entity_head = "{" + f"{runtime.prefix}:{key_type}:"
            self._key_tail = "#" + use_case
            if tracked:  # the other library's invalidations are not announced to LOCAL tiers
                self.local_layer = self._local_sits_out  # type: ignore[method-assign]
        self.flights = FlightTable()
        self.reads: dict[str, Flight] = {}  # tracked REMOTE reads not sent yet, for merging
        self.closed = False  # the GCache was closed: calls are served uncached
        self.watch = KeyPartWatch() if keys is not None else None
        # refresh_ahead: key -> inf while its background refresh runs in this process, or the
        # monotonic time before which one that failed is not tried again (see Sharing.claim_refresh)
        self.refreshing: dict[str, float] = {}
        self.tell_outside = self.tell_missing = runtime.tell_mistakes

    def render(self, id: str, pairs: tuple[tuple[str, str], ...]) -> tuple[str, str]:
        """``(value key, entity)`` of an id, as the decorated function's wrapper renders them
        inline (``usecase.wrap``): for a batch's ids and direct access."""
        entity = self.entity(id)
        if self.legacy_compat:
            return original_value_key(entity, pairs, self.use_case, tracked=self.tracked), entity
        return (value_key(entity, pairs, self.use_case) if pairs else entity + self._key_tail), entity

    def entity(self, id: str) -> str:
        return self._entity_head + (id if self.legacy_compat else escape_id(id)) + "}"

    def render_many(self, ids: list[str], pairs: tuple[tuple[str, str], ...]) -> tuple[list[str], int]:
        """:meth:`render`'s keys of a batch's ids, and the longest one's length; without arguments
        one f-string an id, the batch tested for delimiters at once (a key and an entity built per
        id cost a 50-id page a sixth of its instructions; the entities are left to
        :meth:`entities`, which a page read from REMOTE alone does not need)."""
        if pairs or self.legacy_compat:
            urns = [self.render(id, pairs)[0] for id in ids]
            return urns, max(map(len, urns))
        head, tail = self._entity_head, self._key_tail
        urns = [f"{head}{id}}}{tail}" for id in self._escaped(ids)]
        return urns, max(map(len, urns))

    def entities(self, ids: list[str]) -> list[str]:
        """:meth:`entity` of a batch's ids."""
        head = self._entity_head
        return [f"{head}{id}}}" for id in (ids if self.legacy_compat else self._escaped(ids))]

    @staticmethod
    def _escaped(ids: list[str]) -> list[str]:
        every = "".join(ids)
        return ids if escape_id(every) is every else [escape_id(id) for id in ids]

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
        """Remember the provider's answer for ``config_reuse_sec`` (errors are never kept), and as
        the last good one, served while the provider fails (``_config_failed``; None: the
        ``default_config``)."""
        if provided is None or isinstance(provided, GCacheKeyConfig):
            self._last_good = provided
        if self.rt.config_reuse_sec:
            self._reused = (provided, _monotonic() + self.rt.config_reuse_sec)

    def _resolved(self, provided: Any) -> GCacheKeyConfig | None:
        config = self.default_config if provided is None else provided
        if config is None:
            self._disabled_layers("missing_config")
            if self.tell_missing:
                self.called_without_config()
            return None
        if not isinstance(config, GCacheKeyConfig):
            return self._config_failed(
                TypeError(f"config provider returned {type(config).__name__}, not GCacheKeyConfig")
            )
        return config

    def _config_failed(self, exc: BaseException) -> GCacheKeyConfig | None:
        """The provider raised, or answered something else than a config: the call is served with
        the provider's last good answer for this use case, however old it is (the provider's most
        recent word: a bound on its age would turn a long outage of the config service into the
        stampede this prevents), else the decorator's ``default_config``; with neither, uncached.
        Counted in ``gcache_error_counter{layer="config"}`` either way, and logged rate-limited."""
        fallback = self._last_good if self._last_good is not None else self.default_config
        if fallback is None:
            self._config_error(exc)
            return None
        kind = type(exc).__name__
        self.m.error(LAYER_CONFIG, kind, "False").inc()
        which = "its last good answer" if fallback is self._last_good else "default_config"
        self.rt.errors.warning(
            (self.use_case, LAYER_CONFIG, kind, which),
            f"config provider failed for use case {self.use_case!r} ({LAYER_CONFIG}): {summary(exc)}; "
            f"served with {which}",
            exc,
        )
        return fallback

    def _config_error(self, exc: BaseException) -> None:
        self._disabled_layers("config_error")
        self._error(LAYER_CONFIG, exc, "config provider failed")

    def _disabled_layers(self, reason: str) -> None:
        """A call without a config: counted for each layer, as the original counts it (every
        layer it has falls through to the next)."""
        self.m.disabled(LAYER_LOCAL, reason).inc()
        if self.remote is not None:
            self.m.disabled(LAYER_REMOTE, reason).inc()

    def layers(self, config: GCacheKeyConfig, urn: str) -> tuple[float, float]:
        """TTL of LOCAL and REMOTE for a direct put (both layers decided at once)."""
        return self.local_layer(config, urn), self.remote_layer(config, urn)

    def local_layer(self, config: GCacheKeyConfig, urn: str) -> float:
        """LOCAL's TTL for this call, 0 when it sits the call out.

        A layer missing from ``ttl_sec`` or ``ramp`` counts ``missing_config`` (the original's
        rule); one set up with TTL 0 is out and counts nothing; at a ramp of 100 it is in without
        a random draw or a hash of ``urn``; only a ramp in between asks :meth:`_ramped`.
        """
        ttl = config.ttl_sec.get(_LOCAL)
        ramp = config.ramp.get(_LOCAL)
        if ttl is None or ramp is None:
            self.m.disabled(LAYER_LOCAL, "missing_config").inc()
            return 0
        if ttl and ramp < 100:
            return self._ramped(ttl, ramp, LAYER_LOCAL, config, urn)
        return ttl

    def _local_sits_out(self, config: GCacheKeyConfig, urn: str) -> float:
        """``local_layer`` of a tracked use case with ``legacy_compat``: LOCAL takes no part."""
        self.m.disabled(LAYER_LOCAL, "legacy_compat").inc()
        return 0

    def remote_layer(self, config: GCacheKeyConfig, urn: str) -> float:
        """REMOTE's TTL for this call (as :meth:`local_layer`), 0 also while the breaker is open.

        Asked once LOCAL has fallen through, so a LOCAL hit counts nothing for REMOTE.
        """
        remote = self.remote
        if remote is None:
            return 0
        ttl = config.ttl_sec.get(_REMOTE)
        ramp = config.ramp.get(_REMOTE)
        if ttl is None or ramp is None:
            self.m.disabled(LAYER_REMOTE, "missing_config").inc()
            return 0
        if ttl and ramp < 100:
            ttl = self._ramped(ttl, ramp, LAYER_REMOTE, config, urn)
        if ttl and remote.breaker.is_open:
            self.m.disabled(LAYER_REMOTE, "server_down").inc()
            return 0
        return ttl

    def held_out(self, remote_ttl: float) -> float:
        """A tracked call of an entity whose invalidation waits in the outbox: REMOTE still holds
        entries under the old watermark, so it is neither read nor written (counted
        ``invalidation_pending``), and LOCAL is not filled; the function serves the call."""
        if remote_ttl:
            self.m.disabled(LAYER_REMOTE, "invalidation_pending").inc()
        return 0.0

    def _ramped(self, ttl: float, ramp: float, layer: str, config: GCacheKeyConfig, urn: str) -> float:
        """``ttl`` for the share ``ramp`` (0-100) of calls, one random draw (``ramp_by="call"``),
        or of keys, the key's :func:`key_share` (``"key"``); 0 (counted) otherwise."""
        if ramp <= 0 or (key_share(urn) if config.ramp_by == "key" else _random() * 100) >= ramp:
            self.m.disabled(layer, "ramped_down").inc()
            return 0
        return ttl

    def local_get(self, urn: str, entity: str) -> Any:
        """A LOCAL lookup: counted, timed (two clock reads and an observation of three C calls,
        see metrics.FastHistogram), and its miss counted with its reason."""
        m = self.m
        m.request_local.inc()
        start = _perf()
        try:
            value, reason = self.local.get(urn, entity)
        except Exception as exc:  # fail open: a broken LOCAL layer is a miss, never the caller's error
            self.local_error(exc, "LOCAL lookup failed")
            return MISS
        m.get_local.observe(_perf() - start)
        if reason is not None:
            m.miss(LAYER_LOCAL, reason).inc()
        return value

    def local_get_sampled(self, urn: str, entity: str) -> Any:
        """:meth:`local_get` timing one lookup in ``timer_sample_every``."""
        self.m.request_local.inc()
        tick = self._tick
        self._tick = tick + 1
        try:
            if tick % self.sample_every:
                value, reason = self.local.get(urn, entity)
            else:
                start = _perf()
                value, reason = self.local.get(urn, entity)
                self.m.get_local.observe(_perf() - start)
        except Exception as exc:
            self.local_error(exc, "LOCAL lookup failed")
            return MISS
        if reason is not None:
            self.m.miss(LAYER_LOCAL, reason).inc()
        return value

    def timed_read(self) -> bool:
        """Whether this REMOTE read is timed, when ``timer_sample_every`` samples them."""
        reads = self._reads
        self._reads = reads + 1
        return not reads % self.sample_every

    def local_put(
        self, urn: str, entity: str, value: Any, ttl: float, epoch: int, grace: float = 0.0
    ) -> bool:
        """Fill LOCAL; whether it kept the value."""
        try:
            refused = self.local.put(urn, entity, value, ttl, epoch, grace)
        except Exception as exc:  # fail open: the caller has its value; LOCAL just does not keep it
            self.local_error(exc, "LOCAL store failed")
            return False
        if refused is None:
            self.m.local_stored.inc()
            return True
        self.m.write(LAYER_LOCAL, refused).inc()
        return False

    def local_due(self, urn: str, config: GCacheKeyConfig) -> bool:
        """refresh_ahead, after a LOCAL hit: whether the entry is past its refresh point."""
        try:
            return self.local.due(urn, config.refresh_ahead)
        except Exception as exc:  # fail open: no refresh, the hit stands
            self.local_error(exc, "LOCAL lookup failed")
            return False

    def remote_due(self, m: Miss, stamp_us: int, read: TrackedRead | None, pttl_ms: int) -> bool:
        """refresh_ahead: whether a fresh REMOTE entry is past its refresh point.

        Its age is the server's time of a tracked read minus the entry's stamp (the server time
        of the read before its write); untracked, this host's clock minus the writer's (the only
        place two hosts' clocks meet: a skew moves when a refresh starts, never what is served).
        Its own TTL is that age plus the fresh life left (PTTL less the fail-safe grace), held
        within what ``ttl_jitter`` could have made of the configured TTL, which also bounds what
        a skewed clock can do.
        """
        left_ms = pttl_ms - m.config.fail_safe_sec * 1000
        if pttl_ms < 0 or left_ms <= 0:
            return False  # no TTL, or past it (fail-safe's grace: not a hit)
        now_us = read.now_us if read is not None else time.time_ns() // 1000
        ttl_ms = m.remote_ttl * 1000
        own_ms = min(max((now_us - stamp_us) / 1000 + left_ms, ttl_ms * (1.0 - m.config.ttl_jitter)), ttl_ms)
        return left_ms <= (1.0 - m.config.refresh_ahead) * own_ms

    def fresh(self, urn: str, raw: bytes | None, read: TrackedRead | None) -> _envelope.Envelope | None:
        """The envelope of a remote entry that is not invalidated, or None (the miss is counted).

        With signing keys, an entry without a valid signature for this key is a miss before any
        other field of it is believed. Whether it is past its TTL (in a fail-safe grace period)
        is :meth:`expired`'s question.
        """
        if raw is None:
            self.m.miss(LAYER_REMOTE, "not_found").inc()
            return None
        try:
            env = _envelope.decode(raw)
        except _envelope.EnvelopeError as exc:
            self.m.miss(LAYER_REMOTE, exc.reason).inc()
            return None
        signer = self.signer
        if signer is not None and not _envelope.signed_by(signer, urn, raw):
            self.bad_signature(urn, signer.knows(env.key_id), env.key_id == _envelope.NO_KEY_ID)
            return None
        if env.serializer_id != self.codec.serializer_id:
            self.m.miss(LAYER_REMOTE, "serializer_mismatch").inc()
            return None
        if read is not None:
            if env.nonce != read.nonce:  # the fence it was written under was lost or replaced
                self.m.miss(LAYER_REMOTE, "fence_mismatch").inc()
                return None
            if env.stamp_us <= read.watermark_us:
                self.m.miss(LAYER_REMOTE, "invalidated").inc()
                return None
        return env

    def to_load(
        self, m: Miss, raw: bytes | None, read: TrackedRead | None, pttl_ms: int, ahead: float = 0.0
    ) -> tuple[bytes, int, bool] | None:
        """What a REMOTE read found worth loading: payload, flags and whether it is past its TTL
        (a fail-safe entry kept as a stale value); None when there is nothing to load. With
        ``ahead`` (refresh_ahead), ``m.due`` tells whether a fresh one is past its refresh point
        (with ``legacy_compat`` never: the original's entries are not judged)."""
        if self.legacy_compat:
            return self.original_to_load(m, raw, read)
        env = self.fresh(m.urn, raw, read)
        if env is None:
            if raw is not None and m.stale_layer == LAYER_LOCAL:
                m.stale = MISS  # Redis holds a newer copy it refused: the LOCAL one is no better
            return None
        expired = self.expired(m, pttl_ms) if m.config.fail_safe_sec else False
        if expired and m.stale is not MISS:
            return None  # a stale LOCAL value is at hand already: no need to load this one
        if ahead and not expired:
            m.due = self.remote_due(m, env.stamp_us, read, pttl_ms)
        return env.payload, env.flags, expired

    def expired(self, m: Miss, pttl_ms: int) -> bool:
        """Whether a fail-safe entry is past its TTL: it lives ``fail_safe_sec`` longer in Redis."""
        grace_ms = m.config.fail_safe_sec * 1000
        if grace_ms and 0 <= pttl_ms <= grace_ms:
            self.m.miss(LAYER_REMOTE, "expired").inc()
            return True
        return False

    def keep_stale(self, m: Miss, value: Any, layer: str) -> None:
        if m.stale is MISS:
            m.stale, m.stale_layer = value, layer

    def fits(self, payload: bytes) -> bool:
        """Whether a payload is within ``max_value_bytes``; one that is not is counted. With
        ``legacy_compat`` the framed entry is measured instead (:meth:`original_entry`)."""
        return True if self.legacy_compat else self.fits_size(len(payload))

    def envelope(
        self, urn: str, payload: bytes, flags: int, read: TrackedRead | None, ttl_ms: int = 0
    ) -> bytes | None:
        """The entry to store at ``urn``, signed when there are keys; None when it cannot be
        stored (``legacy_compat``: see :meth:`original_entry`).

        A tracked entry is stamped with its read's server time and carries its fence's nonce,
        which the write script checks are still current; an untracked one, this clock's time.
        """
        if self.legacy_compat:
            return self.original_entry(payload, read, ttl_ms)
        if read is not None:
            stamp_us, nonce = read.now_us, read.nonce or _envelope.NO_NONCE
        else:
            stamp_us, nonce = time.time_ns() // 1000, _envelope.NO_NONCE
        return _envelope.encode(
            payload, self.codec.serializer_id, flags, stamp_us, nonce, key=urn, signer=self.signer
        )

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
        if tracked and epochs.held and epochs.holds(entity):
            epoch, remote_ttl = -1, self.held_out(remote_ttl)
        of = epochs.of(entity) if tracked else 0
        reads_first = bool(remote_ttl) and (tracked or not shared_read or bool(config.soft_timeout_sec))
        began = _monotonic() if tracked else 0.0
        m = Miss(urn, entity, config, local_ttl, remote_ttl, epoch, of, reads_first, began)
        if stale and config.fail_safe_sec and local_ttl:
            try:
                self.keep_stale(m, self.local.get_stale(urn, entity), LAYER_LOCAL)
            except Exception as exc:
                self.local_error(exc, "LOCAL lookup failed")
        return m

    def write_ttls(self, m: Miss) -> tuple[float, float, float]:
        """LOCAL TTL, REMOTE TTL and grace for a write: shortened at random by ``ttl_jitter``."""
        jitter = m.config.ttl_jitter
        scale = 1.0 - jitter * _random() if jitter else 1.0
        return m.local_ttl * scale, m.remote_ttl * scale, m.config.fail_safe_sec

    def remote_ttl_ms(self, ttl: float, grace: float) -> int:
        """An entry's life in Redis: its TTL and fail-safe grace. With ``legacy_compat`` no grace
        (the original's readers would serve it as fresh), and a tracked entry at most the
        original's tracked TTL cap, so that every watermark outlives what it suppresses."""
        if self.legacy_compat:
            if self.tracked:
                ttl = min(ttl, original_wire.MAX_TRACKED_TTL_SECONDS)
            return max(1, int(ttl * 1000))
        return max(1, int((ttl + grace) * 1000))

    def wrote(self, result: int) -> bool:
        self.m.write(LAYER_REMOTE, _WRITE_RESULTS.get(result, "unknown")).inc()
        return result == 1

    def batch_misses(
        self,
        config: GCacheKeyConfig,
        entries: list[tuple[str, str, float]],
        *,
        stale: bool = True,
        remote_ttl: float | None = None,
    ) -> list[Miss]:
        """A batch's misses (``entries``: key, entity, LOCAL TTL): REMOTE decided once for the
        batch (``remote_ttl`` when it was), or per key under a sticky ramp (``ramp_by="key"``);
        each its own reader (a batch reads REMOTE for all its ids at once, before any single
        flight)."""
        per_key = config.ramp_by == "key"
        if remote_ttl is None:
            remote_ttl = 0.0 if per_key or not entries else self.remote_layer(config, entries[0][0])
        ms = []
        for urn, entity, local_ttl in entries:
            ttl = self.remote_layer(config, urn) if per_key else remote_ttl
            m = self.miss(urn, entity, config, local_ttl, ttl, stale=stale, shared_read=False)
            m.batch = True
            ms.append(m)
        return ms

    def judged_whole(self, config: GCacheKeyConfig) -> bool:
        """Whether a batch's REMOTE read is judged as a whole (:meth:`accept_many`), needing no
        miss per id before it: untracked (no fences), no fail-safe or refresh_ahead (no PTTL per
        entry), one REMOTE decision for the batch (``ramp_by="call"``), a sync codec."""
        return not (
            self.tracked
            or config.fail_safe_sec
            or config.refresh_ahead
            or config.ramp_by == "key"
            or self.codec.is_async
        )

    def accept_many(
        self,
        urns: list[str],
        raws: list[bytes | None],
        reads: list[TrackedRead] | None,
        miss_at: Callable[[int], Miss],
        fills: LocalFills | None,
    ) -> tuple[list[Any], bool]:
        """What a batch's REMOTE reads found, as ``aaccept`` takes one (a batch of a use case
        without fail-safe or refresh_ahead, whose codec is not async): each value (LOCAL filled)
        or MISS, the loads timed together, as many observations of their mean; and whether every
        entry was a value (no MISS, no ABSENT among them).

        ``miss_at(i)`` is the i-th key's miss, asked only for an entry that needs the full checks
        (none, or not a plain pickle), so an untracked batch served from REMOTE makes none;
        ``fills``: each key's entity, LOCAL TTL and LOCAL epoch at the read (untracked: -1, not
        looked at), None when LOCAL sits the batch out.
        """
        limit, plain, codec = self.read_limit, self._plain, self.codec
        n = len(urns)
        values: list[Any] = [MISS] * n
        plains = self._plain_many(raws, limit) if self._plain_many is not None else None
        at: Sequence[int]
        if plains is not None and None not in plains:  # a page of plain pickles: no check per entry
            at, payloads, flags = range(n), cast("list[bytes]", plains), [0] * n
        else:
            at, payloads, flags = [], [], []
            for i, raw in enumerate(raws):
                payload = plains[i] if plains is not None else None
                flag = 0
                if payload is None:
                    if raw is not None and len(raw) > limit:
                        self.m.miss(LAYER_REMOTE, "too_large").inc()
                        continue
                    payload = plain(raw, urns[i]) if plain is not None and plains is None else None
                if payload is None:
                    m = miss_at(i)
                    found = self.to_load(m, raw, None if reads is None else reads[i], -1)
                    if found is None:
                        continue
                    payload, flag, _ = found
                    if flag & _envelope.FLAG_ABSENT:
                        values[i] = self.absent(m)
                        continue
                at.append(i)
                payloads.append(payload)
                flags.append(flag)
            if not at:
                return values, False
        start = _perf()
        whole = len(payloads) == n
        try:
            if codec.loads is not None:  # pickle: straight to C
                loads = codec.loads
                loaded = [loads(payload) for payload in payloads]
            else:
                load = codec.load
                loaded = [load(payload, flag) for payload, flag in zip(payloads, flags, strict=True)]
        except Exception:  # one of them: each on its own, the undecodable ones missed
            loaded = [self._load_one(payload, flag) for payload, flag in zip(payloads, flags, strict=True)]
            whole = False
        self.m.load.observe_many((_perf() - start) / len(loaded), len(loaded))
        if fills is None:
            if whole:
                return loaded, True
            for i, value in zip(at, loaded, strict=True):
                values[i] = value
            return values, False
        entities, local_ttls, epochs = fills
        for i, value in zip(at, loaded, strict=True):
            if value is not MISS:
                ttl = local_ttls[i]
                if ttl:  # no fail-safe grace: a fail-safe batch reads one by one
                    self.local_put(urns[i], entities[i], value, ttl, epochs[i])
                values[i] = value
        return values, whole

    def _load_one(self, payload: bytes, flags: int) -> Any:
        try:
            codec = self.codec
            return codec.loads(payload) if codec.loads is not None else codec.load(payload, flags)
        except Exception as exc:
            self.m.miss(LAYER_REMOTE, "undecodable").inc()
            self.remote_error(exc, "stored value could not be loaded")
            return MISS

    def absent(self, m: Miss) -> Any:
        """An entry saying the function had no value for the id: a batch's answer (ABSENT, kept in
        LOCAL as such); a miss for a single call or a direct ``get``, which have no such answer."""
        if not m.batch:
            self.m.miss(LAYER_REMOTE, "absent").inc()
            return MISS
        if m.local_ttl:
            self.local_put(
                m.urn, m.entity, ABSENT, min(m.local_ttl, self.missing_ttl or m.local_ttl), m.epoch
            )
        return ABSENT

    def absent_ttl(self, m: Miss) -> bool:
        """Whether an id the function returned no value for is cached (``cache_missing``): its
        layers' TTLs become ``missing_ttl_sec`` at most."""
        ttl = self.missing_ttl
        if not ttl:
            return False
        m.local_ttl, m.remote_ttl = min(m.local_ttl, ttl), min(m.remote_ttl, ttl)
        return bool(m.local_ttl or m.remote_ttl)

    def many_result(self, result: Any) -> None:
        if not isinstance(result, Mapping):
            raise TypeError(
                f"cached_many: {self.function_name} returned {type(result).__name__}, not a mapping "
                "of id to value"
            )

    def land_many(self, m: Miss, flight: Flight, value: Any) -> None:
        """End a batch's flight for one id. An ABSENT outcome is a batch's answer only: a single
        call waiting for it starts over (the flight reads as abandoned) and runs its own function."""
        if value is ABSENT:
            flight.abandoned = True
        flight.succeed(value)
        self.flights.land(m.urn, flight, linger=m.reads_first)

    def patience(self, m: Miss) -> float | None:
        """How long this call waits for the function: the soft timeout when a stale value is at hand."""
        soft = m.config.soft_timeout_sec
        return soft if soft and m.stale is not MISS else None

    def served_stale(self, m: Miss, reason: str) -> Any:
        self.m.stale_served(m.stale_layer, reason).inc()
        return m.stale

    def outcome(self, m: Miss, flight: Flight) -> Any:
        if flight.error is None:
            return flight.value
        if m.stale is MISS and flight.stale is not None:  # the leader's stale value, as good as ours
            m.stale, m.stale_layer = flight.stale[0], flight.stale_layer
        if m.stale is not MISS:
            return self.served_stale(m, "function_error")
        raise flight.error
