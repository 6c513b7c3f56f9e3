"""A private event loop on a daemon thread, for coroutines a sync caller has to run.

Used only when there is no sync alternative (an async config provider or serializer, or a
``redis_client_factory`` that returns asyncio clients): it costs one thread hop per use.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from gcache import _fork

__all__ = ["LoopThread"]

T = TypeVar("T")


class LoopThread:
    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def _start(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name=self._name, daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def after_fork_in_child(self) -> None:
        """Forget the parent's loop: its thread does not exist here, and its selector is shared
        with the parent (closing it would unregister the parent's sockets). A new one starts
        on first use."""
        _fork.leave_untouched(self._loop)
        self._lock = threading.Lock()
        self._loop = self._thread = None

    def owns(self, loop: asyncio.AbstractEventLoop) -> bool:
        return loop is self._loop

    def in_thread(self) -> bool:
        return self._thread is not None and threading.current_thread() is self._thread

    def run(self, make: Callable[[], Awaitable[T]]) -> T:
        """Run ``make()`` on the loop thread and wait for its result.

        Raises:
            RuntimeError: called from the loop thread itself, where waiting would deadlock.
        """
        if self.in_thread():
            raise RuntimeError(f"{self._name}: a sync gcache call cannot wait on its own loop thread")
        loop = self._loop or self._start()

        async def runner() -> T:
            return await make()

        return asyncio.run_coroutine_threadsafe(runner(), loop).result()

    def submit(self, make: Callable[[], Coroutine[Any, Any, T]]) -> concurrent.futures.Future[T]:
        """Start ``make()`` on the loop thread without waiting for it."""
        loop = self._loop or self._start()
        return asyncio.run_coroutine_threadsafe(make(), loop)

    def stop(self) -> None:
        """Cancel what still runs there (a breaker's probe, say), wait for it briefly, then stop."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        if thread is not threading.current_thread() and loop.is_running():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(_cancel_others(), loop).result(timeout=2)
        loop.call_soon_threadsafe(loop.stop)
        if thread is not threading.current_thread():
            thread.join(timeout=5)
        if not loop.is_running():
            loop.close()


async def _cancel_others() -> None:
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=1)
