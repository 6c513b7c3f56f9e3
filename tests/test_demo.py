"""``python -m gcache demo`` as a user runs it: a subprocess, its printed output, its /metrics.

The demo is the first thing a newcomer runs (``make demo``), so these tests hold it to what it
promises: exit code 0, a table whose numbers add up, an invalidation that shows the new value,
a /metrics URL that serves gcache metrics while it runs, and a clean stop on SIGTERM.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from types import TracebackType

import pytest

from gcache._embedded_redis import free_port

pytestmark = pytest.mark.redis

USE_CASES = ("GetUser", "GetOrders", "GetExchangeRate")
HEADER = re.compile(r"use case\s+calls\s+LOCAL hits\s+REMOTE hits\s+shared\s+function calls\s+avoided")
METRICS_URL = re.compile(r"Metrics\s+(http://127\.0\.0\.1:(\d+)/metrics)")
EMBEDDED_REDIS = re.compile(r"started a private redis-server, redis://gcache:\*\*\*@127\.0\.0\.1:(\d+)/0")


def demo_env() -> dict[str, str]:
    """The environment of a user's shell; GCACHE_TEST_REDIS_URL, when set, becomes REDIS_URL."""
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    external = os.environ.get("GCACHE_TEST_REDIS_URL")
    if external:
        env["REDIS_URL"] = external
    return env


def run_gcache(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gcache", *args],
        capture_output=True,
        text=True,
        env=demo_env(),
        timeout=timeout,
        check=False,
    )


def cell(text: str) -> int | None:
    return None if text == "-" else int(text.replace(",", ""))


def seconds(text: str) -> float | None:
    """A latency cell ("9 µs", "2.7 ms", "1.05 s", "-") in seconds."""
    if text == "-":
        return None
    value, unit = text.split()
    return float(value) * {"µs": 1e-6, "ms": 1e-3, "s": 1.0}[unit]


