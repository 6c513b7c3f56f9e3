"""The read protocol: reads sent as hand-packed commands in one write, and their replies.

A tracked read is TIME, INFO replication, GET, HMGET (and PTTL) on one pooled connection in one
write (without failover fencing, ``GCacheConfig(failover_fencing=False)``, no INFO): redis-py's
Pipeline object costs the client what a Lua script costs the server (both about 20 µs over a GET
here), this costs about what one GET does. The replies are read under one deadline
(:class:`Deadline`) that forgives a busy event loop once. Under concurrency
:class:`~gcache.remote.batching.ReadQueue` sends many such reads in one write. An untracked
read is the GET alone, packed the same way.

With a read limit (``max_value_bytes``, framed: :func:`read_limit`) every value is read as
``GETRANGE key 0 <limit>`` instead of GET (:func:`value_read`): Redis sends at most limit + 1
bytes, so a planted giant value costs the read no more than a value just over the limit, is never
buffered by the client, and reads as too large. GETRANGE answers b"" for a missing key; gcache
never stores an empty entry, so b"" reads as none, whatever the command.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import sys
import time
from collections.abc import Callable, Sequence
from operator import methodcaller
from typing import Any, NamedTuple

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel

from gcache import _envelope
from gcache.original_wire import parse_watermark

__all__ = [
    "ASYNC_POOL_ARGS",
    "GET",
    "HEAD",
    "HEAD_REPLIES",
    "TIME",
    "head",
    "Deadline",
    "TrackedRead",
    "ValueRead",
    "apipelined",
    "exchange",
    "fence_read",
    "Invalidation",
    "ainvalidate_and_wait",
    "ainvalidations_and_wait",
    "get",
    "invalidate_and_wait",
    "invalidations_and_wait",
    "pack_get",
    "pack_reads",
    "abatch_pipelined",
    "batch_pipelined",
    "batch_reads",
    "parse_batch",
    "parse_fence_read",
    "parse_original",
    "parse_tracked",
    "pipelined",
    "pool_args",
    "read_limit",
    "replid",
    "value_read",
]

# A deadline that fires this much later than its time found the event loop busy (see Deadline).
_LATE_SEC = 0.005
TIME = b"*1\r\n$4\r\nTIME\r\n"
# What every tracked read starts with, once per write however many reads share it: the server time
# (t0) and the node's replication id (INFO replication's master_replid), which a fence must carry
# to be trusted (see parse_fence_read). Two replies. Without failover fencing TIME alone, one.
HEAD = TIME + b"*2\r\n$4\r\nINFO\r\n$11\r\nreplication\r\n"
HEAD_REPLIES = 2
_REPLID_FIELD = b"master_replid:"
# A fence's fields: nonce, watermark and replication id; without fencing the id is not read.
_HMGET_NWR = b"*5\r\n$5\r\nHMGET\r\n$%d\r\n%b\r\n$1\r\nn\r\n$1\r\nw\r\n$1\r\nr\r\n"
_HMGET_NW = b"*4\r\n$5\r\nHMGET\r\n$%d\r\n%b\r\n$1\r\nn\r\n$1\r\nw\r\n"
# How a value is read: its command packed for the wire up to the key, and after the key.
ValueRead = tuple[bytes, bytes]
GET: ValueRead = (b"*2\r\n$3\r\nGET\r\n", b"")


def head(fencing: bool) -> tuple[bytes, int]:
    """What tracked reads start with, and its replies: :data:`HEAD`; TIME alone without
    ``fencing`` (``GCacheConfig(failover_fencing=False)``: no fence's history is checked)."""
    return (HEAD, HEAD_REPLIES) if fencing else (TIME, 1)


def read_limit(max_value_bytes: int | None) -> int | None:
    """The longest stored entry worth reading: the largest value a write stores, framed."""
    return None if max_value_bytes is None else max_value_bytes + _envelope.HEADER_SIZE


def value_read(limit: int | None) -> ValueRead:
    """GET, or with a ``limit`` ``GETRANGE key 0 <limit>``: at most ``limit`` + 1 bytes, so that a
    longer value is told from one that fits without Redis sending it."""
    if limit is None:
        return GET
    end = b"%d" % limit
    return b"*4\r\n$8\r\nGETRANGE\r\n", b"$1\r\n0\r\n$%d\r\n%b\r\n" % (len(end), end)


class TrackedRead(NamedTuple):
    raw: bytes | None
    nonce: bytes | None  # None: the entity has no fence
    watermark_us: int
    now_us: int  # t0: server time of this read
    pttl_ms: int = -1  # the value's remaining life; -1: no TTL or no value


def replid(info: bytes) -> bytes:
    """The ``master_replid`` of an ``INFO replication`` reply: this node's replication history
    (b"" if the reply has none, which no fence matches)."""
    at = info.find(_REPLID_FIELD)
    if at < 0:
        return b""
    at += len(_REPLID_FIELD)
    return info[at : info.find(b"\r", at)]


def parse_tracked(reply: list[Any]) -> TrackedRead:
    """The read script's reply (the script always has a fence; of this node's history unless it
    was asked to trust any). Whether INFO was refused (``reply[5]``) is the caller's to read."""
    raw, nonce, watermark, seconds, micros = reply[:5]
    assert nonce is not None, "the read script returned no fence"
    pttl = [p for p in reply[6:7] if p is not None]  # Lua's nil ends the reply
    return _tracked(seconds, micros, raw or None, nonce, watermark, pttl)


def parse_original(reply: list[Any]) -> TrackedRead:
    """``READ_ORIGINAL``'s reply (``GCacheConfig(legacy_compat=True)``): the original gcache's
    watermark as microseconds, -1 for none; one that is not a number suppresses every entry
    (:func:`gcache.original_wire.parse_watermark`). There is no fence nonce: ``b""``."""
    raw, watermark, seconds, micros = reply[:4]
    pttl = int(reply[4]) if raw is not None and len(reply) > 4 and reply[4] is not None else -1
    ms = parse_watermark(watermark)
    now_us = int(seconds) * 1_000_000 + int(micros)
    return TrackedRead(raw or None, b"", -1 if ms is None else ms * 1000, now_us, pttl)


def pack_reads(
    encode: Callable[[str], bytes],
    read: ValueRead,
    key: str,
    fence: str,
    with_ttl: bool,
    fencing: bool = True,
) -> bytes:
    """GET (or ``read``'s GETRANGE), HMGET of the fence's nonce, watermark and (``fencing``)
    replication id (, PTTL) of a tracked read packed for the wire, to follow :func:`head`:
    redis-py's asyncio packer costs 5.7 µs for these commands and TIME, this 1. ``encode`` is the
    connection's own."""
    k, f = encode(key), encode(fence)
    value = b"$%d\r\n%b\r\n" % (len(k), k)
    fields = _HMGET_NWR if fencing else _HMGET_NW
    return b"".join(
        (
            read[0],
            value,
            read[1],
            fields % (len(f), f),
            b"*2\r\n$4\r\nPTTL\r\n" + value if with_ttl else b"",
        )
    )


def pack_get(encode: Callable[[str], bytes], read: ValueRead, key: str) -> bytes:
    """The value's command alone: GET, or ``read``'s GETRANGE."""
    k = encode(key)
    return b"%b$%d\r\n%b\r\n%b" % (read[0], len(k), k, read[1])


def fence_read(
    encode: Callable[[str], bytes],
    read: ValueRead,
    key: str,
    fence: str,
    with_ttl: bool,
    fencing: bool = True,
) -> tuple[bytes, int]:
    """READ_TRACKED's reads as plain commands in the script's order, :data:`HEAD` (TIME, INFO
    replication; TIME alone without ``fencing``), GET (or GETRANGE), HMGET (, PTTL), packed for
    the wire, and how many replies they get."""
    if fencing:
        return HEAD + pack_reads(encode, read, key, fence, with_ttl), 5 if with_ttl else 4
    return TIME + pack_reads(encode, read, key, fence, with_ttl, False), 4 if with_ttl else 3


def parse_fence_read(replies: list[Any], fencing: bool = True) -> TrackedRead | None:
    """The replies of :func:`fence_read`'s commands (the head's, the value's, the fence's, the
    PTTL's); None when the entity has no fence, which only the script can create atomically with
    the read, or (``fencing``) a fence of another replication history than the node's, which only
    the script may make anew. Without ``fencing`` a fence is trusted whatever its history
    (README, "Guarantees through failover").

    A fence is trusted only if its ``r`` is the node's ``master_replid`` at this read: one inherited
    by a promoted replica (a new id) or left from before a restart (likewise) may lack a watermark
    its old primary acknowledged and never replicated, so the script makes it anew and every entry
    under it is refused. The id is read with every read, never remembered: a connection opened while
    the node was a replica, or before it changed role, would remember its old history's.

    Other clients' commands may run between these reads, unlike the script's; each such
    interleaving only makes the read more careful. An invalidation that lands after TIME raises
    the watermark this read sees (its entry reads as invalidated, its write is refused, no caller
    joins it); a fence replaced after GET has another nonce than the entry; a promotion after INFO
    leaves the fence of the old history, which the write after a miss refuses and the next read
    makes anew. A value that expired between GET and PTTL was at the end of its grace period: it
    counts as past its TTL (0). An empty value (GETRANGE's answer for none) is none.
    """
    if not fencing:
        (seconds, micros), raw, (nonce, watermark) = replies[0], replies[1], replies[2]
        if nonce is None:
            return None
        return _tracked(seconds, micros, raw or None, nonce, watermark, replies[3:4])
    (seconds, micros), info, raw, (nonce, watermark, epoch) = replies[0], replies[1], replies[2], replies[3]
    if nonce is None or epoch != replid(info):
        return None
    return _tracked(seconds, micros, raw or None, nonce, watermark, replies[4:5])


def _batch_read(
    now_us: int, history: bytes | None, raw: bytes | None, fence: list[Any]
) -> TrackedRead | None:
    """:func:`parse_fence_read` of one key of a batch, whose head (time and, fencing, the node's
    replication id ``history``) was read once for all (its keys have no PTTL). Not shared with
    the single read, which a call more would cost on every tracked hit."""
    nonce, watermark = fence[0], fence[1]
    if nonce is None or (history is not None and fence[2] != history):
        return None
    return TrackedRead(raw or None, nonce, int(watermark) if watermark is not None else 0, now_us, -1)


def _tracked(
    seconds: bytes, micros: bytes, raw: bytes | None, nonce: bytes, watermark: bytes | None, pttl: list[Any]
) -> TrackedRead:
    ttl = int(pttl[0]) if raw is not None and pttl else -1
    if ttl == -2:  # gone since GET: the very end of its grace period
        ttl = 0
    return TrackedRead(
        raw,
        nonce,
        int(watermark) if watermark is not None else 0,
        int(seconds) * 1_000_000 + int(micros),
        ttl,
    )


def pool_args(get_connection: Callable[..., Any]) -> tuple[str, ...]:
    """What ``get_connection`` is called with: nothing since redis-py 5.3 (a command name warns);
    before, a command name, which only a cluster uses."""
    name = inspect.signature(get_connection).parameters.get("command_name")
    return () if name is None or name.default is not inspect.Parameter.empty else ("TIME",)


_POOL_ARGS = pool_args(redis.ConnectionPool.get_connection)
ASYNC_POOL_ARGS = pool_args(redis.asyncio.ConnectionPool.get_connection)


def _info_refused(exc: redis.ResponseError) -> bool:
    """INFO refused: unknown to the server (fakeredis) or to the user (an ACL without +info). Its
    reply then reads as b"", the replication id the scripts then give every fence: failover
    fencing is off on such a server, and reads go on as before it (README, "Guarantees through
    failover"); ``RemoteCache`` tells its GCache, which warns once (``on_info_refused``)."""
    text = str(exc)
    return "'info'" in text and ("unknown command" in text or "permission" in text)


def _read_replies(read: Callable[[], Any], n: int) -> list[Any]:
    """``n`` replies; a command's error is raised after the last one is read (INFO's refusal is
    b"": see :func:`_info_refused`)."""
    replies = []
    error: redis.ResponseError | None = None
    for _ in range(n):
        try:
            replies.append(read())
        except redis.ResponseError as exc:
            if _info_refused(exc):
                replies.append(b"")
            else:
                error = error or exc
    if error is not None:
        raise error
    return replies


try:  # redis-py's hiredis parsers, whose replies can be taken from their reader directly
    from redis._parsers.hiredis import NOT_ENOUGH_DATA, _AsyncHiredisParser, _HiredisParser
except ImportError:  # pragma: no cover - another redis-py layout: read_response throughout
    _HiredisParser = _AsyncHiredisParser = None  # type: ignore[assignment,misc]
    NOT_ENOUGH_DATA = object()


_PLAIN_REPLIES = frozenset((bytes, list, int, type(None)))  # never an error or a push message
_OWN_READ_RESPONSE = (
    redis.connection.AbstractConnection.read_response,
    redis.asyncio.connection.AbstractConnection.read_response,
    # Sentinel's only turns READONLY and a demoted master's UNBLOCKED (replies to a write or a
    # blocking command) into a reconnection: the reads taken from the reader get neither.
    redis.sentinel.SentinelManagedConnection.read_response,
    redis.asyncio.sentinel.SentinelManagedConnection.read_response,
)


def _hiredis_reader(connection: Any, parser_type: Any) -> Any | None:
    """The connection's ``hiredis.Reader`` when its replies may be taken from it directly: its
    ``read_response`` is redis-py's own (not a test double's) over redis-py's hiredis parser, as
    this redis-py lays it out; else None (read_response throughout)."""
    parser = getattr(connection, "_parser", None)
    if parser_type is None or type(parser) is not parser_type:
        return None
    if getattr(type(connection), "read_response", None) not in _OWN_READ_RESPONSE:
        return None
    return getattr(parser, "_reader", None)


def _take_replies(connection: Any, n: int) -> list[Any]:
    """``n`` replies of a sync connection; a command's error is raised after the last one is read.

    Straight from its hiredis reader where it has one: ``read_response`` costs about 2 µs a reply
    over the reader's own C call, a tenth of a 50-id batch's time. The errors are redis-py's: a
    socket's from its parser, a closed or failing one as its ``ConnectionError``.
    """
    reader = _hiredis_reader(connection, _HiredisParser)
    if reader is None:
        return _read_replies(connection.read_response, n)
    parser = connection._parser
    read_more, push = parser.read_from_socket, parser._hiredis_PushNotificationType or ()
    replies: list[Any] = []
    error: redis.ResponseError | None = None
    try:
        gets, append, plain = reader.gets, replies.append, _PLAIN_REPLIES
        while len(replies) < n:
            reply = gets()
            if type(reply) in plain:  # a value, most replies: one check
                append(reply)
            elif reply is NOT_ENOUGH_DATA:
                read_more()
            elif isinstance(reply, push):  # RESP3: a push message, not a reply, routed as redis-py does
                parser.handle_push_response(reply)
            elif isinstance(reply, redis.ResponseError):
                if _info_refused(reply):
                    replies.append(b"")
                else:
                    error = error or reply
                    n -= 1
            elif isinstance(reply, redis.ConnectionError):  # LOADING, as redis-py raises it
                raise reply
            else:
                replies.append(reply)
    except OSError as exc:  # socket.timeout is the parser's TimeoutError already
        raise redis.ConnectionError(f"Error while reading from {connection._host_error()}: {exc}") from exc
    if connection.health_check_interval:
        connection.next_health_check = time.monotonic() + connection.health_check_interval
    if error is not None:
        raise error
    return replies


def pipelined(
    pool: Any,
    read: ValueRead,
    key: str,
    fence: str,
    with_ttl: bool,
    sending: Callable[[], None] | None = None,
    fencing: bool = True,
) -> list[Any]:
    """The replies of :func:`fence_read`'s commands, sent in one write on one pooled connection.

    ``sending()`` is called once the connection is at hand, before the write. redis-py's retry
    policy applies as to its own commands.
    """
    connection = pool.get_connection(*_POOL_ARGS)
    if sending is not None:
        sending()
    try:
        packed, n = fence_read(connection.encoder.encode, read, key, fence, with_ttl, fencing)

        def send_and_read() -> list[Any]:
            connection.send_packed_command([packed])  # a list: redis-py's sync sender iterates it
            return _take_replies(connection, n)

        replies: list[Any] = connection.retry.call_with_retry(
            send_and_read, lambda _: connection.disconnect()
        )
        return replies
    except BaseException:
        connection.disconnect()  # replies may be left unread on it
        raise
    finally:
        pool.release(connection)


def get(pool: Any, read: ValueRead, key: str) -> bytes | None:
    """The reply of a sync GET (or ``read``'s GETRANGE: b"" for none) sent on one pooled
    connection as :func:`pipelined` sends its reads; redis-py's retry policy applies as to its own
    commands. redis-py's ``get`` costs the calling process 48k instructions more (callgrind), its
    ``getrange`` 55k: a sync REMOTE hit costs a quarter less this way."""
    connection = pool.get_connection(*_POOL_ARGS)
    try:
        packed = pack_get(connection.encoder.encode, read, key)

        def send_and_read() -> Any:
            connection.send_packed_command([packed])
            return connection.read_response()

        raw: bytes | None = connection.retry.call_with_retry(send_and_read, lambda _: connection.disconnect())
        return raw
    except BaseException:
        connection.disconnect()  # its reply may be left unread on it
        raise
    finally:
        pool.release(connection)


# One invalidation as the WAIT helpers below take it: the script object, its keys and its ARGV.
Invalidation = tuple[Any, list[Any], list[Any]]


def _scripts_and_wait(connection: Any, calls: Sequence[Invalidation], wait: tuple[int, int]) -> Any:
    """Each call's EVALSHA, then WAIT, packed for one write on ``connection``: WAIT counts the
    replicas that have this connection's writes, so they must share it."""
    commands = [("EVALSHA", script.sha, len(keys), *keys, *args) for script, keys, args in calls]
    return connection.pack_commands([*commands, ("WAIT", *wait)])


def _lacking(replies: list[Any]) -> list[int]:
    """The calls whose script the server did not have (NOSCRIPT: a restart or a promotion lost
    it): to load and send again."""
    return [i for i, reply in enumerate(replies) if isinstance(reply, redis.exceptions.NoScriptError)]


def _scripts(calls: Sequence[Invalidation], lacking: list[int]) -> list[Any]:
    return list({id(calls[i][0]): calls[i][0] for i in lacking}.values())


def invalidations_and_wait(
    pool: Any, calls: Sequence[Invalidation], wait: tuple[int, int]
) -> tuple[list[Any], Any]:
    """Run each call's script, then ``WAIT numreplicas timeout_ms``, on one connection of
    ``pool``: each script's reply (its error in place) and how many replicas confirmed them all
    (WAIT's error in its place). Calls the server had no script for are sent again, with their
    own WAIT, once the scripts are loaded: the last WAIT counts the replicas that have every
    write of the connection, the first round's too."""
    connection = pool.get_connection(*_POOL_ARGS)
    try:
        replies, confirmed = _sync_round(connection, calls, wait)
        lacking = _lacking(replies)
        if lacking:
            for script in _scripts(calls, lacking):
                connection.send_command("SCRIPT", "LOAD", script.script)
                connection.read_response()
            again, confirmed = _sync_round(connection, [calls[i] for i in lacking], wait)
            for i, reply in zip(lacking, again, strict=True):
                replies[i] = reply
        return replies, confirmed
    except BaseException:
        connection.disconnect()
        raise
    finally:
        pool.release(connection)


def _sync_round(
    connection: Any, calls: Sequence[Invalidation], wait: tuple[int, int]
) -> tuple[list[Any], Any]:
    connection.send_packed_command(_scripts_and_wait(connection, calls, wait))
    replies = []
    for _ in range(len(calls) + 1):
        try:
            replies.append(connection.read_response())
        except redis.ResponseError as exc:  # read the rest: the connection stays in step
            replies.append(exc)
    return replies[:-1], replies[-1]


async def ainvalidations_and_wait(
    pool: Any, calls: Sequence[Invalidation], wait: tuple[int, int]
) -> tuple[list[Any], Any]:
    """Async twin of :func:`invalidations_and_wait`."""
    connection = await pool.get_connection(*ASYNC_POOL_ARGS)
    try:
        replies, confirmed = await _async_round(connection, calls, wait)
        lacking = _lacking(replies)
        if lacking:
            for script in _scripts(calls, lacking):
                await connection.send_command("SCRIPT", "LOAD", script.script)
                await connection.read_response()
            again, confirmed = await _async_round(connection, [calls[i] for i in lacking], wait)
            for i, reply in zip(lacking, again, strict=True):
                replies[i] = reply
        return replies, confirmed
    except BaseException:
        await connection.disconnect()  # replies may be left unread on it
        raise
    finally:
        await pool.release(connection)


async def _async_round(
    connection: Any, calls: Sequence[Invalidation], wait: tuple[int, int]
) -> tuple[list[Any], Any]:
    replies = await exchange(connection, b"".join(_scripts_and_wait(connection, calls, wait)), len(calls) + 1)
    return replies[:-1], replies[-1]


def _one(replies: list[Any], confirmed: Any) -> tuple[Any, int]:
    for reply in (*replies, confirmed):
        if isinstance(reply, redis.ResponseError):
            raise reply
    return replies[0], int(confirmed)


def invalidate_and_wait(
    pool: Any, script: Any, keys: list[Any], args: list[Any], wait: tuple[int, int]
) -> tuple[Any, int]:
    """Run ``script`` and ``WAIT numreplicas timeout_ms`` on one pooled connection: the script's
    reply and how many replicas confirmed its writes; an error of either raised."""
    return _one(*invalidations_and_wait(pool, [(script, keys, args)], wait))


async def ainvalidate_and_wait(
    pool: Any, script: Any, keys: list[Any], args: list[Any], wait: tuple[int, int]
) -> tuple[Any, int]:
    """Async twin of :func:`invalidate_and_wait`."""
    return _one(*await ainvalidations_and_wait(pool, [(script, keys, args)], wait))


class Deadline:
    """The deadline of a batch of replies, as ``asyncio.timeout`` (one timer, the task cancelled
    when it fires), but forgiving a busy event loop once.

    A timer that runs more than ``_LATE_SEC`` after its time found the loop busy (callbacks that
    ran long, another thread holding the GIL): the replies may be in the socket, unread behind the
    work that delayed the loop, and the deadline moves by its term once. A silent Redis is still
    told after at most twice the deadline; a busy loop no longer turns a read Redis answered in
    time into a timeout.
    """

    __slots__ = ("_cancelling", "_handle", "_loop", "_task", "_term", "_when", "fired", "moved")

    def __init__(self, term: float) -> None:
        loop = self._loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        assert task is not None
        self._task = task
        self._cancelling = 0
        if sys.version_info >= (3, 11):
            self._cancelling = task.cancelling()
        self._term = term
        self._when = loop.time() + term
        self._handle = loop.call_at(self._when, self._fire)
        self.fired = self.moved = False

    def _fire(self) -> None:
        now = self._loop.time()
        if not self.moved and now - self._when > _LATE_SEC:
            self.moved = True
            self._when = now + self._term
            self._handle = self._loop.call_at(self._when, self._fire)
            return
        self.fired = True
        self._task.cancel()

    def expired(self) -> bool:
        """On a CancelledError: whether it is this deadline's (then TimeoutError is raised)."""
        if not self.fired:
            return False
        if sys.version_info >= (3, 11):  # a cancellation from elsewhere as well stays one
            return self._task.uncancel() <= self._cancelling
        return True  # pragma: no cover - Python 3.10

    def cancel(self) -> None:
        self._handle.cancel()


def _str_encoder(encoder: Any) -> Callable[[str], bytes]:
    """redis-py's ``encoder.encode`` for the str keys gcache sends: its own checks of bytes,
    numbers and memoryviews cost more than the encoding (a fifth of a batch's packing)."""
    encoding, errors = encoder.encoding, encoder.encoding_errors
    if errors == "strict" and encoding.lower().replace("_", "-") in ("utf-8", "utf8"):
        return str.encode  # str.encode's defaults, called without a Python frame of ours
    return methodcaller("encode", encoding, errors)


def batch_reads(
    encode: Callable[[str], bytes],
    read: ValueRead,
    keys: Sequence[str],
    fences: Sequence[str] | None,
    fencing: bool = True,
    mget: bool = False,
) -> tuple[bytes, int]:
    """A batch's reads packed for one write, and how many replies they get: each key's GET (or
    ``read``'s GETRANGE), or with ``mget`` one MGET of them all; tracked (``fences``), the head
    first (:func:`head`) and each key followed by its fence's HMGET, as :func:`fence_read` reads
    one key (the same interleavings only make it more careful).

    ``mget`` only for unbounded reads (``read`` GET, no ``fences``) on one server: one command
    instead of a GET a key saves the server and the reply reader a sixth of a 50-id page, but it
    cannot bound what it sends (a planted giant value would be copied and sent whole)."""
    if mget:
        if encode is str.encode:
            text = f"*{len(keys) + 1}\r\n$4\r\nMGET\r\n" + "".join(
                [f"${len(key)}\r\n{key}\r\n" for key in keys]
            )
            if text.isascii():
                return text.encode(), 1
        encoded = [encode(key) for key in keys]
        return b"*%d\r\n$4\r\nMGET\r\n%b" % (
            len(keys) + 1,
            b"".join([b"$%d\r\n%b\r\n" % (len(k), k) for k in encoded]),
        ), 1
    if fences is None:
        command, tail = read
        if keys and encode is str.encode:  # UTF-8: ASCII keys packed as one text, encoded at once
            opening, closing = command.decode(), "\r\n" + tail.decode()
            text = opening + (closing + opening).join([f"${len(key)}\r\n{key}" for key in keys]) + closing
            if text.isascii():  # then a key's length in characters is its length in bytes
                return text.encode(), len(keys)
        encoded = [encode(key) for key in keys]
        return b"".join([b"%b$%d\r\n%b\r\n%b" % (command, len(k), k, tail) for k in encoded]), len(keys)
    packed = [
        pack_reads(encode, read, key, fence, False, fencing) for key, fence in zip(keys, fences, strict=True)
    ]
    first, n = head(fencing)
    return first + b"".join(packed), n + 2 * len(keys)


def parse_batch(replies: list[Any], tracked: bool, fencing: bool = True) -> list[Any]:
    """:func:`batch_reads`' replies: each key's value (None for none), or tracked its
    :class:`TrackedRead` (None where the entity has no fence, or ``fencing`` one of another
    history: the read script must make it)."""
    if not tracked:
        return [raw or None for raw in replies]
    (seconds, micros) = replies[0]
    now_us = int(seconds) * 1_000_000 + int(micros)
    history = replid(replies[1]) if fencing else None  # the head read once for every key
    n = head(fencing)[1]
    return [_batch_read(now_us, history, replies[i], replies[i + 1]) for i in range(n, len(replies), 2)]


def batch_pipelined(
    pool: Any,
    read: ValueRead,
    keys: Sequence[str],
    fences: Sequence[str] | None,
    fencing: bool = True,
    mget: bool = False,
) -> list[Any]:
    """The replies of :func:`batch_reads`, on one pooled connection as :func:`pipelined` sends its
    reads (a command's error is raised once every reply is read); an MGET's as the GETs' would be."""
    connection = pool.get_connection(*_POOL_ARGS)
    try:
        mget = mget and fences is None and read is GET
        packed, n = batch_reads(_str_encoder(connection.encoder), read, keys, fences, fencing, mget)

        def send_and_read() -> list[Any]:
            connection.send_packed_command([packed])
            return _take_replies(connection, n)

        replies: list[Any] = connection.retry.call_with_retry(
            send_and_read, lambda _: connection.disconnect()
        )
        return replies[0] if mget else replies  # an MGET's array: the keys' replies
    except BaseException:
        connection.disconnect()
        raise
    finally:
        pool.release(connection)


async def abatch_pipelined(
    pool: Any,
    read: ValueRead,
    keys: Sequence[str],
    fences: Sequence[str] | None,
    fencing: bool = True,
    mget: bool = False,
) -> list[Any]:
    """Async twin of :func:`batch_pipelined`."""
    connection = await pool.get_connection(*ASYNC_POOL_ARGS)
    try:
        mget = mget and fences is None and read is GET
        packed, n = batch_reads(_str_encoder(connection.encoder), read, keys, fences, fencing, mget)
        replies = await exchange(connection, packed, n)
    finally:
        await pool.release(connection)
    for reply in replies:
        if isinstance(reply, redis.ResponseError):
            raise reply
    return replies[0] if mget else replies  # an MGET's array: the keys' replies


async def exchange(connection: Any, packed: bytes, n: int) -> list[Any]:
    """Write ``packed`` and read its ``n`` replies (a command's error in its place) within the
    connection's socket timeout (see :class:`Deadline`); redis-py's retry policy applies.

    One deadline covers every reply, as it covers a GET's one: redis-py's own deadline per reply
    costs a timer each, 4.5 µs.
    """

    async def send_and_read() -> list[Any]:
        if not _wrote(connection, packed):
            await connection.send_packed_command([packed])
        term = connection.socket_timeout
        deadline = None if term is None else Deadline(term)
        replies: list[Any] = []
        try:
            reader = _hiredis_reader(connection, _AsyncHiredisParser)
            if reader is not None and connection._parser._connected:
                await _atake_replies(connection, reader, n, replies)
            else:
                for _ in range(n):
                    try:
                        replies.append(await connection.read_response(timeout=math.inf))
                    except redis.ResponseError as exc:  # read the rest: the connection stays in step
                        replies.append(b"" if _info_refused(exc) else exc)
        except asyncio.CancelledError:
            if deadline is not None and deadline.expired():
                raise TimeoutError(f"no reply within {term} s") from None
            raise
        finally:
            if deadline is not None:
                deadline.cancel()
        return replies

    try:
        replies: list[Any] = await connection.retry.call_with_retry(
            send_and_read, lambda _: connection.disconnect()
        )
        return replies
    except BaseException:
        await connection.disconnect(nowait=True)  # replies may be left unread on it
        raise


_OWN_SEND = (redis.asyncio.connection.AbstractConnection.send_packed_command,)


def _wrote(connection: Any, packed: bytes) -> bool:
    """Write ``packed`` to an open asyncio connection's transport straight away, as redis-py's
    ``send_packed_command`` does underneath; False (nothing written) where that one must run: not
    connected, a health check due, a transport closing, a sender or writer not redis-py's own.

    On Python 3.11 redis-py bounds the write with ``asyncio.wait_for``, which runs it as a task of
    its own: two more turns of the event loop, a fifth of an async 50-id page. No drain: the
    transport sends what its buffer holds, and the replies' deadline (:class:`Deadline`) covers a
    server that reads nothing."""
    writer = getattr(connection, "_writer", None)
    if type(writer) is not asyncio.StreamWriter or type(connection).send_packed_command not in _OWN_SEND:
        return False  # not connected, or another sender (fakeredis, a test double)
    if connection.health_check_interval and asyncio.get_running_loop().time() > connection.next_health_check:
        return False
    if connection._reader is None or writer.transport.is_closing():
        return False
    writer.write(packed)
    return True


async def _atake_replies(connection: Any, reader: Any, n: int, replies: list[Any]) -> None:
    """:func:`_take_replies` for an asyncio connection, a command's error kept in its place."""
    parser = connection._parser
    read_more, push = parser.read_from_socket, parser._hiredis_PushNotificationType or ()
    try:
        gets, append, plain = reader.gets, replies.append, _PLAIN_REPLIES
        while len(replies) < n:
            reply = gets()
            if type(reply) in plain:
                append(reply)
            elif reply is NOT_ENOUGH_DATA:
                await read_more()
            elif isinstance(reply, push):  # RESP3: a push message, not a reply, routed as redis-py does
                await parser.handle_push_response(reply)
            elif isinstance(reply, redis.ConnectionError):  # LOADING, as redis-py raises it
                raise reply
            elif isinstance(reply, redis.ResponseError):
                replies.append(b"" if _info_refused(reply) else reply)  # an error in its place
            else:
                replies.append(reply)
    except OSError as exc:
        raise redis.ConnectionError(f"Error while reading from {connection._host_error()}: {exc}") from exc
    if connection.health_check_interval:
        connection.next_health_check = asyncio.get_running_loop().time() + connection.health_check_interval


async def apipelined(
    pool: Any,
    read: ValueRead,
    key: str,
    fence: str | None,
    with_ttl: bool,
    sending: Callable[[], None] | None = None,
    fencing: bool = True,
) -> list[Any]:
    """Async twin of :func:`pipelined`; with no ``fence``, a GET's (or GETRANGE's) one reply.

    A GET goes this way rather than through redis-py's ``get`` for its deadline
    (:class:`Deadline`), and costs less.
    """
    connection = await pool.get_connection(*ASYNC_POOL_ARGS)
    if sending is not None:
        sending()
    try:
        encode = connection.encoder.encode
        if fence is None:
            replies = await exchange(connection, pack_get(encode, read, key), 1)
        else:
            replies = await exchange(connection, *fence_read(encode, read, key, fence, with_ttl, fencing))
    finally:
        await pool.release(connection)
    for reply in replies:
        if isinstance(reply, redis.ResponseError):
            raise reply
    return replies
