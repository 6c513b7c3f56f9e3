"""A Django project in one module, for tests/web/test_django.py: its urls, views and the GCache
that ``settings.GCACHE`` names (set by the test before each request)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.urls import path

from gcache import GCache

cache: GCache | None = None  # settings.GCACHE = "tests.web._django_app.cache"
name: Any = None  # the cached function of the running test
aname: Any = None  # its async twin


def _cache() -> GCache:
    assert cache is not None
    return cache


def read(request: HttpRequest, uid: str) -> JsonResponse:
    return JsonResponse({"name": name(uid), "on": _cache().is_enabled})


async def aread(request: HttpRequest, uid: str) -> JsonResponse:
    return JsonResponse({"name": await aname(uid), "on": _cache().is_enabled})


def write(request: HttpRequest, uid: str) -> HttpResponse:
    return HttpResponse(name(uid))


def stream(request: HttpRequest, uid: str) -> StreamingHttpResponse:
    def body() -> Iterator[str]:
        yield "start,"
        yield name(uid) + "," + str(_cache().is_enabled)

    return StreamingHttpResponse(body())


urlpatterns = [
    path("users/<str:uid>", read),
    path("ausers/<str:uid>", aread),
    path("write/<str:uid>", write),
    path("stream/<str:uid>", stream),
]
