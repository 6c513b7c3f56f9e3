"""``cached_route``: a GET endpoint's whole response cached, for Starlette and FastAPI.

The response (status, the headers safe to share, body) is the cached value of a use case built
with ``gcache.cached``, so it has the same keys, config provider, ramps, invalidation and
metrics as any other: ``invalidate(key_type, id)`` drops a user's page as it drops their record.
The key is the id path parameter, the query parameters sorted (``?a=1&b=2`` and ``?b=2&a=1``
share an entry; repeated names keep their order), and the request headers named in ``vary``.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gcache.config import GCacheKeyConfig
from gcache.errors import ConfigError
from gcache.readthrough.decisions import Unstored
from gcache.web._policy import directives

if TYPE_CHECKING:
    from gcache.gcache import GCache

__all__ = ["SHARED_HEADERS", "cached_route"]

F = TypeVar("F", bound=Callable[..., Any])

SHARED_HEADERS = frozenset(
    {
        "content-type",
        "content-language",
        "content-encoding",
        "cache-control",
        "expires",
        "last-modified",
        "vary",
        "link",
        "location",
    }
)
"""Response headers kept with a cached response; any other (``set-cookie`` above all) is one
client's, and a response that sets a cookie is never cached."""

_REQUEST_PARAMETER = "_gcache_request"


class _Stored(NamedTuple):
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


