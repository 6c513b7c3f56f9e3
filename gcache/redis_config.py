"""Where the cache's Redis is: RedisConfig, its URL checks and its client options."""

from __future__ import annotations

import contextlib
import functools
import inspect
import re
import typing
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import redis.asyncio.connection
import redis.connection

from gcache.errors import ConfigError

__all__ = ["DEFAULT_CONNECT_TIMEOUT", "RedisConfig", "mask_url", "url_db"]

_REDIS_SCHEMES = ("redis", "rediss", "unix")
_SENTINEL_HINT = dict.fromkeys(
    ("redis+sentinel", "rediss+sentinel", "sentinel"),
    " (for Redis Sentinel give RedisConfig(sentinels=[(host, port), ...], service_name=...))",
)

# The parts a URL also names: given with a url, they would be silently ignored.
_URL_PARTS = ("host", "port", "db", "username", "password", "protocol")
# Query options gcache sets itself on every client: redis-py lets a URL's win over them, so one in
# the URL would silently replace gcache's (a 50 ms lookup deadline by the URL's socket_timeout).
_OWNED_OPTIONS = {
    "decode_responses": "gcache stores binary envelopes and needs decode_responses=False",
    "socket_timeout": "gcache sets each client's socket_timeout to its deadline; give "
    "GCacheConfig(read_timeout_sec=..., write_timeout_sec=...) and "
    "RedisConfig(redis_py_options={'socket_timeout': ...}) for management operations",
    "max_connections": "give RedisConfig(max_connections=...)",
    "timeout": "the wait for a pooled connection is RedisConfig(pool_timeout=...)",
}

_PART_DEFAULTS: dict[str, Any] = {"host": "localhost", "port": 6379}

# How long opening a connection may take, unless redis_py_options say otherwise (and a factory's
# client that names no bound: see remote.clients).
DEFAULT_CONNECT_TIMEOUT = 1.0

