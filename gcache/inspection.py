"""What the cache holds for an entity, and what a read would make of each entry now.

The operator's question at 3 a.m., "what does the cache hold for user 123, and why is it (not)
served?", answered from Redis alone: every key of the entity (its values, its fence, its lock),
each value's envelope decoded, and the verdict the read-through would reach on it, with why.
Used by ``python -m gcache inspect``; nothing here deserializes a payload unless asked, and pickle
only when the entry's signature is good (or the caller insists).
"""

from __future__ import annotations

import json
import pickle
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import unquote

import redis

from gcache import _envelope
from gcache.bus import server_address
from gcache.config import GCacheKey
from gcache.redis_config import RedisConfig
from gcache.remote import sentinel
from gcache.remote.clients import WaitTimedPool
from gcache.signing import Signer
from gcache.urns import WATERMARK_USE_CASE, entity_key

__all__ = [
    "EntityReport",
    "EntryReport",
    "FenceReport",
    "PrefixStats",
    "inspect_entity",
    "key_of",
    "parse_target",
    "prefix_stats",
    "sync_client",
    "value_key_parts",
]

_SCAN_BATCH = 500


@dataclass
class FenceReport:
    key: str
    nonce: str | None  # hex; None: no fence
    watermark_us: int
    ttl_ms: int
    # whether it is of the node's replication history: False after a failover or a restart, when
    # the next read makes it anew and refuses every entry under it (README, "Guarantees through
    # failover"); True too when the node's replication id could not be read (INFO refused)
    current: bool = True
    history: str = ""  # the fence's ``r``: the replication id it was made under
    node_replid: str = ""  # the node's master_replid now ('': INFO replication refused)


@dataclass
class EntryReport:
    key: str
    use_case: str
    args: list[tuple[str, str]]
    size: int
    ttl_ms: int
    verdict: (
        str  # fresh, invalidated, fence_mismatch, no_fence, foreign, version, corrupt, bad_signature, ...
    )
    why: str
    serializer: str = ""
    signed: bool = False
    signature_ok: bool | None = None  # None: no keys to check with
    stamp_us: int = 0
    nonce: str = ""
    decoded: Any = None


@dataclass
class EntityReport:
    entity: str
    server_time_us: int
    fence: FenceReport | None
    node: str = ""  # host:port of the server holding the entity (a cluster: its slot's primary)
    slot: int | None = None  # a cluster's slot of the entity
    entries: list[EntryReport] = field(default_factory=list)
    locks: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=repr, indent=2)


def sync_client(config: RedisConfig) -> Any:
    """A plain sync redis-py client (cluster, Sentinel's master or one server) on ``config``, for
    the tools that look."""
    assert config.url is not None
    if config.cluster:
        return redis.RedisCluster.from_url(config.url, **config.client_options())
    if config.sentinels is not None:
        return redis.Redis.from_pool(sentinel.master_pool(config, WaitTimedPool, **config.client_options()))
    return redis.Redis.from_url(config.url, **config.client_options())


def parse_target(target: str, prefix: str) -> str:
    """The entity (``{prefix:key_type:id}``) of a full key, or of ``key_type:id``."""
    if target.startswith("{"):
        end = target.find("}")
        if end < 0:
            raise ValueError(f"{target!r} is not a gcache key: no closing brace")
        return target[: end + 1]
    key_type, sep, id = target.partition(":")
    if not sep or not key_type or not id:
        raise ValueError(f"{target!r}: give a full key, or key_type:id (user_id:123)")
    return entity_key(prefix, key_type, id)


