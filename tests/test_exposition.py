"""The three documented ways to serve ``/metrics``: HTTP server, ASGI app, multi-process mode.

Multi-process mode is tested with real separate processes (``python -c``) that set
``PROMETHEUS_MULTIPROC_DIR`` before anything imports prometheus_client, as a pre-fork server's
workers do; the parent's registry must report the sum of their counters and histograms.
"""

from __future__ import annotations

import asyncio
import gzip
import inspect
import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import redis
from fastapi import FastAPI
from prometheus_client import REGISTRY, CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette

from gcache import CacheLayer, GCache, GCacheConfig, GCacheKeyConfig, RedisConfig, exposition
from gcache._embedded_redis import free_port
from gcache.exposition import (
    MULTIPROC_DIR_ENV,
    gunicorn_child_exit,
    gunicorn_when_ready,
    make_metrics_app,
    mark_process_dead,
    multiprocess_enabled,
    multiprocess_registry,
    start_metrics_server,
)
from tests.conftest import sample

BOTH = GCacheKeyConfig.enabled(60)

# One pre-fork worker: n distinct ids, each read twice (LOCAL+REMOTE). Per worker and use case:
# local lookups 2n, local misses n, remote lookups n, remote misses n, function calls n, REMOTE
# writes n. It prints its pid and the counters and histograms its own registry saw.
WORKER = textwrap.dedent(
    """
    import json, os, sys

    assert os.environ["PROMETHEUS_MULTIPROC_DIR"]  # before prometheus_client is imported
    from prometheus_client import REGISTRY, Gauge
    from gcache import CacheLayer, GCache, GCacheConfig, GCacheKeyConfig, RedisConfig

    redis_url, worker, n = os.environ["MP_TEST_REDIS_URL"], sys.argv[1], int(sys.argv[2])
    live = Gauge("mp_test_live_workers", "Workers alive.", multiprocess_mode="livesum")
    live.set(1)
    with GCache(GCacheConfig(redis_config=RedisConfig(url=redis_url))) as cache:

        @cache.cached(key_type="user_id", id_arg="uid", use_case="Mp",
                      default_config=GCacheKeyConfig.enabled(60))
        def get(uid: str) -> str:
            return "value of " + uid

        with cache.enable():
            for _ in range(2):
                for i in range(n):
                    assert get(f"{worker}-{i}") == f"value of {worker}-{i}"
    # After close: every counter and histogram is final. Gauges are left out (per process).
    own = {
        s.name + json.dumps(s.labels, sort_keys=True): s.value
        for m in REGISTRY.collect() if m.name.startswith("gcache_") and m.type in ("counter", "histogram")
        for s in m.samples if not s.name.endswith("_created")
    }
    print(json.dumps({"pid": os.getpid(), "own": own}))
    """
)


