"""Mid-layer leap: which text layer holds the best matches of each visual layer.

The paper finds that visual tokens entering the LM (layer 0) match *middle* text layers best.
Given an :class:`~tl_latentlens.lens.results.Explanation` from a cross-layer search, this counts,
per visual hook, in which text layer its top-1 neighbour lives, and the mean similarity of those
top-1 matches.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tl_latentlens.hooks import layer_of

__all__ = ["LeapTable", "mid_layer_leap"]


@dataclass(frozen=True)
class LeapTable:
    """Visual layer x text layer statistics of top-1 neighbours.

    Attributes:
        visual_layers: Row labels (layers of the visual hooks), ascending.
        text_layers: Column labels (layers of the bank hooks searched), ascending.
        counts: ``counts[i][j]``: visual tokens at visual layer i whose top-1 neighbour is in text
            layer j.
        mean_similarity: Mean cosine of those top-1 neighbours (NaN where the count is 0).
    """

    visual_layers: list[float]
    text_layers: list[float]
    counts: list[list[int]]
    mean_similarity: list[list[float]]

    @property
    def shares(self) -> list[list[float]]:
        """``counts`` normalised per visual layer (rows sum to 1)."""
        return [[c / max(1, sum(row)) for c in row] for row in self.counts]

    @property
    def best_text_layer(self) -> dict[float, float]:
        """Per visual layer, the text layer holding the most top-1 neighbours."""
        return {
            v: self.text_layers[max(range(len(row)), key=row.__getitem__)]
            for v, row in zip(self.visual_layers, self.counts)
        }

    def to_dataframe(self, value: str = "counts") -> Any:
        """pandas DataFrame (rows: visual layer, columns: text layer) of ``counts``,
        ``shares`` or ``mean_similarity``."""
        import pandas as pd

        if value not in ("counts", "shares", "mean_similarity"):
            raise ValueError("value must be 'counts', 'shares' or 'mean_similarity'")
        df = pd.DataFrame(getattr(self, value), index=self.visual_layers, columns=self.text_layers)
        df.index.name, df.columns.name = "visual layer", "text layer"
        return df


def mid_layer_leap(explanations: Any | Iterable[Any]) -> LeapTable:
    """Count top-1 neighbours per (visual layer, text layer) over one or more explanations.

    Args:
        explanations: An ``Explanation`` or an iterable of them (e.g. one per image).

    Example:
        >>> table = mid_layer_leap(result)
        >>> table.to_dataframe("shares")
    """
    items = [explanations] if hasattr(explanations, "patches") else list(explanations)
    if not items:
        raise ValueError("no explanations given")
    text_layers: set[float] = set()
    acc: dict[tuple[float, float], list[float]] = {}
    visual_layers: set[float] = set()
    for exp in items:
        for p in exp.patches:
            visual_layers.add(p.layer)
            if not p.latent:
                continue
            top = p.latent[0]
            text_layers.add(top.layer)
            acc.setdefault((p.layer, top.layer), []).append(top.similarity)
        text_layers.update(layer_of(h) for h in exp.bank_hooks)
    vl, tl = sorted(visual_layers), sorted(text_layers)
    counts = [[len(acc.get((v, t), [])) for t in tl] for v in vl]
    means = [[sum(s) / len(s) if (s := acc.get((v, t))) else float("nan") for t in tl] for v in vl]
    return LeapTable(visual_layers=vl, text_layers=tl, counts=counts, mean_similarity=means)
