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

With signing keys the kind is upper case and a signature comes before the target:
``I|<server time us>|<buffer>|<origin>|<signed us>.<key id>.<mac>|<entity>``. The MAC (see
:mod:`gcache.signing`) covers the kind, buffer, origin, signing time and target; the server time
is only used to measure lag. A process with keys drops a message that is unsigned, signed
wrongly, signed more than ``REPLAY_WINDOW_SEC`` away from its clock, or seen before
(:class:`~gcache.signing.ReplayGuard`): anyone who can PUBLISH on the server, or SUBSCRIBE and
replay, can otherwise empty every process's LOCAL layer. Unsigned messages keep the format of
earlier releases, so a fleet without keys mixes versions freely.

While the subscription is down nothing guarantees this process hears about invalidations, so
the owner is told (``on_down``): it drops its tracked LOCAL entries and fills none until the bus
is subscribed again (``on_up``). Reconnection is automatic, with capped exponential backoff and
jitter. A connection that hangs silently is caught by a ping every ``ping_interval`` seconds.
Through Redis Sentinel the bus subscribes on the master the sentinels name, and moves when they
name another (see :mod:`gcache.remote.sentinel`).
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

from gcache._log import ErrorLog, summary
from gcache._loop_thread import LoopThread
from gcache.signing import ReplayGuard, Signer

__all__ = [
    "MAX_TARGET_BYTES",
    "REPLAY_WINDOW_SEC",
    "BusMessage",
    "InvalidationBus",
    "message_signature",
    "parse_message",
    "server_address",
]


class BusMessage(NamedTuple):
    kind: str  # "invalidate", "delete" or "flush"
    published_us: int  # Redis server time of the publish
    buffer_ms: int
    origin: str  # the publishing GCache instance
    target: str  # the entity, or the value key
    signature: bytes = b""  # b"<signed us>.<key id hex>.<mac hex>"; empty: unsigned


_KINDS = {b"i": "invalidate", b"d": "delete", b"f": "flush"}
_SIGNED_KINDS = {b"I": "invalidate", b"D": "delete", b"F": "flush"}
_LETTERS = {name: letter for letter, name in _KINDS.items()}

MAX_TARGET_BYTES = 8192  # the longest entity or value key a message may name
REPLAY_WINDOW_SEC = 300.0  # a signed message is accepted this long around its signing time


def _signed_fields(kind: bytes, buffer_ms: int, origin: str, signed_us: int, target: str) -> bytes:
    return b"%b|%d|%b|%d|%b" % (
        kind,
        buffer_ms,
        origin.encode("ascii"),
        signed_us,
        target.encode("utf-8", "surrogateescape"),
    )


def message_signature(signer: Signer, kind: str, buffer_ms: int, origin: str, target: str) -> bytes:
    """The signature field of a message the publisher is about to send, signed now."""
    signed_us = time.time_ns() // 1000
    fields = _signed_fields(_LETTERS[kind], buffer_ms, origin, signed_us, target)
    return b"%d.%b" % (signed_us, signer.message_signature(fields))


