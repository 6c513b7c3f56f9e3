"""``GCache.health()``: what one process's failover machinery is doing now, as JSON-ready data.

Read from memory only (no Redis call), so it answers while Redis does not: the breaker, each
cluster node's breaker, the invalidation bus, the outbox and the entities it holds, and with
Sentinel the master this process's connections were last told of. The admin app serves it as
``GET /health`` (README, "Operating gcache"); the metrics say the same in aggregate, this says
which entity and which node.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from gcache.breaker import NodeState

if TYPE_CHECKING:
    from gcache.bus import InvalidationBus
    from gcache.outbox import InvalidationOutbox
    from gcache.redis_config import RedisConfig
    from gcache.remote import RemoteCache

__all__ = ["health_report"]


def health_report(
    remote: RemoteCache | None,
    bus: InvalidationBus | None,
    bus_up: bool,
    outbox: InvalidationOutbox,
    config: RedisConfig | None,
    waiting: int,
) -> dict[str, Any]:
    """The report: ``breaker``, ``node_breakers`` (a cluster's, every node known from the
    topology), ``bus``, ``outbox`` (its ``waiting`` oldest items, and how many more), and
    ``sentinel``; each ``None`` where the cache has none (no Redis, not a cluster, no Sentinel)."""
    now = time.monotonic()
    items = outbox.waiting(waiting)
    report: dict[str, Any] = {
        "breaker": None,
        "node_breakers": None,
        "bus": None,
        "outbox": {
            "depth": len(outbox),
            "capacity": outbox.capacity,
            "waiting": [
                {
                    "entity": item.entity,
                    "key_type": item.key_type,
                    "future_buffer_ms": item.buffer_ms,
                    "waiting_sec": round(now - item.queued, 3),
                }
                for item in items
            ],
            "not_shown": max(len(outbox) - len(items), 0),
        },
        "sentinel": None,
    }
    if remote is not None:
        breaker = remote.breaker
        report["breaker"] = {
            "open": breaker.is_open,
            "failures": breaker.failures,
            "threshold": breaker.threshold,
        }
        if remote.node_breakers is not None:
            states = {state.node: state for state in remote.node_breakers.states()}
            for host, port in remote.known_nodes():
                states.setdefault(f"{host}:{port}", NodeState(f"{host}:{port}", False, 0))
            report["node_breakers"] = [state._asdict() for _, state in sorted(states.items())]
        if config is not None and config.sentinels is not None:
            master = remote.sentinel_master()
            report["sentinel"] = {
                "service_name": config.service_name,
                "sentinels": [f"{host}:{port}" for host, port in config.sentinels],
                "master": None if master is None else f"{master[0]}:{master[1]}",
            }
    if bus is not None:
        report["bus"] = {
            "subscribed": bus_up,
            "server": bus.server,
            "connections": bus.connections,
            "last_error": bus.last_error,
            "down_sec": round(bus.down_sec(), 3),
        }
    return report
