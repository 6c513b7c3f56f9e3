"""Serving the metrics: an HTTP endpoint on a thread, or an ASGI app to mount."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, make_asgi_app
from prometheus_client import start_http_server as _start_http_server

__all__ = ["make_metrics_app", "start_metrics_server"]


def start_metrics_server(
    port: int, addr: str = "127.0.0.1", registry: CollectorRegistry | None = None
) -> tuple[Any, threading.Thread]:
    """Serve ``/metrics`` over HTTP from a daemon thread; returns ``(server, thread)``.

    Call ``server.shutdown()`` to stop it. Binds to loopback unless ``addr`` says otherwise.
    """
    server, thread = _start_http_server(port, addr=addr, registry=registry or REGISTRY)
    return server, thread


def make_metrics_app(registry: CollectorRegistry | None = None) -> Callable[..., Any]:
    """An ASGI app serving the metrics, to mount at ``/metrics`` (Starlette, FastAPI, ...)."""
    return make_asgi_app(registry=registry or REGISTRY)