_DEFAULT_REDIS_OPTIONS: dict[str, Any] = {
    "socket_connect_timeout": DEFAULT_CONNECT_TIMEOUT,
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
        ConfigError: an unparsable URL, an unknown scheme, a port out of range, db on a cluster;
            a URL query option redis-py does not take, or a value its URL parser refuses, or one
            gcache sets itself (``socket_timeout``, ``max_connections``, ``timeout``,
            ``decode_responses``); a url given with host, port, db, username, password,
            protocol or ``tls=True`` (for a non-``rediss://`` url), which the url would override;
            ``cluster_nodes`` without ``cluster=True``, or an entry that is not ``host:port``;
            for Sentinel, see :meth:`_validate_sentinels`.

    With ``sentinels`` (``[(host, port), ...]``) and ``service_name``, the master is the one
    those Redis Sentinels name, asked again whenever a connection opens: ``username``,
    ``password``, ``db`` and ``tls`` are the data nodes' (primary and replicas),
    ``sentinel_username``, ``sentinel_password`` and ``sentinel_tls`` the sentinels'. ``url``
    is then filled as ``redis://<login>@<service_name>/<db>`` (``rediss://`` with ``tls``), the
    service in place of a host: it names no server, and is refused when given.
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
    cluster_nodes: Sequence[str] = ()
    url: str | None = None
    max_connections: int = 64
    pool_timeout: float = 1.0
    redis_py_options: dict[str, Any] = field(default_factory=lambda: dict(_DEFAULT_REDIS_OPTIONS))
    sentinels: Sequence[tuple[str, int]] | None = None
    service_name: str = ""
    sentinel_username: str = ""
    sentinel_password: str = ""
    sentinel_tls: bool = False

    def __post_init__(self) -> None:
        if self.sentinels is not None or self.service_name:
            self._validate_sentinels()
        elif self.sentinel_username or self.sentinel_password or self.sentinel_tls:
            raise ConfigError(
                "RedisConfig: sentinel_username, sentinel_password and sentinel_tls are the "
                "sentinels' login and TLS; give them with sentinels=[(host, port), ...] and service_name"
            )
        if self.url is None:
            self._validate_parts()
            scheme = "rediss" if self.tls else self.protocol
            auth = ""
            if self.username or self.password:
                auth = f"{quote(self.username, safe='')}:{quote(self.password, safe='')}@"
            if self.sentinels is not None:  # the service stands for the host: see the docstring
                self.url = f"{scheme}://{auth}{quote(self.service_name, safe='')}/{self.db}"
                return
            host = f"[{self.host}]" if ":" in self.host else self.host
            self.url = f"{scheme}://{auth}{host}:{self.port}/{self.db}"
        else:
            self._refuse_parts_with_url()
            self._validate_url(self.url)
        self._validate_cluster_nodes()
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

    def _validate_cluster_nodes(self) -> None:
        """``cluster_nodes``: ``"host:port"`` texts (a list is taken), only with ``cluster=True``."""
        nodes = self.cluster_nodes
        if isinstance(nodes, str) or not isinstance(nodes, (list, tuple)):
            raise ConfigError(f"RedisConfig.cluster_nodes must be a list of 'host:port' texts, got {nodes!r}")
        self.cluster_nodes = tuple(nodes)
        if nodes and not self.cluster:
            raise ConfigError("RedisConfig.cluster_nodes names seed nodes of a cluster: give cluster=True")
        if nodes and (self.url or "").startswith("unix:"):
            raise ConfigError(
                "RedisConfig.cluster_nodes: a Redis Cluster is not reached over a unix:// socket"
            )
        for node in self.cluster_nodes:
            _cluster_address(node)

    def cluster_seeds(self) -> list[tuple[str, int]]:
        """Where a cluster client starts discovering the topology: the URL's node, then
        ``cluster_nodes`` (each with the URL's credentials and TLS)."""
        parts = urlsplit(self.url or "")
        seeds = [(parts.hostname or "localhost", parts.port or 6379)]
        for node in self.cluster_nodes:
            address = _cluster_address(node)
            if address not in seeds:
                seeds.append(address)
        return seeds

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

    def _validate_sentinels(self) -> None:
        """Sentinel's own checks.

        Raises:
            ConfigError: a service_name without sentinels or the reverse; sentinels that are not
                a non-empty list of (host, port) pairs; with ``cluster=True``; with a ``url``,
                or ``host`` or ``port`` (the sentinels name the master).
        """
        sentinels = self.sentinels
        if sentinels is None:
            raise ConfigError(
                f"RedisConfig: service_name={self.service_name!r} names a Sentinel service; give the "
                "sentinels too: sentinels=[(host, port), ...]"
            )
        if isinstance(sentinels, (str, bytes)) or not isinstance(sentinels, Sequence) or not sentinels:
            raise ConfigError(
                f"RedisConfig.sentinels must be a non-empty list of (host, port) pairs, got {sentinels!r}"
            )
        for index, entry in enumerate(sentinels):
            host, port = entry if isinstance(entry, (tuple, list)) and len(entry) == 2 else ("", 0)
            if (
                not isinstance(host, str)
                or not host
                or isinstance(port, bool)
                or not isinstance(port, int)
                or not 0 < port < 65536
            ):
                raise ConfigError(
                    f"RedisConfig.sentinels[{index}] must be a (host, port) pair with a non-empty host "
                    f"and a port from 1 to 65535, got {entry!r}"
                )
        self.sentinels = [(host, port) for host, port in sentinels]
        if not isinstance(self.service_name, str) or not self.service_name:
            raise ConfigError(
                "RedisConfig.service_name must name the master the sentinels monitor (their "
                f"`sentinel monitor <name> ...`), got {self.service_name!r}"
            )
        if self.cluster:
            raise ConfigError(
                "RedisConfig: sentinels and cluster=True were both given; a Redis Cluster fails over "
                "by itself: give cluster=True and a node's url, or sentinels without cluster"
            )
        if self.url is not None:
            raise ConfigError(
                f"RedisConfig: url {mask_url(self.url)!r} and sentinels were both given; the url names "
                "one server, the sentinels name the master: give the data nodes' username, password, "
                "db and tls as fields, without a url"
            )
        given = [
            f"{name}={getattr(self, name)!r}"
            for name in ("host", "port")
            if getattr(self, name) != _PART_DEFAULTS[name]
        ]
        if given:
            raise ConfigError(
                f"RedisConfig: {', '.join(given)} and sentinels were both given; the sentinels name "
                "the master's address: leave host and port out"
            )

    def _refuse_parts_with_url(self) -> None:
        given = []
        for part in fields(self):
            if (
                part.name in _URL_PARTS
                and part.default is not MISSING
                and getattr(self, part.name) != part.default
            ):
                given.append(
                    f"{part.name}={getattr(self, part.name)!r}" if part.name != "password" else "password"
                )
        if self.tls and not (self.url or "").startswith("rediss://"):
            given.append("tls=True")
        if given:
            raise ConfigError(
                f"RedisConfig: url {mask_url(self.url or '')!r} and {', '.join(given)} were both given; the "
                "url would win and the rest be ignored: give the url alone (put the port, db, login "
                "in it, rediss:// for TLS), or the parts without a url"
            )

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
                f"RedisConfig.url {shown!r} has scheme {parts.scheme!r}; expected redis://, rediss:// or "
                "unix://" + _SENTINEL_HINT.get(parts.scheme, "")
            )
        if parts.scheme == "unix":
            if not parts.path:
                raise ConfigError(f"RedisConfig.url {shown!r} names no socket path")
            _validate_query(url, parts.scheme, shown)
            return
        if not parts.hostname:
            raise ConfigError(f"RedisConfig.url {shown!r} names no host")
        if port is not None and port == 0:
            raise ConfigError(f"RedisConfig.url {shown!r} has port 0")
        db = parts.path.lstrip("/")
        if db and not db.isdigit():
            raise ConfigError(f"RedisConfig.url {shown!r}: database {db!r} is not a number")
        _validate_query(url, parts.scheme, shown)

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for redis-py's ``from_url`` (TLS settings, then redis_py_options)."""
        options: dict[str, Any] = {}
        if self.tls or (self.url or "").startswith("rediss://"):
            options.update(self._tls_options())
        options.update(self.redis_py_options)
        options["decode_responses"] = False  # values are binary envelopes
        return options

    def node_login(self) -> dict[str, Any]:
        """With sentinels, the data nodes' login and database, as redis-py keywords."""
        login: dict[str, Any] = {"db": self.db}
        if self.username:
            login["username"] = self.username
        if self.password:
            login["password"] = self.password
        return login

    def sentinel_options(self) -> dict[str, Any]:
        """redis-py keywords for the connections to the sentinels: their login and TLS, and
        ``socket_connect_timeout`` as both timeouts (asking a sentinel is part of opening a
        connection, which that bound covers)."""
        bound = self.redis_py_options.get(
            "socket_connect_timeout", _DEFAULT_REDIS_OPTIONS["socket_connect_timeout"]
        )
        options: dict[str, Any] = {"socket_connect_timeout": bound, "socket_timeout": bound}
        if self.sentinel_username:
            options["username"] = self.sentinel_username
        if self.sentinel_password:
            options["password"] = self.sentinel_password
        if self.sentinel_tls:
            options.update(ssl=True, **self._tls_options())
        return options

    def _tls_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"ssl_cert_reqs": self.ssl_cert_reqs}
        # Passed on every redis-py version: 5.x left it off, so any CA-signed certificate
        # passed for any host. Python refuses it without certificate checks.
        options["ssl_check_hostname"] = self.ssl_check_hostname and self.ssl_cert_reqs == "required"
        for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
            if getattr(self, name) is not None:
                options[name] = getattr(self, name)
        return options

    def __repr__(self) -> str:
        if self.sentinels is not None:
            return (
                f"RedisConfig(url={mask_url(self.url or '')!r}, sentinels={self.sentinels!r}, "
                f"service_name={self.service_name!r})"
            )
        return f"RedisConfig(url={mask_url(self.url or '')!r}, cluster={self.cluster})"


