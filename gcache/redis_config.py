"""Where the cache's Redis is: RedisConfig, its URL checks and its client options."""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

from gcache.errors import ConfigError

__all__ = ["RedisConfig", "mask_url", "url_db"]

_REDIS_SCHEMES = ("redis", "rediss", "unix")

_DEFAULT_REDIS_OPTIONS: dict[str, Any] = {
    "socket_connect_timeout": 1.0,
    "socket_timeout": 1.0,
}


@dataclass
class RedisConfig:
    """Where the REMOTE layer lives.

    Either give ``url`` (``redis://``, ``rediss://`` for TLS, or ``unix://``), or the parts
    (host, port, db, username, password, ``tls``); ``url`` is filled from the parts when omitted.
    Each client (one per event loop, one for sync callers) has a pool of at most
    ``max_connections``; when all are busy a caller waits up to ``pool_timeout`` seconds for one
    (then the call is served uncached) instead of failing at once. ``redis_py_options`` are passed
    to the redis-py client as they are (timeouts, ...) and win over the fields.

    Raises:
        ConfigError: an unparsable URL, an unknown scheme, a port out of range, db on a cluster.
    """

    host: str = "localhost"
    port: int = 6379
    db: int = 0
    username: str = ""
    password: str = ""
    protocol: str = "redis"
    tls: bool = False
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_cert_reqs: str = "required"
    ssl_check_hostname: bool = True
    cluster: bool = False
    url: str | None = None
    max_connections: int = 64
    pool_timeout: float = 1.0
    redis_py_options: dict[str, Any] = field(default_factory=lambda: dict(_DEFAULT_REDIS_OPTIONS))

    def __post_init__(self) -> None:
        if self.url is None:
            self._validate_parts()
            scheme = "rediss" if self.tls else self.protocol
            auth = ""
            if self.username or self.password:
                auth = f"{quote(self.username, safe='')}:{quote(self.password, safe='')}@"
            host = f"[{self.host}]" if ":" in self.host else self.host
            self.url = f"{scheme}://{auth}{host}:{self.port}/{self.db}"
        else:
            self._validate_url(self.url)
        if self.cluster and (self.db != 0 or url_db(self.url or "") != 0):
            db = self.db or url_db(self.url or "")
            raise ConfigError(f"RedisConfig: a Redis Cluster has only db 0, got db={db}")
        if not isinstance(self.redis_py_options, dict):
            raise ConfigError(f"RedisConfig.redis_py_options must be a dict, got {self.redis_py_options!r}")
        if (
            isinstance(self.max_connections, bool)
            or not isinstance(self.max_connections, int)
            or self.max_connections < 1
        ):
            raise ConfigError(
                f"RedisConfig.max_connections must be an integer of 1 or more, got {self.max_connections!r}"
            )
        if (
            isinstance(self.pool_timeout, bool)
            or not isinstance(self.pool_timeout, (int, float))
            or self.pool_timeout < 0
        ):
            raise ConfigError(
                f"RedisConfig.pool_timeout must be a number of seconds >= 0, got {self.pool_timeout!r}"
            )

    def _validate_parts(self) -> None:
        for name in ("port", "db"):  # from the environment they come as text, as the original took them
            value = getattr(self, name)
            if isinstance(value, str) and value.strip().isdigit():
                setattr(self, name, int(value))
        if self.protocol not in ("redis", "rediss"):
            raise ConfigError(f"RedisConfig.protocol must be 'redis' or 'rediss', got {self.protocol!r}")
        if not self.host:
            raise ConfigError("RedisConfig.host must not be empty")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise ConfigError(f"RedisConfig.port must be an integer from 1 to 65535, got {self.port!r}")
        if isinstance(self.db, bool) or not isinstance(self.db, int) or self.db < 0:
            raise ConfigError(f"RedisConfig.db must be a non-negative integer, got {self.db!r}")

    @staticmethod
    def _validate_url(url: str) -> None:
        shown = mask_url(url)
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise ConfigError(f"RedisConfig.url {shown!r} is not a valid URL: {exc}") from exc
        if parts.scheme not in _REDIS_SCHEMES:
            raise ConfigError(
                f"RedisConfig.url {shown!r} has scheme {parts.scheme!r}; expected redis://, rediss:// or unix://"
            )
        if parts.scheme == "unix":
            if not parts.path:
                raise ConfigError(f"RedisConfig.url {shown!r} names no socket path")
            return
        if not parts.hostname:
            raise ConfigError(f"RedisConfig.url {shown!r} names no host")
        if port is not None and port == 0:
            raise ConfigError(f"RedisConfig.url {shown!r} has port 0")
        db = parts.path.lstrip("/")
        if db and not db.isdigit():
            raise ConfigError(f"RedisConfig.url {shown!r}: database {db!r} is not a number")

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for redis-py's ``from_url`` (TLS settings, then redis_py_options)."""
        options: dict[str, Any] = {}
        if self.tls or (self.url or "").startswith("rediss://"):
            options["ssl_cert_reqs"] = self.ssl_cert_reqs
            # Passed on every redis-py version: 5.x left it off, so any CA-signed certificate
            # passed for any host. Python refuses it without certificate checks.
            options["ssl_check_hostname"] = self.ssl_check_hostname and self.ssl_cert_reqs == "required"
            for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
                if getattr(self, name) is not None:
                    options[name] = getattr(self, name)
        options.update(self.redis_py_options)
        options["decode_responses"] = False  # values are binary envelopes
        return options

    def __repr__(self) -> str:
        return f"RedisConfig(url={mask_url(self.url or '')!r}, cluster={self.cluster})"


def url_db(url: str) -> int:
    """The database number a (validated) redis:// URL names, 0 when it names none."""
    parts = urlsplit(url)
    db = parts.path.lstrip("/") if parts.scheme != "unix" else ""
    return int(db) if db.isdigit() else 0


_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)


def mask_url(url: str) -> str:
    """The URL with its password replaced (``user:***@`` and ``?password=***``), for error
    messages, reprs, logs and the demo's output."""
    masked = url
    with contextlib.suppress(ValueError):  # an unparsable URL: only its query is masked
        password = urlsplit(url).password
        if password:
            masked = masked.replace(f":{password}@", ":***@", 1)
    return _QUERY_PASSWORD.sub(r"\1***", masked)
