"""The results table (Markdown) and chart (PNG) under benchmarks/results/.

Each scenario saves its rows with the facts of its run in ``results/<scenario>.json``; the table
and the chart are rebuilt from every saved scenario, so running one scenario alone refreshes its
rows and keeps the others (each says when it was measured).
"""

from __future__ import annotations

import importlib
import json
import pathlib
from collections.abc import Sequence
from typing import Any

from benchmarks._harness import (
    AIOCACHE_POOL_NOTE,
    BARE_POOL_NOTE,
    CASHEWS_POOL_NOTE,
    GCACHE_POOL_NOTE,
    TIMES,
    Result,
    environment,
)

__all__ = ["RESULTS", "build", "save", "table"]

RESULTS = pathlib.Path(__file__).parent / "results"


def save(name: str, results: list[Result], facts: dict[str, str]) -> None:
    data = {
        "scenario": name,
        "environment": {**environment(), **facts},
        "results": [r.to_json() for r in results],
    }
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")


def load(names: Sequence[str]) -> list[tuple[str, dict[str, str], list[Result]]]:
    found = []
    for name in names:
        path = RESULTS / f"{name}.json"
        if path.exists():
            data = json.loads(path.read_text())
            found.append((name, data["environment"], [Result.from_json(r) for r in data["results"]]))
    return found


def _value(value: float, unit: str) -> str:
    if unit == "ops/s":
        return f"{value:,.0f} ops/s"
    if unit == "MB":
        return f"{value:.1f} MB"
    if unit == "instructions/op":
        return f"{value / 1000:,.1f}k instr."
    return f"{value:.2f} µs" if value < 100 else f"{value:.0f} µs"


def _target(r: Result) -> str:
    if r.rival_of is not None:
        return f"{r.rival_of} faster"
    parts = []
    if r.target is not None:
        parts.append(f"{'≥' if r.higher_is_better else '≤'} {r.target:g}{TIMES}")
    parts += list(r.conditions)
    return ", ".join(parts) if parts else "—"


def _met(r: Result, rows: list[Result]) -> str:
    if r.rival_of is not None:
        ours = next((o for o in rows if o.scenario == r.scenario and o.subject == r.rival_of), None)
        if ours is None:
            return "—"
        return "yes" if ours.better_than(r) else "**no**"
    met = r.target_met()
    if met is None:
        return "—"
    if met:
        return "yes"
    failed = [name for name, ok in r.conditions.items() if not ok]
    return "**no**" + (f" ({', '.join(failed)})" if failed else "")


def table(rows: list[Result]) -> str:
    lines = [
        "| scenario | subject | per operation | baseline | baseline value | ratio | target | met? |",
        "|---|---|---:|---|---:|---:|---|---|",
    ]
    for r in rows:
        subject = f"{r.subject} ({r.note})" if r.note else r.subject
        lines.append(
            f"| {r.scenario} | {subject} | {_value(r.value, r.unit)} | {r.baseline} | "
            f"{_value(r.baseline_value, r.unit)} | {r.ratio:.3g}{TIMES} | {_target(r)} | {_met(r, rows)} |"
        )
    return "\n".join(lines)


def _header(runs: list[tuple[str, dict[str, str], list[Result]]]) -> str:
    first = runs[0][1]
    lines = [
        "# gcache benchmarks",
        "",
        f"{first['python']}, {first['cores']} cores; redis-server {first.get('redis-server', '?')}, "
        f"redis-py {first['redis-py']}, hiredis {first['hiredis']}, cachetools {first['cachetools']}, "
        f"cashews {first['cashews']}, aiocache {first['aiocache']}.",
        "",
        "| scenario set | measured | load average (1 / 5 / 15 min) before it |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {facts['date']} | {facts['load']} |" for name, facts, _ in runs]
    lines += [
        "",
        "Each ratio is the subject's figure over its baseline's, both measured in the same run, "
        "timed in alternating batches, median batch kept (concurrency: best round of waves; "
        "instruction counts: callgrind, two runs of different lengths, their difference per call). "
        "µs/op and instructions: lower is better; "
        "ops/s: higher is better. A rival library's row is met when gcache's row named in its target "
        "beats it.",
        "",
        f"Connection pools (REMOTE scenarios): {GCACHE_POOL_NOTE}; {BARE_POOL_NOTE}; "
        f"{CASHEWS_POOL_NOTE}; {AIOCACHE_POOL_NOTE}.",
    ]
    return "\n".join(lines)


ORDER = (
    "async LOCAL hit",
    "sync LOCAL hit",
    "async REMOTE hit",
    "sync REMOTE hit",
    "async miss+write",
    "sync miss+write",
)  # the numbering; other scenarios follow in the order they ran


def _rank(r: Result) -> int:
    return ORDER.index(r.scenario) if r.scenario in ORDER else len(ORDER)


