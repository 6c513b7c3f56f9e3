"""After ``fork()``: what a child process must not share with its parent.

A cache built before a fork (gunicorn's master with ``--preload``, a ``multiprocessing`` parent
with the fork start method, uWSGI without ``lazy-apps``) is copied into every child with the
parent's state, but only the forking thread survives. Left as it is, the child would take its
parent's bus identity (and ignore its siblings' invalidations as its own echo), wait on loop and
probe threads that do not exist in it, write to Redis connections the parent is using, and
block forever on a lock another thread of the parent held at the moment of the fork.

``os.register_at_fork`` runs :func:`_in_child` in the child before any other code of the child
runs (CPython calls it from ``os.fork()`` and from every fork it makes for ``multiprocessing``;
uWSGI's Python plugin calls it for each worker). Every live GCache then resets itself as if
built in the child (``GCache._after_fork_in_child``), and each module resets its own globals.

Nothing the parent opened is closed or otherwise touched in the child: an asyncio transport
that is closed unregisters its socket from the event loop's epoll instance, which the child
shares with the parent, and would make the parent's loop deaf to it. The parent's clients and
loops are kept referenced here instead (:func:`leave_untouched`), so that not even their
finalizers run in the child.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["at_fork_in_child", "forks", "leave_untouched", "track"]


class _Resettable(Protocol):
    def _after_fork_in_child(self) -> None: ...


_hooks: list[Callable[[], None]] = []
_instances: weakref.WeakSet[Any] = weakref.WeakSet()
_untouched: list[Any] = []  # the parent's clients and loops, kept alive and never used again
_forks = 0


def forks() -> int:
    """How many times this process is a forked child of a process that imported gcache."""
    return _forks


def at_fork_in_child(hook: Callable[[], None]) -> None:
    """Run ``hook`` in every child, before the instances are reset (module globals: locks)."""
    _hooks.append(hook)


def track(instance: _Resettable) -> None:
    """Reset ``instance`` in every child for as long as it lives."""
    _instances.add(instance)


def leave_untouched(*objects: Any) -> None:
    """Keep the parent's ``objects`` referenced and unused for the life of this child."""
    _untouched.extend(o for o in objects if o is not None)


def _in_child() -> None:
    global _forks
    _forks += 1
    for hook in _hooks:
        hook()
    for instance in list(_instances):
        instance._after_fork_in_child()


if hasattr(os, "register_at_fork"):  # every POSIX system; Windows has no fork
    os.register_at_fork(after_in_child=_in_child)
