"""RemoteCache and its Lua scripts: the server-clock invalidation protocol, key by key.

Every test runs against the real Redis of the session and against fakeredis (with Lua), and
through both the async and the sync twin of each operation.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, cast

import fakeredis
import pytest
import redis

from gcache import GCache, RedisConfig, RemoteError
from gcache import _envelope as envelope
from gcache._loop_thread import LoopThread
from gcache.remote import READ, RemoteCache, TrackedRead
from gcache.remote.protocol import parse_fence_read, pool_args
from tests.conftest import commands_run, fence_fields, node_replid
from tests.remote.conftest import MAX_VALUE_BYTES, READ_LIMIT

KEY = "{urn:gcache:user_id:1}?a=1#UC"
KEY2 = "{urn:gcache:user_id:1}#Other"
FENCE = "{urn:gcache:user_id:1}#watermark"
PAYLOAD = b"\x80payload"
ENV = envelope.encode(PAYLOAD, envelope.SERIALIZER_CUSTOM, envelope.FLAG_STR, 0)
LIMIT_MS = 60_000

pytestmark = pytest.mark.parametrize("mode", ["async", "sync"])


def stored(client: redis.Redis, key: str) -> bytes:
    """The raw bytes Redis holds at ``key`` (which must exist)."""
    raw = client.get(key)
    assert isinstance(raw, bytes), f"{key!r} holds {raw!r}"
    return raw


@dataclass
class Backend:
    """A RemoteCache factory plus a sync client to look at what the scripts left in Redis."""

    name: str
    inspect: redis.Redis
    make: Callable[..., RemoteCache]

    def now_us(self) -> int:
        seconds, micros = self.inspect.time()
        return int(seconds) * 1_000_000 + int(micros)


class Ops:
    """One RemoteCache driven through its async or its sync twins."""

    def __init__(self, remote: RemoteCache, mode: str) -> None:
        self.remote = remote
        self.mode = mode

    async def _do(self, name: str, *args: Any) -> Any:
        if self.mode == "async":
            return await getattr(self.remote, "a" + name)(*args)
        return getattr(self.remote, name)(*args)

    async def get(self, key: str) -> bytes | None:
        result: bytes | None = await self._do("get", key)
        return result

    async def get_with_ttl(self, key: str) -> tuple[bytes | None, int]:
        result: tuple[bytes | None, int] = await self._do("get_with_ttl", key)
        return result

    async def set(self, key: str, env: bytes, ttl_ms: int) -> None:
        await self._do("set", key, env, ttl_ms)

    async def read(self, key: str = KEY, fence: str = FENCE, *, with_ttl: bool = False) -> TrackedRead:
        if self.mode == "async":
            return await self.remote.aread_tracked(key, fence, with_ttl=with_ttl)
        return self.remote.read_tracked(key, fence, with_ttl=with_ttl)

    async def write(
        self,
        t0_us: int | None,
        read_nonce: bytes | None,
        *,
        key: str = KEY,
        fence: str = FENCE,
        ttl_ms: int = 10_000,
        env: bytes | None = None,
    ) -> int:
        """write_tracked after a read that returned ``t0_us`` and ``read_nonce``; ``(None, None)``
        reads first, as a direct put does. The entry is stamped and fenced as that read saw."""
        if t0_us is None or read_nonce is None:
            read = await self.read(key, fence)
        else:
            read = TrackedRead(None, read_nonce, 0, t0_us)
        assert read.nonce is not None
        if env is None:
            env = envelope.encode(
                PAYLOAD, envelope.SERIALIZER_CUSTOM, envelope.FLAG_STR, read.now_us, read.nonce
            )
        result: int = await self._do("write_tracked", key, fence, read, ttl_ms, env)
        return result

    async def invalidate(self, buffer_ms: int = 0, fence: str = FENCE) -> int:
        result: int = await self._do("invalidate", fence, buffer_ms)
        return result

    async def delete(self, key: str) -> bool:
        result: bool = await self._do("delete", key)
        return result

    async def flush(self, prefix: str) -> int:
        result: int = await self._do("flush", prefix)
        return result


def real_remote(
    url: str,
    loop_thread: LoopThread,
    compute_limit_ms: int = LIMIT_MS,
    max_value_bytes: int | None = MAX_VALUE_BYTES,
) -> RemoteCache:
    """A RemoteCache on the real server at ``url``, its reads bounded as a GCache's by default."""
    return RemoteCache(
        redis_config=RedisConfig(url=url),
        client_factory=None,
        compute_limit_ms=compute_limit_ms,
        loop_thread=loop_thread,
        max_value_bytes=max_value_bytes,
    )


