"""The private redis-server the demo and the fault tests use: start, pause, resume, kill, restart."""

from __future__ import annotations

import os

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from gcache._embedded_redis import EmbeddedRedis, free_port


def _client(server: EmbeddedRedis) -> redis.Redis:
    # No retries: each expected failure should show at once.
    return redis.Redis(
        port=server.port, socket_timeout=0.3, socket_connect_timeout=0.3, retry=Retry(NoBackoff(), 0)
    )


def test_paused_server_hangs_and_answers_again_when_resumed() -> None:
    with EmbeddedRedis() as server:
        client = _client(server)
        try:
            assert client.ping()
            server.pause()
            with pytest.raises(redis.TimeoutError):
                client.ping()
            server.resume()
            client.connection_pool.disconnect()
            assert client.ping()
        finally:
            client.close()


def test_killed_server_refuses_and_restarts_on_the_same_port_empty() -> None:
    with EmbeddedRedis() as server:
        client = _client(server)
        try:
            client.set("k", b"v")
            pid, port = server.pid, server.port
            server.kill()
            assert server.pid is None
            with pytest.raises(redis.ConnectionError):
                client.ping()
            server.start()
            client.connection_pool.disconnect()
            assert server.port == port
            assert server.pid != pid
            assert client.get("k") is None  # no persistence
        finally:
            client.close()


def test_stop_ends_a_paused_server_by_its_pid() -> None:
    server = EmbeddedRedis().start()
    pid = server.pid
    assert pid is not None
    server.pause()
    server.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_cluster_node_port_leaves_room_for_its_bus_port() -> None:
    port = free_port(below=55536, also_free=10000)
    assert 20000 <= port < 55536
