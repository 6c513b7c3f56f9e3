"""Prometheus collectors: one set per (registry, prefix), label children bound once per use case.

Collectors exist once per (registry, metrics_prefix): several GCache instances with the same
prefix share them, as they share the process. Each use case binds its label children once, so a
call does no label lookup, and counts through :class:`FastCounter` / :class:`FastHistogram`,
which skip prometheus_client's per-call checks.
"""

from __future__ import annotations

import functools
import itertools
import operator
import sys
import threading
from array import array
from bisect import bisect_left
from collections.abc import Callable
from typing import Any, ClassVar

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from gcache import _fork

try:  # the lock-guarded value of a counter child, as prometheus_client keeps it
    from prometheus_client.values import MutexValue
except ImportError:  # pragma: no cover - a prometheus_client arranged otherwise: public methods
    MutexValue = None  # type: ignore[assignment,misc]

__all__ = [
    "LAYER_CONFIG",
    "LAYER_GLOBAL",
    "LAYER_KEY",
    "LAYER_LOCAL",
    "LAYER_NONE",
    "LAYER_REMOTE",
    "CountingValue",
    "FastCounter",
    "FastHistogram",
    "Metrics",
    "SummingValue",
    "UseCaseMetrics",
]

# The layer label's values. The original library labels a layer by its CacheLayer name, the
# enable() context by "GLOBAL" and a key that could not be built by "key creation"; gcache's own
# values (the config provider's errors, a function run with no layer) follow that style.
LAYER_LOCAL = "LOCAL"  # CacheLayer.LOCAL.name
LAYER_REMOTE = "REMOTE"  # CacheLayer.REMOTE.name
LAYER_GLOBAL = "GLOBAL"  # a call as a whole: enable() off, or the cache closed
LAYER_KEY = "key creation"  # an error building the key (too long, an argument that would not render)
LAYER_CONFIG = "config resolution"  # an error of the config provider (it raised, or answered no config)
LAYER_NONE = "NOOP"  # the function ran with no layer taking part (CacheLayer.NOOP.name)

