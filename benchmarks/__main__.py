"""``python -m benchmarks [scenario ...]``: run scenarios against a private Redis, print and save results.

Scenarios, in the order they run (with no argument, all of them):

- ``hits``: LOCAL and REMOTE hits, sync and async (bench_hits)
- ``signing``: the same hits with signing keys, against gcache's own without (bench_signing)
- ``miss``: miss + write-back (bench_miss)
- ``batch``: a page of 50 ids, cached_many against single calls and a bare MGET (bench_batch)
- ``concurrency``: 1,000 concurrent async callers over 100 keys (bench_concurrency)
- ``memory``: resident memory per 100k LOCAL entries (bench_memory)
- ``instructions``: instructions per hit (and per page of 50 ids) counted by callgrind, gcache
  and its floor (bench_instructions; skipped without valgrind)
- ``load``: a concurrency sweep (10 to 3,000 coroutines, 10 to 200 threads) of tracked and
  untracked use cases against bare redis-py at the same concurrency (bench_load; results/load.md)
- ``soak``: 5 minutes of mixed traffic with invalidations, sampling memory and tables every 10 s
  (bench_soak; results/soak.md)
- ``invalidation``: invalidation across processes (bench_invalidation; results/invalidation.md)
- ``refresh_ahead``: a hot key across its TTL boundary with and without ``refresh_ahead``, p99
  latency of the callers near expiry (bench_refresh_ahead; results/refresh_ahead.md)
- ``scale``: what a fleet of N processes x M calls/s costs one Redis (commands, bytes, main-thread
  CPU), from per-call costs measured on the server, checked against a fleet of real processes
  (bench_scale; results/scale.md)
- ``faults``: cached calls while Redis is killed, paused, hanging or full, gcache's defaults
  against a bare configuration (bench_faults; results/faults.md; its own private servers)

The first six write their rows to results/<scenario>.json; results/results.md (the table) and
results/results.png (the chart) are rebuilt from every saved scenario after each run.
``REDIS_URL`` points the scenarios at an existing Redis instead of a private one, and
``REDIS_ADMIN_URL`` at a login on it that may run any command (``REDIS_URL`` unless set). gcache
and bare redis-py run on the first, as the private server's application user does; the harness
(INFO commandstats, the invalidation scenario's source of truth) and the rivals, which send
commands gcache does not, on the second.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import time
from collections.abc import Callable

from benchmarks import (
    _report,
    _rivals,
    bench_batch,
    bench_concurrency,
    bench_faults,
    bench_hits,
    bench_instructions,
    bench_invalidation,
    bench_load,
    bench_memory,
    bench_miss,
    bench_refresh_ahead,
    bench_scale,
    bench_signing,
    bench_soak,
)
from benchmarks._harness import Result, environment, server_version
from gcache._embedded_redis import EmbeddedRedis

RESULTS = _report.RESULTS
TABLED: dict[str, Callable[[str, str], list[Result]]] = {  # (gcache's URL, the admin URL)
    "hits": bench_hits.run,
    "signing": lambda url, _admin: bench_signing.run(url),
    "miss": bench_miss.run,
    "batch": bench_batch.run,
    "concurrency": bench_concurrency.run,
    "memory": lambda url, _admin: bench_memory.run(url),
    "instructions": bench_instructions.run,
}


def machine() -> str:
    return f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cores."


def invalidation(redis_url: str, admin_url: str) -> None:
    load = os.getloadavg()[0]  # several processes share the cores: say how busy they were already
    text = bench_invalidation.tables(bench_invalidation.run(redis_url, admin_url))
    print(text)
    (RESULTS / "invalidation.md").write_text(
        f"{machine()} Load average (1 min) before the run: {load:.1f}.\n\n"
        f"{bench_invalidation.parameters()}\n\n{text}\n\n"
        "Definitions: see the docstring of benchmarks/bench_invalidation.py.\n"
    )


def load(redis_url: str, admin_url: str) -> None:
    average = os.getloadavg()[0]
    text = _report.table(bench_load.run(redis_url, admin_url))
    print(text)
    facts = environment()
    (RESULTS / "load.md").write_text(
        f"{machine()} {facts['date']}; redis-py {facts['redis-py']}, hiredis {facts['hiredis']}. "
        f"Load average (1 min) before the run: {average:.1f}.\n\n{text}\n\n"
        "Definitions: see the docstring of benchmarks/bench_load.py. Per operation: calls per second; "
        "the notes give the share served from the cache, function runs, Redis commands per call, "
        "latency and breaker openings.\n"
    )


def soak(redis_url: str) -> None:
    text = bench_soak.table(bench_soak.run(redis_url))
    print(text)
    facts = environment()
    (RESULTS / "soak.md").write_text(
        f"{machine()} {facts['date']}; redis-py {facts['redis-py']}.\n\n{text}\n\n"
        "Definitions: see the docstring of benchmarks/bench_soak.py.\n"
    )


def _write(name: str, text: str, load: float, parameters: str, servers: str = "") -> None:
    """results/<name>.md: the machine, the libraries, the load before the run, the parameters and
    the table; its definitions are in benchmarks/bench_<name>.py."""
    facts = environment()
    (RESULTS / f"{name}.md").write_text(
        f"{machine()} {facts['date']}; {servers}redis-py {facts['redis-py']}, hiredis {facts['hiredis']}. "
        f"Load average (1 min) before the run: {load:.1f}.\n\n{parameters}\n\n{text}\n\n"
        f"Definitions: see the docstring of benchmarks/bench_{name}.py.\n"
    )


def faults() -> None:
    load = os.getloadavg()[0]
    cells = bench_faults.run()  # private servers and listeners: it kills and pauses them
    text = bench_faults.table(cells)
    print(text)
    _write("faults", text, load, bench_faults.parameters())


def refresh_ahead(redis_url: str) -> None:
    load = os.getloadavg()[0]
    text = bench_refresh_ahead.table(bench_refresh_ahead.run(redis_url))
    print(text)
    _write("refresh_ahead", text, load, bench_refresh_ahead.parameters())


def scale(redis_url: str, admin_url: str) -> None:
    load = os.getloadavg()[0]
    text = bench_scale.table(bench_scale.run(redis_url, admin_url))
    print(text)
    _write("scale", text, load, bench_scale.parameters(), f"redis-server {server_version(admin_url)}, ")


SCENARIOS = [*TABLED, "load", "soak", "invalidation", "refresh_ahead", "scale", "faults"]


def main(argv: list[str] | None = None) -> int:
    names = sys.argv[1:] if argv is None else argv
    unknown = [name for name in names if name not in SCENARIOS and name not in ("-h", "--help")]
    if unknown or any(name in ("-h", "--help") for name in names):
        if unknown:
            print(f"unknown scenario {', '.join(map(repr, unknown))}", file=sys.stderr)
        print(f"usage: python -m benchmarks [{' | '.join(SCENARIOS)} ...]", file=sys.stderr)
        print(f"scenarios: {', '.join(SCENARIOS)} (none given: all of them)", file=sys.stderr)
        return 2 if unknown else 0
    chosen = [name for name in SCENARIOS if name in names] if names else list(SCENARIOS)
    RESULTS.mkdir(exist_ok=True)
    missing = _rivals.missing()
    if missing:
        print(f"not installed, skipped: {', '.join(missing)} (pip install -e '.[bench]')", file=sys.stderr)
    url = os.environ.get("REDIS_URL")
    admin_url = os.environ.get("REDIS_ADMIN_URL") or url
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if not url or not admin_url:
            server = stack.enter_context(EmbeddedRedis())  # stopped, and its directory removed, at exit
            url, admin_url = server.url, server.admin_url
        facts = {"redis-server": server_version(admin_url)}
        for name in chosen:
            began = time.perf_counter()
            print(f"== {name}", flush=True)
            if name == "invalidation":
                invalidation(url, admin_url)
            elif name == "load":
                load(url, admin_url)
            elif name == "soak":
                soak(url)
            elif name == "refresh_ahead":
                refresh_ahead(url)
            elif name == "scale":
                scale(url, admin_url)
            elif name == "faults":
                faults()
            else:
                before = environment()  # the load average before the scenario ran
                results = TABLED[name](url, admin_url)
                _report.save(name, results, {**facts, "date": before["date"], "load": before["load"]})
                print(_report.table(results))
            print(f"({name}: {time.perf_counter() - began:.0f} s)\n", flush=True)
    if any(name in TABLED for name in chosen):
        text, chart = _report.build(list(TABLED))
        print(f"All saved scenarios, as in {RESULTS / 'results.md'}:\n\n{text}\n")
        if chart is not None:
            print(f"chart: {chart}")
    print(f"done in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
