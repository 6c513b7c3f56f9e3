"""The KeyBuilder: a call's arguments bound to the function's signature, rendered as a key."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gcache.errors import IdArgError
from gcache.keys import ArgumentsDoNotBind, KeyBuilder

# ---------------------------------------------------------------------------------------------
# KeyBuilder
# ---------------------------------------------------------------------------------------------


def _f(user_id: str, region: str, limit: int = 10, *, verbose: bool, page: int = 1) -> None:
    return None


def test_builder_reads_positional_arguments_and_defaults() -> None:
    kb = KeyBuilder(_f, "user_id")
    assert kb.build(("u1", "eu"), {"verbose": True}) == (
        "u1",
        (("limit", "10"), ("page", "1"), ("region", "eu"), ("verbose", "True")),
    )
    assert kb.build(("u1", "eu", 50), {"verbose": False, "page": 3}) == (
        "u1",
        (("limit", "50"), ("page", "3"), ("region", "eu"), ("verbose", "False")),
    )


def _id_only(user_id: Any) -> None:
    return None


def _id_and_extra_keywords(user_id: Any, **options: Any) -> None:
    return None


def _id_and_rest(user_id: Any, *rest: Any) -> None:
    return None


def _receiver_and_id(self: Any, user_id: Any) -> None:
    return None


_SHAPES: list[tuple[Callable[..., None], dict[str, Any], int]] = [
    (_id_only, {}, 0),  # (function, KeyBuilder options, leading positional arguments before the id)
    (_id_and_extra_keywords, {}, 0),
    (_id_and_rest, {}, 0),
    (_id_and_rest, {"ignore_args": ["rest"]}, 0),
    (_receiver_and_id, {}, 1),
    (_id_only, {"id_arg": ("user_id", lambda v: f"x{v}")}, 0),
    (_id_only, {"arg_adapters": {"user_id": lambda v: f"a{v}"}}, 0),
]


def _reference_key(
    func: Callable[..., None], options: dict[str, Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The key by ``inspect.signature().bind``, the way the original library builds it."""
    id_arg = options.get("id_arg", "user_id")
    id_name, extract = (id_arg, None) if isinstance(id_arg, str) else id_arg
    adapters, ignored = options.get("arg_adapters", {}), {*options.get("ignore_args", ()), "self"}
    bound = inspect.signature(func).bind(*args, **kwargs)
    bound.apply_defaults()
    raw_id = bound.arguments[id_name]
    pairs = []
    for name, value in bound.arguments.items():
        if name in ignored or (name == id_name and name not in adapters):
            continue
        if name == "options":
            pairs += [(k, str(v)) for k, v in value.items()]
        elif name == "rest":
            pairs.append((name, str(value)))
        else:
            pairs.append((name, str(adapters[name](value) if name in adapters else value)))
    return str(raw_id if extract is None else extract(raw_id)), tuple(sorted(pairs))


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(_SHAPES),
    st.one_of(st.integers(), st.text(max_size=5)),
    st.booleans(),
    st.lists(st.integers(0, 9), max_size=2),
    st.dictionaries(st.sampled_from(["a", "b", "zz"]), st.integers(0, 9), max_size=2),
)
def test_builder_keys_every_call_form_as_signature_binding_does(
    shape: tuple[Callable[..., None], dict[str, Any], int],
    user_id: Any,
    by_keyword: bool,
    rest: list[int],
    extra: dict[str, int],
) -> None:
    """Positional or keyword id, extra positionals and keywords where the function takes them."""
    func, options, leading = shape
    args: tuple[Any, ...] = ("receiver",) * leading
    kwargs: dict[str, Any] = {}
    if by_keyword:
        kwargs["user_id"] = user_id
    else:
        args += (user_id,)
        if func is _id_and_rest:
            args += tuple(rest)
    if func is _id_and_extra_keywords:
        kwargs.update(extra)
    builder = KeyBuilder(
        func, options.get("id_arg", "user_id"), options.get("arg_adapters"), options.get("ignore_args")
    )
    assert builder.build(args, kwargs) == _reference_key(func, options, args, kwargs)


def test_builder_reads_keyword_arguments() -> None:
    kb = KeyBuilder(_f, "user_id")
    built = kb.build((), {"page": 2, "verbose": True, "limit": 5, "region": "us", "user_id": "u9"})
    assert built == ("u9", (("limit", "5"), ("page", "2"), ("region", "us"), ("verbose", "True")))