# The original's timers' buckets (1 ms, then prometheus_client's defaults) and its size buckets.
# gcache's timers keep every one of those bounds, so a query on any of its `le` values finds
# the same series, and add finer ones: a LOCAL lookup takes about a microsecond.
_ORIGINAL_TIMER = (0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
_ORIGINAL_SIZE = (100.0, 1_000.0, 10_000.0, 100_000.0, 1_000_000.0, 10_000_000.0)


def _with_original(finer: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(sorted({*finer, *_ORIGINAL_TIMER}))


_LATENCY = _with_original((0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.0025))
_FALLBACK = _with_original((0.0005, 0.0025, 30.0))
_SERIALIZATION = _with_original((0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.0025))
_SIZE = _ORIGINAL_SIZE
_POOL_WAIT = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_BUS_LAG = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)

_UC = ("use_case", "key_type")


class Metrics:
    """The collectors of one (registry, prefix)."""

    _shared: ClassVar[dict[tuple[int, str], Metrics]] = {}
    _shared_lock = threading.Lock()

    @classmethod
    def get(cls, registry: CollectorRegistry | None, prefix: str) -> Metrics:
        registry = registry if registry is not None else REGISTRY
        with cls._shared_lock:
            metrics = cls._shared.get((id(registry), prefix))
            if metrics is None or metrics.registry is not registry:
                metrics = cls._shared[(id(registry), prefix)] = cls(registry, prefix)
            return metrics

    def __init__(self, registry: CollectorRegistry, prefix: str) -> None:
        self.registry = registry
        p = prefix + "gcache_"
        kw: dict[str, Any] = {"registry": registry}
        self.request = Counter(f"{p}request_counter", "Lookups per layer.", [*_UC, "layer"], **kw)
        self.miss = Counter(
            f"{p}miss_counter", "Lookups that fell through, per layer.", [*_UC, "layer"], **kw
        )
        # The reason of each miss, counted with it: a label of its own metric, so that the miss
        # counter keeps the request counter's labels (1 - miss / request needs no sum).
        self.miss_reason = Counter(
            f"{p}miss_reason_counter",
            "Lookups that fell through, per layer and reason.",
            [*_UC, "layer", "reason"],
            **kw,
        )
        self.disabled = Counter(
            f"{p}disabled_counter",
            "Calls or layers that skipped the cache, by reason.",
            [*_UC, "layer", "reason"],
            **kw,
        )
        self.error = Counter(
            f"{p}error_counter",
            "Errors, by exception type; in_fallback: raised by the function.",
            [*_UC, "layer", "error", "in_fallback"],
            **kw,
        )
        self.invalidation = Counter(
            f"{p}invalidation_counter",
            "Entity invalidations applied, per layer.",
            ["key_type", "layer"],
            **kw,
        )
        self.write = Counter(
            f"{p}write_counter",
            "Writes after a miss, per layer, by result (stored, or why it was refused as stale).",
            [*_UC, "layer", "result"],
            **kw,
        )
        self.get_timer = Histogram(
            f"{p}get_timer", "Seconds per lookup, per layer.", [*_UC, "layer"], buckets=_LATENCY, **kw
        )
        self.fallback_timer = Histogram(
            f"{p}fallback_timer",
            "Seconds spent in the wrapped function; layer: the last one that missed.",
            [*_UC, "layer"],
            buckets=_FALLBACK,
            **kw,
        )
        self.serialization_timer = Histogram(
            f"{p}serialization_timer",
            "Seconds to dump or load a value.",
            [*_UC, "layer", "operation"],
            buckets=_SERIALIZATION,
            **kw,
        )
        self.size = Histogram(
            f"{p}size_histogram", "Bytes per value written to a layer.", [*_UC, "layer"], buckets=_SIZE, **kw
        )
        self.single_flight = Counter(
            f"{p}single_flight_counter",
            "Stampede protection: joined (took the value another caller in this process was "
            "computing), lock_acquired, lock_waited (another process's value arrived), lock_timeout.",
            [*_UC, "result"],
            **kw,
        )
        self.stale_served = Counter(
            f"{p}stale_served_counter",
            "Fail-safe: entries past their TTL served because the function raised (function_error) "
            "or outlasted its soft timeout (soft_timeout).",
            [*_UC, "layer", "reason"],
            **kw,
        )
        self.refresh = Counter(
            f"{p}refresh_counter",
            "refresh_ahead's background refreshes of hits past their refresh point, by result: "
            "refreshed (written back), refused (written back but refused: invalidated meanwhile, "
            "or too large), from_remote (LOCAL renewed from a REMOTE entry another process "
            "refreshed), locked (another process holds the key's lock), refresh_failed.",
            [*_UC, "result"],
            **kw,
        )
        self.local_entries = Gauge(
            f"{p}local_entries", "Entries in the LOCAL layer.", list(_UC), multiprocess_mode="livesum", **kw
        )
        self.local_dropped = Counter(
            f"{p}local_dropped_counter",
            "LOCAL entries dropped before their TTL, by reason (invalidated, deleted, bus_down, flushed).",
            [*_UC, "reason"],
            **kw,
        )
        # The invalidation bus (Redis pub/sub) that carries invalidations to other processes.
        self.bus_message = Counter(
            f"{p}bus_message_counter",
            "Invalidation bus messages by direction (published, received) and kind (invalidate, delete).",
            ["key_type", "direction", "kind"],
            **kw,
        )
        self.bus_reconnect = Counter(
            f"{p}bus_reconnect_counter", "Times the invalidation bus subscription was set up again.", **kw
        )
        self.bus_connected = Gauge(
            f"{p}bus_connected",
            "Invalidation bus subscriptions up (each GCache adds 1 while subscribed).",
            multiprocess_mode="livesum",
            **kw,
        )
        self.breaker_open = Gauge(
            f"{p}breaker_open",
            "Circuit breakers open (each GCache adds 1 while Redis is skipped as failing).",
            multiprocess_mode="livesum",
            **kw,
        )
        self.failover_fencing_off = Gauge(
            f"{p}failover_fencing_off",
            "GCaches whose Redis refuses INFO to tracked reads (an ACL without +info): their "
            "fences carry no replication id, failover fencing is off (each adds 1 while so; "
            "failover_fencing=False does not count).",
            multiprocess_mode="livesum",
            **kw,
        )
        self.breaker_transition = Counter(
            f"{p}breaker_transition_counter",
            "Circuit breaker changes, by the state entered (open, closed).",
            ["state"],
            **kw,
        )
        for state in ("open", "closed"):  # both series exist from the start, so increase() sees the first
            self.breaker_transition.labels(state)
        # The invalidation outbox: invalidations Redis did not take, replayed until it does.
        self.outbox_depth = Gauge(
            f"{p}invalidation_outbox",
            "Invalidations waiting in the outbox for Redis to take them (entities; each GCache "
            "adds its own).",
            multiprocess_mode="livesum",
            **kw,
        )
        self.outbox_replay = Counter(
            f"{p}invalidation_replay_counter",
            "Replays of invalidations waiting in the outbox, by result (applied; unconfirmed: "
            "applied, too few replicas confirmed it; failed: tried again later).",
            ["result"],
            **kw,
        )
        self.outbox_dropped = Counter(
            f"{p}invalidation_outbox_dropped_counter",
            "Invalidations the outbox gave up before Redis took them, by reason (full: the oldest, "
            "for a new one; closed: pending when the GCache was closed).",
            ["reason"],
            **kw,
        )
        for result in ("applied", "unconfirmed", "failed"):  # every series from the start
            self.outbox_replay.labels(result)
        for reason in ("full", "closed"):
            self.outbox_dropped.labels(reason)
        self.breaker_node_open = Gauge(
            f"{p}breaker_node_open",
            "Cluster nodes skipped as failing, by node (host:port): 1 while its breaker is open "
            "(RedisConfig(cluster=True) only; each also counts in breaker_open).",
            ["node"],
            multiprocess_mode="livesum",
            **kw,
        )
        self.pool_wait = Histogram(
            f"{p}pool_wait_seconds",
            "Seconds a Redis operation waited for a pooled connection, when none was free on arrival; "
            "pool: read, write or admin.",
            ["pool"],
            buckets=_POOL_WAIT,
            **kw,
        )
        for pool in ("read", "write", "admin"):  # every series exists from the start
            self.pool_wait.labels(pool)
        self.bus_lag = Histogram(
            f"{p}bus_lag_seconds",
            "Seconds from publishing an invalidation to receiving it, on the Redis server clock.",
            buckets=_BUS_LAG,
            **kw,
        )


def _after_fork_in_child() -> None:
    """Fresh locks, and the gauges of state no process inherits: in the child no bus is
    subscribed and no breaker is open until it finds out for itself; each GCache's outbox adds
    back what it keeps (``InvalidationOutbox.after_fork_in_child``)."""
    Metrics._shared_lock = threading.Lock()
    CountingValue._lock = threading.Lock()
    SummingValue._lock = threading.Lock()
    for metrics in Metrics._shared.values():
        for gauge in (metrics.bus_connected, metrics.breaker_open, metrics.outbox_depth):
            value = getattr(gauge, "_value", None)
            if MutexValue is not None and type(value) is MutexValue:
                value._lock = threading.Lock()
            gauge.set(0)
        metrics.breaker_node_open.clear()


_fork.at_fork_in_child(_after_fork_in_child)


class CountingValue:
    """A counter's value that the hot path advances by 1 with one C call, ``next`` on a count.

    prometheus_client's ``MutexValue.inc`` is a Python method taking a lock: 2.8k instructions
    (callgrind), as much as the rest of gcache's work on a LOCAL hit. ``itertools.count`` hands
    out each number once, atomically under the GIL, so :attr:`tick` counts without a lock. Any
    other change (``inc(amount)``, ``set``) goes to a float beside it under a lock, and ``get``
    takes a number from the count too, so it subtracts the numbers it took itself.
    """

    __slots__ = ("_count", "_exemplar", "_read", "_rest", "tick")
    _multiprocess = False
    # One lock for every value: taken only off the hot path (a scrape, inc(amount), set), and
    # one lock is one to renew after a fork.
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, start: float = 0.0) -> None:
        self._count = itertools.count()
        self._read = 0  # numbers the count gave to get() and set(), not to tick()
        self._rest = start  # everything added other than by tick()
        self._exemplar: Any = None
        self.tick: Callable[[], object] = self._count.__next__

    def _ticks(self) -> int:  # with the lock held
        taken = next(self._count) - self._read
        self._read += 1
        return taken

    def inc(self, amount: float) -> None:
        with self._lock:
            self._rest += amount

    def set(self, value: float, timestamp: float | None = None) -> None:
        with self._lock:
            self._rest = value - self._ticks()

    def get(self) -> float:
        with self._lock:
            return self._ticks() + self._rest

    def set_exemplar(self, exemplar: Any) -> None:
        with self._lock:
            self._exemplar = exemplar

    def get_exemplar(self) -> Any:
        with self._lock:
            return self._exemplar


