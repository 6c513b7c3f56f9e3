"""``make_admin_app(gcache)``: inspect, explain and stats as JSON, from inside the process.

Mounted by the application (``app.mount("/gcache", make_admin_app(gcache))``), off unless mounted,
for an internal dashboard. Inside the process it also sees what the command line cannot: whether
LOCAL holds a call's entry, the breakers (a cluster's per node), the bus, the invalidation
outbox and the master Sentinel named (``GET /health``, from memory: it answers while Redis does
not). Read-only unless ``allow_writes=True``, and then
``POST /invalidate`` and ``POST /delete`` need ``Authorization: Bearer <token>``. Pure ASGI: no
framework needed.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import asdict
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import redis

from gcache.config import GCacheKey
from gcache.errors import ConfigError, GCacheError
from gcache.inspection import inspect_entity, key_of, parse_target, prefix_stats, sync_client
from gcache.redis_config import RedisConfig
from gcache.remote import sentinel

if TYPE_CHECKING:
    from gcache.gcache import GCache

__all__ = ["make_admin_app"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class _Refused(Exception):
    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


def make_admin_app(
    gcache: GCache, *, allow_writes: bool = False, token: str | None = None
) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """The admin ASGI app of ``gcache``: ``GET /inspect?target=``, ``GET /explain?key_type=&id=&
    use_case=&arg=name=value``, ``GET /stats`` (``?sample_every=N``, ``?memory=1``), ``GET
    /health`` (``?waiting=N`` entities of the outbox listed, 20 unless given; ``?ask=0``: the
    sentinels not asked), and with ``allow_writes`` ``POST /invalidate?key_type=&id=`` and
    ``POST /delete?key=``.

    Raises:
        ConfigError: ``allow_writes`` without a ``token`` of 16 characters or more.
    """
    if allow_writes and (not isinstance(token, str) or len(token) < 16):
        raise ConfigError("make_admin_app(allow_writes=True) needs a token of 16 characters or more")
    signer = gcache._signer

    def client() -> Any:
        config = gcache.config.redis_config
        if config is None or config.url is None:
            raise _Refused(501, "the admin app reads Redis through a RedisConfig; this cache has none")
        return sync_client(config)

    def with_client(work: Callable[[Any], Any]) -> Any:
        connection = client()
        try:
            return work(connection)
        finally:
            connection.close()

    async def inspect(query: dict[str, list[str]]) -> Any:
        entity = parse_target(_one(query, "target"), gcache._prefix)
        report = await asyncio.to_thread(with_client, lambda c: inspect_entity(c, entity, signer=signer))
        return asdict(report)

    async def explain(query: dict[str, list[str]]) -> Any:
        pairs: list[tuple[str, str]] = []
        for item in query.get("arg", []):
            name, sep, value = item.partition("=")
            if not sep or not name:
                raise ValueError(f"arg {item!r}: give name=value")
            pairs.append((name, value))
        key = GCacheKey(
            _one(query, "key_type"),
            _one(query, "id"),
            _one(query, "use_case"),
            pairs,
            urn_prefix=gcache._prefix,
        )
        use_case = next((uc for uc in gcache._use_cases if uc.use_case == key.use_case), None)
        local = "no such use case in this process"
        config: Any = None
        if use_case is not None:
            local = "held" if key.urn in use_case.local._data else "not held"
            provided = await use_case.aconfig(key.id, tuple(key.args))
            config = provided.to_dict() if provided is not None else None
        grace = float(config.get("fail_safe_sec", 0)) if isinstance(config, dict) else 0.0
        report = await asyncio.to_thread(
            with_client, lambda c: inspect_entity(c, key.prefix, signer=signer, fail_safe_sec=grace)
        )
        entry = next((e for e in report.entries if e.key == key.urn), None)
        remote = {"verdict": "not_found"} if entry is None else {"verdict": entry.verdict, "why": entry.why}
        breaker = gcache.health(0)["breaker"]
        return {
            "key": key.urn,
            "config": config,
            "local": local,
            "remote": remote,
            "breaker_open": None if breaker is None else breaker["open"],
            "bus_subscribed": gcache.bus_subscribed,
        }

    async def stats(query: dict[str, list[str]]) -> Any:
        every = int(query.get("sample_every", ["1"])[0])
        memory = query.get("memory", ["0"])[0] == "1"  # MEMORY USAGE: more than gcache's own user may run
        return asdict(
            await asyncio.to_thread(
                with_client, lambda c: prefix_stats(c, gcache._prefix, sample_every=every, memory=memory)
            )
        )

    async def health(query: dict[str, list[str]]) -> Any:
        waiting = int(query.get("waiting", ["20"])[0])
        if not 0 <= waiting <= 1000:
            raise ValueError(f"waiting={waiting}: give 0 to 1000 entities to list")
        report = gcache.health(waiting)
        config = gcache.config.redis_config
        if report["sentinel"] is not None and config is not None and query.get("ask", ["1"])[0] != "0":
            report["sentinel"].update(await asyncio.to_thread(_named_now, config))
        return report

    async def invalidate(query: dict[str, list[str]]) -> Any:
        await gcache.ainvalidate(_one(query, "key_type"), _one(query, "id"))
        return {"invalidated": [_one(query, "key_type"), _one(query, "id")]}

    async def delete(query: dict[str, list[str]]) -> Any:
        return {"deleted": await gcache.adelete(key_of(_one(query, "key"), gcache._prefix))}

    reads = {"/inspect": inspect, "/explain": explain, "/stats": stats, "/health": health}
    writes = {"/invalidate": invalidate, "/delete": delete}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope.get("path", "").rstrip("/") or "/"
        method = scope.get("method", "GET")
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        try:
            if path in reads and method == "GET":
                body = await reads[path](query)
            elif path in writes and method == "POST":
                if not allow_writes:
                    raise _Refused(403, "write operations are off (make_admin_app(allow_writes=True))")
                _authorize(scope, token or "")
                body = await writes[path](query)
            else:
                raise _Refused(404, f"no {method} {path}")
            status = 200
        except _Refused as refused:
            status, body = refused.status, {"error": str(refused)}
        except (ValueError, ConfigError) as exc:
            status, body = 400, {"error": str(exc)}
        except (redis.RedisError, OSError, GCacheError) as exc:
            status, body = 502, {"error": f"Redis failed: {exc}"}
        payload = json.dumps(body, default=repr).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    return app


def _one(query: dict[str, list[str]], name: str) -> str:
    values = query.get(name)
    if not values or not values[0]:
        raise ValueError(f"missing query parameter {name!r}")
    return values[0]


def _named_now(config: RedisConfig) -> dict[str, Any]:
    """The master the sentinels name when asked now (``named_now``; None and ``ask_error`` when
    none answers), each asked within the connect bound."""
    manager = sentinel.sentinel_manager(config, asynchronous=False)
    try:
        host, port = manager.discover_master(config.service_name)
    except redis.RedisError as exc:
        return {"named_now": None, "ask_error": str(exc)}
    finally:
        for connection in manager.sentinels:
            connection.close()
    return {"named_now": f"{host}:{port}"}


def _authorize(scope: Scope, token: str) -> None:
    given = dict(scope.get("headers") or ()).get(b"authorization", b"").decode("latin-1")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        raise _Refused(401, "a write needs Authorization: Bearer <the admin token>")