def key_of(raw: str, prefix: str) -> GCacheKey:
    """The GCacheKey whose rendering is ``raw`` (ValueError when ``raw`` is not one of ``prefix``)."""
    from gcache.urns import id_of, key_type_of, owned_by

    if not owned_by(raw, prefix):
        raise ValueError(f"{raw!r} is not a key of prefix {prefix!r}")
    entity = raw[: raw.index("}") + 1]
    use_case, pairs = value_key_parts(raw, entity)
    key = GCacheKey(key_type_of(entity, prefix), id_of(entity, prefix), use_case, pairs, urn_prefix=prefix)
    if key.urn != raw:
        raise ValueError(f"{raw!r} is not a value key gcache renders (it reads back as {key.urn!r})")
    return key


def value_key_parts(key: str, entity: str) -> tuple[str, list[tuple[str, str]]]:
    """The use case and the argument pairs of a value key of ``entity``."""
    rest = key[len(entity) :]
    query, _, use_case = rest.rpartition("#")
    args = []
    if query.startswith("?"):
        for part in query[1:].split("&"):
            name, _, value = part.partition("=")
            args.append((unquote(name), unquote(value)))
    return unquote(use_case), args


def _replid(client: Any, key: str) -> bytes:
    """The replication id of ``key``'s node as a tracked read compares it (b"" where INFO is
    refused)."""
    try:
        if isinstance(client, redis.RedisCluster):
            info = client.info("replication", target_nodes=client.get_node_from_key(key))  # type: ignore[no-untyped-call]
        else:
            info = client.info("replication")
    except redis.ResponseError:
        return b""
    return str(info.get("master_replid", "")).encode()


def _node(client: Any, key: str) -> tuple[str, int | None]:
    """Where ``key`` lives: the server's ``host:port`` (a cluster's: the primary of the key's
    slot, and the slot; Sentinel's: the master its pool last connected to)."""
    if isinstance(client, redis.RedisCluster):
        node = client.get_node_from_key(key)  # type: ignore[no-untyped-call]
        return f"{node.host}:{node.port}", int(client.keyslot(key))  # type: ignore[no-untyped-call]
    pool = client.connection_pool
    master = getattr(pool, "master_address", None)
    if master is not None:
        return f"{master[0]}:{master[1]}", None
    return server_address(client, default_host="localhost"), None


def inspect_entity(
    client: Any,
    entity: str,
    *,
    signer: Signer | None = None,
    decode: bool = False,
    unsafe_unpickle: bool = False,
    fail_safe_sec: float = 0.0,
) -> EntityReport:
    """Every key of ``entity`` in Redis, each value with its verdict (``client``: a sync redis-py
    client, standalone or cluster; the entity's keys share one slot). ``fail_safe_sec``: the use
    case's grace, which Redis does not know; an entry whose TTL left is within it is past its TTL."""
    fence_key = f"{entity}#{WATERMARK_USE_CASE}"
    # A cluster's node of the entity's slot alone: a failing other node does not fail the report.
    at: dict[str, Any] = {}
    if isinstance(client, redis.RedisCluster):
        at["target_nodes"] = client.get_node_from_key(fence_key)  # type: ignore[no-untyped-call]
    seconds, micros = client.time(**at)
    now_us = int(seconds) * 1_000_000 + int(micros)
    nonce, watermark, history = client.hmget(fence_key, "n", "w", "r")  # what gcache's user may run
    fence = None
    if nonce is not None:
        replid = _replid(client, fence_key)
        fence = FenceReport(
            fence_key,
            nonce.hex(),
            int(watermark) if isinstance(watermark, bytes) and watermark.isdigit() else -1,
            int(client.pttl(fence_key)),
            not replid or (history or b"") == replid,
            (history or b"").decode("utf-8", "replace"),
            replid.decode("utf-8", "replace"),
        )
    report = EntityReport(entity, now_us, fence, *_node(client, fence_key))
    pattern = entity.replace("[", "\\[").replace("?", "\\?").replace("*", "\\*") + "*"
    for raw_key in sorted(client.scan_iter(match=pattern, count=_SCAN_BATCH, **at)):
        key = raw_key.decode("utf-8", "surrogateescape") if isinstance(raw_key, bytes) else str(raw_key)
        if not key.startswith(entity) or key == fence_key:
            continue
        if key[len(entity) :].startswith("!lock"):
            report.locks.append(key)
            continue
        raw = client.get(key)
        if raw is None:
            continue  # expired between the scan and the read
        entry = _entry(key, entity, raw, int(client.pttl(key)), fence, signer, decode, unsafe_unpickle)
        if entry.verdict == "fresh" and fail_safe_sec and 0 <= entry.ttl_ms <= fail_safe_sec * 1000:
            entry.verdict = "expired_in_grace"
            entry.why = (
                f"past its TTL, within the fail-safe grace of {fail_safe_sec:g} s: a miss, kept only to "
                "serve when the function fails or outlasts soft_timeout_sec"
            )
        report.entries.append(entry)
    return report


