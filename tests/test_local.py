"""LOCAL layer: per-entry TTL, size bound, entity epochs, and thread safety (with a fake clock)."""

from __future__ import annotations

import random
import sys
import threading
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from gcache import ConfigError, GCache, GCacheConfig, GCacheKeyConfig
from gcache.epochs import Epochs
from gcache.local import MISS, LocalStore
from tests.conftest import sample


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _store(
    clock: FakeClock, *, maxsize: int = 100, tracked: bool = False, epochs: Epochs | None = None
) -> LocalStore:
    return LocalStore(maxsize, epochs or Epochs(), tracked=tracked, timer=clock)


# ---------------------------------------------------------------------------------------------
# TTL and size
# ---------------------------------------------------------------------------------------------


def test_get_returns_miss_not_found_when_key_absent(clock: FakeClock) -> None:
    store = _store(clock)
    value, reason = store.get("k", "e")
    assert value is MISS
    assert reason == "not_found"


def test_get_returns_stored_value_with_no_reason(clock: FakeClock) -> None:
    store = _store(clock)
    payload = {"a": 1}
    assert store.put("k", "e", payload, 10, 0) is None
    value, reason = store.get("k", "e")
    assert value is payload
    assert reason is None


def test_get_returns_none_value_as_hit(clock: FakeClock) -> None:
    store = _store(clock)
    store.put("k", "e", None, 10, 0)
    assert store.get("k", "e") == (None, None)


def test_entries_expire_at_their_own_ttl(clock: FakeClock) -> None:
    store = _store(clock)
    store.put("short", "e1", "s", 10, 0)
    store.put("long", "e2", "l", 60, 0)
    clock.advance(9.999)
    assert store.get("short", "e1") == ("s", None)
    assert store.get("long", "e2") == ("l", None)
    clock.advance(0.001)
    assert store.get("short", "e1") == (MISS, "not_found")
    assert store.get("long", "e2") == ("l", None)
    assert len(store) == 1
    clock.advance(49.999)
    assert store.get("long", "e2") == ("l", None)
    clock.advance(0.001)
    assert store.get("long", "e2") == (MISS, "not_found")
    assert len(store) == 0


def test_rewrite_takes_the_new_ttl(clock: FakeClock) -> None:
    store = _store(clock)
    store.put("k", "e", "v1", 100, 0)
    clock.advance(50)
    store.put("k", "e", "v2", 5, 0)
    clock.advance(4)
    assert store.get("k", "e") == ("v2", None)
    clock.advance(1)
    assert store.get("k", "e") == (MISS, "not_found")


def test_maxsize_evicts_least_recently_used(clock: FakeClock) -> None:
    store = _store(clock, maxsize=2)
    store.put("a", "e", 1, 60, 0)
    store.put("b", "e", 2, 60, 0)
    assert store.get("a", "e") == (1, None)  # "b" is now the least recently used
    store.put("c", "e", 3, 60, 0)
    assert len(store) == 2
    assert store.get("b", "e") == (MISS, "not_found")
    assert store.get("a", "e") == (1, None)
    assert store.get("c", "e") == (3, None)


def test_len_never_exceeds_maxsize(clock: FakeClock) -> None:
    store = _store(clock, maxsize=5)
    for i in range(50):
        store.put(f"k{i}", "e", i, 60, 0)
        assert len(store) <= 5
    assert len(store) == 5
    assert [store.get(f"k{i}", "e")[0] for i in range(45, 50)] == [45, 46, 47, 48, 49]


def test_delete_and_clear_remove_entries(clock: FakeClock) -> None:
    store = _store(clock)
    store.put("a", "e", 1, 60, 0)
    store.put("b", "e", 2, 60, 0)
    assert store.delete("a") is True
    assert store.delete("a") is False
    assert store.get("a", "e") == (MISS, "not_found")
    store.clear()
    assert len(store) == 0
    assert store.get("b", "e") == (MISS, "not_found")


# ---------------------------------------------------------------------------------------------
# Epochs: invalidation of tracked entries
# ---------------------------------------------------------------------------------------------


