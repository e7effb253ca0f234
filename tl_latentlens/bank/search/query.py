"""Query preparation and cross-hook merging for :meth:`~tl_latentlens.bank.Bank.search`."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from tl_latentlens.bank.errors import BankQueryError

__all__ = ["merge_top_k", "prepare_queries"]


def prepare_queries(vectors: Any, d_model: int) -> np.ndarray:
    """Torch/numpy ``[n, d]`` or ``[d]`` -> L2-normalised float32 ``[n, d]``.

    Each row is divided by its largest absolute component before its norm is taken (in
    float64), so very large (``1e19``, ``1e300``) or tiny components neither overflow nor
    underflow: only the direction matters for cosine similarity.

    Raises:
        BankQueryError: Wrong rank or dimension, non-finite values or an all-zero row.

    Example:
        >>> prepare_queries(torch.ones(4), 4)
        array([[0.5, 0.5, 0.5, 0.5]], dtype=float32)
    """
    if isinstance(vectors, torch.Tensor):
        q = vectors.detach().to("cpu", torch.float64).numpy()
    else:
        try:
            q = np.asarray(vectors, dtype=np.float64)
        except (TypeError, ValueError, OverflowError) as err:
            raise BankQueryError(f"queries must be a tensor or array of numbers: {err}") from err
    if q.ndim == 1:
        q = q[None, :]
    if q.ndim != 2:
        raise BankQueryError(f"queries must be [n, d] or [d], got shape {tuple(q.shape)}")
    if q.shape[1] != d_model:
        raise BankQueryError(
            f"query dimension {q.shape[1]} does not match the bank's d_model {d_model}"
        )
    if not np.isfinite(q).all():
        raise BankQueryError("queries contain NaN or infinite values")
    if q.shape[0] == 0:
        return np.zeros((0, d_model), dtype=np.float32)
    peak = np.abs(q).max(axis=1, keepdims=True)
    if (peak == 0).any():
        raise BankQueryError("a query vector is all zeros (no direction to compare)")
    q = q / peak  # every component now in [-1, 1]: the norm below cannot overflow
    return np.ascontiguousarray(q / np.linalg.norm(q, axis=1, keepdims=True), dtype=np.float32)


def merge_top_k(
    per_hook: list[tuple[np.ndarray, np.ndarray]], k: int
) -> list[list[tuple[int, int, float]]]:
    """Merge per-hook ``(similarities, rows)`` ``[n_query, k_h]`` into the overall top ``k``.

    Returns:
        Per query, ``(hook index, row, similarity)`` most similar first (ties keep hook order).
    """
    sims = np.concatenate([s for s, _ in per_hook], axis=1)
    rows = np.concatenate([r for _, r in per_hook], axis=1)
    which = np.concatenate([np.full(r.shape, h) for h, (_, r) in enumerate(per_hook)], axis=1)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return [
        [(int(which[i, j]), int(rows[i, j]), float(sims[i, j])) for j in order[i]]
        for i in range(sims.shape[0])
    ]
