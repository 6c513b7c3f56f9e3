"""The original gcache (rungalileo/gcache) from PyPI, for the interoperability tests, and pyright
from the npm registry, for the type-checking test.

Nothing from a package index is committed: the released wheel is fetched on first use into
``.venv/upstream/`` (ignored by git, removed by ``make clean``) and reused after. Two pytest
processes may ask at once (``pytest -n``, two terminals), so each artefact is built under a
file lock and marked complete only at the end: a build interrupted half way is redone, never
half used.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

__all__ = ["UPSTREAM_DIR", "UpstreamError", "npm_tool", "original_dist", "original_python"]

#: Under the repository's ``.venv`` so that ``make clean`` removes it with the venv.
UPSTREAM_DIR = Path(__file__).resolve().parent.parent / ".venv" / "upstream"

# Written last, so its presence means the whole artefact is there.
_COMPLETE = ".complete"


class UpstreamError(RuntimeError):
    """pip could not fetch or install the original; the message names the command."""


def original_dist(version: str) -> Path:
    """The unpacked wheel of ``gcache==version``: the root holding ``gcache/`` and its dist-info.

    A wheel and not the sdist: the wheel is what users install, so its conformance corpus and
    sources are the ones running next to us.
    """
    target = UPSTREAM_DIR / version
    if (target / _COMPLETE).exists():
        return target
    with _locked(f"dist-{version}"):
        if (target / _COMPLETE).exists():
            return target
        with tempfile.TemporaryDirectory(dir=UPSTREAM_DIR, prefix=f".dist-{version}-") as tmp:
            wheels = Path(tmp) / "wheels"
            pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:"]
            _run([*pip, "--dest", str(wheels), f"gcache=={version}"])
            found = sorted(wheels.glob("gcache-*.whl"))
            if len(found) != 1:
                raise UpstreamError(
                    f"pip download gcache=={version} left {found!r} in {wheels}, not one wheel"
                )
            unpacked = Path(tmp) / "root"
            with zipfile.ZipFile(found[0]) as wheel:
                wheel.extractall(unpacked)
            (unpacked / _COMPLETE).touch()
            # An earlier, interrupted run could have left no marker only inside a temporary
            # directory, so an existing target without one is not ours to keep.
            shutil.rmtree(target, ignore_errors=True)
            os.rename(unpacked, target)
    return target


def original_python(version: str) -> Path:
    """The python of a venv with ``gcache==version`` and its dependencies installed from PyPI.

    Its own venv, since the original and this library are both the ``gcache`` package: they
    can meet only across a process boundary. Run it with ``-I`` so neither the working
    directory nor ``PYTHONPATH`` can put this repository's ``gcache`` in front of the original.
    """
    venv = UPSTREAM_DIR / f"venv-{version}"
    python = venv / "bin" / "python"
    install = [
        str(python),
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        f"gcache=={version}",
    ]
    _built_in_place(venv, [[sys.executable, "-m", "venv", str(venv)], install])
    return python


def npm_tool(package: str, version: str) -> Path:
    """The executable of ``package@version`` from the npm registry (it needs ``npm`` and Node.js),
    installed once under ``UPSTREAM_DIR``."""
    prefix = UPSTREAM_DIR / f"npm-{package}-{version}"
    npm = [
        "npm",
        "install",
        "--silent",
        "--no-audit",
        "--no-fund",
        "--prefix",
        str(prefix),
        f"{package}@{version}",
    ]
    _built_in_place(prefix, [npm])
    return prefix / "node_modules" / ".bin" / package


def _built_in_place(target: Path, commands: Sequence[Sequence[str]]) -> None:
    """``target`` made by ``commands`` once (a venv is not relocatable: built where it stays). The
    marker comes last, and a target without one is from an interrupted build, rebuilt from scratch."""
    if (target / _COMPLETE).exists():
        return
    with _locked(target.name):
        if (target / _COMPLETE).exists():
            return
        shutil.rmtree(target, ignore_errors=True)
        for command in commands:
            _run(command)
        (target / _COMPLETE).touch()


@contextmanager
def _locked(name: str) -> Iterator[None]:
    """An exclusive lock between processes, released when the process dies."""
    UPSTREAM_DIR.mkdir(parents=True, exist_ok=True)
    with open(UPSTREAM_DIR / f".{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(command: Sequence[str]) -> None:
    # The test run's PYTHONPATH points at this repository, whose gcache must not shadow
    # anything pip looks at or installs.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_REQUIRE_VIRTUALENV")}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise UpstreamError(
            f"`{' '.join(command)}` failed with exit status {done.returncode}:\n{done.stderr[-4000:]}"
        )