def test_bump_makes_entity_entries_stale_but_not_other_entities(clock: FakeClock) -> None:
    epochs = Epochs()
    store = _store(clock, tracked=True, epochs=epochs)
    start = epochs.current
    store.put("u1#A", "u1", "a1", 60, start)
    store.put("u1#B", "u1", "b1", 60, start)
    store.put("u2#A", "u2", "a2", 60, start)
    epochs.bump("u1")
    assert store.get("u1#A", "u1") == (MISS, "invalidated")
    assert store.get("u1#B", "u1") == (MISS, "invalidated")
    assert store.get("u2#A", "u2") == ("a2", None)
    # a stale entry is removed once seen
    assert store.get("u1#A", "u1") == (MISS, "not_found")
    assert len(store) == 1


def test_put_refused_when_read_started_before_invalidation(clock: FakeClock) -> None:
    epochs = Epochs()
    store = _store(clock, tracked=True, epochs=epochs)
    read_started = epochs.start("u1")
    epochs.bump("u1")  # an invalidation lands while the function runs
    assert store.put("u1#A", "u1", "old", 60, read_started) == "invalidated"
    assert store.get("u1#A", "u1") == (MISS, "not_found")
    # other entities are not affected by that invalidation
    assert store.put("u2#A", "u2", "fine", 60, read_started) is None
    assert store.get("u2#A", "u2") == ("fine", None)


def test_put_accepted_when_read_started_after_invalidation(clock: FakeClock) -> None:
    epochs = Epochs()
    store = _store(clock, tracked=True, epochs=epochs)
    epochs.bump("u1")
    read_started = epochs.start("u1")
    assert read_started == epochs.current
    assert store.put("u1#A", "u1", "new", 60, read_started) is None
    assert store.get("u1#A", "u1") == ("new", None)
    epochs.bump("u2")  # a later invalidation of another entity changes nothing here
    assert store.get("u1#A", "u1") == ("new", None)


def test_entry_written_between_two_bumps_is_stale_after_the_second(clock: FakeClock) -> None:
    epochs = Epochs()
    store = _store(clock, tracked=True, epochs=epochs)
    epochs.bump("u1")
    store.put("u1#A", "u1", "v", 60, epochs.current)
    epochs.bump("u1")
    assert store.get("u1#A", "u1") == (MISS, "invalidated")


def test_future_buffer_keeps_entity_unfillable_until_it_ends(clock: FakeClock) -> None:
    epochs = Epochs(timer=clock)
    store = _store(clock, tracked=True, epochs=epochs)
    store.put("u1#A", "u1", "before", 60, epochs.start("u1"))
    epochs.bump("u1", buffer_sec=5)
    assert store.get("u1#A", "u1") == (MISS, "invalidated")
    clock.advance(4.9)
    inside = epochs.start("u1")
    assert inside == -1
    assert store.put("u1#A", "u1", "lagging", 60, inside) == "invalidated"
    assert store.get("u1#A", "u1") == (MISS, "not_found")
    # other entities fill as usual during the buffer
    assert store.put("u2#A", "u2", "v2", 60, epochs.start("u2")) is None
    clock.advance(0.1)
    after = epochs.start("u1")
    assert after == epochs.current
    assert store.put("u1#A", "u1", "fresh", 60, after) is None
    assert store.get("u1#A", "u1") == ("fresh", None)


def test_future_buffer_never_shortened_by_a_later_smaller_one(clock: FakeClock) -> None:
    epochs = Epochs(timer=clock)
    epochs.bump("u1", buffer_sec=10)
    epochs.bump("u1", buffer_sec=1)
    clock.advance(5)
    assert epochs.start("u1") == -1
    clock.advance(5)
    assert epochs.start("u1") == epochs.current


def test_bump_without_buffer_leaves_entity_fillable(clock: FakeClock) -> None:
    epochs = Epochs(timer=clock)
    epochs.bump("u1")
    assert epochs.start("u1") == epochs.current == 1


