# mypy: ignore-errors
"""Run by the ORIGINAL gcache's python (``tests._pypi.original_python``), never by ours.

One batch a process, JSON in on stdin and out on stdout, so the interop tests start one
subprocess per original version. It drives the original's own ``RedisCache`` (``put``,
``get``, ``invalidate``) against a stub client that records what would go to Redis and
answers reads with the bytes the test sent, and its pure decoders where it has them, so what
is compared is what the released library really writes, reads and serves.

Started with ``python -I``: neither this directory nor ``PYTHONPATH`` is on its path, so
``gcache`` here is the original. Its modules are imported by name because mypy, checking
this repository, would resolve them to ours.
"""

from __future__ import annotations

import asyncio
import base64
import importlib
import json
import sys
import time
from typing import Any

__all__: list[str] = []

FALLBACK = "<fallback>"


class StubRedis:
    """What ``RedisCache`` needs of a client: reads answered from the request, writes recorded."""

    def __init__(self, value: bytes | None = None, watermark: bytes | None = None) -> None:
        self.value = value
        self.watermark = watermark
        self.writes: list[tuple[str, int, Any]] = []

    async def get(self, key: str) -> bytes | None:
        return self.value

    async def mget(self, *keys: str) -> list[bytes | None]:
        return [self.value, self.watermark]

    async def setex(self, key: str, ttl: int, value: Any) -> None:
        self.writes.append((key, ttl, value))

    async def delete(self, key: str) -> int:
        return 1


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _wire(value: Any) -> Any:
    """A payload as JSON: bytes tagged, everything else as it is."""
    return {"b64": _b64(value)} if isinstance(value, bytes) else value


def _unwire(value: Any) -> Any:
    return base64.b64decode(value["b64"]) if isinstance(value, dict) and set(value) == {"b64"} else value


def main() -> None:
    request = json.load(sys.stdin)
    config = importlib.import_module("gcache.config")
    state = importlib.import_module("gcache._internal.state")._GLOBAL_GCACHE_STATE
    redis_cache = importlib.import_module("gcache._internal.redis_cache")
    importlib.import_module("gcache._internal.metrics").GCacheMetrics.initialize()
    has_envelopes = hasattr(config, "Envelope")

    class Passthrough(config.Serializer):
        async def dump(self, obj: Any) -> Any:
            return obj

        async def load(self, data: Any) -> Any:
            return data

    def key(spec: dict[str, Any], ttl: int = 60) -> Any:
        state.urn_prefix = spec.get("urn_prefix", "urn")
        kwargs: dict[str, Any] = {}
        envelope = spec.get("envelope", "pickle")
        if has_envelopes:
            kwargs["envelope"] = config.Envelope(envelope)
        if envelope != "pickle":
            kwargs["serializer"] = Passthrough()
        return config.GCacheKey(
            key_type=spec.get("key_type", "kt"),
            id=spec.get("id", "i"),
            use_case=spec.get("use_case", "u"),
            args=[tuple(pair) for pair in spec.get("args", [])],
            invalidation_tracking=spec.get("tracked", False),
            default_config=config.GCacheKeyConfig.enabled(ttl),
            **kwargs,
        )

    async def no_config(_key: Any) -> None:
        return None

    def cache(client: StubRedis) -> Any:
        return redis_cache.RedisCache(no_config, lambda: client)

    async def run() -> dict[str, Any]:
        sections = ("keys", "watermarks", "encoded", "served", "decoded", "diverges")
        out: dict[str, Any] = {name: [] for name in sections}
        for spec in request.get("keys", []):
            built = key(spec)
            out["keys"].append({"prefix": built.prefix, "urn": built.urn})
        for spec in request.get("invalidate", []):
            client = StubRedis()
            state.urn_prefix = spec["urn_prefix"]
            before = time.time() * 1000
            await cache(client).invalidate(spec["key_type"], spec["id"], spec["future_buffer_ms"])
            (name, ttl, value) = client.writes[0]
            out["watermarks"].append({"key": name, "ttl": ttl, "value": str(value), "before_ms": before})
        for spec in request.get("encode", []):
            client = StubRedis()
            before = int(time.time() * 1000)
            await cache(client).put(key(spec, spec["ttl"]), _unwire(spec["payload"]))
            after = int(time.time() * 1000)
            (name, ttl, value) = client.writes[0]
            out["encoded"].append(
                {"key": name, "ttl": ttl, "b64": _b64(value), "before": before, "after": after}
            )
        for spec in request.get("read", []):
            raw = base64.b64decode(spec["b64"])
            watermark = spec.get("watermark")
            client = StubRedis(raw, None if watermark is None else watermark.encode())

            # What the original's put accepts for the key's envelope: PROTO takes bytes only.
            computed = FALLBACK.encode() if spec.get("envelope") == "proto" else FALLBACK

            async def fallback(computed: Any = computed) -> Any:
                return computed

            try:
                served = await cache(client).get(key(spec), fallback)
                out["served"].append(
                    {
                        "served": _wire(served),
                        "fell_back": served is computed,
                        "wrote_back": bool(client.writes),
                    }
                )
            except Exception as exc:  # 2.0.5 raises out of get on what it cannot read
                out["served"].append({"raised": type(exc).__name__})
        if has_envelopes:
            reason = importlib.import_module("gcache._internal.envelope").lone_surrogate_reason
            out["diverges"] = [reason(payload) is not None for payload in request.get("diverges", [])]
        for spec in request.get("decode", []):
            raw = base64.b64decode(spec["b64"])
            if has_envelopes:
                envelope = importlib.import_module("gcache._internal.envelope")
                value = envelope.decode(raw, allow_pickle=spec["allow_pickle"])
                expires = value.expires_at_ms
            else:
                value = __import__("pickle").loads(raw)
                expires = None
            out["decoded"].append(
                {
                    "created_at_ms": value.created_at_ms,
                    "expires_at_ms": expires,
                    "payload": _wire(value.payload),
                }
            )
        return out

    json.dump(asyncio.run(run()), sys.stdout)


if __name__ == "__main__":
    main()
