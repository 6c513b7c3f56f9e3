"""REMOTE: Redis access for one GCache.

Modules: :mod:`~gcache.remote.clients` (clients and pools, by kind and event loop),
:mod:`~gcache.remote.protocol` (hand-packed reads and their replies),
:mod:`~gcache.remote.batching` (one loop's concurrent reads in one write),
:mod:`~gcache.remote.scripts` (the Lua scripts), :mod:`~gcache.remote.cache` (the operations).
"""

from gcache.remote.cache import RemoteCache, Write, new_nonce
from gcache.remote.clients import ADMIN, READ, WRITE
from gcache.remote.protocol import TrackedRead

__all__ = ["ADMIN", "READ", "WRITE", "RemoteCache", "TrackedRead", "Write", "new_nonce"]