def test_builder_same_key_for_positional_and_keyword_calls() -> None:
    kb = KeyBuilder(_f, "user_id")
    assert kb.build(("u1", "eu", 10), {"verbose": True}) == kb.build(
        (), {"user_id": "u1", "region": "eu", "verbose": True}
    )


def test_builder_reads_positional_only_arguments() -> None:
    def f(user_id: str, x: int, /, y: int) -> None:
        return None

    kb = KeyBuilder(f, "user_id")
    assert kb.build(("u", 1, 2), {}) == ("u", (("x", "1"), ("y", "2")))
    assert kb.build(("u", 1), {"y": 3}) == ("u", (("x", "1"), ("y", "3")))


def test_builder_includes_var_positional_arguments() -> None:
    def f(user_id: str, *rest: int) -> None:
        return None

    kb = KeyBuilder(f, "user_id")
    assert kb.build(("u", 1, 2), {}) == ("u", (("rest", "(1, 2)"),))
    assert kb.build(("u",), {}) == ("u", (("rest", "()"),))
    assert kb.build(("u", 1, 2), {}) != kb.build(("u", 2, 1), {})


def test_builder_includes_extra_kwargs_sorted() -> None:
    def f(user_id: str, a: int, **extra: Any) -> None:
        return None

    kb = KeyBuilder(f, "user_id")
    assert kb.build(("u", 1), {"zeta": 26, "beta": 2}) == (
        "u",
        (("a", "1"), ("beta", "2"), ("zeta", "26")),
    )
    assert kb.build(("u", 1), {}) == ("u", (("a", "1"),))


def test_builder_takes_id_from_kwargs_when_only_var_keyword() -> None:
    def f(**kwargs: Any) -> None:
        return None

    kb = KeyBuilder(f, "user_id")
    assert kb.build((), {"user_id": "u1", "b": 2, "a": 1}) == ("u1", (("a", "1"), ("b", "2")))


def test_builder_leaves_out_self_for_methods() -> None:
    class Repo:
        def get(self, user_id: str, region: str) -> None:
            return None

    kb = KeyBuilder(Repo.get, "user_id")
    assert kb.build((Repo(), "u", "eu"), {}) == ("u", (("region", "eu"),))
    assert kb.build((Repo(), "u", "eu"), {}) == kb.build((Repo(), "u", "eu"), {})


def test_builder_leaves_out_cls_for_classmethods() -> None:
    def load(cls: type, user_id: str, region: str) -> None:
        return None

    kb = KeyBuilder(load, "user_id")
    assert kb.build((int, "u"), {"region": "eu"}) == ("u", (("region", "eu"),))


def test_builder_raises_when_id_arg_is_self() -> None:
    class Repo:
        def get(self, user_id: str) -> None:
            return None

    with pytest.raises(IdArgError, match="'self'"):
        KeyBuilder(Repo.get, "self")


@dataclass
class _User:
    id: int
    name: str


def test_builder_applies_id_extractor() -> None:
    def f(user: _User, region: str) -> None:
        return None

    kb = KeyBuilder(f, ("user", lambda u: u.id))
    assert kb.build((_User(42, "ann"), "eu"), {}) == ("42", (("region", "eu"),))
    assert kb.build((), {"user": _User(7, "bob"), "region": "us"}) == ("7", (("region", "us"),))


def test_builder_applies_arg_adapters() -> None:
    def f(user_id: str, user: _User, tags: list[str]) -> None:
        return None

    kb = KeyBuilder(f, "user_id", arg_adapters={"user": lambda u: u.name, "tags": lambda t: ",".join(t)})
    assert kb.build(("u1", _User(1, "ann"), ["x", "y"]), {}) == (
        "u1",
        (("tags", "x,y"), ("user", "ann")),
    )


def test_builder_includes_adapted_id_arg_among_args() -> None:
    def f(user_id: str, region: str) -> None:
        return None

    kb = KeyBuilder(f, "user_id", arg_adapters={"user_id": str.upper})
    assert kb.build(("abc", "eu"), {}) == ("abc", (("region", "eu"), ("user_id", "ABC")))


def test_builder_applies_adapter_to_extra_kwarg() -> None:
    # The name is accepted because of **extra; an accepted adapter must then be applied.
    def f(user_id: str, **extra: Any) -> None:
        return None

    kb = KeyBuilder(f, "user_id", arg_adapters={"user": lambda u: u.name})
    assert kb.build(("u1",), {"user": _User(1, "ann")}) == ("u1", (("user", "ann"),))


