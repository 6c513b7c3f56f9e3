"""The operator's subcommands (issue 18): ``python -m gcache inspect|invalidate|delete|flush``,
against the session's real Redis, with entries in every state a read can find."""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from prometheus_client import CollectorRegistry

from gcache import CacheLayer, GCache, GCacheKeyConfig
from gcache import _envelope as envelope
from gcache.__main__ import main
from gcache.serializers import JsonSerializer
from gcache.urns import entity_key, value_key, watermark_key
from tests.conftest import sample, wait_until
from tests.test_gcache import Maker

REMOTE_ONLY = GCacheKeyConfig(ttl_sec={CacheLayer.REMOTE: 60}, ramp={CacheLayer.REMOTE: 100})
BOTH = GCacheKeyConfig.enabled(60)
KEY = "operator-test-signing-key-0123456789"
ENTITY = entity_key("urn:gcache", "user_id", "1")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def fill(cache: GCache, tracked: bool = True, **options: Any) -> Any:
    @cache.cached(key_type="user_id", id_arg="user_id", use_case="Tracked" if tracked else "Plain",
                  default_config=REMOTE_ONLY, track_for_invalidation=tracked, **options)  # fmt: skip
    def get(user_id: str, page: int = 0) -> dict[str, Any]:
        return {"user": user_id, "page": page}

    with cache.enable():
        get("1")
        get("1", page=2)
    return get


def verdicts(out: str) -> dict[str, str]:
    report = json.loads(out)
    return {entry["key"]: entry["verdict"] for entry in report["entries"]}


