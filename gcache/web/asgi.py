"""A pure ASGI middleware: caching on per request, by method and ``Cache-Control``.

Pure ASGI (no framework import), so it wraps any ASGI app. The request's handler runs in the
middleware's own task, or for a sync handler in a thread that copies its context, so the
``enable()`` set here reaches every cached call the request makes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gcache.gcache import GCache

__all__ = ["CacheMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class CacheMiddleware:
    """Runs each request of ``methods`` inside ``gcache.enable()``, and others outside it.

    Args:
        app: the ASGI app.
        gcache: the cache its handlers use.
        methods: the methods whose requests may be served from the cache (reads).
        honour_no_cache: a request with ``Cache-Control: no-cache`` (or ``Pragma: no-cache``)
            reads past the cache and refreshes it (``gcache.refresh()``).
        honour_no_store: a request with ``Cache-Control: no-store`` neither reads nor fills it.
        close_on_shutdown: close the cache (``aclose``) when the app's lifespan shuts down.
    """

    def __init__(
        self,
        app: ASGIApp,
        gcache: GCache,
        *,
        methods: Iterable[str] = ("GET", "HEAD"),
        honour_no_cache: bool = True,
        honour_no_store: bool = True,
        close_on_shutdown: bool = True,
    ) -> None:
        self.app = app
        self.gcache = gcache
        self.methods = frozenset(method.upper() for method in methods)
        self.honour_no_cache = honour_no_cache
        self.honour_no_store = honour_no_store
        self.close_on_shutdown = close_on_shutdown

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            with self._mode(scope):
                await self.app(scope, receive, send)
        elif kind == "lifespan" and self.close_on_shutdown:
            await self.app(scope, receive, self._closing(send))
        else:  # websockets: a long-lived connection, not a request to serve from the cache
            await self.app(scope, receive, send)

    def _mode(self, scope: Scope) -> contextlib.AbstractContextManager[None]:
        if scope.get("method", "GET").upper() not in self.methods:
            return self.gcache.enable(False)
        directives = _cache_directives(scope.get("headers") or ())
        if self.honour_no_store and "no-store" in directives:
            return self.gcache.enable(False)
        if self.honour_no_cache and "no-cache" in directives:
            return self.gcache.refresh()
        return self.gcache.enable()

    def _closing(self, send: Send) -> Send:
        """``send`` for the lifespan: the cache is closed before the server hears shutdown is done."""

        async def closing_send(message: Message) -> None:
            if message.get("type") == "lifespan.shutdown.complete":
                await self.gcache.aclose()
            await send(message)

        return closing_send


def _cache_directives(headers: Iterable[tuple[bytes, bytes]]) -> set[str]:
    """The request's ``Cache-Control`` directives (``Pragma: no-cache`` counts as ``no-cache``)."""
    found: set[str] = set()
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"cache-control":
            for part in value.decode("latin-1").split(","):
                directive = part.split("=", 1)[0].strip().lower()
                if directive:
                    found.add(directive)
        elif lowered == b"pragma" and b"no-cache" in value.lower():
            found.add("no-cache")
    return found
