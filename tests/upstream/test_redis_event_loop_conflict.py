"""The original's ``tests/test_redis_event_loop_conflict.py``, rewritten (see README.md): one cache
used from several event loops, each in its own thread, as several web-server workers would."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest
from prometheus_client import CollectorRegistry

from gcache import GCache, GCacheConfig, GCacheKeyConfig
from tests.upstream.conftest import FakeCacheConfigProvider, cache_options

T = TypeVar("T")


class LoopThread:
    """An event loop running in a thread of its own (like a FastAPI worker's)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "the loop thread did not start"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture
def loops() -> Iterator[list[LoopThread]]:
    threads = [LoopThread() for _ in range(3)]
    yield threads
    for thread in threads:
        thread.stop()


def test_multi_loop_concurrent_access(
    loops: list[LoopThread], redis_url: str, registry: CollectorRegistry, provider: FakeCacheConfigProvider
) -> None:
    """tests/test_redis_event_loop_conflict.py::test_multi_loop_concurrent_access (one more check
    than the original: each loop's invalidation reaches the entry another loop cached)"""
    calls: list[str] = []
    with GCache(GCacheConfig(**cache_options(redis_url, registry, provider))) as cache:

        @cache.cached(
            key_type="ConcurrentTest",
            id_arg="id",
            track_for_invalidation=True,
            default_config=GCacheKeyConfig.enabled(60),
        )
        def cached_func(id: str) -> int:
            calls.append(id)
            return 42

        async def do_redis_operations(loop_id: int) -> str:
            with cache.enable():
                assert cached_func(id=f"test-{loop_id}") == 42
            cache.invalidate("ConcurrentTest", f"test-{loop_id}")
            await cache.ainvalidate("ConcurrentTest", f"test-{loop_id}")
            with cache.enable():
                assert cached_func(id="shared-key") == 42
                assert cached_func(id=f"test-{loop_id}") == 42  # invalidated: computed again
            return f"success-{loop_id}"

        results = [loop.run(do_redis_operations(i)) for i, loop in enumerate(loops)]
    assert results == ["success-0", "success-1", "success-2"]
    assert calls.count("shared-key") == 1  # cached by the first loop, served to the others
    for i in range(3):
        assert calls.count(f"test-{i}") == 2