_CONNECTION_CLASSES = {
    "redis": (redis.connection.Connection, redis.asyncio.connection.Connection),
    "rediss": (redis.connection.SSLConnection, redis.asyncio.connection.SSLConnection),
    "unix": (
        redis.connection.UnixDomainSocketConnection,
        redis.asyncio.connection.UnixDomainSocketConnection,
    ),
}


def _keywords(cls: type, text_only: bool = False) -> set[str]:
    """The keyword parameters of ``cls``'s constructors along its MRO (it passes ``**kwargs`` on);
    with ``text_only``, those whose annotation admits a ``str`` (what a URL can give)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = vars(klass).get("__init__")
        if init is None:
            continue
        for parameter in inspect.signature(init).parameters.values():
            if parameter.kind not in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY):
                continue
            if not text_only or _admits_text(parameter.annotation):
                names.add(parameter.name)
    names.discard("self")
    return names


def _admits_text(annotation: Any) -> bool:
    if isinstance(annotation, str):  # a postponed annotation
        return re.search(r"\bstr\b", annotation) is not None
    return annotation is str or str in typing.get_args(annotation)


@functools.cache
def accepted_query_options(scheme: str) -> frozenset[str]:
    """The URL query options redis-py takes for ``scheme``, on both its sync and asyncio clients
    (gcache builds both) take: the parameters of the scheme's connection classes and of the
    blocking pools that are either converted by its URL parser (``URL_QUERY_ARGUMENT_PARSERS``)
    or text, which it hands on as it is (``client_name``, ``ssl_cert_reqs``, ...; the asyncio
    classes' annotations tell which take text). Read from the installed redis-py, so it follows
    its version."""
    sync_class, async_class = _CONNECTION_CLASSES[scheme]
    sync_pool, async_pool = redis.connection.BlockingConnectionPool, redis.asyncio.BlockingConnectionPool
    taken = (_keywords(sync_class) | _keywords(sync_pool)) & (_keywords(async_class) | _keywords(async_pool))
    parsed = set(redis.connection.URL_QUERY_ARGUMENT_PARSERS) & set(
        redis.asyncio.connection.URL_QUERY_ARGUMENT_PARSERS
    )
    text = _keywords(async_class, text_only=True)
    return frozenset(taken & (parsed | text) - set(_OWNED_OPTIONS))


def _validate_query(url: str, scheme: str, shown: str) -> None:
    """Each query option is one redis-py takes, with a value its URL parser converts."""
    query = urlsplit(url).query
    if not query:
        return
    accepted = accepted_query_options(scheme)
    for name in parse_qs(query, keep_blank_values=True):
        if name in _OWNED_OPTIONS:
            raise ConfigError(
                f"RedisConfig.url {shown!r}: query option {name!r} would override gcache's own: "
                f"{_OWNED_OPTIONS[name]}"
            )
        if name not in accepted:
            raise ConfigError(
                f"RedisConfig.url {shown!r}: unknown query option {name!r}; redis-py "
                f"{redis.__version__} takes: {', '.join(sorted(accepted))}"
            )
    for parse_url in (redis.connection.parse_url, redis.asyncio.connection.parse_url):
        try:
            parse_url(url)
        except (TypeError, ValueError) as exc:  # "Invalid value for 'socket_timeout' in connection URL."
            raise ConfigError(f"RedisConfig.url {shown!r}: {exc}") from None


def _cluster_address(node: object) -> tuple[str, int]:
    """A ``cluster_nodes`` entry as (host, port): ``"host:port"``, ``"[v6 address]:port"``."""
    if not isinstance(node, str):
        raise ConfigError(f"RedisConfig.cluster_nodes: {node!r} is not a 'host:port' text")
    host, colon, port = node.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f"RedisConfig.cluster_nodes: {node!r} is not 'host:port' with a port from 1 to 65535"
        )
    return host, int(port)


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
