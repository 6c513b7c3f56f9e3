"""The README's FastAPI patterns on a real uvicorn server (issue 19): ``CacheMiddleware`` and an
async generator dependency cache, for sync and async endpoints; a sync generator dependency
(``def dep(): with gcache.enable(): yield``), which FastAPI enters and exits in different
thread-pool contexts, neither caches nor crashes, and says so once in a WARNING."""

from __future__ import annotations

import os
import sys
from typing import Any

import pytest

from gcache._embedded_redis import free_port
from tests.web._running import Running

CALLS = 3


@pytest.fixture(scope="module")
def served(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The app's answers after every route was requested ``CALLS`` times, its runs, and its log."""
    port = free_port()
    env = {**os.environ, "REDIS_URL": redis_url, "GCACHE_SIGNING_KEYS": "patterns-signing-key-0123456789"}
    command = [sys.executable, "-m", "uvicorn", "tests.web._fastapi_patterns_app:app",
               "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    log = tmp_path_factory.mktemp("patterns") / "uvicorn.log"
    server = Running(command, env, log, port, ready="/runs", ready_status=200)
    answers: dict[str, Any] = {}
    try:
        for path in PATHS:
            replies = [server.client.get(path) for _ in range(CALLS)]
            assert [r.status_code for r in replies] == [200] * CALLS, (path, server.log_path.read_text())
            answers[path] = [r.json() for r in replies]
        answers["runs"] = server.client.get("/runs").json()
    finally:
        answers["log"] = server.stop()
    return answers


WORKING = ["/middleware/sync", "/middleware/async", "/async-dependency/sync", "/async-dependency/async",
           "/middleware/sync-dependency/sync"]  # fmt: skip
BROKEN = ["/sync-dependency/sync", "/sync-dependency/async"]
PATHS = WORKING + BROKEN


def run_key(path: str) -> str:
    """The ``runs`` key of a route: its pattern and the kind of function it calls."""
    pattern, kind = path.lstrip("/").rsplit("/", 1)
    return f"{pattern.replace('/', '+')}/{kind}"


@pytest.mark.parametrize("path", WORKING)
def test_the_middleware_and_an_async_dependency_cache(path: str, served: dict[str, Any]) -> None:
    answers = served
    assert answers[path] == [{"name": "user-1", "on": True}] * CALLS
    assert answers["runs"][run_key(path)] == 1  # computed once, then served from the cache


@pytest.mark.parametrize("path", BROKEN)
def test_a_sync_generator_dependency_does_not_cache_and_says_so(path: str, served: dict[str, Any]) -> None:
    answers = served
    assert answers[path] == [{"name": "user-1", "on": False}] * CALLS
    assert answers["runs"][run_key(path)] == CALLS  # every call ran the function


def test_the_sync_dependency_warning_is_logged_once_and_nothing_crashed(
    served: dict[str, Any],
) -> None:
    answers = served
    log: str = answers["log"]
    told = [line for line in log.splitlines() if "left in another context" in line]
    assert len(told) == 1, log
    assert told[0].startswith("WARNING gcache ")
    assert "def dep(): with gcache.enable(): yield" in told[0]
    assert "CacheMiddleware" in told[0]
    for crash in ("Traceback", "ValueError", "Exception in ASGI application"):
        assert crash not in log, log
