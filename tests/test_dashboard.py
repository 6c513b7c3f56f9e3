"""The Grafana dashboard and the Prometheus files under grafana/, proven on the real parts.

A real Prometheus server (Debian's ``prometheus`` package) scrapes ``python -m gcache demo
--serve`` every second; every query of every dashboard panel, template variables substituted,
is evaluated through Prometheus's HTTP API and must return at least one series with a number.
``promtool`` checks the example config and the alert rules and runs the rules' unit tests.

The invalidation-bus row is the one exception while the bus is being built: its panels (their
description says "invalidation bus") must parse, and must return data as soon as the demo
exposes ``gcache_bus_message_counter`` samples.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from gcache import GCache, GCacheKeyConfig
from gcache._embedded_redis import free_port
from gcache.metrics import Metrics

REPO = Path(__file__).resolve().parent.parent
GRAFANA = REPO / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "gcache.json"
PROMETHEUS_DIR = GRAFANA / "prometheus"
EXAMPLE_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULES = PROMETHEUS_DIR / "gcache-alerts.yml"
RULES_TEST = PROMETHEUS_DIR / "gcache-alerts.test.yml"
PROVISIONING = GRAFANA / "provisioning"

BUS_MARK = "invalidation bus"  # in the description of every panel of the bus row
BUS_ROW = "Invalidation bus"
BUS_LIVE_METRIC = "gcache_bus_message_counter_total"
MULTI_VALUE = ".*"  # what Grafana sends for "All" (the variables' allValue)
RATE_INTERVAL = "10s"  # $__rate_interval with a 1 s scrape interval, with room to spare
SCRAPE_INTERVAL = "1s"
MIN_SCRAPES = 6  # scrapes of the demo before the first query
TEST_BUDGET_SEC = 45.0  # the real-Prometheus test stops waiting for data after this
DEMO_USE_CASES = {"GetUser", "GetOrders", "GetExchangeRate"}
METRICS_URL = re.compile(r"Metrics\s+http://127\.0\.0\.1:(\d+)/metrics")
VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)(?::\w+)?\}")
LABEL_VALUES = re.compile(r"^label_values\((?:(.+),\s*)?(\w+)\)$")
METRIC_NAME = re.compile(r"\b[a-z_]*gcache_[a-z_]+\b")


def tool(name: str) -> str:
    """The path of a Prometheus tool; a clear failure (not a skip) when it is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"`{name}` is not installed: run `apt-get install prometheus` (Debian's package ships "
            "prometheus and promtool; .ci/run installs it when missing)",
            pytrace=False,
        )
    return path


# -- the dashboard JSON ------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Target:
    panel: str
    ref_id: str
    expr: str
    bus: bool  # in the invalidation-bus row: data required only once the bus reports


def load_dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Panels in order, rows included, nested (collapsed-row) panels flattened."""
    out: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def data_panels(dashboard: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """(panel, title of the row it is in) for every panel that is not a row."""
    row = ""
    out = []
    for panel in all_panels(dashboard):
        if panel["type"] == "row":
            row = panel["title"]
        else:
            out.append((panel, row))
    return out


def targets(dashboard: dict[str, Any]) -> list[Target]:
    return [
        Target(panel["title"], t["refId"], t["expr"], BUS_MARK in panel.get("description", "").lower())
        for panel, _row in data_panels(dashboard)
        for t in panel["targets"]
    ]


def query_variables(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [v for v in dashboard["templating"]["list"] if v["type"] == "query"]


def substitute(expr: str, rate_interval: str = RATE_INTERVAL) -> str:
    """What Grafana sends for ``expr`` with every variable at "All"."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name == "__rate_interval":
            return rate_interval
        if name in {"use_case", "key_type", "layer"}:
            return MULTI_VALUE
        raise AssertionError(f"unknown variable ${name} in {expr!r}")

    return VARIABLE.sub(value, expr)


def exposed_names() -> dict[str, set[str]]:
    """gcache's metric families (no prefix) and the sample names each one exposes."""
    registry = CollectorRegistry()
    Metrics(registry, "")
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return {family.name: {family.name + s for s in suffixes[family.type]} for family in registry.collect()}


