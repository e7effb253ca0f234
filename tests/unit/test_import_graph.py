"""The package's import graph: no circles, imports run one way down the layers.

Every module under ``tl_latentlens`` is parsed with :mod:`ast` (nothing is imported). An edge
is an import of a project module; imports under ``if TYPE_CHECKING:`` are left out. Checked:

* no circle among module-level imports (an import-time circle);
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
    "_io": 1,
    "types": 1,
    "wordnet": 1,
    "packaged_data": 0,  # where registry-packaged data lives (wordnet reads through it)
}

_LAZY = re.compile(r"#\s*lazy\b")

# fmt: off
#: Violations present when this test was written; to be removed by issue 13. Each is
#: "kind: importer -> imported" (kinds: circle, upward, unmarked-local).
KNOWN_VIOLATIONS: set[str] = set()
# fmt: on


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    line: int
    local: bool  # inside a function
    marked: bool  # a "# lazy:" comment on the line or the one above


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

    def visit(node: ast.AST, local: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, True)
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
                    edges.append(Edge(module, dst, child.lineno, local, marked(child.lineno)))
            visit(child, local)

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


def _circles(modules: dict[str, Path], edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), module-level edges."""
    succ: dict[str, set[str]] = {m: set() for m in modules}
    for e in edges:
        if not e.local:
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

    for comp in _circles(modules, edges):
        ring = " -> ".join(comp)
        found[f"circle: {ring}"] = f"module-level imports form a circle: {ring}"
    for e in edges:
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
        if e.local and not e.marked:
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
    assert not any("models.b" in k for k in found), found  # marked upward lazy import: allowed
    assert not any(k.startswith("upward: tl_latentlens.lens") for k in found)
    assert any(e.src == "tl_latentlens.lens.c" and e.dst == "tl_latentlens.lens.d" for e in edges)
