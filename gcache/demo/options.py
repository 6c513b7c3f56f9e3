"""What the demo's command line can change, and the constants every part of it shares."""

from __future__ import annotations

from dataclasses import dataclass

from gcache import CacheLayer

__all__ = ["DemoOptions", "say"]


URN_PREFIX = "urn:gcache-demo"  # its own prefix, so flushing the demo's keys touches nothing else
LOCAL_MAX_ENTRIES = 8  # small on purpose: the long tail of users is served by Redis
USER_COUNT = 40
CURRENCIES = ("EUR", "GBP", "JPY", "CHF")
NAMES = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Ken", "Margaret", "Donald", "Frances", "Niklaus")

LOCAL, REMOTE = CacheLayer.LOCAL, CacheLayer.REMOTE


def say(text: str = "") -> None:
    """Print and flush at once: the demo is often read through a pipe (tests, ``tee``)."""
    print(text, flush=True)


@dataclass
class DemoOptions:
    """What the command line can change; the defaults give a run of a few seconds."""

    calls: int = 300
    serve: bool = False
    duration: float | None = None  # with serve: stop after this many seconds
    port: int = 0  # 0: any free port
    metrics_host: str = "127.0.0.1"
    redis_url: str | None = None  # None: REDIS_URL from the environment, else an embedded server
    concurrency: int = 10
    latency_ms: float = 20.0
    seed: int = 7
