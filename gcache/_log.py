"""Rate-limited logging of cache-side errors: at most one line per kind per interval."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

__all__ = ["ErrorLog"]


class ErrorLog:
    def __init__(
        self,
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
        interval_sec: float,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval_sec
        self._timer = timer
        self._last: dict[tuple[str, ...], float] = {}
        self._suppressed: dict[tuple[str, ...], int] = {}
        self._lock = threading.Lock()

    def warning(self, kind: tuple[str, ...], message: str, exc: BaseException | None = None) -> bool:
        """Log unless this kind was logged within the interval; returns whether it logged."""
        if not self._logger.isEnabledFor(logging.WARNING):
            return False
        now = self._timer()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self._interval:
                self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
                return False
            self._last[kind] = now
            suppressed = self._suppressed.pop(kind, 0)
        if suppressed:
            message = f"{message} ({suppressed} more like it since the last report)"
        self._logger.warning("gcache: %s", message, exc_info=exc)
        return True
