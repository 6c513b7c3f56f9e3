"""Which requests may be served from the cache, shared by the ASGI, WSGI and Django middlewares."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gcache.gcache import GCache

__all__ = ["RequestPolicy", "directives", "in_mode"]


def directives(cache_control: str, pragma: str = "") -> set[str]:
    """The request's ``Cache-Control`` directives (``Pragma: no-cache`` counts as ``no-cache``)."""
    found = {part.split("=", 1)[0].strip().lower() for part in cache_control.split(",")}
    found.discard("")
    if "no-cache" in pragma.lower():
        found.add("no-cache")
    return found


class RequestPolicy:
    """Requests of ``methods`` run inside ``enable()`` (``refresh()`` for ``no-cache``, outside
    for ``no-store``, each when honoured); others run outside it."""

    __slots__ = ("honour_no_cache", "honour_no_store", "methods")

    def __init__(self, methods: Iterable[str], honour_no_cache: bool, honour_no_store: bool) -> None:
        self.methods = frozenset(method.upper() for method in methods)
        self.honour_no_cache = honour_no_cache
        self.honour_no_store = honour_no_store

    def mode(
        self, gcache: GCache, method: str, cache_control: str, pragma: str
    ) -> contextlib.AbstractContextManager[None]:
        if method.upper() not in self.methods:
            return gcache.enable(False)
        if cache_control or pragma:
            found = directives(cache_control, pragma)
            if self.honour_no_store and "no-store" in found:
                return gcache.enable(False)
            if self.honour_no_cache and "no-cache" in found:
                return gcache.refresh()
        return gcache.enable()


def in_mode(
    body: Iterable[bytes], mode: Callable[[], contextlib.AbstractContextManager[None]]
) -> Iterator[bytes]:
    """``body``, each chunk produced (and the body closed) inside the request's mode: a body made
    lazily, after the view returned, calls the cache under the same rules as the view did."""
    try:
        iterator = iter(body)
        while True:
            with mode():
                try:
                    chunk = next(iterator)
                except StopIteration:
                    return
            yield chunk
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            with mode():
                close()
