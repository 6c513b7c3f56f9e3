"""The operator's subcommands of ``python -m gcache``: inspect, explain, stats, invalidate, delete,
flush.

Each connects as the application does (a ``GCache`` on the same URL and prefix, so what it
publishes on the bus is what the application's processes expect, signed with the same keys), or,
to look, with a plain redis-py client. Output is plain text (``--json`` for inspect); progress goes
to stderr.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from typing import Any, TextIO

import redis

from gcache.config import GCacheConfig, GCacheKey
from gcache.errors import ConfigError, GCacheError
from gcache.gcache import GCache
from gcache.inspection import (
    EntityReport,
    FenceReport,
    PrefixStats,
    inspect_entity,
    key_of,
    parse_target,
    prefix_stats,
    sync_client,
)
from gcache.redis_config import RedisConfig, mask_url
from gcache.signing import Signer, signing_keys_from
from gcache.urns import owned_by

__all__ = ["run_command"]

_SCAN_BATCH = 1000


def run_command(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run one subcommand; its exit code (2: bad input, 1: Redis failed)."""
    out = out or sys.stdout
    err = err or sys.stderr
    url = args.redis_url or os.environ.get("REDIS_URL")
    if not url and not args.sentinels:
        print(
            "gcache: no Redis: give --redis-url (or --sentinel and --service-name) or set REDIS_URL", file=err
        )
        return 2
    where = ""
    try:
        config = _config(args, url or "")
        where = (
            f"service {config.service_name!r} of the sentinels "
            + ", ".join(f"{host}:{port}" for host, port in config.sentinels)
            if config.sentinels
            else f"at {mask_url(url or '')}"
        )
        if args.command == "inspect":
            return _inspect(args, config, out)
        if args.command == "flush":
            return _flush(args, config, out, err)
        if args.command == "stats":
            return _stats(args, config, out, err)
        if args.command == "explain":
            return _explain(args, config, out)
        return _through_cache(args, config, out)
    except (ConfigError, ValueError) as exc:
        print(f"gcache: {exc}", file=err)
        return 2
    except (redis.RedisError, OSError, GCacheError) as exc:
        print(f"gcache: Redis {where} failed: {exc}", file=err)
        return 1


def _config(args: argparse.Namespace, url: str) -> RedisConfig:
    """The RedisConfig of the connection options (checked together by ``connection_error``)."""
    tls = {
        "ssl_ca_certs": args.tls_ca_certs,
        "ssl_certfile": args.tls_certfile,
        "ssl_keyfile": args.tls_keyfile,
    }
    if not args.sentinels:
        return RedisConfig(url=url, cluster=args.cluster, **tls)
    return RedisConfig(
        sentinels=args.sentinels,
        service_name=args.service_name,
        username=args.username or "",
        password=args.password if args.password is not None else os.environ.get("REDIS_PASSWORD", ""),
        db=args.db or 0,
        tls=args.tls,
        sentinel_username=args.sentinel_username or "",
        sentinel_password=(
            args.sentinel_password
            if args.sentinel_password is not None
            else os.environ.get("REDIS_SENTINEL_PASSWORD", "")
        ),
        sentinel_tls=args.sentinel_tls,
        **tls,
    )


def _inspect(args: argparse.Namespace, config: RedisConfig, out: TextIO) -> int:
    keys = signing_keys_from(None)
    entity = parse_target(args.target, args.prefix)
    client = sync_client(config)
    try:
        report = inspect_entity(
            client,
            entity,
            signer=Signer(keys) if keys else None,
            decode=args.decode,
            unsafe_unpickle=args.unsafe_unpickle,
            fail_safe_sec=args.fail_safe_sec,
        )
    finally:
        client.close()
    print(report.to_json() if args.json else _text(report), file=out)
    return 0


def _when(us: int, now_us: int) -> str:
    moment = datetime.datetime.fromtimestamp(us / 1e6, datetime.timezone.utc).isoformat(
        timespec="milliseconds"
    )
    return f"{moment} ({(now_us - us) / 1e6:.1f} s ago)"


