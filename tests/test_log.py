"""Logging as a library should (issue 19): a NullHandler on the ``gcache`` logger, each warning one
line with the exception's summary (and its cause's), its traceback only at DEBUG, and the end of
trouble at INFO, rate-limited as warnings are."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from gcache import CacheLayer, GCache, GCacheKeyConfig, RedisConfig
from gcache._log import ErrorLog, summary
from gcache.errors import RemoteError
from tests.behaviour.test_fail_open import refused_url

REMOTE_ONLY = GCacheKeyConfig(ttl_sec={CacheLayer.REMOTE: 60}, ramp={CacheLayer.REMOTE: 100})


def test_the_gcache_logger_has_a_null_handler_so_the_last_resort_is_never_used() -> None:
    handlers = logging.getLogger("gcache").handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers)


def raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def test_a_summary_is_one_line_with_its_cause() -> None:
    def chained() -> None:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except OSError as exc:
            raise ConnectionError("Error 111 connecting to 127.0.0.1:1.\nRefused.") from exc

    try:
        chained()
    except ConnectionError as exc:
        text = summary(exc)
    assert text == (
        "ConnectionError: Error 111 connecting to 127.0.0.1:1. Refused. "
        "(from ConnectionRefusedError: [Errno 111] Connection refused)"
    )
    assert summary(TimeoutError()) == "TimeoutError"  # no message: no dangling ": "
    assert summary(ValueError("x")) == "ValueError: x"

    def handling() -> None:  # raised while handling another (its __context__)
        try:
            raise KeyError("k")
        except KeyError:
            raise RuntimeError("boom") from None  # suppressed: no cause shown

    with pytest.raises(RuntimeError) as info:
        handling()
    assert summary(info.value) == "RuntimeError: boom"


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def logged() -> tuple[logging.Logger, Records]:
    logger = logging.getLogger("gcache.test_log")
    logger.propagate = False
    handler = Records()
    logger.handlers = [handler]
    return logger, handler


def test_a_traceback_only_at_debug(logged: tuple[logging.Logger, Records]) -> None:
    logger, handler = logged
    errors = ErrorLog(logger, interval_sec=0)
    exc = raised(ValueError("bad"))
    logger.setLevel(logging.WARNING)
    assert errors.warning(("k",), "it failed: ValueError: bad", exc)
    logger.setLevel(logging.DEBUG)
    assert errors.warning(("k",), "it failed: ValueError: bad", exc)
    first, second = handler.records
    assert (first.exc_info, first.getMessage()) == (None, "gcache: it failed: ValueError: bad")
    assert second.exc_info is not None
    assert second.exc_info[1] is exc


def test_info_is_rate_limited_as_warnings_are(logged: tuple[logging.Logger, Records]) -> None:
    logger, handler = logged
    now = [0.0]
    errors = ErrorLog(logger, interval_sec=5, timer=lambda: now[0])
    logger.setLevel(logging.INFO)
    assert errors.info(("up",), "back")
    assert not errors.info(("up",), "back")  # a flapping Redis does not flood the log
    now[0] = 6.0
    assert errors.info(("up",), "back")
    assert [(r.levelno, r.getMessage()) for r in handler.records] == [(logging.INFO, "gcache: back")] * 2
    logger.setLevel(logging.WARNING)
    assert not errors.info(("other",), "quiet")


@pytest.mark.parametrize("level", [logging.WARNING, logging.DEBUG])
async def test_a_fail_open_warning_on_a_refused_redis(
    make_cache: Callable[..., GCache], is_async: bool, caplog: pytest.LogCaptureFixture, level: int
) -> None:
    caplog.set_level(level, logger="gcache")
    cache = make_cache(redis_config=RedisConfig(url=refused_url()), breaker_failures=0, start_bus=False)
    if is_async:

        @cache.cached(key_type="user_id", id_arg="uid", use_case="Refused", default_config=REMOTE_ONLY)
        async def aget(uid: str) -> str:
            return f"user-{uid}"

        with cache.enable():
            assert await aget("1") == "user-1"
    else:

        @cache.cached(key_type="user_id", id_arg="uid", use_case="Refused", default_config=REMOTE_ONLY)
        def sget(uid: str) -> str:
            return f"user-{uid}"

        with cache.enable():
            assert sget("1") == "user-1"
    (told,) = [r for r in caplog.records if "remote read failed" in r.getMessage()]
    message = told.getMessage()
    assert told.levelno == logging.WARNING
    assert "\n" not in message
    assert "(REMOTE): ConnectionError: Error 111 connecting to" in message
    assert "(from ConnectionRefusedError: [Errno 111] " in message
    assert message.endswith("; served uncached")
    if level == logging.DEBUG:
        assert told.exc_info is not None
        assert isinstance(told.exc_info[1], RemoteError)
    else:
        assert told.exc_info is None
