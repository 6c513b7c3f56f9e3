"""An editable install (``pip install -e``, as the Makefile makes) keeps gcache's types visible to
mypy (issue 19): setuptools' default editable install is an import hook that only Python runs,
so mypy found no gcache and every decorated function was ``Any``; ``[tool.setuptools]
package-dir`` in pyproject.toml makes it a plain path in a ``.pth`` file instead.

The install goes into a venv of its own, without dependencies (the running venv's packages are
made visible to it by a ``.pth`` line, which Python and mypy follow without running that venv's
own hooks); its build backend comes from the package index, as the Makefile's install's does.
mypy runs with no ``PYTHONPATH``, from a directory outside the repository, so it finds gcache
through the install alone."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.test_typing import EXAMPLE, check

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_sees_the_exact_signatures_through_an_editable_install(tmp_path: Path) -> None:
    unset = ("PYTHONPATH", "MYPYPATH", "PIP_REQUIRE_VIRTUALENV")
    env = {k: v for k, v in os.environ.items() if k not in unset}
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
    mypy = [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--no-error-summary", "--cache-dir",
            str(tmp_path / "cache"), "--python-executable", str(python), str(program)]  # fmt: skip
    checked = subprocess.run(mypy, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert checked.returncode == 1, checked.stdout + checked.stderr  # the three wrong calls
    check(checked.stdout)  # the exact signatures (not Any), use_case a str, the wrong calls found