class SummingValue:
    """A histogram's sum that the hot path adds to with one C call, ``array.append``.

    prometheus_client's sum is a ``MutexValue``, whose ``inc`` takes a lock in Python: it cost
    timing every lookup a third of a LOCAL hit. Appending a double to an ``array('d')`` is
    atomic under the GIL; the amounts are folded into a float under a lock when the value is
    read (a scrape), and by the histogram every :data:`FOLD_EVERY` observations of a bucket, so
    the array stays small in a process that is never scraped.
    """

    __slots__ = ("_exemplar", "_pending", "_total", "add")
    _multiprocess = False
    _lock: ClassVar[threading.Lock] = threading.Lock()  # off the hot path; renewed after a fork

    def __init__(self, start: float = 0.0) -> None:
        self._pending = array("d")
        self._total = start
        self._exemplar: Any = None
        self.add: Callable[[float], None] = self._pending.append

    def fold(self) -> None:
        with self._lock:
            pending = self._pending
            taken = len(pending)  # appends after this stay for the next fold
            if taken:  # in order, one by one (in C): the float prometheus_client's inc would reach
                self._total = functools.reduce(operator.add, pending[:taken], self._total)
                del pending[:taken]

    def inc(self, amount: float) -> None:
        with self._lock:
            self._total += amount

    def set(self, value: float, timestamp: float | None = None) -> None:
        with self._lock:
            del self._pending[:]
            self._total = value

    def get(self) -> float:
        self.fold()
        return self._total

    def set_exemplar(self, exemplar: Any) -> None:
        self._exemplar = exemplar

    def get_exemplar(self) -> Any:
        return self._exemplar


