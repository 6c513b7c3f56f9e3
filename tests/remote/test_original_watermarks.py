"""The original gcache's watermarks in Redis: what gcache's scripts do with them, and what the
``legacy_compat`` scripts do with gcache's fences (both run while a fleet switches).

Real Redis; each test through the async and the sync twin of the operation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis

from gcache import RedisConfig
from gcache import _envelope as envelope
from gcache._loop_thread import LoopThread
from gcache.original_wire import WATERMARK_TTL_SECONDS, encode_pickle
from gcache.remote import RemoteCache, TrackedRead

pytestmark = [pytest.mark.redis, pytest.mark.parametrize("mode", ["async", "sync"])]

KEY = "{urn:mix:user:1}#GetUser"
FENCE = "{urn:mix:user:1}#watermark"
LIMIT_MS = 60_000


class Twin:
    """A RemoteCache driven through its async or its sync twins."""

    def __init__(self, remote: RemoteCache, mode: str) -> None:
        self.remote, self.mode = remote, mode

    async def do(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if self.mode == "async":
            return await getattr(self.remote, "a" + name)(*args, **kwargs)
        return getattr(self.remote, name)(*args, **kwargs)


@pytest.fixture
async def make(redis_url: str, mode: str) -> AsyncIterator[Callable[..., Twin]]:
    made: list[tuple[RemoteCache, LoopThread]] = []
    told: list[str] = []

    def build(*, legacy_compat: bool = False) -> Twin:
        loop_thread = LoopThread("test-original-watermarks")
        remote = RemoteCache(
            redis_config=RedisConfig(url=redis_url),
            client_factory=None,
            compute_limit_ms=LIMIT_MS,
            loop_thread=loop_thread,
            legacy_compat=legacy_compat,
            on_foreign_watermark=told.append,
        )
        made.append((remote, loop_thread))
        twin = Twin(remote, mode)
        twin.told = told  # type: ignore[attr-defined]
        return twin

    yield build
    for remote, loop_thread in made:
        await remote.aclose()
        loop_thread.stop()


def server_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


# -- gcache's scripts meet the original's watermark (a string) -----------------------------------


async def test_a_tracked_read_makes_the_originals_watermark_a_fence_and_keeps_it(
    make: Callable[..., Twin], redis_client: redis.Redis
) -> None:
    ours = make()
    ahead = server_ms(redis_client) + 60_000  # an invalidation with a minute of future buffer
    redis_client.set(FENCE, str(ahead))
    old = envelope.encode(b"v", envelope.SERIALIZER_CUSTOM, 0, 1, b"\x01" * 8)
    redis_client.set(KEY, old)

    read: TrackedRead = await ours.do("read_tracked", KEY, FENCE)

    assert read.watermark_us == ahead * 1000
    assert read.nonce is not None
    assert read.nonce != b"\x01" * 8  # the old entry's fence is gone
    assert redis_client.type(FENCE) == b"hash"
    assert ours.told == [FENCE]  # type: ignore[attr-defined]
    entry = envelope.encode(b"new", envelope.SERIALIZER_CUSTOM, 0, read.now_us, read.nonce)
    assert await ours.do("write_tracked", KEY, FENCE, read, 10_000, entry) == 0  # still invalidated


async def test_an_invalidation_on_the_originals_watermark_keeps_the_later_of_the_two(
    make: Callable[..., Twin], redis_client: redis.Redis
) -> None:
    ours = make()
    ahead = server_ms(redis_client) + 120_000
    redis_client.set(FENCE, str(ahead))

    watermark_us = await ours.do("invalidate", FENCE, 0)

    assert watermark_us == ahead * 1000
    assert redis_client.type(FENCE) == b"hash"
    assert int(redis_client.hget(FENCE, "w") or 0) == ahead * 1000


async def test_an_unreadable_watermark_becomes_a_fence_at_server_now(
    make: Callable[..., Twin], redis_client: redis.Redis
) -> None:
    ours = make()
    redis_client.set(FENCE, "not a number")
    before = server_ms(redis_client) * 1000

    read: TrackedRead = await ours.do("read_tracked", KEY, FENCE)

    assert before <= read.watermark_us <= read.now_us  # fail closed: nothing stamped before it


async def test_a_fenced_write_over_the_originals_watermark_is_refused(
    make: Callable[..., Twin], redis_client: redis.Redis
) -> None:
    ours = make()
    read: TrackedRead = await ours.do("read_tracked", KEY, FENCE)
    redis_client.set(FENCE, str(server_ms(redis_client)))  # an original pod invalidated since
    assert read.nonce is not None
    entry = envelope.encode(b"v", envelope.SERIALIZER_CUSTOM, 0, read.now_us, read.nonce)

    assert await ours.do("write_tracked", KEY, FENCE, read, 10_000, entry) == -1
    assert redis_client.get(KEY) is None


# -- the legacy_compat scripts -------------------------------------------------------------------


async def test_legacy_invalidation_writes_the_originals_watermark(
    make: Callable[..., Twin], redis_client: redis.Redis
) -> None:
    legacy = make(legacy_compat=True)
    before = server_ms(redis_client)

    watermark_us = await legacy.do("invalidate", FENCE, 250)

    stored = int(redis_client.get(FENCE) or 0)
    assert before + 250 <= stored <= server_ms(redis_client) + 250
    assert watermark_us == stored * 1000
    assert (WATERMARK_TTL_SECONDS - 5) * 1000 < redis_client.pttl(FENCE) <= WATERMARK_TTL_SECONDS * 1000
    redis_client.set(FENCE, str(stored + 10_000))  # a later one: never lowered
    assert await legacy.do("invalidate", FENCE, 0) == (stored + 10_000) * 1000


async def test_legacy_scripts_read_and_raise_a_fence_made_by_a_process_without_it(
    make: Callable[..., Twin], redis_client: redis.Redis
) -> None:
    ours, legacy = make(), make(legacy_compat=True)
    await ours.do("invalidate", FENCE, 0)  # a fence: a hash of microseconds
    fence_us = int(redis_client.hget(FENCE, "w") or 0)

    read: TrackedRead = await legacy.do("read_tracked", KEY, FENCE)
    assert read.watermark_us // 1000 == -(-fence_us // 1000)  # rounded up to the millisecond

    await legacy.do("invalidate", FENCE, 5_000)
    assert redis_client.type(FENCE) == b"hash"
    assert int(redis_client.hget(FENCE, "w") or 0) >= fence_us + 5_000_000
    after: TrackedRead = await ours.do("read_tracked", KEY, FENCE)
    assert after.watermark_us >= fence_us + 5_000_000  # the process without it honours it


async def test_legacy_write_is_refused_after_an_invalidation_and_stored_before(
    make: Callable[..., Twin], redis_client: redis.Redis
) -> None:
    legacy = make(legacy_compat=True)
    read: TrackedRead = await legacy.do("read_tracked", KEY, FENCE)
    assert read.watermark_us == -1  # none yet
    entry = encode_pickle(read.now_us // 1000, {"v": 1})

    assert await legacy.do("write_tracked", KEY, FENCE, read, 10_000, entry) == 1
    assert redis_client.get(KEY) == entry
    redis_client.delete(KEY)
    redis_client.set(FENCE, str(read.now_us // 1000))  # invalidated in the read's millisecond
    assert await legacy.do("write_tracked", KEY, FENCE, read, 10_000, entry) == 0
    redis_client.set(FENCE, "garbage")
    assert await legacy.do("write_tracked", KEY, FENCE, read, 10_000, entry) == 0  # fail closed
    stale = TrackedRead(None, b"", -1, read.now_us - (LIMIT_MS + 1_000) * 1000)
    redis_client.delete(FENCE)
    assert await legacy.do("write_tracked", KEY, FENCE, stale, 10_000, entry) == -2
    assert redis_client.get(KEY) is None
