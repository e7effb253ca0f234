"""Hubness of a lens's answers: how often the same few words are everybody's nearest neighbour.

For every layer, the top-1 candidate of each judged patch is one *slot*; the k-occurrence of a
word is the number of slots it fills. A hub-free lens spreads the slots over many words; a hubby
one gives "kangaroo" to half the image. Reported per layer: slots, distinct words, the largest
k-occurrence, the share of slots taken by the 5 most frequent words, and those words.

Example:
    >>> table = hubness("study/judgements.jsonl")
    >>> table[["layer", "slots", "top5_share"]]
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from typing import Any

from tl_latentlens.evaluate.matching import normalise_word
from tl_latentlens.evaluate.records import latest_records

__all__ = ["hubness", "hubness_of_words"]


def hubness_of_words(words: Iterable[str], top: int = 5) -> dict[str, Any]:
    """Hubness statistics of one layer's top-1 words (normalised, empty words kept as ``""``).

    Example:
        >>> hubness_of_words(["dog", "dog", "cat", "sun"])["top5_share"]
        100.0
    """
    counts = Counter(normalise_word(w) for w in words)
    slots = sum(counts.values())
    common = counts.most_common(top)
    return {
        "slots": slots,
        "distinct": len(counts),
        "max_k_occurrence": common[0][1] if common else 0,
        f"top{top}_share": 100.0 * sum(c for _, c in common) / slots if slots else float("nan"),
        "hubs": ", ".join(f"{w or '∅'}×{c}" for w, c in common),
    }


def hubness(
    records: str | os.PathLike | Iterable[dict[str, Any]], lens: str = "latent", top: int = 5
) -> Any:
    """Per-layer hubness of ``lens``'s top-1 words in study records.

    Args:
        records: A ``judgements.jsonl`` path or its records (the latest per key counts).
        lens: ``"latent"``, ``"logit"`` or ``"embedding"``.
        top: How many most frequent words the share is taken over.

    Returns:
        pandas DataFrame: ``layer``, ``slots``, ``distinct``, ``max_k_occurrence``,
        ``top<top>_share`` (percent), ``hubs`` (``word×count``, most frequent first).
    """
    import pandas as pd

    latest = latest_records(records)
    per_layer: dict[float, list[str]] = {}
    for (_, _, layer, lens_), rec in sorted(latest.items()):
        if lens_ == lens and rec.get("words"):
            per_layer.setdefault(layer, []).append(rec["words"][0])
    rows = [
        {"layer": int(x) if float(x).is_integer() else x, **hubness_of_words(w, top)}
        for x, w in sorted(per_layer.items())
    ]
    cols = ["layer", "slots", "distinct", "max_k_occurrence", f"top{top}_share", "hubs"]
    return pd.DataFrame(rows, columns=cols)