def test_untracked_store_ignores_epochs(clock: FakeClock) -> None:
    epochs = Epochs()
    store = _store(clock, tracked=False, epochs=epochs)
    read_started = epochs.current
    epochs.bump("u1")
    assert store.put("u1#A", "u1", "v", 60, read_started) is None
    epochs.bump("u1")
    epochs.drop_all()
    assert store.get("u1#A", "u1") == ("v", None)


def test_drop_all_makes_every_tracked_entry_stale(clock: FakeClock) -> None:
    epochs = Epochs()
    store = _store(clock, tracked=True, epochs=epochs)
    start = epochs.current
    for i in range(5):
        store.put(f"u{i}#A", f"u{i}", i, 60, start)
    epochs.drop_all()
    for i in range(5):
        assert store.get(f"u{i}#A", f"u{i}") == (MISS, "invalidated")
    # reads that started before drop_all cannot fill; reads after it can
    assert store.put("u0#A", "u0", "old", 60, start) == "invalidated"
    assert store.put("u0#A", "u0", "new", 60, epochs.current) is None
    assert store.get("u0#A", "u0") == ("new", None)


def test_bounded_epoch_table_still_invalidates_every_bumped_entity(clock: FakeClock) -> None:
    epochs = Epochs(max_entities=3)
    store = _store(clock, tracked=True, epochs=epochs)
    start = epochs.current
    entities = [f"e{i}" for i in range(5)]
    for e in entities:
        store.put(f"{e}#A", e, e, 60, start)
    for e in entities:
        epochs.bump(e)
    for e in entities:
        assert store.get(f"{e}#A", e) == (MISS, "invalidated"), e
        assert store.put(f"{e}#A", e, "late", 60, start) == "invalidated", e
    # and fills that started after the bumps are kept
    after = epochs.current
    for e in entities:
        assert store.put(f"{e}#A", e, "fresh", 60, after) is None
        assert store.get(f"{e}#A", e) == ("fresh", None)


def test_bounded_epoch_table_stays_bounded(clock: FakeClock) -> None:
    epochs = Epochs(max_entities=3)
    for i in range(1_000):
        epochs.bump(f"e{i}")
        assert len(epochs._by_entity) <= 3
    assert epochs.current == 1_000


def test_epoch_of_unknown_entity_is_floor() -> None:
    epochs = Epochs()
    assert epochs.of("never-bumped") == 0
    epochs.bump("a")
    assert epochs.of("never-bumped") == 0
    assert epochs.of("a") == epochs.current == 1
    epochs.drop_all()
    assert epochs.of("never-bumped") == epochs.floor == epochs.current == 2
    assert epochs.of("a") == 2


# ---------------------------------------------------------------------------------------------
# Thread safety
# ---------------------------------------------------------------------------------------------


def test_concurrent_put_get_bump_raise_nothing_and_stay_bounded() -> None:
    maxsize = 64
    epochs = Epochs(max_entities=16)
    stores = [LocalStore(maxsize, epochs, tracked=t) for t in (True, False)]
    errors: list[BaseException] = []
    oversize: list[int] = []
    start = threading.Barrier(8)

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            start.wait()
            for _ in range(4_000):
                store = stores[rng.randrange(2)]
                entity = f"e{rng.randrange(40)}"
                key = f"{entity}#{rng.randrange(10)}"
                op = rng.random()
                if op < 0.45:
                    ttl = rng.choice((0.001, 60))
                    store.put(key, entity, seed, ttl, epochs.current, rng.choice((0.0, 0.01)))
                elif op < 0.75:
                    value: Any
                    value, reason = store.get(key, entity)
                    assert (value is MISS) == (reason is not None)
                elif op < 0.85:
                    store.get_stale(key, entity)
                elif op < 0.95:
                    epochs.bump(entity)
                elif op < 0.97:
                    epochs.drop_all()
                elif op < 0.99:
                    store.delete(key)
                else:
                    n = len(store)
                    if n > maxsize:
                        oversize.append(n)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible to shake out races
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
    finally:
        sys.setswitchinterval(interval)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert oversize == []
    assert all(len(s) <= maxsize for s in stores)


