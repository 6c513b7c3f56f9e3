"""gcache's logs under real servers (issue 19): the README's ``LOG_CONFIG`` given to uvicorn (as
``log_config`` and as a ``--log-config`` JSON file) and to gunicorn (``logconfig_dict``, uvicorn
workers), an app whose Redis refuses connections, sync and async cached functions. Each fail-open
WARNING comes out through the configured handler: one line, with its time and level, no
traceback."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

from gcache._embedded_redis import free_port
from tests.behaviour.test_fail_open import refused_url
from tests.test_readme import BLOCKS
from tests.web._running import ROOT, Running

(RECIPE,) = [block.code for block in BLOCKS if block.code.startswith("LOG_CONFIG = {")]
LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING \[gcache\] gcache: remote read failed for use case "
    r"'(Sync|Async)Logged' \(REMOTE\): ConnectionError: Error 111 connecting to 127\.0\.0\.1:\d+\. .*"
    r"\(from ConnectionRefusedError: \[Errno 111\] .*\); served uncached$"  # the cause's summary too
)


def command(server: str, port: int, recipe_dir: Path) -> list[str]:
    """The server's command line, its logging configured by the README's recipe in ``recipe_dir``."""
    app = "tests.web._logging_app:app"
    if server == "uvicorn.run":
        program = (
            "import uvicorn\nfrom log_config import LOG_CONFIG\n"
            f"uvicorn.run({app!r}, host='127.0.0.1', port={port}, log_config=LOG_CONFIG)\n"
        )
        return [sys.executable, "-c", program]
    if server == "uvicorn --log-config":
        namespace: dict[str, object] = {}
        exec(RECIPE, namespace)
        (recipe_dir / "log_config.json").write_text(json.dumps(namespace["LOG_CONFIG"]))
        return [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port),
                "--log-config", str(recipe_dir / "log_config.json")]  # fmt: skip
    conf = recipe_dir / "gunicorn.conf.py"
    conf.write_text("from log_config import LOG_CONFIG\nlogconfig_dict = LOG_CONFIG\n")
    return [sys.executable, "-m", "gunicorn", "-c", str(conf), "--bind",
            f"127.0.0.1:{port}", "-w", "1", "-k", "uvicorn_worker.UvicornWorker", app]  # fmt: skip


@pytest.mark.parametrize("server", ["uvicorn.run", "uvicorn --log-config", "gunicorn"])
def test_a_fail_open_warning_is_one_line_with_time_and_level(server: str, tmp_path: Path) -> None:
    (tmp_path / "log_config.py").write_text(RECIPE)
    port = free_port()
    path = os.pathsep.join([str(tmp_path), str(ROOT)])
    env = {**os.environ, "REDIS_URL": refused_url(), "PYTHONPATH": path}
    running = Running(command(server, port, tmp_path), env, tmp_path / "server.log", port,
                      ready="/sync/0", ready_status=200)  # fmt: skip
    try:
        for path in ("/sync/1", "/async/1"):
            reply = running.client.get(path)
            assert (reply.status_code, reply.json()) == (200, "user-1")  # served uncached
    finally:
        log = running.stop()
    told = [LINE.match(line) for line in log.splitlines() if "remote read failed" in line]
    assert all(told), log
    assert {match.group(1) for match in told if match} == {"Sync", "Async"}, log
    assert "Traceback" not in log, log
    assert "Started server process" in log or "Booting worker" in log, log  # the server's own lines too