def test_builder_leaves_out_ignored_args() -> None:
    def f(user_id: str, region: str, trace: object, *rest: int, **extra: Any) -> None:
        return None

    kb = KeyBuilder(f, "user_id", ignore_args=["trace", "rest", "request_id"])
    assert kb.build(("u", "eu", object(), 1, 2), {"request_id": "r-1", "x": 1}) == (
        "u",
        (("region", "eu"), ("x", "1")),
    )


def test_builder_keeps_extra_kwarg_named_like_positional_only_parameter() -> None:
    # f("u", 1, x=2) and f("u", 1, x=3) are different calls: **extra receives x=2 / x=3.
    def f(user_id: str, x: int, /, **extra: Any) -> None:
        return None

    kb = KeyBuilder(f, "user_id")
    assert kb.build(("u", 1), {"x": 2}) != kb.build(("u", 1), {"x": 3})


def test_builder_refuses_a_call_missing_a_required_argument() -> None:
    kb = KeyBuilder(_f, "user_id")
    with pytest.raises(ArgumentsDoNotBind, match="region"):
        kb.build(("u1",), {"verbose": True})
    with pytest.raises(ArgumentsDoNotBind, match="verbose"):
        kb.build(("u1", "eu"), {})  # keyword-only and required
    with pytest.raises(ArgumentsDoNotBind, match="user_id"):
        kb.build((), {"region": "eu", "verbose": True})


def test_builder_refuses_unknown_duplicate_and_surplus_arguments() -> None:
    kb = KeyBuilder(_f, "user_id")
    with pytest.raises(ArgumentsDoNotBind, match="unexpected keyword argument 'pgae'"):
        kb.build(("u1", "eu"), {"verbose": True, "pgae": 2})
    with pytest.raises(ArgumentsDoNotBind, match="multiple values for argument 'region'"):
        kb.build(("u1", "eu"), {"verbose": True, "region": "us"})
    with pytest.raises(ArgumentsDoNotBind, match="4 positional arguments, 3 at most"):
        kb.build(("u1", "eu", 5, 6), {"verbose": True})
    with pytest.raises(ArgumentsDoNotBind, match="missing required argument 'db'"):
        KeyBuilder(_ignored_and_required, "user_id", ignore_args=["db"]).build(("u1",), {})


def _ignored_and_required(user_id: str, db: object) -> None:
    return None


def _positional_only(user_id: Any, /, page: int = 1) -> None:
    return None


def _keyword_only(user_id: Any, *, page: int, size: int = 10) -> None:
    return None


def _everything(a: Any, /, user_id: Any, b: int = 2, *rest: Any, c: int, d: int = 4, **extra: Any) -> None:
    return None


_BINDING_SHAPES = [
    _f,
    _id_only,
    _ignored_and_required,
    _positional_only,
    _keyword_only,
    _everything,
]


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from(_BINDING_SHAPES),
    st.lists(st.integers(0, 9), max_size=5),
    st.dictionaries(
        st.sampled_from(
            ["user_id", "a", "b", "c", "d", "region", "limit", "verbose", "page", "size", "db", "x"]
        ),
        st.integers(0, 9),
        max_size=4,
    ),
)
def test_builder_refuses_exactly_the_calls_the_function_would_reject(
    func: Callable[..., None], args: list[int], kwargs: dict[str, int]
) -> None:
    """Whatever the call form, ``build`` raises ArgumentsDoNotBind when, and only when, binding the
    arguments to the signature (as the interpreter does) raises TypeError."""
    try:
        inspect.signature(func).bind(*args, **kwargs)
        binds = True
    except TypeError:
        binds = False
    try:
        func(*args, **kwargs)
        runs = True
    except TypeError:
        runs = False
    assert binds == runs  # the reference agrees with the interpreter itself
    builder = KeyBuilder(func, "user_id")
    if binds:
        builder.build(tuple(args), dict(kwargs))
    else:
        with pytest.raises(ArgumentsDoNotBind):
            builder.build(tuple(args), dict(kwargs))


_PARAMS = ("user_id", "region", "limit", "verbose", "page")


@pytest.mark.parametrize(
    ("options", "bad_name"),
    [
        ({"id_arg": "usr_id"}, "usr_id"),
        ({"id_arg": ("account", lambda a: a)}, "account"),
        ({"id_arg": "user_id", "arg_adapters": {"regoin": str}}, "regoin"),
        ({"id_arg": "user_id", "ignore_args": ["pages"]}, "pages"),
    ],
)
def test_builder_raises_id_arg_error_naming_bad_name_and_parameters(
    options: dict[str, Any], bad_name: str
) -> None:
    with pytest.raises(IdArgError) as info:
        KeyBuilder(_f, **options)
    message = str(info.value)
    assert repr(bad_name) in message
    for param in _PARAMS:
        assert param in message


