"""How an intervention moved the LatentLens neighbours: :meth:`Explanation.diff`.

Two explanations of the same image and prompt (one run plain, one under ``fwd_hooks``, see
:meth:`tl_latentlens.LatentLens.explain`) are compared per visual token and hook:

* ``overlap``: the share of the top-k neighbours (by identity: text hook, sentence, position)
  that both have, ``|A ∩ B| / k``;
* ``rbo``: rank-biased overlap (Webber et al. 2010, extrapolated form, ``p = 0.9``) of the two
  ranked neighbour lists: 1 for the same list in the same order, weighting the top ranks most;
* ``jaccard``: Jaccard index of the two sets of neighbour *tokens* (stripped strings), which
  ignores in which sentence a word was found;
* ``similarity_change``: mean cosine similarity of the after list minus the before list;
* ``entered`` / ``left``: tokens only in the after / before list.

Also here: :func:`describe_fwd_hooks`, the record of an intervention an ``Explanation`` keeps.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from tl_latentlens.bank.results import Neighbour

__all__ = [
    "RBO_P",
    "ExplanationDiff",
    "ExplanationLike",
    "PatchDiff",
    "describe_fwd_hooks",
    "diff_explanations",
    "rank_biased_overlap",
]

logger = logging.getLogger(__name__)

#: Persistence of :func:`rank_biased_overlap`: rank ``d`` weighs ``p ** (d - 1)``, so the top
#: 10 ranks carry about 86 % of the weight.
RBO_P = 0.9


def describe_fwd_hooks(resolved: Sequence[tuple[str, Any]], given: Sequence[Any]) -> list[dict]:
    """The record of an intervention kept in ``Explanation.interventions``: per hook, the key
    the user gave, the hook name it ran at and the function's module and ``__qualname__``.

    Args:
        resolved: ``vlm.resolve_fwd_hooks(fwd_hooks)``.
        given: The ``fwd_hooks`` as passed.

    Example:
        >>> describe_fwd_hooks([("blocks.1.hook_resid_pre", ablate)], [(1, ablate)])
        [{'key': '1', 'hook': 'blocks.1.hook_resid_pre', 'fn': 'ablate', 'module': '__main__'}]
    """
    out = []
    for (name, fn), (key, _) in zip(resolved, given):
        inner = getattr(fn, "func", fn)  # functools.partial: the function it wraps
        out.append(
            {
                "key": str(key),
                "hook": name,
                "fn": str(getattr(inner, "__qualname__", type(inner).__qualname__)),
                "module": str(getattr(inner, "__module__", "") or ""),
            }
        )
    return out


def rank_biased_overlap(a: Sequence[Any], b: Sequence[Any], p: float = RBO_P) -> float:
    """Extrapolated rank-biased overlap of two ranked lists of the same length ``k``.

    ``RBO_ext = X_k/k · p^k + (1-p)/p · Σ_{d=1..k} X_d/d · p^d`` with ``X_d`` the overlap of
    the top ``d`` of both; 1 for equal lists, 0 for disjoint ones.

    Example:
        >>> rank_biased_overlap("abc", "abc"), rank_biased_overlap("abc", "xyz")
        (1.0, 0.0)
    """
    k = min(len(a), len(b))
    if k == 0:
        return 1.0 if len(a) == len(b) else 0.0
    seen_a: set[Any] = set()
    seen_b: set[Any] = set()
    total, x_d = 0.0, 0
    for d in range(1, k + 1):
        x, y = a[d - 1], b[d - 1]
        if x == y:
            x_d += 1
        else:
            x_d += (x in seen_b) + (y in seen_a)
        seen_a.add(x)
        seen_b.add(y)
        total += x_d / d * p**d
    return float(x_d / k * p**k + (1 - p) / p * total)


class ExplanationLike(Protocol):
    """What :func:`diff_explanations` reads of an ``Explanation`` (results.py imports this
    module, so it is typed structurally)."""

    grid: tuple[int, int]
    hooks: list[str]
    k: int
    patches: list[Any]
    image: Any
    interventions: list[dict[str, str]]


def _identity(n: Neighbour) -> tuple[str, int, int]:
    return (n.hook, n.sentence_id, n.position)


@dataclass(frozen=True)
class PatchDiff:
    """How one visual token's LatentLens neighbours moved at one hook.

    Attributes:
        hook: The visual hook.
        layer: Its layer.
        index: Visual-token index.
        row: Patch-grid row.
        col: Patch-grid column.
        image_index: Which image of the prompt.
        overlap: ``|top-k before ∩ top-k after| / k`` by neighbour identity.
        rbo: Rank-biased overlap of the two ranked lists (:func:`rank_biased_overlap`).
        jaccard: Jaccard index of the two sets of neighbour tokens.
        similarity_change: Mean similarity after minus before.
        before: Neighbour tokens before, best first (stripped).
        after: Neighbour tokens after, best first.
        entered: Tokens after that were not before.
        left: Tokens before that are not after.
    """

    hook: str
    layer: float
    index: int
    row: int
    col: int
    image_index: int
    overlap: float
    rbo: float
    jaccard: float
    similarity_change: float
    before: tuple[str, ...]
    after: tuple[str, ...]
    entered: tuple[str, ...]
    left: tuple[str, ...]


@dataclass(frozen=True)
class ExplanationDiff:
    """Per visual token and hook, how the neighbours of ``after`` differ from ``before``'s.

    Attributes:
        grid: ``(rows, cols)`` of the patch grid.
        hooks: Hooks compared, in order.
        k: Neighbours compared per token (the smaller of the two results' ``k``).
        patches: One :class:`PatchDiff` per (hook, visual token).
        before_interventions: ``Explanation.interventions`` of the first result.
        after_interventions: Those of the second.
        image: The image of the first result (in memory only, for pictures).

    Example:
        >>> d = lens.explain(img).diff(lens.explain(img, fwd_hooks=[(4, ablate)]))
        >>> d.summary()                       # one row per layer
        >>> d.to_html("diff.html")
    """

    grid: tuple[int, int]
    hooks: tuple[str, ...]
    k: int
    patches: tuple[PatchDiff, ...]
    before_interventions: tuple[dict, ...] = ()
    after_interventions: tuple[dict, ...] = ()
    image: Any = None

    def at(self, hook: str) -> list[PatchDiff]:
        """The diffs at ``hook``, in token order.

        Raises:
            KeyError: ``hook`` was not compared (the message lists the hooks).
        """
        if hook not in self.hooks:
            raise KeyError(f"hook {hook!r} was not compared; compared hooks: {list(self.hooks)}")
        return [p for p in self.patches if p.hook == hook]

    def mean_overlap(self) -> dict[str, float]:
        """Per hook, the mean top-k overlap over its visual tokens."""
        out = {}
        for hook in self.hooks:
            rows = self.at(hook)
            out[hook] = sum(p.overlap for p in rows) / len(rows) if rows else 1.0
        return out

    def to_dataframe(self) -> Any:
        """One row per (hook, visual token) as a pandas DataFrame: the fields of
        :class:`PatchDiff` (token lists joined by ``" | "``)."""
        import pandas as pd

        rows = []
        for p in self.patches:
            row = {
                "hook": p.hook,
                "layer": p.layer,
                "index": p.index,
                "image_index": p.image_index,
                "row": p.row,
                "col": p.col,
                "overlap": p.overlap,
                "rbo": p.rbo,
                "jaccard": p.jaccard,
                "similarity_change": p.similarity_change,
            }
            for name in ("before", "after", "entered", "left"):
                row[name] = " | ".join(getattr(p, name))
            rows.append(row)
        return pd.DataFrame(rows)

    def summary(self) -> Any:
        """One row per hook (layer order): mean overlap, RBO, Jaccard and similarity change,
        the share of visual tokens whose top neighbour changed, and the tokens that entered
        most often.

        Example:
            >>> print(diff.summary().to_string(index=False))
        """
        import pandas as pd

        rows = []
        for hook in self.hooks:
            ps = self.at(hook)
            n = max(1, len(ps))
            entered: dict[str, int] = {}
            for p in ps:
                for t in p.entered:
                    entered[t] = entered.get(t, 0) + 1
            common = sorted(entered.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
            rows.append(
                {
                    "hook": hook,
                    "layer": ps[0].layer if ps else float("nan"),
                    "patches": len(ps),
                    "overlap": sum(p.overlap for p in ps) / n,
                    "rbo": sum(p.rbo for p in ps) / n,
                    "jaccard": sum(p.jaccard for p in ps) / n,
                    "similarity_change": sum(p.similarity_change for p in ps) / n,
                    "top1_changed": sum(p.before[:1] != p.after[:1] for p in ps) / n,
                    "entered": ", ".join(f"{t}×{c}" for t, c in common),
                }
            )
        return pd.DataFrame(rows).sort_values("layer", kind="stable").reset_index(drop=True)

    def to_html(self, path: str | os.PathLike | None = None, **kwargs: Any) -> str:
        """A small standalone offline page: per layer the mean overlap, and the patch grid
        coloured by overlap with the before/after words (see :func:`tl_latentlens.render.diff.
        diff_html`); written to ``path`` if given."""
        # lazy: render sits above lens and imports it
        from tl_latentlens.render.diff import diff_html

        return diff_html(self, path=path, **kwargs)


def diff_explanations(before: ExplanationLike, after: ExplanationLike) -> ExplanationDiff:
    """Compare two explanations of the same visual tokens (see the module docstring).

    Hooks and visual tokens present in both are compared; ``k`` is the smaller of the two.

    Raises:
        ValueError: The two have different patch grids or no (hook, visual token) in common.

    Example:
        >>> diff = diff_explanations(plain, ablated)
        >>> diff.mean_overlap()["blocks.0.hook_resid_pre"]
        1.0
    """
    if tuple(before.grid) != tuple(after.grid):
        raise ValueError(
            f"the explanations have different patch grids ({tuple(before.grid)} vs "
            f"{tuple(after.grid)}): compare runs of the same image and prompt"
        )
    theirs = {(p.hook, p.index): p for p in after.patches}
    hooks = [h for h in before.hooks if h in set(after.hooks)]
    k = min(before.k, after.k)
    out = []
    for hook in hooks:
        for p in sorted((p for p in before.patches if p.hook == hook), key=lambda p: p.index):
            q = theirs.get((hook, p.index))
            if q is None:
                continue
            a, b = p.latent[:k], q.latent[:k]
            ids_a, ids_b = [_identity(n) for n in a], [_identity(n) for n in b]
            tok_a = tuple(n.token.strip() for n in a)
            tok_b = tuple(n.token.strip() for n in b)
            set_a, set_b = set(tok_a), set(tok_b)
            union = set_a | set_b
            sim_a = sum(n.similarity for n in a) / len(a) if a else 0.0
            sim_b = sum(n.similarity for n in b) / len(b) if b else 0.0
            out.append(
                PatchDiff(
                    hook=hook,
                    layer=p.layer,
                    index=p.index,
                    row=p.row,
                    col=p.col,
                    image_index=p.image_index,
                    overlap=len(set(ids_a) & set(ids_b)) / max(1, len(ids_a)),
                    rbo=rank_biased_overlap(ids_a, ids_b),
                    jaccard=len(set_a & set_b) / len(union) if union else 1.0,
                    similarity_change=float(sim_b - sim_a),
                    before=tok_a,
                    after=tok_b,
                    entered=tuple(dict.fromkeys(t for t in tok_b if t not in set_a)),
                    left=tuple(dict.fromkeys(t for t in tok_a if t not in set_b)),
                )
            )
    if not out:
        raise ValueError(
            "the two explanations share no (hook, visual token): explain the same hooks and "
            f"patches (hooks {before.hooks} vs {after.hooks})"
        )
    return ExplanationDiff(
        grid=tuple(before.grid),
        hooks=tuple(dict.fromkeys(p.hook for p in out)),
        k=k,
        patches=tuple(out),
        before_interventions=tuple(getattr(before, "interventions", ()) or ()),
        after_interventions=tuple(getattr(after, "interventions", ()) or ()),
        image=before.image,
    )