def build(order: Sequence[str]) -> tuple[str, pathlib.Path | None]:
    """Write results.md and results.png from every saved scenario; return the table text."""
    runs = load(order)
    if not runs:
        return "", None
    rows = sorted((r for _, _, results in runs for r in results), key=_rank)
    text = table(rows)
    (RESULTS / "results.md").write_text(
        f"{_header(runs)}\n\n{text}\n\nInvalidation across processes: see invalidation.md.\n"
    )
    return text, chart(rows, RESULTS / "results.png")


def chart(rows: list[Result], path: pathlib.Path) -> pathlib.Path | None:
    """Grouped bars of ratio to baseline per scenario and library, targets as marks."""
    try:
        # Imported by name: matplotlib comes with the bench extra, and `make lint` runs without it.
        importlib.import_module("matplotlib").use("Agg")
        plt: Any = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        print("matplotlib is not installed (pip install '.[bench]'): no chart")
        return None
    latency = [r for r in rows if r.unit == "µs/op"]
    lower = [
        (
            "throughput: ratio to bare redis-py (higher is better)\ngcache = REMOTE only unless named",
            [r for r in rows if r.unit == "ops/s"],
        ),
        ("memory: ratio to TTLCache", [r for r in rows if r.unit == "MB"]),
        (
            "client CPU: instructions per hit,\nratio to the floor (callgrind)",
            [r for r in rows if r.unit == "instructions/op"],
        ),
    ]
    lower = [(title, rs) for title, rs in lower if rs]
    fig = plt.figure(figsize=(13, 10))
    grid = fig.add_gridspec(2, max(1, len(lower)), height_ratios=(1.25, 1))
    axes = []
    if latency:
        axes.append(fig.add_subplot(grid[0, :]))
        _panel(axes[-1], "latency: ratio to the bare baseline (lower is better)", latency)
    for column, (title, panel_rows) in enumerate(lower):
        axes.append(fig.add_subplot(grid[1, column]))
        _panel(axes[-1], title, panel_rows)
    handles, labels = [], []
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), frameon=False, fontsize=10)
    fig.suptitle("gcache against bare baselines, cashews and aiocache (measured in the same run)")
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _family(subject: str) -> str:
    for family in ("cashews", "aiocache"):
        if subject.startswith(family):
            return family
    if "LOCAL+REMOTE" in subject:
        return "gcache, LOCAL+REMOTE"
    return "gcache, tracked" if "tracked" in subject else "gcache"


COLOURS = {
    "gcache": "#1f77b4",
    "gcache, tracked": "#6baed6",
    "gcache, LOCAL+REMOTE": "#9467bd",
    "cashews": "#ff7f0e",
    "aiocache": "#2ca02c",
}


def _panel(ax: Any, title: str, rows: list[Result]) -> None:
    ticker: Any = importlib.import_module("matplotlib.ticker")
    colours = COLOURS
    scenarios = list(dict.fromkeys(r.scenario for r in rows))
    families = [f for f in colours if any(_family(r.subject) == f for r in rows)]
    width = 0.8 / max(1, len(families))
    log = any(r.ratio > 8 for r in rows)
    for i, scenario in enumerate(scenarios):
        for j, family in enumerate(families):
            match = [r for r in rows if r.scenario == scenario and _family(r.subject) == family]
            if not match:
                continue
            r = match[0]
            x = i - 0.4 + width * (j + 0.5)
            ax.bar(x, r.ratio, width * 0.92, color=colours[family], label=family)
            ax.annotate(
                f"{r.ratio:.2f}",
                (x, r.ratio),
                ha="center",
                va="bottom",
                fontsize=8,
                bbox={"boxstyle": "round,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.8},
                xytext=(0, 2),
                textcoords="offset points",
            )
        targets = [r.target for r in rows if r.scenario == scenario and r.target is not None]
        if targets:
            ax.hlines(
                targets[0], i - 0.45, i + 0.45, colors="red", linestyles="--", linewidth=1.6, label="target"
            )
    ax.axhline(1.0, color="grey", linewidth=0.8)
    if log:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        top = max(r.ratio for r in rows)
        ax.set_ylim(0.5, top * 2)
    ax.set_xticks(range(len(scenarios)))
    ax.set_xticklabels([_tick(s) for s in scenarios], fontsize=9)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(f"{TIMES} baseline" + (" (log scale)" if log else ""))
    ax.grid(axis="y", alpha=0.3)


def _tick(scenario: str) -> str:
    """A scenario's name over short lines (the panel's title says what is counted)."""
    name = scenario.removesuffix(", instructions")
    if name != scenario:  # four scenarios in a third of the width
        return name.replace(" ", "\n", 1)
    return name.replace(" concurrent", "\nconcurrent").replace(", ", ",\n")
