"""The same function decorated again on the same GCache (a notebook cell run twice, a module
``importlib.reload``) replaces its registration instead of raising
``UseCaseIsAlreadyRegisteredError``; another function under a name in use is still refused.

"The same function" is the same module and qualified name; the new registration keeps the use
case's entries (its name, hence its keys, are the same).
"""

from __future__ import annotations

import importlib
import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import pytest

from gcache import GCache, GCacheKeyConfig
from gcache.errors import UseCaseIsAlreadyRegisteredError
from tests.test_gcache import ENABLED, Maker, call

SOURCE = """
import {holder}
cache = {holder}.cache
calls = []


@cache.cached(key_type="user_id", id_arg="user_id", use_case={use_case!r}, default_config={holder}.CONFIG)
{kw}def get_user(user_id):
    calls.append(user_id)
    return "{version} " + user_id


@cache.cached_many(
    key_type="user_id", ids_arg="user_ids", use_case={many_use_case!r}, default_config={holder}.CONFIG
)
{kw}def get_users(user_ids):
    calls.extend(user_ids)
    return {{uid: "{version} " + uid for uid in user_ids}}
"""


@pytest.fixture
def module_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # each reload reads the source again
    return tmp_path


def load(
    module_dir: Path,
    cache: GCache,
    is_async: bool,
    version: str,
    *,
    shared: bool,
    reload: types.ModuleType | None,
) -> types.ModuleType:
    """Write the module (its functions answer ``version``) and import it, or reload ``reload``."""
    stem = module_dir.name.replace("-", "_")
    holder = types.ModuleType(f"holder_{stem}")
    holder.cache = cache  # type: ignore[attr-defined]
    holder.CONFIG = ENABLED  # type: ignore[attr-defined]
    sys.modules[holder.__name__] = holder
    name = f"users_{stem}"
    use_case = "Users"
    source = SOURCE.format(
        holder=holder.__name__,
        use_case=use_case,
        many_use_case=use_case if shared else "UsersMany",
        version=version,
        kw="async " if is_async else "",
    )
    (module_dir / f"{name}.py").write_text(textwrap.dedent(source))
    importlib.invalidate_caches()
    if reload is not None:
        return importlib.reload(reload)
    return importlib.import_module(name)


@pytest.mark.parametrize("shared", [False, True], ids=["own-use-cases", "cached-and-many-share-one"])
async def test_reloading_a_module_replaces_its_registrations(
    is_async: bool, shared: bool, make_cache: Maker, module_dir: Path
) -> None:
    cache = make_cache()
    first = load(module_dir, cache, is_async, "v1", shared=shared, reload=None)
    try:
        with cache.enable():
            assert await call(first.get_user, "1") == "v1 1"
            assert await call(first.get_users, ["2"]) == {"2": "v1 2"}
        second = load(module_dir, cache, is_async, "v2", shared=shared, reload=first)  # no error
        assert second.calls == []
        with cache.enable():
            # the same use cases: their entries are kept, and new ids go to the new functions
            assert await call(second.get_user, "1") == "v1 1"
            assert await call(second.get_users, ["2", "3"]) == {"2": "v1 2", "3": "v2 3"}
            assert await call(second.get_user, "4") == "v2 4"
            assert await call(second.get_user, "4") == "v2 4"
        assert second.calls == ["3", "4"]
        load(module_dir, cache, is_async, "v3", shared=shared, reload=second)  # and again
    finally:
        sys.modules.pop(first.__name__, None)


async def test_a_cell_run_twice_replaces_the_registration_and_another_function_is_refused(
    is_async: bool, make_cache: Maker
) -> None:
    """A notebook cell: the same source run twice in ``__main__``."""
    cache = make_cache()
    cell = textwrap.dedent(
        f"""
        @cache.cached(key_type="user_id", id_arg="user_id", use_case="Cell", default_config=CONFIG)
        {"async " if is_async else ""}def get_user(user_id):
            calls.append(user_id)
            return version + user_id
        """
    )
    namespace: dict[str, Any] = {"__name__": "__main__", "cache": cache, "CONFIG": ENABLED, "calls": []}
    namespace["version"] = "v1 "
    exec(cell, namespace)
    with cache.enable():
        assert await call(namespace["get_user"], "1") == "v1 1"
    namespace["version"] = "v2 "
    exec(cell, namespace)  # run again: replaced
    with cache.enable():
        assert await call(namespace["get_user"], "1") == "v1 1"  # the use case's entry
        assert await call(namespace["get_user"], "2") == "v2 2"
    assert namespace["calls"] == ["1", "2"]

    other = cell.replace("def get_user", "def get_another_user")
    with pytest.raises(UseCaseIsAlreadyRegisteredError, match=r"'Cell' of __main__\.get_another_user"):
        exec(other, namespace)


def test_a_function_redecorated_on_another_gcache_is_its_own_registration(make_cache: Maker) -> None:
    first, second = make_cache(start_bus=False), make_cache(start_bus=False)

    def get(user_id: str) -> str:
        return user_id

    config = GCacheKeyConfig.enabled(60)
    for cache in (first, second, first):
        cache.cached(key_type="user_id", id_arg="user_id", use_case="Per", default_config=config)(get)
