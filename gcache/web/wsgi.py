"""A WSGI middleware (Flask, Bottle, Pyramid, any WSGI app): ``CacheMiddleware``'s rules for sync apps.

A WSGI app may produce its body lazily, after it returned (a generator, Flask's ``stream_with_context``):
the body is iterated, and closed, inside the request's mode too, so cached calls made while
streaming follow the same rules as those made before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from gcache.web._policy import RequestPolicy, in_mode

if TYPE_CHECKING:
    import contextlib

    from gcache.gcache import GCache

__all__ = ["WSGICacheMiddleware"]

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class WSGICacheMiddleware:
    """Runs each request of ``methods`` inside ``gcache.enable()``, others outside it; a
    ``Cache-Control: no-cache`` request inside ``gcache.refresh()``, a ``no-store`` one outside.

    Flask: ``app.wsgi_app = WSGICacheMiddleware(app.wsgi_app, gcache)``. The arguments are
    :class:`~gcache.web.CacheMiddleware`'s, less the lifespan (WSGI has none: close the cache
    where the app stops, e.g. ``atexit``).
    """

    def __init__(
        self,
        app: WSGIApp,
        gcache: GCache,
        *,
        methods: Iterable[str] = ("GET", "HEAD"),
        honour_no_cache: bool = True,
        honour_no_store: bool = True,
    ) -> None:
        self.app = app
        self.gcache = gcache
        self.policy = RequestPolicy(methods, honour_no_cache, honour_no_store)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        def mode() -> contextlib.AbstractContextManager[None]:
            return self.policy.mode(
                self.gcache,
                environ.get("REQUEST_METHOD", "GET"),
                environ.get("HTTP_CACHE_CONTROL", ""),
                environ.get("HTTP_PRAGMA", ""),
            )

        with mode():
            body = self.app(environ, start_response)
        return in_mode(body, mode)
