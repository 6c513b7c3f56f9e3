"""The invalidation bus: Redis pub/sub that carries invalidations and deletions to every process.

Each GCache with a REMOTE layer subscribes, on first need, to ``<urn_prefix>#invalidation`` over a
connection of its own, served by gcache's private loop thread (so sync and async applications
alike receive messages while they do other work). Messages are published by the same Lua script
that moves the watermark or deletes the entry, stamped with the Redis server's clock:

    i|<server time us>|<future buffer ms>|<origin>|<entity>    an entity was invalidated
    d|<server time us>|0|<origin>|<value key>                   one entry was deleted
    f|<server time us>|0|<origin>|                              the whole cache was flushed

``origin`` names the publishing GCache instance, which applied the change to its own LOCAL
layer before publishing; it does not apply its own messages a second time.

While the subscription is down nothing guarantees this process hears about invalidations, so
the owner is told (``on_down``): it drops its tracked LOCAL entries and fills none until the bus
is subscribed again (``on_up``). Reconnection is automatic, with capped exponential backoff and
jitter. A connection that hangs silently is caught by a ping every ``ping_interval`` seconds.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import random
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, NamedTuple

from gcache._log import ErrorLog
from gcache._loop_thread import LoopThread

__all__ = ["MAX_TARGET_BYTES", "BusMessage", "InvalidationBus", "parse_message"]


class BusMessage(NamedTuple):
    kind: str  # "invalidate", "delete" or "flush"
    published_us: int  # Redis server time of the publish
    buffer_ms: int
    origin: str  # the publishing GCache instance
    target: str  # the entity, or the value key


_KINDS = {b"i": "invalidate", b"d": "delete", b"f": "flush"}


MAX_TARGET_BYTES = 8192  # the longest entity or value key a message may name


def parse_message(data: object) -> BusMessage:
    """Parse a bus payload, checking every field (anyone who can PUBLISH can send one).

    Raises:
        ValueError: not a message of this format, naming what is wrong.
    """
    if not isinstance(data, bytes):
        raise ValueError(f"a message is bytes, not {type(data).__name__}")
    fields = data.split(b"|", 4)
    if len(fields) != 5:
        raise ValueError(f"{len(fields)} fields, not 5")
    kind, published, buffer, origin, target = fields
    if kind not in _KINDS:
        raise ValueError(f"unknown kind {kind[:8]!r}")
    if not (published.isdigit() and len(published) <= 20 and buffer.isdigit() and len(buffer) <= 20):
        raise ValueError("time and buffer must be decimal integers")
    if len(origin) != 12 or not all(c in b"0123456789abcdef" for c in origin):
        raise ValueError("origin must be 12 hex digits")
    if len(target) > MAX_TARGET_BYTES:
        raise ValueError(f"target of {len(target)} bytes, {MAX_TARGET_BYTES} at most")
    if (kind == b"f") != (target == b""):
        raise ValueError("a flush names no target, an invalidation or deletion names one")
    return BusMessage(
        _KINDS[kind], int(published), int(buffer), origin.decode(), target.decode("utf-8", "surrogateescape")
    )


class InvalidationBus:
    """Keeps one subscription alive and hands every message to ``on_message``.

    Args:
        channel: the pub/sub channel.
        origin: this instance's name in messages; its own messages are not delivered.
        connect: makes a fresh ``redis.asyncio`` client, called on the loop thread.
        loop_thread: where the subscription runs.
        on_message: called (on the loop thread) for each parsed message, with its lag in seconds.
        on_up / on_down: called when the subscription is confirmed / lost.
        on_dropped: called for each message dropped as malformed or failing to apply.
        ping_interval: seconds between liveness pings; a ping unanswered for as long again
            counts as a lost connection.
    """

    def __init__(
        self,
        *,
        channel: str,
        origin: str,
        connect: Callable[[], Awaitable[Any]],
        loop_thread: LoopThread,
        on_message: Callable[[BusMessage, float], None],
        on_up: Callable[[], None],
        on_down: Callable[[], None],
        errors: ErrorLog,
        on_dropped: Callable[[], None] = lambda: None,
        ping_interval: float = 1.0,
        backoff: tuple[float, float] = (0.05, 5.0),
    ) -> None:
        self.channel = channel
        self.origin = origin
        self._connect = connect
        self._loop_thread = loop_thread
        self._on_message = on_message
        self._on_up = on_up
        self._on_down = on_down
        self._on_dropped = on_dropped
        self._errors = errors
        self._ping_interval = ping_interval
        self._backoff = backoff
        self._lock = threading.Lock()
        self._task: concurrent.futures.Future[None] | None = None
        self._running: asyncio.Task[Any] | None = None
        self._stopping = False
        self._clock_offset_us = 0.0
        self.subscribed = False
        self.connections = 0  # subscriptions set up so far (1 + reconnects)
        self.resume = False  # a forked child whose parent had started the bus: start on first look

    def after_fork_in_child(self, origin: str) -> None:
        """Start over as a bus that never ran, under this process's own ``origin``.

        The parent's subscription lives on the parent's loop thread and socket: neither is this
        process's. It is started again on first need (``resume`` when the parent had it up).
        """
        self.origin = origin
        self._lock = threading.Lock()
        self.resume = self._task is not None and not self._stopping
        self._task = self._running = None
        self.subscribed = False
        self.connections = 0

    def ensure_started(self) -> None:
        """Start the subscription if it is not running; cheap and idempotent."""
        if self._task is not None or self._stopping:
            return
        self.resume = False
        with self._lock:
            if self._task is None and not self._stopping:
                self._task = self._loop_thread.submit(self._run)

    def stop(self) -> None:
        """Unsubscribe and close the connection, on the bus's own loop, and wait until it is done."""
        with self._lock:
            self._stopping = True
            started, self._task = self._task, None
        if started is None:
            return
        if self._loop_thread.in_thread():
            if self._running is not None:
                self._running.cancel()
            return

        async def shutdown() -> None:
            task = self._running
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

        with contextlib.suppress(Exception):
            self._loop_thread.run(shutdown)
        with contextlib.suppress(BaseException):
            started.result(timeout=5)

    async def _run(self) -> None:
        self._running = asyncio.current_task()
        delay = self._backoff[0]
        while not self._stopping:
            try:
                await self._subscribe_and_listen()
                delay = self._backoff[0]
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._errors.warning(
                    ("bus", type(exc).__name__), f"invalidation bus lost: {type(exc).__name__}: {exc}"
                )
            finally:
                if self.subscribed:
                    self.subscribed = False
                    self._on_down()
            if self._stopping:
                break
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, self._backoff[1])

    async def _subscribe_and_listen(self) -> None:
        client = await self._connect()
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(self.channel)
            while True:  # the confirmation comes first; messages published before it are not ours
                confirmation = await pubsub.get_message(timeout=self._ping_interval * 2)
                if confirmation is None:
                    raise TimeoutError("no subscribe confirmation from Redis")
                if confirmation["type"] == "subscribe":
                    break
            await self._measure_clock(client)
            self.connections += 1
            self.subscribed = True
            self._on_up()
            await self._listen(pubsub)
        finally:
            await _finish(_close(pubsub, client))

    async def _listen(self, pubsub: Any) -> None:
        last_heard = time.monotonic()
        pinged_at: float | None = None
        while not self._stopping:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=self._ping_interval)
            now = time.monotonic()
            if message is not None:
                last_heard = now
                if message["type"] == "pong":
                    pinged_at = None
                elif message["type"] == "message":
                    self._deliver(message["data"])
                continue
            if pinged_at is not None and now - pinged_at > self._ping_interval * 2:
                raise TimeoutError(f"no answer to a ping in {now - pinged_at:.1f}s")
            if pinged_at is None and now - last_heard >= self._ping_interval:
                pinged_at = now
                await asyncio.wait_for(pubsub.ping(message=b"gcache-bus"), self._ping_interval)

    def _deliver(self, data: object) -> None:
        """Apply one message; a bad one is counted (``on_dropped``) and logged, never fatal to
        the subscription, whatever it holds or whatever applying it raises."""
        try:
            message = parse_message(data)
            if message.origin == self.origin:
                return  # applied locally, before it was published
            lag = (time.time_ns() / 1000 + self._clock_offset_us - message.published_us) / 1e6
            self._on_message(message, max(lag, 0.0))
        except Exception as exc:
            self._on_dropped()
            shown = data[:80] if isinstance(data, (bytes, str)) else type(data).__name__
            self._errors.warning(
                ("bus", "dropped"),
                f"invalidation bus: dropped a malformed or foreign message {shown!r}: {exc}",
            )

    async def _measure_clock(self, client: Any, samples: int = 5) -> None:
        """Offset from this host's clock to Redis's, so lag is measured on the Redis clock.

        The first TIME also opens the connection, so it is not used; of the others, the one with
        the shortest round trip bounds the offset most tightly.
        """
        await client.time()
        best_rtt, offset = float("inf"), 0.0
        for _ in range(samples):
            before = time.time_ns() / 1000
            seconds, micros = await client.time()
            after = time.time_ns() / 1000
            if after - before < best_rtt:
                best_rtt = after - before
                offset = seconds * 1_000_000 + micros - (before + after) / 2
        self._clock_offset_us = offset


async def _close(pubsub: Any, client: Any) -> None:
    with contextlib.suppress(Exception):
        await pubsub.aclose()
    with contextlib.suppress(Exception):
        await client.aclose()


async def _finish(cleanup: Coroutine[Any, Any, None]) -> None:
    """Run ``cleanup`` to the end even if this task is cancelled meanwhile (then re-raise).

    A cancelled task can be cancelled again while it cleans up (redis-py's own timeouts cancel
    the task too); a bare ``await`` in ``finally`` would then leave the connection open.
    """
    task = asyncio.ensure_future(cleanup)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
