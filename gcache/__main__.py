"""The command line: ``python -m gcache demo [--serve] ...``.

Subcommands keep room for more tools (the benchmarks, a key inspector) without changing how the
demo is started; ``make demo`` runs ``python -m gcache demo``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0-65535, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gcache",
        description="gcache: a two-tier read-through cache (in-process LOCAL, then Redis, then the function)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="run gcache in front of a simulated slow data source and print what it did",
        description=(
            "Runs a few hundred calls through cached functions (async and sync) in front of a "
            "simulated slow data source, updates a user and invalidates it, then prints hits per "
            "layer, function calls avoided and latency per path, read from the Prometheus metrics. "
            "Uses REDIS_URL when set, else starts a private redis-server. /metrics is served while "
            "it runs."
        ),
    )
    demo.add_argument("--calls", type=_positive_int, default=300, help="calls to make (default: 300)")
    demo.add_argument(
        "--serve",
        action="store_true",
        help="after the table, keep serving /metrics with steady mixed traffic until Ctrl-C or SIGTERM",
    )
    demo.add_argument(
        "--duration",
        type=_positive_float,
        metavar="SECONDS",
        help="with --serve: stop after this many seconds (default: run until interrupted)",
    )
    demo.add_argument(
        "--port", type=_port, default=0, help="port of the /metrics server (default: 0, any free port)"
    )
    demo.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        metavar="ADDR",
        help="address the /metrics server binds to (default: 127.0.0.1)",
    )
    demo.add_argument(
        "--redis-url",
        metavar="URL",
        help="Redis to use (default: $REDIS_URL, else a private redis-server started for the run)",
    )
    demo.add_argument(
        "--concurrency", type=_positive_int, default=10, help="calls made at once (default: 10)"
    )
    demo.add_argument(
        "--latency-ms",
        type=_non_negative_float,
        default=20.0,
        metavar="MS",
        help="time each read of the simulated source takes (default: 20)",
    )
    demo.add_argument("--seed", type=int, default=7, help="seed of the simulated traffic (default: 7)")
    demo.set_defaults(command_parser=demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    if args.duration is not None and not args.serve:
        args.command_parser.error("--duration needs --serve")
    from gcache.demo import DemoOptions, run  # imported here: --help stays fast

    options = DemoOptions(
        calls=args.calls,
        serve=args.serve,
        duration=args.duration,
        port=args.port,
        metrics_host=args.metrics_host,
        redis_url=args.redis_url,
        concurrency=args.concurrency,
        latency_ms=args.latency_ms,
        seed=args.seed,
    )
    try:
        return run(options)
    except KeyboardInterrupt:  # Ctrl-C before the demo's own handler is in place; cleanup has run
        return 130
    except BrokenPipeError:  # the reader went away (``| head``); cleanup has run
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 1


if __name__ == "__main__":
    sys.exit(main())