def test_dashboard_uses_current_schema_and_a_datasource_variable() -> None:
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] == 42  # the last classic-model version (Grafana 12+)
    assert dashboard["uid"]
    assert dashboard["title"]
    assert "time_options" not in dashboard.get("timepicker", {})  # removed by schema v41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel, _row in data_panels(dashboard):
        # Datasource references are objects since schema v36; every query follows the variable.
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["type"] in {"timeseries", "stat"}, panel["title"]  # no deprecated "graph"
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            assert target["expr"].strip()
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(set(ref_ids)) == len(ref_ids), panel["title"]
        assert panel.get("description"), f"panel {panel['title']!r} does not say what it answers"


def test_dashboard_layout_fits_the_grid() -> None:
    panels = all_panels(load_dashboard())
    ids = [p["id"] for p in panels]
    assert len(set(ids)) == len(ids)
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert 0 <= pos["x"] < pos["x"] + pos["w"] <= 24, panel["title"]
        assert pos["h"] > 0, panel["title"]
        area = {
            (x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not area & cells, f"panel {panel['title']!r} overlaps another"
        cells |= area


def test_template_variables_are_filled_from_label_values() -> None:
    variables = {v["name"]: v for v in query_variables(load_dashboard())}
    assert set(variables) == {"use_case", "key_type", "layer"}
    for name, variable in variables.items():
        query = variable["query"]["query"]
        match = LABEL_VALUES.match(query)
        assert match is not None, query
        assert match.group(2) == name, query
        assert variable["definition"] == query
        assert variable["multi"] is True
        assert variable["includeAll"] is True
        assert variable["allValue"] == MULTI_VALUE
        assert variable["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_every_gcache_metric_has_a_panel_and_names_carry_no_prefix() -> None:
    families = exposed_names()
    allowed = set().union(*families.values())
    exprs = [t.expr for t in targets(load_dashboard())]
    used = {name for expr in exprs for name in METRIC_NAME.findall(expr)}
    assert used <= allowed, f"not metrics of gcache (a typo or a prefix?): {sorted(used - allowed)}"
    assert all(name.startswith("gcache_") for name in used)
    missing = [family for family, names in families.items() if not names & used]
    assert missing == [], f"metrics with no dashboard panel: {missing}"


def test_panels_required_by_the_issue_are_there() -> None:
    exprs = " ".join(t.expr for t in targets(load_dashboard()))
    for needle in (
        "1 - (sum by (use_case, layer) (rate(gcache_miss_counter_total",  # hit ratio per layer
        "histogram_quantile(0.5, sum by (le, layer) (rate(gcache_get_timer_bucket",
        "histogram_quantile(0.95, sum by (le, layer) (rate(gcache_get_timer_bucket",
        "histogram_quantile(0.99, sum by (le, layer) (rate(gcache_get_timer_bucket",
        "histogram_quantile(0.5, sum by (le, use_case) (rate(gcache_fallback_timer_bucket",
        "histogram_quantile(0.99, sum by (le, use_case) (rate(gcache_fallback_timer_bucket",
        "sum by (error, in_fallback) (rate(gcache_error_counter_total",
        "sum by (use_case, layer, reason) (rate(gcache_disabled_counter_total",
        "sum by (use_case, layer, reason) (rate(gcache_miss_reason_counter_total",
        "sum by (use_case, layer, result) (rate(gcache_write_counter_total",
        "gcache_fallback_timer_sum",
    ):
        assert needle in exprs, needle


def test_bus_row_panels_are_marked_and_only_they_are() -> None:
    for panel, row in data_panels(load_dashboard()):
        marked = BUS_MARK in panel["description"].lower()
        assert marked == (row == BUS_ROW), panel["title"]
        uses_bus_metric = any(
            "gcache_bus_" in t["expr"] or "gcache_local_dropped" in t["expr"] for t in panel["targets"]
        )
        assert uses_bus_metric == marked, panel["title"]


def test_substitute_gives_what_grafana_sends_for_all() -> None:
    assert (
        substitute('rate(x{use_case=~"$use_case", layer=~"${layer}|all"}[$__rate_interval])')
        == 'rate(x{use_case=~".*", layer=~".*|all"}[10s])'
    )
    with pytest.raises(AssertionError, match="unknown variable"):
        substitute("rate(x[$__range])")


def test_provisioning_points_grafana_at_prometheus_and_the_dashboard() -> None:
    datasource = (PROVISIONING / "datasources" / "prometheus.yml").read_text(encoding="utf-8")
    assert "type: prometheus" in datasource
    assert "apiVersion: 1" in datasource
    provider = (PROVISIONING / "dashboards" / "gcache.yml").read_text(encoding="utf-8")
    assert "type: file" in provider
    assert "path:" in provider


# -- promtool ----------------------------------------------------------------------------------


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("promtool"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=PROMETHEUS_DIR,
    )


def test_promtool_accepts_the_example_config() -> None:
    result = promtool("check", "config", str(EXAMPLE_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr
    assert "1 rule files found" in result.stdout + result.stderr  # the alert rules are loaded


def test_promtool_accepts_the_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 6 rules found" in result.stdout + result.stderr


def test_promtool_rule_unit_tests_pass() -> None:
    result = promtool("test", "rules", str(RULES_TEST))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_rule_unit_tests_cover_each_alert_firing() -> None:
    text = RULES_TEST.read_text(encoding="utf-8")
    for alert in (
        "GCacheHitRatioCollapse",
        "GCacheErrorRate",
        "GCacheBreakerOpen",
        "GCacheInvalidationsWaiting",
        "GCacheInvalidationsLost",
        "GCacheFailoverFencingOff",
    ):
        assert f"alertname: {alert}" in text
        assert f"alert: {alert}" in RULES.read_text(encoding="utf-8")
    assert text.count("exp_labels:") >= 3


# The original library's hit ratio as its users wrote it: no sum, so it needs the miss and
# request counters to carry the same labels.
ORIGINAL_HIT_RATIO = "1 - rate(gcache_miss_counter_total[5m]) / rate(gcache_request_counter_total[5m])"


async def test_promtool_evaluates_the_original_hit_ratio_over_gcache_series(
    make_cache: Callable[..., GCache], registry: CollectorRegistry, tmp_path: Path
) -> None:
    """The series a real cache exposes (LOCAL and REMOTE, with Redis), replayed in promtool as
    steady rates: the original's expression returns one sample per use case and layer."""
    first, second = make_cache(), make_cache()  # the second one's empty LOCAL: REMOTE hits
    for cache, uids in ((first, "1231111211"), (second, "12")):

        @cache.cached(
            key_type="user_id", id_arg="uid", use_case="Ratio", default_config=GCacheKeyConfig.enabled(60)
        )
        async def get(uid: str) -> str:
            return uid

        with cache.enable():
            for uid in uids:
                await get(uid)
    counts = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for m in registry.collect()
        for s in m.samples
        if s.name in ("gcache_request_counter_total", "gcache_miss_counter_total") and s.value
    }
    assert {labels for name, labels in counts if name == "gcache_miss_counter_total"} == {
        labels for name, labels in counts if name == "gcache_request_counter_total"
    }  # every layer looked up here missed at least once: the same label sets on both sides

    def selector(name: str, labels: tuple[tuple[str, str], ...]) -> str:
        return name + "{" + ",".join(f'{k}="{v}"' for k, v in (("job", "app"), *labels)) + "}"

    series = [
        {"series": selector(name, labels), "values": f"0+{value:g}x20"}
        for (name, labels), value in counts.items()
    ]
    ratios = {
        selector("", labels): 1 - value / counts["gcache_request_counter_total", labels]
        for (name, labels), value in counts.items()
        if name == "gcache_miss_counter_total"
    }
    assert sorted(ratios.values()) == pytest.approx([0.4, 7 / 12])  # REMOTE 2 of 5, LOCAL 7 of 12
    expected = [{"labels": labels, "value": ratio} for labels, ratio in ratios.items()]
    test_file = tmp_path / "original-hit-ratio.test.yml"
    test_file.write_text(
        json.dumps(  # JSON is YAML
            {
                "rule_files": [],
                "evaluation_interval": "1m",
                "tests": [
                    {
                        "interval": "1m",
                        "input_series": series,
                        "promql_expr_test": [
                            {"expr": ORIGINAL_HIT_RATIO, "eval_time": "10m", "exp_samples": expected}
                        ],
                    }
                ],
            }
        ),
        encoding="utf-8",
    )
    result = promtool("test", "rules", str(test_file))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


# -- the real Prometheus -----------------------------------------------------------------------


def demo_env() -> dict[str, str]:
    """The user's environment; GCACHE_TEST_REDIS_URL, when set, becomes the demo's REDIS_URL."""
    env = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "PROMETHEUS_MULTIPROC_DIR"}}
    external = os.environ.get("GCACHE_TEST_REDIS_URL")
    if external:
        env["REDIS_URL"] = external
    return env


def stop(process: subprocess.Popen[bytes], grace_sec: float) -> None:
    """SIGTERM by pid, then SIGKILL if it has not exited within ``grace_sec``."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace_sec)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())


class Prometheus:
    """Prometheus's HTTP API on a loopback port."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.base}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        status, body = http_get(url)
        reply = json.loads(body)
        if status != 200 or reply.get("status") != "success":
            raise QueryError(f"{path} {params}: HTTP {status}: {reply.get('error', reply)}")
        return reply["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        data = self.api("query", query=promql)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result


class QueryError(Exception):
    """Prometheus refused a query (a PromQL error is a dashboard bug, never waited out)."""


def finite(result: list[dict[str, Any]]) -> bool:
    """At least one series with a number (NaN draws nothing on a panel)."""
    return any(math.isfinite(float(series["value"][1])) for series in result)


@contextlib.contextmanager
def running_demo(workdir: Path, deadline: float) -> Iterator[tuple[int, Path]]:
    """``python -m gcache demo --serve`` as a user starts it; yields (metrics port, its log)."""
    log = workdir / "demo.log"
    with log.open("wb") as out:
        demo = subprocess.Popen(
            [sys.executable, "-m", "gcache", "demo", "--serve", "--port", "0", "--duration", "120"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=demo_env(),
            cwd=REPO,
        )
    try:
        while True:
            match = METRICS_URL.search(log.read_text(encoding="utf-8", errors="replace"))
            if match is not None:
                break
            if demo.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the demo did not serve /metrics:\n{log.read_text(errors='replace')}")
            time.sleep(0.1)
        yield int(match.group(1)), log
    finally:
        stop(demo, grace_sec=15)  # SIGTERM: it stops its traffic, its Redis and /metrics


@contextlib.contextmanager
def running_prometheus(workdir: Path, demo_port: int, deadline: float) -> Iterator[Prometheus]:
    """A real Prometheus scraping the demo every second, with the alert rules loaded."""
    binary = tool("prometheus")
    config = workdir / "prometheus.yml"
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "global": {
                    "scrape_interval": SCRAPE_INTERVAL,
                    "scrape_timeout": SCRAPE_INTERVAL,
                    "evaluation_interval": SCRAPE_INTERVAL,
                },
                "rule_files": [str(RULES)],
                "scrape_configs": [
                    {"job_name": "gcache-demo", "static_configs": [{"targets": [f"127.0.0.1:{demo_port}"]}]}
                ],
            },
            indent=2,
        ),
        encoding="utf-8",
    )
    for attempt in range(3):  # a free port can be taken before Prometheus binds it
        port = free_port()
        log = workdir / f"prometheus-{attempt}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={workdir / f'tsdb-{attempt}'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=workdir,
            )
        try:
            while process.poll() is None and time.monotonic() < deadline:
                with contextlib.suppress(OSError):
                    if http_get(f"http://127.0.0.1:{port}/-/ready", timeout=1)[0] == 200:
                        break
                time.sleep(0.2)
            if process.poll() is None and time.monotonic() < deadline:
                yield Prometheus(port)
                return
        finally:
            stop(process, grace_sec=10)
        if "address already in use" not in log.read_text(errors="replace"):
            break
    pytest.fail(f"Prometheus did not start:\n{log.read_text(errors='replace')}")