def _check_signature(signer: Signer, guard: ReplayGuard, message: BusMessage) -> str | None:
    """None when ``message`` is signed by one of the keys, fresh and new; else why it is dropped."""
    if not message.signature:
        return "unsigned"
    signed, _, signature = message.signature.partition(b".")
    if not signed.isdigit() or len(signed) > 20:
        return "bad_signature"
    signed_us = int(signed)
    fields = _signed_fields(
        _LETTERS[message.kind], message.buffer_ms, message.origin, signed_us, message.target
    )
    if not signer.message_ok(fields, signature):
        return "bad_signature"
    return guard.check(message.signature, signed_us, time.time_ns() // 1000)


def parse_message(data: object) -> BusMessage:
    """Parse a bus payload, checking every field (anyone who can PUBLISH can send one).

    Raises:
        ValueError: not a message of this format, naming what is wrong.
    """
    if not isinstance(data, bytes):
        raise ValueError(f"a message is bytes, not {type(data).__name__}")
    signed = data[:1] in _SIGNED_KINDS
    count = 6 if signed else 5
    fields = data.split(b"|", count - 1)
    if len(fields) != count:
        raise ValueError(f"{len(fields)} fields, not {count}")
    signature = b""
    if signed:
        kind, published, buffer, origin, signature, target = fields
        if not signature or len(signature) > 80:
            raise ValueError("a signed message's signature is missing or too long")
        name = _SIGNED_KINDS.get(kind, "")
    else:
        kind, published, buffer, origin, target = fields
        name = _KINDS.get(kind, "")
    if not name:
        raise ValueError(f"unknown kind {kind[:8]!r}")
    if not (published.isdigit() and len(published) <= 20 and buffer.isdigit() and len(buffer) <= 20):
        raise ValueError("time and buffer must be decimal integers")
    if len(origin) != 12 or not all(c in b"0123456789abcdef" for c in origin):
        raise ValueError("origin must be 12 hex digits")
    if len(target) > MAX_TARGET_BYTES:
        raise ValueError(f"target of {len(target)} bytes, {MAX_TARGET_BYTES} at most")
    if (name == "flush") != (target == b""):
        raise ValueError("a flush names no target, an invalidation or deletion names one")
    return BusMessage(
        name,
        int(published),
        int(buffer),
        origin.decode(),
        target.decode("utf-8", "surrogateescape"),
        signature,
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
        on_dropped: called for each message dropped, with why: ``malformed`` (failed its checks
            or applying it raised), or with a ``signer``, ``unsigned``, ``bad_signature``,
            ``stale`` (signed outside the replay window) or ``replayed``.
        signer: checks every message's signature (None: messages are not checked).
        accept_unsigned: with a signer, still deliver unsigned messages (see
            ``GCacheConfig.accept_unsigned_messages``).
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
        on_dropped: Callable[[str], None] = lambda reason: None,
        signer: Signer | None = None,
        accept_unsigned: bool = False,
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
        self._signer = signer
        self._accept_unsigned = accept_unsigned
        self._replays = ReplayGuard(REPLAY_WINDOW_SEC)
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
        self.last_error = ""  # why the latest subscription attempt failed ('' : none failed)
        self._lost_at = 0.0  # when the subscription was lost (monotonic; 0: it is not)
        self.server = ""  # host:port of the node subscribed on last ('': none yet)
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
        self.last_error, self._lost_at, self.server = "", 0.0, ""

    def down_sec(self) -> float:
        """Seconds since the subscription was lost (0.0 while it is up, or before it failed)."""
        lost = self._lost_at
        return time.monotonic() - lost if lost else 0.0

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
                self.last_error = summary(exc)
                self._lost_at = self._lost_at or time.monotonic()
                self._errors.warning(("bus", type(exc).__name__), f"invalidation bus lost: {self.last_error}")
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
            self.server = server_address(client)
            self.connections += 1
            self.subscribed = True
            self._on_up()
            if self._lost_at:  # said "lost": say "up again", so the log tells when it ended
                down = time.monotonic() - self._lost_at
                self._lost_at, self.last_error = 0.0, ""
                self._errors.info(
                    ("bus", "up"),
                    f"invalidation bus subscribed again on {self.channel!r}, up again after {down:.1f} s",
                )
            await self._listen(pubsub, getattr(client, "moved", None))
        finally:
            await _finish(_close(pubsub, client))

    async def _listen(self, pubsub: Any, moved: Callable[[], bool] | None = None) -> None:
        """Deliver messages until the connection fails or, with ``moved`` (a Sentinel master's
        client: :meth:`gcache.remote.sentinel.MasterClient.moved`), the sentinels name another
        master."""
        last_heard = time.monotonic()
        pinged_at: float | None = None
        while not self._stopping:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=self._ping_interval)
            now = time.monotonic()
            if moved is not None and moved():
                raise ConnectionError("the sentinels name another master: subscribing there")
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
            if self._signer is not None and not (self._accept_unsigned and not message.signature):
                refused = _check_signature(self._signer, self._replays, message)
                if refused is not None:
                    self._drop(data, refused, _REFUSALS[refused])
                    return
            lag = (time.time_ns() / 1000 + self._clock_offset_us - message.published_us) / 1e6
            self._on_message(message, max(lag, 0.0))
        except Exception as exc:
            self._drop(data, "malformed", f"dropped a malformed or foreign message: {exc}")

    def _drop(self, data: object, reason: str, why: str) -> None:
        self._on_dropped(reason)
        shown = data[:80] if isinstance(data, (bytes, str)) else type(data).__name__
        self._errors.warning(("bus", "dropped", reason), f"invalidation bus: {why} ({shown!r})")

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


_REFUSALS = {
    "unsigned": "dropped an unsigned message (a process without signing keys, or a forgery; "
    "GCacheConfig.accept_unsigned_messages lets them through while signing is rolled out)",
    "bad_signature": "dropped a message whose signature is wrong or made with a key not in "
    "signing_keys (a forgery, or keys that differ between processes)",
    "stale": f"dropped a signed message more than {REPLAY_WINDOW_SEC:.0f} s from this host's clock "
    "(a replay, or the publisher's clock is off)",
    "replayed": "dropped a signed message seen before (a replay)",
}


def server_address(client: Any, default_host: str | None = None) -> str:
    """The node a client of one server talks to (``host:port``, ``unix:path``; '' when it does
    not say: a factory's client of another kind; with ``default_host``, that host when only its
    host is left out, as redis-py's connections default it)."""
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", None)
    if not isinstance(kwargs, dict):
        return ""
    if "path" in kwargs:
        return f"unix:{kwargs['path']}"
    host = kwargs.get("host", default_host)
    return "" if host is None else f"{host}:{kwargs.get('port', 6379)}"


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