def cached_route(
    gcache: GCache,
    *,
    key_type: str,
    id_param: str,
    use_case: str | None = None,
    track_for_invalidation: bool = True,
    default_config: GCacheKeyConfig | None = None,
    vary: Iterable[str] = (),
    statuses: Iterable[int] = range(200, 300),
    max_body_bytes: int = 1 << 20,
) -> Callable[[F], F]:
    """Decorate a GET endpoint (sync or async, FastAPI path operation or Starlette endpoint).

    Args:
        key_type, id_param: the entity the page shows, and the path parameter with its id.
        use_case, track_for_invalidation, default_config: as for ``gcache.cached``
            (``track_for_invalidation`` defaults to True: pages follow their entity).
        vary: request headers whose value is part of the key (``Accept-Language``); a response
            whose own ``Vary`` names any other header is not stored.
        statuses: the statuses stored (2xx by default); others are returned, not stored.
        max_body_bytes: a larger body is returned, not stored.

    The response carries ``X-Cache: HIT`` (served without running the endpoint), ``MISS`` (the
    endpoint ran and its response was stored) or ``BYPASS`` (not stored: ``no-store``, a status
    or size not stored, a cookie, an unknown ``Vary``), and an ``ETag`` of its body; a request
    whose ``If-None-Match`` names it gets ``304 Not Modified``. The route turns caching on for
    its own GET and HEAD requests; ``Cache-Control: no-cache`` refreshes, ``no-store`` bypasses.
    An endpoint may return a ``Response`` or JSON-able data (rendered as ``JSONResponse``; a
    FastAPI ``response_model`` is not applied to what a cached route returns).

    Raises:
        ConfigError: bad options, told at decoration.
    """
    varied = tuple(sorted({name.lower() for name in vary}))
    stored_statuses = frozenset(statuses)
    if not isinstance(max_body_bytes, int) or max_body_bytes <= 0:
        raise ConfigError(
            f"cached_route(): max_body_bytes must be a positive integer, got {max_body_bytes!r}"
        )

    def decorate(endpoint: F) -> F:
        name = use_case or f"{endpoint.__module__}.{endpoint.__name__}"
        signature = inspect.signature(endpoint)
        own_request = next(
            (p.name for p in signature.parameters.values() if p.annotation in (Request, "Request")), None
        )
        is_async = inspect.iscoroutinefunction(endpoint)

        async def run(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Response:
            result = (
                await endpoint(*args, **kwargs)
                if is_async
                else await run_in_threadpool(endpoint, *args, **kwargs)
            )
            return result if isinstance(result, Response) else JSONResponse(_json_ready(result))

        @gcache.cached(
            key_type=key_type,
            id_arg="entity_id",
            use_case=name,
            track_for_invalidation=track_for_invalidation,
            default_config=default_config,
            ignore_args=["compute"],
        )
        async def stored_response(
            entity_id: str, query: str, headers: str, compute: Any
        ) -> _Stored | Unstored:
            response: Response = await compute()
            return _storable(response, stored_statuses, varied, max_body_bytes)

        @functools.wraps(endpoint)
        async def cached_endpoint(*args: Any, **kwargs: Any) -> Response:
            request = _request_of(args, kwargs, own_request)
            if own_request is None and _REQUEST_PARAMETER in kwargs:
                del kwargs[_REQUEST_PARAMETER]
            if request.method not in ("GET", "HEAD"):
                return _marked(await run(args, kwargs), "BYPASS")
            found = directives(request.headers.get("cache-control", ""), request.headers.get("pragma", ""))
            if "no-store" in found:
                return _marked(await run(args, kwargs), "BYPASS")
            ran: list[Response] = []

            async def compute() -> Response:
                response = await run(args, kwargs)
                ran.append(response)
                return response

            mode = gcache.refresh() if "no-cache" in found else gcache.enable()
            with mode:
                stored = await stored_response(
                    str(request.path_params[id_param]),
                    _sorted_query(request),
                    _varied(request, varied),
                    compute,
                )
            if isinstance(stored, Unstored):  # returned to every caller that shared the run, not kept
                return _marked(stored.value, "BYPASS")
            return _answer(request, stored, "MISS" if ran else "HIT")

        if own_request is None:  # FastAPI injects the Request into a parameter of this type
            parameters = [*signature.parameters.values()]
            extra = inspect.Parameter(_REQUEST_PARAMETER, inspect.Parameter.KEYWORD_ONLY, annotation=Request)
            position = next((i for i, p in enumerate(parameters) if p.kind is p.VAR_KEYWORD), len(parameters))
            parameters.insert(position, extra)
            cached_endpoint.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        cached_endpoint.use_case = name  # type: ignore[attr-defined]
        return cached_endpoint  # type: ignore[return-value]

    return decorate


def _request_of(args: tuple[Any, ...], kwargs: dict[str, Any], own: str | None) -> Request:
    if own is not None and own in kwargs:
        found = kwargs[own]
    elif _REQUEST_PARAMETER in kwargs:
        found = kwargs[_REQUEST_PARAMETER]
    else:  # a Starlette endpoint: endpoint(request)
        found = next((a for a in args if isinstance(a, Request)), None)
    if not isinstance(found, Request):
        raise TypeError("cached_route(): the endpoint was called without its Request")
    return found


def _sorted_query(request: Request) -> str:
    """The query, sorted by name; the values of a repeated name keep their order."""
    items = sorted(request.query_params.multi_items(), key=lambda item: item[0])
    return "&".join(f"{name}={value}" for name, value in items)


def _varied(request: Request, varied: tuple[str, ...]) -> str:
    return "\n".join(f"{name}:{request.headers.get(name, '')}" for name in varied)


def _storable(
    response: Response, statuses: frozenset[int], varied: tuple[str, ...], max_body: int
) -> _Stored | Unstored:
    """What is kept of ``response``, or the response itself, unstored, when it may not be shared."""
    body = getattr(response, "body", None)
    headers = response.headers
    vary = {part.strip().lower() for part in headers.get("vary", "").split(",") if part.strip()}
    if (
        not isinstance(body, bytes)  # a streamed body
        or response.status_code not in statuses
        or len(body) > max_body
        or "set-cookie" in headers  # one client's
        or directives(headers.get("cache-control", "")) & {"private", "no-store"}
        or vary - set(varied)  # varies on headers the key lacks
    ):
        return Unstored(response)
    kept = tuple((k, v) for k, v in headers.items() if k in SHARED_HEADERS)
    return _Stored(response.status_code, kept, body)


def _answer(request: Request, stored: _Stored, cache: str) -> Response:
    etag = '"' + hashlib.sha256(stored.body).hexdigest()[:32] + '"'
    if etag in {
        tag.strip().removeprefix("W/") for tag in request.headers.get("if-none-match", "").split(",")
    }:
        return Response(status_code=304, headers={"etag": etag, "x-cache": cache})
    response = Response(stored.body, status_code=stored.status, headers=dict(stored.headers))
    response.headers["etag"] = etag
    response.headers["x-cache"] = cache
    if request.method == "HEAD":
        response.body = b""
    return response


def _marked(response: Response, cache: str) -> Response:
    response.headers["x-cache"] = cache
    return response


def _json_ready(result: Any) -> Any:
    try:
        from fastapi.encoders import jsonable_encoder
    except ImportError:  # pragma: no cover - Starlette without FastAPI
        return result
    return jsonable_encoder(result)