def table_rows(output: str) -> dict[str, list[str]]:
    """The results table's lines by use case name (and 'total'), as lists of cells."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if HEADER.search(line))
    rows: dict[str, list[str]] = {}
    for line in lines[start + 1 :]:
        cells = re.split(r"\s{2,}", line.strip())
        if not cells[0].startswith("-"):
            rows[cells[0]] = cells
        if cells[0] == "total":
            break
    return rows


def answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class DemoProcess:
    """``python -u -m gcache demo ...`` in the background, its stdout read line by line as it streams."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.stderr_path = tmp_path / "demo.stderr"
        self._stderr = self.stderr_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-m", "gcache", "demo", *args],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=demo_env(),
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: re.Pattern[str], timeout: float = 30) -> re.Match[str]:
        """Read lines until one matches; fails on timeout or when the demo ends first."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"no line matching {pattern.pattern!r} within {timeout}s:\n" + self.output)
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                pytest.fail(f"the demo ended before printing {pattern.pattern!r}:\n" + self.output)
            self.lines.append(line)
            found = pattern.search(line)
            if found:
                return found

    def finish(self, timeout: float = 30) -> int:
        """Wait for the exit code, then collect the rest of stdout."""
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        while True:
            line = self._queue.get_nowait() if not self._queue.empty() else None
            if line is None:
                break
            self.lines.append(line)
        return code

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def __enter__(self) -> DemoProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.proc.poll() is None:  # a failed test: stop it the way a user would, then for good
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._reader.join(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


def test_demo_prints_a_table_that_adds_up_and_shows_the_invalidated_value() -> None:
    result = run_gcache("demo")
    out = result.stdout

    assert result.returncode == 0, out + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    if not os.environ.get("GCACHE_TEST_REDIS_URL"):
        assert EMBEDDED_REDIS.search(out), out
        assert "redis-server stopped." in out
    assert METRICS_URL.search(out), out
    assert "Signing  entries and bus messages signed with a key made for this run" in out, out
    assert "stores pickles in Redis unsigned" not in out + result.stderr  # signed: no such warning

    # The update, then ainvalidate: the stale copy before, the new value after.
    assert "before ainvalidate: get_user(1).plan == 'free'" in out, out
    assert "after  ainvalidate: get_user(1).plan == 'pro'  (old value 'free', new value 'pro')" in out, out

    rows = table_rows(out)
    assert set(rows) == {*USE_CASES, "total"}, out
    for name in USE_CASES:
        calls, local, remote, shared, function = (cell(c) for c in rows[name][1:6])
        assert calls is not None
        assert function is not None
        assert shared is not None
        # every call was a hit, ran the function, or shared a concurrent call's run (single flight)
        assert calls == (local or 0) + (remote or 0) + shared + function, rows[name]
        assert function < calls, rows[name]  # the cache avoided some function calls
        assert rows[name][6].endswith("%")
    user = [cell(c) for c in rows["GetUser"][1:5]]
    assert user[1], rows["GetUser"]  # LOCAL hits
    assert user[2], rows["GetUser"]  # REMOTE hits: users that LOCAL's 8 entries could not hold
    assert cell(rows["GetOrders"][2]) is None  # REMOTE only
    assert cell(rows["GetExchangeRate"][3]) is None  # LOCAL only
    assert cell(rows["total"][1]) == 300 + 3  # the traffic, plus the invalidation step's reads
    for name in USE_CASES:
        latencies = [seconds(c) for c in rows[name][7:10]]
        assert latencies[2] is not None
        assert latencies[2] >= 0.020, rows[name]  # a miss includes the source's 20 ms read
        assert all(t is None or 0 < t <= latencies[2] for t in latencies), rows[name]

    # The key format, seen once.
    assert "{urn:gcache-demo:user_id:1}#GetUser" in out
    assert "{urn:gcache-demo:user_id:1}?status=open#GetOrders" in out
    assert "{urn:gcache-demo:user_id:1}#watermark" in out


def test_serve_exposes_gcache_metrics_while_it_runs_and_stops_after_duration(tmp_path: Path) -> None:
    port = free_port()
    with DemoProcess(tmp_path, "--serve", "--duration", "2", "--calls", "60", "--port", str(port)) as demo:
        url, printed_port = demo.wait_for(METRICS_URL).groups()
        assert int(printed_port) == port
        demo.wait_for(re.compile(r"^Serving http://"))

        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200
            body = response.read().decode()
        requests = re.findall(
            r'^gcache_request_counter_total\{[^}]*use_case="GetUser"[^}]*\} (\S+)$', body, re.MULTILINE
        )
        assert sum(float(v) for v in requests) > 0, body[:2000]
        for name in ("gcache_miss_counter_total", "gcache_get_timer_bucket", "gcache_fallback_timer_count"):
            assert f"\n{name}{{" in body, name

        assert demo.finish() == 0, demo.output + demo.stderr
        assert "Stopped after" in demo.output
        assert "Traceback" not in demo.stderr, demo.stderr
        assert not answers(port)  # /metrics is closed with the demo


def test_sigterm_stops_serve_with_exit_code_0_and_stops_the_embedded_redis(tmp_path: Path) -> None:
    with DemoProcess(tmp_path, "--serve", "--calls", "30") as demo:
        embedded = None if os.environ.get("GCACHE_TEST_REDIS_URL") else demo.wait_for(EMBEDDED_REDIS)
        demo.wait_for(re.compile(r"^Serving http://"))
        demo.proc.send_signal(signal.SIGTERM)

        assert demo.finish() == 0, demo.output + demo.stderr
        assert "Stopped after" in demo.output
        assert "Traceback" not in demo.stderr, demo.stderr
        if embedded is not None:
            assert not answers(int(embedded.group(1)))


def test_no_command_prints_help_and_exits_2() -> None:
    result = run_gcache()
    assert result.returncode == 2
    assert "usage:" in result.stderr
    assert "demo" in result.stderr


def test_help_lists_the_demo_options() -> None:
    result = run_gcache("demo", "--help")
    assert result.returncode == 0
    for option in ("--serve", "--port", "--calls", "--duration"):
        assert option in result.stdout


def test_duration_without_serve_is_a_usage_error() -> None:
    result = run_gcache("demo", "--duration", "1")
    assert result.returncode == 2
    assert "--duration needs --serve" in result.stderr
