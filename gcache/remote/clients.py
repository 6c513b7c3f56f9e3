"""Redis clients for one RemoteCache: by kind of operation and, for asyncio, by event loop.

Async callers use a redis-py asyncio client, one per event loop (asyncio connections belong to
the loop that opened them). Sync callers use a redis-py sync client in their own thread; only a
``redis_client_factory`` (which returns asyncio clients) sends them through the loop thread.

With a RedisConfig each kind of operation (READ, WRITE, ADMIN) has its own client whose socket
timeout is that kind's deadline, which costs nothing per call; a factory's client is shared by
the kinds. redis-py's own retries are cut to one, at once, and only for a connection error
(redis-py 8 retries 10 times with backoff on timeouts too): a cache that waits for a failing
server only multiplies the damage, and the breaker decides when to try again. The one retry is
for pooled connections a restarted server has closed, which fail once each.

Opening a connection has its own bound, ``socket_connect_timeout`` (``RedisConfig``'s
``redis_py_options``, 1 s by default), for all of it: the TCP connect, TLS, and the handshake's
replies (AUTH, HELLO, SELECT), which redis-py reads under the socket timeout, gcache's 50 ms
lookup deadline. So the first lookups of a process are not timeouts because the connection was
slow to open, and a connection that does not open within its bound fails as a
:class:`ConnectTimeout` (an outage to the breaker, not retried), not as a lookup's
``TimeoutError`` (:func:`bounded_open`). Only while Redis is not failing: once the breaker counts a failure, a
connection opens under the operation's deadline again, so a server that accepts connections and
never answers costs its callers the lookup deadline, not the connect bound each. A factory's
client opens its connections as it was built to; the asyncio timeout gcache puts around each of
its operations allows for that opening the same way (:attr:`Connection.opening`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.retry
import redis.backoff
import redis.cluster
import redis.retry

from gcache import _fork
from gcache._log import summary
from gcache._loop_thread import LoopThread
from gcache.breaker import NodeBreakers, ShardDown
from gcache.config import RedisConfig
from gcache.redis_config import DEFAULT_CONNECT_TIMEOUT
from gcache.remote import protocol, scripts, sentinel
from gcache.remote.batching import ReadQueue

__all__ = [
    "ADMIN",
    "READ",
    "ClusterDown",
    "SlotMigrating",
    "WRITE",
    "AsyncWaitTimedPool",
    "Connection",
    "Connections",
    "ConnectTimeout",
    "WaitTimedPool",
    "bounded_open",
    "cluster_client",
    "learned_nodes",
    "no_retry",
]

READ, WRITE, ADMIN = 0, 1, 2  # kinds of operation, each with its own deadline
_perf = time.perf_counter


def retry_policy(retry_class: Any) -> Any:
    return retry_class(redis.backoff.NoBackoff(), 1, supported_errors=(redis.ConnectionError,))


def no_retry(retry_class: Any) -> Any:
    return retry_class(redis.backoff.NoBackoff(), 0)


class ConnectTimeout(redis.TimeoutError):
    """A connection did not open (TCP, TLS and handshake) within ``socket_connect_timeout``:
    counted under its own name (``gcache_error_counter{error="ConnectTimeout"}``), apart from the
    lookups that timed out; a timeout, so redis-py does not retry it (a retry would double it)."""


def _not_opened(bound: float | None, exc: BaseException) -> ConnectTimeout:
    return ConnectTimeout(f"no connection opened within {bound} s (socket_connect_timeout): {summary(exc)}")


def not_opened(conn: Connection, exc: redis.TimeoutError) -> redis.TimeoutError:
    """A factory client's connection that did not open within its own ``socket_connect_timeout``
    (redis-py's "Timeout connecting to server"): a :class:`ConnectTimeout`, as gcache's own
    clients' are; any other timeout as it is."""
    if str(exc) != "Timeout connecting to server":
        return exc
    timeout = _not_opened(conn.opening, exc)
    timeout.__cause__ = exc
    return timeout


def _connect_bound(kwargs: dict[str, Any]) -> float:
    """The bound a factory client's new connections open under, as the client was given it; when
    it was given none, RedisConfig's default, not redis-py's (5 s in redis-py 8, none before 6)."""
    bound = kwargs.get("socket_connect_timeout")
    return float(bound) if isinstance(bound, (int, float)) and bound > 0 else DEFAULT_CONNECT_TIMEOUT


def _always() -> bool:
    return True


def _deadline_back(connection: Any, term: float | None) -> None:
    """A sync connection's socket timeout (the lookup deadline) back once it is open: on the
    socket, and where its reply parser keeps a copy (restored after a read with its own timeout)."""
    connection.socket_timeout = term
    sock = connection._sock
    if sock is None:
        return
    sock.settimeout(term)
    parser = connection._parser
    if hasattr(parser, "_socket_timeout"):  # hiredis
        parser._socket_timeout = term
    buffer = getattr(parser, "_buffer", None)
    if buffer is not None and hasattr(buffer, "socket_timeout"):  # redis-py's own parsers
        buffer.socket_timeout = term


class _SyncBoundedOpen:
    """Opens under ``socket_connect_timeout``, then reads under the socket timeout again."""

    socket_timeout: float | None
    socket_connect_timeout: float | None
    _sock: Any
    patient: Callable[[], bool]  # whether Redis is not failing (the client's breaker)

    def connect(self) -> None:
        """Nothing for an open connection, as redis-py's (which gets there through its retry
        policy and :meth:`connect_check_health`: this override's own frame on every pooled
        checkout, a REMOTE hit's, cost more than its check)."""
        if not self._sock:
            super().connect()  # type: ignore[misc]

    def connect_check_health(self, *args: Any, **kwargs: Any) -> None:
        if self._sock or not self.patient():
            super().connect_check_health(*args, **kwargs)  # type: ignore[misc]
            return
        term = self.socket_timeout
        self.socket_timeout = self.socket_connect_timeout  # TCP, TLS and the handshake's replies
        try:
            super().connect_check_health(*args, **kwargs)  # type: ignore[misc]
        except redis.TimeoutError as exc:
            raise _not_opened(self.socket_connect_timeout, exc) from exc
        finally:
            _deadline_back(self, term)


class _AsyncBoundedOpen:
    """Asyncio twin of :class:`_SyncBoundedOpen` (redis-py reads each reply under a timeout of
    the connection's ``socket_timeout``: nothing else keeps a copy)."""

    socket_timeout: float | None
    socket_connect_timeout: float | None
    is_connected: bool  # redis-py's property
    patient: Callable[[], bool]

    async def connect(self) -> None:
        """Nothing for an open connection (see :meth:`_SyncBoundedOpen.connect`)."""
        if not self.is_connected:
            await super().connect()  # type: ignore[misc]

    async def connect_check_health(self, *args: Any, **kwargs: Any) -> None:
        if self.is_connected or not self.patient():
            await super().connect_check_health(*args, **kwargs)  # type: ignore[misc]
            return
        term = self.socket_timeout
        self.socket_timeout = self.socket_connect_timeout
        try:
            await super().connect_check_health(*args, **kwargs)  # type: ignore[misc]
        except redis.TimeoutError as exc:
            raise _not_opened(self.socket_connect_timeout, exc) from exc
        finally:
            self.socket_timeout = term


def bounded_open(connection_class: type, patient: Callable[[], bool]) -> type:
    """``connection_class`` (the one redis-py chose for the URL: TCP, TLS or a Unix socket) with
    the whole opening bounded by ``socket_connect_timeout`` while ``patient()`` (Redis is not
    failing; see the module's docstring). One class per client."""
    is_async = issubclass(connection_class, redis.asyncio.connection.AbstractConnection)
    mixin = _AsyncBoundedOpen if is_async else _SyncBoundedOpen
    members = {"patient": staticmethod(patient)}
    return type(f"OpenBounded{connection_class.__name__}", (mixin, connection_class), members)


class Connection:
    """A client with this module's scripts registered on it.

    Operations are ``methodcaller`` objects naming one of these attributes, so running one adds
    no Python frame to redis-py's own. With a ``read_limit``, ``get`` reads at most that many
    bytes and one more (see :func:`~gcache.remote.protocol.value_read`) and answers b"" for none.
    """

    __slots__ = (
        "announce_flush",
        "client",
        "delete",
        "get",
        "invalidate",
        "invalidate_original",
        "may_open",
        "opening",
        "ping",
        "pool",
        "read_original",
        "read_tracked",
        "read_with_ttl",
        "reads",
        "set",
        "unlock",
        "value_read",
        "write_original",
        "write_tracked",
    )

    def __init__(self, client: Any, read_limit: int | None) -> None:
        self.client = client
        # A single server's pool, for the tracked read's pipeline; None for a cluster client, whose
        # commands travel by slot (the read then runs its script).
        cluster = isinstance(client, (redis.RedisCluster, redis.asyncio.RedisCluster))
        self.pool: Any = None if cluster else getattr(client, "connection_pool", None)
        self.value_read = protocol.value_read(read_limit)
        self.get: Callable[[str], Any] = client.get if read_limit is None else _getrange(client, read_limit)
        self.set = client.set
        self.ping = client.ping
        self.read_tracked = client.register_script(scripts.READ_TRACKED)
        self.write_tracked = client.register_script(scripts.WRITE_TRACKED)
        self.invalidate = client.register_script(scripts.INVALIDATE)
        self.delete = client.register_script(scripts.DELETE)
        self.announce_flush = client.register_script(scripts.ANNOUNCE_FLUSH)
        self.read_with_ttl = client.register_script(scripts.READ_WITH_TTL)
        self.unlock = client.register_script(scripts.UNLOCK)
        # GCacheConfig(legacy_compat=True): the original gcache's watermarks (see scripts)
        self.read_original = client.register_script(scripts.READ_ORIGINAL)
        self.write_original = client.register_script(scripts.WRITE_ORIGINAL)
        self.invalidate_original = client.register_script(scripts.INVALIDATE_ORIGINAL)
        self.reads: ReadQueue | None = None  # an asyncio single-server client's (see queue_reads)
        # What an operation under an asyncio timeout of its deadline as a whole (a factory's client,
        # a cluster client: RemoteCache._arun) also allows while Redis is not failing, when
        # ``may_open()`` says it may open a connection: its bound. So the first lookups of a
        # process are not timeouts because a connection was slow to open, as a single server's
        # own connections open under that bound (bounded_open); once an operation failed, the
        # deadline alone. 0: no allowance (a single server's own clients' sockets bound reads).
        self.opening = 0.0
        self.may_open: Callable[[], bool] = _always

    def allow_opening(self, bound: float) -> Connection:
        """A cluster client: its nodes' connections open inside any operation (see ``opening``)."""
        self.opening = bound
        return self

    def allow_factory_opening(self) -> Connection:
        """A factory's client: under its own connect bound (see ``opening``); a single server's
        while its pool has no idle connection, a cluster's on every operation."""
        client = self.client
        pool = self.pool
        if pool is not None:
            kwargs = getattr(pool, "connection_kwargs", {})
            self.opening = _connect_bound(kwargs)
            if isinstance(getattr(pool, "_available_connections", None), list):  # redis-py's pools
                self.may_open = lambda: not pool._available_connections
        else:
            kwargs = getattr(client, "connection_kwargs", {})
            self.opening = _connect_bound(kwargs)
        return self

    def queue_reads(self) -> Connection:
        """Auto-pipeline this asyncio client's GETs and tracked reads (see :class:`ReadQueue`)."""
        if self.pool is not None:
            self.reads = ReadQueue(self.pool, self.value_read)
            self.get = self.reads.get
        return self

    def pack_gets(self) -> Connection:
        """Send this sync client's GETs hand-packed, as its tracked reads (see
        :func:`~gcache.remote.protocol.get`)."""
        if self.pool is not None:
            self.get = functools.partial(protocol.get, self.pool, self.value_read)
        return self


def _getrange(client: Any, limit: int) -> Callable[[str], Any]:
    """redis-py's GETRANGE of at most ``limit`` + 1 bytes, as a GET of one key (sync or async)."""
    getrange = client.getrange
    return lambda key: getrange(key, 0, limit)


class Connections:
    """The clients of one RemoteCache, opened on first use (see the module docstring).

    Args:
        redis_config: builds the clients; or
        client_factory: returns a ``redis.asyncio`` client, called once per event loop.
        loop_thread: where sync callers run async-only clients.
        deadlines: by kind (READ, WRITE, ADMIN), the socket timeout of its client (None: the
            client's own).
        pool_waits: by kind, told the seconds a caller waited for a pooled connection when none
            was free (see :class:`WaitTimedPool`).
        read_limit: the most bytes of a value a read asks for, less one (None: all of it).
    """

    def __init__(
        self,
        redis_config: RedisConfig | None,
        client_factory: Callable[[], Any] | None,
        loop_thread: LoopThread,
        deadlines: tuple[float | None, float | None, float | None],
        pool_waits: tuple[Callable[[float], None] | None, ...],
        read_limit: int | None,
    ) -> None:
        self._config = redis_config
        self._read_limit = read_limit
        self._factory = client_factory
        self._loop_thread = loop_thread
        self._deadlines = deadlines
        self._pool_waits = pool_waits  # by kind: told each wait for a pooled connection
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[Connection | None]] = (
            weakref.WeakKeyDictionary()
        )
        # The loop asked last and its connections: almost every call comes from that one loop.
        self._last: tuple[weakref.ref[asyncio.AbstractEventLoop], list[Connection | None]] | None = None
        self._sync: list[Connection | None] = [None, None, None]
        self._sync_lock = threading.Lock()

    def forget_connections(self) -> None:
        """After a fork: the parent's clients are left untouched (see :mod:`gcache._fork`), and
        this process opens its own on first use."""
        _fork.leave_untouched(*_clients(self._sync), *self._by_loop.items())
        self._sync = [None, None, None]
        self._sync_lock = threading.Lock()
        self._by_loop = weakref.WeakKeyDictionary()
        self._last = None

    def opening_patient(self) -> bool:
        """Whether a new connection may take ``socket_connect_timeout`` to open (RemoteCache:
        while its breaker counts no failure)."""
        return True

    node_breakers: NodeBreakers | None = None  # a cluster's, per node (RemoteCache sets them)

    def _node_health(self, kind: int) -> NodeBreakers | None:
        """The node breakers a kind's cluster client asks and tells: lookups' and write-backs';
        management operations are always attempted, as while the breaker is open."""
        return None if kind == ADMIN else self.node_breakers

    def known_nodes(self) -> list[tuple[str, int]]:
        """With ``RedisConfig(cluster=True)``, every node this GCache's cluster clients have
        learned from the topology: a client opened later (another event loop, the sync one, the
        probe's, the bus's) starts from all of them, not only from the URL's node, which may be
        dead by then."""
        if self._config is None or not self._config.cluster:
            return []
        loops: list[list[Connection | None]] = []
        for _ in range(3):  # another thread may add its loop's clients meanwhile: list them again
            try:
                loops = list(self._by_loop.values())
            except RuntimeError:
                continue
            break
        return learned_nodes([*_clients(self._sync), *(c for conns in loops for c in _clients(conns))])

    def _async_connection(self, kind: int) -> Connection:
        loop = asyncio.get_running_loop()
        last = self._last
        if last is not None and last[0]() is loop:
            conns = last[1]
        else:
            found = self._by_loop.get(loop)
            conns = self._by_loop[loop] = [None, None, None] if found is None else found
            self._last = (weakref.ref(loop), conns)
        conn = conns[kind]
        if conn is None:
            if self._factory is not None:  # one client per loop, shared by every kind
                conn = conns[READ] = conns[WRITE] = conns[ADMIN] = (
                    Connection(self._factory(), self._read_limit).queue_reads().allow_factory_opening()
                )
            else:
                assert self._config is not None
                conn = conns[kind] = Connection(
                    build_client(
                        self._config,
                        redis.asyncio.Redis,
                        redis.asyncio.RedisCluster,
                        AsyncWaitTimedPool,
                        retry_policy(redis.asyncio.retry.Retry),
                        self._deadlines[kind],
                        self._pool_waits[kind],
                        self.opening_patient,
                        self.known_nodes(),
                        self._node_health(kind),
                    ),
                    self._read_limit,
                ).queue_reads()
                if self._config.cluster:
                    bound = self._config.client_options().get("socket_connect_timeout")
                    conn.allow_opening(float(bound or 0))
        return conn

    def _sync_connection(self, kind: int) -> Connection:
        conn = self._sync[kind]
        if conn is None:
            with self._sync_lock:  # many threads may ask for it at once: build one client
                return self._new_sync_connection(kind)
        return conn

    def _new_sync_connection(self, kind: int) -> Connection:
        conn = self._sync[kind]
        if conn is None:
            assert self._config is not None
            conn = self._sync[kind] = Connection(
                build_client(
                    self._config,
                    redis.Redis,
                    redis.RedisCluster,
                    WaitTimedPool,
                    retry_policy(redis.retry.Retry),
                    self._deadlines[kind],
                    self._pool_waits[kind],
                    self.opening_patient,
                    self.known_nodes(),
                    self._node_health(kind),
                ),
                self._read_limit,
            ).pack_gets()
        return conn

    def sentinel_master(self) -> tuple[str, int] | None:
        """With sentinels, the master this process's connections were last told of (None: none
        opened yet, or no sentinels): read from the pools, nothing asked."""
        if self._config is None or self._config.sentinels is None:
            return None
        try:
            loops = list(self._by_loop.values())
        except RuntimeError:  # another thread added its loop's clients meanwhile: the sync ones
            loops = []
        for client in [*_clients(self._sync), *(c for conns in loops for c in _clients(conns))]:
            address = getattr(client.connection_pool, "master_address", None)
            if address is not None:
                return str(address[0]), int(address[1])
        return None

    def follow_master(self, address: tuple[str, int]) -> None:
        """Sentinel named another master (the bus asks): every pool leaves the old one, each
        asyncio pool on its own loop (see :mod:`~gcache.remote.sentinel`)."""
        for client in _clients(self._sync):
            client.connection_pool.follow(address)
        for loop, conns in list(self._by_loop.items()):
            if not loop.is_closed():
                for client in _clients(conns):
                    asyncio.run_coroutine_threadsafe(client.connection_pool.follow(address), loop)

    async def aclose_clients(self) -> None:
        """Close the clients; the ones of the running loop are closed gracefully."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        conns = self._by_loop.pop(loop) if loop is not None and loop in self._by_loop else []
        self._last = None
        for client in _clients(conns):
            await client.aclose()
        self.close_clients()

    def close_clients(self) -> None:
        """Close every client, each asyncio client on its own loop where that loop can still run."""
        for client in _clients(self._sync):
            client.close()
        self._sync = [None, None, None]
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for loop, conns in list(self._by_loop.items()):
            for client in _clients(conns):
                if loop.is_running() and loop is not current:
                    asyncio.run_coroutine_threadsafe(client.aclose(), loop).result(timeout=5)
                elif not loop.is_closed() and current is None:
                    loop.run_until_complete(client.aclose())
                else:
                    # This thread's running loop (a sync close() in async code) cannot be awaited
                    # here: close the sockets now and let the loop finish the teardown.
                    _drop_sockets(client)
        self._by_loop.clear()
        self._last = None


def _clients(conns: list[Connection | None]) -> list[Any]:
    """The distinct clients of a connection list (a factory's client fills every slot)."""
    clients: list[Any] = []
    for conn in conns:
        if conn is not None and all(conn.client is not c for c in clients):
            clients.append(conn.client)
    return clients


def build_client(
    config: RedisConfig,
    single: Any,
    cluster: Any,
    pool: Any,
    retry: Any,
    socket_timeout: float | None,
    on_wait: Callable[[float], None] | None = None,
    patient: Callable[[], bool] = lambda: True,
    seeds: Sequence[tuple[str, int]] = (),
    health: NodeBreakers | None = None,
) -> Any:
    """A client for ``config``: a blocking pool of ``max_connections`` (of connections to the
    master the sentinels name, with sentinels: :mod:`~gcache.remote.sentinel`), or a cluster
    client.

    ``socket_timeout`` (the deadline of the operations it serves) wins over the config's; a
    ``retry`` in ``redis_py_options`` wins over ``retry``. ``on_wait`` is told how long a caller
    waited for a pooled connection when none was free (single server only). While
    ``patient()``, a connection's whole opening is bounded by ``socket_connect_timeout``
    (:func:`bounded_open`). ``seeds``: a cluster's nodes to start from besides the config's
    (:func:`cluster_client`), and ``health`` its node breakers.
    """
    assert config.url is not None
    options = {"max_connections": config.max_connections, "retry": retry, **config.client_options()}
    if socket_timeout is not None:
        options["socket_timeout"] = socket_timeout
    if config.cluster:
        return cluster_client(cluster, config, options, seeds, patient, health)
    if config.sentinels is not None:
        blocking = sentinel.master_pool(config, pool, timeout=config.pool_timeout, **options)
    else:
        blocking = pool.from_url(config.url, timeout=config.pool_timeout, **options)
    blocking.connection_class = bounded_open(blocking.connection_class, patient)
    blocking.on_wait = on_wait
    return single.from_pool(blocking)


class SlotMigrating(redis.ResponseError):
    """A cluster node answered TRYAGAIN: the keys of one script are split by a slot migration
    under way. Raised at once (redis-py would retry and sleep, 110-450 ms a call); the call is
    served uncached; the node answered, so no outage."""


class ClusterDown(redis.ResponseError):
    """A cluster node answered CLUSTERDOWN (a primary failed and no replica is promoted yet):
    raised at once (redis-py sleeps 250 ms and rereads the topology in the caller's call)."""


class _SyncCluster(redis.RedisCluster):
    """redis-py's sync cluster client, limited to what fits in a caller's deadline: one MOVED or
    ASK followed and one more try (``RedisClusterRequestTTL``); only a connection error retried
    once (a timeout has spent the deadline, and CLUSTERDOWN is answered by :class:`ClusterDown`)."""

    RedisClusterRequestTTL = 3
    ERRORS_ALLOW_RETRY = (redis.ConnectionError,)  # type: ignore[assignment]
    health: NodeBreakers | None = None  # the node breakers of its RemoteCache

    def _execute_command(self, target_node: Any, *args: Any, **kwargs: Any) -> Any:
        """Each command to a node, as :class:`NodeBreakers` wants it asked and told."""
        health = self.health
        if health is None:
            return super()._execute_command(target_node, *args, **kwargs)  # type: ignore[no-untyped-call]
        node = target_node.name
        if health.skip(node):
            raise ShardDown(node)
        try:
            result = super()._execute_command(target_node, *args, **kwargs)  # type: ignore[no-untyped-call]
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            health.failure(node, exc)
            raise
        health.success(node)
        return result


class _AsyncCluster(redis.asyncio.RedisCluster):
    """The asyncio twin of :class:`_SyncCluster` (each operation is also under an asyncio
    timeout of its deadline: :class:`~gcache.remote.cache.RemoteCache`). A command that timeout
    cancels is a failure of its node."""

    RedisClusterRequestTTL = 3
    ERRORS_ALLOW_RETRY = (redis.ConnectionError,)  # type: ignore[assignment]
    health: NodeBreakers | None = None

    async def _execute_command(self, target_node: Any, *args: Any, **kwargs: Any) -> Any:
        health = self.health
        if health is None:
            return await super()._execute_command(target_node, *args, **kwargs)
        node = target_node.name
        if health.skip(node):
            raise ShardDown(node)
        try:
            result = await super()._execute_command(target_node, *args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            health.failure(node, exc)
            raise
        except asyncio.CancelledError:
            health.failure(node, TimeoutError(f"no reply from {node} within the deadline"))
            raise
        health.success(node)
        return result


_FAIL_FAST = {"TRYAGAIN": SlotMigrating, "CLUSTERDOWN": ClusterDown}


@functools.cache
def _fail_fast_parser(is_async: bool, protocol: int) -> type:
    """The reply parser redis-py would choose, answering TRYAGAIN and CLUSTERDOWN with the
    errors above, which none of redis-py's cluster handlers catch: it raises them at once."""
    from redis._parsers import (  # redis-py's parsers: only for a cluster
        _AsyncHiredisParser,
        _AsyncRESP2Parser,
        _AsyncRESP3Parser,
        _HiredisParser,
        _RESP2Parser,
        _RESP3Parser,
    )
    from redis.utils import HIREDIS_AVAILABLE

    if HIREDIS_AVAILABLE:
        base: type = _AsyncHiredisParser if is_async else _HiredisParser
    elif protocol == 3:
        base = _AsyncRESP3Parser if is_async else _RESP3Parser
    else:
        base = _AsyncRESP2Parser if is_async else _RESP2Parser
    classes = {**base.EXCEPTION_CLASSES, **_FAIL_FAST}  # type: ignore[attr-defined]
    return type(f"FailFast{base.__name__}", (base,), {"EXCEPTION_CLASSES": classes})


def cluster_client(
    cluster: Any,
    config: RedisConfig,
    options: dict[str, Any],
    seeds: Sequence[tuple[str, int]],
    patient: Callable[[], bool] = lambda: True,
    health: NodeBreakers | None = None,
) -> Any:
    """A cluster client (``cluster``: redis-py's sync or asyncio class) that discovers the
    topology from the URL's node, ``RedisConfig.cluster_nodes`` and ``seeds`` (the nodes other
    clients of this GCache learned), whichever answers first: a dead seed does not stop a client
    opened after it died. It gives up within a deadline (:class:`_SyncCluster`,
    :class:`SlotMigrating`, :class:`ClusterDown`), and its nodes' connections open under
    ``socket_connect_timeout`` while ``patient()`` (:func:`bounded_open`). ``health``: the
    per-node breakers its commands are counted on and skipped by.

    The hooks: the sync client builds each node's pool from ``connection_pool_class``, which
    it passes the connection class it chose (TLS or not); the asyncio one takes neither a pool
    nor a parser class, and makes its nodes from the connection options it shares with its
    NodesManager (one dict), its seeds from copies of them.
    """
    assert config.url is not None
    is_async = issubclass(cluster, redis.asyncio.RedisCluster)
    node_class = redis.asyncio.cluster.ClusterNode if is_async else redis.cluster.ClusterNode
    start = config.cluster_seeds()
    start += [seed for seed in seeds if seed not in start]
    others = [node_class(host, port) for host, port in start[1:]]  # the URL's node is the URL's
    parser = _fail_fast_parser(is_async, int(options.get("protocol") or 2))
    if not is_async:
        pool = _node_pool(parser, patient)
        sync: Any = _SyncCluster.from_url(
            config.url, startup_nodes=others, connection_pool_class=pool, **options
        )
        sync.health = health
        return sync
    client: Any = _AsyncCluster.from_url(config.url, startup_nodes=others, **options)
    client.health = health
    shared = client.connection_kwargs
    shared["parser_class"] = parser
    shared["connection_class"] = bounded_open(
        shared.get("connection_class", redis.asyncio.Connection), patient
    )
    for node in client.nodes_manager.startup_nodes.values():
        node.connection_kwargs["parser_class"] = parser
        node.connection_class = shared["connection_class"]
    return client


def _node_pool(parser: type, patient: Callable[[], bool]) -> type:
    """A sync cluster client's pool class for its nodes: their connections (of the class
    redis-py chose) open under the connect bound and parse replies with ``parser``."""
    bounded: dict[type, type] = {}  # made once per connection class, not once per node

    class NodePool(redis.ConnectionPool):
        def __init__(self, connection_class: type = redis.Connection, **kwargs: Any) -> None:
            if connection_class not in bounded:
                bounded[connection_class] = bounded_open(connection_class, patient)
            kwargs["parser_class"] = parser
            super().__init__(connection_class=bounded[connection_class], **kwargs)

    return NodePool


def learned_nodes(clients: Iterable[Any]) -> list[tuple[str, int]]:
    """The (host, port) of every node the cluster ``clients`` know of (their topology)."""
    found: list[tuple[str, int]] = []
    for client in clients:
        manager = getattr(client, "nodes_manager", None)
        if manager is None:
            continue
        for _ in range(3):  # another thread may refresh the topology meanwhile: read it again
            try:
                nodes = list(manager.nodes_cache.values())
            except RuntimeError:
                continue
            break
        else:
            nodes = []
        found += [(n.host, n.port) for n in nodes if (n.host, n.port) not in found]
    return found


class WaitTimedPool(redis.ConnectionPool):
    """A blocking pool of ``max_connections``, first come first served, telling ``on_wait`` how
    long a caller waited for a connection.

    redis-py's blocking pool lets a thread that just released a connection take it straight back
    while the threads woken for it are still waiting for the GIL: under a few hundred threads
    some waited past ``pool_timeout`` while others were served again and again. Here a
    connection that comes back is handed to the thread that has waited longest; a caller that
    finds none free queues behind the ones already waiting. The gate bounds the connections, so
    underneath is redis-py's plain pool (a lock and a list): its blocking pool's queue cost a sync
    REMOTE hit 6.8k instructions more. The wait has its own bound,
    ``RedisConfig.pool_timeout``; an operation's deadline (the socket timeout) starts once it
    has a connection, so it measures Redis, not the queue in front of it. Only a caller that
    had to queue is timed, so a pool that keeps up costs nothing more.
    """

    on_wait: Callable[[float], None] | None = None

    def __init__(self, *args: Any, timeout: float = 20.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeout = timeout  # the longest wait for a connection (RedisConfig.pool_timeout)
        self._free = self.max_connections  # connections (or room for one) no caller holds
        self._queue: collections.deque[threading.Event] = collections.deque()
        self._gate = threading.Lock()

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        with self._gate:
            if self._free > 0 and not self._queue:
                self._free -= 1
                turn = None
            else:
                turn = threading.Event()
                self._queue.append(turn)
        if turn is not None:
            start = _perf()
            handed = turn.wait(self.timeout)
            if not handed:
                with self._gate:
                    try:
                        self._queue.remove(turn)
                    except ValueError:  # handed a connection just as the wait ran out
                        handed = True
            if self.on_wait is not None:
                self.on_wait(_perf() - start)
            if not handed:
                raise redis.ConnectionError("No connection available.")
        try:
            return super().get_connection(*args, **kwargs)
        except BaseException:
            self._hand_on()
            raise

    def release(self, connection: Any) -> None:
        try:
            super().release(connection)
        finally:
            self._hand_on()

    def _hand_on(self) -> None:
        with self._gate:
            if self._queue:
                self._queue.popleft().set()
            else:
                self._free += 1


class AsyncWaitTimedPool(redis.asyncio.BlockingConnectionPool):
    """Asyncio twin of :class:`WaitTimedPool`."""

    on_wait: Callable[[float], None] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._free_now: Callable[[], bool] | None = getattr(self, "can_get_connection", None)

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        on_wait = self.on_wait
        free = self._free_now
        if on_wait is None or (free is not None and free()):
            return await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        start = _perf()
        try:
            return await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        finally:
            on_wait(_perf() - start)


def _drop_sockets(client: Any) -> None:
    """Close the sockets of a client whose event loop is gone (as redis-py's own ``__del__`` does)."""
    pools = [getattr(client, "connection_pool", None)]
    pools += [getattr(n, "redis_connection", None) for n in getattr(client, "get_nodes", lambda: [])()]
    for pool in pools:
        for connection in [
            *getattr(pool, "_available_connections", ()),
            *getattr(pool, "_in_use_connections", ()),
        ]:
            close = getattr(connection, "_close", None)
            if close is not None:
                with contextlib.suppress(RuntimeError):  # the loop is closed: nothing more to do
                    close()
