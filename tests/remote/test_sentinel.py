"""Redis Sentinel (issue 20): RedisConfig's checks, and the clients, scripts, hand-packed reads,
bus and tools through the master three real sentinels name (failovers:
``tests/behaviour/test_sentinel_failover.py``)."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio.sentinel
import redis.sentinel
from prometheus_client import CollectorRegistry

from gcache import CacheLayer, GCache, GCacheConfig, GCacheKeyConfig, RedisConfig, RemoteError
from gcache._embedded_redis import APP_USER, HangingListener
from gcache.errors import ConfigError
from gcache.inspection import inspect_entity, sync_client
from gcache.remote import ADMIN, READ, WRITE, protocol, scripts
from gcache.remote.clients import AsyncWaitTimedPool, WaitTimedPool, _AsyncBoundedOpen, _SyncBoundedOpen
from gcache.remote.sentinel import MasterClient
from gcache.urns import bus_channel
from tests.behaviour._sentinel import SERVICE, Sentinels, reader, sentinels
from tests.remote.test_tls import _certificates
from tests.test_operator import run as run_cli
from tests.web.test_admin import health as admin_health

SENTINEL_POOLS = (redis.sentinel.SentinelConnectionPool, redis.asyncio.sentinel.SentinelConnectionPool)
MANAGED = (redis.sentinel.SentinelManagedConnection, redis.asyncio.sentinel.SentinelManagedConnection)
MODES = pytest.mark.parametrize("mode", ["async", "sync"])
TRACKED = pytest.mark.parametrize("tracked", [True, False], ids=["tracked", "untracked"])
REMOTE_ONLY = GCacheKeyConfig(ttl_sec={CacheLayer.REMOTE: 300}, ramp={CacheLayer.REMOTE: 100})
ONE = [("127.0.0.1", 26379)]


@pytest.fixture(scope="module")
def sentinel_set() -> Iterator[Sentinels]:
    with sentinels() as s:
        yield s


@pytest.fixture
def clean(sentinel_set: Sentinels) -> Sentinels:
    sentinel_set.primary_admin.flushall()
    sentinel_set.synced()
    return sentinel_set


def make(config: RedisConfig, **options: Any) -> GCache:
    return GCache(GCacheConfig(redis_config=config, metrics_registry=CollectorRegistry(), **options))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"sentinels": []}, r"sentinels must be a non-empty list of \(host, port\) pairs, got \[\]"),
        ({"sentinels": "127.0.0.1:26379"}, "sentinels must be a non-empty list"),
        ({"sentinels": [("127.0.0.1",)]}, r"sentinels\[0\] must be a \(host, port\) pair"),
        ({"sentinels": [*ONE, ("", 26379)]}, r"sentinels\[1\] must be .* got \('', 26379\)"),
        ({"sentinels": [("h", 0)]}, r"sentinels\[0\] .* a port from 1 to 65535"),
        ({"sentinels": [("h", "26379")]}, r"sentinels\[0\] .*got \('h', '26379'\)"),
        ({"sentinels": ONE}, "service_name must name the master the sentinels monitor"),
        ({"service_name": "m"}, "service_name='m' names a Sentinel service; give the sentinels too"),
        ({"sentinels": ONE, "service_name": "m", "cluster": True}, "sentinels and cluster=True"),
        ({"sentinels": ONE, "service_name": "m", "url": "redis://:pw@h:6379/0"}, "url 'redis://:\\*\\*\\*@h"),
        ({"sentinels": ONE, "service_name": "m", "host": "h"}, "host='h' and sentinels were both given"),
        ({"sentinels": ONE, "service_name": "m", "port": 7000}, "port=7000 and sentinels"),
        ({"sentinel_password": "pw"}, "give them with sentinels="),
        ({"url": "redis+sentinel://h:26379/m"}, r"for Redis Sentinel give RedisConfig\(sentinels="),
    ],
)
def test_a_bad_sentinel_config_is_refused_naming_the_problem(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RedisConfig(**options)


def test_a_sentinel_config_names_the_service_in_its_url_and_masks_both_passwords() -> None:
    config = RedisConfig(
        sentinels=ONE, service_name="my master", password="data-pw", db=3, tls=True, sentinel_password="s-pw"
    )
    assert config.url == "rediss://:data-pw@my%20master/3"
    assert "data-pw" not in repr(config)
    assert "s-pw" not in repr(config)
    assert repr(config) == (
        "RedisConfig(url='rediss://:***@my%20master/3', sentinels=[('127.0.0.1', 26379)], "
        "service_name='my master')"
    )
    assert config.node_login() == {"db": 3, "password": "data-pw"}
    assert config.sentinel_options() == {
        "socket_connect_timeout": 1.0,
        "socket_timeout": 1.0,
        "password": "s-pw",
    }
    tls = RedisConfig(sentinels=ONE, service_name="m", sentinel_tls=True, ssl_ca_certs="/ca.pem")
    assert tls.sentinel_options()["ssl"] is True
    assert tls.sentinel_options()["ssl_ca_certs"] == "/ca.pem"
    assert tls.sentinel_options()["ssl_check_hostname"] is True


@MODES
@TRACKED
async def test_read_through_goes_to_the_master_the_sentinels_name(
    clean: Sentinels, mode: str, tracked: bool
) -> None:
    source = {"version": "v1", "calls": 0}
    cache = make(clean.config())
    read = reader(cache, mode, source, tracked=tracked, config=REMOTE_ONLY)  # every read REMOTE
    try:
        assert [await read("1") for _ in range(5)] == ["v1:1"] * 5
        assert source["calls"] == 1  # one miss, then REMOTE hits
        keys = set(clean.primary_admin.keys("*"))
        assert b"{urn:gcache:user_id:1}#GetUser" in keys
        assert (b"{urn:gcache:user_id:1}#watermark" in keys) is tracked
    finally:
        await cache.aclose()


async def test_the_sentinel_clients_keep_the_single_server_pools_deadlines_and_retry(
    clean: Sentinels,
) -> None:
    cache = make(
        clean.config(max_connections=7, pool_timeout=2.5), read_timeout_sec=0.03, write_timeout_sec=0.2
    )
    remote = cache._remote
    assert remote is not None
    try:
        for kind, deadline in ((READ, 0.03), (WRITE, 0.2), (ADMIN, 1.0)):
            for conn in (remote._async_connection(kind), remote._sync_connection(kind)):
                pool = conn.client.connection_pool
                assert conn.pool is pool  # the hand-packed reads use it
                assert isinstance(pool, (WaitTimedPool, AsyncWaitTimedPool))
                assert isinstance(pool, SENTINEL_POOLS)
                assert (pool.max_connections, pool.timeout, pool.service_name) == (7, 2.5, SERVICE)
                assert pool.connection_kwargs["socket_timeout"] == deadline
                retry = pool.connection_kwargs["retry"]
                assert (retry.get_retries(), retry._supported_errors) == (1, (redis.ConnectionError,))
                assert issubclass(pool.connection_class, (_SyncBoundedOpen, _AsyncBoundedOpen))
                assert issubclass(pool.connection_class, MANAGED)
        # Opened on first use, to the primary: what the sentinels name.
        sync_pool = remote._sync_connection(READ).client.connection_pool
        remote._sync_connection(READ).client.ping()
        assert sync_pool.master_address == ("127.0.0.1", clean.primary.port)
    finally:
        await cache.aclose()


def test_hand_packed_reads_work_on_the_sentinel_pool(clean: Sentinels) -> None:
    """protocol.get and the tracked read's pipeline take the pool's connections as they are."""
    clean.primary_admin.set("k", b"value")
    clean.primary_admin.hset("f", mapping={"n": b"N1", "w": b"5", "r": b"x"})
    cache = make(clean.config())
    remote = cache._remote
    assert remote is not None
    try:
        conn = remote._sync_connection(READ)
        assert protocol.get(conn.pool, conn.value_read, "k") == b"value"
        connection = conn.pool.get_connection()
        try:  # the replies are taken straight from hiredis, as on one server, where it is installed
            parser = getattr(protocol, "_HiredisParser", None)
            if parser is not None and type(connection._parser) is parser:
                assert protocol._hiredis_reader(connection, parser) is not None
        finally:
            conn.pool.release(connection)
        replies = protocol.pipelined(conn.pool, conn.value_read, "k", "f", with_ttl=True)
        assert b"value" in replies
        assert [b"N1", b"5", b"x"] in replies
    finally:
        cache.close()


@MODES
async def test_scripts_are_loaded_again_on_a_master_that_has_none(clean: Sentinels, mode: str) -> None:
    """A promoted replica has none of the scripts (Redis 7 does not replicate SCRIPT LOAD):
    NOSCRIPT loads them again, and the call is cached."""
    source = {"version": "v1", "calls": 0}
    cache = make(clean.config())
    read = reader(cache, mode, source, tracked=True, config=REMOTE_ONLY)
    try:
        assert await read("1") == "v1:1"
        sha = redis.Redis().register_script(scripts.READ_TRACKED).sha
        assert clean.primary_admin.script_exists(sha) == [True]
        clean.primary_admin.script_flush()
        clean.primary_admin.delete("{urn:gcache:user_id:1}#watermark")  # the read runs its script
        assert [await read("1") for _ in range(3)] == ["v1:1"] * 3
        assert source["calls"] == 2
        assert clean.primary_admin.script_exists(sha) == [True]
    finally:
        await cache.aclose()


async def test_the_bus_subscribes_through_the_master(clean: Sentinels) -> None:
    cache = make(clean.config())
    try:
        assert await cache.astart()
        channel = bus_channel("urn:gcache")
        assert clean.primary_admin.pubsub_numsub(channel) == [(channel.encode(), 1)]
        assert clean.replica_admin.pubsub_numsub(channel) == [(channel.encode(), 0)]
    finally:
        await cache.aclose()


def switch_listeners(s: Sentinels, skip: int | None = None) -> int:
    """Connections subscribed to ``+switch-master`` on the sentinels (but the ``skip``-th, which
    is paused), the sentinels' own aside."""
    return sum(
        1
        for i, admin in enumerate(s.sentinel_admins)
        if i != skip
        for client in admin.client_list(_type="pubsub")
        if client.get("user") == APP_USER
    )


