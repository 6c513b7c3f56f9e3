"""The table the demo prints, read back from the Prometheus metrics the library publishes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from gcache.demo.service import USE_CASE_CONFIGS

__all__ = ["Row", "Samples", "avoided", "format_table", "read_rows"]

# -- reading the library's metrics back --------------------------------------------------------


@dataclass
class Row:
    """One use case's line of the results table, computed from the Prometheus registry."""

    use_case: str
    calls: int
    local_hits: int | None  # None: the layer took no part
    remote_hits: int | None
    shared: int  # calls that took a concurrent call's result or tracked read (single flight)
    function_calls: int
    local_hit_sec: float | None
    remote_hit_sec: float | None
    miss_sec: float | None
    function_sec_total: float


class Samples:
    """A snapshot of the registry, summed over the labels a query leaves open."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._samples = [(s.name, s.labels, s.value) for metric in registry.collect() for s in metric.samples]

    def sum(self, name: str, labels: Mapping[str, str]) -> float:
        return sum(
            value
            for sample_name, sample_labels, value in self._samples
            if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items())
        )

    def mean(self, name: str, labels: Mapping[str, str]) -> float | None:
        count = self.sum(f"{name}_count", labels)
        return self.sum(f"{name}_sum", labels) / count if count else None


def read_rows(registry: CollectorRegistry, calls: Counter[str], prefix: str = "") -> list[Row]:
    """Hits per layer, function calls and latency per path, as the library's metrics report them.

    hits = lookups (gcache_request_counter) - misses (gcache_miss_counter). Latency per path adds up the mean
    lookup times (gcache_get_timer) and the mean time in the function (gcache_fallback_timer).
    """
    s = Samples(registry)
    m = prefix + "gcache_"
    rows = []
    for use_case in USE_CASE_CONFIGS:
        hits: dict[str, int | None] = {}
        lookup: dict[str, float] = {}
        for layer in ("LOCAL", "REMOTE"):
            where = {"use_case": use_case, "layer": layer}
            requests = s.sum(f"{m}request_counter_total", where)
            misses = s.sum(f"{m}miss_counter_total", where)
            hits[layer] = int(requests - misses) if requests else None
            lookup[layer] = s.mean(f"{m}get_timer", where) or 0.0
        where = {"use_case": use_case}
        function_calls = int(s.sum(f"{m}fallback_timer_count", where))
        shared = sum(
            int(s.sum(f"{m}single_flight_counter_total", {**where, "result": result}))
            for result in ("joined", "read_merged")
        )
        function_mean = s.mean(f"{m}fallback_timer", where)
        rows.append(
            Row(
                use_case=use_case,
                calls=calls[use_case],
                local_hits=hits["LOCAL"],
                remote_hits=hits["REMOTE"],
                shared=shared,
                function_calls=function_calls,
                local_hit_sec=lookup["LOCAL"] if hits["LOCAL"] else None,
                remote_hit_sec=lookup["LOCAL"] + lookup["REMOTE"] if hits["REMOTE"] else None,
                miss_sec=lookup["LOCAL"] + lookup["REMOTE"] + function_mean if function_mean else None,
                function_sec_total=s.sum(f"{m}fallback_timer_sum", where),
            )
        )
    return rows


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 0.001:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def avoided(calls: int, function_calls: int) -> str:
    return f"{100 * (calls - function_calls) / calls:.1f}%" if calls else "-"


HEADER = (
    "use case",
    "calls",
    "LOCAL hits",
    "REMOTE hits",
    "shared",
    "function calls",
    "avoided",
    "local hit",
    "remote hit",
    "miss",
)


def format_table(rows: Sequence[Row]) -> list[str]:
    """Plain-text table, numbers right-aligned, with a total line."""
    body = [
        (
            r.use_case,
            _count(r.calls),
            _count(r.local_hits),
            _count(r.remote_hits),
            _count(r.shared),
            _count(r.function_calls),
            avoided(r.calls, r.function_calls),
            _duration(r.local_hit_sec),
            _duration(r.remote_hit_sec),
            _duration(r.miss_sec),
        )
        for r in rows
    ]
    calls = sum(r.calls for r in rows)
    functions = sum(r.function_calls for r in rows)
    total = (
        "total",
        _count(calls),
        _count(sum(r.local_hits or 0 for r in rows)),
        _count(sum(r.remote_hits or 0 for r in rows)),
        _count(sum(r.shared for r in rows)),
        _count(functions),
        avoided(calls, functions),
        "",
        "",
        "",
    )
    table = [HEADER, *body, total]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADER))]

    def render(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        return (
            "  "
            + "  ".join([first, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))]).rstrip()
        )

    rule = ["-" * w for w in widths]
    return [render(HEADER), render(rule), *(render(line) for line in body), render(rule), render(total)]
