"""The README as a landing page: short, install before code, and a quick start that runs.

The unit-level checks (length, order, links, code blocks that parse and survive the formatter)
need no model. The quick start itself runs on the embedded default VLM and its default bank
(built and cached on first use), so it is marked ``integration``.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"

#: The landing page's budget: words before the links section.
MAX_WORDS = 900

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def readme() -> str:
    return README.read_text(encoding="utf-8")


def before_links(text: str) -> str:
    """The README up to its ``## Links`` heading (the whole text when there is none)."""
    m = re.search(r"^## Links\b", text, re.M)
    assert m, "the README has no '## Links' section"
    return text[: m.start()]


def word_count(text: str) -> int:
    """Words as ``wc -w`` counts them (runs of non-space), HTML comments left out."""
    return len(re.sub(r"<!--.*?-->", " ", text, flags=re.S).split())


def code_blocks(text: str, lang: str) -> list[str]:
    return [body for tag, body in _FENCE.findall(text) if tag == lang]


def quick_start(text: str) -> str:
    """The first python block under the ``## Quick start`` heading."""
    m = re.search(r"^## Quick start\b(.*?)(?=^## )", text, re.S | re.M)
    assert m, "the README has no '## Quick start' section"
    blocks = code_blocks(m.group(1), "python")
    assert blocks, "the quick start has no python block"
    return blocks[0]


def test_word_count_helpers() -> None:
    assert word_count("one two\nthree <!-- not counted at all --> four") == 4
    assert before_links("a b\n## Links\nc d\n") == "a b\n"
    assert code_blocks("x\n```python\nprint(1)\n```\n```bash\nls\n```\n", "python") == [
        "print(1)\n"
    ]


def test_readme_is_short_before_the_links() -> None:
    n = word_count(before_links(readme()))
    assert n <= MAX_WORDS, f"README has {n} words before '## Links' (at most {MAX_WORDS})"


def test_install_comes_before_the_first_python_block() -> None:
    text = readme()
    pip = re.search(r"^\s*pip install \S", text, re.M)
    first_python = text.find("```python")
    assert pip, "the README has no 'pip install' line"
    assert first_python != -1, "the README has no python block"
    assert pip.start() < first_python, "the 'pip install' line must come before any python code"


def test_the_two_script_commands_are_kept() -> None:
    # CI runs the test script as the README spells it
    text = readme()
    assert "bash scripts/demo.sh" in text
    assert "bash scripts/test.sh" in text


def test_quick_start_is_at_most_ten_lines() -> None:
    lines = [line for line in quick_start(readme()).splitlines() if line.strip()]
    assert len(lines) <= 10, lines


def test_local_links_exist() -> None:
    for page in [README, *sorted(DOCS.glob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target):
                continue
            path = target.split("#", 1)[0]
            if path:
                assert (page.parent / path).exists(), f"{page.name} links to missing {target}"


def _markdown_pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


@pytest.mark.parametrize("page", _markdown_pages(), ids=lambda p: p.name)
def test_python_blocks_parse(page: Path) -> None:
    for body in code_blocks(page.read_text(encoding="utf-8"), "python"):
        try:
            ast.parse(body)
        except SyntaxError as err:
            pytest.fail(f"{page.name}: a python block does not parse ({err}):\n{body}")


def _ruff() -> str | None:
    local = Path(sys.executable).with_name("ruff")
    return str(local) if local.exists() else shutil.which("ruff")


@pytest.mark.parametrize("page", _markdown_pages(), ids=lambda p: p.name)
def test_python_blocks_are_formatted(page: Path) -> None:
    # the formatter moves trailing comments and splits calls: a block it would change reads
    # badly once someone formats it, so the blocks are written the way it leaves them
    ruff = _ruff()
    if ruff is None:
        pytest.skip("ruff is not installed")
    for body in code_blocks(page.read_text(encoding="utf-8"), "python"):
        done = subprocess.run(
            [ruff, "format", "--line-length", "100", "-"],
            input=body,
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout == body, f"{page.name}: ruff format changes this block:\n{body}"


@pytest.mark.integration
def test_quick_start_runs(tmp_path: Path) -> None:
    from tl_latentlens import LatentLens

    if not hasattr(LatentLens, "default"):
        pytest.skip("LatentLens.default() does not exist yet (the quick start needs it)")
    # the README's code runs unchanged, over the quick demo's smaller default bank (which the
    # demo test builds too), so that a fresh CI machine does not build the full one
    prologue = "import tl_latentlens.lens.default_bank as _d\n_d.DEFAULT_SENTENCES = 1500\n"
    code = prologue + quick_start(readme())
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    # it printed the neighbours, and wrote a report that works offline
    assert "Neighbour(" in done.stdout, done.stdout[-2000:]
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "<html" in html.lower()
    assert not re.search(r"<script[^>]+src=[\"']https?://", html), "the report loads a script"