def run_workers(multiproc_dir: Path, redis_url: str, sizes: dict[str, int]) -> list[dict[str, Any]]:
    """Run one worker process per entry of ``sizes``, one after the other; their reports."""
    env = {k: v for k, v in os.environ.items() if k != MULTIPROC_DIR_ENV}
    env[MULTIPROC_DIR_ENV] = str(multiproc_dir)
    env["MP_TEST_REDIS_URL"] = redis_url  # not on the command line: its password
    reports = []
    for worker, n in sizes.items():
        done = subprocess.run(
            [sys.executable, "-c", WORKER, worker, str(n)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        reports.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return reports


@pytest.fixture
def multiproc_dir(tmp_path: Path) -> Path:
    path = tmp_path / "prometheus-multiproc"
    path.mkdir()
    return path


def mp(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return sample(registry, name, use_case="Mp", key_type="user_id", **labels)


# -- HTTP server -------------------------------------------------------------------------------


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=5) as response:
        return int(response.status), dict(response.headers), bytes(response.read())


@pytest.mark.redis
def test_http_server_serves_gcache_metrics_on_loopback(redis_url: str, redis_client: redis.Redis) -> None:
    registry = CollectorRegistry()
    with GCache(GCacheConfig(redis_config=RedisConfig(url=redis_url), metrics_registry=registry)) as cache:

        @cache.cached(key_type="user_id", id_arg="uid", use_case="Http", default_config=BOTH)
        def get(uid: str) -> str:
            return uid * 100

        with cache.enable():
            for uid in ("a", "b", "a"):
                get(uid)
        server, thread = start_metrics_server(0, registry=registry)  # 0: any free port
        try:
            host, port = server.server_address[:2]
            assert host == "127.0.0.1"  # loopback unless told otherwise
            status, headers, body = fetch(f"http://127.0.0.1:{port}/metrics")
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    samples = {
        (s.name, s.labels.get("layer")): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
        if s.labels.get("use_case") == "Http"
    }
    assert samples[("gcache_request_counter_total", "LOCAL")] == 3
    assert samples[("gcache_request_counter_total", "REMOTE")] == 2
    assert samples[("gcache_fallback_timer_count", "REMOTE")] == 2
    assert samples[("gcache_size_histogram_count", "REMOTE")] == 2  # two values written to Redis
    assert not thread.is_alive()


def test_http_server_serves_the_default_registry_without_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MULTIPROC_DIR_ENV, raising=False)
    counter = Counter("exposition_default_probe", "A counter in the default registry.")
    counter.inc(7)
    try:
        server, thread = start_metrics_server(0)
        try:
            _status, _headers, body = fetch(f"http://127.0.0.1:{server.server_port}/metrics")
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
    finally:
        REGISTRY.unregister(counter)
    assert "exposition_default_probe_total 7.0" in body.decode()
    assert "python_info" in body.decode()  # the default registry's platform collector


# -- ASGI app ----------------------------------------------------------------------------------


async def call_asgi(
    app: Any, headers: list[tuple[bytes, bytes]] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """Call an ASGI app directly with one GET /metrics, as a server would."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "path": "/metrics",
        "query_string": b"",
        "headers": headers or [],
    }
    await app(scope, receive, send)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    response_headers = {k.decode().lower(): v.decode() for k, v in sent[0]["headers"]}
    return int(sent[0]["status"]), response_headers, bytes(sent[1]["body"])


def routed_app(framework: str, metrics: Any, mount: bool) -> Any:
    """A FastAPI or Starlette app serving ``metrics`` at /metrics: routed (the README's form) or
    mounted."""
    if framework == "fastapi":
        app: Any = FastAPI()
    else:
        app = Starlette()
    if mount:
        app.mount("/metrics", metrics)
    else:
        app.add_route("/metrics", metrics)
    return app


@pytest.mark.parametrize("framework", ["fastapi", "starlette"])
async def test_routed_at_metrics_it_answers_get_metrics_itself_without_a_redirect(framework: str) -> None:
    registry = CollectorRegistry()
    Counter("served_total", "a sample", registry=registry).inc(3)
    app = routed_app(framework, make_metrics_app(registry), mount=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as client:
        response = await client.get("/metrics")  # httpx, like curl, follows no redirect by default
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        assert "served_total 3.0" in response.text
        openmetrics = await client.get("/metrics", headers={"accept": "application/openmetrics-text"})
        assert openmetrics.status_code == 200
        assert openmetrics.text.rstrip().endswith("# EOF")
        head = await client.head("/metrics")
        assert head.status_code == 200


@pytest.mark.parametrize("framework", ["fastapi", "starlette"])
async def test_mounted_at_metrics_get_metrics_is_a_redirect_which_is_why_the_readme_routes_it(
    framework: str,
) -> None:
    app = routed_app(framework, make_metrics_app(CollectorRegistry()), mount=True)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as client:
        redirected = await client.get("/metrics")
        assert (redirected.status_code, redirected.headers["location"]) == (307, "http://app/metrics/")
        assert (await client.get("/metrics/")).status_code == 200


def test_the_metrics_app_is_not_a_plain_function() -> None:
    # Starlette's Route wraps a plain function as a request-response endpoint (it would be
    # called with a Request and fail): an object is served as the ASGI app it is.
    app = make_metrics_app(CollectorRegistry())
    assert not inspect.isfunction(app)
    assert not inspect.ismethod(app)


async def test_asgi_app_serves_metrics_with_content_negotiation() -> None:
    registry = CollectorRegistry()
    async with GCache(GCacheConfig(metrics_registry=registry)) as cache:
        local_only = GCacheKeyConfig(ttl_sec={CacheLayer.LOCAL: 60}, ramp={CacheLayer.LOCAL: 100})

        @cache.cached(key_type="user_id", id_arg="uid", use_case="Asgi", default_config=local_only)
        async def get(uid: str) -> str:
            return uid

        with cache.enable():
            for uid in ("1", "1", "2"):
                await get(uid)

    app = make_metrics_app(registry)
    status, headers, body = await call_asgi(app)
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    assert (
        'gcache_request_counter_total{key_type="user_id",layer="LOCAL",use_case="Asgi"} 3.0' in body.decode()
    )
    reasons = 'gcache_miss_reason_counter_total{key_type="user_id",layer="LOCAL",reason="not_found",'
    assert reasons + 'use_case="Asgi"} 2.0' in body.decode()
    assert 'gcache_miss_counter_total{key_type="user_id",layer="LOCAL",use_case="Asgi"} 2.0' in body.decode()

    # What Prometheus itself asks for: OpenMetrics, gzip-compressed.
    status, headers, body = await call_asgi(
        app, [(b"accept", b"application/openmetrics-text; version=1.0.0"), (b"accept-encoding", b"gzip")]
    )
    assert status == 200
    assert headers["content-type"].startswith("application/openmetrics-text")
    assert headers["content-encoding"] == "gzip"
    text = gzip.decompress(body).decode()
    assert text.rstrip().endswith("# EOF")
    assert 'gcache_request_counter_total{key_type="user_id",layer="LOCAL",use_case="Asgi"} 3.0' in text


# -- multi-process mode ------------------------------------------------------------------------


def test_multiprocess_registry_needs_an_existing_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(MULTIPROC_DIR_ENV, raising=False)
    assert not multiprocess_enabled()
    with pytest.raises(ValueError, match="PROMETHEUS_MULTIPROC_DIR"):
        multiprocess_registry()
    with pytest.raises(ValueError, match="not a directory"):
        multiprocess_registry(tmp_path / "missing")


@pytest.mark.redis
@pytest.mark.slow
def test_multiprocess_mode_reports_the_sum_of_the_workers(
    multiproc_dir: Path, redis_url: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes = {"w1": 3, "w2": 5}
    reports = run_workers(multiproc_dir, redis_url, sizes)
    files = sorted(p.name for p in multiproc_dir.iterdir())
    for report in reports:  # each worker wrote its own files
        assert f"counter_{report['pid']}.db" in files
        assert f"histogram_{report['pid']}.db" in files

    registry = multiprocess_registry(multiproc_dir)
    total = sum(sizes.values())
    assert mp(registry, "gcache_request_counter_total", layer="LOCAL") == 2 * total
    assert mp(registry, "gcache_request_counter_total", layer="REMOTE") == total
    assert mp(registry, "gcache_miss_reason_counter_total", layer="LOCAL", reason="not_found") == total
    assert mp(registry, "gcache_miss_reason_counter_total", layer="REMOTE", reason="not_found") == total
    assert mp(registry, "gcache_write_counter_total", layer="REMOTE", result="stored") == total
    # Histograms: counts and every bucket add up.
    assert mp(registry, "gcache_fallback_timer_count", layer="REMOTE") == total
    # Every lookup is timed, and the sums of the workers' timers add up too.
    assert mp(registry, "gcache_get_timer_count", layer="LOCAL") == 2 * total
    assert mp(registry, "gcache_get_timer_count", layer="REMOTE") == total
    assert mp(registry, "gcache_get_timer_sum", layer="LOCAL") > 0
    assert mp(registry, "gcache_size_histogram_count", layer="REMOTE") == total
    assert mp(registry, "gcache_size_histogram_bucket", layer="REMOTE", le="+Inf") == total
    assert mp(registry, "gcache_serialization_timer_count", layer="REMOTE", operation="dump") == total

    # The parent's sum is exactly the sum of what each worker's own registry saw.
    keys = set().union(*(r["own"] for r in reports))
    assert any(key.startswith("gcache_serialization_timer_bucket") for key in keys)
    for key in keys:
        name, labels = key.split("{", 1)[0], json.loads(key[key.index("{") :])
        expected = sum(r["own"].get(key, 0.0) for r in reports)
        assert sample(registry, name, **labels) == pytest.approx(expected), key

    # Served without naming a registry: start_metrics_server and make_metrics_app pick the
    # multi-process one when PROMETHEUS_MULTIPROC_DIR is set.
    monkeypatch.setenv(MULTIPROC_DIR_ENV, str(multiproc_dir))
    assert multiprocess_enabled()
    server, thread = start_metrics_server(0)
    try:
        _status, _headers, body = fetch(f"http://127.0.0.1:{server.server_port}/metrics")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    line = f'gcache_request_counter_total{{key_type="user_id",layer="LOCAL",use_case="Mp"}} {2.0 * total}'
    assert line in body.decode()
    status, _headers, asgi_body = asyncio.run(call_asgi(make_metrics_app()))
    assert status == 200
    assert line in asgi_body.decode()


@pytest.mark.redis
def test_gunicorn_child_exit_forgets_the_live_gauges_of_a_dead_worker(
    multiproc_dir: Path, redis_url: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    reports = run_workers(multiproc_dir, redis_url, {"w1": 1, "w2": 1})
    registry = multiprocess_registry(multiproc_dir)
    assert sample(registry, "mp_test_live_workers") == 2  # files outlive the processes
    counted = mp(registry, "gcache_request_counter_total", layer="LOCAL")

    monkeypatch.setenv(MULTIPROC_DIR_ENV, str(multiproc_dir))
    gunicorn_child_exit(server=None, worker=SimpleNamespace(pid=reports[0]["pid"]))
    assert sample(registry, "mp_test_live_workers") == 1
    mark_process_dead(reports[1]["pid"], multiproc_dir)
    assert sample(registry, "mp_test_live_workers") == 0
    # Counters of dead workers stay: a counter that went down would read as a reset.
    assert mp(registry, "gcache_request_counter_total", layer="LOCAL") == counted == 4


def test_gunicorn_hooks_never_raise_in_the_master_and_say_once_what_they_skip(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """Without multi-process mode the hooks have nothing to do; with it, a failure is logged.
    An exception in either would stop gunicorn's master from replacing workers."""
    monkeypatch.setattr(exposition, "_warned", set())
    monkeypatch.delenv(MULTIPROC_DIR_ENV, raising=False)
    when_ready = gunicorn_when_ready(free_port())
    with caplog.at_level(logging.WARNING, logger="gcache"):
        for pid in (101, 102):
            gunicorn_child_exit(server=None, worker=SimpleNamespace(pid=pid))
            when_ready(None)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "gcache: gunicorn_child_exit does nothing: PROMETHEUS_MULTIPROC_DIR is not set, so each worker "
        "keeps its own metrics (set it, and empty the directory, before gunicorn starts, to add them up)",
        "gcache: gunicorn_when_ready serves no metrics: PROMETHEUS_MULTIPROC_DIR is not set, so the "
        "master has none of its workers' (set it before gunicorn starts, or route make_metrics_app() in "
        "the app)",
    ]

    caplog.clear()
    monkeypatch.setenv(MULTIPROC_DIR_ENV, str(tmp_path))

    def refused(pid: int) -> None:
        raise PermissionError(f"cannot remove the files of {pid}")

    monkeypatch.setattr(exposition, "mark_process_dead", refused)
    with caplog.at_level(logging.WARNING, logger="gcache"):
        gunicorn_child_exit(server=None, worker=SimpleNamespace(pid=103))
    assert [r.getMessage() for r in caplog.records] == [
        "gcache: could not forget the metrics of gunicorn worker 103"
    ]


def test_gunicorn_when_ready_logs_a_port_it_cannot_bind(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    monkeypatch.setenv(MULTIPROC_DIR_ENV, str(tmp_path))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with caplog.at_level(logging.WARNING, logger="gcache"):
            gunicorn_when_ready(port)(None)
    assert [r.getMessage() for r in caplog.records] == [
        f"gcache: could not serve the metrics on 127.0.0.1:{port}"
    ]


@pytest.mark.redis
def test_multiprocess_mode_reports_local_entries_of_the_workers(
    multiproc_dir: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    run_workers(multiproc_dir, redis_url, {"w1": 3, "w2": 5})
    registry = multiprocess_registry(multiproc_dir)
    assert mp(registry, "gcache_local_entries") == 8
