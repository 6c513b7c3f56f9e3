"""``@gcache.invalidates(...)``: a write function that invalidates the entities it changed.

The write path of a read-through cache is "change the source, then invalidate": written by hand
in every handler, it is the line people forget. Decorating the write function says it once. The
invalidation runs after the function returned without raising, so a failed write invalidates
nothing, and before the caller gets the result, so no read that starts afterwards is served the
old value (the guarantee of ``ainvalidate``).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from gcache.errors import ConfigError, KeyArgDoesNotExist

if TYPE_CHECKING:
    from gcache.management import Management

__all__ = ["invalidating"]

F = TypeVar("F", bound=Callable[..., Any])


def invalidating(
    cache: Management,
    func: F,
    key_type: str,
    id_arg: str | tuple[str, Callable[[Any], Any]] | None,
    ids: Callable[..., Iterable[Any]] | None,
    future_buffer_ms: int,
) -> F:
    """``func`` (sync or async, its signature kept), invalidating after each successful call.

    Raises:
        ConfigError: neither or both of ``id_arg`` and ``ids``; ``id_arg`` not a parameter
            (``KeyArgDoesNotExist``); a generator function.
    """
    if (id_arg is None) == (ids is None):
        raise ConfigError("invalidates(): give id_arg (one entity) or ids (several), not both or neither")
    if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
        raise ConfigError(
            f"invalidates(): {func.__qualname__} is a generator; decorate a function that writes"
        )
    if ids is not None and not callable(ids):
        raise ConfigError(f"invalidates(): ids must be callable with the function's arguments, got {ids!r}")
    signature = inspect.signature(func)
    targets = _targets(func, signature, id_arg, ids)

    if inspect.iscoroutinefunction(func):

        @functools.wraps(func)
        async def async_invalidating(*args: Any, **kwargs: Any) -> Any:
            result = await func(*args, **kwargs)
            for id in targets(args, kwargs):
                await cache.ainvalidate(key_type, id, future_buffer_ms)
            return result

        return async_invalidating  # type: ignore[return-value]

    @functools.wraps(func)
    def invalidating_call(*args: Any, **kwargs: Any) -> Any:
        result = func(*args, **kwargs)
        for id in targets(args, kwargs):
            cache.invalidate(key_type, id, future_buffer_ms)
        return result

    return invalidating_call  # type: ignore[return-value]


def _targets(
    func: Callable[..., Any],
    signature: inspect.Signature,
    id_arg: str | tuple[str, Callable[[Any], Any]] | None,
    ids: Callable[..., Iterable[Any]] | None,
) -> Callable[[tuple[Any, ...], dict[str, Any]], Iterable[Any]]:
    """What a call invalidates, from its arguments; ``id_arg`` checked against the signature now."""
    if ids is not None:
        return lambda args, kwargs: list(ids(*args, **kwargs))
    if isinstance(id_arg, str):
        name, extract = id_arg, None
    elif (
        isinstance(id_arg, tuple) and len(id_arg) == 2 and isinstance(id_arg[0], str) and callable(id_arg[1])
    ):
        name, extract = id_arg
    else:
        raise KeyArgDoesNotExist(
            f"invalidates(): id_arg must be a parameter name or (name, extractor), got {id_arg!r}"
        )
    if name not in signature.parameters:
        shown = ", ".join(signature.parameters)
        raise KeyArgDoesNotExist(
            f"{func.__qualname__}: id_arg {name!r} is not a parameter of {func.__qualname__}({shown})"
        )

    def one(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Iterable[Any]:
        bound = signature.bind(*args, **kwargs)  # the call succeeded, so its arguments bind
        bound.apply_defaults()
        value = bound.arguments[name]
        return (value if extract is None else extract(value),)

    return one
