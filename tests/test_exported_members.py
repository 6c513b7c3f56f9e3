"""The public surface: ``__all__`` of the package and of every module, and the README's import line."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from pathlib import Path
from types import ModuleType

import pytest

import gcache

PACKAGE_DIR = Path(gcache.__file__).parent
README = Path(__file__).resolve().parent.parent / "README.md"
PUBLIC_API = (
    "GCache",
    "GCacheConfig",
    "GCacheKeyConfig",
    "GCacheKey",
    "CacheLayer",
    "RedisConfig",
    "Serializer",
)
# Every module, subpackages' included ("readthrough.decisions"); a package is its __init__.py.
MODULES = sorted(
    info.name.removeprefix("gcache.") for info in pkgutil.walk_packages(gcache.__path__, prefix="gcache.")
)


def _path(module: str) -> Path:
    path = PACKAGE_DIR.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _import(name: str) -> ModuleType:
    return importlib.import_module(f"gcache.{name}")


def _declared_all(path: Path) -> list[str] | None:
    """The literal ``__all__`` of a module's source, or None when it has none."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        targets: list[ast.expr] = []
        value: ast.expr | None = None
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign):
            targets, value = [node.target], node.value
        if value is not None and any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            return list(ast.literal_eval(value))
    return None


def test_package_all_is_sorted() -> None:
    assert list(gcache.__all__) == sorted(gcache.__all__)


def test_package_all_names_exist_and_are_unique() -> None:
    assert len(set(gcache.__all__)) == len(gcache.__all__)
    missing = [name for name in gcache.__all__ if not hasattr(gcache, name)]
    assert missing == []


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from gcache import *", namespace)
    assert sorted(k for k in namespace if k != "__builtins__") == sorted(gcache.__all__)


@pytest.mark.parametrize("name", PUBLIC_API)
def test_public_api_name_importable_from_gcache(name: str) -> None:
    assert name in gcache.__all__
    assert getattr(gcache, name) is not None


def test_package_has_modules_to_check() -> None:
    assert {"config", "errors", "keys", "local"} <= set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_module_declares_all(module: str) -> None:
    declared = _declared_all(_path(module))
    assert declared is not None, f"{_path(module)} has no __all__"
    assert len(set(declared)) == len(declared)


@pytest.mark.parametrize("module", [m for m in MODULES if m != "__main__"])
def test_module_all_names_exist(module: str) -> None:
    mod = _import(module)
    names = getattr(mod, "__all__", None)
    assert names is not None, f"gcache.{module} has no __all__"
    missing = [name for name in names if not hasattr(mod, name)]
    assert missing == []


def test_main_module_all_names_are_defined() -> None:
    path = PACKAGE_DIR / "__main__.py"
    if not path.exists():
        pytest.skip("gcache/__main__.py does not exist yet")
    # Checked from the source: importing __main__ could start the command line.
    tree = ast.parse(path.read_text(encoding="utf-8"))
    defined: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, ast.Assign):
            defined.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            defined.add(node.target.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            defined.update((a.asname or a.name).split(".")[0] for a in node.names)
    declared = _declared_all(path)
    assert declared is not None
    assert [name for name in declared if name not in defined] == []


def _readme_import_names() -> list[str]:
    """Every name the README imports from ``gcache`` (``from gcache import a, b`` or ``(...)``)."""
    text = README.read_text(encoding="utf-8")
    names: list[str] = []
    for found in re.finditer(r"^from gcache import (\(([^)]*)\)|[^\n(]+)", text, re.M):
        listed = found.group(2) if found.group(2) is not None else found.group(1)
        for part in listed.replace("\n", ",").split(","):
            name = part.split("#")[0].split(" as ")[0].strip()
            if name:
                names.append(name)
    return names


def test_readme_import_lines_name_exported_members_and_the_public_api_is_shown() -> None:
    names = _readme_import_names()
    assert names, "the README imports nothing from gcache"
    assert [name for name in names if name not in gcache.__all__] == []
    namespace: dict[str, object] = {}
    exec(f"from gcache import ({', '.join(sorted(set(names)))})", namespace)
    assert all(name in namespace for name in names)
    text = README.read_text(encoding="utf-8")
    assert [name for name in PUBLIC_API if name not in names and f"`{name}`" not in text] == []
