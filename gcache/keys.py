"""The key of each call: the per-function key builder, and what it watches for.

:class:`KeyBuilder` binds a call's arguments to the decorated function's signature once per
call and renders the id and the argument pairs; :class:`KeyPartWatch` tells a key part that
changes on every call. How keys are rendered for storage is :mod:`gcache.urns`'s;
:class:`GCacheKey`, what config providers receive, is :mod:`gcache.config`'s (re-exported here).
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from gcache.config import GCacheKey
from gcache.errors import FuncArgDoesNotExist, KeyArgDoesNotExist
from gcache.urns import typed_part

__all__ = ["ArgumentsDoNotBind", "GCacheKey", "KeyBuilder", "KeyPartWatch"]


_EMPTY = inspect.Parameter.empty
_NO_LIMIT = sys.maxsize


class ArgumentsDoNotBind(TypeError):
    """The call's arguments do not bind to the function's signature: the function itself would
    raise TypeError, so the call must not be answered from the cache (the wrapper calls the
    function, which raises its own error)."""


class KeyBuilder:
    """Turns a call's arguments into ``(id, args)``; compiled once per decorated function.

    The signature is inspected here, at decoration, so a call costs a few index lookups instead
    of ``inspect.signature().bind``. Names given in ``id_arg``, ``arg_adapters`` and
    ``ignore_args`` are checked against the signature now, with an error that lists the
    parameters.
    """

    __slots__ = (
        "_by_keyword",
        "_by_position",
        "_extra_adapters",
        "_extra_renamed",
        "_extra_skip",
        "_fields",
        "_id_extract",
        "_id_field",
        "_id_only",
        "_id_position",
        "_max_args",
        "_min_args",
        "_n_positional",
        "_required",
        "_var_keyword",
        "_var_positional",
        "part",
    )

    def __init__(
        self,
        func: Callable[..., Any],
        id_arg: str | tuple[str, Callable[[Any], Any]],
        arg_adapters: Mapping[str, Callable[[Any], Any]] | None = None,
        ignore_args: Sequence[str] | None = None,
        typed: bool = False,
    ) -> None:
        # How an id or argument value becomes a key part: str(), or with its type (typed_keys)
        self.part: Callable[[Any], str] = typed_part if typed else str
        adapters = dict(arg_adapters or {})
        ignored = set(ignore_args or ())
        name = getattr(func, "__qualname__", repr(func))
        if isinstance(id_arg, str):
            id_name, id_extract = id_arg, None
        elif (
            isinstance(id_arg, tuple)
            and len(id_arg) == 2
            and isinstance(id_arg[0], str)
            and callable(id_arg[1])
        ):
            id_name, id_extract = id_arg
        else:
            raise KeyArgDoesNotExist(
                f"{name}: id_arg must be a parameter name or (name, extractor), got {id_arg!r}"
            )

        params = list(inspect.signature(func).parameters.values())
        shown = ", ".join(p.name for p in params)
        receiver = None
        if (
            params
            and params[0].name in ("self", "cls")
            and params[0].kind
            in (
                inspect.Parameter.POSITIONAL_ONLY,
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
            )
        ):
            receiver = params[0].name
        names = [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        var_positional = next((p.name for p in params if p.kind is p.VAR_POSITIONAL), None)
        var_keyword = next((p.name for p in params if p.kind is p.VAR_KEYWORD), None)

        def check(option: str, arg: str) -> None:
            if arg == receiver or (arg not in names and arg != var_positional and var_keyword is None):
                error = KeyArgDoesNotExist if option == "id_arg" else FuncArgDoesNotExist
                raise error(f"{name}: {option} {arg!r} is not a parameter of {name}({shown})")

        check("id_arg", id_name)
        for arg in adapters:
            check("arg_adapters name", arg)
        for arg in ignored:
            check("ignore_args name", arg)
        if id_name in ignored:
            raise FuncArgDoesNotExist(f"{name}: id_arg {id_name!r} is also in ignore_args")
        if receiver is not None:
            ignored.add(receiver)

        positions: dict[str, int] = {}
        positional_only: set[str] = set()
        defaults: dict[str, Any] = {}
        for p in params:
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
                positions[p.name] = len(positions)
            if p.kind is p.POSITIONAL_ONLY:
                positional_only.add(p.name)
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                defaults[p.name] = p.default

        def make_field(arg: str) -> _Field:
            return (
                arg,
                positions.get(arg),
                defaults.get(arg, _EMPTY),
                adapters.get(arg),
                arg not in positional_only,
            )

        keyed = sorted(n for n in names if n not in ignored and (n != id_name or n in adapters))
        self._fields = tuple(make_field(n) for n in keyed)
        self._id_field = make_field(id_name)
        self._id_position = -1 if self._id_field[1] is None else self._id_field[1]
        self._id_extract = id_extract
        self._n_positional = len(positions)
        self._var_positional = var_positional if var_positional not in ignored else None
        self._var_keyword = var_keyword
        # Extra keyword arguments (**kwargs) are keyed by name, except those that bind a declared
        # parameter; a positional-only name passed by keyword lands in **kwargs and is keyed.
        skip = {n for n in names if n not in positional_only} | ignored
        if id_name not in adapters and id_name not in positional_only:
            skip.add(id_name)
        self._extra_skip = frozenset(skip)
        self._extra_adapters = adapters
        # An extra keyword named like a positional-only parameter or the *args parameter (both
        # keyed under their own names) would render the same pair: it is keyed as "**name", as
        # is any extra keyword whose name starts with "*", so every call keeps its own key.
        self._extra_renamed = frozenset(positional_only | ({var_positional} if var_positional else set()))
        # What binding checks, precompiled: how many positional arguments the function takes, which
        # names it takes by keyword, which parameters must be given. A call without keywords
        # binds when its count is in [_min_args, _max_args] (_min_args is out of reach when a
        # keyword-only parameter is required).
        self._by_keyword = {  # name -> its position (-1: keyword-only)
            p.name: positions.get(p.name, -1)
            for p in params
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        }
        self._required = tuple(
            (p.name, positions.get(p.name, -1))
            for p in params
            if p.default is _EMPTY and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        )
        required_positional = sum(1 for _n, position in self._required if position >= 0)
        required_keyword_only = len(self._required) > required_positional
        self._min_args = _NO_LIMIT if required_keyword_only else required_positional
        self._max_args = _NO_LIMIT if var_positional is not None else len(positions)
        # The fewest positional arguments that bind and carry the id (out of reach for an id
        # passed only by keyword): one comparison on the common call.
        id_position = self._id_position
        self._by_position = max(self._min_args, id_position + 1) if id_position >= 0 else _NO_LIMIT + 1
        # The key is the id alone (extra keywords, when there are none, add nothing): most cached
        # functions, whose calls by position then skip the pairs.
        self._id_only = not self._fields and self._var_positional is None and id_extract is None

    def build(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, tuple[tuple[str, str], ...]]:
        """The id and the sorted (name, value) pairs for one call.

        Raises:
            ArgumentsDoNotBind: the function would reject these arguments (it raises TypeError).
        """
        n = len(args)
        if self._id_only and not kwargs and self._by_position <= n <= self._max_args:
            return self.part(args[self._id_position]), ()  # binds, the id alone, by position: most calls
        raw_id, pairs = self._bind(args, kwargs)
        return self.part(raw_id), pairs

    def batch(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, tuple[tuple[str, str], ...]]:
        """A ``cached_many`` call's ids (the id argument as given: an iterable, not rendered) and
        the pairs of its other arguments, which every id's key shares.

        Raises:
            ArgumentsDoNotBind: as :meth:`build`.
        """
        n = len(args)
        if self._id_only and not kwargs and self._by_position <= n <= self._max_args:
            return args[self._id_position], ()
        return self._bind(args, kwargs)

    def _bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, tuple[tuple[str, str], ...]]:
        """:meth:`build`'s id as given (extracted by ``id_extract``, not rendered) and its pairs."""
        n = len(args)
        part = self.part
        if not kwargs and self._by_position <= n <= self._max_args:
            raw_id = args[self._id_position]  # binds, and the id came by position
        elif kwargs:
            self._check_keywords(args, kwargs)
            raw_id = _value(self._id_field, args, kwargs)
        elif not self._min_args <= n <= self._max_args:
            self._check_keywords(args, kwargs)  # raises, naming what is wrong
            raise ArgumentsDoNotBind(f"{n} positional arguments")
        else:  # binds, the id left to its default
            raw_id = _value(self._id_field, args, kwargs)
        if self._id_extract is not None:
            raw_id = self._id_extract(raw_id)
        pairs = []
        for fld in self._fields:
            v = _value(fld, args, kwargs)
            adapter = fld[3]
            pairs.append((fld[0], part(v if adapter is None else adapter(v))))
        if self._var_positional is None and self._var_keyword is None:
            return raw_id, tuple(pairs)
        if self._var_positional is not None:
            pairs.append((self._var_positional, part(args[self._n_positional :])))
        if self._var_keyword is not None and kwargs:
            skip, adapt, renamed = self._extra_skip, self._extra_adapters, self._extra_renamed
            for name, v in kwargs.items():
                if name not in skip:
                    key = "**" + name if name in renamed or name.startswith("*") else name
                    pairs.append((key, part(adapt[name](v) if name in adapt else v)))
        pairs.sort()
        return raw_id, tuple(pairs)

    def with_ids(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], ids: list[Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The call's arguments with ``ids`` in place of its id argument (the ids still missing)."""
        name, position, _default, _adapter, by_keyword = self._id_field
        if by_keyword and name in kwargs:
            return args, {**kwargs, name: ids}
        if position is not None and position < len(args):
            return (*args[:position], ids, *args[position + 1 :]), kwargs
        return args, {**kwargs, name: ids}

    def _check_keywords(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Raise unless ``args`` and ``kwargs`` bind as the interpreter would bind them."""
        n = len(args)
        if n > self._max_args:
            raise ArgumentsDoNotBind(f"{n} positional arguments, {self._max_args} at most")
        by_keyword = self._by_keyword
        for name in kwargs:
            position = by_keyword.get(name)
            if position is None:
                if self._var_keyword is None:
                    raise ArgumentsDoNotBind(f"unexpected keyword argument {name!r}")
            elif 0 <= position < n:
                raise ArgumentsDoNotBind(f"multiple values for argument {name!r}")
        for name, position in self._required:
            if position >= 0 and position < n:
                continue
            if name not in kwargs or name not in by_keyword:
                raise ArgumentsDoNotBind(f"missing required argument {name!r}")


_Field = tuple[str, "int | None", Any, "Callable[[Any], Any] | None", bool]


def _value(fld: _Field, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    name, position, default, _adapter, by_keyword = fld
    if by_keyword and kwargs and name in kwargs:
        return kwargs[name]
    if position is not None and position < len(args):
        return args[position]
    if default is _EMPTY:
        raise LookupError(name)
    return default


_ADDRESS = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")  # object.__repr__: a new value per object
_WINDOW = 64


class KeyPartWatch:
    """Finds, from a use case's misses, key parts that make every call a miss.

    A FastAPI ``Request``, a ``Depends`` value or any object without ``__str__`` renders as
    ``<... object at 0x...>``: a new key per object, so no call ever hits and LOCAL fills with one
    entry per request. Seen at once, in the id or any argument. A value that only changes on
    every call (a timestamp, a request id) is seen over a window of misses: the argument took a
    new value on each of them while the rest of the key repeated on at least half.

    Only misses that run the function are shown to it, so a hit pays nothing.
    """

    __slots__ = ("_recent", "_told")

    def __init__(self) -> None:
        self._recent: list[tuple[str, tuple[tuple[str, str], ...]]] = []
        self._told: set[str] = set()

    def suspects(self, id: str, pairs: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
        """(part, why) for each key part newly found to defeat caching: ``part`` is ``id`` or an
        argument's name."""
        found = []
        for name, value in (("id", id), *pairs):
            if " at 0x" in value and name not in self._told:
                match = _ADDRESS.search(value)
                if match is not None:
                    found.append((name, f"renders as {match.group()!r}, a new value for every object"))
        recent = self._recent
        recent.append((id, pairs))
        if len(recent) >= _WINDOW:
            self._recent = []
            found += self._changing(recent)
        self._told.update(part for part, _why in found)
        return found

    def _changing(self, recent: list[tuple[str, tuple[tuple[str, str], ...]]]) -> list[tuple[str, str]]:
        found = []
        names = {name for _id, pairs in recent for name, _value in pairs} - self._told
        for name in sorted(names):
            values = [dict(pairs).get(name) for _id, pairs in recent]
            if None in values or len(set(values)) < len(recent):
                continue
            rest = {(id, tuple(p for p in pairs if p[0] != name)) for id, pairs in recent}
            if len(recent) - len(rest) >= len(recent) // 2:
                found.append(
                    (
                        name,
                        f"took a new value on each of the last {len(recent)} misses while the rest "
                        "of the key repeated",
                    )
                )
        return found
