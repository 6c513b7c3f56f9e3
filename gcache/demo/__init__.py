"""``python -m gcache demo``: gcache in front of a slow data source, explained by its own numbers.

A newcomer should be able to read it in this order: ``options`` (what the command line
changes), ``source`` (a simulated database: every read sleeps), ``service`` (three cached
functions with different layer set-ups, and a config provider), ``traffic`` (a few hot users
and a long tail, from this process and a peer), ``report`` (the table, read back from the
Prometheus metrics the library publishes) and ``story`` (the run: traffic, an update followed by
``ainvalidate``, a Redis problem, the keys; ``--serve`` then keeps steady mixed traffic going so
``/metrics`` has something real to show to Prometheus and Grafana).
"""

from gcache.demo.options import DemoOptions
from gcache.demo.story import run

__all__ = ["DemoOptions", "run"]