def _text(report: EntityReport) -> str:
    lines = [f"entity {report.entity}"]
    slot = f" (cluster slot {report.slot}, its primary)" if report.slot is not None else ""
    lines.append(f"  node: {report.node}{slot}")
    fence = report.fence
    if fence is None:
        lines.append("  fence: none (tracked entries of this entity are misses until a read creates one)")
    else:
        watermark = (
            _when(fence.watermark_us, report.server_time_us) if fence.watermark_us > 0 else "0 (never)"
        )
        lines.append(f"  fence: nonce {fence.nonce}, watermark {watermark}, TTL {fence.ttl_ms} ms")
        made_under, node = fence.history or "(none)", fence.node_replid or "?"
        lines.append(f"  history: fence r {made_under}, node master_replid {node}: {_history(fence)}")
    for lock in report.locks:
        lines.append(f"  lock: {lock}")
    if not report.entries:
        lines.append("  no entries")
    for entry in report.entries:
        args = "&".join(f"{n}={v}" for n, v in entry.args)
        lines.append(f"  {entry.verdict.upper():<15} {entry.use_case}{'?' + args if args else ''}")
        lines.append(f"      key      {entry.key}")
        details = f"{entry.size} bytes, TTL {entry.ttl_ms} ms"
        if entry.serializer:
            signature = {None: "", True: ", signature good", False: ", signature BAD"}[entry.signature_ok]
            details += f", {entry.serializer}, {'signed' if entry.signed else 'unsigned'}{signature}"
            details += f", created {_when(entry.stamp_us, report.server_time_us)}, nonce {entry.nonce}"
        lines.append(f"      entry    {details}")
        lines.append(f"      why      {entry.why}")
        if entry.decoded is not None:
            lines.append(f"      value    {entry.decoded!r}")
    return "\n".join(lines)


def _history(fence: FenceReport) -> str:
    if not fence.node_replid:
        return "not compared (INFO replication refused)"
    if fence.current:
        return "the same (the fence is of this node's replication history)"
    return (
        "differ (a failover or restart since: the next read makes the fence anew; one with "
        "failover_fencing=False trusts it until a write-back or an invalidation does)"
    )


def _cache(config: RedisConfig, prefix: str) -> GCache:
    return GCache(GCacheConfig(redis_config=config, urn_prefix=prefix))


def _through_cache(args: argparse.Namespace, config: RedisConfig, out: TextIO) -> int:
    with _cache(config, args.prefix) as cache:
        if args.command == "invalidate":
            cache.invalidate(args.key_type, args.id, args.future_buffer_ms)
            print(f"invalidated {args.key_type} {args.id}", file=out)
            return 0
        key = key_of(args.key, args.prefix)
        deleted = cache.delete(key)
        print(f"{'deleted' if deleted else 'not found (nothing to delete)'}: {args.key}", file=out)
        return 0


def _flush(args: argparse.Namespace, config: RedisConfig, out: TextIO, err: TextIO) -> int:
    client = sync_client(config)
    started = time.monotonic()
    found = 0
    try:
        for key in client.scan_iter(match="{" + args.prefix + ":*", count=_SCAN_BATCH):
            if owned_by(key.decode("utf-8", "surrogateescape"), args.prefix):
                found += 1
                if found % _SCAN_BATCH == 0:
                    rate = found / max(time.monotonic() - started, 1e-9)
                    print(
                        f"\rscanned: {found} keys of {args.prefix!r} ({rate:,.0f}/s)",
                        end="",
                        file=err,
                        flush=True,
                    )
    finally:
        client.close()
    if found >= _SCAN_BATCH:
        print(file=err)
    if args.dry_run:
        print(f"would delete {found} keys of prefix {args.prefix!r} (dry run: nothing deleted)", file=out)
        return 0
    if not args.yes:
        if not sys.stdin.isatty():
            print("gcache: flush needs --yes when not run from a terminal", file=err)
            return 2
        answer = input(f"delete {found} keys of prefix {args.prefix!r}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing deleted", file=out)
            return 0
    with _cache(config, args.prefix) as cache:
        deleted = cache.flushall()
    print(f"deleted {deleted} keys of prefix {args.prefix!r}", file=out)
    return 0


