"""Single flight: concurrent misses of one key in one process share one run of the function.

A :class:`Flight` is the run a leader started; other callers of the same key wait for it and take
its value or its exception. Whether a caller *may* take it (it must not be older than an
invalidation the caller has to respect) is the read-through's decision; this module only keeps
the outcome and wakes the waiters, threads and event-loop tasks alike.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import TYPE_CHECKING, Any

from gcache import _fork

if TYPE_CHECKING:
    from gcache.remote import TrackedRead

__all__ = ["Flight", "FlightTable"]

_LINGER_SEC = 0.25  # how long a finished flight stays findable (see FlightTable)
_WAITERS = threading.Lock()  # guards every flight's waiter lists: held for a few instructions


def _after_fork_in_child() -> None:
    global _WAITERS
    _WAITERS = threading.Lock()


_fork.at_fork_in_child(_after_fork_in_child)


class Flight:
    """One leader's run for one key: its outcome, and who waits for it.

    Attributes set by the leader before anyone can find it: ``owner`` (the leader's thread id or
    task, so a recursive call from inside the function never waits for itself), ``read`` (the
    leader's tracked read, whose fence and server time decide who may join), ``of`` (the
    entity's LOCAL epoch when it started), ``began`` (when the leader took it, before its
    function ran: a caller that began earlier may take a value computed after it began).
    ``done_at`` is the monotonic time it finished: a caller whose Redis read was sent before then
    may have missed the value only because the write had not landed yet, so it may still take
    the outcome.
    """

    __slots__ = (
        "_event",
        "_futures",
        "abandoned",
        "began",
        "done_at",
        "error",
        "of",
        "owner",
        "read",
        "sent",
        "stale",
        "stale_layer",
        "value",
    )

    def __init__(self, owner: object, read: TrackedRead | None, of: int, began: float = 0.0) -> None:
        self.owner = owner
        self.began = began  # when the leader took it, before its function ran (monotonic)
        self.read = read
        self.of = of
        self.value: Any = None
        self.error: BaseException | None = None
        self.abandoned = False  # the leader was cancelled or interrupted: waiters start over
        self.stale: tuple[Any] | None = None  # with an error: the leader's fail-safe value, for
        self.stale_layer = ""  # waiters that have none of their own
        self.done_at = 0.0  # 0 while running
        self.sent = False  # a merged read: written to Redis (callers can no longer take it)
        self._event: threading.Event | None = None
        self._futures: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] | None = None

    def mark_sent(self) -> None:
        self.sent = True

    def succeed(self, value: Any) -> None:
        self.value = value
        self._finish()

    def fail(self, error: BaseException) -> None:
        """An exception of the function is shared; anything else (a cancellation) abandons the flight."""
        if isinstance(error, Exception):
            self.error = error
        else:
            self.abandoned = True
        self._finish()

    def _finish(self) -> None:
        with _WAITERS:
            self.done_at = time.monotonic()
            event, futures, self._futures = self._event, self._futures, None
        if event is not None:
            event.set()
        if futures:
            _wake_all(futures)

    def wait(self, timeout: float | None = None) -> bool:
        """Block this thread until the flight ends; False when ``timeout`` passed first."""
        with _WAITERS:
            if self.done_at:
                return True
            if self._event is None:
                self._event = threading.Event()
            event = self._event
        return event.wait(timeout)

    async def await_done(self, timeout: float | None = None) -> bool:
        """Wait in this task until the flight ends; False when ``timeout`` passed first."""
        with _WAITERS:
            if self.done_at:
                return True
            loop = asyncio.get_running_loop()
            future: asyncio.Future[None] = loop.create_future()
            if self._futures is None:
                self._futures = []
            self._futures.append((loop, future))
        if timeout is None:
            await future
            return True
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout)
        except asyncio.TimeoutError:
            return False
        return True


def _wake_all(futures: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]) -> None:
    """Wake each waiting task in its own loop: at once in this thread's loop, else thread-safely."""
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    for loop, future in futures:
        if loop is running:
            _wake(future)
        elif not loop.is_closed():
            loop.call_soon_threadsafe(_wake, future)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class FlightTable(dict[str, Flight]):
    """The flights of one use case, by key.

    A dict, so that finding and registering a flight (every miss, and every untracked REMOTE hit
    of an async caller) are single C calls. A finished flight whose callers read Redis before
    joining stays findable for a quarter of a second, for the callers whose read raced its write
    (see :class:`Flight`); it is swept after that (at most once per linger), so the table holds
    the keys that missed in the last half second. Other finished flights leave at once.
    """

    __slots__ = ("_swept_at",)

    def __init__(self) -> None:
        super().__init__()
        self._swept_at = time.monotonic()

    def land(self, key: str, flight: Flight, *, linger: bool) -> None:
        """A flight finished: it stays for the callers its write may have raced, or leaves."""
        if not linger and self.get(key) is flight:
            self.pop(key, None)
        if flight.done_at - self._swept_at >= _LINGER_SEC:  # done_at: the time it finished
            self.sweep()

    def claim(self, key: str, flight: Flight, replace: Flight | None) -> Flight:
        """Register ``flight`` for ``key`` unless another caller got there first; returns the winner.

        ``replace`` is the flight the caller saw and cannot join (finished, or too old for it):
        it is replaced; any other flight registered meanwhile wins.
        """
        if replace is None:
            return self.setdefault(key, flight)
        current = self.get(key)
        if current is replace or current is None:
            self[key] = flight  # a race with another replacer at worst runs the function twice
            return flight
        return current

    def forget(self, key: str) -> None:
        """Drop the flight of a key (deleted or flushed: its outcome must not be handed out)."""
        self.pop(key, None)

    def sweep(self) -> None:
        """Drop flights that finished more than a linger ago (at most once per linger)."""
        now = time.monotonic()
        if now - self._swept_at < _LINGER_SEC:
            return
        self._swept_at = now
        cutoff = now - _LINGER_SEC
        for key, flight in list(self.items()):
            if flight.done_at and flight.done_at < cutoff and self.get(key) is flight:
                self.pop(key, None)