def wait_for_scrapes(prometheus: Prometheus, deadline: float) -> None:
    promql = f'count_over_time(up{{job="gcache-demo"}}[1m]) >= {MIN_SCRAPES} and up{{job="gcache-demo"}} == 1'
    while time.monotonic() < deadline:
        if prometheus.query(promql):
            return
        time.sleep(0.5)
    targets = prometheus.api("targets")
    pytest.fail(f"Prometheus did not scrape the demo {MIN_SCRAPES} times: {targets}")


def bus_reports(demo_port: int) -> bool:
    """True once the demo exposes invalidation-bus message samples (the bus has landed)."""
    status, body = http_get(f"http://127.0.0.1:{demo_port}/metrics")
    assert status == 200
    return any(line.startswith(BUS_LIVE_METRIC + "{") for line in body.decode().splitlines())


@pytest.mark.slow
def test_every_panel_query_returns_data_from_a_real_prometheus(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tool("prometheus")  # fail at once, with the install hint, when it is missing
    dashboard = load_dashboard()
    panel_targets = targets(dashboard)
    variables = query_variables(dashboard)
    assert panel_targets
    assert variables
    deadline = time.monotonic() + TEST_BUDGET_SEC

    with (
        running_demo(tmp_path, deadline) as (demo_port, demo_log),
        running_prometheus(tmp_path, demo_port, deadline) as prometheus,
    ):
        wait_for_scrapes(prometheus, deadline)

        # Template variables: label_values(selector, label) as Grafana asks for it.
        values: dict[str, list[str]] = {}
        for variable in variables:
            match = LABEL_VALUES.match(variable["query"]["query"])
            assert match is not None
            selector, label = match.group(1), match.group(2)
            params = {"match[]": substitute(selector)} if selector else {}
            values[variable["name"]] = prometheus.api(f"label/{label}/values", **params)
        assert set(values["use_case"]) >= DEMO_USE_CASES, values
        assert set(values["key_type"]) >= {"user_id", "currency"}, values
        assert set(values["layer"]) >= {"LOCAL", "REMOTE"}, values

        # Every panel query: a PromQL error fails at once; no data is waited for, up to the budget
        # (some series start with the first event of their kind, e.g. a failing source read).
        queries = {t: substitute(t.expr) for t in panel_targets}
        pending = set(queries)
        while pending:
            for target in sorted(pending, key=lambda t: (t.panel, t.ref_id)):
                try:
                    result = prometheus.query(queries[target])
                except QueryError as exc:
                    pytest.fail(f"panel {target.panel!r} query {target.ref_id}: {exc}")
                if finite(result):
                    pending.discard(target)
            if not pending or time.monotonic() > deadline:
                break
            if all(t.bus for t in pending) and not bus_reports(demo_port):
                break  # only bus panels left, and the bus does not report yet
            time.sleep(1.0)

        bus_live = bus_reports(demo_port)
        empty = sorted(t for t in pending if bus_live or not t.bus)
        skipped = sorted(t for t in pending if not bus_live and t.bus)
        for target in skipped:
            with capsys.disabled():  # shown even when pytest captures output
                print(
                    f"\n{__name__}: not required yet: panel {target.panel!r} ({target.ref_id}) returned"
                    f" no data; the demo exposes no {BUS_LIVE_METRIC} samples (the invalidation bus"
                    " has not landed)"
                )
        assert not empty, (
            "dashboard panels with no data from the demo:\n"
            + "\n".join(f"  {t.panel!r} {t.ref_id}: {queries[t]}" for t in empty)
            + f"\ndemo output:\n{demo_log.read_text(errors='replace')[-3000:]}"
        )

        # The alert rules load and evaluate without errors against the same data.
        groups = prometheus.api("rules")["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        assert {rule["name"] for rule in rules} == {
            "GCacheHitRatioCollapse",
            "GCacheErrorRate",
            "GCacheBreakerOpen",
            "GCacheInvalidationsWaiting",
            "GCacheInvalidationsLost",
            "GCacheFailoverFencingOff",
        }
        while any(rule["health"] != "ok" for rule in rules) and time.monotonic() < deadline + 5:
            time.sleep(0.5)
            rules = [rule for group in prometheus.api("rules")["groups"] for rule in group["rules"]]
        assert all(rule["health"] == "ok" for rule in rules), rules
        assert [rule["name"] for rule in rules if rule["state"] != "inactive"] == []
