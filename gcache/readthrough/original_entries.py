"""A use case's REMOTE entries in the original gcache's formats (``GCacheConfig(legacy_compat=True)``).

The original library and its Go client read and write these entries and watermarks on the same
Redis and prefix, so a fleet can mix them with gcache (a rolling deploy from the original, or
for good). What is served follows the original's rule, with gcache's write fence on top:

- an entry is stale when the entity's watermark (milliseconds) is at or above its creation time;
- gcache stamps what it writes with the server time of the read that missed and stores it only
  if no invalidation came since that read (``remote.scripts.WRITE_ORIGINAL``), so its own
  writes cannot outlive an invalidation that raced the function;
- the entry checks of the original 3.0 (``original_wire.refusal``): expiry in the envelope, a
  creation time no watermark could reach, a lifetime or age past the tracked TTL cap.

Neither library announces the other's invalidations to LOCAL tiers, so a tracked use case sits
LOCAL out in this mode (see ``Decisions.__init__``).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from gcache import original_wire
from gcache._codec import Codec, OriginalCodec
from gcache._log import summary
from gcache.config import Serializer
from gcache.metrics import LAYER_REMOTE
from gcache.readthrough.reporting import Reporting

if TYPE_CHECKING:
    from gcache.readthrough.decisions import Miss
    from gcache.remote import TrackedRead

__all__ = ["OriginalEntries"]


class OriginalEntries(Reporting):
    """Reading and framing the original's entries; mixed into ``Decisions``."""

    wire_envelope: original_wire.Envelope
    tracked: bool
    codec: Codec | OriginalCodec
    serializer: Serializer | None

    def original_to_load(
        self, m: Miss, raw: bytes | None, read: TrackedRead | None
    ) -> tuple[Any, int, bool] | None:
        """As ``Decisions.to_load``: the payload worth loading, or None (the miss counted).

        Never past its TTL: in this mode REMOTE keeps no fail-safe grace (the original's readers
        would serve it as fresh).
        """
        if raw is None:
            self.m.miss(LAYER_REMOTE, "not_found").inc()
            return None
        try:
            # A key that writes JSON or PROTO never unpickles what it finds (the original 3.0's rule)
            entry = original_wire.decode(
                raw, allow_pickle=self.wire_envelope is original_wire.Envelope.PICKLE
            )
        except original_wire.DecodeError:
            self.m.miss(LAYER_REMOTE, "version").inc()
            return None
        if entry.framing is not original_wire.Envelope.PICKLE and self.serializer is None:
            self.m.miss(LAYER_REMOTE, "serializer_mismatch").inc()  # text or bytes, no Serializer to load it
            return None
        if read is not None:
            now_ms = read.now_us // 1000
            watermark_ms = read.watermark_us // 1000 if read.watermark_us >= 0 else None
        else:
            now_ms, watermark_ms = time.time_ns() // 1_000_000, None
        refused = original_wire.refusal(entry, now_ms=now_ms, tracked=self.tracked, watermark_ms=watermark_ms)
        if refused is not None:
            self.m.miss(LAYER_REMOTE, refused).inc()
            return None
        return entry.payload, 0, False

    def original_entry(self, payload: Any, read: TrackedRead | None, ttl_ms: int) -> bytes | None:
        """The entry to store, created at the read's server time (tracked) or now; None when it
        cannot be framed or is too large (counted)."""
        created_ms = read.now_us // 1000 if read is not None else time.time_ns() // 1_000_000
        ttl_sec = max(1, round(ttl_ms / 1000))
        envelope = self.wire_envelope
        try:
            if envelope is original_wire.Envelope.JSON and isinstance(payload, (bytes, bytearray)):
                payload = bytes(payload).decode("utf-8")  # a JSON serializer's bytes are UTF-8 text
            elif envelope is original_wire.Envelope.PROTO and isinstance(payload, str):
                payload = payload.encode("utf-8")
            if envelope is original_wire.Envelope.JSON:
                entry = original_wire.encode_json(created_ms, ttl_sec, payload)
            elif envelope is original_wire.Envelope.PROTO:
                entry = original_wire.encode_proto(created_ms, ttl_sec, payload)
            else:
                entry = original_wire.encode_pickle(created_ms, payload)
        except Exception as exc:  # EncodeError, or a value pickle refuses
            self.m.write(LAYER_REMOTE, "unencodable").inc()
            self.rt.errors.warning(
                ("unencodable", self.use_case),
                f"gcache: {self.use_case}: the value cannot be stored in the original's "
                f"{envelope.value} envelope ({summary(exc)}); served, not stored in REMOTE",
            )
            return None
        return entry if self.fits_size(len(entry)) else None

    def fits_size(self, size: int) -> bool:
        """Whether ``size`` bytes are within ``max_value_bytes`` (counted either way); also
        ``Decisions.fits``'s measure."""
        limit = self.rt.max_value_bytes
        if limit is not None and size > limit:
            self.m.write(LAYER_REMOTE, "too_large").inc()
            return False
        self.m.size.observe(size)
        return True
