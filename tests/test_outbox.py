"""The invalidation outbox's own rules, with a fake Redis (``apply``) on a real loop thread.

Merging repeats (the largest buffer wins), settling only what a replay covered, replays in
chunks (an item Redis refused waits, the others are settled), the bound (the oldest dropped,
every tracked entity held until the outbox drains), backoff while Redis fails, and what close
and fork leave. Against a real Redis: ``tests/behaviour/test_outbox.py``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Sequence

import pytest
import redis
from prometheus_client import CollectorRegistry

from gcache._log import ErrorLog
from gcache._loop_thread import LoopThread
from gcache.epochs import Epochs
from gcache.errors import RemoteError
from gcache.metrics import Metrics
from gcache.outbox import InvalidationOutbox, Pending
from tests.conftest import sample, wait_until

DEPTH = "gcache_invalidation_outbox"
REPLAYS = "gcache_invalidation_replay_counter_total"
DROPPED = "gcache_invalidation_outbox_dropped_counter_total"


class FakeRedis:
    """``apply`` of an outbox: fails while ``down``, else records each item's (fence, buffer) and
    answers it, or with an error each item of ``refused`` (a fence); ``chunks``: the items of each
    call."""

    def __init__(self) -> None:
        self.down = True
        self.applied: list[tuple[str, int]] = []
        self.attempts = 0
        self.answer = "applied"
        self.refused: set[str] = set()
        self.chunks: list[list[str]] = []

    async def apply(self, items: Sequence[Pending]) -> list[str | BaseException]:
        self.attempts += 1
        await asyncio.sleep(0)
        if self.down:
            raise RemoteError("invalidate", ConnectionError("refused"))
        self.chunks.append([item.fence for item in items])
        results: list[str | BaseException] = []
        for item in items:
            if item.fence in self.refused:
                results.append(RemoteError("invalidate", redis.ResponseError("WRONGTYPE")))
            else:
                self.applied.append((item.fence, item.buffer_ms))
                results.append(self.answer)
        return results


class Subject:
    def __init__(self, capacity: int, failing: bool = False, chunk: int = 500) -> None:
        self.registry = CollectorRegistry()
        self.metrics = Metrics.get(self.registry, "")
        self.epochs = Epochs()
        self.redis = FakeRedis()
        self.loop = LoopThread("test-outbox")
        self.failing = failing
        self.outbox = InvalidationOutbox(
            capacity,
            epochs=self.epochs,
            apply=self.redis.apply,
            submit=self.loop.submit,
            failing=lambda: self.failing,
            metrics=self.metrics,
            errors=ErrorLog(logging.getLogger("gcache.test_outbox"), 0),
            backoff=(0.01, 0.05),
            chunk=chunk,
        )

    def metric(self, name: str, **labels: str) -> float:
        return sample(self.registry, name, **labels)

    def keep(self, n: int, buffer_ms: int = 0) -> bool:
        return self.outbox.keep(f"{{e:{n}}}", f"{{e:{n}}}#watermark", "k", buffer_ms)


@pytest.fixture
def subject() -> Iterator[Subject]:
    s = Subject(3)
    yield s
    s.outbox.close()
    s.loop.stop()


def test_repeats_of_an_entity_merge_into_one_item_with_the_largest_buffer(subject: Subject) -> None:
    for buffer_ms in (100, 5_000, 0):
        assert subject.keep(1, buffer_ms)
    assert len(subject.outbox) == 1
    assert subject.metric(DEPTH) == 1
    assert subject.epochs.holds("{e:1}")
    assert not subject.epochs.holds("{e:2}")
    wait_until(lambda: subject.redis.attempts >= 2, what="replays tried while Redis is down")
    subject.redis.down = False
    wait_until(lambda: len(subject.outbox) == 0, what="the outbox drained")
    assert subject.redis.applied == [("{e:1}#watermark", 5_000)]
    assert subject.metric(DEPTH) == 0
    assert subject.metric(REPLAYS, result="applied") == 1
    assert subject.metric(REPLAYS, result="failed") >= 2
    assert not subject.epochs.held
    assert not subject.epochs.holds("{e:1}")


def test_a_direct_invalidation_settles_only_what_its_buffer_covers(subject: Subject) -> None:
    subject.failing = True  # no replay: the breaker is open
    subject.keep(1, 1_000)
    fence = "{e:1}#watermark"
    sent = subject.outbox.version(fence)
    subject.outbox.applied(fence, 500, sent)  # a smaller buffer does not cover it
    assert len(subject.outbox) == 1
    subject.outbox.applied(fence, 1_000, 0)  # sent when nothing waited: covers nothing waiting
    assert len(subject.outbox) == 1
    subject.outbox.applied(fence, 1_000, sent)
    assert len(subject.outbox) == 0
    assert not subject.epochs.holds("{e:1}")
    assert subject.metric(DEPTH) == 0
    assert subject.redis.attempts == 0  # while failing nothing was tried


def test_a_repeat_merged_after_a_direct_invalidation_was_sent_still_waits(subject: Subject) -> None:
    subject.failing = True
    subject.keep(1)
    fence = "{e:1}#watermark"
    sent = subject.outbox.version(fence)
    subject.keep(1)  # fails while the direct one is in flight: it needs a later watermark
    subject.outbox.applied(fence, 0, sent)
    assert len(subject.outbox) == 1
    assert subject.epochs.holds("{e:1}")


def test_a_repeat_merged_while_its_replay_is_in_flight_is_replayed_again(subject: Subject) -> None:
    subject.redis.down = False
    merged: list[bool] = []
    apply = subject.redis.apply

    async def apply_then_repeat(items: Sequence[Pending]) -> list[str | BaseException]:
        answer = await apply(items)
        if not merged:  # an invalidation of the entity fails while this replay is applied
            merged.append(subject.keep(1))
        return answer

    subject.outbox._apply = apply_then_repeat
    subject.keep(1)
    wait_until(lambda: len(subject.outbox) == 0, timeout=5, what="both replays")
    assert merged == [True]
    assert subject.redis.applied == [("{e:1}#watermark", 0)] * 2
    assert subject.metric(REPLAYS, result="applied") == 2


def test_wake_ends_the_backoff_and_replays(subject: Subject) -> None:
    subject.failing = True
    subject.keep(1)
    wait_until(lambda: subject.outbox._wake is not None, what="the drain started")
    subject.redis.down = False
    subject.failing = False
    subject.outbox.wake()
    wait_until(lambda: len(subject.outbox) == 0, timeout=5, what="the replay after wake")
    assert subject.redis.applied == [("{e:1}#watermark", 0)]


def test_a_full_outbox_drops_the_oldest_and_holds_every_entity_until_it_drains(
    subject: Subject, caplog: pytest.LogCaptureFixture
) -> None:
    subject.failing = True
    for n in (1, 2, 3, 4):
        assert subject.keep(n)
    assert len(subject.outbox) == 3
    assert subject.metric(DEPTH) == 3
    assert subject.metric(DROPPED, reason="full") == 1
    assert "dropped the invalidation of '{e:1}'" in caplog.text
    assert subject.epochs.hold_every
    assert subject.epochs.holds("{e:1}")
    assert subject.epochs.holds("{e:9}")
    subject.redis.down, subject.failing = False, False
    subject.outbox.wake()
    wait_until(lambda: len(subject.outbox) == 0, timeout=5, what="the outbox drained")
    assert [fence for fence, _ in subject.redis.applied] == [f"{{e:{n}}}#watermark" for n in (2, 3, 4)]
    assert not subject.epochs.hold_every
    assert not subject.epochs.holds("{e:9}")


def test_close_gives_up_what_waits_counted_and_logged(
    subject: Subject, caplog: pytest.LogCaptureFixture
) -> None:
    subject.failing = True
    subject.keep(1)
    subject.keep(2)
    assert subject.outbox.close() == 2
    assert subject.metric(DROPPED, reason="closed") == 2
    assert subject.metric(DEPTH) == 0
    assert not subject.epochs.held
    assert "2 invalidation(s) Redis never took" in caplog.text
    assert not subject.keep(3)  # closed: nothing more is kept


def test_no_outbox_keeps_nothing() -> None:
    s = Subject(0)
    try:
        assert not s.keep(1)
        assert len(s.outbox) == 0
        assert not s.epochs.held
        assert s.metric(DEPTH) == 0
    finally:
        s.loop.stop()


def test_unconfirmed_replays_are_counted_apart(subject: Subject) -> None:
    subject.redis.down = False
    subject.redis.answer = "unconfirmed"
    subject.keep(1)
    wait_until(lambda: len(subject.outbox) == 0, timeout=5, what="the replay")
    assert subject.metric(REPLAYS, result="unconfirmed") == 1
    assert subject.metric(REPLAYS, result="applied") == 0


def test_a_forked_child_replays_its_parents_items_and_counts_them(subject: Subject) -> None:
    subject.failing = True
    subject.keep(1)
    subject.keep(2)
    wait_until(lambda: subject.outbox._wake is not None, what="the drain started")
    # As in a child: no loop thread (the parent's drain is not there), the metrics' fork hook
    # sets the gauge to 0, then the outbox adds its items and drains on a loop of its own.
    subject.loop.stop()
    subject.metrics.outbox_depth.set(0)
    subject.outbox.after_fork_in_child()
    assert subject.metric(DEPTH) == 2
    subject.redis.down, subject.failing = False, False
    wait_until(lambda: len(subject.outbox) == 0, timeout=5, what="the child's replay")
    assert sorted(fence for fence, _ in subject.redis.applied) == ["{e:1}#watermark", "{e:2}#watermark"]


def test_items_are_replayed_in_chunks_oldest_first() -> None:
    s = Subject(100, failing=True, chunk=4)
    try:
        for n in range(10):
            s.keep(n)
        s.redis.down, s.failing = False, False
        s.outbox.wake()
        wait_until(lambda: len(s.outbox) == 0, timeout=5, what="the outbox drained")
        fences = [f"{{e:{n}}}#watermark" for n in range(10)]
        assert s.redis.chunks == [fences[0:4], fences[4:8], fences[8:10]]
        assert s.metric(REPLAYS, result="applied") == 10
        assert s.metric(DEPTH) == 0
        assert not s.epochs.held
    finally:
        s.outbox.close()
        s.loop.stop()


def test_an_item_refused_in_its_chunk_waits_and_the_rest_are_settled() -> None:
    """Redis answered the chunk but one item's script failed: that one stays waiting (held) and
    is tried again; the others of its chunk and the chunks after it are settled in the same round."""
    s = Subject(100, failing=True, chunk=4)
    try:
        for n in range(10):
            s.keep(n)
        s.redis.refused = {"{e:5}#watermark"}
        s.redis.down, s.failing = False, False
        s.outbox.wake()
        wait_until(lambda: s.metric(REPLAYS, result="failed") >= 2, timeout=5, what="the item tried again")
        assert len(s.outbox) == 1
        assert s.epochs.held == {"{e:5}"}
        assert s.metric(REPLAYS, result="applied") == 9
        assert s.metric(DEPTH) == 1
        assert [len(chunk) for chunk in s.redis.chunks[:3]] == [4, 4, 2]  # the first round: all of them
        assert s.redis.chunks[3] == ["{e:5}#watermark"]  # the next: what still waits
        s.redis.refused = set()
        wait_until(lambda: len(s.outbox) == 0, timeout=5, what="the refused item applied")
        assert s.metric(REPLAYS, result="applied") == 10
        assert not s.epochs.held
    finally:
        s.outbox.close()
        s.loop.stop()


def test_a_chunk_redis_did_not_answer_ends_the_round_and_the_rest_wait() -> None:
    s = Subject(100, failing=True, chunk=4)
    try:
        for n in range(10):
            s.keep(n)
        apply = s.redis.apply

        async def down_after_the_first_chunk(items: Sequence[Pending]) -> list[str | BaseException]:
            answers = await apply(items)
            s.redis.down = True  # Redis fails after the first chunk's round trip
            return answers

        s.outbox._apply = down_after_the_first_chunk
        s.redis.down, s.failing = False, False
        s.outbox.wake()
        # the second chunk's 4 items failed; the third was not sent
        wait_until(lambda: s.metric(REPLAYS, result="failed") >= 4, timeout=5, what="the second chunk tried")
        assert len(s.outbox) == 6
        assert s.metric(REPLAYS, result="applied") == 4
        assert s.epochs.held == {f"{{e:{n}}}" for n in range(4, 10)}
        s.outbox._apply = apply
        s.redis.down = False
        wait_until(lambda: len(s.outbox) == 0, timeout=5, what="the rest applied")
        assert [fence for fence, _ in s.redis.applied] == [f"{{e:{n}}}#watermark" for n in range(10)]
    finally:
        s.outbox.close()
        s.loop.stop()
