"""examples/fastapi_app.py, served as its docstring says (issue 16): by uvicorn, and by gunicorn
with 4 uvicorn workers and Prometheus multiprocess mode; exercised over HTTP with httpx."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from gcache._embedded_redis import free_port
from tests.web._running import Running

pytestmark = pytest.mark.slow

BUS_LAG_ALLOWANCE_SEC = 0.25


@pytest.fixture
def environ(redis_url: str, redis_client: Any, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(REDIS_URL=redis_url, EXAMPLE_DB=str(tmp_path / "users.sqlite3"))
    env["GCACHE_SIGNING_KEYS"] = "example-test-signing-key-0123456789"
    return env


@pytest.fixture
def uvicorn_server(environ: dict[str, str], tmp_path: Path) -> Iterator[Running]:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "examples.fastapi_app:app",
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
    ]
    server = Running(command, environ, tmp_path / "uvicorn.log", port)
    yield server
    log = server.stop()
    assert "Traceback" not in log, log  # a clean shutdown: the cache closed on the server's loop


def test_reads_are_cached_and_a_write_is_seen_at_once(uvicorn_server: Running) -> None:
    client = uvicorn_server.client
    assert client.put("/users/1", json={"name": "ada"}).json() == {"id": "1", "name": "ada"}
    assert client.get("/users/1").json()["name"] == "ada"
    first, second = client.get("/pages/users/1"), client.get("/pages/users/1")
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
    assert second.json()["title"] == "ada's page"

    client.put("/users/1", json={"name": "grace"})
    assert client.get("/users/1").json()["name"] == "grace"
    page = client.get("/pages/users/1")
    assert (page.headers["x-cache"], page.json()["title"]) == ("MISS", "grace's page")
    metrics = client.get("/metrics").text
    assert "gcache_request_counter_total{" in metrics
    assert 'use_case="examples.fastapi_app.load_user"' in metrics


def test_under_gunicorn_every_worker_serves_a_write_after_it_returns(
    environ: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = {**environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    command = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "-w", "4",
               "-k", "uvicorn_worker.UvicornWorker", "examples.fastapi_app:app"]  # fmt: skip
    server = Running(command, env, tmp_path / "gunicorn.log", port)
    try:
        client = server.client
        client.put("/users/7", json={"name": "v0"})

        def read(_: int) -> dict[str, Any]:
            sent = time.monotonic()
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as fresh:  # a connection each
                return {**fresh.get("/users/7").json(), "sent": sent}

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(read, range(64)))  # warm every worker's LOCAL layer
            for round in range(1, 4):
                name = f"v{round}"
                client.put("/users/7", json={"name": name})
                returned = time.monotonic()
                reads = list(pool.map(read, range(160)))
                late = [
                    r for r in reads if r["name"] != name and r["sent"] - returned > BUS_LAG_ALLOWANCE_SEC
                ]
                assert late == [], f"round {round}: {len(late)} reads stale past the bus lag"
                time.sleep(BUS_LAG_ALLOWANCE_SEC)
                again = list(pool.map(read, range(160)))
                assert [r for r in again if r["name"] != name] == []
                assert len({r["worker"] for r in reads + again}) >= 2  # several workers answered
        metrics = client.get("/metrics").text
        assert "gcache_request_counter_total{" in metrics  # the sum over the workers
    finally:
        log = server.stop()
    assert "Traceback" not in log, log
