"""Fixtures for the rewrite of the original gcache's suite (see README.md).

The original's suite ran one process-global ``GCache`` named ``urn:galileo:test`` on a Redis it
started, with a config provider whose answers a test changes, and read its metrics under the
``api_`` prefix (its code's default). Here the same shape is built from the project's fixtures:
the private real Redis of ``tests/conftest.py`` (``redis_url`` for gcache, ``redis_client`` for
inspecting keys, emptied before each test) and a private metrics registry per test, so no
registry is reset by hand.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from gcache import GCache, GCacheConfig, GCacheKey, GCacheKeyConfig, RedisConfig
from tests.conftest import sample

URN_PREFIX = "urn:galileo:test"
METRICS_PREFIX = "api_"  # the original's default, kept as the README's migration note says

Maker = Callable[..., GCache]


class FakeCacheConfigProvider:
    """Answers ``configs[use_case]``, or every layer on for 60 s when the use case is not set.

    Setting a use case to ``None`` makes the provider answer "no config"."""

    def __init__(self) -> None:
        self.configs: dict[str, GCacheKeyConfig | None] = {}
        self.asked: list[str] = []

    async def __call__(self, key: GCacheKey) -> GCacheKeyConfig | None:
        self.asked.append(key.use_case)
        return self.configs.get(key.use_case, GCacheKeyConfig.enabled(60))


@pytest.fixture
def provider() -> FakeCacheConfigProvider:
    return FakeCacheConfigProvider()


def cache_options(
    redis_url: str, registry: CollectorRegistry, provider: FakeCacheConfigProvider
) -> dict[str, Any]:
    """The original fixture's cache: its prefix, the provider, Redis, its metric names."""
    return {
        "cache_config_provider": provider,
        "urn_prefix": URN_PREFIX,
        "redis_config": RedisConfig(url=redis_url),
        "metrics_prefix": METRICS_PREFIX,
        "metrics_registry": registry,
    }


@pytest.fixture
def cache(
    redis_url: str, redis_client: Any, registry: CollectorRegistry, provider: FakeCacheConfigProvider
) -> Iterator[GCache]:
    """The original's ``gcache`` fixture for a sync test; closed (there is no ``__del__``)."""
    gcache = GCache(GCacheConfig(**cache_options(redis_url, registry, provider)))
    gcache.start()
    yield gcache
    gcache.close()


@pytest.fixture
def acache(
    make_cache: Maker, redis_url: str, registry: CollectorRegistry, provider: FakeCacheConfigProvider
) -> GCache:
    """The same cache for an async test, closed on the test's own event loop."""
    return make_cache(**cache_options(redis_url, registry, provider))


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """A sample of the original's metric ``name`` (without the ``api_`` prefix)."""
    return sample(registry, METRICS_PREFIX + name, **labels)