FOLD_EVERY = 128  # a bucket's observations between two folds of its histogram's sum


def _adding_one(value: object) -> tuple[Any, Callable[[], object]] | None:
    """What to keep in place of a counter's (or bucket's) ``value``, and how to add 1 to it: a
    :class:`CountingValue` and its tick, else the value and its own ``inc(1)``; None when it has
    neither (the caller keeps prometheus_client's public method)."""
    counting = _counting(value)
    if counting is not None:
        return counting, counting.tick
    inc = getattr(value, "inc", None)
    return (value, functools.partial(inc, 1)) if callable(inc) else None


_GIL = getattr(sys, "_is_gil_enabled", lambda: True)()  # itertools.count is atomic under the GIL


def _counting(value: object) -> CountingValue | None:
    """``value`` as a :class:`CountingValue`: the same object, a new one taking over a
    ``MutexValue``'s count, or None where counting without a lock is not safe or not possible
    (multiprocess mode's mmap values, a build without the GIL, a changed prometheus_client)."""
    if isinstance(value, CountingValue):
        return value
    if MutexValue is None or type(value) is not MutexValue or not _GIL:
        return None
    return CountingValue(value.get())  # type: ignore[no-untyped-call]


class FastCounter:
    """A bound counter child whose ``inc()`` adds 1 straight to the child's value.

    ``Counter.inc`` checks on every call that the child has its label values and that the amount
    is not negative, which costs more than the increment on a cache hit; both hold by
    construction here. The child's value becomes a :class:`CountingValue` (the same one for
    every FastCounter of the child), read by prometheus_client as before. In multiprocess mode
    the value (an mmap value) does the adding, as prometheus_client does; a prometheus_client
    without that value object gets the public method.
    """

    __slots__ = ("add", "inc")

    def __init__(self, child: Counter) -> None:
        found = _adding_one(getattr(child, "_value", None))
        if found is None:
            self.inc: Callable[[], object] = child.inc
        else:
            child._value, self.inc = found
        self.add: Callable[[float], None] = child.inc  # many at once (a batch): one lock