# -- the byte bound ------------------------------------------------------------------------------


def _sized_store(clock: FakeClock, max_bytes: int, *, tracked: bool = False) -> LocalStore:
    """Sizes by ``len``: an entry of key "a" and value "aaaa" is 5 bytes (keys count too)."""
    return LocalStore(1000, Epochs(), tracked=tracked, timer=clock, max_bytes=max_bytes, sizer=len)


def test_byte_bound_evicts_least_recently_used_until_under_budget(clock: FakeClock) -> None:
    store = _sized_store(clock, max_bytes=10)
    assert store.put("a", "e", "aaaa", 60, 0) is None
    assert store.put("b", "e", "bbbb", 60, 0) is None
    assert store.get("a", "e") == ("aaaa", None)  # "b" is now the least recently used
    assert store.bytes == 10
    assert store.put("c", "e", "cccc", 60, 0) is None  # 15 > 10: "b" goes
    assert store.bytes == 10
    assert store.get("b", "e") == (MISS, "not_found")
    assert store.get("a", "e") == ("aaaa", None)
    assert store.get("c", "e") == ("cccc", None)


def test_byte_bound_refuses_a_value_larger_than_the_budget(clock: FakeClock) -> None:
    store = _sized_store(clock, max_bytes=10)
    assert store.put("a", "e", "aaaa", 60, 0) is None
    assert store.put("huge", "e", "x" * 7, 60, 0) == "too_large"  # 4 + 7 > 10
    assert store.get("a", "e") == ("aaaa", None)  # nothing was evicted for it
    assert store.bytes == 5


def test_byte_accounting_follows_every_removal(clock: FakeClock) -> None:
    epochs = Epochs()
    store = LocalStore(1000, epochs, tracked=True, timer=clock, max_bytes=100, sizer=len)
    store.put("{u1}#A", "{u1}", "12345", 60, epochs.current)
    store.put("{u1}#B", "{u1}", "123", 60, epochs.current)
    store.put("{u2}#A", "{u2}", "12", 60, epochs.current)
    store.put("{u2}#A", "{u2}", "1234", 60, epochs.current)  # replaced: 6 + 2 bytes out, 6 + 4 in
    assert store.bytes == 30
    assert store.drop_entity("{u1}") == 2
    assert store.bytes == 10
    assert store.delete("{u2}#A") is True
    assert store.bytes == 0
    store.put("{u3}#A", "{u3}", "123", 1, epochs.current)
    clock.advance(2)
    assert store.get("{u3}#A", "{u3}") == (MISS, "not_found")  # expired: discarded on lookup
    assert store.bytes == 0
    store.put("{u4}#A", "{u4}", "123", 60, epochs.current)
    store.clear()
    assert store.bytes == 0


def test_pickled_size_measures_values_and_falls_back_for_unpicklable_ones() -> None:
    from gcache.local import pickled_size

    assert pickled_size({"a": 1}) == len(__import__("pickle").dumps({"a": 1}, protocol=5))
    unpicklable = threading.Lock()
    assert pickled_size(unpicklable) == sys.getsizeof(unpicklable)


# -- fail-safe grace -----------------------------------------------------------------------------


def test_grace_entry_is_a_get_miss_but_served_stale_until_kept_until(clock: FakeClock) -> None:
    store = _store(clock)
    assert store.put("k", "e", "v", 10, 0, grace=5) is None
    assert store.get("k", "e") == ("v", None)
    assert store.get_stale("k", "e") == "v"  # fresh entries count too
    clock.advance(10)
    assert store.get("k", "e") == (MISS, "not_found")
    assert store.get("k", "e") == (MISS, "not_found")  # still a miss, and still held
    clock.advance(4.999)
    assert store.get_stale("k", "e") == "v"
    assert len(store) == 1
    clock.advance(0.001)
    assert store.get_stale("k", "e") is MISS
    assert len(store) == 0
    assert len(store._data) == 0  # dropped once seen past kept-until


