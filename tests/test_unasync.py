"""The generated sync driver: current with its async source, and generated as the table says."""

from __future__ import annotations

from pathlib import Path

import pytest

from gcache import _unasync

SNIPPET = '''"""An async driver."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from gcache.readthrough._primitives import AsyncIO


class AsyncDriver(AsyncIO):
    async def aread_through(self, func: Callable[..., Awaitable[Any]]) -> Any:
        owner = asyncio.current_task()
        m = self.miss(owner, shared_read=True)
        await asyncio.sleep(0.01)
        if not await flight.await_done(1.0):
            return await self.aremote_read(m)
        return await func()
'''


def test_the_checked_in_sync_driver_is_what_the_async_one_generates() -> None:
    assert _unasync.TARGET.read_text() == _unasync.generate(_unasync.SOURCE.read_text()), (
        "gcache/readthrough/_sync.py is stale: run `python -m gcache._unasync`"
    )
    assert _unasync.main(["--check"]) == 0


def test_the_rewrite_drops_await_renames_twins_and_swaps_what_differs() -> None:
    generated = _unasync.generate(SNIPPET)

    assert generated.startswith(_unasync.HEADER)
    body = generated.split("class ", 1)[1]
    assert body == (
        "SyncDriver(SyncIO):\n"
        "    def read_through(self, func: Callable[..., Any]) -> Any:\n"
        "        owner = threading.get_ident()\n"
        "        m = self.miss(owner, shared_read=False)\n"
        "        time.sleep(0.01)\n"
        "        if not flight.wait(1.0):\n"
        "            return self.remote_read(m)\n"
        "        return func()\n"
    )
    assert "import threading\nimport time\n" in generated
    assert "from gcache.readthrough._primitives import SyncIO\n" in generated
    assert "asyncio" not in generated
    assert "Awaitable" not in generated


def test_check_fails_when_the_sync_driver_was_edited_by_hand(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    edited = tmp_path / "_sync.py"
    edited.write_text(_unasync.TARGET.read_text() + "# a hand edit\n")
    monkeypatch.setattr(_unasync, "TARGET", edited)

    assert _unasync.main(["--check"]) == 1
    assert "python -m gcache._unasync" in capsys.readouterr().out

    assert _unasync.main([]) == 0  # regenerates it
    assert _unasync.main(["--check"]) == 0
    assert "# a hand edit" not in edited.read_text()
