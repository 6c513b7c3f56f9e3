"""gcache in web frameworks: per-request caching for ASGI apps (FastAPI, Starlette, Litestar, ...).

``CacheMiddleware`` turns caching on for the requests that may be served from the cache, honours
the client's ``Cache-Control``, and closes the cache when the app shuts down.
"""

from gcache.web.asgi import CacheMiddleware

__all__ = ["CacheMiddleware"]
