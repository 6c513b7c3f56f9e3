"""Generate the sync read-through driver from the async one, as httpcore generates its sync code.

``python -m gcache._unasync`` writes ``gcache/readthrough/_sync.py`` from ``_async.py``;
``python -m gcache._unasync --check`` (run by ``make lint``) fails when the checked-in file is not
what it would write. The rewrite is a table of whole-word substitutions, applied in order, and
the result is formatted with ruff (lines an ``await`` made long may join again).

Why generated rather than a sans-IO core yielding I/O requests: driving a generator core costs
a call about 3.3k instructions more than calling plain code (callgrind: creating it, running it
to its return and catching StopIteration; 3.7k with one request yielded and answered). A LOCAL
hit is about 15k instructions and may grow by 2 %: a core would cost it 22 %, and a sync REMOTE
hit (185k) 2 % even with LOCAL kept outside the core. Generated code costs nothing at run time
and still keeps the twins in step by construction.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

__all__ = ["generate", "main"]

PACKAGE = Path(__file__).resolve().parent / "readthrough"
SOURCE, TARGET = PACKAGE / "_async.py", PACKAGE / "_sync.py"

# Methods of the drivers, the primitives and RemoteCache whose sync twin drops the leading "a".
RENAMED = (
    "aread_through", "awork", "amerged_read", "aremote_read", "awrite_back", "alock", "aunlock",
    "aconfig", "aremote_put", "afunction", "awork_aside", "aload_async_codec", "adump_async_codec",
    "aprovider_answer", "aread_tracked", "aget_with_ttl", "aget", "atry_lock", "awrite_tracked",
    "aset", "arefresh", "anote_blocking", "aread_many", "aremote_read_many", "acompute_many", "aaccept",
    "arefresh_soon", "arefresh_ahead", "arefresh_many_ahead", "arefresh_many", "aremote_entry",
    "awrite_back_many", "awrite_many", "awrite", "aread_fences", "aremote_batch",
    "aremote_read_untracked",
)  # fmt: skip
SUBSTITUTIONS: tuple[tuple[str, str], ...] = (
    (r"\basync def ", "def "),
    (r"\bawait ", ""),
    (r"\bAsyncDriver\b", "SyncDriver"),
    (r"\bAsyncIO\b", "SyncIO"),
    (r"\basyncio\.current_task\(\)", "threading.get_ident()"),
    (r"\basyncio\.sleep\(", "time.sleep("),
    (r"\bflight\.await_done\(", "flight.wait("),
    (r"\bshared_read=True\b", "shared_read=False"),  # threads read for themselves (UseCase.miss)
    (r"raise  # cancelled:", "raise  # interrupted:"),
    (r"Callable\[\.\.\., Awaitable\[Any\]\]", "Callable[..., Any]"),
    (r"^import asyncio$", "import threading\nimport time"),
    (r"^from collections\.abc import Awaitable, Callable$", "from collections.abc import Callable"),
    *((rf"\b{name}\b", name[1:]) for name in RENAMED),
)
HEADER = (
    "# Generated from _async.py by `python -m gcache._unasync`: do not edit; change _async.py "
    "and regenerate.\n"
)
_DOCSTRING = re.compile(r'\A""".*?"""\n', re.S)


def generate(source: str) -> str:
    """The sync driver for the async driver's ``source``, formatted."""
    body = _DOCSTRING.sub(
        '"""The sync driver of the read-through (see _async.py, its source)."""\n', source, 1
    )
    for pattern, replacement in SUBSTITUTIONS:
        body = re.sub(pattern, replacement, body, flags=re.M)
    return _formatted(HEADER + body)


def _formatted(code: str) -> str:
    """``code`` with its imports sorted and formatted, as ``make lint`` wants every file."""
    for command in (("check", "--select", "I", "--fix", "--quiet"), ("format",)):
        done = subprocess.run(
            [sys.executable, "-m", "ruff", *command, "--stdin-filename", str(TARGET), "-"],
            input=code,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise SystemExit(f"ruff could not tidy the generated driver:\n{done.stderr}")
        code = done.stdout
    return code


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    wanted = generate(SOURCE.read_text())
    if args == ["--check"]:
        if TARGET.read_text() != wanted:
            print(f"{TARGET} is not what {SOURCE.name} generates: run `python -m gcache._unasync`")
            return 1
        return 0
    if args:
        print("usage: python -m gcache._unasync [--check]", file=sys.stderr)
        return 2
    TARGET.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
