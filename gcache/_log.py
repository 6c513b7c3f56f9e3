"""Rate-limited logging of cache-side errors (at most one line per kind per interval), and of
mistakes, told once each."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

__all__ = ["ErrorLog"]

_TOLD_MAX = 1000


class ErrorLog:
    def __init__(
        self,
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
        interval_sec: float,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval_sec
        self.interval = interval_sec  # how long one kind of line stays quiet after it is logged
        self._timer = timer
        self._last: dict[tuple[str, ...], float] = {}
        self._suppressed: dict[tuple[str, ...], int] = {}
        self._lock = threading.Lock()
        self._told: set[tuple[str, ...]] = set()

    def after_fork_in_child(self) -> None:
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

    def once(self, kind: tuple[str, ...], message: str) -> bool:
        """Log a mistake the first time this kind is seen; returns whether it logged.

        The kinds remembered are capped (``_TOLD_MAX``); past that, lines are only rate-limited,
        so a mistake repeated with endless variations (a key type built from input) cannot grow
        memory or flood the log.
        """
        with self._lock:
            if kind in self._told:
                return False
            if len(self._told) < _TOLD_MAX:
                self._told.add(kind)
                told = True
            else:
                told = False
        if told:
            if not self._logger.isEnabledFor(logging.WARNING):
                return False
            self._logger.warning("gcache: %s", message)
            return True
        return self.warning(("told", kind[0]), message)