def test_inspect_tells_the_verdict_of_every_entry_of_an_entity(
    make_cache: Maker, redis_client: redis.Redis, redis_url: str, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("REDIS_URL", redis_url)
    cache = make_cache(signing_keys=[KEY])
    fill(cache)
    fill(cache, tracked=False)
    tracked = value_key(ENTITY, (("page", "0"),), "Tracked")
    paged = value_key(ENTITY, (("page", "2"),), "Tracked")
    plain = value_key(ENTITY, (("page", "0"),), "Plain")
    plain_paged = value_key(ENTITY, (("page", "2"),), "Plain")
    redis_client.set(value_key(ENTITY, (), "Foreign"), b"not gcache's")
    redis_client.set(value_key(ENTITY, (), "Old"), b"gC\x01" + b"\0" * 40)
    redis_client.set(value_key(ENTITY, (), "Broken"), b"gC\x02\x00\x00" + b"x" * 60)  # stamp not digits
    redis_client.set(f"{ENTITY}!lock#Tracked", b"token", px=5000)

    monkeypatch.setenv("GCACHE_SIGNING_KEYS", KEY)
    code, out, _ = run(capsys, "inspect", "user_id:1", "--json")
    assert code == 0
    assert verdicts(out) == {
        tracked: "fresh",
        paged: "fresh",
        plain: "fresh",
        plain_paged: "fresh",
        value_key(ENTITY, (), "Foreign"): "foreign",
        value_key(ENTITY, (), "Old"): "version",
        value_key(ENTITY, (), "Broken"): "corrupt",
    }
    report = json.loads(out)
    assert report["fence"]["watermark_us"] == 0
    assert report["locks"] == [f"{ENTITY}!lock#Tracked"]
    by_key = {e["key"]: e for e in report["entries"]}
    assert by_key[paged]["args"] == [["page", "2"]]
    assert by_key[tracked]["signed"] is True
    assert by_key[tracked]["signature_ok"] is True
    assert by_key[tracked]["nonce"] == report["fence"]["nonce"]
    assert 0 < by_key[tracked]["ttl_ms"] <= 60_000

    cache.invalidate("user_id", "1")
    code, out, _ = run(capsys, "inspect", tracked, "--json")  # a full key names its entity too
    assert verdicts(out)[tracked] == "invalidated"
    assert verdicts(out)[plain] == "fresh"  # untracked: served until its TTL

    redis_client.hset(watermark_key(ENTITY), "n", b"REPLACED")
    assert verdicts(run(capsys, "inspect", "user_id:1", "--json")[1])[tracked] == "fence_mismatch"
    redis_client.delete(watermark_key(ENTITY))
    code, out, _ = run(capsys, "inspect", "user_id:1", "--json")
    assert json.loads(out)["fence"] is None
    assert verdicts(out)[tracked] == "fence_mismatch"

    monkeypatch.setenv("GCACHE_SIGNING_KEYS", "another-key-entirely-0123456789")
    assert verdicts(run(capsys, "inspect", "user_id:1", "--json")[1])[plain] == "bad_signature"
    monkeypatch.delenv("GCACHE_SIGNING_KEYS")
    code, out, _ = run(capsys, "inspect", "user_id:1", "--json")
    assert json.loads(out)["entries"][0]["signature_ok"] is None  # no keys: not checked

    code, text, _ = run(capsys, "inspect", "user_id:1")
    assert "FENCE_MISMATCH  Tracked" in text
    assert "FOREIGN" in text
    assert "signed" in text
    assert "lock: " in text


def test_inspect_decodes_only_what_is_safe_to_decode(
    make_cache: Maker, redis_client: redis.Redis, redis_url: str, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("REDIS_URL", redis_url)
    fill(make_cache(serializer=JsonSerializer(), metrics_registry=CollectorRegistry()))
    plain_cache = make_cache(metrics_registry=CollectorRegistry())  # unsigned pickle
    fill(plain_cache, tracked=False)
    code, out, _ = run(capsys, "inspect", "user_id:1", "--json", "--decode")
    assert code == 0
    decoded = {e["use_case"] + str(e["args"]): e["decoded"] for e in json.loads(out)["entries"]}
    assert decoded["Tracked[['page', '0']]"] == {"user": "1", "page": 0}  # JSON: safe
    assert "not loaded" in decoded["Plain[['page', '0']]"]  # unsigned pickle: never loaded by default
    _code, out, _ = run(capsys, "inspect", "user_id:1", "--json", "--decode", "--unsafe-unpickle")
    decoded = {e["use_case"] + str(e["args"]): e["decoded"] for e in json.loads(out)["entries"]}
    assert decoded["Plain[['page', '0']]"] == {"user": "1", "page": 0}  # loaded, as asked


def test_invalidate_and_delete_reach_every_process(
    make_cache: Maker, redis_client: redis.Redis, redis_url: str, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("REDIS_URL", redis_url)
    registry = CollectorRegistry()
    app = make_cache(metrics_registry=registry)  # the application's process
    calls: list[str] = []

    @app.cached(key_type="user_id", id_arg="user_id", use_case="App", default_config=BOTH,
                track_for_invalidation=True)  # fmt: skip
    def get(user_id: str) -> str:
        calls.append(user_id)
        return user_id

    with app.enable():
        get("1")
        get("1")
        assert calls == ["1"]
        assert run(capsys, "invalidate", "user_id", "1")[:2] == (0, "invalidated user_id 1\n")
        wait_until(lambda: sample(registry, "gcache_bus_message_counter_total", direction="received") >= 1)
        get("1")
        assert calls == ["1", "1"]  # LOCAL dropped, REMOTE invalidated

        key = value_key(ENTITY, (), "App")
        assert redis_client.exists(key)
        code, out, _ = run(capsys, "delete", key)
        assert (code, out) == (0, f"deleted: {key}\n")
        assert not redis_client.exists(key)
        wait_until(lambda: sample(registry, "gcache_bus_message_counter_total", kind="delete") >= 1)
        get("1")
        assert calls == ["1", "1", "1"]
    assert run(capsys, "delete", "{other:user_id:1}#App")[0] == 2  # not a key of the prefix


def test_flush_deletes_exactly_the_prefix_and_dry_run_nothing(
    redis_client: redis.Redis, redis_url: str, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("REDIS_URL", redis_url)
    ours = [f"{{urn:gcache:user_id:{i}}}#UC" for i in range(2500)]
    theirs = ["{urn:gcache:tenant:user_id:1}#UC", "{other:user_id:1}#UC", "unrelated"]
    stamp = time.time_ns() // 1000
    with redis_client.pipeline() as pipe:
        for key in ours + theirs:
            pipe.set(key, envelope.encode(pickle.dumps(1), 0, 0, stamp))
        pipe.execute()

    code, out, err = run(capsys, "flush", "--dry-run")
    assert (code, out) == (0, "would delete 2500 keys of prefix 'urn:gcache' (dry run: nothing deleted)\n")
    assert "scanned: 2000 keys of 'urn:gcache'" in err  # progress, on stderr
    assert redis_client.dbsize() == 2503
    with open("/dev/null") as not_a_terminal:
        monkeypatch.setattr("sys.stdin", not_a_terminal)
        assert run(capsys, "flush")[0] == 2  # no --yes, and nobody to ask
    assert redis_client.dbsize() == 2503
    code, out, _ = run(capsys, "flush", "--yes")
    assert (code, out) == (0, "deleted 2500 keys of prefix 'urn:gcache'\n")
    assert sorted(k.decode() for k in cast("list[bytes]", redis_client.keys("*"))) == sorted(theirs)


def test_bad_input_is_told_with_exit_code_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    code, _, err = run(capsys, "inspect", "user_id:1")
    assert (code, err) == (
        2,
        "gcache: no Redis: give --redis-url (or --sentinel and --service-name) or set REDIS_URL\n",
    )
    code, _, err = run(capsys, "inspect", "nocolon", "--redis-url", "redis://127.0.0.1:1/0")
    assert code == 2
    assert "give a full key, or key_type:id" in err
    code, _, err = run(capsys, "inspect", "user_id:1", "--redis-url", "redis://127.0.0.1:1/0")
    assert code == 1
    assert "Redis at redis://127.0.0.1:1/0 failed" in err


def test_stats_counts_what_a_prefix_holds(
    make_cache: Maker, redis_client: redis.Redis, redis_admin_url: str, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    cache = make_cache(signing_keys=[KEY])
    get = fill(cache)  # tracked: ?page=0 and ?page=2, one fence
    with cache.enable():
        get("2")
    fill(make_cache(metrics_registry=CollectorRegistry()), tracked=False)  # untracked, unsigned
    redis_client.set(value_key(ENTITY, (), "Foreign"), b"x")
    redis_client.set("{urn:gcache:tenant:user_id:1}#Other", b"not this prefix")  # a longer prefix
    code, out, _ = run(capsys, "stats", "--json", "--redis-url", redis_admin_url)
    assert code == 0
    stats = json.loads(out)
    assert stats["by_use_case"] == {"user_id Tracked": 3, "user_id Plain": 2, "user_id Foreign": 1}
    assert (stats["fences"], stats["locks"], stats["keys"]) == (2, 0, 8)
    assert (stats["sampled"], stats["tracked"], stats["signed"], stats["not_gcache"]) == (6, 3, 3, 1)
    assert stats["serializers"] == {"pickle": 5}
    assert stats["ttl_buckets"] == {"< 1 min": 5, "no TTL": 1}  # 60 s TTLs; the foreign key has none
    assert stats["bytes_sampled"] > 0

    code, out, _ = run(capsys, "stats", "--sample-every", "2", "--no-memory", "--redis-url", redis_admin_url)
    assert code == 0
    assert "prefix 'urn:gcache': 8 keys: 6 entries, 2 fences, 0 locks" in out
    assert "memory" not in out


def test_the_gcache_console_script_runs_the_same_commands(redis_url: str) -> None:
    script = Path(sys.executable).parent / "gcache"
    assert script.exists(), "pip install -e . installs the gcache console script"
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: gcache ")
    for command in ("demo", "inspect", "stats", "invalidate", "delete", "flush"):
        assert command in done.stdout
    done = subprocess.run(
        [str(script), "stats", "--json", "--no-memory"],
        capture_output=True, text=True, timeout=30, check=False, env={**os.environ, "REDIS_URL": redis_url},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["prefix"] == "urn:gcache"


def test_explain_renders_the_key_asks_the_provider_and_reads_the_verdict(
    make_cache: Maker, redis_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    cache = make_cache()
    fill(cache)  # Tracked?page=0, ?page=2
    code, out, _ = run(
        capsys, "explain", "user_id", "1", "Tracked", "--arg", "page=2", "--json",
        "--provider", "tests._explain_provider:provider",
    )  # fmt: skip
    assert code == 0
    answer = json.loads(out)
    assert answer["key"] == value_key(ENTITY, (("page", "2"),), "Tracked")
    assert answer["remote"]["verdict"] == "fresh"
    assert answer["config"] == "the provider answers None: the decorator's default_config decides"
    cache.invalidate("user_id", "1")
    code, out, _ = run(capsys, "explain", "user_id", "1", "Tracked", "--arg", "page=2", "--json")
    assert json.loads(out)["remote"]["verdict"] == "invalidated"
    code, out, _ = run(
        capsys, "explain", "user_id", "7", "App", "--provider", "tests._explain_provider:provider"
    )  # fmt: skip
    assert code == 0
    assert "not_found" in out
    assert "'remote': 90" in out  # the provider's config, as its dict
    assert "not visible from here" in out
    assert run(capsys, "explain", "user_id", "1", "App", "--arg", "oops")[0] == 2


def test_inspect_tells_an_entry_past_its_ttl_within_the_fail_safe_grace(
    make_cache: Maker, redis_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    cache = make_cache()
    config = GCacheKeyConfig(ttl_sec={CacheLayer.REMOTE: 1}, ramp={CacheLayer.REMOTE: 100}, fail_safe_sec=60)

    @cache.cached(key_type="user_id", id_arg="user_id", use_case="Graceful", default_config=config,
                  track_for_invalidation=True)  # fmt: skip
    def get(user_id: str) -> str:
        return user_id

    with cache.enable():
        get("1")
    key = value_key(ENTITY, (), "Graceful")
    assert verdicts(run(capsys, "inspect", "user_id:1", "--json", "--fail-safe-sec", "60")[1])[key] == "fresh"
    time.sleep(1.1)  # past the 1 s TTL; Redis keeps it 60 s more
    _code, out, _ = run(capsys, "inspect", "user_id:1", "--json", "--fail-safe-sec", "60")
    assert verdicts(out)[key] == "expired_in_grace"
    assert (
        verdicts(run(capsys, "inspect", "user_id:1", "--json")[1])[key] == "fresh"
    )  # without the grace known


# -- top, and progress in a pseudo-terminal ----------------------------------------------------


def test_top_shows_per_use_case_rates_hit_ratios_and_miss_reasons(make_cache: Maker, registry: Any) -> None:
    from gcache.exposition import start_metrics_server
    from gcache.top import render, snapshot

    cache = make_cache()
    calls: list[str] = []

    @cache.cached(key_type="user_id", id_arg="user_id", use_case="Topped", default_config=BOTH)
    def get(user_id: str) -> str:
        calls.append(user_id)
        return user_id

    server, _thread = start_metrics_server(0, addr="127.0.0.1", registry=registry)
    url = f"http://127.0.0.1:{server.server_port}/metrics"
    try:
        from gcache.top import _scrape

        before = snapshot(_scrape(url))
        with cache.enable():
            for _ in range(4):
                get("1")  # 1 miss then 3 LOCAL hits
        view = render(snapshot(_scrape(url)), before, 2.0)
        row = next(line for line in view.splitlines() if line.startswith("Topped"))
        assert row.split() == ["Topped", "2.0", "75%", "0.5", "0%", "0.5", "0"]
        assert "LOCAL not_found 1" in view
        assert "REMOTE not_found 1" in view
        assert "bus subscriptions: 1" in view
        assert "bus lag: no messages" in view
        before = snapshot(_scrape(url))
        make_cache(metrics_registry=CollectorRegistry()).invalidate("user_id", "1")  # another process
        wait_until(lambda: "bus lag: no messages" not in render(snapshot(_scrape(url)), before, 1.0))
        assert re.search(r"bus lag: [0-9.]+ ms over 1 messages", render(snapshot(_scrape(url)), before, 1.0))

        out = subprocess.run(
            [sys.executable, "-m", "gcache", "top", url, "--interval", "0.05", "--iterations", "2"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert out.stdout.count("gcache top: per use case") == 2  # not a terminal: printed one after another
        assert "\x1b[2J" not in out.stdout
    finally:
        server.shutdown()
        server.server_close()


def test_top_and_the_flush_progress_redraw_in_place_in_a_terminal(
    redis_client: redis.Redis, redis_url: str
) -> None:
    import pty

    stamp = time.time_ns() // 1000
    with redis_client.pipeline() as pipe:
        for i in range(2500):
            pipe.set(f"{{urn:gcache:user_id:{i}}}#UC", envelope.encode(pickle.dumps(1), 0, 0, stamp))
        pipe.execute()
    primary, secondary = pty.openpty()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "gcache", "flush", "--dry-run"],
            stdin=secondary, stdout=secondary, stderr=secondary, timeout=30, check=False,
            env={**os.environ, "REDIS_URL": redis_url},
        )  # fmt: skip
        assert done.returncode == 0
        os.close(secondary)
        shown = b""
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # the other end is closed: all read
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(primary)
    text = shown.decode()
    assert "\rscanned: 1000 keys of 'urn:gcache'" in text  # redrawn in place, on the terminal
    assert "\rscanned: 2000 keys of 'urn:gcache'" in text
    assert "would delete 2500 keys of prefix 'urn:gcache' (dry run: nothing deleted)" in text


def test_top_reads_the_process_s_own_registry_too(make_cache: Maker, registry: Any) -> None:
    import io

    from gcache.top import run_top

    cache = make_cache()

    @cache.cached(key_type="user_id", id_arg="user_id", use_case="InProcess", default_config=BOTH)
    def get(user_id: str) -> str:
        return user_id

    with cache.enable():
        get("1")
    out = io.StringIO()
    assert run_top(registry, interval=0.01, iterations=1, out=out) == 0
    assert "InProcess" in out.getvalue()


# -- failover: the node, the fence's replication history, Sentinel's options (issue 20) ----------


def test_inspect_shows_the_node_and_the_fence_s_history_against_the_node_s(
    make_cache: Maker, redis_client: redis.Redis, redis_url: str, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("REDIS_URL", redis_url)
    fill(make_cache())
    replid = str(redis_client.info("replication")["master_replid"])
    node = redis_url.split("@")[-1].rsplit("/", 1)[0]  # 127.0.0.1:port
    tracked = value_key(ENTITY, (("page", "0"),), "Tracked")
    code, out, _ = run(capsys, "inspect", "user_id:1", "--json")
    report = json.loads(out)
    assert (code, report["node"], report["slot"]) == (0, node, None)
    assert (report["fence"]["history"], report["fence"]["node_replid"]) == (replid, replid)
    assert report["fence"]["current"] is True
    text = run(capsys, "inspect", "user_id:1")[1].splitlines()
    assert text[1] == f"  node: {node}"
    assert text[3] == (
        f"  history: fence r {replid}, node master_replid {replid}: the same (the fence is of this "
        "node's replication history)"
    )

    redis_client.hset(watermark_key(ENTITY), "r", "f" * 40)  # as inherited through a failover
    report = json.loads(run(capsys, "inspect", "user_id:1", "--json")[1])
    assert (report["fence"]["history"], report["fence"]["current"]) == ("f" * 40, False)
    assert verdicts(json.dumps(report))[tracked] == "fence_mismatch"
    text = run(capsys, "inspect", "user_id:1")[1].splitlines()
    assert text[3] == (
        f"  history: fence r {'f' * 40}, node master_replid {replid}: differ (a failover or restart "
        "since: the next read makes the fence anew; one with failover_fencing=False trusts it until "
        "a write-back or an invalidation does)"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sentinel", "h:26379"], "--sentinel needs --service-name NAME"),
        (["--sentinel", "h:26379", "--service-name", "m", "--redis-url", "redis://h:6379"],
         "--redis-url and --sentinel: give one"),
        (["--sentinel", "h:26379", "--service-name", "m", "--cluster"], "--cluster and --sentinel"),
        (["--service-name", "m", "--username", "app"],
         "--service-name, --username: only with --sentinel HOST:PORT"),
        (["--redis-url", "redis://h:6379", "--sentinel-tls", "--db", "2"],
         "--db, --sentinel-tls: only with --sentinel"),
        (["--sentinel", "h"], "argument --sentinel: 'h' is not HOST:PORT with a port from 1 to 65535"),
        (["--sentinel", "h:0"], "'h:0' is not HOST:PORT"),
        (["--sentinel", "h:1", "--service-name", "m", "--db", "-1"], "argument --db: must be 0 or more"),
    ],
)  # fmt: skip
def test_bad_sentinel_options_are_refused_by_the_parser(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for command in (["inspect", "user_id:1"], ["flush", "--dry-run"], ["invalidate", "user_id", "1"]):
        with pytest.raises(SystemExit) as exited:
            main([*command, *argv])
        assert exited.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("usage: ")
        assert message in err


def test_top_shows_the_outbox_its_replays_and_drops(
    make_cache: Maker, registry: Any, monkeypatch: pytest.MonkeyPatch, is_async: bool
) -> None:
    import asyncio

    from prometheus_client import generate_latest

    from gcache.top import render, snapshot
    from tests.behaviour.test_outbox import fail_invalidations

    def outbox_line(before: Any) -> str:
        view = render(snapshot(generate_latest(registry).decode()), before, 2.0)
        return next(line for line in view.splitlines() if line.startswith("invalidation outbox"))

    def invalidate(id: str) -> None:
        if is_async:
            asyncio.run(cache.ainvalidate("user_id", id))
        else:
            cache.invalidate("user_id", id)

    def depth() -> int:
        return int(cache.health()["outbox"]["depth"])

    cache = make_cache(invalidation_outbox_size=2, invalidation_outbox_raises=False)
    start = snapshot(generate_latest(registry).decode())
    assert outbox_line(start) == "invalidation outbox: 0 waiting"  # nothing else while nothing happens
    fail_invalidations(monkeypatch, cache)
    invalidate("1")
    invalidate("2")
    wait_until(lambda: sample(registry, "gcache_invalidation_replay_counter_total", result="failed") > 0)
    assert re.fullmatch(r"invalidation outbox: 2 waiting   replays: [0-9.]+/s failed", outbox_line(start))
    invalidate("3")  # the outbox is full: the oldest dropped
    assert re.fullmatch(
        r"invalidation outbox: 2 waiting   replays: [0-9.]+/s failed   "
        r"dropped: 0\.5/s full \(1 since start\)",
        outbox_line(start),
    )
    failing = snapshot(generate_latest(registry).decode())
    monkeypatch.undo()  # Redis takes them again: both replayed
    wait_until(lambda: depth() == 0)
    assert re.fullmatch(
        r"invalidation outbox: 0 waiting   replays: 1\.0/s applied(, [0-9.]+/s failed)?   "
        r"dropped: none now \(1 since start\)",
        outbox_line(failing),
    )
