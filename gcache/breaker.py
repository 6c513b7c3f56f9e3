"""The circuit breaker in front of Redis: stop paying for a server that is not answering.

A Redis that is down or hanging costs every call a deadline before it is served uncached. After
``threshold`` failures in a row that show Redis failing, the breaker opens and REMOTE is skipped
for free. While it is open a probe PINGs Redis in the background every ``probe_sec``; the first
answer closes it. No caller ever pays for a probe.

What shows Redis failing (:func:`is_outage`): a connection refused, reset or closed, and a timeout
on a request while Redis answered no other request of this process since it was sent. What does
not: a command error (the server answered: a full server refusing a write), and saturation of this
process, which says nothing of Redis: every pooled connection busy for ``pool_timeout`` ("No
connection available"), or a timeout while other requests got their answers (an event loop too
busy to read a reply in time, a thread not scheduled). Saturation still serves that call uncached;
it never turns the cache off for everyone else.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future
from typing import Any, NamedTuple

import redis

from gcache.errors import RemoteError

__all__ = ["CircuitBreaker", "NodeBreakers", "NodeState", "ShardDown", "is_outage"]

_OUTAGE = (redis.ConnectionError, redis.TimeoutError, OSError, EOFError, asyncio.TimeoutError)


_POOL_EXHAUSTED = "No connection available."  # redis-py's words, sync and asyncio pools alike
_TIMEOUTS = (redis.TimeoutError, TimeoutError, asyncio.TimeoutError)


def is_outage(exc: BaseException, answered_meanwhile: bool = False) -> bool:
    """Whether a failure says Redis is unreachable or not answering, rather than that a command
    failed or this process is saturated (see the module's docstring).

    ``answered_meanwhile``: Redis answered another request of this process after the failed one
    was sent, so a timeout of this one measured the process, not Redis.
    """
    cause = exc.cause if isinstance(exc, RemoteError) else exc
    if not isinstance(cause, _OUTAGE):
        return False
    if isinstance(cause, redis.ConnectionError) and str(cause) == _POOL_EXHAUSTED:
        return False
    return not (answered_meanwhile and isinstance(cause, _TIMEOUTS))


class CircuitBreaker:
    """Counts Redis failures in a row; opens at ``threshold`` (0: never), closes on a probe.

    ``answers`` counts the operations Redis answered; an operation takes it before it is sent and
    hands it to :meth:`failure`, which tells a timeout of a silent Redis from one of a busy process.
    ``success`` is one attribute store, cheap enough for every operation; the counts are not
    locked (an exact count does not matter, opening once does; a lost increment of ``answers``
    still leaves it moved).

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
        "answers",
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
        self.answers = 0
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

    def failure(self, exc: BaseException, answers_before: int | None = None) -> None:
        """Count a failed operation that shows Redis failing (see :func:`is_outage`);
        ``answers_before`` is :attr:`answers` when it was sent (None: unknown)."""
        meanwhile = answers_before is not None and self.answers != answers_before
        if not self.threshold or not is_outage(exc, meanwhile):
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


class ShardDown(redis.RedisError):
    """A call's cluster node is skipped: its breaker is open (see :class:`NodeBreakers`). Served
    uncached and counted as REMOTE disabled by ``server_down``, as under an open breaker."""

    def __init__(self, node: str) -> None:
        super().__init__(f"cluster node {node} is failing: its breaker is open")
        self.node = node


class NodeState(NamedTuple):
    """One cluster node's breaker, as :meth:`NodeBreakers.states` reads it."""

    node: str  # host:port
    open: bool
    failures: int  # in a row, since its last answer


class NodeBreakers:
    """A breaker per cluster node (by its ``host:port``), for ``RedisConfig(cluster=True)``: a
    failing primary takes only its own slots out of REMOTE.

    The cluster client asks :meth:`skip` as it sends a command to a node, and tells
    :meth:`success` or :meth:`failure` (see :func:`is_outage`) when the node answered or not.
    After ``threshold`` failures in a row a node is skipped for ``probe_sec``; then one call goes
    to it, the probe: an answer closes its breaker, a failure keeps it open another
    ``probe_sec``. Unlike the single server's breaker the probe is a caller's call, since it is
    also what makes the cluster client reread the topology and find a promoted replica (whose
    node has a breaker of its own, closed): a dead node costs that caller a refused connection;
    a hanging one, its deadline once every ``probe_sec``.

    Args:
        threshold: failures in a row that open a node's breaker; 0 turns them off.
        probe_sec: how long an open node is skipped between probes.
        on_change: told the node and True when its breaker opens, False when it closes.
    """

    __slots__ = ("_failures", "_lock", "_on_change", "_open_until", "probe_sec", "threshold")

    def __init__(self, *, threshold: int, probe_sec: float, on_change: Callable[[str, bool], None]) -> None:
        self.threshold = threshold
        self.probe_sec = probe_sec
        self._on_change = on_change
        self._failures: dict[str, int] = {}
        self._open_until: dict[str, float] = {}
        self._lock = threading.Lock()

    def open_nodes(self) -> list[str]:
        return sorted(self._open_until)

    def states(self) -> list[NodeState]:
        """Every node that failed since its last answer, by name (the others are closed, with no
        failures): for the admin app, read without stopping anyone."""
        with self._lock:
            failures, opened = dict(self._failures), set(self._open_until)
        return [
            NodeState(node, node in opened, failures.get(node, 0)) for node in sorted({*failures, *opened})
        ]

    def skip(self, node: str) -> bool:
        """Whether a command to ``node`` is skipped now; False for the probe, once a
        ``probe_sec``."""
        until = self._open_until.get(node)
        if until is None:
            return False
        now = time.monotonic()
        if now < until:
            return True
        with self._lock:
            if self._open_until.get(node, now) > now:  # another caller took this probe
                return True
            self._open_until[node] = now + self.probe_sec
        return False

    def success(self, node: str) -> None:
        if node not in self._failures:
            return
        with self._lock:
            self._failures.pop(node, None)
            was_open = self._open_until.pop(node, None) is not None
        if was_open:
            self._on_change(node, False)

    def failure(self, node: str, exc: BaseException) -> None:
        if not self.threshold or not is_outage(exc):
            return
        with self._lock:
            failures = self._failures[node] = self._failures.get(node, 0) + 1
            opens = failures >= self.threshold and node not in self._open_until
            if opens or node in self._open_until:
                self._open_until[node] = time.monotonic() + self.probe_sec
        if opens:
            self._on_change(node, True)

    def reset(self) -> None:
        """Every node closed, with no failures (after a fork, whose lock may be held by a
        thread the child does not have; or the GCache is closing)."""
        self._lock = threading.Lock()
        opened, self._open_until, self._failures = list(self._open_until), {}, {}
        for node in opened:
            self._on_change(node, False)
