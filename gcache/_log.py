"""Rate-limited logging of cache-side errors (at most one line per kind per interval), and of
mistakes, told once each.

Logging as a library should: the ``gcache`` logger has a ``NullHandler``, so the application's
logging configuration decides where its records go (Python's last-resort handler, which prints
bare messages to stderr, is never used). Each warning is one line with the exception's summary
(:func:`summary`); its traceback is attached only when the logger is enabled for DEBUG.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

__all__ = ["LOGGER_NAME", "ErrorLog", "summary"]

LOGGER_NAME = "gcache"
logging.getLogger(LOGGER_NAME).addHandler(logging.NullHandler())

_TOLD_MAX = 1000


def _one(exc: BaseException) -> str:
    text = " ".join(str(exc).split())  # one line, whatever the message holds
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def summary(exc: BaseException) -> str:
    """``TypeName: message`` of an exception on one line, and its cause's (or the exception it
    was raised while handling) in brackets: ``ConnectionError: Error 111 connecting to ...
    (from ConnectionRefusedError: [Errno 111] Connection refused)``. A message that is empty
    leaves the type name alone."""
    text = _one(exc)
    cause = exc.__cause__
    if cause is None and not exc.__suppress_context__:
        cause = exc.__context__
    if cause is not None and _one(cause) not in text:
        text = f"{text} (from {_one(cause)})"
    return text


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

    def _due(self, kind: tuple[str, ...]) -> int | None:
        """None if this kind was logged within the interval (counted), else how many lines like
        it were held back since it was."""
        now = self._timer()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self._interval:
                self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
                return None
            self._last[kind] = now
            return self._suppressed.pop(kind, 0)

    def warning(self, kind: tuple[str, ...], message: str, exc: BaseException | None = None) -> bool:
        """Log unless this kind was logged within the interval; returns whether it logged. The
        message carries the exception's summary; ``exc``'s traceback is added at DEBUG only."""
        if not self._logger.isEnabledFor(logging.WARNING):
            return False
        suppressed = self._due(kind)
        if suppressed is None:
            return False
        if suppressed:
            message = f"{message} ({suppressed} more like it since the last report)"
        traceback = exc if exc is not None and self._logger.isEnabledFor(logging.DEBUG) else None
        self._logger.warning("gcache: %s", message, exc_info=traceback)
        return True

    def info(self, kind: tuple[str, ...], message: str) -> bool:
        """An end of trouble (breaker closed, bus subscribed again), rate-limited as warnings are
        (a flapping Redis must not flood the log); returns whether it logged."""
        if not self._logger.isEnabledFor(logging.INFO) or self._due(kind) is None:
            return False
        self._logger.info("gcache: %s", message)
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
