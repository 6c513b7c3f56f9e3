"""What every use case of one GCache shares: the prefix, the layers, the provider, the logs."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from gcache import _fork

if TYPE_CHECKING:
    from gcache._log import ErrorLog
    from gcache._loop_thread import LoopThread
    from gcache.epochs import Epochs
    from gcache.keys import GCacheKey
    from gcache.remote import RemoteCache
    from gcache.signing import Signer
    from gcache.urns import PartHasher

__all__ = ["REFRESH", "Runtime"]

REFRESH = 2
"""The value of a GCache's enabled ContextVar inside ``gcache.refresh()``: truthy, so calls are
cached, but not True, so the wrapper sends them to read past the cache (see ``refresh``)."""


def _answer_nothing(key: GCacheKey) -> None:
    return None


class Runtime:
    """What every use case of one GCache shares: the prefix, the layers, the provider, the logs."""

    def __init__(
        self,
        *,
        prefix: str,
        enabled: ContextVar[int],
        provider: Callable[[GCacheKey], Any] | None,
        remote: RemoteCache | None,
        epochs: Epochs,
        errors: ErrorLog,
        loop_thread: LoopThread,
        config_reuse_sec: float = 0.0,
        max_value_bytes: int | None = None,
        max_key_length: int = 4096,
        signer: Signer | None = None,
        hasher: PartHasher | None = None,
        timer_sample_every: int = 1,
        legacy_compat: bool = False,
        tell_mistakes: bool = False,
    ) -> None:
        self.prefix = prefix
        # The original gcache's keys, entries and watermarks (GCacheConfig.legacy_compat)
        self.legacy_compat = legacy_compat
        # Tell (once per use case) a call outside enable() and a call with no config
        self.tell_mistakes = tell_mistakes
        self.signer = signer  # None: entries are neither signed nor checked
        self.hasher = hasher  # None: long ids and arguments are not hashed (see urns.PartHasher)
        self.config_reuse_sec = config_reuse_sec
        self.max_value_bytes = max_value_bytes
        self.max_key_length = max_key_length
        self.timer_sample_every = timer_sample_every  # gcache_get_timer: 1 lookup in N timed
        self.enabled = enabled
        self.provider = provider
        self.remote = remote
        self.epochs = epochs
        self.errors = errors
        self.loop_thread = loop_thread
        self._workers: concurrent.futures.ThreadPoolExecutor | None = None
        self._workers_lock = threading.Lock()
        self.background: set[asyncio.Future[Any]] = set()  # refreshes outliving a soft timeout

    def workers(self) -> concurrent.futures.ThreadPoolExecutor:
        """Threads for sync functions that run past a soft timeout (created on first use)."""
        with self._workers_lock:
            if self._workers is None:
                self._workers = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="gcache-refresh")
            return self._workers

    def after_fork_in_child(self) -> None:
        """The parent's refresh threads and background tasks do not exist in this process."""
        _fork.leave_untouched(self._workers)
        self._workers = None
        self._workers_lock = threading.Lock()
        self.background = set()

    def close(self) -> None:
        """After the GCache closed: calls are served uncached. A provider is set so that every
        call asks its use case's ``config``/``aconfig``, which tells a call after close (the
        drivers check nothing else on the way to LOCAL)."""
        self.provider = _answer_nothing
        with self._workers_lock:
            workers, self._workers = self._workers, None
        if workers is not None:
            workers.shutdown(wait=False)
