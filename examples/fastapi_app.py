"""A FastAPI service with gcache, as the README's "Web frameworks" section sets one up.

    REDIS_URL=redis://localhost:6379/0 GCACHE_SIGNING_KEYS=... uvicorn examples.fastapi_app:app
    gunicorn -w 4 -k uvicorn_worker.UvicornWorker examples.fastapi_app:app

Users live in SQLite (``EXAMPLE_DB``, a file so that every worker shares it). Reads are cached
(a function with ``@gcache.cached``, and a whole page with ``cached_route``); a write changes the
row and invalidates the user with ``@gcache.invalidates``, in every worker. ``CacheMiddleware``
turns caching on per request and closes the cache at shutdown; ``/metrics`` serves Prometheus.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from gcache import GCache, GCacheConfig, GCacheKeyConfig, RedisConfig, make_metrics_app
from gcache.web import CacheMiddleware
from gcache.web.routes import cached_route

DB = os.environ.get("EXAMPLE_DB", "example.sqlite3")
USERS = GCacheKeyConfig.enabled(300)  # LOCAL and REMOTE; invalidation, not the TTL, ends an entry

gcache = GCache(GCacheConfig(redis_config=RedisConfig(url=os.environ["REDIS_URL"]), urn_prefix="example"))


def database() -> sqlite3.Connection:
    connection = sqlite3.connect(DB, timeout=10)
    connection.execute("CREATE TABLE IF NOT EXISTS users (id TEXT PRIMARY KEY, name TEXT NOT NULL)")
    return connection


@gcache.cached(key_type="user_id", id_arg="user_id", track_for_invalidation=True, default_config=USERS)
def load_user(user_id: str) -> dict[str, str] | None:
    with database() as db:
        row = db.execute("SELECT id, name FROM users WHERE id = ?", (user_id,)).fetchone()
    return None if row is None else {"id": row[0], "name": row[1]}


@gcache.invalidates("user_id", "user_id")
def save_user(user_id: str, name: str) -> None:
    with database() as db:
        db.execute("INSERT INTO users (id, name) VALUES (?, ?) ON CONFLICT(id) DO UPDATE SET name = ?",
                   (user_id, name, name))  # fmt: skip


class User(BaseModel):
    name: str


api = FastAPI()
api.add_route("/metrics", make_metrics_app())


@api.get("/users/{user_id}")
def get_user(user_id: str) -> dict[str, Any]:
    user = load_user(user_id)
    if user is None:
        raise HTTPException(404, "no such user")
    return {**user, "worker": os.getpid()}


@api.get("/pages/users/{user_id}")
@cached_route(gcache, key_type="user_id", id_param="user_id", default_config=USERS)
def user_page(user_id: str) -> dict[str, Any]:
    user = load_user(user_id)
    if user is None:
        raise HTTPException(404, "no such user")
    return {"title": f"{user['name']}'s page", "rendered_by": os.getpid()}


@api.put("/users/{user_id}")
def put_user(user_id: str, user: User) -> dict[str, str]:
    save_user(user_id, user.name)  # returns once every worker will serve the new name
    return {"id": user_id, "name": user.name}


app = CacheMiddleware(api, gcache)
