"""Traffic: a few hot users and a long tail, from this process and a peer process."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Sequence

from prometheus_client import CollectorRegistry

from gcache import GCache, GCacheConfig, GCacheKeyConfig, RedisConfig
from gcache.demo.options import CURRENCIES, LOCAL, LOCAL_MAX_ENTRIES, REMOTE, URN_PREFIX, USER_COUNT
from gcache.demo.service import Service
from gcache.demo.source import Order, SlowSource, SourceError, User

__all__ = ["Peer", "Traffic"]

# -- traffic -----------------------------------------------------------------------------------


class Traffic:
    """Calls the service like request handlers would: a few hot users get most of the calls."""

    def __init__(self, cache: GCache, service: Service, source: SlowSource, rng: random.Random) -> None:
        self.cache = cache
        self.service = service
        self.source = source
        self.rng = rng
        self.calls: Counter[str] = Counter()  # per use case, made inside gcache.enable()
        self.uncached = 0  # calls made outside gcache.enable(): the function runs, nothing is cached
        self.source_errors = 0
        self.invalidations = 0
        self.new_user_share = 0.0  # share of calls on users never seen before (serve mode)
        self.uncached_share = 0.0  # share of calls made outside gcache.enable() (serve mode)
        self._ids = list(range(1, USER_COUNT + 1))
        self._weights = [1 / i**1.1 for i in self._ids]  # Zipf-like: user 1 is the hottest

    def pick_user(self) -> int:
        if self.new_user_share and self.rng.random() < self.new_user_share:
            return self.rng.randint(USER_COUNT + 1, 1_000_000)
        return self.rng.choices(self._ids, self._weights)[0]

    def _count(self, use_case: str) -> None:
        if self.cache.is_enabled:
            self.calls[use_case] += 1
        else:
            self.uncached += 1

    async def user(self, user_id: int) -> User:
        self._count("GetUser")
        return await self.service.get_user(user_id)

    async def orders(self, user_id: int, status: str) -> tuple[Order, ...]:
        self._count("GetOrders")
        # A sync function called from async code: in a worker thread, so the event loop is not
        # blocked. to_thread copies the context, so gcache.enable() applies there too.
        return await asyncio.to_thread(self.service.get_orders, user_id, status)

    async def rate(self, currency: str) -> float:
        self._count("GetExchangeRate")
        return await self.service.get_exchange_rate(currency)

    async def one_call(self) -> None:
        """One request: 60 % user profile, 25 % order list, 15 % exchange rate."""
        kind = self.rng.random()
        try:
            with self.cache.enable(self.rng.random() >= self.uncached_share):
                if kind < 0.60:
                    await self.user(self.pick_user())
                elif kind < 0.85:
                    await self.orders(self.pick_user(), self.rng.choice(("open", "shipped")))
                else:
                    await self.rate(self.rng.choice(CURRENCIES))
        except SourceError:
            self.source_errors += 1  # the cache passes the function's exception on, caches nothing

    async def burst(self, user_id: int, size: int) -> None:
        """``size`` concurrent calls for one user: a failing read fails them all (they share it)."""

        async def one() -> None:
            try:
                await self.user(user_id)
            except SourceError:
                self.source_errors += 1

        await asyncio.gather(*(one() for _ in range(size)))

    async def batch(self, size: int) -> None:
        """``size`` calls at once, as concurrent requests would make them."""
        await asyncio.gather(*(self.one_call() for _ in range(size)))

    async def update_plan(self, user_id: int, plan: str) -> None:
        """The write path: change the source, then invalidate every cached entry of the user."""
        self.source.set_plan(user_id, plan)
        await self.cache.ainvalidate("user_id", user_id)
        self.invalidations += 1


PEER_USE_CASE = "GetUserBadge"
PEER_CALLS_PER_BATCH = 2


class Peer:
    """Another process of the same service, played by a second GCache on the same Redis.

    It keeps its own LOCAL copies of (hot) users' badges. When the first instance invalidates a
    user, the invalidation bus (Redis pub/sub) tells this one, which drops its copies: an
    instance does not hear its own messages, it applied them before publishing.
    """

    def __init__(
        self,
        redis_url: str,
        registry: CollectorRegistry,
        traffic: Traffic,
        signing_keys: Sequence[str | bytes] | None,
    ) -> None:
        self.traffic = traffic
        self.cache = GCache(
            GCacheConfig(
                redis_config=RedisConfig(url=redis_url),
                urn_prefix=URN_PREFIX,
                metrics_registry=registry,
                local_max_entries=LOCAL_MAX_ENTRIES,
                signing_keys=signing_keys,  # the first instance's: they are one fleet
                require_signing=True,
            )
        )
        source = traffic.source

        @self.cache.cached(
            key_type="user_id",
            id_arg="user_id",
            use_case=PEER_USE_CASE,
            track_for_invalidation=True,
            default_config=GCacheKeyConfig(ttl_sec={LOCAL: 30, REMOTE: 300}, ramp={LOCAL: 100, REMOTE: 100}),
        )
        async def get_user_badge(user_id: int) -> str:
            user = await source.aread_user(user_id)
            return f"{user.name} ({user.plan})"

        self.get_user_badge = get_user_badge

    async def one_call(self) -> None:
        try:
            with self.cache.enable():
                await self.get_user_badge(self.traffic.pick_user())
        except SourceError:
            self.traffic.source_errors += 1

    async def batch(self, size: int) -> None:
        await asyncio.gather(*(self.one_call() for _ in range(size)))
