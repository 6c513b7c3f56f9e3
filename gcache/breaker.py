"""The circuit breaker in front of Redis: stop paying for a server that is not answering.

A Redis that is down or hanging costs every call a deadline before it is served uncached. After
``threshold`` failures in a row (connection errors, timeouts: not command errors such as a full
server refusing a write) the breaker opens and REMOTE is skipped for free. While it is open a
probe PINGs Redis in the background every ``probe_sec``; the first answer closes it. No caller
ever pays for a probe.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future
from typing import Any

import redis

from gcache.errors import RemoteError

__all__ = ["CircuitBreaker", "is_outage"]

_OUTAGE = (redis.ConnectionError, redis.TimeoutError, OSError, EOFError, asyncio.TimeoutError)


def is_outage(exc: BaseException) -> bool:
    """Whether a failure says Redis is unreachable or not answering (not that a command failed)."""
    cause = exc.cause if isinstance(exc, RemoteError) else exc
    return isinstance(cause, _OUTAGE)


class CircuitBreaker:
    """Counts Redis failures in a row; opens at ``threshold`` (0: never), closes on a probe.

    ``success`` is one attribute store, cheap enough for every operation; the counts are not
    locked (an exact count does not matter, opening once does).

    Args:
        threshold: failures in a row that open it; 0 turns the breaker off.
        probe_sec: seconds between probes while open.
        probe: a coroutine function that raises unless Redis answers.
        submit: starts a coroutine function on the background loop thread, returning a future.
        on_change: told True when the breaker opens and False when it closes.
    """

    __slots__ = (
        "_lock",
        "_on_change",
        "_probe",
        "_probe_sec",
        "_probing",
        "_submit",
        "failures",
        "is_open",
        "threshold",
    )

    def __init__(
        self,
        *,
        threshold: int,
        probe_sec: float,
        probe: Callable[[], Awaitable[Any]],
        submit: Callable[[Callable[[], Coroutine[Any, Any, None]]], Future[Any]],
        on_change: Callable[[bool], None],
    ) -> None:
        self.threshold = threshold
        self.failures = 0
        self.is_open = False
        self._probe_sec = probe_sec
        self._probe = probe
        self._submit = submit
        self._on_change = on_change
        self._lock = threading.Lock()
        self._probing: Future[Any] | None = None

    def success(self) -> None:
        self.failures = 0

    def failure(self, exc: BaseException) -> None:
        """Count a failed operation; command errors (the server answered) do not count."""
        if not self.threshold or not is_outage(exc):
            return
        self.failures += 1
        if self.failures >= self.threshold and not self.is_open:
            self._open()

    def _open(self) -> None:
        with self._lock:
            if self.is_open:
                return
            self.is_open = True
            self._probing = self._submit(self._probe_until_answered)
        self._on_change(True)

    async def _probe_until_answered(self) -> None:
        while True:
            await asyncio.sleep(self._probe_sec)
            try:
                await self._probe()
            except Exception:
                continue
            break
        self._close()

    def _close(self) -> None:
        with self._lock:
            if not self.is_open:
                return
            self.is_open = False
            self.failures = 0
            self._probing = None
        self._on_change(False)

    def after_fork_in_child(self) -> None:
        """Closed, with no failures: the parent's probe runs on a thread this process does not have
        (an open breaker would stay open for ever). This process finds out for itself."""
        self._lock = threading.Lock()
        self._probing = None
        self.is_open = False
        self.failures = 0

    def stop(self) -> None:
        """Stop probing (the GCache is closing); an open breaker is reported closed."""
        with self._lock:
            probing, self._probing = self._probing, None
        if probing is not None:
            probing.cancel()
        self._close()