def _entry(
    key: str,
    entity: str,
    raw: bytes,
    ttl_ms: int,
    fence: FenceReport | None,
    signer: Signer | None,
    decode: bool,
    unsafe_unpickle: bool,
) -> EntryReport:
    use_case, args = value_key_parts(key, entity)
    entry = EntryReport(key, use_case, args, len(raw), ttl_ms, "", "")
    try:
        env = _envelope.decode(raw)
    except _envelope.EnvelopeError as exc:
        entry.verdict = exc.reason
        entry.why = {
            "foreign": "not written by gcache (no envelope)",
            "version": "written by another release of gcache (another envelope version): a miss, rewritten",
            "corrupt": "the envelope's header is damaged: a miss, rewritten",
        }[exc.reason]
        return entry
    entry.serializer = _envelope.SERIALIZER_NAMES.get(env.serializer_id, f"unknown ({env.serializer_id})")
    entry.signed = env.key_id != _envelope.NO_KEY_ID
    entry.stamp_us = env.stamp_us
    entry.nonce = env.nonce.hex()
    if signer is not None:
        entry.signature_ok = _envelope.signed_by(signer, key, raw)
    tracked = env.nonce != _envelope.NO_NONCE
    if entry.signature_ok is False:
        entry.verdict = "bad_signature"
        entry.why = "unsigned" if not entry.signed else "its MAC does not verify with the signing keys given"
        entry.why += ": never loaded, a miss, rewritten"
    elif not tracked:
        entry.verdict = "fresh"
        entry.why = "untracked: served until its TTL"
    elif fence is None or fence.nonce is None:
        entry.verdict = "fence_mismatch"
        entry.why = "tracked, but its entity has no fence (lost, evicted, expired): a miss"
    elif fence.nonce != entry.nonce:
        entry.verdict = "fence_mismatch"
        entry.why = "written under another fence (the fence was replaced since): a miss"
    elif not fence.current:
        entry.verdict = "fence_mismatch"
        entry.why = (
            "its fence is of another replication history (a failover or restart since): a miss, and "
            "the next read makes the fence anew (a process with failover_fencing=False still "
            "serves it until a write-back or an invalidation makes the fence anew)"
        )
    elif env.stamp_us <= fence.watermark_us:
        entry.verdict = "invalidated"
        entry.why = (
            f"computed at {env.stamp_us} us, at or before the watermark {fence.watermark_us} us: "
            "an invalidation came after it"
        )
    else:
        entry.verdict = "fresh"
        entry.why = (
            f"stamp {env.stamp_us} us is above the watermark {fence.watermark_us} us and the fence matches"
        )
    if decode:
        entry.decoded = _decoded(env, entry, unsafe_unpickle)
    return entry


def _decoded(env: _envelope.Envelope, entry: EntryReport, unsafe_unpickle: bool) -> Any:
    if env.serializer_id == _envelope.SERIALIZER_JSON:
        return json.loads(env.payload)
    if env.serializer_id == _envelope.SERIALIZER_MSGPACK:
        try:
            import msgpack  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            return "(msgpack is not installed)"
        return msgpack.unpackb(env.payload, raw=False, strict_map_key=False, timestamp=3)
    if env.serializer_id == _envelope.SERIALIZER_PICKLE:
        if entry.signature_ok or unsafe_unpickle:
            return pickle.loads(env.payload)
        return "(pickle: not loaded, its signature is not verified; --unsafe-unpickle loads it)"
    return f"({entry.serializer} serializer: {len(env.payload)} bytes)"


