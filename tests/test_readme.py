"""Every Python block of the README runs as written (issue 19), except those marked as fragments:
a ``<!-- fragment -->`` HTML comment (invisible when rendered) on the line before the block's
opening fence. Each block runs in a fresh interpreter (``-W error``) against the test Redis: the
blocks that need Redis read its URL from ``REDIS_URL`` (the Quick start:
``os.environ.get("REDIS_URL", "redis://localhost:6379/0")``), which the test sets to the
``redis_url`` fixture's, so nothing here touches a Redis on the default port."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.redis

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FRAGMENT = "<!-- fragment -->"
_FENCE = re.compile(r"^(\s*)```(\w*)\s*$")
_CLOSE = re.compile(r"^\s*```\s*$")


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    code: str
    fragment: bool


def python_blocks(text: str) -> list[Block]:
    """The README's ```python blocks (indented ones in lists too), dedented, in order."""
    lines = text.splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None or not opening.group(2):
            index += 1
            continue
        end = index + 1
        while end < len(lines) and not _CLOSE.match(lines[end]):
            end += 1
        if opening.group(2) == "python":
            previous = lines[index - 1].strip() if index else ""
            code = textwrap.dedent("\n".join(lines[index + 1 : end]))
            blocks.append(Block(index + 1, code, previous == FRAGMENT))
        index = end + 1
    return blocks


BLOCKS = python_blocks(README.read_text())
RUNNABLE = [block for block in BLOCKS if not block.fragment]


def test_the_extraction_finds_the_blocks_and_the_markers() -> None:
    sample = (
        "x\n<!-- fragment -->\n```python\na = 1\n```\n\n```python\nb = 2\n```\n"
        "- item\n\n  ```python\n  c = 3\n  ```\n```bash\nd\n```\n"
    )
    assert python_blocks(sample) == [
        Block(3, "a = 1", True),
        Block(7, "b = 2", False),
        Block(12, "c = 3", False),
    ]
    assert len(BLOCKS) >= 15
    assert len(RUNNABLE) >= 3
    assert "asyncio.run(main())" in RUNNABLE[0].code  # the Quick start is run, not marked away


def run(block: Block, redis_url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REDIS_URL": redis_url, "PYTHONPATH": str(ROOT)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return subprocess.run(
        [sys.executable, "-W", "error", "-c", block.code],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize("block", RUNNABLE, ids=[f"README.md:{block.line}" for block in RUNNABLE])
def test_a_readme_block_runs_as_written(
    block: Block, redis_url: str, redis_client: object, tmp_path: Path
) -> None:
    result = run(block, redis_url, tmp_path)
    assert result.returncode == 0, f"README.md:{block.line}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    assert "WARNING" not in result.stderr, result.stderr


def test_the_quick_start_caches_and_invalidates(redis_url: str, redis_client: object, tmp_path: Path) -> None:
    result = run(RUNNABLE[0], redis_url, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "read from the database: 123",
        "{'id': '123', 'name': 'Grace'}",
        "{'id': '123', 'name': 'Grace'}",  # served from the cache: the function did not run
        "read from the database: 123",  # the invalidation made the entry stale
        "{'id': '123', 'name': 'Ada'}",
    ]
