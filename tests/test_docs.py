"""The docs run: every fenced ``python`` and ``bash`` block of README.md and docs/*.md is
executed, so a renamed argument or a changed default fails here before a user copies it.

A page's python blocks run in order in one namespace (a block may use what an earlier
one defined), in the test process (TRITON_INTERPRET=1: the triton backend runs through
the interpreter); its bash blocks run in a fresh ``bash -euo pipefail`` each, in a
scratch folder, with this interpreter's ``mirasol`` and ``python`` first on PATH. A block
is not run when the line before its fence says why:

    <!-- not run: the whole test suite, 20 minutes -->

Fences with any other info string (``json``, ``c``, none: output listings, formulas) are
text. Every relative link of a page must name a file that exists.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUNNABLE = ("python", "bash")
_FENCE = re.compile(r"^```(\S*)\s*$")
_NOT_RUN = re.compile(r"^<!--\s*not run:\s*(.+?)\s*-->$")
# [text](target) and ![alt](target), a target without a scheme or a fragment-only link.
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _name(page: Path) -> str:
    return str(page.relative_to(ROOT)) if page.is_relative_to(ROOT) else page.name


@dataclass(frozen=True)
class Block:
    page: Path
    line: int          # of the opening fence, 1-based
    lang: str
    code: str
    not_run: str | None  # the reason, when the page says not to run it

    def where(self) -> str:
        return f"{_name(self.page)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """Every fenced block of the page, in order."""
    found, lines = [], page.read_text().splitlines()
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
        if end is None:
            raise ValueError(f"{_name(page)}:{i + 1}: unclosed code fence")
        reason = _NOT_RUN.match(lines[i - 1].strip()) if i else None
        found.append(Block(page, i + 1, fence.group(1), "\n".join(lines[i + 1:end]) + "\n",
                           reason.group(1) if reason else None))
        i = end + 1
    return found


def _run_python(block: Block, namespace: dict) -> None:
    exec(compile(block.code, block.where(), "exec"), namespace)


def _run_bash(block: Block, scratch: Path) -> None:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               MIRASOL_REPO=str(ROOT))
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", block.code], cwd=scratch, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (f"{block.where()}: exit {done.returncode}\n{block.code}\n"
                                  f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}")


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_every_code_block_runs(page, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # A real module (torch.compile resolves functions' globals through sys.modules), named
    # for its page: dynamo's caches key on the module's name, and a stale entry from another
    # page would resolve that page's names here.
    module = types.ModuleType("docs_page_" + re.sub(r"\W", "_", str(page)))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    namespace = module.__dict__
    ran, skipped = 0, []
    for block in blocks(page):
        if block.lang not in RUNNABLE:
            continue
        if block.not_run:
            skipped.append(f"{block.where()}: {block.not_run}")
            continue
        try:
            if block.lang == "python":
                _run_python(block, namespace)
            else:
                _run_bash(block, tmp_path)
        except AssertionError:
            raise
        except Exception as e:
            raise AssertionError(f"{block.where()} raised {type(e).__name__}: {e}\n"
                                 f"{block.code}") from e
        ran += 1
    with capsys.disabled():
        print(f"\n{_name(page)}: {ran} blocks run, {len(skipped)} not run"
              + "".join(f"\n  not run {s}" for s in skipped))


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_every_relative_link_names_a_file(page):
    broken = []
    for n, line in enumerate(page.read_text().splitlines(), 1):
        for target in _LINK.findall(line):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue
            if not (page.parent / target.split("#")[0]).exists():
                broken.append(f"{_name(page)}:{n}: {target}")
    assert not broken, "links to missing files:\n" + "\n".join(broken)


def test_a_block_that_fails_is_reported_with_its_page_and_line(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("text\n\n```python\nx = 1\n```\n\n<!-- not run: needs a GPU -->\n"
                    "```python\nraise SystemError\n```\n\n```python\nassert x == 2, x\n```\n")
    found = blocks(page.resolve())
    assert [(b.line, b.not_run) for b in found] == [(3, None), (8, "needs a GPU"), (12, None)]
    namespace: dict = {}
    _run_python(found[0], namespace)
    with pytest.raises(AssertionError, match="1"):
        _run_python(found[2], namespace)
    # and the pages' own blocks are found: the README's examples run.
    assert sum(b.lang == "python" and not b.not_run for b in blocks(ROOT / "README.md")) >= 2
