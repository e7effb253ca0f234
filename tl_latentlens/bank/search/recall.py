"""Tie-aware recall@k of an approximate search against exact search."""

from __future__ import annotations

import numpy as np
from jaxtyping import Float

__all__ = ["tie_aware_recall", "tie_aware_recall_per_query"]


def tie_aware_recall(
    approx_sims: Float[np.ndarray, "m k"],
    exact_sims: Float[np.ndarray, "m k"],
    tol: float = 1e-6,
) -> float:
    """Mean share of approximate results at least as similar as the exact ``k``-th one.

    A result tied with the exact ``k``-th neighbour is as good as any of the tied vectors, so
    it counts (plain id-based recall would punish ties at random). Both arguments must be
    similarities computed from the same stored vectors.

    Example:
        >>> tie_aware_recall(np.array([[0.9, 0.5]]), np.array([[0.9, 0.8]]))
        0.5
    """
    if approx_sims.size == 0:
        return 1.0
    return float(tie_aware_recall_per_query(approx_sims, exact_sims, tol).mean())


def tie_aware_recall_per_query(
    approx_sims: Float[np.ndarray, "m k"],
    exact_sims: Float[np.ndarray, "m k"],
    tol: float = 1e-6,
) -> Float[np.ndarray, " m"]:
    """:func:`tie_aware_recall` of each query."""
    if approx_sims.shape != exact_sims.shape:
        raise ValueError(f"shape mismatch {approx_sims.shape} != {exact_sims.shape}")
    return (approx_sims >= exact_sims[:, -1:] - tol).mean(axis=1)
