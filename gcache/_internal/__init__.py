"""The original gcache's private package path, kept only so that pickles cross between the two.

The original pickles its Redis entries as ``gcache._internal.redis_cache.RedisValue``; a pickle
names its class by that path, so this package must exist for ours to read theirs and theirs
to read ours. Nothing else belongs here.
"""

from __future__ import annotations

__all__: list[str] = []
