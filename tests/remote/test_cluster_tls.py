"""A Redis Cluster over TLS with passwords, reached through ``redis_client_factory`` (issue 14,
finding 2): the bus's own connection must be made as the cluster client's are, TLS and login
included, never as a plain one that would send ``AUTH`` in clear.

Three primaries on loopback with ``tls-cluster yes``: every node announces its TLS port, so the
cluster client (and the bus) connect there; the certificates are made for the test by openssl.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
from prometheus_client import CollectorRegistry

from gcache import CacheLayer, GCache, GCacheConfig, GCacheKeyConfig
from gcache._embedded_redis import Credentials, EmbeddedRedis, free_port
from tests._cluster import redis_cli as _redis_cli
from tests.conftest import sample, wait_until
from tests.remote.test_tls import _certificates
from tests.test_gcache import call, twin

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")

BOTH = GCacheKeyConfig.enabled(60)
LOCAL_ONLY = GCacheKeyConfig(ttl_sec={CacheLayer.LOCAL: 60}, ramp={CacheLayer.LOCAL: 100})
MESSAGES = "gcache_bus_message_counter_total"


class TlsCluster:
    def __init__(self, nodes: list[EmbeddedRedis], tls_ports: list[int], credentials: Credentials, ca: Path):
        self.nodes = nodes
        self.tls_ports = tls_ports
        self.credentials = credentials
        self.ca = ca

    def factory(self) -> Callable[[], Any]:
        """What an application would write: a TLS cluster client with the app user's login."""

        def make() -> redis.asyncio.RedisCluster:
            return redis.asyncio.RedisCluster(
                host="127.0.0.1",
                port=self.tls_ports[0],
                ssl=True,
                ssl_ca_certs=str(self.ca),
                username="gcache",
                password=self.credentials.app_password,
                socket_timeout=1.0,
            )

        return make


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsCluster]:
    ca, cert, key = _certificates(tmp_path_factory.mktemp("tls"), "IP:127.0.0.1")
    credentials = Credentials()
    tls_ports = [free_port(also_free=10000) for _ in range(3)]
    tls_options = (
        "--tls-cluster", "yes", "--tls-replication", "yes", "--tls-cert-file", str(cert),
        "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no",
    )  # fmt: skip
    nodes = [
        EmbeddedRedis(
            None,
            "--cluster-node-timeout",
            "2000",
            "--tls-port",
            str(tls_port),
            *tls_options,
            cluster=True,
            credentials=credentials,
        )
        for tls_port in tls_ports
    ]
    try:
        for node in nodes:
            node.start()
        done = subprocess.run(
            [_redis_cli(), "--tls", "--cacert", str(ca), "--cluster", "create",
             *[f"127.0.0.1:{port}" for port in tls_ports], "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, timeout=60, check=False,
            env={**os.environ, "REDISCLI_AUTH": credentials.admin_password},
        )  # fmt: skip
        if done.returncode != 0:
            pytest.skip(f"redis-cli cannot build a TLS cluster here: {done.stderr.decode()[-300:]}")
        admin = redis.Redis.from_url(nodes[0].admin_url)
        deadline = time.monotonic() + 20
        while admin.cluster("info")["cluster_state"] != "ok":
            assert time.monotonic() < deadline, "cluster did not reach state ok"
            time.sleep(0.05)
        admin.close()
        over_tls = redis.Redis(
            host="127.0.0.1",
            port=tls_ports[0],
            ssl=True,
            ssl_ca_certs=str(ca),
            password=credentials.admin_password,
        )
        slots = over_tls.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
        assert {int(entry[2][1]) for entry in slots} == set(tls_ports)  # TLS clients are sent to TLS
        over_tls.close()
        yield TlsCluster(nodes, tls_ports, credentials, ca)
    finally:
        for node in nodes:
            node.stop()


def _clients_of(cluster: TlsCluster) -> list[dict[str, Any]]:
    """Every connection of the app user on every node (admin's CLIENT LIST)."""
    found = []
    for node in cluster.nodes:
        admin = redis.Redis.from_url(node.admin_url)
        found += [c for c in admin.client_list() if c.get("user") == "gcache"]
        admin.close()
    return found


@pytest.mark.slow
async def test_the_bus_of_a_factory_tls_cluster_keeps_tls_and_login_and_carries_invalidations(
    tls_cluster: TlsCluster, is_async: bool
) -> None:
    registry = CollectorRegistry()
    reader = GCache(GCacheConfig(redis_client_factory=tls_cluster.factory(), metrics_registry=registry))
    writer = GCache(
        GCacheConfig(redis_client_factory=tls_cluster.factory(), metrics_registry=CollectorRegistry())
    )
    calls: list[str] = []

    def body(user_id: str) -> str:
        calls.append(user_id)
        return f"user {user_id} v{len(calls)}"

    fn = reader.cached(
        key_type="user_id", id_arg="user_id", use_case="TlsBus", default_config=LOCAL_ONLY,
        track_for_invalidation=True,
    )(twin("async" if is_async else "sync", body))  # fmt: skip
    try:
        assert await reader.astart(timeout=10)  # subscribed: over TLS, logged in
        assert reader._bus is not None
        assert reader._bus.connections == 1  # at the first try: no retries against a TLS port
        with reader.enable():
            assert await call(fn, "1") == "user 1 v1"
            assert await call(fn, "1") == "user 1 v1"  # LOCAL
            await writer.ainvalidate("user_id", "1")  # over the factory's cluster client
            wait_until(lambda: sample(registry, MESSAGES, direction="received") == 1, what="the invalidation")
            assert await call(fn, "1") == "user 1 v2"
        subscribers = [c for c in _clients_of(tls_cluster) if int(c.get("sub", 0)) > 0]
        assert len(subscribers) == 1  # the reader's bus, on one node, as the app user
        assert sample(registry, "gcache_error_counter_total") == 0
    finally:
        await reader.aclose()
        await writer.aclose()
