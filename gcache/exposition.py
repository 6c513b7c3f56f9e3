"""Serving the metrics: an HTTP endpoint on a thread, an ASGI app to route, and multi-process mode.

One process (a single uvicorn worker, a Celery worker): ``start_metrics_server`` or
``make_metrics_app`` serve the default registry, where gcache's collectors live.

Pre-fork servers (gunicorn, ``uvicorn --workers N``): every worker is its own process with its
own counters. ``prometheus_client``'s multi-process mode has each process write its values to
files in the directory named by ``PROMETHEUS_MULTIPROC_DIR``, and a ``MultiProcessCollector``
adds them up at scrape time. When that variable is set, ``start_metrics_server`` and
``make_metrics_app`` serve such a registry unless given another one. The variable must be set,
and the directory emptied, before the server starts its workers (prometheus_client picks its
value store when it is first imported); gunicorn's ``child_exit`` hook should call
``gunicorn_child_exit`` so the live gauges of a dead worker go away.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, make_asgi_app, multiprocess
from prometheus_client import start_http_server as _start_http_server

__all__ = [
    "MULTIPROC_DIR_ENV",
    "MetricsApp",
    "gunicorn_child_exit",
    "gunicorn_when_ready",
    "make_metrics_app",
    "mark_process_dead",
    "multiprocess_enabled",
    "multiprocess_registry",
    "start_metrics_server",
]

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
_logger = logging.getLogger("gcache")


def multiprocess_enabled() -> bool:
    """True when ``PROMETHEUS_MULTIPROC_DIR`` is set: every process writes its metrics there."""
    return bool(os.environ.get(MULTIPROC_DIR_ENV))


def multiprocess_registry(path: str | os.PathLike[str] | None = None) -> CollectorRegistry:
    """A registry whose only collector adds up the metrics of every process writing to ``path``.

    ``path`` defaults to ``PROMETHEUS_MULTIPROC_DIR``; it must be an existing directory
    (``ValueError`` otherwise). The registry is new and holds nothing else: do not pass it to
    ``GCacheConfig(metrics_registry=...)`` (gcache's own collectors stay in the default
    registry, and their values reach the files from there), or they would be counted twice.
    """
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(  # type: ignore[no-untyped-call]
        registry, path=None if path is None else os.fspath(path)
    )
    return registry


def _serving_registry(registry: CollectorRegistry | None) -> CollectorRegistry:
    """The registry to serve: the one given, else the multi-process one when enabled, else REGISTRY."""
    if registry is not None:
        return registry
    return multiprocess_registry() if multiprocess_enabled() else REGISTRY


def start_metrics_server(
    port: int, addr: str = "127.0.0.1", registry: CollectorRegistry | None = None
) -> tuple[Any, threading.Thread]:
    """Serve ``/metrics`` over HTTP from a daemon thread; returns ``(server, thread)``.

    ``port=0`` picks a free port (``server.server_port``). Call ``server.shutdown()`` then
    ``server.server_close()`` to stop it. Binds to loopback unless ``addr`` says otherwise.
    Without ``registry``: the sum over all processes when ``PROMETHEUS_MULTIPROC_DIR`` is set
    (start it once, e.g. from gunicorn's ``when_ready`` hook), else the default registry.
    """
    server, thread = _start_http_server(port, addr=addr, registry=_serving_registry(registry))
    return server, thread


class MetricsApp:
    """The ASGI app :func:`make_metrics_app` returns. A class and not a function, so that
    Starlette's ``Route`` (``app.add_route("/metrics", ...)``) serves it as an ASGI app, at
    ``/metrics`` itself; it takes a plain function for a request-response endpoint."""

    __slots__ = ("_app", "registry")

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._app = make_asgi_app(registry=registry)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self._app(scope, receive, send)


def make_metrics_app(registry: CollectorRegistry | None = None) -> Callable[..., Any]:
    """An ASGI app serving the metrics on any path it is given (Starlette, FastAPI, ...).

    Route it at ``/metrics`` with ``app.add_route("/metrics", make_metrics_app())``: that answers
    ``GET /metrics`` itself. ``app.mount("/metrics", ...)`` answers only under ``/metrics/``, and
    the framework's router answers ``GET /metrics`` with a 307 redirect to it, which curl,
    httpx and most health checks do not follow.

    Without ``registry``: the sum over all processes when ``PROMETHEUS_MULTIPROC_DIR`` is set,
    so whichever worker answers the scrape reports the whole server; else the default registry.
    Typed as a callable (it is a :class:`MetricsApp`), so that the frameworks' ``add_route``,
    typed for request-response endpoints, type-checks with it.
    """
    return MetricsApp(_serving_registry(registry))


def mark_process_dead(pid: int, path: str | os.PathLike[str] | None = None) -> None:
    """Forget a dead process's live gauges (``live*`` multiprocess modes); counters are kept."""
    multiprocess.mark_process_dead(pid, None if path is None else os.fspath(path))  # type: ignore[no-untyped-call]


_warned: set[str] = set()
_warned_lock = threading.Lock()


def _master_log(server: Any) -> Any:
    """Where a gunicorn hook logs: gunicorn's own logger (``server.log``), which gunicorn's
    logging configuration already shows, else the ``gcache`` logger (a NullHandler only, until
    the application configures logging)."""
    log = getattr(server, "log", None)
    usable = callable(getattr(log, "warning", None)) and callable(getattr(log, "exception", None))
    return log if usable else _logger


def _warn_once(kind: str, message: str, *args: object, log: Any = _logger) -> None:
    with _warned_lock:
        if kind in _warned:
            return
        _warned.add(kind)
    log.warning(message, *args)


def gunicorn_child_exit(server: Any, worker: Any) -> None:
    """gunicorn's ``child_exit`` hook: in ``gunicorn.conf.py``, ``child_exit = gunicorn_child_exit``.

    It runs in gunicorn's master, where an exception stops the master from replacing workers:
    so it never raises. Without multi-process mode there is nothing to forget (each worker
    counts for itself): it does nothing and says so once.
    """
    if not multiprocess_enabled():
        _warn_once(
            "child_exit",
            "gcache: gunicorn_child_exit does nothing: %s is not set, so each worker keeps its own "
            "metrics (set it, and empty the directory, before gunicorn starts, to add them up)",
            MULTIPROC_DIR_ENV,
            log=_master_log(server),
        )
        return
    try:
        mark_process_dead(worker.pid)
    except Exception:  # a directory removed under the server, say: log it, keep the master up
        _master_log(server).exception(
            "gcache: could not forget the metrics of gunicorn worker %s", worker.pid
        )


def gunicorn_when_ready(port: int = 9100, addr: str = "127.0.0.1") -> Callable[[Any], None]:
    """A gunicorn ``when_ready`` hook serving every worker's metrics from the master on ``port``.

    In ``gunicorn.conf.py``: ``when_ready = gunicorn_when_ready(9100)``. It never raises in the
    master: without multi-process mode the master has no worker's metrics to serve, so it serves
    nothing and says so once (route :func:`make_metrics_app` in the app instead); a port that
    cannot be bound is logged.
    """

    def when_ready(server: Any) -> None:
        if not multiprocess_enabled():
            _warn_once(
                "when_ready",
                "gcache: gunicorn_when_ready serves no metrics: %s is not set, so the master has none "
                "of its workers' (set it before gunicorn starts, or route make_metrics_app() in the app)",
                MULTIPROC_DIR_ENV,
                log=_master_log(server),
            )
            return
        try:
            start_metrics_server(port, addr)
        except Exception:
            _master_log(server).exception("gcache: could not serve the metrics on %s:%s", addr, port)

    return when_ready