class FastHistogram:
    """A bound histogram child whose ``observe`` finds the bucket by bisection.

    ``Histogram.observe`` walks the bucket bounds in a Python loop; ``bisect_left`` finds the
    first bound at or above the amount (the bucket ``observe`` picks) in C, the bucket's count
    is a :class:`CountingValue` and the sum a :class:`SummingValue` where they can be: an
    observation is three C calls. A prometheus_client whose child does not keep its bounds,
    buckets and sum as this expects gets the public method.
    """

    __slots__ = ("observe", "observe_many")

    def __init__(self, child: Histogram) -> None:
        found = _bisecting_observe(child)
        if found is None:

            def observe_many(amount: float, n: int) -> None:
                for _ in range(n):
                    child.observe(amount)

            self.observe: Callable[[float], None] = child.observe
            self.observe_many: Callable[[float, int], None] = observe_many
        else:
            self.observe, self.observe_many = found


def _bisecting_observe(
    child: Histogram,
) -> tuple[Callable[[float], None], Callable[[float, int], None]] | None:
    """``observe``, and ``observe_many(amount, n)``: ``n`` observations of one amount (a batch's
    lookups, timed together) as two additions."""
    bounds = getattr(child, "_upper_bounds", None)
    buckets = getattr(child, "_buckets", None)
    add_sum = getattr(getattr(child, "_sum", None), "inc", None)
    if not (isinstance(bounds, list) and isinstance(buckets, list) and callable(add_sum)):
        return None
    if len(bounds) != len(buckets) or bounds != sorted(bounds) or bounds[-1] != float("inf"):
        return None
    found = [one for one in map(_adding_one, buckets) if one is not None]
    if len(found) != len(buckets):
        return None
    buckets[:] = [value for value, _ in found]
    bucket_adds = tuple(add for _, add in found)
    upper_bounds = tuple(bounds)
    summing = _summing(child._sum) if all(isinstance(value, CountingValue) for value in buckets) else None
    bucket_incs = tuple(value.inc for value in buckets)  # CountingValue or mmap value: inc(amount)
    sum_inc: Callable[[float], None] = add_sum if summing is None else summing.inc

    def observe_many(amount: float, n: int) -> None:
        sum_inc(amount * n)
        bucket_incs[bisect_left(upper_bounds, amount)](n)

    if summing is None:
        add: Callable[[float], None] = add_sum

        def observe(amount: float) -> None:
            add(amount)
            bucket_adds[bisect_left(upper_bounds, amount)]()

        return observe, observe_many
    child._sum = summing
    append, fold, mask = summing.add, summing.fold, FOLD_EVERY - 1
    ticks: tuple[Callable[[], int], ...] = tuple(bucket_adds)  # type: ignore[arg-type]
    first, tick_first = upper_bounds[0], ticks[0]

    def observe_summing(amount: float) -> None:
        append(amount)
        # The first bucket (a LOCAL lookup's) by one comparison, the others by bisection.
        if not (tick_first() if amount <= first else ticks[bisect_left(upper_bounds, amount)]()) & mask:
            fold()

    return observe_summing, observe_many


