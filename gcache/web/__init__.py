"""gcache in web frameworks: caching on per request, by method and the client's ``Cache-Control``.

``CacheMiddleware`` for ASGI apps (FastAPI, Starlette, Litestar, ...), which also closes the cache
when the app shuts down; ``WSGICacheMiddleware`` for WSGI apps (Flask, ...); Django's is
``gcache.web.django.CacheMiddleware`` (imported only by Django projects).
"""

from gcache.web.asgi import CacheMiddleware
from gcache.web.wsgi import WSGICacheMiddleware

__all__ = ["CacheMiddleware", "WSGICacheMiddleware"]