def test_get_past_kept_until_drops_the_entry(clock: FakeClock) -> None:
    store = _sized_store(clock, max_bytes=100)
    store.put("k", "e", "1234", 10, 0, grace=5)
    clock.advance(12)
    assert store.get("k", "e") == (MISS, "not_found")
    assert store.bytes == 5  # within grace: kept (key and value)
    clock.advance(3)
    assert store.get("k", "e") == (MISS, "not_found")
    assert store.bytes == 0
    assert store.get_stale("k", "e") is MISS


def test_without_grace_nothing_is_kept_past_ttl(clock: FakeClock) -> None:
    store = _store(clock)
    store.put("k", "e", "v", 10, 0)
    assert store.get_stale("k", "e") == "v"
    clock.advance(10)
    assert store.get_stale("k", "e") is MISS
    assert store.get_stale("absent", "e") is MISS
    assert len(store._data) == 0


def test_rewrite_replaces_a_grace_entry_and_its_grace(clock: FakeClock) -> None:
    store = _store(clock)
    store.put("k", "e", "old", 10, 0, grace=100)
    clock.advance(20)
    store.put("k", "e", "new", 10, 0)  # no grace this time
    assert store.get("k", "e") == ("new", None)
    clock.advance(10)
    assert store.get_stale("k", "e") is MISS


def test_get_stale_refuses_an_invalidated_entry(clock: FakeClock) -> None:
    epochs = Epochs()
    store = _store(clock, tracked=True, epochs=epochs)
    store.put("u1#A", "u1", "fresh", 10, epochs.current, grace=60)
    store.put("u1#B", "u1", "in grace", 10, epochs.current, grace=60)
    store.put("u2#A", "u2", "other", 10, epochs.current, grace=60)
    clock.advance(20)
    assert store.get_stale("u1#B", "u1") == "in grace"
    epochs.bump("u1")
    assert store.get_stale("u1#A", "u1") is MISS
    assert store.get_stale("u1#B", "u1") is MISS
    assert store.get_stale("u2#A", "u2") == "other"
    assert set(store._data) == {"u2#A"}  # refused entries are dropped


def test_get_stale_refuses_entries_after_drop_all(clock: FakeClock) -> None:
    epochs = Epochs()
    store = _store(clock, tracked=True, epochs=epochs)
    store.put("u1#A", "u1", "v", 10, epochs.current, grace=60)
    clock.advance(20)
    epochs.drop_all()
    assert store.get("u1#A", "u1") == (MISS, "not_found")  # past TTL; invalidated, so dropped
    assert len(store._data) == 0
    assert store.get_stale("u1#A", "u1") is MISS


def test_get_stale_refuses_tracked_entries_while_distrusted(clock: FakeClock) -> None:
    epochs = Epochs()
    store = _store(clock, tracked=True, epochs=epochs)
    store.put("u1#A", "u1", "v", 10, epochs.current, grace=60)
    clock.advance(20)
    epochs.trusted = False  # the trust check alone, without the drop_all that distrust() does
    assert store.get_stale("u1#A", "u1") is MISS
    epochs.trusted = True
    assert store.get_stale("u1#A", "u1") == "v"


def test_untracked_get_stale_ignores_epochs(clock: FakeClock) -> None:
    epochs = Epochs()
    store = _store(clock, tracked=False, epochs=epochs)
    store.put("u1#A", "u1", "v", 10, epochs.current, grace=60)
    clock.advance(20)
    epochs.bump("u1")
    epochs.trusted = False
    assert store.get_stale("u1#A", "u1") == "v"


def test_get_stale_does_not_refresh_lru_order(clock: FakeClock) -> None:
    store = _store(clock, maxsize=2)
    store.put("a", "e", 1, 60, 0)
    store.put("b", "e", 2, 60, 0)
    assert store.get_stale("a", "e") == 1  # not a use: "a" stays least recently used
    store.put("c", "e", 3, 60, 0)
    assert store.get_stale("a", "e") is MISS
    assert store.get("b", "e") == (2, None)
    assert store.get("c", "e") == (3, None)


