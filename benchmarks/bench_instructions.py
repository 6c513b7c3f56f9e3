"""Instructions per hit: what gcache's own code costs the calling process, counted by callgrind.

Wall-clock ratios on a busy 2-core machine move by several hundredths from run to run.
``valgrind --tool=callgrind`` counts the instructions the process runs, which repeat to a few
hundred per call whatever else the machine does.
So each hit of ``bench_hits`` (LOCAL and REMOTE, sync and async, untracked; REMOTE tracked too,
with and without failover fencing)
and its floor run in a worker process (``_instructions_worker``) twice, with ``LOW`` and ``HIGH``
calls; the difference over ``HIGH - LOW`` is the cost of one call, with start-up, set-up and
warm-up cancelled out.

What it counts: user-space instructions of the calling process. Not counted: the kernel's work
on the socket, the Redis server's, and time spent waiting, which add the same to both sides of a
REMOTE hit; so the instruction ratio of a REMOTE hit is stricter than its wall-clock ratio. It has
no target of its own. Skipped, with a message, when valgrind is not installed.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import shutil
import subprocess
import sys
from urllib.parse import urlsplit, urlunsplit

from benchmarks._harness import Result
from benchmarks._instructions_worker import CASES

__all__ = ["HIGH", "LOW", "count", "run"]

LOW, HIGH = 500, 1_500
DATABASES = 16  # Redis's default number of databases
_COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")
BASELINES = {  # the floors' names, as bench_hits gives them
    ("sync", "LOCAL"): "TTLCache lookup in a function",
    ("async", "LOCAL"): "TTLCache lookup in a coroutine",
    ("sync", "REMOTE"): "redis-py GET",
    ("async", "REMOTE"): "redis.asyncio GET",
    ("sync", "BATCH"): "redis-py MGET of 50",
    ("async", "BATCH"): "redis.asyncio MGET of 50",
}


def count(case: str, calls: int, redis_url: str, admin_url: str | None = None) -> int:
    """Instructions of one worker process (start-up to exit) making ``calls`` calls of ``case``;
    ``admin_url`` for a bare MGET (a command gcache's login may not run)."""
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        "-m",
        "benchmarks._instructions_worker",
        case,
        str(calls),
    ]
    # The same string hashes, the same dict probes; the URL off the command line (its password).
    env = {
        **os.environ,
        "PYTHONHASHSEED": "0",
        "BENCH_REDIS_URL": redis_url,
        "BENCH_REDIS_ADMIN_URL": admin_url or redis_url,
    }
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, check=False)
    found = _COLLECTED.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"callgrind run of {case!r} failed ({done.returncode}): {done.stderr[-2000:]}")
    return int(found.group(1))


def _database(url: str, i: int) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{i % DATABASES}"))


def run(redis_url: str, admin_url: str | None = None) -> list[Result]:
    if shutil.which("valgrind") is None:
        print("valgrind is not installed: instruction counts skipped", file=sys.stderr)
        return []
    jobs = [(case, calls) for case in CASES for calls in (LOW, HIGH)]
    # A database per run (jobs run side by side): see _instructions_worker.
    urls = [_database(redis_url, i) for i in range(len(jobs))]
    admins = [_database(admin_url or redis_url, i) for i in range(len(jobs))]
    with concurrent.futures.ThreadPoolExecutor(max(1, os.cpu_count() or 1)) as pool:
        counted = pool.map(lambda job, url, admin: count(job[0], job[1], url, admin), jobs, urls, admins)
        totals = dict(zip(jobs, counted, strict=True))
    per_call = {case: (totals[case, HIGH] - totals[case, LOW]) / (HIGH - LOW) for case in CASES}
    results = []
    for case in CASES:
        mode, layer, subject = case.split()
        if subject == "baseline":
            continue
        if subject == "signed":  # the HMAC's share: against gcache's own unsigned hit
            baseline, floor = "gcache, no keys", per_call[f"{mode} {layer} gcache"]
        else:
            baseline, floor = BASELINES[mode, layer], per_call[f"{mode} {layer} baseline"]
        suffix = {
            "tracked": " tracked",
            "signed": " signed",
            "unfenced": " tracked (failover_fencing=False)",
        }.get(subject, "")
        what = f"page of 50{suffix}, cold LOCAL" if layer == "BATCH" else f"{layer}{suffix} hit"
        results.append(
            Result(
                f"{mode} {what}, instructions",
                "gcache",
                per_call[case],
                "instructions/op",
                baseline,
                floor,
            )
        )
    return results