@pytest.fixture(params=["redis", "fakeredis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    remotes: list[tuple[RemoteCache, LoopThread]] = []
    if request.param == "redis":
        url: str = request.getfixturevalue("redis_url")
        inspect: redis.Redis = request.getfixturevalue("redis_client")

        def make(
            compute_limit_ms: int = LIMIT_MS, max_value_bytes: int | None = MAX_VALUE_BYTES
        ) -> RemoteCache:
            loop_thread = LoopThread("test-remote")
            remote = real_remote(url, loop_thread, compute_limit_ms, max_value_bytes)
            remotes.append((remote, loop_thread))
            return remote

    else:
        server = fakeredis.FakeServer()
        inspect = fakeredis.FakeRedis(server=server)

        def make(
            compute_limit_ms: int = LIMIT_MS, max_value_bytes: int | None = MAX_VALUE_BYTES
        ) -> RemoteCache:
            loop_thread = LoopThread("test-remote")
            remote = RemoteCache(
                redis_config=None,
                client_factory=lambda: fakeredis.FakeAsyncRedis(server=server),
                compute_limit_ms=compute_limit_ms,
                loop_thread=loop_thread,
                max_value_bytes=max_value_bytes,
            )
            remotes.append((remote, loop_thread))
            return remote

    yield Backend(request.param, inspect, make)
    for remote, loop_thread in remotes:
        await remote.aclose()
        loop_thread.stop()
    if request.param == "fakeredis":
        inspect.close()


@pytest.fixture
def ops(backend: Backend, mode: str) -> Ops:
    return Ops(backend.make(), mode)


@pytest.fixture
async def real_ops(mode: str, redis_url: str) -> AsyncIterator[Ops]:
    """Ops on a RemoteCache of the real server alone (the pipeline is a real server's)."""
    loop_thread = LoopThread("test-real-remote")
    remote = real_remote(redis_url, loop_thread)
    yield Ops(remote, mode)
    await remote.aclose()
    loop_thread.stop()


# -- plain get / set ------------------------------------------------------------------------------


async def test_set_stores_envelope_with_ttl_and_get_returns_it(backend: Backend, ops: Ops) -> None:
    assert await ops.get(KEY) is None

    await ops.set(KEY, ENV, 5_000)

    assert await ops.get(KEY) == ENV
    assert backend.inspect.get(KEY) == ENV
    assert 4_000 < backend.inspect.pttl(KEY) <= 5_000


async def test_delete_removes_key_and_reports_whether_it_existed(backend: Backend, ops: Ops) -> None:
    await ops.set(KEY, ENV, 5_000)

    assert await ops.delete(KEY) is True
    assert await ops.delete(KEY) is False
    assert backend.inspect.exists(KEY) == 0


# -- read_tracked ---------------------------------------------------------------------------------


async def test_read_tracked_missing_entity_creates_fence_and_returns_its_nonce_and_server_time(
    backend: Backend, ops: Ops
) -> None:
    before = backend.now_us()
    read = await ops.read()
    after = backend.now_us()

    assert read.raw is None
    assert read.nonce is not None
    assert len(read.nonce) == 8
    assert read.watermark_us == 0
    assert before <= read.now_us <= after
    # The fence the read created, so that a write can tell if it is lost meanwhile; it lives
    # as long as a computation may (the compute limit) unless a write extends it.
    assert backend.inspect.exists(KEY) == 0
    assert backend.inspect.hgetall(FENCE) == {
        b"n": read.nonce,
        b"w": b"0",
        b"r": node_replid(backend.inspect),
    }
    assert 0 < backend.inspect.pttl(FENCE) <= LIMIT_MS


async def test_write_tracked_refused_when_fence_lost_while_computing(backend: Backend, ops: Ops) -> None:
    read = await ops.read()
    await ops.invalidate()  # raises the watermark of the fence the read created...
    backend.inspect.delete(FENCE)  # ...which is then lost (evicted, Redis restarted)

    assert await ops.write(read.now_us, read.nonce) == -1
    assert backend.inspect.exists(KEY) == 0


async def test_read_tracked_returns_value_fence_nonce_and_watermark(backend: Backend, ops: Ops) -> None:
    backend.inspect.hset(FENCE, mapping=fence_fields(backend.inspect, b"ABCDEFGH", "1234567"))
    backend.inspect.set(KEY, ENV)

    read = await ops.read()

    assert read.raw == ENV
    assert read.nonce == b"ABCDEFGH"
    assert read.watermark_us == 1234567
    assert read.pttl_ms == -1  # not asked for: the script skips the PTTL


async def test_read_tracked_with_ttl_returns_the_value_pttl_and_server_time_in_microseconds(
    backend: Backend, ops: Ops
) -> None:
    backend.inspect.set(KEY, ENV, px=20_000)
    before = backend.now_us()

    read = await ops.read(with_ttl=True)
    missing = await ops.read(KEY2, with_ttl=True)

    assert read.raw == ENV
    assert 19_000 < read.pttl_ms <= 20_000
    assert before <= read.now_us <= backend.now_us()  # seconds and microseconds joined exactly
    assert missing.raw is None
    assert missing.pttl_ms == -1


async def test_read_tracked_of_a_fenced_entity_returns_the_value_pttl_and_fence(
    backend: Backend, ops: Ops
) -> None:
    """The common tracked read (the fence exists): the plain commands' pipeline, not the script."""
    backend.inspect.hset(FENCE, mapping=fence_fields(backend.inspect, b"ABCDEFGH", "1234567"))
    backend.inspect.set(KEY, ENV, px=20_000)
    before = backend.now_us()

    read = await ops.read(with_ttl=True)
    missing = await ops.read(KEY2, with_ttl=True)
    plain = await ops.read()

    assert (read.raw, read.nonce, read.watermark_us) == (ENV, b"ABCDEFGH", 1234567)
    assert 19_000 < read.pttl_ms <= 20_000
    assert before <= read.now_us <= backend.now_us()
    assert (missing.raw, missing.nonce, missing.pttl_ms) == (None, b"ABCDEFGH", -1)
    assert (plain.raw, plain.pttl_ms) == (ENV, -1)


async def test_read_tracked_of_a_fenced_entity_is_one_round_trip_without_the_script(
    real_ops: Ops, redis_client: redis.Redis, redis_writes: list[bytes]
) -> None:
    redis_client.hset(FENCE, mapping=fence_fields(redis_client, b"ABCDEFGH", "0"))
    redis_client.set(KEY, ENV, px=20_000)
    await real_ops.read()  # connections open
    redis_client.config_resetstat()
    redis_writes.clear()
    for _ in range(5):
        assert (await real_ops.read(with_ttl=True)).raw == ENV
    sent = list(redis_writes)
    stats = commands_run(redis_client)
    assert stats == {
        "cmdstat_time": 5,
        "cmdstat_info": 5,  # the node's replication id, which the fence must carry
        "cmdstat_getrange": 5,
        "cmdstat_hmget": 5,
        "cmdstat_pttl": 5,
    }
    assert len(sent) == 5  # one write per read: every command of it in one round trip
    assert all(b"TIME" in one and b"INFO" in one and b"HMGET" in one and b"PTTL" in one for one in sent)


async def test_read_tracked_of_an_entity_without_fence_runs_the_script_second(
    real_ops: Ops, redis_client: redis.Redis, redis_writes: list[bytes]
) -> None:
    """No fence: the pipeline's answer is set aside and the script reads again, creating it."""
    await real_ops.read(KEY2, FENCE)  # connections open and the script loaded; the fence now exists
    redis_client.delete(FENCE)
    redis_client.config_resetstat()
    redis_writes.clear()
    read = await real_ops.read()
    again = await real_ops.read()
    sent = list(redis_writes)
    stats = commands_run(redis_client)
    assert len(sent) == 3  # the first read: pipeline, then script; the second: pipeline alone
    assert stats["cmdstat_evalsha"] == 1
    assert redis_client.hget(FENCE, "n") == read.nonce == again.nonce
    assert (read.raw, again.raw) == (None, None)


async def test_read_tracked_of_a_value_of_the_wrong_type_fails_and_leaves_the_connection_usable(
    backend: Backend, ops: Ops
) -> None:
    backend.inspect.hset(KEY, "not", "a string")  # GET answers WRONGTYPE between good replies

    with pytest.raises(RemoteError) as info:
        await ops.read()

    assert isinstance(info.value.cause, redis.ResponseError)
    backend.inspect.delete(KEY, FENCE)
    backend.inspect.hset(FENCE, mapping=fence_fields(backend.inspect, b"ABCDEFGH", "0"))
    backend.inspect.set(KEY, ENV)
    for _ in range(3):  # no reply of the failed read is left behind to be taken for these
        read = await ops.read()
        assert (read.raw, read.nonce) == (ENV, b"ABCDEFGH")


async def test_read_tracked_retries_once_on_a_connection_the_server_closed(
    real_ops: Ops, redis_client: redis.Redis
) -> None:
    redis_client.hset(FENCE, mapping=fence_fields(redis_client, b"ABCDEFGH", "0"))
    redis_client.set(KEY, ENV)
    await real_ops.read()  # a pooled connection now exists
    redis_client.client_kill_filter(_type="normal", skipme=True)  # as a restarted server would

    read = await real_ops.read()

    assert (read.raw, read.nonce) == (ENV, b"ABCDEFGH")
    assert real_ops.remote.breaker.failures == 0


def test_pool_is_asked_for_a_connection_as_the_installed_redis_py_wants(mode: str) -> None:
    """redis-py 5.3 and later warn about a command name; 5.0 to 5.2 require one."""

    def before_5_3(self: Any, command_name: str, *keys: Any, **options: Any) -> None: ...

    def since_5_3(self: Any, command_name: str | None = None, *keys: Any, **options: Any) -> None: ...

    assert pool_args(before_5_3) == ("TIME",)
    assert pool_args(since_5_3) == ()
    installed = redis.asyncio.ConnectionPool if mode == "async" else redis.ConnectionPool
    since = tuple(int(part) for part in redis.__version__.split(".")[:2]) >= (5, 3)
    assert pool_args(installed.get_connection) == (() if since else ("TIME",))


# An INFO replication reply: this node's replication id is R1.
INFO = b"# Replication\r\nrole:master\r\nmaster_replid:R1\r\nmaster_replid2:0\r\n"


@pytest.mark.parametrize(
    ("replies", "expected"),
    [
        ([[b"1", b"2"], INFO, b"v", [b"N", b"5", b"R1"], 900], TrackedRead(b"v", b"N", 5, 1_000_002, 900)),
        ([[b"1", b"2"], INFO, b"v", [b"N", b"5", b"R1"], -1], TrackedRead(b"v", b"N", 5, 1_000_002, -1)),
        ([[b"1", b"2"], INFO, b"v", [b"N", b"5", b"R1"], -2], TrackedRead(b"v", b"N", 5, 1_000_002, 0)),
        ([[b"1", b"2"], INFO, None, [b"N", b"5", b"R1"], -2], TrackedRead(None, b"N", 5, 1_000_002, -1)),
        ([[b"1", b"2"], INFO, b"v", [b"N", b"5", b"R1"]], TrackedRead(b"v", b"N", 5, 1_000_002, -1)),
        ([[b"1", b"2"], INFO, b"v", [None, None, None]], None),
        ([[b"1", b"2"], INFO, b"v", [b"N", b"5", b"R0"]], None),
        ([[b"1", b"2"], INFO, b"v", [b"N", b"5", None]], None),
        ([[b"1", b"2"], b"", b"v", [b"N", b"5", b""]], TrackedRead(b"v", b"N", 5, 1_000_002, -1)),
    ],
    ids=[
        "pttl",
        "no-ttl",
        "expired-since-get",
        "no-value",
        "pttl-not-asked",
        "no-fence",
        "fence-of-another-history",
        "fence-without-history",
        "info-refused",
    ],
)
def test_parse_fence_read_matches_the_script_and_leaves_a_missing_or_inherited_fence_to_it(
    mode: str, replies: list[Any], expected: TrackedRead | None
) -> None:
    assert parse_fence_read(replies) == expected


@pytest.mark.parametrize(
    ("replies", "expected"),
    [
        ([[b"1", b"2"], b"v", [b"N", b"5"], 900], TrackedRead(b"v", b"N", 5, 1_000_002, 900)),
        ([[b"1", b"2"], b"v", [b"N", b"5"]], TrackedRead(b"v", b"N", 5, 1_000_002, -1)),
        ([[b"1", b"2"], None, [b"N", b"5"], -2], TrackedRead(None, b"N", 5, 1_000_002, -1)),
        ([[b"1", b"2"], b"v", [None, None]], None),
    ],
    ids=["pttl", "pttl-not-asked", "no-value", "no-fence"],
)
def test_parse_fence_read_without_fencing_reads_neither_info_nor_the_fence_s_history(
    mode: str, replies: list[Any], expected: TrackedRead | None
) -> None:
    assert parse_fence_read(replies, fencing=False) == expected


# -- bounded reads --------------------------------------------------------------------------------


async def test_every_read_takes_at_most_one_byte_more_than_the_read_limit(
    backend: Backend, mode: str
) -> None:
    """A longer value reads as its first limit + 1 bytes, whichever way it is read: GET, the
    fail-safe script, the tracked pipeline and the tracked script (no fence)."""
    ops = Ops(backend.make(max_value_bytes=1_000), mode)
    limit = 1_000 + envelope.HEADER_SIZE
    giant, fits = ENV + b"x" * 50_000, ENV + b"y" * (limit - len(ENV))
    backend.inspect.hset(FENCE, mapping=fence_fields(backend.inspect, b"ABCDEFGH", "0"))
    backend.inspect.set(KEY, giant, px=20_000)
    backend.inspect.set(KEY2, fits, px=20_000)

    assert await ops.get(KEY) == giant[: limit + 1]
    raw, pttl = await ops.get_with_ttl(KEY)
    assert raw == giant[: limit + 1]
    assert 19_000 < pttl <= 20_000
    tracked = await ops.read(with_ttl=True)
    assert (tracked.raw, tracked.nonce) == (giant[: limit + 1], b"ABCDEFGH")
    assert 19_000 < tracked.pttl_ms <= 20_000
    backend.inspect.delete(FENCE)
    unfenced = await ops.read(with_ttl=True)  # the script, which creates the fence
    assert unfenced.raw == giant[: limit + 1]
    assert 19_000 < unfenced.pttl_ms <= 20_000
    assert await ops.get(KEY2) == fits  # a value of the limit exactly is read whole
    assert (await ops.get_with_ttl(KEY2))[0] == fits
    assert (await ops.read(KEY2)).raw == fits
    assert backend.inspect.strlen(KEY) == len(giant)  # reading changed nothing


async def test_a_bounded_read_of_a_missing_or_empty_value_is_none(backend: Backend, ops: Ops) -> None:
    """GETRANGE answers b"" for a missing key: gcache never stores an empty entry, so b"" is none."""
    backend.inspect.set(KEY2, b"")
    for key in (KEY, KEY2):
        assert await ops.get(key) is None
        assert await ops.get_with_ttl(key) == (None, -1)
        fenced = await ops.read(key, with_ttl=True)  # the script first: it creates the fence
        again = await ops.read(key, with_ttl=True)  # then the pipeline
        assert (fenced.raw, fenced.pttl_ms, again.raw, again.pttl_ms) == (None, -1, None, -1)


async def test_a_bounded_read_is_getrange_everywhere_and_transfers_the_limit_at_most(
    real_ops: Ops, redis_client: redis.Redis
) -> None:
    """A GETRANGE, in the scripts too, never a GET; and Redis sends the client no more than the
    limit of a value 16 times larger."""
    giant = ENV + b"x" * (16 * MAX_VALUE_BYTES)
    redis_client.set(KEY, giant)
    redis_client.hset(FENCE, mapping=fence_fields(redis_client, b"ABCDEFGH", "0"))
    await real_ops.get(KEY2)  # connections open
    await real_ops.read(KEY2)
    redis_client.config_resetstat()
    sent_before = redis_client.info("stats")["total_net_output_bytes"]

    assert await real_ops.get(KEY) == giant[: READ_LIMIT + 1]
    assert (await real_ops.get_with_ttl(KEY))[0] == giant[: READ_LIMIT + 1]
    assert (await real_ops.read(KEY, with_ttl=True)).raw == giant[: READ_LIMIT + 1]
    redis_client.delete(FENCE)
    assert (await real_ops.read(KEY)).raw == giant[: READ_LIMIT + 1]  # the pipeline, then the script

    sent = redis_client.info("stats")["total_net_output_bytes"] - sent_before
    assert 5 * READ_LIMIT < sent < 5 * READ_LIMIT + 64 * 1024  # five reads of the value, each bounded
    stats = commands_run(redis_client)
    assert stats["cmdstat_getrange"] == 5
    assert "cmdstat_get" not in stats
    assert stats["cmdstat_evalsha"] == 2  # the fail-safe read and the unfenced tracked read


async def test_get_retries_once_on_a_connection_the_server_closed(
    real_ops: Ops, redis_client: redis.Redis
) -> None:
    """The hand-packed GETRANGE keeps redis-py's retry policy, sync as async."""
    redis_client.set(KEY, ENV)
    assert await real_ops.get(KEY) == ENV  # a pooled connection now exists
    redis_client.client_kill_filter(_type="normal", skipme=True)  # as a restarted server would

    assert await real_ops.get(KEY) == ENV
    assert real_ops.remote.breaker.failures == 0


async def test_get_of_a_value_of_the_wrong_type_fails_and_leaves_the_connection_usable(
    backend: Backend, ops: Ops
) -> None:
    backend.inspect.hset(KEY, mapping={"n": b"x"})  # GETRANGE answers WRONGTYPE

    with pytest.raises(RemoteError) as info:
        await ops.get(KEY)

    assert isinstance(info.value.cause, redis.ResponseError)
    backend.inspect.delete(KEY)
    backend.inspect.set(KEY, ENV)
    for _ in range(3):
        assert await ops.get(KEY) == ENV


async def test_without_a_limit_values_are_read_whole_with_get(
    mode: str, redis_url: str, redis_client: redis.Redis
) -> None:
    loop_thread = LoopThread("test-unbounded")
    ops = Ops(real_remote(redis_url, loop_thread, max_value_bytes=None), mode)
    giant = ENV + b"x" * 100_000
    redis_client.set(KEY, giant)
    redis_client.hset(FENCE, mapping=fence_fields(redis_client, b"ABCDEFGH", "0"))
    try:
        redis_client.config_resetstat()
        assert await ops.get(KEY) == giant
        assert (await ops.get_with_ttl(KEY))[0] == giant
        assert (await ops.read(KEY)).raw == giant
        assert await ops.get(KEY2) is None
        stats = commands_run(redis_client)
        assert stats["cmdstat_get"] == 4  # two alone, one in the fail-safe script, one tracked
        assert "cmdstat_getrange" not in stats
    finally:
        await ops.remote.aclose()
        loop_thread.stop()


# -- write_tracked --------------------------------------------------------------------------------


async def test_write_tracked_stores_the_entry_as_given_under_the_fence_its_read_created(
    backend: Backend, ops: Ops
) -> None:
    read = await ops.read()
    assert read.nonce is not None
    env = envelope.encode(PAYLOAD, envelope.SERIALIZER_CUSTOM, envelope.FLAG_STR, read.now_us, read.nonce)

    assert await ops.write(read.now_us, read.nonce, ttl_ms=10_000, env=env) == 1

    fence = cast("dict[bytes, bytes]", backend.inspect.hgetall(FENCE))
    assert set(fence) == {b"n", b"w", b"r"}
    assert len(fence[b"n"]) == 8
    assert fence[b"w"] == b"0"
    raw = stored(backend.inspect, KEY)
    assert raw == env
    assert envelope.decode(raw) == envelope.Envelope(
        envelope.SERIALIZER_CUSTOM, envelope.FLAG_STR, read.now_us, fence[b"n"], envelope.NO_KEY_ID, PAYLOAD
    )
    entry_ttl = backend.inspect.pttl(KEY)
    assert 9_000 < entry_ttl <= 10_000
    assert backend.inspect.pttl(FENCE) >= entry_ttl


async def test_write_tracked_then_read_tracked_sees_value_under_same_nonce(
    backend: Backend, ops: Ops
) -> None:
    first = await ops.read()
    assert await ops.write(first.now_us, first.nonce) == 1

    second = await ops.read()

    assert second.raw is not None
    assert second.nonce == backend.inspect.hget(FENCE, "n")
    assert second.watermark_us == 0
    assert second.now_us >= first.now_us
    decoded = envelope.decode(second.raw)
    assert decoded.nonce == second.nonce
    assert decoded.stamp_us == first.now_us > second.watermark_us


async def test_write_tracked_existing_fence_keeps_its_nonce(backend: Backend, ops: Ops) -> None:
    backend.inspect.hset(FENCE, mapping=fence_fields(backend.inspect, b"NONCE--1", "0"))
    read = await ops.read()
    assert read.nonce == b"NONCE--1"

    assert await ops.write(read.now_us, read.nonce, key=KEY) == 1
    assert await ops.write(read.now_us, read.nonce, key=KEY2) == 1

    assert backend.inspect.hgetall(FENCE) == {
        b"n": b"NONCE--1",
        b"w": b"0",
        b"r": node_replid(backend.inspect),
    }
    for key in (KEY, KEY2):
        raw = stored(backend.inspect, key)
        assert envelope.decode(raw).nonce == b"NONCE--1"


async def test_write_tracked_fence_outlives_longest_entry(backend: Backend, ops: Ops) -> None:
    read = await ops.read()
    assert await ops.write(read.now_us, read.nonce, key=KEY, ttl_ms=50_000) == 1
    assert await ops.write(read.now_us, read.nonce, key=KEY2, ttl_ms=5_000) == 1

    # the shorter write does not shorten the fence
    assert backend.inspect.pttl(FENCE) >= backend.inspect.pttl(KEY) > 40_000
    assert 4_000 < backend.inspect.pttl(KEY2) <= 5_000


async def test_write_tracked_refused_with_minus_one_when_the_fence_is_missing_at_write(
    backend: Backend, ops: Ops
) -> None:
    # The read before every write creates the fence; a write that finds none lost it.
    assert await ops.write(backend.now_us(), b"NEVERSET") == -1
    assert backend.inspect.exists(KEY, FENCE) == 0


async def test_write_tracked_refused_when_the_fence_watermark_is_not_a_number(
    backend: Backend, ops: Ops
) -> None:
    # Only someone writing to Redis by hand leaves such a fence: fail closed.
    read = await ops.read()
    backend.inspect.hset(FENCE, "w", "garbage")

    assert await ops.write(read.now_us, read.nonce) == 0
    assert backend.inspect.exists(KEY) == 0


async def test_write_tracked_refused_when_invalidated_after_read(backend: Backend, ops: Ops) -> None:
    first = await ops.read()
    assert await ops.write(first.now_us, first.nonce) == 1
    read = await ops.read()
    assert read.nonce is not None

    await ops.invalidate()

    assert await ops.write(read.now_us, read.nonce, key=KEY2) == 0
    assert backend.inspect.exists(KEY2) == 0


async def test_write_tracked_refused_when_watermark_equals_read_time(backend: Backend, ops: Ops) -> None:
    backend.inspect.hset(FENCE, mapping=fence_fields(backend.inspect, b"NONCE--1", "0"))
    read = await ops.read()
    backend.inspect.hset(FENCE, "w", str(read.now_us))

    assert await ops.write(read.now_us, read.nonce) == 0
    assert await ops.write(read.now_us + 1, read.nonce) == 1
    raw = stored(backend.inspect, KEY)
    assert envelope.decode(raw).stamp_us == read.now_us + 1


async def test_write_tracked_refused_when_invalidated_after_read_of_new_entity(
    backend: Backend, ops: Ops
) -> None:
    read = await ops.read()

    await ops.invalidate()

    assert await ops.write(read.now_us, read.nonce) == 0
    assert backend.inspect.exists(KEY) == 0


async def test_write_tracked_after_read_of_new_entity_shares_the_fence_that_read_created(
    backend: Backend, ops: Ops
) -> None:
    read_a = await ops.read(KEY)
    read_b = await ops.read(KEY2)
    assert read_a.nonce is not None
    assert read_b.nonce == read_a.nonce  # the second read found the fence the first one created

    assert await ops.write(read_a.now_us, read_a.nonce, key=KEY) == 1
    assert await ops.write(read_b.now_us, read_b.nonce, key=KEY2) == 1

    nonce = backend.inspect.hget(FENCE, "n")
    for key in (KEY, KEY2):
        raw = stored(backend.inspect, key)
        assert envelope.decode(raw).nonce == nonce


async def test_write_tracked_refused_with_minus_one_when_fence_nonce_changed_since_read(
    backend: Backend, ops: Ops
) -> None:
    assert await ops.write(None, None) == 1
    read = await ops.read(KEY2)
    assert read.nonce is not None
    backend.inspect.hset(FENCE, "n", b"REPLACED")

    assert await ops.write(read.now_us, read.nonce, key=KEY2) == -1
    assert backend.inspect.exists(KEY2) == 0
    assert backend.inspect.hget(FENCE, "n") == b"REPLACED"


async def test_write_tracked_refused_with_minus_one_when_fence_vanished_since_read(
    backend: Backend, ops: Ops
) -> None:
    assert await ops.write(None, None) == 1
    read = await ops.read(KEY2)
    assert read.nonce is not None
    backend.inspect.delete(FENCE)

    assert await ops.write(read.now_us, read.nonce, key=KEY2) == -1
    assert backend.inspect.exists(KEY2, FENCE) == 0


async def test_write_tracked_refused_with_minus_two_when_compute_limit_exceeded(
    backend: Backend, mode: str
) -> None:
    ops = Ops(backend.make(compute_limit_ms=50), mode)
    read = await ops.read()

    await asyncio.sleep(0.12)

    assert await ops.write(read.now_us, read.nonce) == -2
    assert backend.inspect.exists(KEY, FENCE) == 0


# -- invalidate -----------------------------------------------------------------------------------


async def test_invalidate_missing_fence_creates_it_with_server_now_watermark(
    backend: Backend, ops: Ops
) -> None:
    before = backend.now_us()
    watermark = await ops.invalidate()
    after = backend.now_us()

    assert before <= watermark <= after
    fence = backend.inspect.hgetall(FENCE)
    assert len(fence[b"n"]) == 8
    assert int(fence[b"w"]) == watermark


async def test_invalidate_adds_future_buffer_to_server_now(backend: Backend, ops: Ops) -> None:
    before = backend.now_us()
    watermark = await ops.invalidate(buffer_ms=500)
    after = backend.now_us()

    assert before + 500_000 <= watermark <= after + 500_000
    assert int(backend.inspect.hget(FENCE, "w") or 0) == watermark


async def test_invalidate_keeps_existing_fence_nonce(backend: Backend, ops: Ops) -> None:
    assert await ops.write(None, None) == 1
    nonce = backend.inspect.hget(FENCE, "n")

    await ops.invalidate()
    await ops.invalidate(buffer_ms=10)

    assert backend.inspect.hget(FENCE, "n") == nonce


async def test_invalidate_never_lowers_watermark(backend: Backend, ops: Ops) -> None:
    high = await ops.invalidate(buffer_ms=10_000)

    assert await ops.invalidate(buffer_ms=0) == high
    assert await ops.invalidate(buffer_ms=5_000) == high
    assert int(backend.inspect.hget(FENCE, "w") or 0) == high

    higher = await ops.invalidate(buffer_ms=20_000)
    assert higher > high
    assert int(backend.inspect.hget(FENCE, "w") or 0) == higher


async def test_invalidate_watermark_moves_forward_with_server_time(backend: Backend, ops: Ops) -> None:
    first = await ops.invalidate()
    await asyncio.sleep(0.002)
    second = await ops.invalidate()

    assert second > first


async def test_invalidate_fence_lives_at_least_buffer_plus_compute_limit(backend: Backend, mode: str) -> None:
    ops = Ops(backend.make(compute_limit_ms=2_000), mode)

    await ops.invalidate(buffer_ms=3_000)

    assert 4_500 < backend.inspect.pttl(FENCE) <= 5_000


async def test_invalidate_does_not_shorten_longer_fence_ttl(backend: Backend, mode: str) -> None:
    ops = Ops(backend.make(compute_limit_ms=2_000), mode)
    assert await ops.write(None, None, ttl_ms=100_000) == 1

    await ops.invalidate(buffer_ms=0)

    assert backend.inspect.pttl(FENCE) > 95_000


async def test_invalidate_extends_shorter_fence_ttl(backend: Backend, mode: str) -> None:
    ops = Ops(backend.make(compute_limit_ms=1_000), mode)
    assert await ops.write(None, None, ttl_ms=1_000) == 1
    assert backend.inspect.pttl(FENCE) <= 2_000

    await ops.invalidate(buffer_ms=60_000)

    assert backend.inspect.pttl(FENCE) > 59_000


async def test_invalidate_then_entry_written_before_is_stale_by_stamp(backend: Backend, ops: Ops) -> None:
    assert await ops.write(None, None) == 1

    watermark = await ops.invalidate()
    read = await ops.read()

    assert read.raw is not None
    assert read.watermark_us == watermark
    assert envelope.decode(read.raw).stamp_us <= read.watermark_us
    assert read.now_us >= watermark


async def test_invalidate_with_future_buffer_refuses_writes_read_within_buffer(
    backend: Backend, ops: Ops
) -> None:
    await ops.invalidate(buffer_ms=60_000)
    read = await ops.read()

    assert await ops.write(read.now_us, read.nonce) == 0
    assert await ops.write(None, None) == 0  # a direct put lands inside the buffer too
    assert backend.inspect.exists(KEY) == 0


# -- flush ----------------------------------------------------------------------------------------


async def test_flush_deletes_only_keys_under_prefix_and_counts_them(backend: Backend, ops: Ops) -> None:
    mine = [
        "{urn:test:user_id:1}#A",
        "{urn:test:user_id:1}?x=1#A",
        "{urn:test:user_id:1}#watermark",
        "{urn:test:org:2}#B",
    ]
    foreign = [
        "other",
        "{urn:other:user_id:1}#A",
        "{urn:testing:user_id:1}#A",
        "urn:test:user_id:1#A",
        "x{urn:test:user_id:1}#A",
    ]
    for key in mine + foreign:
        backend.inspect.set(key, b"v")

    assert await ops.flush("urn:test") == len(mine)

    assert backend.inspect.exists(*mine) == 0
    assert backend.inspect.exists(*foreign) == len(foreign)
    assert await ops.flush("urn:test") == 0


async def test_flush_deletes_more_keys_than_one_scan_batch(backend: Backend, ops: Ops) -> None:
    with backend.inspect.pipeline(transaction=False) as pipe:
        for i in range(2_345):
            pipe.set(f"{{urn:test:user_id:{i}}}#A", b"v")
        pipe.set("{urn:keep:user_id:1}#A", b"v")
        pipe.execute()

    assert await ops.flush("urn:test") == 2_345

    assert backend.inspect.dbsize() == 1


# -- twins agree ----------------------------------------------------------------------------------


async def test_sync_and_async_twins_give_same_results(backend: Backend, mode: str) -> None:
    remote = backend.make()
    async_ops, sync_ops = Ops(remote, "async"), Ops(remote, "sync")
    first, second = (async_ops, sync_ops) if mode == "async" else (sync_ops, async_ops)

    written = await first.write(None, None)
    read_first, read_second = await first.read(), await second.read()
    assert written == 1
    assert (read_first.raw, read_first.nonce, read_first.watermark_us) == (
        read_second.raw,
        read_second.nonce,
        read_second.watermark_us,
    )
    assert await first.get(KEY) == await second.get(KEY) == read_first.raw

    watermark = await first.invalidate(buffer_ms=60_000)
    assert await second.invalidate(buffer_ms=0) == watermark
    assert await first.write(None, None, key=KEY2) == await second.write(None, None, key=KEY2) == 0
    assert await first.delete(KEY) is True
    assert await second.delete(KEY) is False
    backend.inspect.set("{urn:gcache:user_id:9}#A", b"v")
    assert await first.flush("urn:gcache") == 2  # the fence and the key above
    assert await second.flush("urn:gcache") == 0


# -- errors ---------------------------------------------------------------------------------------


@pytest.fixture
async def dead_remote() -> AsyncIterator[RemoteCache]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    loop_thread = LoopThread("test-dead")
    remote = RemoteCache(
        redis_config=RedisConfig(url=f"redis://127.0.0.1:{port}/0"),
        client_factory=None,
        compute_limit_ms=LIMIT_MS,
        loop_thread=loop_thread,
    )
    yield remote
    await remote.aclose()
    loop_thread.stop()


@pytest.mark.parametrize(
    ("operation", "call"),
    [
        ("get", lambda o: o.get(KEY)),
        ("set", lambda o: o.set(KEY, ENV, 1_000)),
        ("read", lambda o: o.read()),
        ("write", lambda o: o.write(1, b"NONCE--1")),
        ("invalidate", lambda o: o.invalidate()),
        ("delete", lambda o: o.delete(KEY)),
        ("flush", lambda o: o.flush("urn:gcache")),
    ],
)
async def test_redis_failure_raises_remote_error_naming_operation(
    dead_remote: RemoteCache, mode: str, operation: str, call: Callable[[Ops], Any]
) -> None:
    ops = Ops(dead_remote, mode)

    with pytest.raises(RemoteError) as info:
        await call(ops)

    assert info.value.operation == operation
    assert isinstance(info.value.cause, (redis.ConnectionError, OSError))
    assert f"redis {operation} failed" in str(info.value)


async def test_gcache_remote_is_a_remote_cache_on_its_redis(
    make_cache: Callable[..., GCache], redis_client: redis.Redis, mode: str
) -> None:
    cache = make_cache(tracked_compute_limit_sec=0.5)
    remote = cache._remote
    assert isinstance(remote, RemoteCache)
    ops = Ops(remote, mode)

    await ops.invalidate(buffer_ms=100)

    assert 500 < redis_client.pttl(FENCE) <= 600


def test_each_event_loop_keeps_its_own_client_when_loops_take_turns(
    mode: str, redis_url: str, redis_client: redis.Redis
) -> None:
    """The connections of the loop asked last are kept at hand; another loop must not get them."""
    loop_thread = LoopThread("test-loops")
    remote = real_remote(redis_url, loop_thread)
    redis_client.set(KEY, ENV)
    first, second = asyncio.new_event_loop(), asyncio.new_event_loop()

    async def read() -> tuple[bytes | None, object]:
        return await remote.aget(KEY), remote._async_connection(READ).client

    try:
        turns = []
        for loop in (first, second, first, second):
            turns.append(loop.run_until_complete(read()))
            if mode == "sync":  # the sync client, between the loops' turns, changes nothing
                assert remote.get(KEY) == ENV
        assert [value for value, _ in turns] == [ENV] * 4
        clients = [client for _, client in turns]
        assert clients[0] is clients[2]
        assert clients[1] is clients[3]
        assert clients[0] is not clients[1]
    finally:
        remote.close()
        loop_thread.stop()
        first.close()
        second.close()
