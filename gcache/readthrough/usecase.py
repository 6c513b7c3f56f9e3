"""A use case: the decorated function's read-through, sync or async like the function."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import partial
from typing import Any

from gcache.keys import ArgumentsDoNotBind, KeyBuilder
from gcache.readthrough._async import AsyncDriver
from gcache.readthrough._sync import SyncDriver
from gcache.urns import ID_ESCAPES, original_value_key, value_key

__all__ = ["UseCase"]

_NO_ESCAPES: dict[int, str] = {}


class UseCase(AsyncDriver, SyncDriver):
    """One use case, settled when it is decorated (or first used by direct key access).

    Its parts, one module each: the state and decisions (:mod:`~gcache.readthrough.decisions`),
    the join rules (:mod:`~gcache.readthrough.sharing`), what it tells
    (:mod:`~gcache.readthrough.reporting`), and the two drivers, async and generated sync.
    """

    def wrap(self, func: Callable[..., Any], keys: KeyBuilder | None = None) -> Callable[..., Any]:
        """The decorated function, sync or async like ``func``.

        It builds the key itself and hands over to the driver's read-through: no method call in
        between, which on a hit would cost as much as the key (a coroutine, for async).
        """
        self.function_name = getattr(func, "__qualname__", self.use_case)
        keys = keys or self.keys  # another function's, for a cached sharing a cached_many's use case
        enabled, disabled_context = self.rt.enabled, self.m.disabled_context
        assert keys is not None
        build, entity_head, key_tail, use_case = keys.build, self._entity_head, self._key_tail, self.use_case
        # The key grammar: gcache's, or the original's (legacy_compat: unescaped, and unbraced when
        # untracked, so every key goes through render)
        id_escapes, render, unbraced = ID_ESCAPES, value_key, False
        if self.rt.legacy_compat:
            id_escapes, unbraced = _NO_ESCAPES, not self.tracked
            render = partial(original_value_key, tracked=self.tracked)
        if self.rt.hasher is not None:  # long ids and arguments keyed by their hash
            build = self.rt.hasher.key(build)
        key_error, uc = self.key_error, self

        if inspect.iscoroutinefunction(func):
            aread_through = self.aread_through

            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                flag = enabled.get()
                if not flag:
                    disabled_context.inc()
                    if uc.tell_outside:  # GCacheConfig.tell_mistakes, not told yet
                        uc.called_outside_enable()
                    return await func(*args, **kwargs)
                try:
                    id, pairs = build(args, kwargs)
                    # urns.entity_key, its head built once and escape_id inline
                    plain = "%" not in id and "{" not in id and "}" not in id and ":" not in id
                    entity = entity_head + (id if plain else id.translate(id_escapes)) + "}"
                    urn = render(entity, pairs, use_case) if pairs or unbraced else entity + key_tail
                except ArgumentsDoNotBind:  # the function's own TypeError, never a cached value
                    return await func(*args, **kwargs)
                except Exception as exc:
                    key_error(exc)
                    return await func(*args, **kwargs)
                if flag is True:
                    return await aread_through(urn, entity, id, pairs, func, args, kwargs)
                return await aread_through(urn, entity, id, pairs, func, args, kwargs, refresh=True)

            return async_wrapper

        read_through = self.read_through

        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            flag = enabled.get()
            if not flag:
                disabled_context.inc()
                if uc.tell_outside:
                    uc.called_outside_enable()
                return func(*args, **kwargs)
            try:
                id, pairs = build(args, kwargs)
                # urns.entity_key, its head built once and escape_id inline
                plain = "%" not in id and "{" not in id and "}" not in id and ":" not in id
                entity = entity_head + (id if plain else id.translate(id_escapes)) + "}"
                urn = render(entity, pairs, use_case) if pairs or unbraced else entity + key_tail
            except ArgumentsDoNotBind:  # the function's own TypeError, never a cached value
                return func(*args, **kwargs)
            except Exception as exc:
                key_error(exc)
                return func(*args, **kwargs)
            if flag is True:
                return read_through(urn, entity, id, pairs, func, args, kwargs)
            return read_through(urn, entity, id, pairs, func, args, kwargs, refresh=True)

        return sync_wrapper

    def wrap_many(self, func: Callable[..., Any], keys: KeyBuilder) -> Callable[..., Any]:
        """The function decorated by ``cached_many``: its id argument an iterable of ids, its
        result a mapping of id to value (see :meth:`AsyncDriver.aread_many`).

        Inside ``refresh()`` the function runs for every id and its values replace the cached ones.
        """
        self.function_name = getattr(func, "__qualname__", self.use_case)
        enabled, disabled_context = self.rt.enabled, self.m.disabled_context
        hasher, key_error, uc, part = self.rt.hasher, self.key_error, self, keys.part

        def prepared(
            args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> tuple[list[str], dict[str, Any], tuple[tuple[str, str], ...], tuple[Any, ...], dict[str, Any]]:
            raw_ids, pairs = keys.batch(args, kwargs)
            originals: dict[str, Any] = {}
            for raw in raw_ids:  # distinct by key, the first of each kept, in the caller's order
                originals.setdefault(part(raw) if hasher is None else hasher(part(raw)), raw)
            if hasher is not None:
                pairs = tuple((name, hasher(value)) for name, value in pairs)
            # an iterator is spent: the function gets the ids as a list
            args, kwargs = keys.with_ids(args, kwargs, list(originals.values()))
            return list(originals), originals, pairs, args, kwargs

        if inspect.iscoroutinefunction(func):
            aread_many = self.aread_many

            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                flag = enabled.get()  # True: on; off; or refresh()
                if not flag:
                    disabled_context.inc()
                    if uc.tell_outside:
                        uc.called_outside_enable()
                    return await func(*args, **kwargs)
                try:
                    ids, originals, pairs, args, kwargs = prepared(args, kwargs)
                except ArgumentsDoNotBind:
                    return await func(*args, **kwargs)
                except Exception as exc:
                    key_error(exc)
                    return await func(*args, **kwargs)
                if not ids:
                    return await func(*args, **kwargs)
                return await aread_many(
                    ids, originals, pairs, func, args, kwargs, keys.with_ids, flag is not True
                )

            return async_wrapper

        read_many = self.read_many

        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            flag = enabled.get()
            if not flag:
                disabled_context.inc()
                if uc.tell_outside:
                    uc.called_outside_enable()
                return func(*args, **kwargs)
            try:
                ids, originals, pairs, args, kwargs = prepared(args, kwargs)
            except ArgumentsDoNotBind:
                return func(*args, **kwargs)
            except Exception as exc:
                key_error(exc)
                return func(*args, **kwargs)
            if not ids:
                return func(*args, **kwargs)
            return read_many(ids, originals, pairs, func, args, kwargs, keys.with_ids, flag is not True)

        return sync_wrapper
