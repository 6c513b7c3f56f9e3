"""The decorators keep the decorated function's type for type checkers (issue 16): mypy, run on a
typed example of each, reveals the original signature and reports a call with a wrong argument."""

from __future__ import annotations

from pathlib import Path

import pytest
from mypy import api

EXAMPLE = """
from gcache import GCache, GCacheConfig, GCacheKey
from gcache.web.routes import cached_route

cache = GCache(GCacheConfig())


@cache.cached(key_type="user_id", id_arg="user_id")
async def get_user(user_id: str, page: int = 0) -> dict[str, int]:
    return {}


@cache.cached(key_type="user_id", id_arg="user_id")
def get_user_sync(user_id: str) -> list[str]:
    return []


class Users:
    @cache.cached(key_type="user_id", id_arg="user_id", use_case="Method")
    def name(self, user_id: int) -> str:
        return ""


@cache.invalidates("user_id", "user_id")
async def rename_user(user_id: str, name: str) -> None:
    return None


@cache.enable()
def handler(user_id: str) -> bool:
    return True


@cache.refresh()
async def recompute(user_id: str) -> float:
    return 0.0


@cached_route(cache, key_type="user_id", id_param="user_id")
async def route(user_id: str, q: str | None = None) -> dict[str, str]:
    return {}


reveal_type(get_user)
reveal_type(get_user_sync)
reveal_type(get_user.use_case)
reveal_type(get_user_sync.__wrapped__)
reveal_type(Users().name)  # bound: self is gone
reveal_type(Users().name.use_case)
reveal_type(rename_user)
reveal_type(handler)
reveal_type(recompute)
reveal_type(route)
key = GCacheKey("user_id", 1, "GetUser", [("page", 2)])  # typed_keys: ids of any type
reveal_type(key.id)
async def calls() -> None:
    await get_user(1)
    await rename_user("1", name=2)
    handler(user_id=None)
"""

REVEALED = (
    'Revealed type is "gcache.gcache.CachedFunction[[user_id: str, page: int =], '
    'typing.Coroutine[Any, Any, dict[str, int]]]"',
    'Revealed type is "gcache.gcache.CachedFunction[[user_id: str], list[str]]"',
    'Revealed type is "str"',
    'Revealed type is "def (user_id: str) -> list[str]"',
    'Revealed type is "gcache.gcache.CachedFunction[[user_id: int], str]"',
    'Revealed type is "def (user_id: str, name: str) -> typing.Coroutine[Any, Any, None]"',
    'Revealed type is "def (user_id: str) -> bool"',
    'Revealed type is "def (user_id: str) -> typing.Coroutine[Any, Any, float]"',
    'Revealed type is "def (user_id: str, q: str | None =) -> typing.Coroutine[Any, Any, dict[str, str]]"',
)


@pytest.mark.slow
def test_every_decorator_keeps_the_signature_and_a_wrong_argument_is_reported(tmp_path: Path) -> None:
    example = tmp_path / "example.py"
    example.write_text(EXAMPLE)
    out, err, status = api.run(
        [
            str(example),
            "--strict",
            "--no-incremental",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--no-error-summary",
        ]
    )
    assert status == 1, err  # the three wrong calls
    check(out)


def check(out: str) -> None:
    """mypy's report on EXAMPLE: each revealed type, and the three wrong calls alone."""
    out = out.replace("builtins.", "")  # mypy before 1.11 spelled builtin types in full
    for revealed in REVEALED:
        assert revealed in out, out
    key_id_line = EXAMPLE.splitlines().index("reveal_type(key.id)") + 1
    assert f':{key_id_line}: note: Revealed type is "str"' in out, out  # and GCacheKey took an int id
    errors = [line for line in out.splitlines() if ": error:" in line]
    assert len(errors) == 3, out
    assert 'Argument 1 to "__call__" of "CachedFunction" has incompatible type "int"; expected "str"' in out
    assert 'Argument "name" to "rename_user" has incompatible type "int"; expected "str"' in out
    assert 'Argument "user_id" to "handler" has incompatible type "None"; expected "str"' in out
