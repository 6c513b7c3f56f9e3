"""A real Redis Cluster on loopback for tests: primaries and their replicas, each a redis-server
process of :mod:`gcache._embedded_redis`, built with ``redis-cli --cluster create``.

The nodes share one set of credentials: gcache logs in to every node with its URL's, as the
application user; the harness as the admin. With replicas, :meth:`Cluster.kill` and the helpers
after it make the faults of the failover tests: a primary killed, a replica's resync held back
before a takeover, a slot migrated key by key.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import redis
from redis.crc import key_slot

from gcache._embedded_redis import ADMIN_USER, Credentials, EmbeddedRedis, find_redis_server

__all__ = ["Cluster", "cluster", "redis_cli"]

_NO_DELAY = ("--repl-diskless-sync-delay", "0")  # a replica's first sync at once, not in 5 s


def redis_cli() -> str:
    found = shutil.which("redis-cli")
    if found:
        return found
    bundled = find_redis_server().replace("redis-server", "redis-cli")
    if shutil.which(bundled):
        return bundled
    raise FileNotFoundError("no redis-cli to create the cluster with")


class Cluster:
    """``primaries`` primaries with ``replicas`` replicas each (``redis-cli`` assigns them).

    ``node_timeout_ms`` is the cluster's ``cluster-node-timeout``: how long a primary may be
    silent before its replica is promoted (about twice that in practice). ``full_coverage``:
    ``cluster-require-full-coverage`` (Redis's default, yes: while any slot has no live primary,
    every node answers CLUSTERDOWN for every key).
    """

    def __init__(
        self, primaries: int = 3, replicas: int = 1, node_timeout_ms: int = 2000, full_coverage: bool = True
    ) -> None:
        self.credentials = Credentials()
        self.nodes = [
            EmbeddedRedis(
                None,
                "--cluster-node-timeout",
                str(node_timeout_ms),
                "--cluster-require-full-coverage",
                "yes" if full_coverage else "no",
                *_NO_DELAY,
                cluster=True,
                credentials=self.credentials,
            )
            for _ in range(primaries * (1 + replicas))
        ]
        self._replicas = replicas
        self._admins: dict[int, redis.Redis] = {}
        self._known_owners: list[EmbeddedRedis] = []  # who served slots before the last fault

    def start(self) -> Cluster:
        try:
            for node in self.nodes:
                node.start()
            subprocess.run(
                [redis_cli(), "--cluster", "create", *[f"127.0.0.1:{n.port}" for n in self.nodes],
                 "--cluster-replicas", str(self._replicas), "--cluster-yes"],
                check=True, capture_output=True, timeout=60,
                env={**os.environ, "REDISCLI_AUTH": self.credentials.admin_password},  # not in argv
            )  # fmt: skip
            self.wait_ok(alive=self.nodes)
        except BaseException:
            self.stop()
            raise
        return self

    def admin(self, node: EmbeddedRedis) -> redis.Redis:
        """An admin client of one node (kept, closed by :meth:`stop`)."""
        client = self._admins.get(node.port)
        if client is None:
            client = self._admins[node.port] = redis.Redis.from_url(node.admin_url, socket_timeout=5)
        return client

    def by_port(self, port: int) -> EmbeddedRedis:
        return next(n for n in self.nodes if n.port == port)

    def alive(self) -> list[EmbeddedRedis]:
        return [n for n in self.nodes if n.process is not None]

    def primaries(self) -> list[EmbeddedRedis]:
        """The nodes serving slots now, as a live node sees it."""
        slots = _command(self.admin(self.alive()[0]), "CLUSTER", "SLOTS")
        return [self.by_port(int(entry[2][1])) for entry in slots]

    def owner(self, key: str) -> EmbeddedRedis:
        """The primary serving ``key``'s slot now."""
        slot = key_slot(key.encode())
        for entry in _command(self.admin(self.alive()[0]), "CLUSTER", "SLOTS"):
            if int(entry[0]) <= slot <= int(entry[1]):
                return self.by_port(int(entry[2][1]))
        raise AssertionError(f"no node serves slot {slot}")

    def replica_of(self, primary: EmbeddedRedis) -> EmbeddedRedis:
        node_id = _command(self.admin(primary), "CLUSTER", "MYID")
        node_id = node_id.decode() if isinstance(node_id, bytes) else node_id
        for line in _command(self.admin(primary), "CLUSTER", "REPLICAS", node_id):
            text = line.decode() if isinstance(line, bytes) else line
            port = int(text.split()[1].split("@")[0].rsplit(":", 1)[1])
            return self.by_port(port)
        raise AssertionError(f"{primary} has no replica")

    def wait_ok(self, alive: list[EmbeddedRedis] | None = None, timeout: float = 20) -> None:
        """Until every live node reports ``cluster_state:ok`` and knows a primary per slot range."""
        deadline = time.monotonic() + timeout
        for node in alive or self.alive():
            client = self.admin(node)
            while client.cluster("info")["cluster_state"] != "ok":
                assert time.monotonic() < deadline, f"{node} did not reach cluster state ok"
                time.sleep(0.05)

    def wait_promoted(self, dead: EmbeddedRedis, timeout: float = 20) -> EmbeddedRedis:
        """Until a live node serves every slot the killed ``dead`` served; returns that node."""
        deadline = time.monotonic() + timeout
        while True:
            with suppress(redis.RedisError):
                owners = self.primaries()
                if dead not in owners:
                    self.wait_ok(timeout=max(0.1, deadline - time.monotonic()))
                    return next(n for n in owners if n not in self._known_owners)
            assert time.monotonic() < deadline, "no replica was promoted"
            time.sleep(0.05)

    def kill(self, node: EmbeddedRedis) -> None:
        """SIGKILL one node, as a crash; remembers who served slots before."""
        self._known_owners = self.primaries()
        self._admins.pop(node.port, _Closed()).close()
        node.kill()

    def hold_back(self, primary: EmbeddedRedis) -> EmbeddedRedis:
        """The primary takes writes its replica never receives: the replica stopped (SIGSTOP) and
        its link closed by the primary. Returns the replica."""
        replica = self.replica_of(primary)
        assert self.admin(primary).wait(1, 5000) >= 1  # everything up to now is there
        replica.pause()
        self.admin(primary).client_kill_filter(_type="replica")
        return replica

    def take_over(self, primary: EmbeddedRedis, replica: EmbeddedRedis) -> None:
        """The primary dies and its (held back) replica resumes and promotes itself at once,
        without the primaries' agreement (``CLUSTER FAILOVER TAKEOVER``)."""
        self._known_owners = self.primaries()
        self._admins.pop(primary.port, _Closed()).close()
        primary.kill()
        replica.resume()
        _command(self.admin(replica), "CLUSTER", "FAILOVER", "TAKEOVER")
        deadline = time.monotonic() + 20
        while self.owner_of_slots(replica) == 0:
            assert time.monotonic() < deadline, "the takeover did not happen"
            time.sleep(0.02)

    def owner_of_slots(self, node: EmbeddedRedis) -> int:
        """How many slot ranges ``node`` serves, as it sees it."""
        return sum(1 for e in _command(self.admin(node), "CLUSTER", "SLOTS") if int(e[2][1]) == node.port)

    def node_id(self, node: EmbeddedRedis) -> str:
        found = _command(self.admin(node), "CLUSTER", "MYID")
        return found.decode() if isinstance(found, bytes) else str(found)

    def set_slot(self, slot: int, state: str, node_id: str | None = None, *, on: list[EmbeddedRedis]) -> None:
        for node in on:
            _command(self.admin(node), "CLUSTER", "SETSLOT", slot, state, *([node_id] if node_id else []))

    def move_keys(self, slot: int, source: EmbeddedRedis, target: EmbeddedRedis) -> int:
        """MIGRATE every key of ``slot`` from ``source`` to ``target``; returns how many."""
        client = self.admin(source)
        moved = 0
        while keys := _command(client, "CLUSTER", "GETKEYSINSLOT", slot, 100):
            _command(
                client,
                "MIGRATE", "127.0.0.1", target.port, "", 0, 5000,
                "AUTH2", ADMIN_USER, self.credentials.admin_password, "KEYS", *keys,
            )  # fmt: skip
            moved += len(keys)
        return moved

    def stop(self) -> None:
        for client in self._admins.values():
            client.close()
        self._admins.clear()
        for node in self.nodes:
            node.stop()

    def acl_denials(self) -> list[str]:
        return [line for node in self.nodes for line in node.acl_denials()]


def _command(client: redis.Redis, *args: Any) -> Any:
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


class _Closed:
    def close(self) -> None:
        pass


@contextmanager
def cluster(**options: Any) -> Iterator[Cluster]:
    """A started :class:`Cluster`; stopped on the way out."""
    c = Cluster(**options).start()
    try:
        yield c
    finally:
        c.stop()
