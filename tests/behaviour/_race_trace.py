"""Where a read's value came from, for a worker of tests/behaviour/test_invalidation_processes.py.

With ``--trace`` the worker wraps a few read-through steps of :class:`~gcache.readthrough.usecase.
UseCase` (class-level, in that process only) and records, for every read the function did not
compute itself, how it was served: its own REMOTE hit (the entry's stamp and nonce, the fence it
read), a merged read (the leader's read and what it found), or a joined flight (the leader's read,
when the flight began and finished, and what its function read). A stale read then says which
path served it and with which fence, not only that it happened.

Times are wall-clock seconds (``time.time()``; monotonic times are converted) and Redis server
times in µs: the cache's Redis runs on this host, so both are one clock.
"""

from __future__ import annotations

import contextvars
import pickle
import time
from collections.abc import Callable
from typing import Any

from gcache.readthrough.usecase import UseCase
from gcache.remote import TrackedRead
from gcache.single_flight import Flight

# What served the current call, step by step (None: not traced).
TRACE: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar("race_trace", default=None)
_KEEP_SEC = 5.0  # how long a flight's record is kept for the callers taking its outcome
_OFFSET = time.time() - time.monotonic()


def _wall(monotonic: float) -> float | None:
    return round(monotonic + _OFFSET, 6) if monotonic and monotonic != float("inf") else None


def _read(read: TrackedRead | None) -> list[Any] | None:
    if read is None:
        return None
    return [read.nonce.hex()[:8] if read.nonce else None, read.watermark_us, read.now_us]


def note(*entry: Any) -> None:
    """Add a step to the current call's trace (when it is traced)."""
    trace = TRACE.get()
    if trace is not None:
        trace.append(list(entry))


class _Flights:
    """Records of finished flights and merged reads, by flight, kept a few seconds."""

    def __init__(self) -> None:
        self._records: dict[Flight, tuple[float, dict[str, Any]]] = {}
        self._swept = time.monotonic()

    def put(self, flight: Flight, record: dict[str, Any]) -> None:
        now = time.monotonic()
        self._records[flight] = (now, record)
        if now - self._swept > _KEEP_SEC:
            self._swept = now
            for old in [f for f, (at, _) in self._records.items() if now - at > _KEEP_SEC]:
                del self._records[old]

    def get(self, flight: Flight) -> dict[str, Any] | None:
        found = self._records.get(flight)
        return None if found is None else found[1]


def install() -> None:
    """Wrap the steps in this process (idempotent enough for one call per worker)."""
    flights = _Flights()
    fresh: Callable[..., Any] = UseCase.fresh
    read_landed: Callable[..., Any] = UseCase.read_landed
    merged: Callable[..., Any] = UseCase.merged
    awork: Callable[..., Any] = UseCase.awork
    outcome: Callable[..., Any] = UseCase.outcome

    def traced_fresh(self: UseCase, urn: str, raw: bytes | None, read: TrackedRead | None) -> Any:
        env = fresh(self, urn, raw, read)
        if env is not None:
            note("hit", env.stamp_us, env.nonce.hex()[:8], _read(read), pickle.loads(env.payload))
        elif raw is not None:
            note("refused", _read(read))
        else:
            note("none", _read(read))
        return env

    def traced_read_landed(self: UseCase, m: Any, flight: Flight, value: Any) -> None:
        trace = TRACE.get()
        flights.put(
            flight,
            {"read": _read(m.read), "read_at": _wall(m.read_at), "by": list(trace or ()), "at": time.time()},
        )
        read_landed(self, m, flight, value)

    def traced_merged(self: UseCase, m: Any, flight: Flight) -> Any:
        note("merged", flights.get(flight), _wall(m.began))
        return merged(self, m, flight)

    async def traced_awork(self: UseCase, m: Any, flight: Flight, *args: Any) -> None:
        try:
            await awork(self, m, flight, *args)
        finally:
            trace = TRACE.get()
            flights.put(
                flight,
                {
                    "read": _read(flight.read),
                    "began": _wall(flight.began),
                    "done": _wall(flight.done_at),
                    "of": flight.of,
                    "by": list(trace or ()),
                },
            )

    def traced_outcome(self: UseCase, m: Any, flight: Flight) -> Any:
        note(
            "joined",
            flights.get(flight),
            {"read": _read(m.read), "began": _wall(m.began), "read_at": _wall(m.read_at), "of": m.of},
        )
        return outcome(self, m, flight)

    UseCase.fresh = traced_fresh  # type: ignore[method-assign, assignment]
    UseCase.read_landed = traced_read_landed  # type: ignore[method-assign, assignment]
    UseCase.merged = traced_merged  # type: ignore[method-assign, assignment]
    UseCase.awork = traced_awork  # type: ignore[method-assign, assignment]
    UseCase.outcome = traced_outcome  # type: ignore[method-assign, assignment]
