# Generated from _async.py by `python -m gcache._unasync`: do not edit; change _async.py and regenerate.
"""The sync driver of the read-through (see _async.py, its source)."""

from __future__ import annotations

import inspect
import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gcache._envelope import FLAG_ABSENT
from gcache.config import CacheLayer, GCacheKeyConfig
from gcache.local import MISS
from gcache.metrics import LAYER_NONE, LAYER_REMOTE
from gcache.readthrough._primitives import SyncIO
from gcache.readthrough.decisions import ABSENT, Miss, Unstored, _monotonic, _perf
from gcache.readthrough.reporting import too_long
from gcache.remote import Write, new_nonce
from gcache.single_flight import Flight
from gcache.urns import lock_key, watermark_key

if TYPE_CHECKING:
    from gcache.remote import TrackedRead

__all__ = ["SyncDriver"]

_NOT_WRITTEN = "the value was served (and kept in LOCAL where the call uses it), not stored in REMOTE"
_LOCK_POLL = (0.005, 0.05)  # distributed single flight: first and longest pause between polls (s)


class SyncDriver(SyncIO):
    """The read-through's steps, one method each (a class of about 280 lines: kept together so
    that the async driver and its generated sync twin read alike)."""

    def read_through(
        self,
        urn: str,
        entity: str,
        id: str,
        pairs: tuple[tuple[str, str], ...],
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        refresh: bool = False,
    ) -> Any:
        if self.rt.provider is None:  # after close there is one: calls reach config, which tells
            config = self.default_config or self._resolved(None)
        else:
            config = self.config(id, pairs)
        if config is None:
            return self.function(LAYER_NONE, func, args, kwargs)
        local_ttl = self.local_layer(config, urn)
        if local_ttl and not refresh:
            value = self.local_get(urn, entity)
            if value is not MISS:
                if config.refresh_ahead and self.local_due(urn, config):
                    self.refresh_soon(urn, entity, config, local_ttl, func, args, kwargs)
                return value
        if len(urn) > self.rt.max_key_length:  # past LOCAL: an entry this long is never stored
            self.key_error(too_long(urn, self.rt.max_key_length))
            return self.function(LAYER_NONE, func, args, kwargs)
        self.note_blocking()
        remote_ttl = self.remote_layer(config, urn)  # LOCAL fell through: REMOTE is asked now
        m = self.miss(urn, entity, config, local_ttl, remote_ttl, shared_read=False)
        if refresh:
            return self.refresh(m, func, args, kwargs)
        if m.reads_first:
            value = self.merged_read(m) if self.tracked else self.remote_read(m)
            if value is not MISS:
                if m.due:
                    self.refresh_soon(urn, entity, config, local_ttl, func, args, kwargs)
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
        else:  # the function may outlast the soft timeout: it goes on in the background
            self.work_aside(self.work, m, flight, func, args, kwargs)
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
                if m.due and value is not MISS:
                    self.refresh_soon(m.urn, m.entity, m.config, m.local_ttl, func, args, kwargs)
            if value is MISS and m.remote_ttl and m.config.lock_sec:
                value = self.lock(m)
            if value is MISS:
                if m.key is not None:
                    self.watch_key(*m.key)
                try:
                    value = self.function(self.fallback_layer(m.local_ttl, m.remote_ttl), func, args, kwargs)
                    if type(value) is not Unstored:
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

    def refresh(
        self, m: Miss, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """A call inside ``refresh()``: the function runs and its value replaces the cached one.

        A tracked use case reads the fence first, before the function reads its data, so the
        write is refused if an invalidation lands in between, as a miss's would be.
        """
        if self.tracked and m.remote_ttl:
            remote = self.remote
            assert remote is not None
            try:
                m.read = remote.read_tracked(m.urn, watermark_key(m.entity))
            except Exception as exc:
                self.remote_error(exc, "remote read failed")
                m.remote_ttl = 0
        value = self.function(self.fallback_layer(m.local_ttl, m.remote_ttl), func, args, kwargs)
        if type(value) is not Unstored:
            self.write_back(m, value)
        return value

    def refresh_soon(self, urn: str, *refresh: Any) -> None:
        """A hit past ``refresh_ahead``'s point: its refresh in the background (``refresh``: the
        rest of ``refresh_ahead``'s arguments), unless one of this key runs in this process
        already (or failed a moment ago)."""
        if self.claim_refresh(urn):
            self.work_aside(self.refresh_ahead, urn, *refresh)

    def refresh_ahead(
        self,
        urn: str,
        entity: str,
        config: GCacheKeyConfig,
        local_ttl: float,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        """The background refresh of an entry past its refresh point; the caller has its value.

        A miss's work, with its fencing: with REMOTE, the distributed lock when ``lock_sec`` (held
        elsewhere: that process refreshes), then a REMOTE read, for a tracked use case the fence
        read before the function reads its source, so that an invalidation in between refuses
        the write (LOCAL: the epoch taken here). An entry no longer due (another process
        refreshed it) is taken into LOCAL instead of running the function. When anything fails
        (the function, Redis) nothing is written: the current entry stays.
        """
        result = "refresh_failed"
        remote, remote_ttl = self.remote, self.remote_layer(config, urn)
        m = self.miss(urn, entity, config, local_ttl, remote_ttl, stale=False)
        try:
            if m.remote_ttl:  # not remote_ttl: an entity held by the outbox has none (Decisions.miss)
                assert remote is not None
                if config.lock_sec:
                    token = new_nonce()
                    if not remote.try_lock(lock_key(urn), token, int(config.lock_sec * 1000)):
                        result = "locked"
                        return
                    m.token = token
                if self.remote_read(m) is not MISS and not m.due:
                    result = "from_remote"
                    return
                if not m.remote_ttl:
                    return  # Redis failed (told by the read)
            elif remote is not None and remote.breaker.is_open and config.ttl_sec.get(CacheLayer.REMOTE):
                return  # Redis is down: its entry cannot be refreshed, LOCAL's is left as it is
            value = self.function(self.fallback_layer(local_ttl, m.remote_ttl), func, args, kwargs)
            stored = type(value) is not Unstored and self.write_back(m, value, strict=True)
            result = "refreshed" if stored else "refused"
        except Exception as exc:
            self.refresh_failed(exc)
        finally:
            if m.token is not None:
                self.unlock(m)
            self.refresh_ended(urn, hold=result in ("refresh_failed", "locked"))
            self.m.refresh(result).inc()

    def merged_read(self, m: Miss) -> Any:
        """Tracked: the REMOTE read of this call, merged with one of this key that another caller
        of this process started and has not sent yet.

        The rule: a caller may take another's read only while that read is not yet written to
        Redis. Redis then runs it after every invalidation that returned before this caller
        started, in any process, so its fence and value are as good as a read of the caller's
        own. A read already sent may have run before such an invalidation: it is never taken.
        """
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
        """The REMOTE value (LOCAL filled), or MISS; a failing Redis takes REMOTE out of this call."""
        remote = self.remote
        assert remote is not None
        self.m.request_remote.inc()
        if self.unsigned_pickle:
            self.tell_unsigned_pickle()
        timed = self.sample_every == 1 or self.timed_read()
        pttl = -1
        config = m.config
        ahead = config.refresh_ahead  # the entry's PTTL and stamp judge it (remote_due)
        with_ttl = bool(config.fail_safe_sec or ahead)
        m.read_at = _monotonic()
        start = _perf() if timed else 0.0
        try:
            if self.tracked:
                read: TrackedRead | None = remote.read_tracked(
                    m.urn, watermark_key(m.entity), with_ttl=with_ttl, sending=sending
                )
                m.read = read
                raw, pttl = read.raw, read.pttl_ms  # type: ignore[union-attr]
            elif with_ttl:
                read, (raw, pttl) = None, remote.get_with_ttl(m.urn)
            else:
                read, raw = None, remote.get(m.urn)
        except Exception as exc:
            if timed:  # a failed lookup is a lookup: the timer's count stays the lookups'
                self.m.get_remote.observe(_perf() - start)
            self.remote_error(exc, "remote read failed")
            m.remote_ttl = 0
            return MISS
        if timed:
            self.m.get_remote.observe(_perf() - start)
        return self.accept(m, raw, read, pttl, timed)

    def accept(self, m: Miss, raw: bytes | None, read: TrackedRead | None, pttl: int, timed: bool) -> Any:
        """What a REMOTE read found: the value (LOCAL filled), or MISS (counted)."""
        if raw is not None and len(raw) > self.read_limit:
            self.m.miss(LAYER_REMOTE, "too_large").inc()
            return MISS
        expired, flags = False, 0
        config = m.config
        ahead = config.refresh_ahead
        with_ttl = bool(config.fail_safe_sec or ahead)
        # The common hit, an untracked pickle without fail-safe or refresh_ahead, takes its
        # payload at once.
        plain = self._plain
        payload = plain(raw, m.urn) if plain is not None and not with_ttl else None
        if payload is None:
            found = self.to_load(m, raw, read, pttl, ahead)
            if found is None:
                return MISS
            payload, flags, expired = found
            if flags & FLAG_ABSENT:  # cached_many(cache_missing=True): the function had no value
                return self.absent(m)
        if timed:
            start = _perf()
        try:
            codec = self.codec
            if codec.loads is not None:  # pickle: straight to C
                value = codec.loads(payload)
            elif not codec.is_async:
                value = codec.load(payload, flags)
            else:
                value = self.load_async_codec(payload, flags)
        except Exception as exc:
            # An entry past its TTL counted its miss already ("expired"): only the reason here.
            (self.m.miss_reason if expired else self.m.miss)(LAYER_REMOTE, "undecodable").inc()
            self.remote_error(exc, "stored value could not be loaded")
            return MISS
        if timed:
            self.m.load.observe(_perf() - start)
        if expired:
            self.keep_stale(m, value, LAYER_REMOTE)
            return MISS
        if m.local_ttl:
            self.local_put(m.urn, m.entity, value, m.local_ttl, m.epoch, m.config.fail_safe_sec)
        return value

    def write_back(self, m: Miss, value: Any, strict: bool = False) -> bool:
        """The function's value into the call's layers; whether they kept it. ``strict`` (a
        refresh): a failing REMOTE write raises, and LOCAL is left as it is."""
        local_ttl, remote_ttl, grace = self.write_ttls(m)
        stored = True
        if m.remote_ttl:
            try:
                if not self.remote_put(m.urn, m.entity, value, remote_ttl, m.read, grace):
                    local_ttl, stored = 0, False  # stale or too large: LOCAL must not keep it either
            except Exception as exc:
                if strict:
                    raise
                self.remote_error(exc, "remote write failed", _NOT_WRITTEN)
        if local_ttl:
            stored = self.local_put(m.urn, m.entity, value, local_ttl, m.epoch, grace) and stored
        return stored

    def lock(self, m: Miss) -> Any:
        """Distributed single flight: MISS when this process is to run the function (holding the
        lock when it got it), else the value another process wrote meanwhile."""
        remote = self.remote
        assert remote is not None
        key, token = lock_key(m.urn), new_nonce()
        deadline = _monotonic() + m.config.lock_sec
        pause = _LOCK_POLL[0]
        try:
            while True:
                if remote.try_lock(key, token, int(m.config.lock_sec * 1000)):
                    m.token = token
                    # Another process may have written the value and let go of the lock between
                    # this call's read and its lock: read once more before running the function.
                    value = self.remote_read(m)
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
        if self.closed:  # served uncached; Runtime.close() set a provider, so calls come here
            self.used_after_close()
            return None
        provider = self.rt.provider
        if provider is None:
            return self._resolved(None)
        reused = self._reused
        if reused is not None and reused[1] > _monotonic():
            return self._resolved(reused[0])
        try:
            provided = provider(self.make_key(id, pairs))
            if inspect.isawaitable(provided):
                provided = self.provider_answer(provided)
        except Exception as exc:  # the last good answer or default_config, else uncached
            return self._config_failed(exc)
        self._keep(provided)
        return self._resolved(provided)

    def read_many(
        self,
        ids: list[str],
        originals: dict[str, Any],
        pairs: tuple[tuple[str, str], ...],
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        with_ids: Callable[..., tuple[tuple[Any, ...], dict[str, Any]]],
        refresh: bool = False,
    ) -> dict[Any, Any]:
        """A ``cached_many`` call: ``ids`` (rendered, distinct, in the caller's order) looked up in
        LOCAL, the rest in REMOTE in one round trip, and the function called once with the ids
        still missing (``originals`` maps each rendered id to the caller's object); returns the
        caller's ids that have a value, in its order. Inside ``refresh()`` (``refresh``) the
        function runs for every id and its values replace the cached ones (:meth:`refresh_many`)."""
        if self.rt.provider is None:
            config = self.default_config or self._resolved(None)
        else:  # one answer for the batch, asked with its first id
            config = self.config(ids[0], pairs)
        if config is None:
            return dict(self.function(LAYER_NONE, func, args, kwargs))
        urns, longest = self.render_many(ids, pairs)
        if longest > self.rt.max_key_length:
            self.key_error(too_long(max(urns, key=len), self.rt.max_key_length))
            return dict(self.function(LAYER_NONE, func, args, kwargs))
        found: dict[str, Any] = {}
        if config.ramp_by == "key":  # a sticky ramp decides each id by its key
            local_ttls = [self.local_layer(config, urn) for urn in urns]
        else:  # one decision (and one draw) for the batch
            local_ttls = [self.local_layer(config, urns[0])] * len(urns)
        whole = self.judged_whole(config)  # then REMOTE alone needs no entities (see render_many)
        entities = None if whole and not (refresh or any(local_ttls)) else self.entities(ids)
        if refresh:
            assert entities is not None
            entries = list(zip(urns, entities, local_ttls, strict=True))
            refreshing = (ids, entries, config, originals, func, args, kwargs, with_ids)
            return self.refresh_many(*refreshing)
        ahead = config.refresh_ahead
        due: list[str] = []  # ids served from an entry past its refresh point
        if entities is not None and any(local_ttls):
            for id, urn, entity, local_ttl in zip(ids, urns, entities, local_ttls, strict=True):
                if local_ttl:
                    value = self.local_get(urn, entity)
                    if value is not MISS:
                        found[id] = value
                        if ahead and self.local_due(urn, config):
                            due.append(id)
        if len(found) < len(ids):
            self.note_blocking()
            if found:  # found in LOCAL: the entities are known
                assert entities is not None
                lacking = [i for i, id in enumerate(ids) if id not in found]
                lacking_ids, lacking_urns = [ids[i] for i in lacking], [urns[i] for i in lacking]
                lacking_entities: list[str] | None = [entities[i] for i in lacking]
                lacking_ttls = [local_ttls[i] for i in lacking]
            else:
                lacking_ids, lacking_urns, lacking_entities, lacking_ttls = ids, urns, entities, local_ttls
            if whole:  # one LOCAL decision for the batch: ramp_by="call"
                misses, read = self.remote_read_untracked(
                    config, lacking_ids, lacking_urns, lacking_entities, local_ttls[0], found
                )
                if read is not None:  # every id, from REMOTE: none from LOCAL, none due
                    return dict(zip(originals.values(), read, strict=True))
            else:
                assert lacking_entities is not None
                entries = list(zip(lacking_urns, lacking_entities, lacking_ttls, strict=True))
                ms = self.batch_misses(config, entries)
                misses = dict(zip(lacking_ids, ms, strict=True))
                asked = [id for id, m in misses.items() if m.remote_ttl]
                if asked:
                    values = self.remote_read_many([misses[id] for id in asked])
                    for id, value in zip(asked, values, strict=True):
                        if value is not MISS:
                            found[id] = value
                            if misses[id].due:
                                due.append(id)
            missing = [id for id in misses if id not in found]
            if missing:
                self.compute_many(missing, misses, originals, found, func, args, kwargs, with_ids)
        if due:  # found in LOCAL, or read with per-id misses: the entities are known
            assert entities is not None
            where = dict(zip(ids, zip(urns, entities, local_ttls, strict=True), strict=True))
            claimed = [(id, *where[id]) for id in due if self.claim_refresh(where[id][0])]
            if claimed:
                work = (claimed, config, originals, func, args, kwargs, with_ids)
                self.work_aside(self.refresh_many_ahead, *work)
        get = found.get
        return {originals[id]: value for id in ids if (value := get(id, ABSENT)) is not ABSENT}

    def refresh_many(
        self,
        ids: list[str],
        entries: list[tuple[str, str, float]],
        config: GCacheKeyConfig,
        originals: dict[str, Any],
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        with_ids: Callable[..., tuple[tuple[Any, ...], dict[str, Any]]],
    ) -> dict[Any, Any]:
        """:meth:`refresh` of a batch: a tracked use case reads the ids' fences first (one round
        trip), then the function runs once with every id and each value is written back, so an
        invalidation landing in between refuses that id's write, as a miss's would be."""
        ms = self.batch_misses(config, entries)
        self.read_fences(ms)
        layer = self.fallback_layer(ms[0].local_ttl, ms[0].remote_ttl)
        result = self.function(layer, func, *with_ids(args, kwargs, [originals[id] for id in ids]))
        self.many_result(result)
        writes = [(m, result.get(originals[id], ABSENT)) for id, m in zip(ids, ms, strict=True)]
        self.write_back_many([(m, v) for m, v in writes if v is not ABSENT or self.absent_ttl(m)])
        return {originals[id]: result[originals[id]] for id in ids if originals[id] in result}

    def refresh_many_ahead(
        self,
        claimed: list[tuple[str, str, str, float]],
        config: GCacheKeyConfig,
        originals: dict[str, Any],
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        with_ids: Callable[..., tuple[tuple[Any, ...], dict[str, Any]]],
    ) -> None:
        """:meth:`refresh_ahead` of a batch's entries past their refresh point (``claimed``: id,
        key, entity, LOCAL TTL), together: their locks and REMOTE reads (an entry another process
        refreshed is taken into LOCAL instead), then the function once with the ids still due,
        each value written back under a miss's fencing. Counted per id."""
        results = {urn: "refresh_failed" for _, urn, _, _ in claimed}
        remote = self.remote
        refreshed = self.batch_misses(config, [entry[1:] for entry in claimed], stale=False)
        ms = dict(zip((id for id, _, _, _ in claimed), refreshed, strict=True))
        try:
            todo = list(ms)
            if any(m.remote_ttl for m in ms.values()):
                assert remote is not None
                remote_ids = [id for id in todo if ms[id].remote_ttl]  # a sticky ramp: per key
                if config.lock_sec:
                    for id in list(remote_ids):
                        token, m = new_nonce(), ms[id]
                        if remote.try_lock(lock_key(m.urn), token, int(config.lock_sec * 1000)):
                            m.token = token
                        else:  # another process refreshes it
                            results[m.urn] = "locked"
                            todo.remove(id)
                            remote_ids.remove(id)
                values = self.remote_read_many([ms[id] for id in remote_ids]) if remote_ids else []
                for id, value in zip(remote_ids, values, strict=True):
                    m = ms[id]
                    if value is not MISS and not m.due:
                        results[m.urn] = "from_remote"
                        todo.remove(id)
                    elif not m.remote_ttl:  # Redis failed (told by the read)
                        todo.remove(id)
            elif remote is not None and remote.breaker.is_open and config.ttl_sec.get(CacheLayer.REMOTE):
                todo = []  # Redis is down: its entries cannot be refreshed, LOCAL's are left
            if todo:
                first = ms[todo[0]]
                layer = self.fallback_layer(first.local_ttl, first.remote_ttl)
                call = with_ids(args, kwargs, [originals[id] for id in todo])
                result = self.function(layer, func, *call)
                self.many_result(result)
                for id in todo:
                    m = ms[id]
                    value = result.get(originals[id], ABSENT)
                    if value is not ABSENT:
                        stored = self.write_back(m, value, strict=True)
                    else:
                        stored = self.absent_ttl(m) and self.write_back(m, ABSENT, strict=True)
                    results[m.urn] = "refreshed" if stored else "refused"
        except Exception as exc:
            self.refresh_failed(exc)
        finally:
            for m in ms.values():
                if m.token is not None:
                    self.unlock(m)
                result = results[m.urn]
                self.refresh_ended(m.urn, hold=result in ("refresh_failed", "locked"))
                self.m.refresh(result).inc()

    def remote_batch(self, urns: list[str], fences: list[str] | None) -> list[Any] | None:
        """A batch's REMOTE reads in one round trip (a cluster's: one per node), counted and timed
        as that many lookups; None when Redis failed (told)."""
        remote = self.remote
        assert remote is not None
        n = len(urns)
        self.m.request_remote.add(n)
        start = _perf()
        try:
            reads = remote.read_many(urns, fences)
        except Exception as exc:
            self.remote_error(exc, "remote read failed")
            reads = None
        self.m.get_remote.observe_many((_perf() - start) / n, n)  # still one per lookup
        return reads

    def remote_read_many(self, ms: list[Miss]) -> list[Any]:
        """:meth:`remote_read` of many misses at once: each value (LOCAL filled) or MISS."""
        config = ms[0].config
        if config.fail_safe_sec or config.refresh_ahead:  # each value's PTTL is needed: read by read
            return [self.remote_read(m) for m in ms]
        read_at = _monotonic()
        urns = [m.urn for m in ms]
        fences = [watermark_key(m.entity) for m in ms] if self.tracked else None
        reads = self.remote_batch(urns, fences)
        for m in ms:
            m.read_at = read_at
            if reads is None:
                m.remote_ttl = 0
        if reads is None:
            return [MISS] * len(ms)
        if self.tracked:
            tracked: list[TrackedRead] | None = reads
            for m, read in zip(ms, reads, strict=True):
                m.read = read
            raws = [read.raw for read in reads]
        else:
            tracked, raws = None, reads
        if not self.codec.is_async:
            fills = None
            if any(m.local_ttl for m in ms):
                fills = [m.entity for m in ms], [m.local_ttl for m in ms], [m.epoch for m in ms]
            return self.accept_many(urns, raws, tracked, ms.__getitem__, fills)[0]
        return [self.accept(m, raw, m.read, -1, True) for m, raw in zip(ms, raws, strict=True)]

    def remote_read_untracked(
        self,
        config: GCacheKeyConfig,
        ids: list[str],
        urns: list[str],
        entities: list[str] | None,
        local_ttl: float,
        found: dict[str, Any],
    ) -> tuple[dict[str, Miss], list[Any] | None]:
        """:meth:`remote_read_many` of an untracked batch judged as a whole (:meth:`judged_whole`):
        nothing is kept per id before the read (not even a LOCAL epoch: epochs fence tracked
        entries alone), and a miss is made only for an id whose entry needs the full checks or
        was not found, so a page served from REMOTE makes none (they were a third of its
        instructions). Returns the misses and fills ``found``; or, when ``found`` is empty and
        every id was read whole, no misses and the values in ``ids``' order, ``found`` left
        unfilled (the caller maps them at once: filling it and mapping from it cost a 50-id
        page a tenth of its own work)."""
        remote_ttl = self.remote_layer(config, urns[0])
        if not remote_ttl:
            entries = list(zip(urns, entities or self.entities(ids), [local_ttl] * len(urns), strict=True))
            return dict(zip(ids, self.batch_misses(config, entries, remote_ttl=0.0), strict=True)), None
        made: dict[int, Miss] = {}

        def miss_at(i: int) -> Miss:
            m = made.get(i)
            if m is None:
                entity = self.entity(ids[i]) if entities is None else entities[i]  # None: LOCAL sat out
                m = self.miss(urns[i], entity, config, local_ttl, remote_ttl, shared_read=False)
                m.batch = True
                made[i] = m
            return m

        n = len(urns)
        read_at = _monotonic()
        raws = self.remote_batch(urns, None)
        if raws is None:
            values: list[Any] = [MISS] * n
        else:
            fills = None
            if local_ttl:  # then LOCAL was looked up: the entities are known
                assert entities is not None
                fills = entities, [local_ttl] * n, [-1] * n
            values, whole = self.accept_many(urns, raws, None, miss_at, fills)
            if whole and not found:
                return {}, values
        misses: dict[str, Miss] = {}
        for i, value in enumerate(values):
            if value is MISS:
                m = miss_at(i)
                m.read_at = read_at
                if raws is None:
                    m.remote_ttl = 0  # Redis failed: nothing is written back either
                misses[ids[i]] = m
            else:
                found[ids[i]] = value
        return misses, None

    def compute_many(
        self,
        missing: list[str],
        misses: dict[str, Miss],
        originals: dict[str, Any],
        found: dict[str, Any],
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        with_ids: Callable[..., tuple[tuple[Any, ...], dict[str, Any]]],
    ) -> None:
        """The function once for the missing ids this call leads (single flight per id: an id in
        another call's run is taken from it), each value written back; fills ``found``."""
        owner = threading.get_ident()
        leading: list[tuple[str, Miss, Flight]] = []
        joined: list[tuple[str, Miss, Flight]] = []
        for id in missing:
            m = misses[id]
            flight, leads = self.flight_for(m, owner)
            (leading if leads else joined).append((id, m, flight))
        if leading:
            first = leading[0][1]
            layer = self.fallback_layer(first.local_ttl, first.remote_ttl)
            call = with_ids(args, kwargs, [originals[id] for id, _, _ in leading])
            try:
                result = self.function(layer, func, *call)
                self.many_result(result)
            except BaseException as exc:
                for _, m, flight in leading:
                    flight.fail(exc)
                    self.flights.land(m.urn, flight, linger=m.reads_first)
                raise
            values = [result.get(originals[id], ABSENT) for id, _, _ in leading]
            try:
                writes = [(m, value) for (_, m, _), value in zip(leading, values, strict=True)]
                kept = [(m, v) for m, v in writes if v is not ABSENT or self.absent_ttl(m)]
                self.write_back_many(kept)
            finally:
                for (id, m, flight), value in zip(leading, values, strict=True):
                    self.land_many(m, flight, value)
                    found[id] = value
        for id, m, flight in joined:
            self.m.joined.inc()
            flight.wait()
            if flight.value is ABSENT or not flight.abandoned:
                found[id] = self.outcome(m, flight)
            else:  # its leader was cancelled: this call runs the function for it
                self.compute_many([id], misses, originals, found, func, args, kwargs, with_ids)

    def remote_put(
        self, urn: str, entity: str, value: Any, ttl: float, read: TrackedRead | None, grace: float = 0.0
    ) -> bool:
        """Write to Redis for ``ttl`` (+ ``grace``); False when refused as stale or too large.

        A tracked entry is written under the fence its read returned; a direct put, which has
        no read, reads first (creating the fence if need be) to stamp and sign what it writes.
        """
        write = self.remote_entry(urn, entity, value, ttl, read, grace)
        if write is None:
            return False
        remote = self.remote
        assert remote is not None
        return self.wrote(remote.write(write))

    def remote_entry(
        self, urn: str, entity: str, value: Any, ttl: float, read: TrackedRead | None, grace: float
    ) -> Write | None:
        """What :meth:`remote_put` writes (the value dumped, framed and signed); None when it is
        not to be stored (too large, or not in the original's formats)."""
        remote = self.remote
        assert remote is not None
        if self.unsigned_pickle:
            self.tell_unsigned_pickle()
        start = _perf()
        codec = self.codec
        if value is ABSENT:
            payload, flags = b"", FLAG_ABSENT
        else:
            payload, flags = codec.dump(value) if not codec.is_async else self.dump_async_codec(value)
        self.m.dump.observe(_perf() - start)
        if not self.fits(payload):
            return None
        ttl_ms = self.remote_ttl_ms(ttl, grace)
        fence = watermark_key(entity) if self.tracked else None
        if fence is not None and read is None:
            read = remote.read_tracked(urn, fence)
        envelope = self.envelope(urn, payload, flags, read if fence is not None else None, ttl_ms)
        if envelope is None:
            return None
        return Write(urn, envelope, ttl_ms, fence, read if fence is not None else None)

    def read_fences(self, ms: list[Miss]) -> None:
        """A tracked use case's misses given their fences' reads in one round trip (creating the
        fences that do not exist), so their writes are fenced as read-through misses' are; when
        Redis fails, their REMOTE writes are off (told once)."""
        fenced = [m for m in ms if m.remote_ttl and m.read is None] if self.tracked else []
        if not fenced:
            return
        remote = self.remote
        assert remote is not None
        try:
            reads = remote.read_many([m.urn for m in fenced], [watermark_key(m.entity) for m in fenced])
            for m, read in zip(fenced, reads, strict=True):
                m.read = read
        except Exception as exc:
            self.remote_error(exc, "remote read failed")
            for m in fenced:
                m.remote_ttl = 0

    def write_back_many(self, writes: list[tuple[Miss, Any]]) -> list[bool]:
        """:meth:`write_back` of a batch's values: their REMOTE writes in one round trip
        (:meth:`RemoteCache.write_many`), then LOCAL; whether each was kept. A failing Redis
        fails the REMOTE writes (told once), LOCAL keeps the values."""
        stored = [True] * len(writes)
        local_ttls: list[float] = []
        graces: list[float] = []
        pending: list[tuple[int, Write]] = []
        for i, (m, value) in enumerate(writes):
            local_ttl, remote_ttl, grace = self.write_ttls(m)
            if m.remote_ttl:
                try:
                    write = self.remote_entry(m.urn, m.entity, value, remote_ttl, m.read, grace)
                except Exception as exc:
                    self.remote_error(exc, "remote write failed", _NOT_WRITTEN)
                else:
                    if write is None:  # too large: LOCAL must not keep it either
                        local_ttl, stored[i] = 0, False
                    else:
                        pending.append((i, write))
            local_ttls.append(local_ttl)
            graces.append(grace)
        if pending:
            remote = self.remote
            assert remote is not None
            try:
                results = remote.write_many([write for _, write in pending])
            except Exception as exc:
                self.remote_error(exc, "remote write failed", _NOT_WRITTEN)
            else:
                for (i, _), result in zip(pending, results, strict=True):
                    if not self.wrote(result):  # stale: LOCAL must not keep it either
                        local_ttls[i], stored[i] = 0, False
        for i, (m, value) in enumerate(writes):
            if local_ttls[i]:
                kept = self.local_put(m.urn, m.entity, value, local_ttls[i], m.epoch, graces[i])
                stored[i] = kept and stored[i]
        return stored

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
