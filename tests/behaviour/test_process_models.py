"""Real process managers: gunicorn (uvicorn and sync workers, with and without ``--preload``).

Each test starts gunicorn on a free loopback port with 4 workers serving ``tests/behaviour/_service_app.py``
against the suite's private Redis, as a user deploys a service. After a write (PUT) returns,
every worker must serve the new value: LOCAL held the old one in every worker (their LOCAL hits
are checked first), so only the invalidation bus can have told them. Under ``--preload`` the
master has subscribed, connected and cached before it forks (``GCACHE_APP_WARM=1``): a worker
that kept its parent's bus identity would ignore its siblings' invalidations as its own echo.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis

from gcache._embedded_redis import free_port
from gcache.exposition import MULTIPROC_DIR_ENV

pytestmark = [pytest.mark.redis, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
WORKERS = 4


class Server:
    """One gunicorn master and its workers; its log is kept for the assertions and for failures."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.log_path = log
        self._log = open(log, "w")  # noqa: SIM115 (closed in stop())
        command = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{self.port}", *args]
        self.proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def get(self, path: str, method: str = "GET") -> dict[str, Any]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method)
        with urllib.request.urlopen(request, timeout=10) as answer:  # a new connection each time
            body: dict[str, Any] = json.loads(answer.read())
            return body

    def get_many(self, path: str, n: int) -> list[dict[str, Any]]:
        """``n`` requests from 8 threads at once, so that every worker takes some; each answer
        also says when its request was sent (``sent``, monotonic)."""

        def sent_and_answered(_: int) -> dict[str, Any]:
            sent = time.monotonic()
            return {**self.get(path), "sent": sent}

        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(sent_and_answered, range(n)))

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"gunicorn exited with {self.proc.returncode}:\n{self.log}")
            try:
                self.get("/health")
            except OSError:
                time.sleep(0.1)
                continue
            if len(self.workers()) == WORKERS:
                return
            time.sleep(0.1)
        raise AssertionError(f"gunicorn did not come up with {WORKERS} workers:\n{self.log}")

    def workers(self) -> set[int]:
        """The pids of the master's live children (read from /proc)."""
        children = set()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.proc.pid and fields[0] != "Z":
                children.add(int(stat.parent.name))
        return children

    def healths(self, timeout: float = 20.0) -> dict[int, dict[str, Any]]:
        """The /health of every worker, asked until each has answered."""
        seen: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        while len(seen) < WORKERS:
            if time.monotonic() > deadline:
                raise AssertionError(f"only workers {sorted(seen)} answered /health:\n{self.log}")
            for health in self.get_many("/health", 16):
                seen[health["pid"]] = health
        return seen

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@pytest.fixture
def serve(redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> Iterator[Any]:
    servers: list[Server] = []

    def start(*args: str, warm: bool = False, **env: str) -> Server:
        environ = {k: v for k, v in os.environ.items() if k != MULTIPROC_DIR_ENV}
        environ.update(GCACHE_APP_REDIS_URL=redis_url, GCACHE_APP_WARM="1" if warm else "0", **env)
        server = Server(list(args), environ, tmp_path / f"gunicorn-{len(servers)}.log")
        servers.append(server)
        server.wait_ready()
        return server

    yield start
    for server in servers:
        server.stop()


BUS_LAG_ALLOWANCE_SEC = 0.25  # the bus's lag is about a millisecond; a loaded CI machine's, more


def every_worker_serves_each_write(server: Server, redis_client: redis.Redis, rounds: int = 3) -> None:
    """Warm every worker's LOCAL; after each PUT returns, no worker serves the old value past the
    bus's lag (a read sent within it may still get its LOCAL copy, as the README says)."""
    redis_client.set("post:7", "v0")
    deadline = time.monotonic() + 30
    while True:  # until every worker's bus is up and it has served the post from LOCAL
        server.get_many("/posts/7", 32)
        healths = server.healths()
        if all(h["bus_subscribed"] and h["local_hits"] >= 2 for h in healths.values()):
            break
        assert time.monotonic() < deadline, f"workers never all served from LOCAL: {healths}\n{server.log}"
    for round in range(1, rounds + 1):
        value = f"v{round}"
        server.get(f"/posts/7?value={value}", method="PUT")
        returned = time.monotonic()
        reads = server.get_many("/posts/7", 320)
        # Other workers drop their LOCAL copy when the invalidation reaches them over the bus
        # (README, Invalidation: milliseconds); a read sent within that lag may still get it.
        late = [r for r in reads if r["value"] != value and r["sent"] - returned > BUS_LAG_ALLOWANCE_SEC]
        assert late == [], f"round {round}: {len(late)} of {len(reads)} reads stale past the bus lag"
        time.sleep(max(0.0, returned + BUS_LAG_ALLOWANCE_SEC - time.monotonic()))
        again = server.get_many("/posts/7", 320)
        stale = [r for r in again if r["value"] != value]
        assert stale == [], f"round {round}: {len(stale)} of {len(again)} reads stale after the bus lag"
        assert {r["pid"] for r in reads + again} == set(server.healths()), "not every worker was read"
    for health in server.healths().values():  # truthful health: one subscription per worker
        assert health["bus_subscribed"] is True
        assert health["bus_connected"] == 1, health


@pytest.mark.parametrize("preload", [False, True], ids=["fork-then-import", "preload"])
@pytest.mark.parametrize(
    ("worker", "app"),
    [
        ("uvicorn_worker.UvicornWorker", "tests.behaviour._service_app:app"),
        ("sync", "tests.behaviour._service_app:wsgi_app"),
    ],
    ids=["uvicorn-asgi", "sync-wsgi"],
)
def test_every_worker_serves_each_write_after_it_returns(
    worker: str, app: str, preload: bool, serve: Any, redis_client: redis.Redis
) -> None:
    server = serve(*(["--preload"] if preload else []), "-w", str(WORKERS), "-k", worker, app, warm=preload)
    every_worker_serves_each_write(server, redis_client)


README_CONF = """
from gcache.exposition import gunicorn_child_exit, gunicorn_when_ready

when_ready = gunicorn_when_ready({port})   # one /metrics for the whole server, from the master
child_exit = gunicorn_child_exit           # forget the live gauges of a worker that exited
"""


@pytest.mark.parametrize("multiprocess", [False, True], ids=["single-process-metrics", "multiprocess"])
def test_master_replaces_a_killed_worker_under_the_readme_recipe(
    multiprocess: bool, serve: Any, tmp_path: Path
) -> None:
    metrics_port = free_port()
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(README_CONF.format(port=metrics_port))
    env = {}
    if multiprocess:
        (tmp_path / "prom").mkdir()
        env[MULTIPROC_DIR_ENV] = str(tmp_path / "prom")
    args = [
        "-c",
        str(conf),
        "-w",
        str(WORKERS),
        "-k",
        "uvicorn_worker.UvicornWorker",
        "tests.behaviour._service_app:app",
    ]
    server = serve(*args, **env)
    before = server.workers()
    victim = min(before)
    os.kill(victim, signal.SIGKILL)

    deadline = time.monotonic() + 20
    while not (len(server.workers()) == WORKERS and victim not in server.workers()):
        assert server.proc.poll() is None, f"the master died:\n{server.log}"
        assert time.monotonic() < deadline, f"the killed worker was not replaced:\n{server.log}"
        time.sleep(0.1)
    server.wait_ready()
    assert victim not in set(server.healths())
    time.sleep(1)  # the master's main loop goes on after the hook: it must still be there
    assert server.proc.poll() is None
    log = server.log
    assert "Unhandled exception" not in log, log
    assert "Traceback" not in log, log
    if multiprocess:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as answer:
            assert b"gcache_request_counter" in answer.read()  # the master serves the workers' sum
    else:
        assert log.count("gunicorn_child_exit does nothing") == 1, log
        assert log.count("gunicorn_when_ready serves no metrics") == 1, log
        with pytest.raises(OSError, match="refused"):  # nothing listens: no worker's metrics to serve
            urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2)
