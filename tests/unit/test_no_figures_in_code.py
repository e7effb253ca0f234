"""No timing or speed-up figures in the comments and docstrings of ``tl_latentlens/``.

Comments keep the decision and name the benchmark that supports it; the figures themselves live
in ``benchmarks/README.md`` with the command and the machine that produced them (issue 25).
This scans every ``#`` comment and every string statement (docstrings, ``#:`` attribute docs are
comments) of the package for durations (``12 ms``, ``~20 s``, ``3 minutes``), speed-up factors
(``1.4x faster``, ``10-20x more``, ``3 times cheaper``) and throughputs (``40 GMAC/s``,
``300 tok/s``). Shapes (``7x7``, ``49 x 576``), sizes (``8 MiB chunks``), percentages of
intervals (``95 %``) and code are not figures of this kind and are not flagged.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "tl_latentlens"

_NUM = r"(?<![\w.])~?\d+(?:[.,]\d+)*(?:\s?(?:-|to)\s?\d+(?:[.,]\d+)*)?"
#: (name, pattern) of each kind of figure, matched case-insensitively on one comment or
#: docstring with its lines joined by single spaces.
RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "duration",
        re.compile(
            _NUM + r"\s?(?:ms|us|µs|ns|s|sec|secs|seconds?|min|mins|minutes?|h|hours?)(?![\w/=])",
            re.I,
        ),
    ),
    ("speed-up factor", re.compile(_NUM + r"\s?x(?![\w])(?!\s*\d)", re.I)),
    (
        "speed-up in words",
        re.compile(_NUM + r"\s?times\s+(?:faster|slower|cheaper|dearer|less|more|the speed)", re.I),
    ),
    (
        "throughput",
        re.compile(
            _NUM
            + r"\s?(?:[kMGT]?FLOP|[kMGT]?MAC|[kMGT]?FLOPS|tok/s|tokens/s|it/s|rows/s|queries/s)",
            re.I,
        ),
    ),
    (
        "percent faster",
        re.compile(_NUM + r"\s?%\s+(?:faster|slower|cheaper|less time|more time)", re.I),
    ),
)


def prose(text: str) -> str:
    """``text`` without its code: doctest examples (``>>>`` lines and the output under them)
    and inline literals in double backquotes, which show formats (``3.6 s``), not claims."""
    kept, in_doctest = [], False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith((">>>", "...")):
            in_doctest = True
        elif not stripped:
            in_doctest = False
        elif not in_doctest:
            kept.append(line)
    return re.sub(r"``.*?``", " ", "\n".join(kept), flags=re.S)


def figures(text: str) -> list[tuple[str, str]]:
    """``(rule, matched text)`` of every figure in ``text`` (one comment or docstring)."""
    flat = " ".join(prose(text).split())
    return [(name, m.group(0)) for name, rx in RULES for m in rx.finditer(flat)]


def _comment_blocks(source: str) -> list[tuple[int, str]]:
    """``(first line, text)`` of each run of consecutive ``#`` comment lines."""
    blocks: list[tuple[int, str]] = []
    last = -2  # line of the last whole-line comment
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type != tokenize.COMMENT:
            continue
        line = tok.start[0]
        text = tok.string.lstrip("#:").strip()
        whole_line = tok.line.lstrip().startswith("#")
        if whole_line and blocks and line == last + 1:
            blocks[-1] = (blocks[-1][0], blocks[-1][1] + " " + text)
        else:
            blocks.append((line, text))
        last = line if whole_line else -2
    return blocks


def _string_statements(source: str) -> list[tuple[int, str]]:
    """``(line, text)`` of each string used as a statement (docstrings included)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            out.append((node.lineno, node.value.value))
    return out


def scan(source: str) -> list[tuple[int, str, str]]:
    """``(line, rule, figure)`` of every timing/speed-up figure in ``source``'s prose."""
    found = []
    for line, text in _comment_blocks(source) + _string_statements(source):
        found += [(line, rule, fig) for rule, fig in figures(text)]
    return sorted(found)


@pytest.mark.parametrize(
    "text",
    [
        "measured: 31 ms vs 7 ms for 49 queries",
        "took ~20 s on the first run",
        "about 40 minutes on 2 CPU cores",
        "1.4x less CPU time than torch's",
        "small torch operations cost 10-20x more",
        "3x cheaper than a binary search",
        "bfloat16 is 1.3-1.9x faster",
        "3 times faster than numpy",
        "at ~40 GMAC/s",
        "244 tok/s in float32",
        "0.54 s instead of 0.98 s",
        "cost 0.7 s.",
        "12 % faster than before",
    ],
)
def test_figures_are_found(text: str) -> None:
    assert figures(text), text


@pytest.mark.parametrize(
    "text",
    [
        "a 7x7 patch grid at 224 px",
        "49 x 576 float32 queries",
        "the [490, 46392] block",
        "read in 8 MiB chunks",
        "a 95 % interval (Wilson's)",
        "k=5 neighbours at layers 0 / 2 / 8",
        "groups of 32 rows, 2 threads",
        "recall@10 >= 0.98 against exact search",
        "the d x d scatter matrix, x' = |x| * (q * s)",
        "s = max|z| / 127   q = rint(z / s)",
        "version 2 seconds=round(time, 1)",
        "4 layers, 10 hooks, 12,000 sentences",
    ],
)
def test_legit_numbers_are_not_figures(text: str) -> None:
    assert not figures(text), figures(text)


def test_code_in_docstrings_is_not_prose() -> None:
    doc = (
        "Seconds in words: ``3.6 s``, ``10.9 min``.\n\n"
        "Example:\n"
        "    >>> format_duration(654)\n"
        "    '10.9 min'\n"
        "\n"
        "It took 12 ms.\n"
    )
    assert figures(doc) == [("duration", "12 ms")]


def test_scan_reads_comments_and_docstrings_not_code() -> None:
    source = (
        '"""Module doc: 3x faster."""\n'
        "X = 1  # took 12 ms\n"
        "#: the product\n"
        "#: at 0.2 s\n"
        "def f():\n"
        '    """Fine."""\n'
        '    return "costs 5 ms"  # a string value, not prose\n'
    )
    assert [(line, rule) for line, rule, _ in scan(source)] == [
        (1, "speed-up factor"),
        (2, "duration"),
        (3, "duration"),
    ]


def test_no_timing_figures_in_package_comments() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for line, rule, fig in scan(path.read_text(encoding="utf-8")):
            offenders.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {rule}: {fig!r}")
    assert not offenders, (
        "timing/speed-up figures in comments or docstrings: keep the decision and name the "
        "benchmark in the comment, and put the figures in benchmarks/README.md with the command "
        "and the machine:\n" + "\n".join(offenders)
    )
