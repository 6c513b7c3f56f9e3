"""``python -m benchmarks``: run every scenario against a private Redis, print and save the table."""

from __future__ import annotations

import os
import pathlib
import platform
import sys

from benchmarks import bench_hits
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


def main() -> int:
    url = os.environ.get("REDIS_URL")
    server = None if url else EmbeddedRedis().start()
    try:
        results = bench_hits.run(url or server.url)  # type: ignore[union-attr]
    finally:
        if server is not None:
            server.stop()
    text = table(results)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    header = f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cores.\n\n"
    (RESULTS / "results.md").write_text(header + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
