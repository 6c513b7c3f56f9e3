"""``python -m benchmarks [scenario ...]``: run scenarios against a private Redis, print and save tables.

Scenarios, in the order they run: ``hits`` (results/results.md) and ``invalidation``
(results/invalidation.md). With no argument every scenario runs. ``REDIS_URL`` points them at an
existing Redis instead of a private one.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import platform
import sys
from collections.abc import Callable

from benchmarks import bench_hits, bench_invalidation
from benchmarks._harness import Result
from gcache._embedded_redis import EmbeddedRedis

RESULTS = pathlib.Path(__file__).parent / "results"


def table(results: list[Result]) -> str:
    lines = [
        "| scenario | gcache (µs/op) | baseline | baseline (µs/op) | ratio |",
        "|---|---:|---|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.scenario} | {r.subject_us:.2f} | {r.baseline} | {r.baseline_us:.2f} | {r.ratio:.2f}x |"
        )
    return "\n".join(lines)


def machine() -> str:
    return f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cores."


def hits(redis_url: str) -> None:
    text = table(bench_hits.run(redis_url))
    print(text)
    (RESULTS / "results.md").write_text(f"{machine()}\n\n{text}\n")


def invalidation(redis_url: str) -> None:
    load = os.getloadavg()[0]  # several processes share the cores: say how busy they were already
    text = bench_invalidation.tables(bench_invalidation.run(redis_url))
    print(text)
    (RESULTS / "invalidation.md").write_text(
        f"{machine()} Load average (1 min) before the run: {load:.1f}.\n\n"
        f"{bench_invalidation.parameters()}\n\n{text}\n\n"
        "Definitions: see the docstring of benchmarks/bench_invalidation.py.\n"
    )


SCENARIOS: dict[str, Callable[[str], None]] = {"hits": hits, "invalidation": invalidation}


def main(argv: list[str] | None = None) -> int:
    names = sys.argv[1:] if argv is None else argv
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        print(f"unknown scenario {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    chosen = [name for name in SCENARIOS if name in names] if names else list(SCENARIOS)
    RESULTS.mkdir(exist_ok=True)
    url = os.environ.get("REDIS_URL")
    with contextlib.ExitStack() as stack:
        if not url:
            url = stack.enter_context(EmbeddedRedis()).url  # stopped, and its directory removed, at exit
        for name in chosen:
            SCENARIOS[name](url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
