"""A primary and its replica on real redis-server processes, behind a loopback proxy that a
failover points at the promoted replica, and the lost-watermark case made on demand.

The proxy stands for what moves clients in production (a virtual IP, DNS, Sentinel): after
:meth:`Pair.fail_over` every new connection reaches the promoted replica, and the connections
open through the proxy are closed, as a dead host's would be.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import redis

from gcache._embedded_redis import Credentials, EmbeddedRedis

__all__ = ["Pair", "Proxy", "pair"]

_NO_DELAY = ("--repl-diskless-sync-delay", "0")  # a replica's first sync at once, not in 5 s


class Proxy:
    """Forwards every loopback connection on :attr:`port` to ``127.0.0.1:<backend>``."""

    def __init__(self, backend: int) -> None:
        self.backend = backend
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self._listener.settimeout(0.05)
        self.port = int(self._listener.getsockname()[1])
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.backend), timeout=2)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            server.settimeout(None)
            with self._lock:
                self._open += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):
            with suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def switch(self, backend: int) -> None:
        """New connections go to ``backend``; the open ones are closed."""
        self.backend = backend
        with self._lock:
            open_now, self._open = self._open, []
        for s in open_now:
            with suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)  # accepts no more: every socket it opened is in _open
        self.switch(self.backend)
        self._listener.close()


class Pair:
    """A primary, its replica (one set of credentials) and the proxy in front of the primary."""

    def __init__(self) -> None:
        self.credentials = Credentials()
        self.primary = EmbeddedRedis(None, *_NO_DELAY, credentials=self.credentials).start()
        replica_of = ("--replicaof", "127.0.0.1", str(self.primary.port))
        self.replica = EmbeddedRedis(None, *replica_of, *_NO_DELAY, credentials=self.credentials).start()
        self.proxy = Proxy(self.primary.port)
        self.replica_admin = redis.Redis.from_url(self.replica.admin_url, socket_timeout=5)
        self.primary_admin = redis.Redis.from_url(self.primary.admin_url, socket_timeout=5)
        deadline = time.monotonic() + 15
        while self.replica_admin.info("replication").get("master_link_status") != "up":
            assert time.monotonic() < deadline, self.replica_admin.info("replication")
            time.sleep(0.02)

    @property
    def url(self) -> str:
        """The application's URL, through the proxy."""
        return self.credentials.url(self.proxy.port)

    def synced(self) -> None:
        """Wait until the replica has every write the primary took so far."""
        assert self.primary_admin.wait(1, 5000) >= 1

    def hold_back(self) -> None:
        """Make the primary take writes the replica never receives: the replica is stopped
        (SIGSTOP) and its link closed by the primary, so nothing written from now on is in
        flight to it, not even in a socket buffer."""
        self.replica.pause()
        self.primary_admin.client_kill_filter(_type="replica")

    def fail_over(self) -> None:
        """The primary dies, the replica resumes and is promoted, the proxy follows it."""
        self.primary.kill()
        self.replica.resume()
        self.replica_admin.replicaof("NO", "ONE")
        self.proxy.switch(self.replica.port)

    def close(self) -> None:
        self.proxy.stop()
        self.replica.resume()
        for client in (self.replica_admin, self.primary_admin):
            client.close()
        self.replica.__exit__()
        self.primary.__exit__()


@contextmanager
def pair() -> Iterator[Pair]:
    p = Pair()
    try:
        yield p
    finally:
        p.close()
