"""The command line: ``python -m gcache demo [--serve] ...``, and the operator's tools:
``inspect``, ``explain``, ``stats``, ``top``, ``invalidate``, ``delete`` and ``flush`` (README,
Operating gcache).

``make demo`` runs ``python -m gcache demo``. The tools connect with ``--redis-url`` (default
``$REDIS_URL``) and check signed entries with the keys of ``GCACHE_SIGNING_KEYS``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

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


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
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
        prog="gcache" if os.path.basename(sys.argv[0]) == "gcache" else "python -m gcache",
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
    _operator_commands(commands)
    return parser


def _address(text: str) -> tuple[str, int]:
    host, colon, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT with a port from 1 to 65535")
    return host, int(port)


def _connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redis-url", metavar="URL", help="the cache's Redis (default: $REDIS_URL)")
    parser.add_argument("--cluster", action="store_true", help="the URL is a Redis Cluster node")
    parser.add_argument(
        "--tls-ca-certs",
        metavar="FILE",
        help="with rediss://, --tls or --sentinel-tls: the CA bundle to check the servers with",
    )
    parser.add_argument("--tls-certfile", metavar="FILE", help="with TLS: a client certificate")
    parser.add_argument("--tls-keyfile", metavar="FILE", help="with TLS: the client certificate's key")
    parser.add_argument("--prefix", default="urn:gcache", help="the cache's urn_prefix (default: urn:gcache)")
    sentinel = parser.add_argument_group(
        "Redis Sentinel", "instead of --redis-url: the master the sentinels name ($REDIS_URL is then ignored)"
    )
    sentinel.add_argument("--sentinel", action="append", type=_address, dest="sentinels", metavar="HOST:PORT",
                          help="a sentinel (repeat it for each)")  # fmt: skip
    sentinel.add_argument("--service-name", metavar="NAME", help="the master the sentinels monitor")
    sentinel.add_argument("--username", metavar="NAME", help="the data nodes' user")
    sentinel.add_argument(
        "--password", metavar="PW", help="the data nodes' password (default: $REDIS_PASSWORD)"
    )
    sentinel.add_argument("--db", type=_non_negative_int, metavar="N", help="the database (default: 0)")
    sentinel.add_argument("--tls", action="store_true", help="TLS to the data nodes")
    sentinel.add_argument("--sentinel-username", metavar="NAME", help="the sentinels' user")
    sentinel.add_argument("--sentinel-password", metavar="PW",
                          help="the sentinels' password (default: $REDIS_SENTINEL_PASSWORD)")  # fmt: skip
    sentinel.add_argument("--sentinel-tls", action="store_true", help="TLS to the sentinels")
    parser.set_defaults(command_parser=parser)


_SENTINEL_ONLY = (
    "service_name", "username", "password", "db", "tls", "sentinel_username", "sentinel_password",
    "sentinel_tls",
)  # fmt: skip


def connection_error(args: argparse.Namespace) -> str | None:
    """What is wrong with the connection options given together (None: nothing)."""
    given = [
        "--" + name.replace("_", "-") for name in _SENTINEL_ONLY if getattr(args, name) not in (None, False)
    ]
    if args.sentinels is None:
        if given:
            return (
                f"{', '.join(given)}: only with --sentinel HOST:PORT (without Sentinel, the login, "
                "database and rediss:// go in --redis-url)"
            )
        return None
    if args.redis_url:
        return (
            "--redis-url and --sentinel: give one (the sentinels name the master; its login, database "
            "and TLS are --username, --password, --db, --tls)"
        )
    if args.cluster:
        return "--cluster and --sentinel: a Redis Cluster fails over by itself; give one of them"
    if not args.service_name:
        return "--sentinel needs --service-name NAME (the master the sentinels monitor)"
    return None


def _operator_commands(commands: Any) -> None:
    inspect = commands.add_parser(
        "inspect",
        help="what the cache holds for an entity, and what a read would make of each entry now",
        description=(
            "Lists every key of an entity (given as a full key, or key_type:id) with its use case, "
            "arguments, size, serializer, signature, creation stamp (Redis clock), TTL left and fence "
            "nonce, the entity's fence, and the verdict a read would reach on each entry now, with why."
        ),
    )
    inspect.add_argument("target", help="a full key ({prefix:key_type:id}...) or key_type:id")
    inspect.add_argument(
        "--decode", action="store_true", help="show values whose serializer can be read safely"
    )
    inspect.add_argument(
        "--unsafe-unpickle",
        action="store_true",
        help="with --decode, unpickle entries whose signature is not verified",
    )
    inspect.add_argument(
        "--fail-safe-sec",
        type=_non_negative_float,
        default=0.0,
        metavar="S",
        help="the use case's fail_safe_sec, to tell entries past their TTL within its grace",
    )
    inspect.add_argument("--json", action="store_true", help="print JSON")
    _connection_options(inspect)
    explain = commands.add_parser(
        "explain",
        help="what a call would do now: its key, its config (from your provider), the REMOTE verdict",
        description=(
            "Renders the key of a call (key type, id, use case, arguments), asks your config provider "
            "for its config when --provider names it, and reads what Redis holds under that key and "
            "what a read would make of it. LOCAL and the breaker live inside each process: this tool, "
            "outside them, cannot see them."
        ),
    )
    explain.add_argument("key_type")
    explain.add_argument("id")
    explain.add_argument("use_case")
    explain.add_argument(
        "--arg", action="append", default=[], metavar="NAME=VALUE", help="an argument of the call"
    )
    explain.add_argument(
        "--provider", metavar="MODULE:NAME", help="your cache_config_provider, to ask for the config"
    )
    explain.add_argument("--json", action="store_true", help="print JSON")
    _connection_options(explain)
    invalidate = commands.add_parser("invalidate", help="invalidate an entity, as ainvalidate() does")
    invalidate.add_argument("key_type")
    invalidate.add_argument("id")
    invalidate.add_argument("--future-buffer-ms", type=int, default=0, metavar="MS")
    _connection_options(invalidate)
    delete = commands.add_parser("delete", help="delete one entry from Redis and every process's LOCAL layer")
    delete.add_argument("key", help="the full key of the entry")
    _connection_options(delete)
    stats = commands.add_parser(
        "stats", help="what a prefix holds: entries per use case, envelopes, TTLs, fences"
    )
    stats.add_argument("--sample-every", type=_positive_int, default=1, metavar="N",
                       help="read the header of one value entry in N (default: 1, every one)")  # fmt: skip
    stats.add_argument("--no-memory", action="store_true", help="skip MEMORY USAGE (it needs that command)")
    stats.add_argument("--json", action="store_true", help="print JSON")
    _connection_options(stats)
    top = commands.add_parser("top", help="a live view of a process's gcache metrics, from its /metrics URL")
    top.add_argument("url", help="the /metrics URL of a process (or of gunicorn's master)")
    top.add_argument(
        "--interval", type=_positive_float, default=1.0, metavar="S", help="seconds between updates"
    )
    top.add_argument(
        "--iterations", type=_positive_int, metavar="N", help="stop after N updates (default: never)"
    )
    top.add_argument("--prefix", default="", help="the cache's metrics_prefix (default: none)")
    flush = commands.add_parser("flush", help="delete every key of a prefix (SCAN and UNLINK, never FLUSHDB)")
    flush.add_argument("--dry-run", action="store_true", help="count what would go, delete nothing")
    flush.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    _connection_options(flush)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # The command line is an application: gcache's warnings go to stderr (the library itself
    # only has a NullHandler); a logging configuration already made wins.
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    if args.command == "top":
        from gcache.top import run_top  # imported here: --help stays fast

        return run_top(args.url, args.interval, args.iterations, args.prefix)
    if args.command != "demo":
        wrong = connection_error(args)
        if wrong:
            args.command_parser.error(wrong)
        from gcache.cli import run_command

        return run_command(args)
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
