"""Django: ``CacheMiddleware``'s rules as a Django middleware, sync and async.

    # settings.py
    GCACHE = "myproject.cache.gcache"            # where your GCache instance lives
    MIDDLEWARE = [..., "gcache.web.django.CacheMiddleware"]

or, with options, ``CacheMiddleware = django_middleware(gcache, methods=("GET",))`` in a module
of yours, named in ``MIDDLEWARE``. A streaming response's content is produced inside the
request's mode too.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any

from gcache.errors import ConfigError
from gcache.web._policy import RequestPolicy, in_mode

if TYPE_CHECKING:
    import contextlib

    from gcache.gcache import GCache

__all__ = ["CacheMiddleware", "django_middleware"]


def django_middleware(
    gcache: GCache | None = None,
    *,
    methods: Iterable[str] = ("GET", "HEAD"),
    honour_no_cache: bool = True,
    honour_no_store: bool = True,
) -> type:
    """A Django middleware class for ``gcache`` (None: the instance ``settings.GCACHE`` names)."""
    policy = RequestPolicy(methods, honour_no_cache, honour_no_store)

    class GCacheMiddleware:
        sync_capable = True
        async_capable = True

        def __init__(self, get_response: Callable[[Any], Any]) -> None:
            self.get_response = get_response
            self.gcache = gcache if gcache is not None else _from_settings()
            self.is_async = inspect.iscoroutinefunction(get_response)
            if self.is_async:
                from asgiref.sync import markcoroutinefunction

                markcoroutinefunction(self)

        def _mode(self, request: Any) -> contextlib.AbstractContextManager[None]:
            meta = request.META
            return policy.mode(
                self.gcache,
                request.method or "GET",
                meta.get("HTTP_CACHE_CONTROL", ""),
                meta.get("HTTP_PRAGMA", ""),
            )

        def __call__(self, request: Any) -> Any:
            if self.is_async:
                return self._acall(request)
            with self._mode(request):
                response = self.get_response(request)
            if getattr(response, "streaming", False):
                response.streaming_content = in_mode(response.streaming_content, lambda: self._mode(request))
            return response

        async def _acall(self, request: Any) -> Any:
            with self._mode(request):
                response = await self.get_response(request)
            if getattr(response, "streaming", False):
                content = response.streaming_content
                mode = lambda: self._mode(request)  # noqa: E731
                response.streaming_content = (
                    _ain_mode(content, mode) if hasattr(content, "__aiter__") else in_mode(content, mode)
                )
            return response

    return GCacheMiddleware


def _from_settings() -> GCache:
    from django.conf import settings

    path = getattr(settings, "GCACHE", None)
    if not isinstance(path, str) or not path:
        raise ConfigError(
            "gcache.web.django.CacheMiddleware needs settings.GCACHE, the dotted path of your GCache "
            "instance ('myproject.cache.gcache' or 'myproject.cache:gcache')"
        )
    module_name, _, attribute = path.replace(":", ".").rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"settings.GCACHE = {path!r} names nothing importable: {exc}") from exc
    from gcache.gcache import GCache

    if not isinstance(found, GCache):
        raise ConfigError(f"settings.GCACHE = {path!r} is a {type(found).__name__}, not a GCache")
    return found


async def _ain_mode(
    content: Any, mode: Callable[[], contextlib.AbstractContextManager[None]]
) -> AsyncIterator[bytes]:
    iterator = content.__aiter__()
    while True:
        with mode():
            try:
                chunk = await iterator.__anext__()
            except StopAsyncIteration:
                return
        yield chunk


CacheMiddleware = django_middleware()  # settings.GCACHE names the instance
