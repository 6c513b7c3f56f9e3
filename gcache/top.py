"""``python -m gcache top URL``: a live view of one process's (or one server's) gcache metrics.

It scrapes the ``/metrics`` URL every ``interval`` seconds and shows, per use case, lookups and
hit ratios per layer over the last interval, the miss reasons, errors, function runs, the
process's breakers (the cluster nodes whose breaker is open, by name) and bus, and its
invalidation outbox (entities waiting, replays and drops per second). On a terminal the screen
is redrawn in place; otherwise each update is printed after the last (so it can be logged or
tested).
"""

from __future__ import annotations

import sys
import time
import urllib.request
from collections import defaultdict
from typing import TextIO

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["Snapshot", "render", "run_top", "snapshot"]

Snapshot = dict[tuple[str, tuple[tuple[str, str], ...]], float]
_CLEAR = "\x1b[H\x1b[2J"


def snapshot(text: str) -> Snapshot:
    """Every sample of a scrape, keyed by (name, sorted labels)."""
    found: Snapshot = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


def _sum(samples: Snapshot, name: str, by: str = "use_case", **match: str) -> dict[str, float]:
    """Sum of ``name``'s samples per value of the label ``by`` (the use case), over the samples
    whose labels match."""
    totals: dict[str, float] = defaultdict(float)
    for (sample, labels), value in samples.items():
        if sample != name:
            continue
        found = dict(labels)
        if all(found.get(k) == v for k, v in match.items()):
            totals[found.get(by, "")] += value
    return totals


def _total(samples: Snapshot, name: str) -> float:
    return sum(_sum(samples, name).values())


def render(now: Snapshot, before: Snapshot, seconds: float, prefix: str = "") -> str:
    """The view of the change from ``before`` to ``now`` over ``seconds``."""
    p = prefix + "gcache_"

    def delta(name: str, **match: str) -> dict[str, float]:
        current, previous = _sum(now, p + name, **match), _sum(before, p + name, **match)
        return {uc: current[uc] - previous.get(uc, 0.0) for uc in current}

    use_cases = sorted(uc for uc in _sum(now, p + "request_counter_total") if uc)
    lines = [
        f"gcache top: per use case, over the last {seconds:.1f} s",
        f"{'use case':<36} {'LOCAL/s':>9} {'hit':>6} {'REMOTE/s':>9} {'hit':>6} {'runs/s':>8} {'errors':>7}",
    ]
    requests = {layer: delta("request_counter_total", layer=layer) for layer in ("LOCAL", "REMOTE")}
    misses = {layer: delta("miss_counter_total", layer=layer) for layer in ("LOCAL", "REMOTE")}
    runs = delta("fallback_timer_count")
    errors = delta("error_counter_total")
    for uc in use_cases:
        cells = []
        for layer in ("LOCAL", "REMOTE"):
            asked = requests[layer].get(uc, 0.0)
            ratio = 1 - misses[layer].get(uc, 0.0) / asked if asked else None
            cells.append(f"{asked / seconds:>9.1f} {'-' if ratio is None else f'{ratio:.0%}':>6}")
        rate = runs.get(uc, 0.0) / seconds
        lines.append(f"{uc[:36]:<36} {cells[0]} {cells[1]} {rate:>8.1f} {errors.get(uc, 0.0):>7.0f}")
    reasons: dict[str, float] = defaultdict(float)
    for (sample, labels), value in now.items():
        if sample == p + "miss_reason_counter_total":
            found = dict(labels)
            reasons[f"{found.get('layer')} {found.get('reason')}"] += value - before.get(
                (sample, labels), 0.0
            )
    shown = ", ".join(f"{name} {count:.0f}" for name, count in sorted(reasons.items()) if count)
    lines.append(f"miss reasons: {shown or 'none'}")
    breaker, bus = _total(now, p + "breaker_open"), _total(now, p + "bus_connected")
    heard = _total(now, p + "bus_lag_seconds_count") - _total(before, p + "bus_lag_seconds_count")
    lag = _total(now, p + "bus_lag_seconds_sum") - _total(before, p + "bus_lag_seconds_sum")
    shown_lag = f"{lag / heard * 1000:.1f} ms over {heard:.0f} messages" if heard else "no messages"
    nodes = sorted(node for node, count in _sum(now, p + "breaker_node_open", by="node").items() if count > 0)
    shown_nodes = f" (cluster nodes: {', '.join(nodes)})" if nodes else ""
    lines.append(
        f"breaker open: {breaker:.0f}{shown_nodes}   bus subscriptions: {bus:.0f}   bus lag: {shown_lag}"
    )
    if any(sample == p + "invalidation_outbox" for sample, _ in now):
        lines.append(_outbox_line(now, before, seconds, p))
    return "\n".join(lines)


def _outbox_line(now: Snapshot, before: Snapshot, seconds: float, p: str) -> str:
    """The outbox's depth, then its replays and drops per second over the interval, each by
    result or reason, when there were any (and the drops since the process started)."""

    def rates(name: str, by: str) -> str:
        current, previous = _sum(now, p + name, by=by), _sum(before, p + name, by=by)
        changes = {k: current[k] - previous.get(k, 0.0) for k in sorted(current) if k}
        return ", ".join(f"{(count / seconds):.1f}/s {k}" for k, count in changes.items() if count)

    depth = _total(now, p + "invalidation_outbox")
    line = f"invalidation outbox: {depth:.0f} waiting"
    replays = rates("invalidation_replay_counter_total", "result")
    line += f"   replays: {replays}" if replays else ""
    dropped = rates("invalidation_outbox_dropped_counter_total", "reason")
    ever = _total(now, p + "invalidation_outbox_dropped_counter_total")
    if dropped or ever:
        line += f"   dropped: {dropped or 'none now'} ({ever:.0f} since start)"
    return line


def run_top(
    source: str | CollectorRegistry,
    interval: float = 1.0,
    iterations: int | None = None,
    prefix: str = "",
    out: TextIO | None = None,
) -> int:
    """The live view of ``source``: a ``/metrics`` URL, or, from inside the process (a debug
    shell, a management command), its ``CollectorRegistry``."""
    out = out or sys.stdout
    live = out.isatty()
    url = source if isinstance(source, str) else "the registry"

    def read() -> Snapshot:
        if isinstance(source, str):
            return snapshot(_scrape(source))
        return snapshot(generate_latest(source).decode())

    try:
        before, at = read(), time.monotonic()
        done = 0
        while iterations is None or done < iterations:
            time.sleep(interval)
            now, now_at = read(), time.monotonic()
            view = render(now, before, now_at - at, prefix)
            print((_CLEAR if live else "") + view + ("" if live else "\n"), file=out, flush=True)
            before, at = now, now_at
            done += 1
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        print(f"gcache top: cannot read {url}: {exc}", file=sys.stderr)
        return 1
    return 0


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return str(answer.read().decode("utf-8"))
