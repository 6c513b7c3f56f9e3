"""What a use case tells when something goes wrong: counted, and logged (rate-limited or once)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gcache._log import summary
from gcache.breaker import ShardDown
from gcache.errors import KeyTooLongError, RemoteError
from gcache.metrics import LAYER_GLOBAL, LAYER_KEY, LAYER_LOCAL, LAYER_NONE, LAYER_REMOTE, UseCaseMetrics

if TYPE_CHECKING:
    from gcache.keys import KeyBuilder, KeyPartWatch
    from gcache.readthrough.runtime import Runtime

__all__ = ["Reporting", "too_long"]


def too_long(urn: str, longest: int) -> KeyTooLongError:
    """The error of a key over ``max_key_length`` (the call is served uncached, counted)."""
    return KeyTooLongError(
        f"the key is {len(urn)} characters, max_key_length is {longest} (its start: {urn[:60]!r}); "
        "an id or argument this long is usually caller input: key it by arg_adapters, have long "
        "parts keyed by their hash (GCacheConfig.key_hash_secret), or raise GCacheConfig.max_key_length"
    )


class Reporting:
    """Errors and mistakes, each counted in ``gcache_error_counter`` or ``disabled`` and told in
    the log; never raised to the caller, who is served uncached."""

    rt: Runtime
    m: UseCaseMetrics
    keys: KeyBuilder | None  # None: a use case of direct access, no decorated function
    use_case: str
    function_name: str  # the decorated function's qualified name, once wrap() has it
    watch: KeyPartWatch | None
    unsigned_pickle: bool  # no signing keys, pickle, and not told yet
    blocking_quiet_until = 0.0  # a sync call inside an event loop is told again from then on
    tell_outside = False  # GCacheConfig.tell_mistakes, until a call outside enable() was told
    tell_missing = False  # likewise, until a call with no config was told

    def key_error(self, exc: BaseException) -> None:
        self._error(LAYER_KEY, exc, "could not build the cache key")

    def remote_error(self, exc: BaseException, what: str, outcome: str = "served uncached") -> None:
        self._error(LAYER_REMOTE, exc, what, outcome)

    def local_error(self, exc: BaseException, what: str) -> None:
        self._error(LAYER_LOCAL, exc, what)

    def _error(self, layer: str, exc: BaseException, what: str, outcome: str = "served uncached") -> None:
        cause = exc.cause if isinstance(exc, RemoteError) else exc  # label the redis-py error itself
        if isinstance(cause, ShardDown):  # a cluster node's open breaker: as the breaker's skip
            self.m.disabled(layer, "server_down").inc()
            return
        kind = type(cause).__name__
        self.m.error(layer, kind, "False").inc()  # in_fallback, as str(False)
        self.rt.errors.warning(
            (self.use_case, layer, kind),
            f"{what} for use case {self.use_case!r} ({layer}): {summary(cause)}; {outcome}",
            exc,
        )

    def bad_signature(self, urn: str, known_key: bool, unsigned: bool) -> None:
        """An entry refused before it was loaded: told (rate-limited), as it may be an attack."""
        self.m.miss(LAYER_REMOTE, "bad_signature").inc()
        if unsigned:
            why = "it is unsigned (written without signing keys, e.g. before signing was turned on)"
        elif known_key:
            why = "its MAC is wrong: forged, altered, or copied from another key"
        else:
            why = "it is signed with a key not in signing_keys: forged, or a key rotated out too soon"
        self.rt.errors.warning(
            ("bad_signature", self.use_case),
            f"use case {self.use_case!r}: refused the REMOTE entry {urn[:120]!r} unread: {why}; "
            "served as a miss, and rewritten",
        )

    def blocking_in_loop(self) -> None:
        self.rt.errors.warning(
            ("sync_in_event_loop", self.use_case),
            f"Sync cached function {self.function_name} (use case {self.use_case!r}) called in an async "
            "context (inside a running event loop): its Redis round trips and its function block the "
            "loop (every task waits); make it async, or call it with asyncio.to_thread()",
        )

    def tell_unsigned_pickle(self) -> None:
        """The first REMOTE use of pickle without signing keys (once per GCache)."""
        self.unsigned_pickle = False
        self.rt.errors.once(
            ("unsigned_pickle",),
            f"use case {self.use_case!r} stores pickles in Redis unsigned: anyone who can write to "
            "that Redis can make every process that reads the entry run code. Set "
            "GCacheConfig(signing_keys=[...]) or GCACHE_SIGNING_KEYS to sign and check entries, or "
            "use a serializer whose loading runs no code (gcache.serializers.JsonSerializer, "
            "MsgpackSerializer); see SECURITY.md",
        )

    def watch_key(self, id: str, pairs: tuple[tuple[str, str], ...]) -> None:
        """Tell (once per part) a key part that makes every call of this use case a miss."""
        assert self.watch is not None
        for part, why in self.watch.suspects(id, pairs):
            fix = (
                "pass the id itself, or give id_arg an extractor: id_arg=(name, lambda obj: obj.id)"
                if part == "id"
                else f"leave it out with ignore_args=[{part!r}], or key it by arg_adapters={{{part!r}: ...}}"
            )
            self.rt.errors.once(
                ("key_part", self.use_case, part),
                f"use case {self.use_case!r}: key part {part!r} {why}, so calls cannot hit the cache "
                f"and each one stores an entry; {fix}",
            )

    def called_outside_enable(self) -> None:
        """GCacheConfig.tell_mistakes: the first call of this use case outside ``enable()``."""
        self.tell_outside = False
        self.rt.errors.once(
            ("outside_enable", self.use_case),
            f"cached function {self.function_name} (use case {self.use_case!r}) was called outside "
            'gcache.enable(), so it ran uncached (counted as disabled{reason="context"}): wrap the '
            "call in `with gcache.enable():`, decorate the entry point with @gcache.enable(), or add "
            "the middleware (app.add_middleware(gcache.web.CacheMiddleware, gcache=gcache)); told "
            "once per use case (GCacheConfig.tell_mistakes)",
        )

    def called_without_config(self) -> None:
        """GCacheConfig.tell_mistakes: the first call of this use case with no config at all."""
        self.tell_missing = False
        asked = self.rt.provider is not None
        direct = self.keys is None  # direct access (get/put): its GCacheKey carries default_config
        where = "the GCacheKey" if direct else "the decorator"
        self.rt.errors.once(
            ("missing_config", self.use_case),
            (
                f"direct access to use case {self.use_case!r}"
                if direct
                else f"cached function {self.function_name} (use case {self.use_case!r})"
            )
            + " has no config: "
            + ("the config provider answered None" if asked else "there is no config provider")
            + f" and {where} has no default_config, so it ran uncached (counted as "
            f'disabled{{reason="missing_config"}}): give {where} default_config=GCacheKeyConfig(...)'
            + (", or have the provider answer for this use case" if asked else "")
            + "; told once per use case (GCacheConfig.tell_mistakes)",
        )

    def used_after_close(self) -> None:
        self.m.disabled(LAYER_GLOBAL, "closed").inc()
        self.rt.errors.once(
            ("closed", self.use_case),
            f"use case {self.use_case!r} called after its GCache (prefix {self.rt.prefix!r}) was "
            "closed: served uncached from now on (close the cache when the application stops, "
            "after its last call)",
        )

    def refresh_failed(self, exc: BaseException) -> None:
        """refresh_ahead's background refresh failed: the current entry is kept. A Redis error is
        counted here (the function's own, by :meth:`function_failed`); both are logged, the
        function's without its traceback (it is the application's, as a miss leaves it)."""
        remote = isinstance(exc, RemoteError)
        cause = exc.cause if isinstance(exc, RemoteError) else exc
        kind = type(cause).__name__
        if remote:
            self.m.error(LAYER_REMOTE, kind, "False").inc()
        self.rt.errors.warning(
            ("refresh_failed", self.use_case, kind),
            f"background refresh (refresh_ahead) for use case {self.use_case!r} failed: "
            f"{summary(cause)}; the current entry is kept",
            exc if remote else None,
        )

    def function_failed(self, layer: str, exc: BaseException) -> None:
        self.m.error(layer, type(exc).__name__, "True").inc()

    @staticmethod
    def fallback_layer(local_ttl: float, remote_ttl: float) -> str:
        return LAYER_REMOTE if remote_ttl else (LAYER_LOCAL if local_ttl else LAYER_NONE)
