"""An editable install (``pip install -e``, as the Makefile makes) keeps gcache's types visible to
mypy and pyright (issue 19): setuptools' default editable install is an import hook that only Python runs,
so mypy found no gcache and every decorated function was ``Any``; ``[tool.setuptools]
package-dir`` in pyproject.toml makes it a plain path in a ``.pth`` file instead.

The install goes into a venv of its own, without dependencies (the running venv's packages are
made visible to it by a ``.pth`` line, which Python and mypy follow without running that venv's
own hooks); its build backend comes from the package index, as the Makefile's install's does.
mypy and pyright (from the npm registry, pinned) run with no ``PYTHONPATH``, from a directory
outside the repository, so they find gcache through the install alone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests._pypi import npm_tool
from tests.test_typing import EXAMPLE, check

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
UNSET = ("PYTHONPATH", "MYPYPATH", "PIP_REQUIRE_VIRTUALENV")
PYRIGHT_VERSION = "1.1.414"


@pytest.fixture(scope="module")
def editable(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], Path]:
    """A venv with gcache installed editable, its environment, and EXAMPLE written beside it."""
    tmp_path = tmp_path_factory.mktemp("editable")
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env, timeout=120)
    python = venv / "bin" / "python"
    install = [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "-e", str(ROOT)]
    done = subprocess.run(install, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    (Path(site) / "_running_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # redis & co
    program = tmp_path / "example.py"
    program.write_text(EXAMPLE)  # every decorator, and three wrong calls (tests/test_typing.py)
    return python, env, program


def test_mypy_sees_the_exact_signatures_through_an_editable_install(
    editable: tuple[Path, dict[str, str], Path],
) -> None:
    python, env, program = editable
    tmp_path = program.parent
    mypy = [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--no-error-summary", "--cache-dir",
            str(tmp_path / "cache"), "--python-executable", str(python), str(program)]  # fmt: skip
    checked = subprocess.run(mypy, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert checked.returncode == 1, checked.stdout + checked.stderr  # the three wrong calls
    check(checked.stdout)  # the exact signatures (not Any), use_case a str, the wrong calls found


# What pyright reveals of EXAMPLE: its own spelling of the types tests/test_typing.py expects of mypy.
PYRIGHT_REVEALED = {
    "get_user": "CachedFunction[(user_id: str, page: int = 0), CoroutineType[Any, Any, dict[str, int]]]",
    "get_user_sync": "CachedFunction[(user_id: str), list[str]]",
    "get_user.use_case": "str",
    "get_user_sync.__wrapped__": "(user_id: str) -> list[str]",
    "Users().name": "CachedFunction[(user_id: int), str]",
    "Users().name.use_case": "str",
    "rename_user": "(user_id: str, name: str) -> CoroutineType[Any, Any, None]",
    "handler": "(user_id: str) -> bool",
    "recompute": "(user_id: str) -> CoroutineType[Any, Any, float]",
    "route": "(user_id: str, q: str | None = None) -> CoroutineType[Any, Any, dict[str, str]]",
    "key.id": "str",
}


@pytest.mark.skipif(shutil.which("npm") is None, reason="pyright comes from the npm registry: no npm here")
def test_pyright_sees_the_exact_signatures_through_an_editable_install(
    editable: tuple[Path, dict[str, str], Path],
) -> None:
    python, env, program = editable
    pyright = npm_tool("pyright", PYRIGHT_VERSION)
    command = [str(pyright), "--outputjson", "--pythonpath", str(python), str(program)]
    checked = subprocess.run(command, env=env, cwd=program.parent, capture_output=True, text=True,
                             timeout=300)  # fmt: skip
    assert checked.returncode == 1, checked.stdout + checked.stderr  # the three wrong calls
    diagnostics = json.loads(checked.stdout)["generalDiagnostics"]
    revealed = {}
    for d in diagnostics:
        if d["severity"] == "information":
            name, _, shown = d["message"].removeprefix('Type of "').partition('" is "')
            revealed[name] = shown.removesuffix('"')
    assert revealed == PYRIGHT_REVEALED, checked.stdout
    errors = sorted(d["message"].splitlines()[0] for d in diagnostics if d["severity"] == "error")
    wrong = 'Argument of type "{}" cannot be assigned to parameter "{}" of type "str" in function "{}"'
    assert errors == [
        wrong.format("Literal[1]", "user_id", "__call__"),
        wrong.format("Literal[2]", "name", "rename_user"),
        wrong.format("None", "user_id", "handler"),
    ], checked.stdout