def test_grace_entries_count_against_maxsize_and_go_first(clock: FakeClock) -> None:
    store = _store(clock, maxsize=3)
    store.put("a", "e", 1, 10, 0, grace=100)
    store.put("b", "e", 2, 10, 0, grace=100)
    clock.advance(20)  # both now kept only for grace
    store.put("c", "e", 3, 60, 0)
    assert len(store) == 3
    store.put("d", "e", 4, 60, 0)
    assert len(store) == 3
    assert store.get_stale("a", "e") is MISS  # evicted first, as least recently used
    assert store.get_stale("b", "e") == 2
    assert store.get("c", "e") == (3, None)
    assert store.get("d", "e") == (4, None)


def test_grace_entries_count_against_max_bytes(clock: FakeClock) -> None:
    store = _sized_store(clock, max_bytes=10)
    store.put("a", "e", "aaaa", 10, 0, grace=100)
    clock.advance(20)
    store.put("b", "e", "bbbb", 60, 0)
    assert store.bytes == 10
    store.put("c", "e", "cccc", 60, 0)  # 15 > 10: the grace entry goes
    assert store.bytes == 10
    assert store.get_stale("a", "e") is MISS


def test_len_and_clear_count_entries_within_grace(clock: FakeClock) -> None:
    store = _store(clock)
    store.put("fresh", "e", 1, 60, 0)
    store.put("grace", "e", 2, 10, 0, grace=100)
    store.put("gone", "e", 3, 10, 0)
    clock.advance(20)
    assert len(store) == 2
    assert store.clear() == 2
    assert len(store) == 0
    assert store.get_stale("grace", "e") is MISS


def test_drop_entity_removes_entries_in_grace(clock: FakeClock) -> None:
    epochs = Epochs()
    store = _store(clock, tracked=True, epochs=epochs)
    store.put("u1#A", "u1", "v", 10, epochs.current, grace=60)
    clock.advance(20)
    assert store.drop_entity("u1") == 1
    assert store.get_stale("u1#A", "u1") is MISS


# -- the entity index ----------------------------------------------------------------------------


def _indexed(store: LocalStore, entity: str) -> set[str]:
    keys = store._entities.get(entity, set())
    return {keys} if isinstance(keys, str) else set(keys)


def _index_entry(store: LocalStore, entity: str) -> str | set[str]:
    """What the entity index holds for an entity, as held: its lone key, or a set of keys."""
    return store._entities[entity]


def test_entity_index_holds_a_lone_key_as_a_string_then_a_set(clock: FakeClock) -> None:
    epochs = Epochs()
    store = _store(clock, tracked=True, epochs=epochs)
    store.put("u1#A", "u1", 1, 60, epochs.current)
    assert _index_entry(store, "u1") == "u1#A"
    store.put("u1#A", "u1", 2, 60, epochs.current)  # the same key again: still one
    assert _index_entry(store, "u1") == "u1#A"
    store.put("u1#B", "u1", 3, 60, epochs.current)
    assert _index_entry(store, "u1") == {"u1#A", "u1#B"}
    store.put("u1#C", "u1", 4, 60, epochs.current)
    assert _index_entry(store, "u1") == {"u1#A", "u1#B", "u1#C"}


def test_drop_entity_removes_every_key_of_the_entity(clock: FakeClock) -> None:
    epochs = Epochs()
    store = _store(clock, tracked=True, epochs=epochs)
    store.put("u1#A", "u1", 1, 60, epochs.current)
    store.put("u1#B", "u1", 2, 60, epochs.current)
    store.put("u2#A", "u2", 3, 60, epochs.current)
    assert store.drop_entity("u1") == 2
    assert store.get("u1#A", "u1") == (MISS, "not_found")
    assert store.get("u1#B", "u1") == (MISS, "not_found")
    assert store.drop_entity("u2") == 1  # a lone key, held as a string
    assert store.get("u2#A", "u2") == (MISS, "not_found")
    assert store.drop_entity("u2") == 0
    assert store._entities == {}
    assert len(store) == 0