def _summing(value: object) -> SummingValue | None:
    """``value`` (a histogram's sum) as a :class:`SummingValue`, or None where that is not safe
    (as for :func:`_counting`)."""
    if isinstance(value, SummingValue):
        return value
    if MutexValue is None or type(value) is not MutexValue or not _GIL:
        return None
    return SummingValue(value.get())  # type: ignore[no-untyped-call]


class _Children:
    """Label children bound on first use, then reused: one dict lookup per rare event."""

    __slots__ = ("_bind", "_children")

    def __init__(self, bind: Callable[..., Any]) -> None:
        self._bind = bind
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *labels: str) -> Any:
        child = self._children.get(labels)
        if child is None:
            child = self._children[labels] = self._bind(*labels)
        return child


class _Miss:
    """A miss of one layer and reason: ``inc()`` counts it in both miss counters."""

    __slots__ = ("inc",)

    def __init__(self, layer: FastCounter, reason: FastCounter) -> None:
        count_layer, count_reason = layer.inc, reason.inc

        def inc() -> None:
            count_layer()
            count_reason()

        self.inc = inc


class UseCaseMetrics:
    """One use case's label children; the hot-path ones are plain attributes.

    Layers are labelled as the original library labels them (``LOCAL``, ``REMOTE``, ``GLOBAL``,
    ``key creation``, ``in_fallback`` ``"True"``/``"False"``): its dashboards and alerts read
    gcache's series unchanged.
    """

    def __init__(self, metrics: Metrics, use_case: str, key_type: str) -> None:
        uc = (use_case, key_type)
        self.request_local = FastCounter(metrics.request.labels(*uc, LAYER_LOCAL))
        self.request_remote = FastCounter(metrics.request.labels(*uc, LAYER_REMOTE))
        self.get_local = FastHistogram(metrics.get_timer.labels(*uc, LAYER_LOCAL))
        self.get_remote = FastHistogram(metrics.get_timer.labels(*uc, LAYER_REMOTE))
        self.disabled_context = FastCounter(metrics.disabled.labels(*uc, LAYER_GLOBAL, "context"))
        self.dump = FastHistogram(metrics.serialization_timer.labels(*uc, LAYER_REMOTE, "dump"))
        self.load = FastHistogram(metrics.serialization_timer.labels(*uc, LAYER_REMOTE, "load"))
        self.size = FastHistogram(metrics.size.labels(*uc, LAYER_REMOTE))
        self.local_entries = metrics.local_entries.labels(*uc)
        self.miss_reason = _Children(
            lambda layer, reason: FastCounter(metrics.miss_reason.labels(*uc, layer, reason))
        )
        self.miss = _Children(
            lambda layer, reason: _Miss(
                FastCounter(metrics.miss.labels(*uc, layer)), self.miss_reason(layer, reason)
            )
        )
        self.disabled = _Children(
            lambda layer, reason: FastCounter(metrics.disabled.labels(*uc, layer, reason))
        )
        self.error = _Children(
            lambda layer, error, in_fb: FastCounter(metrics.error.labels(*uc, layer, error, in_fb))
        )
        self.fallback = _Children(lambda layer: FastHistogram(metrics.fallback_timer.labels(*uc, layer)))
        self.local_stored = FastCounter(metrics.write.labels(*uc, LAYER_LOCAL, "stored"))
        self.write = _Children(lambda layer, result: FastCounter(metrics.write.labels(*uc, layer, result)))
        self.joined = FastCounter(metrics.single_flight.labels(*uc, "joined"))
        self.single_flight = _Children(lambda result: FastCounter(metrics.single_flight.labels(*uc, result)))
        self.stale_served = _Children(
            lambda layer, reason: FastCounter(metrics.stale_served.labels(*uc, layer, reason))
        )
        self.refresh = _Children(lambda result: FastCounter(metrics.refresh.labels(*uc, result)))
