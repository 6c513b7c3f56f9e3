"""What the sync and async drivers do differently by nature, written twice by hand.

Everything else in the drivers is generated (see :mod:`gcache.readthrough._async`); the
generator maps each ``a``-prefixed name here to its twin without the prefix.
"""

from __future__ import annotations

import asyncio
import contextvars
from asyncio import _get_running_loop
from collections.abc import Awaitable, Callable
from time import monotonic as _monotonic
from typing import Any

from gcache.readthrough.sharing import Sharing

__all__ = ["AsyncIO", "SyncIO"]


class AsyncIO(Sharing):
    def awork_aside(self, work: Callable[..., Awaitable[None]], *args: Any) -> None:
        """The leader's work outliving a soft timeout: a task of its own, kept referenced."""
        task = asyncio.ensure_future(work(*args))
        self.rt.background.add(task)
        task.add_done_callback(self.rt.background.discard)

    async def aload_async_codec(self, payload: bytes, flags: int) -> Any:
        return await self.codec.aload(payload, flags)

    async def adump_async_codec(self, value: Any) -> tuple[bytes, int]:
        return await self.codec.adump(value)

    async def aprovider_answer(self, answer: Awaitable[Any]) -> Any:
        return await answer

    def anote_blocking(self) -> None:
        """An async call past LOCAL awaits its I/O: nothing to tell."""


class SyncIO(Sharing):
    def work_aside(self, work: Callable[..., None], *args: Any) -> None:
        """The leader's work outliving a soft timeout: on a worker thread, in this context."""
        context = contextvars.copy_context()
        self.rt.workers().submit(context.run, work, *args)

    def load_async_codec(self, payload: bytes, flags: int) -> Any:
        """An async serializer from sync code: on the loop thread."""
        return self.rt.loop_thread.run(lambda: self.codec.aload(payload, flags))

    def dump_async_codec(self, value: Any) -> tuple[bytes, int]:
        return self.rt.loop_thread.run(lambda: self.codec.adump(value))

    def provider_answer(self, answer: Awaitable[Any]) -> Any:
        """An async config provider's answer from sync code: awaited on the loop thread."""
        return self.rt.loop_thread.run(lambda: answer)

    def note_blocking(self) -> None:
        """A sync call past LOCAL (Redis, the function) on a thread running an event loop blocks
        that loop for as long: told, rate-limited, as the original library told it. Between two
        tellings such a call costs a clock read, not a trip through logging."""
        if _get_running_loop() is not None:
            now = _monotonic()
            if now >= self.blocking_quiet_until:
                self.blocking_quiet_until = now + self.rt.errors.interval
                self.blocking_in_loop()