def test_builder_raises_when_id_arg_is_also_ignored() -> None:
    with pytest.raises(IdArgError, match="user_id"):
        KeyBuilder(_f, "user_id", ignore_args=["user_id"])


def test_builder_raises_when_id_arg_is_malformed() -> None:
    bad: Any = ("user_id", "not callable")
    with pytest.raises(IdArgError, match="id_arg"):
        KeyBuilder(_f, bad)


def test_builder_does_not_inspect_signature_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    kb = KeyBuilder(_f, "user_id", arg_adapters={"region": str.upper}, ignore_args=["page"])

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("inspect.signature called on the hot path")

    monkeypatch.setattr(inspect, "signature", forbidden)
    monkeypatch.setattr(inspect.Signature, "bind", forbidden)
    with pytest.raises(AssertionError):
        inspect.signature(_f)
    assert kb.build(("u1", "eu"), {"verbose": True}) == (
        "u1",
        (("limit", "10"), ("region", "EU"), ("verbose", "True")),
    )


def test_builder_calls_adapters_once_per_build() -> None:
    calls: list[object] = []

    def adapter(v: object) -> str:
        calls.append(v)
        return "x"

    adapters: dict[str, Callable[[Any], Any]] = {"region": adapter}
    kb = KeyBuilder(_f, "user_id", arg_adapters=adapters)
    kb.build(("u1", "eu"), {"verbose": True})
    assert calls == ["eu"]


# ---------------------------------------------------------------------------------------------
# Every parameter kind has its own place in the key
# ---------------------------------------------------------------------------------------------


def _every_kind(user_id: Any, a: Any, /, *rest: Any, **options: Any) -> None:
    return None


def test_an_extra_keyword_named_like_a_positional_only_parameter_has_its_own_key() -> None:
    kb = KeyBuilder(_every_kind, "user_id")
    first = kb.build(("u", 1), {"a": 2})
    second = kb.build(("u", 2), {"a": 1})  # the same two pairs, sorted, before the fix
    assert first != second
    assert first == ("u", (("**a", "2"), ("a", "1"), ("rest", "()")))


def test_an_extra_keyword_named_like_the_star_args_parameter_has_its_own_key() -> None:
    kb = KeyBuilder(_every_kind, "user_id")
    assert kb.build(("u", 0, 5), {"rest": 7}) != kb.build(("u", 0, 7), {"rest": 5})
    assert kb.build(("u", 0), {"rest": "(5,)"}) != kb.build(("u", 0, 5), {})


def test_an_extra_keyword_whose_name_starts_with_a_star_cannot_pose_as_a_renamed_one() -> None:
    kb = KeyBuilder(_every_kind, "user_id")
    assert kb.build(("u", 0), {"**a": 1}) != kb.build(("u", 1), {"a": 0})
    assert kb.build(("u", 0), {"*x": 1})[1][0] == ("***x", "1")


@settings(max_examples=400, deadline=None)
@given(
    st.tuples(
        st.integers(0, 2),
        st.lists(st.integers(0, 2), max_size=2),
        st.dictionaries(st.sampled_from(["a", "rest", "b", "*x", "**a"]), st.integers(0, 2), max_size=3),
    ),
    st.tuples(
        st.integers(0, 2),
        st.lists(st.integers(0, 2), max_size=2),
        st.dictionaries(st.sampled_from(["a", "rest", "b", "*x", "**a"]), st.integers(0, 2), max_size=3),
    ),
)
def test_two_calls_share_a_key_exactly_when_they_bind_the_same_arguments(
    one: tuple[int, list[int], dict[str, int]], other: tuple[int, list[int], dict[str, int]]
) -> None:
    """Positional-only, *args and **kwargs parameters, with extra keywords named like each."""
    kb = KeyBuilder(_every_kind, "user_id")

    def key(call: tuple[int, list[int], dict[str, int]]) -> tuple[str, tuple[tuple[str, str], ...]]:
        a, rest, options = call
        return kb.build(("u", a, *rest), dict(options))

    def bound(call: tuple[int, list[int], dict[str, int]]) -> dict[str, Any]:
        a, rest, options = call
        return dict(inspect.signature(_every_kind).bind("u", a, *rest, **options).arguments)

    assert (key(one) == key(other)) == (bound(one) == bound(other))
