"""Query preparation and cross-hook merging for :meth:`~tl_latentlens.bank.Bank.search`."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from tl_latentlens.bank.errors import BankQueryError

__all__ = ["merge_top_k", "prepare_queries"]


def prepare_queries(vectors: Any, d_model: int) -> np.ndarray:
    """Torch/numpy ``[n, d]`` or ``[d]`` -> L2-normalised float32 ``[n, d]``.

    Raises:
        BankQueryError: Wrong rank or dimension, non-finite values or an all-zero row.

    Example:
        >>> prepare_queries(torch.ones(4), 4)
        array([[0.5, 0.5, 0.5, 0.5]], dtype=float32)
    """
    if isinstance(vectors, torch.Tensor):
        q = vectors.detach().to("cpu", torch.float32).numpy()
    else:
        try:
            q = np.asarray(vectors, dtype=np.float32)
        except (TypeError, ValueError) as err:
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
    norms = np.linalg.norm(q, axis=1, keepdims=True)
    if (norms == 0).any():
        raise BankQueryError("a query vector is all zeros (no direction to compare)")
    return np.ascontiguousarray(q / norms, dtype=np.float32)


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
