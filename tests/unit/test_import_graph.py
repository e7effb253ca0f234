"""The package's import graph: no circles, imports run one way down the layers.

Every module under ``tl_latentlens`` is parsed with :mod:`ast` (nothing is imported). An edge
is an import of a project module: at module level, function-local ("lazy"), or under
``if TYPE_CHECKING:`` ("type-only"). Checked:

* no circle among module-level imports (an import-time circle);
* no circle over *every* edge either: a circle that closes through a lazy or a type-only import
  does not fail at import time, but still ties the modules into one (a structure tool reads
  every import as an arrow); break it by moving the shared name down, passing data instead of
  objects, or typing with a :class:`typing.Protocol`;
* layering, on module-level *and* function-local imports: a module may import its own
  package, a package of the same layer, or a lower layer (:data:`LAYERS`), never upward;
* a function-local import of a project module carries a ``# lazy: <why>`` comment (on its
  line or the line above): allowed for an optional dependency or a notebook convenience that
  reaches up (``Explanation.show()`` -> render), never to hide a circle silently.

Violations that predate this test are listed in :data:`KNOWN_VIOLATIONS` (to be removed by
issue 13); the test fails on any new one and prints the known ones that are gone.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "tl_latentlens"
PACKAGE = "tl_latentlens"

#: Top-level module or package -> layer (higher imports lower; equal layers are peers).
LAYERS: dict[str, int] = {
    "__main__": 8,  # ``python -m tl_latentlens``: the console entry
    "apps": 7,
    "evaluate": 6,
    "training": 6,
    "render": 6,
    "lens": 5,
    "bank": 4,
    "capture": 3,
    "default": 2,  # the embedded default VLM: a model, beside models/
    "models": 2,
    "hooks": 1,
    "devices": 1,  # device names, free device memory, the measured number-format choice
    "_io": 1,
    "types": 1,
    "wordnet": 1,
    "packaged_data": 0,  # where registry-packaged data lives (wordnet reads through it)
}

_LAZY = re.compile(r"#\s*lazy\b")

# fmt: off
#: Violations present when this test was written; to be removed by issue 13. Each is
#: "kind: importer -> imported" (kinds: circle, lazy-circle, upward, unmarked-local).
KNOWN_VIOLATIONS: set[str] = set()
# fmt: on


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    line: int
    local: bool  # inside a function
    marked: bool  # a "# lazy:" comment on the line or the one above
    type_only: bool = False  # under ``if TYPE_CHECKING:``

    @property
    def kind(self) -> str:
        return "TYPE_CHECKING" if self.type_only else "function-local" if self.local else "module"


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module ``name`` refers to (its longest existing prefix)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _edges(module: str, path: Path, modules: dict[str, Path]) -> list[Edge]:
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    is_pkg = path.name == "__init__.py"
    edges: list[Edge] = []

    def marked(lineno: int) -> bool:
        here = lines[lineno - 1]
        above = lines[lineno - 2] if lineno >= 2 else ""
        return bool(_LAZY.search(here) or _LAZY.search(above))

    def visit(node: ast.AST, local: bool, type_only: bool = False) -> None:
        visit_all(ast.iter_child_nodes(node), local, type_only)

    def visit_all(nodes: Iterable[ast.AST], local: bool, type_only: bool) -> None:
        for child in nodes:
            if isinstance(child, ast.If) and _is_type_checking(child):
                visit_all(child.body, local, True)
                visit_all(child.orelse, local, type_only)
                continue
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, True, type_only)
                continue
            targets: list[str] = []
            if isinstance(child, ast.Import):
                targets = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = module.split(".") if is_pkg else module.split(".")[:-1]
                    base = base[: len(base) - (child.level - 1)]
                    prefix = ".".join(base + ([child.module] if child.module else []))
                else:
                    prefix = child.module or ""
                targets = [f"{prefix}.{a.name}" for a in child.names] or [prefix]
            for name in targets:
                if name.split(".")[0] != PACKAGE:
                    continue
                dst = _resolve(name, modules)
                if dst is not None and dst != module:
                    edges.append(
                        Edge(module, dst, child.lineno, local, marked(child.lineno), type_only)
                    )
            visit(child, local, type_only)

    visit(ast.parse(source, filename=str(path)), False)
    return edges


def _top(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None  # None: the package root (exports only)


@pytest.fixture(scope="module")
def graph() -> tuple[dict[str, Path], list[Edge]]:
    modules = _modules()
    edges = [e for m, p in modules.items() for e in _edges(m, p, modules)]
    return modules, edges


def _circles(modules: Iterable[str], edges: Iterable[Edge], every: bool = False) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan) over the module-level
    edges, or over ``every`` edge (function-local and TYPE_CHECKING imports included)."""
    succ: dict[str, set[str]] = {m: set() for m in modules}
    for e in edges:
        if every or not (e.local or e.type_only):
            succ[e.src].add(e.dst)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(succ[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(succ):
        if v not in index:
            strong(v)
    return out


def _violations(modules: dict[str, Path], edges: list[Edge]) -> dict[str, str]:
    """``"kind: src -> dst"`` -> where (file:line) and why."""
    found: dict[str, str] = {}

    def where(e: Edge) -> str:
        return f"{modules[e.src].relative_to(ROOT.parent)}:{e.line}"

    at_import = _circles(modules, edges)
    for comp in at_import:
        ring = " -> ".join(comp)
        found[f"circle: {ring}"] = f"module-level imports form a circle: {ring}"
    for comp in _circles(modules, edges, every=True):
        if comp in at_import:
            continue
        members = set(comp)
        inside = [e for e in edges if e.src in members and e.dst in members]
        closing = "; ".join(
            f"{where(e)}: {e.src} -> {e.dst} ({e.kind})" for e in inside if e.local or e.type_only
        )
        ring = " -> ".join(comp)
        found[f"lazy-circle: {ring}"] = (
            f"imports form a circle that closes through function-local or TYPE_CHECKING "
            f"imports ({closing}): move the shared name to a lower module, pass data instead "
            "of objects, or type with a typing.Protocol"
        )
    for e in edges:
        if e.type_only:
            continue  # annotations only: circles above, no layering
        src_top, dst_top = _top(e.src), _top(e.dst)
        if src_top is None or src_top == dst_top or (e.local and e.marked):
            continue  # the root only exports; a marked lazy import may reach up
        if dst_top is None:
            found[f"upward: {e.src} -> {e.dst}"] = (
                f"{where(e)}: imports the package root (import the module that defines the name)"
            )
            continue
        for top in (src_top, dst_top):
            if top not in LAYERS:
                found[f"unlayered: {top}"] = (
                    f"{where(e)}: tl_latentlens.{top} has no layer; add it to LAYERS in "
                    "tests/unit/test_import_graph.py"
                )
        if src_top in LAYERS and dst_top in LAYERS and LAYERS[dst_top] > LAYERS[src_top]:
            found[f"upward: {e.src} -> {e.dst}"] = (
                f"{where(e)}: {src_top} (layer {LAYERS[src_top]}) imports {dst_top} "
                f"(layer {LAYERS[dst_top]}); imports run apps -> evaluate/training/render -> "
                "lens -> bank -> capture -> models/default -> hooks/_io"
            )
    for e in edges:
        if e.local and not e.marked and not e.type_only:
            found.setdefault(
                f"unmarked-local: {e.src} -> {e.dst}",
                f"{where(e)}: function-local import of a project module without a "
                "'# lazy: <why>' comment (import at module level, or say why it must be lazy)",
            )
    return found


def test_every_top_level_module_has_a_layer(graph):
    modules, _ = graph
    tops = {_top(m) for m in modules} - {None}
    assert tops <= set(LAYERS), f"give these a layer in LAYERS: {sorted(tops - set(LAYERS))}"


def test_no_new_import_violations(graph):
    modules, edges = graph
    found = _violations(modules, edges)
    new = {k: v for k, v in found.items() if k not in KNOWN_VIOLATIONS}
    gone = sorted(KNOWN_VIOLATIONS - set(found))
    if gone:
        print("known import violations now fixed (remove them from KNOWN_VIOLATIONS):")
        print("\n".join(f"  {k}" for k in gone))
    assert not new, "new import-graph violations:\n" + "\n".join(
        f"  {k}\n      {v}" for k, v in sorted(new.items())
    )


def test_optional_dependencies_are_imported_lazily():
    """``openai`` (extra ``llm``) is never imported at module level: importing the library
    without the extra works."""
    offenders = []
    for path in sorted(ROOT.rglob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            if any(n.split(".")[0] == "openai" for n in names):
                offenders.append(f"{path.relative_to(ROOT.parent)}:{node.lineno}")
    assert not offenders, f"module-level import of openai: {offenders}"


def _scan(pkg: Path) -> tuple[list[Edge], dict[str, str]]:
    """Edges and violations of the package at ``pkg`` instead of the real one."""
    global ROOT
    old, ROOT = ROOT, pkg
    try:
        modules = _modules()
        edges = [e for m, p in modules.items() for e in _edges(m, p, modules)]
        return edges, _violations(modules, edges)
    finally:
        ROOT = old


def test_the_checker_sees_circles_upward_and_unmarked_imports(tmp_path):
    """The checker itself: a made-up package with each kind of violation."""
    pkg = tmp_path / PACKAGE
    for sub in ("models", "lens"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "models" / "a.py").write_text("from tl_latentlens.models import b\n")
    (pkg / "models" / "b.py").write_text(
        "from tl_latentlens.models.a import x\n"
        "def f():\n    from tl_latentlens.lens import c\n"
        "def g():\n    # lazy: a notebook convenience\n    from tl_latentlens.lens import c\n"
    )
    (pkg / "lens" / "c.py").write_text("from . import d\nfrom tl_latentlens.models import a\n")
    (pkg / "lens" / "d.py").write_text("")
    edges, found = _scan(pkg)
    assert "circle: tl_latentlens.models.a -> tl_latentlens.models.b" in found
    assert "upward: tl_latentlens.models.b -> tl_latentlens.lens.c" in found
    assert "unmarked-local: tl_latentlens.models.b -> tl_latentlens.lens.c" in found
    assert any(e.marked and e.local for e in edges)  # the "# lazy:" one is seen as marked
    (pkg / "models" / "b.py").write_text(
        "def g():\n    # lazy: a notebook convenience\n    from tl_latentlens.lens import c\n"
    )
    _, found = _scan(pkg)
    # a marked upward lazy import is allowed as such ...
    assert not any(k.startswith(("upward:", "unmarked-local:")) and "models.b" in k for k in found)
    # ... but not when it closes a circle (lens.c imports models.a, which imports models.b)
    assert (
        "lazy-circle: tl_latentlens.lens.c -> tl_latentlens.models.a -> tl_latentlens.models.b"
        in found
    )
    assert not any(k.startswith("upward: tl_latentlens.lens") for k in found)
    assert any(e.src == "tl_latentlens.lens.c" and e.dst == "tl_latentlens.lens.d" for e in edges)


def test_the_checker_sees_circles_closed_by_lazy_or_type_only_imports(tmp_path):
    """A circle is a circle whatever kind of import closes it: a marked lazy import or a
    TYPE_CHECKING import back to a module that imports it still fails (as render/html.py's
    type-only import of lens.results once did against Explanation.show()'s lazy import)."""
    pkg = tmp_path / PACKAGE
    for sub in ("lens", "render"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "lens" / "results.py").write_text(
        "def show():\n    # lazy: a notebook convenience\n"
        "    from tl_latentlens.render import html\n"
    )
    (pkg / "render" / "html.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from tl_latentlens.lens.results import Explanation\n"
    )
    edges, found = _scan(pkg)
    key = "lazy-circle: tl_latentlens.lens.results -> tl_latentlens.render.html"
    assert key in found, found
    assert "render/html.py:3" in found[key] and "TYPE_CHECKING" in found[key]
    assert "lens/results.py:3" in found[key] and "function-local" in found[key]
    assert not any(k.startswith("circle:") for k in found)  # no import-time circle
    assert any(e.type_only for e in edges)
    # the same circle closed by a module-level import on one side
    (pkg / "render" / "html.py").write_text("from tl_latentlens.lens import results\n")
    _, found = _scan(pkg)
    assert key in found and "(function-local)" in found[key]
    # broken: render no longer reads lens at all
    (pkg / "render" / "html.py").write_text("")
    _, found = _scan(pkg)
    assert not any("circle" in k for k in found), found


def test_circles_of_a_synthetic_edge_set():
    def edge(src: str, dst: str, local: bool = False, type_only: bool = False) -> Edge:
        return Edge(src, dst, 1, local, False, type_only)

    mods = ["a", "b", "c", "d"]
    chain = [edge("a", "b"), edge("b", "c"), edge("c", "d")]
    assert _circles(mods, chain) == [] and _circles(mods, chain, every=True) == []
    lazy = chain + [edge("d", "b", local=True)]
    assert _circles(mods, lazy) == []
    assert _circles(mods, lazy, every=True) == [["b", "c", "d"]]
    typed = chain + [edge("c", "a", type_only=True)]
    assert _circles(mods, typed, every=True) == [["a", "b", "c"]]
    both = chain + [edge("d", "c")]
    assert _circles(mods, both) == [["c", "d"]] == _circles(mods, both, every=True)
