"""A pure ASGI middleware: caching on per request, by method and ``Cache-Control``.

Pure ASGI (no framework import), so it wraps any ASGI app. The request's handler runs in the
middleware's own task, or for a sync handler in a thread that copies its context, so the
``enable()`` set here reaches every cached call the request makes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import TYPE_CHECKING, Any

from gcache.web._policy import RequestPolicy

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
        self.policy = RequestPolicy(methods, honour_no_cache, honour_no_store)
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
        cache_control = pragma = ""
        for name, value in scope.get("headers") or ():
            lowered = name.lower()
            if lowered == b"cache-control":
                cache_control = f"{cache_control},{value.decode('latin-1')}"
            elif lowered == b"pragma":
                pragma = value.decode("latin-1")
        return self.policy.mode(self.gcache, scope.get("method", "GET"), cache_control, pragma)

    def _closing(self, send: Send) -> Send:
        """``send`` for the lifespan: the cache is closed before the server hears shutdown is done."""

        async def closing_send(message: Message) -> None:
            if message.get("type") == "lifespan.shutdown.complete":
                await self.gcache.aclose()
            await send(message)

        return closing_send