def _stats(args: argparse.Namespace, config: RedisConfig, out: TextIO, err: TextIO) -> int:
    client = sync_client(config)
    started = time.monotonic()

    def progress(scanned: int) -> None:
        rate = scanned / max(time.monotonic() - started, 1e-9)
        print(f"\rscanned: {scanned} keys ({rate:,.0f}/s)", end="", file=err, flush=True)

    try:
        stats = prefix_stats(
            client, args.prefix, sample_every=args.sample_every, progress=progress, memory=not args.no_memory
        )
    finally:
        client.close()
    if stats.keys >= 1000:
        print(file=err)
    print(stats.to_json() if args.json else _stats_text(stats), file=out)
    return 0


def _stats_text(stats: PrefixStats) -> str:
    lines = [
        f"prefix {stats.prefix!r}: {stats.keys} keys: {stats.keys - stats.fences - stats.locks} entries, "
        f"{stats.fences} fences, {stats.locks} locks",
        "entries per key type and use case:",
        *(
            f"  {count:>9}  {name}"
            for name, count in sorted(stats.by_use_case.items(), key=lambda kv: -kv[1])
        ),
        f"of {stats.sampled} entries read: {stats.tracked} tracked, {stats.signed} signed, "
        f"{stats.not_gcache} not readable by this release (foreign, another version, corrupt)",
        "serializers: " + ", ".join(f"{name} {count}" for name, count in sorted(stats.serializers.items())),
        "TTL left: " + ", ".join(f"{name} {count}" for name, count in stats.ttl_buckets.items()),
    ]
    if stats.bytes_sampled is not None:
        lines.append(f"memory of the entries read: {stats.bytes_sampled:,} bytes")
    return "\n".join(lines)


def _explain(args: argparse.Namespace, config: RedisConfig, out: TextIO) -> int:
    pairs = []
    for item in args.arg:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--arg {item!r}: give NAME=VALUE")
        pairs.append((name, value))
    key = GCacheKey(args.key_type, args.id, args.use_case, pairs, urn_prefix=args.prefix)
    answer: dict[str, Any] = {"key": key.urn, "fence": key.watermark_key}
    if args.provider:
        answer["config"] = _provided(args.provider, key)
    else:
        answer["config"] = (
            "no --provider given: the decorator's default_config, not known outside the process"
        )
    keys = signing_keys_from(None)
    client = sync_client(config)
    try:
        report = inspect_entity(client, key.prefix, signer=Signer(keys) if keys else None)
    finally:
        client.close()
    entry = next((e for e in report.entries if e.key == key.urn), None)
    if entry is None:
        answer["remote"] = {
            "verdict": "not_found",
            "why": "no entry under this key: a read misses and computes",
        }
    else:
        answer["remote"] = {"verdict": entry.verdict, "why": entry.why, "ttl_ms": entry.ttl_ms}
    answer["local"] = "inside each process: not visible from here (see its gcache_* metrics)"
    if args.json:
        print(json.dumps(answer, indent=2), file=out)
    else:
        for name, value in answer.items():
            print(f"{name:<7} {value}", file=out)
    return 0


def _provided(path: str, key: GCacheKey) -> Any:
    """What the provider at ``module:name`` answers for ``key`` (awaited when it is async)."""
    import asyncio
    import importlib
    import inspect as inspection

    module_name, sep, attribute = path.partition(":")
    if not sep:
        raise ValueError(f"--provider {path!r}: give MODULE:NAME")
    provider = getattr(importlib.import_module(module_name), attribute)
    answer = provider(key)
    if inspection.isawaitable(answer):
        answer = asyncio.run(_awaited(answer))
    if answer is None:
        return "the provider answers None: the decorator's default_config decides"
    return answer.to_dict() if hasattr(answer, "to_dict") else repr(answer)


async def _awaited(answer: Any) -> Any:
    return await answer