async def until_listened(s: Sentinels, skip: int | None = None, timeout: float = 10.0) -> int:
    """Until one of the sentinels (but ``skip``) has the bus's listener; which one."""
    deadline = time.monotonic() + timeout
    while True:
        for i, admin in enumerate(s.sentinel_admins):
            if i != skip and any(c.get("user") == APP_USER for c in admin.client_list(_type="pubsub")):
                return i
        assert time.monotonic() < deadline, "no sentinel has the bus's switch-master listener"
        await asyncio.sleep(0.05)


async def test_the_switch_master_listener_leaves_a_hung_sentinel_for_the_next(
    clean: Sentinels, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sentinel that accepts and never answers (listed first) is left for the next one; the one
    it listens on then hangs (SIGSTOP): a quiet subscription's ping goes unanswered and it moves
    to another."""
    monkeypatch.setattr(MasterClient, "watch_idle_sec", 0.2)
    monkeypatch.setattr(MasterClient, "watch_answer_sec", 0.5)
    with HangingListener() as hung:
        config = clean.config()
        config.sentinels = [("127.0.0.1", hung.port), *(config.sentinels or [])]
        cache = make(config)
        try:
            assert await cache.astart()
            first = await until_listened(clean)
            assert hung.accepted >= 1  # it was tried
            clean.sentinels[first].pause()
            try:
                second = await until_listened(clean, skip=first)
                assert second != first
            finally:
                clean.sentinels[first].resume()
        finally:
            await cache.aclose()


async def test_the_bus_listens_to_a_sentinel_for_switched_masters(clean: Sentinels) -> None:
    cache = make(clean.config())
    try:
        assert await cache.astart()
        for _ in range(250):  # the listener starts with the bus's first look at the sentinels
            if switch_listeners(clean) == 1:
                break
            await asyncio.sleep(0.02)
        assert switch_listeners(clean) == 1  # one sentinel at a time
    finally:
        await cache.aclose()
    for _ in range(250):
        if switch_listeners(clean) == 0:
            break
        await asyncio.sleep(0.02)
    assert switch_listeners(clean) == 0  # closed with the GCache


def refusals(s: Sentinels, user: str) -> int:
    """Commands the sentinels' ACLs refused ``user`` so far (ACL LOG counts repeats in one entry)."""
    entries: list[dict[str, Any]] = [entry for admin in s.sentinel_admins for entry in admin.acl_log()]
    return sum(int(entry["count"]) for entry in entries if entry.get("username") == user)


async def test_a_sentinel_user_that_may_not_subscribe_leaves_the_checks(clean: Sentinels) -> None:
    """Without SUBSCRIBE on the sentinels (their ACL) the bus does not keep trying: it asks them
    every second instead, as before, and works."""
    password = "no-subscribe-" + "x" * 16
    allowed = [
        "+sentinel|get-master-addr-by-name",
        "+sentinel|masters",
        "+sentinel|sentinels",
        "+hello",
        "+ping",
    ]
    for admin in clean.sentinel_admins:
        admin.execute_command(  # type: ignore[no-untyped-call]
            "ACL", "SETUSER", "watchless", "on", f">{password}", "-@all", *allowed
        )
    config = clean.config()
    config.sentinel_username, config.sentinel_password = "watchless", password
    before = refusals(clean, "watchless")
    cache = make(config)
    try:
        assert await cache.astart()
        for _ in range(250):
            if refusals(clean, "watchless") > before:
                break
            await asyncio.sleep(0.02)
        refused = refusals(clean, "watchless")
        assert refused == before + 1  # the first sentinel's refusal ended the listening
        await asyncio.sleep(1.5)  # no retry every second
        assert refusals(clean, "watchless") == refused
        channel = bus_channel("urn:gcache")
        assert clean.primary_admin.pubsub_numsub(channel) == [(channel.encode(), 1)]  # the bus works
    finally:
        await cache.aclose()
        for admin in clean.sentinel_admins:
            admin.execute_command("ACL", "DELUSER", "watchless")  # type: ignore[no-untyped-call]


@MODES
async def test_a_wrong_sentinel_login_serves_uncached_and_management_raises(
    clean: Sentinels, mode: str
) -> None:
    source = {"version": "v1", "calls": 0}
    config = clean.config()
    config.sentinel_password = "wrong"
    cache = make(config)
    read = reader(cache, mode, source, tracked=True, config=REMOTE_ONLY)
    try:
        assert [await read("1") for _ in range(3)] == ["v1:1"] * 3  # no error reaches the caller
        assert source["calls"] == 3
        assert clean.primary_admin.dbsize() == 0
        with pytest.raises(RemoteError):
            await cache.ainvalidate("user_id", "1")
    finally:
        await cache.aclose()


async def test_closing_closes_the_sentinels_connections_too(clean: Sentinels) -> None:
    def app_connections() -> int:
        return sum(
            1 for admin in clean.sentinel_admins for c in admin.client_list() if c.get("user") == "gcache"
        )

    source = {"version": "v1", "calls": 0}
    cache = make(clean.config())
    try:
        for mode in ("async", "sync"):
            await reader(cache, mode, source, tracked=True, config=REMOTE_ONLY, use_case=mode)("1")
        assert app_connections() > 0
    finally:
        await cache.aclose()
    assert app_connections() == 0


def test_the_operator_tools_read_through_the_master(clean: Sentinels) -> None:
    clean.primary_admin.hset("{urn:gcache:user_id:1}#watermark", mapping={"n": b"N1", "w": b"5", "r": b"x"})
    client = sync_client(clean.config())
    try:
        report = inspect_entity(client, "{urn:gcache:user_id:1}")
        assert report.fence is not None
        assert client.connection_pool.master_address == ("127.0.0.1", clean.primary.port)
    finally:
        client.close()


# -- the operator's tools through the sentinels: every subcommand, and the admin app's /health ---

GET_USER_1 = "{urn:gcache:user_id:1}#GetUser"


@MODES
async def test_health_names_the_master_of_the_connections_of_the_bus_and_of_the_sentinels(
    clean: Sentinels, mode: str
) -> None:
    cache = make(clean.config())
    source = {"version": "v1", "calls": 0}
    try:
        assert cache.start()
        assert (await admin_health(cache))["sentinel"]["master"] is None  # no connection opened yet
        await reader(cache, mode, source, tracked=True, config=REMOTE_ONLY)("1")
        primary = f"127.0.0.1:{clean.primary.port}"
        report = await admin_health(cache)
        assert report["sentinel"] == {
            "service_name": SERVICE,
            "sentinels": [f"127.0.0.1:{s.port}" for s in clean.sentinels],
            "master": primary,
            "named_now": primary,
        }
        assert report["bus"]["server"] == primary
        assert "named_now" not in (await admin_health(cache, ask="0"))["sentinel"]
    finally:
        await cache.aclose()
    wrong = {**clean.config_options(), "sentinel_password": "wrong"}  # no sentinel answers it
    refused = make(RedisConfig(**wrong))
    try:
        sentinel = (await admin_health(refused))["sentinel"]
        assert (sentinel["master"], sentinel["named_now"]) == (None, None)
        assert sentinel["ask_error"].startswith(f"No master found for {SERVICE!r}")
    finally:
        await refused.aclose()


async def test_every_subcommand_works_through_the_sentinels(
    clean: Sentinels, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = make(clean.config())
    try:
        await reader(cache, "sync", {"version": "v1", "calls": 0}, tracked=True, config=REMOTE_ONLY)("1")
    finally:
        await cache.aclose()
    options = [a for s in clean.sentinels for a in ("--sentinel", f"127.0.0.1:{s.port}")]
    options += ["--service-name", SERVICE, "--username", APP_USER, "--sentinel-username", APP_USER]
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # ignored: the sentinels name the master
    monkeypatch.setenv("REDIS_PASSWORD", clean.credentials.app_password)
    monkeypatch.setenv("REDIS_SENTINEL_PASSWORD", clean.sentinel_credentials.app_password)
    primary = f"127.0.0.1:{clean.primary.port}"

    code, out, err = run_cli(capsys, "inspect", "user_id:1", *options)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[1] == f"  node: {primary}"
    assert lines[3].endswith(": the same (the fence is of this node's replication history)")
    assert lines[4].split() == ["FRESH", "GetUser"]
    code, out, err = run_cli(capsys, "stats", "--json", "--no-memory", *options)
    assert code == 0, err
    assert '"user_id GetUser": 1' in out
    assert run_cli(capsys, "invalidate", "user_id", "1", *options)[:2] == (0, "invalidated user_id 1\n")
    assert "INVALIDATED     GetUser" in run_cli(capsys, "inspect", "user_id:1", *options)[1]
    code, out, _ = run_cli(capsys, "explain", "user_id", "1", "GetUser", "--json", *options)
    assert (code, '"verdict": "invalidated"' in out) == (0, True)
    code, out, _ = run_cli(capsys, "delete", GET_USER_1, *options)
    assert (code, out) == (0, f"deleted: {GET_USER_1}\n")
    code, out, _ = run_cli(capsys, "flush", "--yes", *options)
    assert (code, out) == (0, "deleted 1 keys of prefix 'urn:gcache'\n")  # the fence was left
    assert clean.primary_admin.keys("*") == []

    monkeypatch.delenv("REDIS_SENTINEL_PASSWORD")  # the sentinels refuse the login
    code, _, err = run_cli(capsys, "inspect", "user_id:1", *options, "--sentinel-password", "wrong")
    assert code == 1
    assert f"gcache: Redis service {SERVICE!r} of the sentinels 127.0.0.1:{clean.sentinels[0].port}" in err


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
@MODES
async def test_tls_to_the_sentinels_and_to_the_data_nodes(
    tmp_path: Path, mode: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every process listens for TLS too, the replica and the sentinels use it; so does gcache,
    to the sentinels (``sentinel_tls``) and to the master they name (``tls``), the bus included;
    and so do the operator's tools (``--sentinel-tls``, ``--tls``)."""
    ca, cert, key = _certificates(tmp_path, "IP:127.0.0.1")
    tls = ("--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
           "--tls-auth-clients", "no")  # fmt: skip
    try:
        s = Sentinels(tls=tls)
    except RuntimeError as exc:
        if "tls-port" in str(exc):
            pytest.skip(f"this redis-server has no TLS: {exc}")
        raise
    try:
        config = s.config(tls=True, sentinel_tls=True, ssl_ca_certs=str(ca))
        assert config.sentinels == [("127.0.0.1", port) for port in s.tls_ports[2:]]
        source = {"version": "v1", "calls": 0}
        cache = make(config)
        read = reader(cache, mode, source, tracked=True, config=REMOTE_ONLY)
        try:
            assert await cache.astart()
            assert [await read("1") for _ in range(3)] == ["v1:1"] * 3
            assert source["calls"] == 1
            assert s.primary_admin.exists("{urn:gcache:user_id:1}#GetUser") == 1
            channel = bus_channel("urn:gcache")
            assert s.primary_admin.pubsub_numsub(channel) == [(channel.encode(), 1)]
            pool = cache._remote._sync_connection(READ).client.connection_pool  # type: ignore[union-attr]
            cache._remote._sync_connection(READ).client.ping()  # type: ignore[union-attr]
            assert pool.master_address == ("127.0.0.1", s.tls_ports[0])  # the TLS port, as monitored
        finally:
            await cache.aclose()
        options = [a for port in s.tls_ports[2:] for a in ("--sentinel", f"127.0.0.1:{port}")]
        # --option=value: a password may start with "-", which argparse would take for an option
        code, out, err = run_cli(
            capsys, "inspect", "user_id:1", *options, "--service-name", SERVICE, "--username", APP_USER,
            f"--password={s.credentials.app_password}", "--sentinel-username", APP_USER,
            f"--sentinel-password={s.sentinel_credentials.app_password}", "--tls", "--sentinel-tls",
            "--tls-ca-certs", str(ca),
        )  # fmt: skip
        assert code == 0, err
        assert out.splitlines()[1] == f"  node: 127.0.0.1:{s.tls_ports[0]}"
        assert out.splitlines()[4].split() == ["FRESH", "GetUser"]
    finally:
        s.close()


@pytest.mark.slow
@MODES
async def test_hung_sentinels_leave_the_bus_and_open_connections_serving(mode: str) -> None:
    """Every sentinel stopped (SIGSTOP): the bus keeps its subscription (the check of the master
    runs aside and counts no answer as no news), and calls are still cached over the connections
    already open."""
    with sentinels() as s:
        source = {"version": "v1", "calls": 0}
        cache = make(s.config())
        read = reader(cache, mode, source, tracked=True, config=REMOTE_ONLY)
        try:
            assert await cache.astart()
            assert await read("1") == "v1:1"
            bus = cache._bus
            assert bus is not None
            subscriptions = bus.connections
            for sentinel in s.sentinels:
                sentinel.pause()
            try:
                deadline = time.monotonic() + 3.0
                while time.monotonic() < deadline:
                    assert await read("1") == "v1:1"
                    await asyncio.sleep(0.05)
                assert cache.bus_subscribed
                assert bus.connections == subscriptions  # never dropped
                assert source["calls"] == 1  # every read a REMOTE hit
            finally:
                for sentinel in s.sentinels:
                    sentinel.resume()
        finally:
            await cache.aclose()
