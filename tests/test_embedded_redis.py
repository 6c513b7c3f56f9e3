"""The private redis-server the demo and the fault tests use: start, pause, resume, kill, restart,
extra server options (a full server); and the hanging listener that accepts and never answers."""

from __future__ import annotations

import os
import socket
import time

import pytest
import redis
import redis.asyncio
import redis.asyncio.retry
from redis.backoff import NoBackoff
from redis.retry import Retry

from gcache._embedded_redis import EmbeddedRedis, HangingListener, free_port


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


def test_full_server_refuses_writes_with_oom_and_accepts_them_again_when_maxmemory_raised() -> None:
    with EmbeddedRedis(None, "--maxmemory", "2mb", "--maxmemory-policy", "noeviction") as server:
        client = _client(server)
        try:
            config = client.config_get("maxmemory*")
            assert config["maxmemory"] == str(2 * 1024 * 1024)
            assert config["maxmemory-policy"] == "noeviction"
            stored = server.fill(chunk_bytes=256 * 1024)
            assert stored >= 4  # 1 MiB past the limit
            with pytest.raises(redis.exceptions.OutOfMemoryError, match="maxmemory"):
                client.set("k", b"v")
            assert client.get("k") is None
            assert client.strlen("embedded-redis:fill:0") == 256 * 1024  # reads still work
            client.config_set("maxmemory", 0)
            client.set("k", b"v")
            assert client.get("k") == b"v"
        finally:
            client.close()


def test_hanging_listener_accepts_and_never_answers() -> None:
    with HangingListener() as listener:
        assert listener.url == f"redis://127.0.0.1:{listener.port}/0"
        with socket.create_connection(("127.0.0.1", listener.port), timeout=1) as conn:
            conn.sendall(b"PING\r\n")
            conn.settimeout(0.2)
            with pytest.raises(TimeoutError):
                conn.recv(16)
        deadline = time.monotonic() + 5
        while listener.accepted < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert listener.accepted == 1


def test_redis_client_times_out_on_hanging_listener() -> None:
    with HangingListener() as listener:
        client = redis.Redis(
            port=listener.port,
            socket_timeout=0.1,
            socket_connect_timeout=1,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            started = time.monotonic()
            with pytest.raises(redis.TimeoutError):
                client.ping()
            assert time.monotonic() - started < 2  # the socket timeout, not forever
        finally:
            client.close()
        assert listener.accepted >= 1


async def test_async_redis_client_times_out_on_hanging_listener() -> None:
    with HangingListener() as listener:
        client = redis.asyncio.Redis(
            port=listener.port,
            socket_timeout=0.1,
            socket_connect_timeout=1,
            retry=redis.asyncio.retry.Retry(NoBackoff(), 0),
        )
        try:
            with pytest.raises(redis.TimeoutError):
                await client.ping()
        finally:
            await client.aclose()


def test_stop_closes_accepted_connections_and_the_port() -> None:
    listener = HangingListener().start()
    port = listener.port
    conn = socket.create_connection(("127.0.0.1", port), timeout=1)
    try:
        deadline = time.monotonic() + 5
        while listener.accepted < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        listener.stop()
        conn.settimeout(1)
        assert conn.recv(16) == b""  # closed by the listener: end of stream, not a timeout
    finally:
        conn.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    listener.stop()  # twice is harmless
