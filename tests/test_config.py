"""Configuration objects: GCacheKeyConfig, RedisConfig, GCacheConfig, and the error classes."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest
import redis
import redis.asyncio.connection
import redis.connection
from prometheus_client import CollectorRegistry

import gcache
import gcache.errors
from gcache import CacheLayer, GCacheConfig, GCacheKey, GCacheKeyConfig, RedisConfig
from gcache.errors import (
    ConfigError,
    FutureBufferTooLargeError,
    GCacheError,
    IdArgError,
    RedisConfigConflictError,
    UseCaseIsAlreadyRegisteredError,
    UseCaseNameIsReservedError,
)
from gcache.redis_config import accepted_query_options, mask_url
from tests.conftest import sample
from tests.test_gcache import Maker, call, twin

LOCAL, REMOTE = CacheLayer.LOCAL, CacheLayer.REMOTE
SECRET = "s3cret-Pw"

# ---------------------------------------------------------------------------------------------
# GCacheKeyConfig
# ---------------------------------------------------------------------------------------------


def test_key_config_keeps_values_given_by_layer() -> None:
    cfg = GCacheKeyConfig(ttl_sec={LOCAL: 60, REMOTE: 300}, ramp={LOCAL: 100, REMOTE: 25.5})
    assert cfg.ttl_sec == {LOCAL: 60, REMOTE: 300}
    assert cfg.ramp == {LOCAL: 100, REMOTE: 25.5}


def test_key_config_accepts_layer_names_in_any_case() -> None:
    ttl: dict[Any, float] = {"local": 60, "REMOTE": 300}
    ramp: dict[Any, float] = {"Local": 0, "remote": 100}
    cfg = GCacheKeyConfig(ttl_sec=ttl, ramp=ramp)
    assert cfg.ttl_sec == {LOCAL: 60, REMOTE: 300}
    assert cfg.ramp == {LOCAL: 0, REMOTE: 100}
    assert cfg == GCacheKeyConfig(ttl_sec={LOCAL: 60, REMOTE: 300}, ramp={LOCAL: 0, REMOTE: 100})


def test_key_config_defaults_to_every_layer_off() -> None:
    cfg = GCacheKeyConfig()
    assert cfg.ttl_sec == {}
    assert cfg.ramp == {}


def test_key_config_ignores_legacy_noop_layer() -> None:
    ttl: dict[Any, float] = {"noop": 5, "local": 1}
    ramp: dict[Any, float] = {"NOOP": 100}
    cfg = GCacheKeyConfig(ttl_sec=ttl, ramp=ramp)
    assert cfg.ttl_sec == {LOCAL: 1}
    assert cfg.ramp == {}


@pytest.mark.parametrize(
    ("field", "values", "message"),
    [
        ("ttl_sec", {"local": -1}, "GCacheKeyConfig.ttl_sec[local] must be 0 or more, got -1"),
        ("ttl_sec", {REMOTE: -0.5}, "GCacheKeyConfig.ttl_sec[remote] must be 0 or more, got -0.5"),
        ("ramp", {"remote": 101}, "GCacheKeyConfig.ramp[remote] must be between 0 and 100, got 101"),
        ("ramp", {LOCAL: -1}, "GCacheKeyConfig.ramp[local] must be between 0 and 100, got -1"),
        ("ramp", {LOCAL: 100.5}, "GCacheKeyConfig.ramp[local] must be between 0 and 100, got 100.5"),
        ("ttl_sec", {"local": True}, "GCacheKeyConfig.ttl_sec[local] must be a finite number, got True"),
        ("ramp", {"remote": "fifty"}, "GCacheKeyConfig.ramp[remote] must be a finite number, got 'fifty'"),
        ("ttl_sec", {"local": None}, "GCacheKeyConfig.ttl_sec[local] must be a finite number, got None"),
        ("ramp", {"local": float("nan")}, "GCacheKeyConfig.ramp[local] must be a finite number, got nan"),
        ("ttl_sec", {"remote": float("inf")}, "ttl_sec[remote] must be a finite number, got inf"),
        ("ttl_sec", {"disk": 5}, "GCacheKeyConfig.ttl_sec: unknown cache layer 'disk'"),
        ("ramp", {3: 5}, "GCacheKeyConfig.ramp: unknown cache layer 3"),
        ("ttl_sec", [60], "GCacheKeyConfig.ttl_sec must be a mapping"),
    ],
)
def test_key_config_raises_config_error_naming_field_and_value(field: str, values: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        GCacheKeyConfig(**{field: values})


def test_key_config_accepts_bounds_of_ranges() -> None:
    cfg = GCacheKeyConfig(ttl_sec={LOCAL: 0, REMOTE: 10**9}, ramp={LOCAL: 0, REMOTE: 100})
    assert cfg.ttl_sec == {LOCAL: 0, REMOTE: 10**9}
    assert cfg.ramp == {LOCAL: 0, REMOTE: 100}


def test_enabled_turns_every_layer_on_with_one_ttl() -> None:
    cfg = GCacheKeyConfig.enabled(30)
    assert cfg.ttl_sec == {LOCAL: 30, REMOTE: 30}
    assert cfg.ramp == {LOCAL: 100, REMOTE: 100}


def test_enabled_rejects_negative_ttl() -> None:
    with pytest.raises(ConfigError, match="ttl_sec"):
        GCacheKeyConfig.enabled(-1)


def test_dumps_names_layers_as_strings_and_loads_round_trips() -> None:
    cfg = GCacheKeyConfig(ttl_sec={LOCAL: 60, REMOTE: 300}, ramp={LOCAL: 100, REMOTE: 25})
    text = cfg.dumps()
    assert '"local"' in text
    assert '"remote"' in text
    assert "CacheLayer" not in text
    assert json.loads(text) == {"ttl_sec": {"local": 60, "remote": 300}, "ramp": {"local": 100, "remote": 25}}
    assert GCacheKeyConfig.loads(text) == cfg
    assert GCacheKeyConfig.loads(text.encode()) == cfg
    assert GCacheKeyConfig.loads(json.loads(text)) == cfg


def test_to_dict_and_model_dump_use_layer_names() -> None:
    cfg = GCacheKeyConfig.enabled(5)
    expected = {"ttl_sec": {"local": 5, "remote": 5}, "ramp": {"local": 100, "remote": 100}}
    assert cfg.to_dict() == expected
    assert cfg.model_dump() == expected
    assert GCacheKeyConfig.from_dict(expected) == cfg


def test_loads_ignores_legacy_noop_layer() -> None:
    cfg = GCacheKeyConfig.loads('{"ttl_sec": {"noop": 1, "local": 2}, "ramp": {"noop": 100, "local": 50}}')
    assert cfg == GCacheKeyConfig(ttl_sec={LOCAL: 2}, ramp={LOCAL: 50})


@pytest.mark.parametrize("text", ["{not json", "", '{"ttl_sec": {"local": 1}'])
def test_loads_raises_config_error_when_json_invalid(text: str) -> None:
    with pytest.raises(ConfigError, match="invalid JSON"):
        GCacheKeyConfig.loads(text)


def test_loads_raises_config_error_when_fields_missing_or_not_mapping() -> None:
    with pytest.raises(ConfigError, match="no known field, only unknown ones: ttl"):
        GCacheKeyConfig.loads('{"ttl": {"local": 1}}')
    with pytest.raises(ConfigError, match="mapping"):
        GCacheKeyConfig.loads("[1, 2]")
    with pytest.raises(ConfigError, match=re.escape("ramp[remote]")):
        GCacheKeyConfig.loads('{"ramp": {"remote": 150}}')


def test_dump_configs_and_load_configs_round_trip_with_environments() -> None:
    configs: dict[str, GCacheKeyConfig | dict[str, GCacheKeyConfig]] = {
        "GetUser": GCacheKeyConfig.enabled(60),
        "GetOrg": {
            "prod": GCacheKeyConfig(ttl_sec={LOCAL: 5, REMOTE: 600}, ramp={LOCAL: 100, REMOTE: 10}),
            "staging": GCacheKeyConfig(ttl_sec={LOCAL: 1}, ramp={LOCAL: 100}),
        },
    }
    text = GCacheKeyConfig.dump_configs(configs)
    assert json.loads(text) == {
        "GetUser": {"ttl_sec": {"local": 60, "remote": 60}, "ramp": {"local": 100, "remote": 100}},
        "GetOrg": {
            "prod": {"ttl_sec": {"local": 5, "remote": 600}, "ramp": {"local": 100, "remote": 10}},
            "staging": {"ttl_sec": {"local": 1}, "ramp": {"local": 100}},
        },
    }
    assert GCacheKeyConfig.load_configs(text) == configs
    assert GCacheKeyConfig.load_configs(json.loads(text)) == configs


def test_load_configs_reads_hand_written_layer_names() -> None:
    configs = GCacheKeyConfig.load_configs(
        '{"A": {"ttl_sec": {"LOCAL": 3}, "ramp": {"local": 100}},'
        ' "B": {"prod": {"ttl_sec": {"remote": 9}, "ramp": {"Remote": 50}}}}'
    )
    assert configs == {
        "A": GCacheKeyConfig(ttl_sec={LOCAL: 3}, ramp={LOCAL: 100}),
        "B": {"prod": GCacheKeyConfig(ttl_sec={REMOTE: 9}, ramp={REMOTE: 50})},
    }


def test_load_configs_raises_config_error_when_value_invalid() -> None:
    with pytest.raises(ConfigError, match="'A'"):
        GCacheKeyConfig.load_configs('{"A": 5}')
    with pytest.raises(ConfigError, match=re.escape("ttl_sec[local]")):
        GCacheKeyConfig.load_configs('{"A": {"prod": {"ttl_sec": {"local": -5}}}}')


@pytest.mark.parametrize("text", ["{not json", ""])
def test_load_configs_raises_config_error_when_json_invalid(text: str) -> None:
    with pytest.raises(ConfigError):
        GCacheKeyConfig.load_configs(text)


def test_load_configs_raises_config_error_when_top_level_not_an_object() -> None:
    with pytest.raises(ConfigError):
        GCacheKeyConfig.load_configs("[1, 2]")


# ---------------------------------------------------------------------------------------------
# RedisConfig
# ---------------------------------------------------------------------------------------------


def test_redis_config_defaults_to_localhost_url() -> None:
    assert RedisConfig().url == "redis://localhost:6379/0"


def test_redis_config_builds_url_from_parts_with_quoted_credentials() -> None:
    cfg = RedisConfig(host="cache.internal", port=6380, db=2, username="app user", password="p@ss:w/rd")
    assert cfg.url == "redis://app%20user:p%40ss%3Aw%2Frd@cache.internal:6380/2"


def test_redis_config_builds_url_with_password_only() -> None:
    assert RedisConfig(password="pw").url == "redis://:pw@localhost:6379/0"


def test_redis_config_uses_rediss_scheme_when_tls() -> None:
    assert RedisConfig(host="h", tls=True).url == "rediss://h:6379/0"
    assert RedisConfig(host="h", protocol="rediss").url == "rediss://h:6379/0"


def test_redis_config_brackets_ipv6_host() -> None:
    assert RedisConfig(host="::1", port=7000).url == "redis://[::1]:7000/0"


@pytest.mark.parametrize(
    "url", ["redis://cache:6379/0", "rediss://u:pw@cache.example.com:6380/3", "unix:///tmp/redis.sock"]
)
def test_redis_config_accepts_valid_url(url: str) -> None:
    assert RedisConfig(url=url).url == url


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        (f"http://user:{SECRET}@cache:6379/0", "scheme 'http'"),
        (f"redis://user:{SECRET}@:6379/0", "names no host"),
        (f"redis://user:{SECRET}@cache:6379/abc", "database 'abc' is not a number"),
        (f"redis://user:{SECRET}@cache:notaport/0", "not a valid URL"),
        (f"redis://user:{SECRET}@cache:99999/0", "not a valid URL"),
        (f"redis://:{SECRET}@cache:0/0", "port 0"),
        ("unix://", "no socket path"),
    ],
)
def test_redis_config_raises_config_error_naming_url_problem(url: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(problem)) as info:
        RedisConfig(url=url)
    assert SECRET not in str(info.value)
    assert "RedisConfig.url" in str(info.value)


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"port": 0}, "RedisConfig.port"),
        ({"port": 70000}, "RedisConfig.port"),
        ({"port": "63x9"}, "RedisConfig.port"),
        ({"db": -1}, "RedisConfig.db"),
        ({"host": ""}, "RedisConfig.host"),
        ({"protocol": "http"}, "RedisConfig.protocol"),
    ],
)
def test_redis_config_raises_config_error_naming_bad_part(options: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(problem)) as info:
        RedisConfig(password=SECRET, **options)
    assert SECRET not in str(info.value)


def test_redis_config_repr_hides_password() -> None:
    from_url = RedisConfig(url=f"redis://user:{SECRET}@cache:6379/0")
    from_parts = RedisConfig(host="cache", username="user", password=SECRET)
    for cfg in (from_url, from_parts):
        assert SECRET not in repr(cfg)
        assert SECRET not in str(cfg)
        assert "***" in repr(cfg)
        assert "cache" in repr(cfg)


def test_a_password_in_the_url_query_is_hidden_in_repr_errors_and_the_demo_banner() -> None:
    cfg = RedisConfig(url=f"redis://cache:6379/0?password={SECRET}&socket_connect_timeout=2")
    assert SECRET not in repr(cfg)
    assert "password=***" in repr(cfg)
    with pytest.raises(ConfigError) as info:
        RedisConfig(url=f"redis://cache:notaport/0?password={SECRET}")
    assert SECRET not in str(info.value)
    assert "password=***" in str(info.value)
    for url in (
        f"redis://cache/0?password={SECRET}",
        f"rediss://user:{SECRET}@cache/0?PASSWORD={SECRET}#x",
        f"unix:///tmp/redis.sock?db=1&password={SECRET}",
    ):
        assert SECRET not in mask_url(url)  # what the demo prints, too
    assert mask_url("redis://cache:6379/0?db=2") == "redis://cache:6379/0?db=2"


@pytest.mark.parametrize("query", ["foo=bar", "socket_timeot=2", "ssl_cert_reqs=none", "retry=x"])
def test_an_unknown_url_query_option_is_a_config_error_naming_it_and_the_accepted_ones(query: str) -> None:
    # ssl_cert_reqs is only taken on rediss://; retry is not text (a redis.retry.Retry)
    name = query.split("=")[0]
    with pytest.raises(ConfigError) as info:
        RedisConfig(url=f"redis://user:{SECRET}@cache:6379/0?{query}")
    message = str(info.value)
    assert f"unknown query option {name!r}" in message
    assert "socket_connect_timeout, " in message  # the accepted ones, listed
    assert "client_name" in message
    assert redis.__version__ in message
    assert SECRET not in message


@pytest.mark.parametrize(
    "query", ["socket_connect_timeout=abc", "health_check_interval=1.5x", "socket_read_size=big", "db=x"]
)
def test_a_url_query_value_redis_py_cannot_parse_is_a_config_error_naming_the_option(query: str) -> None:
    name = query.split("=")[0]
    with pytest.raises(ConfigError, match=re.escape(f"Invalid value for '{name}'")):
        RedisConfig(url=f"redis://cache:6379/0?{query}")


@pytest.mark.parametrize(
    ("query", "knob"),
    [
        ("socket_timeout=2", "read_timeout_sec"),
        ("socket_timeout=abc", "read_timeout_sec"),
        ("max_connections=5", "RedisConfig(max_connections="),
        ("timeout=5", "pool_timeout"),
        ("decode_responses=1", "binary"),
    ],
)
def test_a_url_query_option_gcache_sets_is_a_config_error_naming_the_knob(query: str, knob: str) -> None:
    # redis-py lets the URL's win, so ?socket_timeout=2 would silently make the 50 ms lookup 2 s
    with pytest.raises(ConfigError, match=re.escape(query.split("=")[0])) as info:
        RedisConfig(url=f"redis://cache:6379/0?{query}")
    assert "would override gcache's own" in str(info.value)
    assert knob in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "redis://cache:6379/0?client_name=svc&socket_connect_timeout=0.5&health_check_interval=30",
        "redis://cache/0?retry_on_timeout=true&socket_keepalive=false&protocol=2",
        "rediss://cache/0?ssl_cert_reqs=none&ssl_check_hostname=false",
        "unix:///tmp/redis.sock?db=1&client_name=svc",
    ],
)
def test_url_query_options_redis_py_takes_are_accepted(url: str) -> None:
    assert RedisConfig(url=url).url == url


def test_the_accepted_query_options_come_from_the_installed_redis_py() -> None:
    accepted = accepted_query_options("redis")
    parsed = set(redis.connection.URL_QUERY_ARGUMENT_PARSERS) & set(
        redis.asyncio.connection.URL_QUERY_ARGUMENT_PARSERS
    )
    assert {"socket_connect_timeout", "health_check_interval", "db"} <= accepted & parsed
    assert "client_name" in accepted  # text, handed to the connection as it is
    assert "ssl_cert_reqs" not in accepted  # a plain connection does not take it...
    assert "ssl_cert_reqs" in accepted_query_options("rediss")  # ...a TLS one does
    assert not accepted & {"socket_timeout", "decode_responses", "retry", "parser_class"}


@pytest.mark.parametrize(
    ("parts", "named"),
    [
        ({"port": 7000}, "port=7000"),
        ({"host": "other"}, "host='other'"),
        ({"db": 2}, "db=2"),
        ({"username": "u"}, "username='u'"),
        ({"password": SECRET}, "password"),
        ({"tls": True}, "tls=True"),
    ],
)
def test_a_url_with_parts_is_a_config_error_saying_the_url_wins(parts: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError) as info:
        RedisConfig(url="redis://cache:6379/0", **parts)
    message = str(info.value)
    assert named in message
    assert "the url would win" in message
    assert SECRET not in message


def test_a_rediss_url_with_tls_true_is_not_a_contradiction() -> None:
    assert RedisConfig(url="rediss://cache:6380/0", tls=True).url == "rediss://cache:6380/0"


@pytest.mark.redis
async def test_a_url_query_option_is_honoured_on_a_real_redis(
    redis_url: str, redis_client: redis.Redis, make_cache: Callable[..., gcache.GCache]
) -> None:
    separator = "&" if "?" in redis_url else "?"
    cache = make_cache(redis_config=RedisConfig(url=f"{redis_url}{separator}client_name=gcache-query-test"))
    runs = []

    remote_only = GCacheKeyConfig(ttl_sec={CacheLayer.REMOTE: 60}, ramp={CacheLayer.REMOTE: 100})

    @cache.cached(key_type="user_id", id_arg="uid", use_case="QueryOption", default_config=remote_only)
    async def read(uid: str) -> str:
        runs.append(uid)
        return uid

    with cache.enable():
        assert [await read("1"), await read("1")] == ["1", "1"]
    assert runs == ["1"]  # the second call was a REMOTE hit: the client connected with the option
    names = {client["name"] for client in redis_client.client_list() if client.get("user") == "gcache"}
    assert "gcache-query-test" in names


def test_redis_config_rejects_db_on_cluster_from_parts() -> None:
    with pytest.raises(ConfigError, match="db"):
        RedisConfig(db=1, cluster=True)


def test_redis_config_rejects_db_on_cluster_from_url() -> None:
    with pytest.raises(ConfigError, match="db"):
        RedisConfig(url="redis://cache:6379/3", cluster=True)


def test_redis_config_takes_cluster_nodes_as_seeds_after_the_urls() -> None:
    config = RedisConfig(
        url="redis://a:7000/0", cluster=True, cluster_nodes=["b:7001", "[::1]:7002", "a:7000"]
    )
    assert config.cluster_nodes == ("b:7001", "[::1]:7002", "a:7000")
    assert config.cluster_seeds() == [("a", 7000), ("b", 7001), ("::1", 7002)]
    assert RedisConfig(url="redis://a:7000/0", cluster=True).cluster_seeds() == [("a", 7000)]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cluster_nodes": ["b:7001"]}, "give cluster=True"),
        ({"cluster": True, "cluster_nodes": "b:7001"}, "must be a list of 'host:port' texts"),
        ({"cluster": True, "cluster_nodes": ["b"]}, "'b' is not 'host:port'"),
        ({"cluster": True, "cluster_nodes": ["b:0"]}, "'b:0' is not 'host:port' with a port from 1 to 65535"),
        ({"cluster": True, "cluster_nodes": ["b:x"]}, "'b:x' is not 'host:port'"),
        ({"cluster": True, "cluster_nodes": [":7000"]}, "':7000' is not 'host:port'"),
        ({"cluster": True, "cluster_nodes": [7000]}, "7000 is not a 'host:port' text"),
    ],
)
def test_redis_config_refuses_bad_cluster_nodes(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        RedisConfig(url="redis://a:7000/0", **options)


def test_redis_config_accepts_cluster_with_db_zero() -> None:
    assert RedisConfig(url="redis://cache:6379/0", cluster=True).cluster is True
    assert RedisConfig(host="cache", cluster=True).url == "redis://cache:6379/0"


def test_client_options_include_tls_settings_and_force_binary_responses() -> None:
    cfg = RedisConfig(
        host="cache",
        tls=True,
        ssl_ca_certs="/etc/ca.pem",
        ssl_certfile="/etc/client.pem",
        ssl_cert_reqs="none",
        redis_py_options={"socket_timeout": 2.5, "decode_responses": True, "max_connections": 20},
    )
    assert cfg.client_options() == {
        "ssl_cert_reqs": "none",
        "ssl_check_hostname": False,  # Python refuses a hostname check without certificate checks
        "ssl_ca_certs": "/etc/ca.pem",
        "ssl_certfile": "/etc/client.pem",
        "socket_timeout": 2.5,
        "max_connections": 20,
        "decode_responses": False,
    }


def test_client_options_include_tls_settings_when_url_is_rediss() -> None:
    options = RedisConfig(url="rediss://cache:6380/0", ssl_keyfile="/k.pem").client_options()
    assert options["ssl_cert_reqs"] == "required"
    assert options["ssl_check_hostname"] is True  # passed explicitly: redis-py 5.x left it off
    assert options["ssl_keyfile"] == "/k.pem"
    assert options["decode_responses"] is False


def test_client_options_without_tls_have_no_ssl_settings() -> None:
    options = RedisConfig(host="cache").client_options()
    assert options == {"socket_connect_timeout": 1.0, "socket_timeout": 1.0, "decode_responses": False}


def test_redis_config_raises_when_redis_py_options_not_dict() -> None:
    bad: Any = [("socket_timeout", 1)]
    with pytest.raises(ConfigError, match="redis_py_options"):
        RedisConfig(redis_py_options=bad)


# ---------------------------------------------------------------------------------------------
# GCacheConfig
# ---------------------------------------------------------------------------------------------


def test_gcache_config_raises_conflict_when_both_redis_options_given() -> None:
    with pytest.raises(RedisConfigConflictError, match="redis_config or redis_client_factory"):
        GCacheConfig(redis_config=RedisConfig(), redis_client_factory=lambda: None)
    assert issubclass(RedisConfigConflictError, ConfigError)


def test_gcache_config_defaults() -> None:
    cfg = GCacheConfig()
    assert cfg.urn_prefix == "urn:gcache"
    assert cfg.metrics_prefix == ""
    assert cfg.redis_config is None
    assert cfg.redis_client_factory is None
    assert cfg.cache_config_provider is None


def test_gcache_config_uses_default_prefix_when_none() -> None:
    assert GCacheConfig(urn_prefix=None).urn_prefix == "urn:gcache"


def test_gcache_config_keeps_custom_prefix() -> None:
    assert GCacheConfig(urn_prefix="svc:users").urn_prefix == "svc:users"


@pytest.mark.parametrize("prefix", ["", "a{b", "a}b", "cache*", "a?b", "a[b]", "a\\b"])
def test_gcache_config_raises_config_error_when_prefix_invalid(prefix: str) -> None:
    with pytest.raises(ConfigError, match="urn_prefix") as info:
        GCacheConfig(urn_prefix=prefix)
    assert repr(prefix) in str(info.value)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("local_max_entries", 0),
        ("local_max_entries", -1),
        ("local_max_entries", 1.5),
        ("local_max_entries", True),
        ("local_max_entries", "100"),
        ("max_future_buffer_ms", -1),
        ("max_future_buffer_ms", 2.5),
        ("max_future_buffer_ms", None),
        ("tracked_compute_limit_sec", 0),
        ("tracked_compute_limit_sec", -3),
        ("tracked_compute_limit_sec", "60"),
        ("error_log_interval_sec", -1),
        ("read_timeout_sec", 0),
        ("read_timeout_sec", -0.05),
        ("write_timeout_sec", "1"),
        ("breaker_failures", -1),
        ("breaker_failures", 2.5),
        ("breaker_probe_sec", 0),
        ("max_value_bytes", 0),
        ("max_value_bytes", 1.5),
    ],
)
def test_gcache_config_raises_config_error_naming_option(option: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"GCacheConfig.{option}")) as info:
        GCacheConfig(**{option: value})
    assert repr(value) in str(info.value)


def test_gcache_config_accepts_zero_where_zero_means_none() -> None:
    cfg = GCacheConfig(max_future_buffer_ms=0, error_log_interval_sec=0, tracked_compute_limit_sec=0.5)
    assert cfg.max_future_buffer_ms == 0
    assert cfg.error_log_interval_sec == 0
    assert cfg.tracked_compute_limit_sec == 0.5
    off = GCacheConfig(
        breaker_failures=0, read_timeout_sec=None, write_timeout_sec=None, max_value_bytes=None
    )
    assert (off.breaker_failures, off.read_timeout_sec, off.write_timeout_sec, off.max_value_bytes) == (
        0,
        None,
        None,
        None,
    )


def test_gcache_config_resilience_defaults() -> None:
    cfg = GCacheConfig()
    assert cfg.read_timeout_sec == 0.05
    assert cfg.write_timeout_sec == 0.25
    assert cfg.breaker_failures == 5
    assert cfg.breaker_probe_sec == 1.0
    assert cfg.max_value_bytes == 4 * 1024 * 1024


def test_key_config_resilience_options_default_off_and_round_trip_through_json() -> None:
    plain = GCacheKeyConfig.enabled(30)
    assert (plain.ttl_jitter, plain.fail_safe_sec, plain.soft_timeout_sec, plain.lock_sec) == (0, 0, 0, 0)
    assert set(plain.to_dict()) == {"ttl_sec", "ramp"}  # configs written for the original stay as they were
    full = GCacheKeyConfig(
        ttl_sec={CacheLayer.LOCAL: 5},
        ramp={CacheLayer.LOCAL: 100},
        ttl_jitter=0.2,
        fail_safe_sec=600,
        soft_timeout_sec=0.5,
        lock_sec=3,
    )
    again = GCacheKeyConfig.loads(full.dumps())
    assert again == full
    assert json.loads(full.dumps())["fail_safe_sec"] == 600
    configs = GCacheKeyConfig.load_configs('{"GetUser": {"ttl_sec": {"remote": 60}, "lock_sec": 2}}')
    assert configs["GetUser"] == GCacheKeyConfig(ttl_sec={CacheLayer.REMOTE: 60}, lock_sec=2)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ttl_jitter": 1.5}, "ttl_jitter must be between 0 and 1, got 1.5"),
        ({"ttl_jitter": -0.1}, "ttl_jitter must be between 0 and 1"),
        ({"fail_safe_sec": -1}, "fail_safe_sec must be 0 or more, got -1"),
        ({"lock_sec": float("inf")}, "lock_sec must be a finite number, got inf"),
        ({"soft_timeout_sec": "one"}, "soft_timeout_sec must be a finite number"),
        ({"soft_timeout_sec": 0.2}, "soft_timeout_sec needs fail_safe_sec"),
    ],
)
def test_key_config_rejects_bad_resilience_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        GCacheKeyConfig(ttl_sec={CacheLayer.LOCAL: 5}, **options)


@pytest.mark.parametrize("option", ["cache_config_provider", "redis_client_factory"])
def test_gcache_config_raises_config_error_when_callable_option_not_callable(option: str) -> None:
    options: dict[str, Any] = {option: 42}
    with pytest.raises(ConfigError, match=option):
        GCacheConfig(**options)


def test_gcache_config_raises_config_error_when_redis_config_wrong_type() -> None:
    bad: Any = {"host": "cache"}
    with pytest.raises(ConfigError, match="redis_config"):
        GCacheConfig(redis_config=bad)


def test_gcache_config_accepts_sync_and_async_providers() -> None:
    def sync_provider(key: gcache.GCacheKey) -> GCacheKeyConfig | None:
        return None

    async def async_provider(key: gcache.GCacheKey) -> GCacheKeyConfig | None:
        return None

    assert GCacheConfig(cache_config_provider=sync_provider).cache_config_provider is sync_provider
    assert GCacheConfig(cache_config_provider=async_provider).cache_config_provider is async_provider


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


def test_legacy_error_names_are_the_same_classes() -> None:
    assert issubclass(gcache.errors.KeyArgDoesNotExist, IdArgError)  # raised for a bad id_arg
    assert gcache.errors.RedisConfigConflict is RedisConfigConflictError
    assert gcache.errors.UseCaseIsAlreadyRegistered is UseCaseIsAlreadyRegisteredError
    assert gcache.errors.UseCaseNameIsReserved is UseCaseNameIsReservedError


def test_error_hierarchy_roots_at_gcache_error() -> None:
    for cls in (
        IdArgError,
        RedisConfigConflictError,
        UseCaseIsAlreadyRegisteredError,
        UseCaseNameIsReservedError,
    ):
        assert issubclass(cls, ConfigError)
    assert issubclass(ConfigError, GCacheError)
    assert issubclass(ConfigError, ValueError)
    assert issubclass(FutureBufferTooLargeError, GCacheError)
    assert gcache.ConfigError is ConfigError
    assert gcache.IdArgError is IdArgError


def test_remote_error_keeps_operation_and_cause() -> None:
    cause = ConnectionError("refused")
    err = gcache.errors.RemoteError("get", cause)
    assert err.operation == "get"
    assert err.cause is cause
    assert str(err) == "redis get failed: ConnectionError: refused"


# ---------------------------------------------------------------------------------------------
# GCacheKey
# ---------------------------------------------------------------------------------------------


def test_gcache_key_stringifies_id_and_sorts_args() -> None:
    id: Any = 123
    args: Any = [("z", 1), ("a", 2.5)]
    key = GCacheKey("user_id", id, "GetUser", args=args)
    assert key.id == "123"
    assert key.args == (("a", "2.5"), ("z", "1"))
    assert key.urn == "{urn:gcache:user_id:123}?a=2.5&z=1#GetUser"


def test_gcache_key_equal_and_same_hash_when_components_equal() -> None:
    a = GCacheKey("user_id", "1", "UC", args=[("b", "2"), ("a", "1")])
    b = GCacheKey("user_id", 1, "UC", args=(("a", "1"), ("b", "2")))
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1
    assert {a: "x"}[b] == "x"


def test_gcache_key_unequal_when_use_case_or_args_differ() -> None:
    base = GCacheKey("user_id", "1", "UC", args=[("a", "1")])
    assert base != GCacheKey("user_id", "1", "Other", args=[("a", "1")])
    assert base != GCacheKey("user_id", "1", "UC", args=[("a", "2")])
    assert base != GCacheKey("user_id", "2", "UC", args=[("a", "1")])
    assert base != GCacheKey("org_id", "1", "UC", args=[("a", "1")])


def test_gcache_key_raises_when_use_case_is_watermark() -> None:
    with pytest.raises(UseCaseNameIsReservedError, match="watermark"):
        GCacheKey("user_id", "1", "watermark")
    assert issubclass(UseCaseNameIsReservedError, ConfigError)


def test_gcache_key_raises_when_key_type_is_empty() -> None:
    with pytest.raises(ConfigError, match="key_type"):
        GCacheKey("", "1", "UC")


def test_gcache_key_raises_when_use_case_is_empty() -> None:
    with pytest.raises(ConfigError, match="use_case"):
        GCacheKey("user_id", "1", "")


# -- load_configs: one environment's configs (env=, or GCACHE_ENV) ---------------------------------

PER_ENVIRONMENT = json.dumps(
    {
        "GetUser": {"ttl_sec": {"local": 60}, "ramp": {"local": 100}},  # every environment
        "GetOrg": {
            "prod": {"ttl_sec": {"local": 5, "remote": 600}, "ramp": {"local": 100, "remote": 10}},
            "staging": {"ttl_sec": {"local": 1}, "ramp": {"local": 100}},
        },
        "GetTeam": {"prod": {"ttl_sec": {"remote": 9}, "ramp": {"remote": 50}}},  # no staging
    }
)


@pytest.mark.parametrize("how", ["argument", "GCACHE_ENV", "argument-over-GCACHE_ENV"])
def test_load_configs_picks_the_environment_given(how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GCACHE_ENV", raising=False)
    if how != "argument":
        monkeypatch.setenv("GCACHE_ENV", "staging" if how == "GCACHE_ENV" else "prod")
    configs = GCacheKeyConfig.load_configs(PER_ENVIRONMENT, env=None if how == "GCACHE_ENV" else "staging")
    assert configs == {
        "GetUser": GCacheKeyConfig(ttl_sec={LOCAL: 60}, ramp={LOCAL: 100}),
        "GetOrg": GCacheKeyConfig(ttl_sec={LOCAL: 1}, ramp={LOCAL: 100}),
    }  # GetTeam has no staging config: left out, its calls take default_config
    prod = GCacheKeyConfig.load_configs(json.loads(PER_ENVIRONMENT), env="prod")
    assert prod["GetTeam"] == GCacheKeyConfig(ttl_sec={REMOTE: 9}, ramp={REMOTE: 50})


def test_load_configs_without_an_environment_keeps_every_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GCACHE_ENV", raising=False)
    configs = GCacheKeyConfig.load_configs(PER_ENVIRONMENT)
    assert set(configs["GetOrg"]) == {"prod", "staging"}  # type: ignore[arg-type]
    monkeypatch.setenv("GCACHE_ENV", "")  # empty: not set
    assert GCacheKeyConfig.load_configs(PER_ENVIRONMENT) == configs


def test_load_configs_refuses_an_environment_no_use_case_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GCACHE_ENV", raising=False)
    with pytest.raises(ConfigError, match=r"'prdo' \(the environments given: prod, staging\)"):
        GCacheKeyConfig.load_configs(PER_ENVIRONMENT, env="prdo")
    monkeypatch.setenv("GCACHE_ENV", "prdo")
    with pytest.raises(ConfigError, match="'prdo'"):
        GCacheKeyConfig.load_configs(PER_ENVIRONMENT)
    with pytest.raises(ConfigError, match="env must be a non-empty string"):
        GCacheKeyConfig.load_configs(PER_ENVIRONMENT, env="")
    # with no use case given per environment, any environment has the same configs
    assert GCacheKeyConfig.load_configs('{"A": {"ttl_sec": {"local": 3}}}', env="qa") == {
        "A": GCacheKeyConfig(ttl_sec={LOCAL: 3})
    }


async def test_an_environment_s_configs_serve_as_the_provider(
    is_async: bool, make_cache: Maker, registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GCACHE_ENV", "staging")
    configs = GCacheKeyConfig.load_configs(PER_ENVIRONMENT)
    cache = make_cache(cache_config_provider=lambda key: configs.get(key.use_case))
    calls: list[str] = []

    def get(org_id: str) -> str:
        calls.append(org_id)
        return org_id

    fn = cache.cached(key_type="org_id", id_arg="org_id", use_case="GetOrg")(
        twin("async" if is_async else "sync", get)
    )
    with cache.enable():
        assert [await call(fn, "1") for _ in range(2)] == ["1", "1"]
    assert calls == ["1"]  # staging's LOCAL config: cached
    assert sample(registry, "gcache_request_counter_total", use_case="GetOrg", layer="REMOTE") == 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"invalidate_replicas": -1}, "invalidate_replicas"),
        ({"invalidate_wait_ms": 0}, "invalidate_wait_ms"),
        ({"failover_buffer_ms": -5}, "failover_buffer_ms"),
        ({"failover_fencing": "no"}, "failover_fencing must be True or False"),
    ],
)
def test_failover_options_are_checked(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        GCacheConfig(**options)


def test_failover_options_default_to_no_wait_and_no_buffer() -> None:
    config = GCacheConfig()
    assert (config.invalidate_replicas, config.invalidate_wait_ms, config.failover_buffer_ms) == (0, 100, 0)
    assert config.failover_fencing is True


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"invalidation_outbox_size": -1}, "invalidation_outbox_size must be an integer 0 or more"),
        ({"invalidation_outbox_size": 1.5}, "invalidation_outbox_size"),
        ({"invalidation_outbox_raises": "no"}, "invalidation_outbox_raises must be True or False"),
    ],
)
def test_outbox_options_are_checked(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        GCacheConfig(**options)


def test_outbox_options_default_to_a_bounded_outbox_that_raises() -> None:
    config = GCacheConfig()
    assert (config.invalidation_outbox_size, config.invalidation_outbox_raises) == (10_000, True)
