"""The original's ``tests/test_event_loop_thread.py``, rewritten (see README.md).

The original tested its private ``EventLoopThread``/``EventLoopThreadPool``, on which it ran
every cached call: many coroutines at once, the caller's context variables seen inside, and
blocking sync work in parallel. We have no such public class; the same three promises are
tested where a caller meets them, through cached functions on the real Redis. Concurrency is
shown with a barrier the calls must all reach together, not with elapsed time: calls run one
after another never get past it.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest

from gcache import GCache
from tests.test_gcache import call, twin

CONCURRENT_CALLS = 10_000  # as the original
BLOCKING_THREADS = 100  # as the original's pool of 100 threads


@pytest.mark.slow
async def test_concurrent(acache: GCache) -> None:
    """tests/test_event_loop_thread.py::test_concurrent: 10,000 cached calls in flight at once
    (each a miss through LOCAL and REMOTE), every one waiting until all have started."""
    started = 0
    all_started = asyncio.Event()

    @acache.cached(key_type="Test", id_arg="test", use_case="concurrent")
    async def heavy_work(test: int) -> int:
        nonlocal started
        started += 1
        if started == CONCURRENT_CALLS:
            all_started.set()
        await all_started.wait()
        return test

    with acache.enable():
        results = await asyncio.wait_for(
            asyncio.gather(*(heavy_work(i) for i in range(CONCURRENT_CALLS))), timeout=60
        )
    assert results == list(range(CONCURRENT_CALLS))


CONTEXT_VAR: contextvars.ContextVar[int] = contextvars.ContextVar("test_var", default=0)


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_propogate_context(acache: GCache, mode: str) -> None:
    """tests/test_event_loop_thread.py::test_propogate_context (the original's spelling): the
    function behind a cached call, sync or async, sees the caller's context variables."""

    def readout_context(test: int) -> int:
        return CONTEXT_VAR.get()

    cached = acache.cached(key_type="Test", id_arg="test", use_case=f"context_{mode}")(
        twin(mode, readout_context)
    )
    token = CONTEXT_VAR.set(1337)
    try:
        with acache.enable():
            assert await call(cached, 1) == 1337  # a miss: the function ran
    finally:
        CONTEXT_VAR.reset(token)


def test_blocking_sync(cache: GCache) -> None:
    """tests/test_event_loop_thread.py::test_blocking_sync: 100 sync cached calls that block
    (on a barrier of 100) all run at once, each in its caller's thread."""
    barrier = threading.Barrier(BLOCKING_THREADS, timeout=10)
    errors: list[BaseException] = []

    @cache.cached(key_type="Test", id_arg="test", use_case="blocking")
    def heavy_work(test: int) -> int:
        barrier.wait()  # blocks the thread, as the original's time.sleep did
        return test

    def caller(test: int) -> None:
        try:
            with cache.enable():
                assert heavy_work(test) == test
        except BaseException as exc:
            errors.append(exc)

    threads: list[threading.Thread] = [
        threading.Thread(target=caller, args=(i,)) for i in range(BLOCKING_THREADS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
