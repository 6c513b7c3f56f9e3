"""Who may share whose REMOTE read or function run without breaking the invalidation guarantee.

Single flight (:mod:`gcache.single_flight`) is the mechanism; these are its rules for one use
case: a merged tracked read is taken only while unsent, a run only with evidence that no
invalidation came between (see :meth:`Sharing.joinable`).
"""

from __future__ import annotations

import math
import threading
from typing import Any

from gcache import _fork
from gcache.local import MISS
from gcache.readthrough.decisions import Decisions, Miss, _monotonic
from gcache.single_flight import Flight

__all__ = ["Sharing"]

REFRESH_RETRY_SEC = 1.0  # refresh_ahead: a key whose refresh failed is not tried again before this
_CLAIMS = threading.Lock()  # guards every use case's ``refreshing``: held for a few instructions


def _after_fork_in_child() -> None:
    global _CLAIMS
    _CLAIMS = threading.Lock()


_fork.at_fork_in_child(_after_fork_in_child)


class Sharing(Decisions):
    """The join rules of one use case's misses and merged reads."""

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
        - this call had REMOTE off (a ramp, an open breaker) and takes part in LOCAL, and the
          entity's LOCAL epoch is trusted and has not moved since the leader started: LOCAL's
          guarantee, under which other processes' invalidations arrive over the bus.

        A call that read or tried to read REMOTE and has no read on one side to compare (its
        read or the leader's failed) is not served by an older flight: the bus may not have
        brought an invalidation that returned before it started. Nor is a call with neither
        layer (LOCAL off or ramped down, REMOTE out): LOCAL's bus lag is no part of its
        guarantee, and the function it would otherwise run reads the source afresh (a REMOTE-only
        use case whose breaker opened is as exact as REMOTE). A finished flight serves only
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
        return not m.reads_first and bool(m.local_ttl) and m.epoch >= 0 and self.rt.epochs.trusted

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

    def claim_refresh(self, urn: str) -> bool:
        """refresh_ahead: whether this hit starts the background refresh of ``urn`` (single
        flight in the process): none is running, and none failed in the last
        :data:`REFRESH_RETRY_SEC`. While one runs, a due hit costs one dict lookup."""
        refreshing = self.refreshing
        mark = refreshing.get(urn)
        if mark is not None and (mark == math.inf or mark > _monotonic()):
            return False
        with _CLAIMS:
            if refreshing.get(urn) != mark:
                return False  # another caller claimed it in between
            refreshing[urn] = math.inf
        return True

    def refresh_ended(self, urn: str, hold: bool) -> None:
        """A background refresh is over; ``hold``: it failed, or another process holds the key's
        lock, so the key is not tried again for a while (expired holds of other keys are swept
        when there are many)."""
        refreshing = self.refreshing
        with _CLAIMS:
            if not hold:
                refreshing.pop(urn, None)
                return
            now = _monotonic()
            refreshing[urn] = now + REFRESH_RETRY_SEC
            if len(refreshing) > 1024:
                for key in [k for k, until in refreshing.items() if until <= now]:
                    del refreshing[key]

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