@dataclass
class PrefixStats:
    """What a prefix holds: entries per (key type, use case), their envelopes and TTLs."""

    prefix: str
    keys: int = 0
    fences: int = 0
    locks: int = 0
    sampled: int = 0  # value entries whose header was read
    by_use_case: dict[str, int] = field(default_factory=dict)  # "key_type use_case" -> entries
    tracked: int = 0
    signed: int = 0
    not_gcache: int = 0  # foreign, another version, or corrupt
    serializers: dict[str, int] = field(default_factory=dict)
    ttl_buckets: dict[str, int] = field(default_factory=dict)
    bytes_sampled: int | None = None  # MEMORY USAGE of the sampled entries, when allowed

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


_TTL_BUCKETS = ((60_000, "< 1 min"), (600_000, "< 10 min"), (3_600_000, "< 1 h"), (86_400_000, "< 1 day"))


def _ttl_bucket(ttl_ms: int) -> str:
    if ttl_ms < 0:
        return "no TTL"
    return next((name for bound, name in _TTL_BUCKETS if ttl_ms < bound), ">= 1 day")


def prefix_stats(
    client: Any, prefix: str, *, sample_every: int = 1, progress: Any = None, memory: bool = True
) -> PrefixStats:
    """SCAN the prefix's keys; of every ``sample_every``-th value entry, read its header (a
    bounded GETRANGE), its TTL and, when the server allows it, its MEMORY USAGE."""
    from gcache.urns import key_type_of, owned_by

    stats = PrefixStats(prefix)
    seen_values = 0
    for raw_key in client.scan_iter(match="{" + prefix + ":*", count=_SCAN_BATCH):
        key = raw_key.decode("utf-8", "surrogateescape") if isinstance(raw_key, bytes) else str(raw_key)
        if not owned_by(key, prefix):
            continue
        stats.keys += 1
        if progress is not None and stats.keys % _SCAN_BATCH == 0:
            progress(stats.keys)
        entity = key[: key.index("}") + 1]
        rest = key[len(entity) :]
        if rest == f"#{WATERMARK_USE_CASE}":
            stats.fences += 1
            continue
        if rest.startswith("!lock"):
            stats.locks += 1
            continue
        use_case, _ = value_key_parts(key, entity)
        name = f"{key_type_of(entity, prefix)} {use_case}"
        stats.by_use_case[name] = stats.by_use_case.get(name, 0) + 1
        seen_values += 1
        if (seen_values - 1) % sample_every:
            continue
        head = client.getrange(key, 0, _envelope.HEADER_SIZE - 1)
        if not head:
            continue  # expired since the scan
        stats.sampled += 1
        try:
            env = _envelope.decode(head)
        except _envelope.EnvelopeError:
            stats.not_gcache += 1
        else:
            serializer = _envelope.SERIALIZER_NAMES.get(env.serializer_id, "unknown")
            stats.serializers[serializer] = stats.serializers.get(serializer, 0) + 1
            stats.tracked += env.nonce != _envelope.NO_NONCE
            stats.signed += env.key_id != _envelope.NO_KEY_ID
        bucket = _ttl_bucket(int(client.pttl(key)))
        stats.ttl_buckets[bucket] = stats.ttl_buckets.get(bucket, 0) + 1
        if memory:
            try:
                used = client.memory_usage(key)
            except Exception:  # not allowed (the application's ACL user), or not a Redis that has it
                memory = False
                stats.bytes_sampled = None
            else:
                stats.bytes_sampled = (stats.bytes_sampled or 0) + int(used or 0)
    return stats