def test_entity_index_stays_bounded_and_right_when_rebuilt(clock: FakeClock) -> None:
    epochs = Epochs()
    maxsize = 4
    store = _store(clock, maxsize=maxsize, tracked=True, epochs=epochs)
    for i in range(50):
        store.put("multi#1", "multi", i, 60, epochs.current)  # kept recent, so held throughout
        store.put("multi#2", "multi", i, 60, epochs.current)
        store.put(f"e{i}#A", f"e{i}", i, 60, epochs.current)
        assert len(store._entities) <= 2 * maxsize
        for key, entry in store._data.items():
            assert key in _indexed(store, entry[3]), key
    assert _index_entry(store, "multi") == {"multi#1", "multi#2"}  # a set survives the rebuild
    assert _index_entry(store, "e49") == "e49#A"
    assert "e0" not in store._entities  # long evicted, and the rebuild forgot it
    assert store.drop_entity("multi") == 2
    assert store.drop_entity("e49") == 1
    assert set(store._data) == {"e48#A"}


# -- the byte bound, through a GCache ------------------------------------------------------------

BOTH = GCacheKeyConfig.enabled(60)


async def test_local_byte_bound_keeps_small_values_and_serves_large_ones_uncached_locally(
    registry: CollectorRegistry,
) -> None:
    cache = GCache(GCacheConfig(local_max_bytes=2_000, metrics_registry=registry))
    calls: list[int] = []

    @cache.cached(key_type="blob_id", id_arg="size", use_case="Blob", default_config=BOTH)
    async def blob(size: int) -> bytes:
        calls.append(size)
        return b"x" * size

    try:
        with cache.enable():
            assert await blob(100) == b"x" * 100
            assert await blob(100) == b"x" * 100
            assert await blob(5_000) == b"x" * 5_000
            assert await blob(5_000) == b"x" * 5_000  # too large for LOCAL: computed again
        assert calls == [100, 5_000, 5_000]
        written = "gcache_write_counter_total"
        assert sample(registry, written, use_case="Blob", layer="LOCAL", result="too_large") == 2
        assert sample(registry, written, use_case="Blob", layer="LOCAL", result="stored") == 1
    finally:
        await cache.aclose()


def test_local_max_bytes_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="local_max_bytes"):
        GCacheConfig(local_max_bytes=0)


def test_a_full_table_of_future_buffers_holds_every_entity_out_instead_of_sweeping_each_time(
    clock: FakeClock,
) -> None:
    """A flood of buffered invalidations (forged on the bus, say) must not make each later one
    sweep the whole table: past the bound every entity is held out until the last buffer ends."""
    epochs = Epochs(max_entities=100, timer=clock)
    for i in range(250):
        epochs.bump(f"{{e:{i}}}", buffer_sec=10.0)
        assert len(epochs._buffered) <= 100

    assert epochs.start("{e:0}") == -1  # buffered before the table filled
    assert epochs.start("{e:249}") == -1
    assert epochs.start("{never-invalidated}") == -1  # held out with the rest, conservatively
    clock.advance(10.01)
    assert epochs.start("{never-invalidated}") == epochs.current
    assert epochs.start("{e:249}") == epochs.current


def test_local_max_bytes_counts_keys_so_long_ids_cannot_outgrow_the_budget(clock: FakeClock) -> None:
    """300 one-MiB keys once held 604 MB under a 64 KiB budget: only values were counted."""
    store = LocalStore(1_000, Epochs(), tracked=False, timer=clock, max_bytes=64 * 1024)
    for i in range(300):
        assert store.put(f"{{k:{i}}}" + "x" * 1024, "{k}", "v", 60, 0) is None  # 1 KiB keys fit
    assert store.bytes <= 64 * 1024
    assert len(store) < 64  # about 62 one-KiB keys, not 300
    assert store.put("{k:huge}" + "x" * (1 << 20), "{k}", "v", 60, 0) == "too_large"
    assert store.bytes <= 64 * 1024
