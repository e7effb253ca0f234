"""Exact top-k cosine search over one hook's stored vectors, on the CPU or a torch device.

One matrix product per block for all queries of a call (float32 accumulation), blocks taken
as views of the resident decoded copy when there is one (:meth:`HookVectors.resident`) or
decoded from the memory-mapped file otherwise. Rows and queries are multiplied in the hook's
search space (:meth:`HookVectors.to_search`: the identity except for ``int8_rotated`` and
``int8_pca``, whose stored rows are never rotated back). On the CPU the products run in numpy's
BLAS;
on a device (or on the CPU with a device cache) the same blocks run through torch, moved to
the device (or the whole decoded hook is kept there when asked).
Ties are broken by the lower row, so results do not depend on chunking or device.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeVar

import numpy as np
import torch
from jaxtyping import Float, Int

from tl_latentlens.bank.vectors import CHUNK_ROWS, RESIDENT_BLOCK, HookVectors

__all__ = ["block_top_k", "candidate_union", "exact_rows", "exact_top_k", "top_k_sorted"]

ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, torch.Tensor)
Sims = Float[np.ndarray, "m k"]
Rows = Int[np.ndarray, "m k"]


def top_k_sorted(
    sims: torch.Tensor, rows: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best of each row of ``sims`` (with matching ``rows``), most similar first,
    equal similarities ordered by the lower row."""
    k = min(k, sims.shape[1])
    # Sort by row first, then stably by similarity: ties keep ascending row order.
    by_row = torch.argsort(rows, dim=1, stable=True)
    sims, rows = torch.gather(sims, 1, by_row), torch.gather(rows, 1, by_row)
    order = torch.argsort(sims, dim=1, descending=True, stable=True)[:, :k]
    return torch.gather(sims, 1, order), torch.gather(rows, 1, order)


def exact_top_k(
    hv: HookVectors,
    queries: Float[np.ndarray, "m d"],
    k: int,
    *,
    device: str | torch.device = "cpu",
    chunk_rows: int = CHUNK_ROWS,
    device_cache: dict[str, torch.Tensor] | None = None,
) -> tuple[Sims, Rows]:
    """Exact top-``k`` of L2-normalised float32 queries over every stored vector of ``hv``.

    Args:
        hv: The hook's vectors.
        queries: ``[m, d]`` unit rows.
        k: Neighbours per query (clipped to the number of stored vectors).
        device: Where the products run.
        chunk_rows: Rows multiplied at once.
        device_cache: When given (a dict owned by the caller), the decoded hook is kept on
            ``device`` under the key ``"rows"`` and reused by later calls; this is the torch
            path every device runs (the CPU without a cache multiplies in numpy).

    Returns:
        ``(similarities, rows)`` ``[m, k]``, most similar first.
    """
    dev = torch.device(device)
    q_np = hv.to_search(queries)
    q = torch.from_numpy(q_np).to(dev)
    m, k = q.shape[0], min(k, hv.n)
    best_s = torch.empty((m, 0), dtype=torch.float32, device=dev)
    best_r = torch.empty((m, 0), dtype=torch.long, device=dev)
    if dev.type == "cpu" and device_cache is None:
        # numpy's BLAS for the product: 1.4x less CPU time than torch's on the CPUs we
        # measured (49 x 576 @ 576 x 262,144, one thread: 190 vs 270 ms); torch.topk after.
        src = _views(hv.resident(), m) if hv.is_resident else hv.search_chunks(chunk_rows)
        blocks = ((s, _product(q_np, b)) for s, b in src)
    else:
        if device_cache is not None:
            if "rows" not in device_cache:
                device_cache["rows"] = torch.from_numpy(hv.resident()).to(dev)
            src_t = _views(device_cache["rows"], m)
        else:
            src_t = ((s, torch.from_numpy(b).to(dev)) for s, b in hv.search_chunks(chunk_rows))
        blocks = ((s, q @ b.T) for s, b in src_t)
    for start, sims in blocks:
        kk = min(k, sims.shape[1])
        v, i = block_top_k(sims, kk) if sims.device.type == "cpu" else torch.topk(sims, kk, dim=1)
        best_s = torch.cat([best_s, v], dim=1)
        best_r = torch.cat([best_r, i + start], dim=1)
        if best_s.shape[1] > 4 * k:
            best_s, best_r = top_k_sorted(best_s, best_r, k)
    best_s, best_r = top_k_sorted(best_s, best_r, k)
    return best_s.cpu().numpy(), best_r.cpu().numpy().astype(np.int64)


#: Columns per group whose maximum :func:`block_top_k` looks at first. Measured on a
#: [490, 46392] block of real similarities (visual queries, 2 threads): k=5 in 13.6 ms against
#: 35 ms for ``torch.topk`` (groups of 16: 40 ms, 64: 10 ms, but 83 against 80 ms for k=200).
TOPK_GROUP = 32


def block_top_k(
    sims: Float[torch.Tensor, "m n"], k: int
) -> tuple[Float[torch.Tensor, "m k"], Int[torch.Tensor, "m k"]]:
    """The ``k`` largest similarities of each row with their columns (lower columns first
    among equal values, as :func:`top_k_sorted` orders them), in a fraction of
    ``torch.topk``'s time on the CPU.

    Each row's columns are taken in groups of :data:`TOPK_GROUP`. If ``t`` is the row's
    ``k``-th largest group maximum, ``k`` groups hold a value >= ``t``, so the row's ``k``-th
    largest value is >= ``t`` and each of its ``k`` largest values (ties included) lies in a
    group whose maximum is >= ``t``: only those groups' columns (and the ragged tail) are
    ranked. A block too narrow for groups to pay is ranked whole.

    Example:
        >>> v, i = block_top_k(torch.randn(4, 1000), 5)
    """
    m, n = sims.shape
    groups = n // TOPK_GROUP
    if groups <= 2 * (k + 1):
        return top_k_sorted(sims, torch.arange(n).expand(m, -1), k)
    head = groups * TOPK_GROUP
    maxima = sims[:, :head].reshape(m, groups, TOPK_GROUP).amax(dim=2)
    t = torch.topk(maxima, k, dim=1, sorted=True).values[:, -1:]
    # every group at or above t (more than k where maxima tie at t)
    wide = int((maxima >= t).sum(dim=1).max())
    which = torch.topk(maxima, wide, dim=1, sorted=False).indices
    picked = (which[:, :, None] * TOPK_GROUP + torch.arange(TOPK_GROUP)).reshape(m, -1)
    if head < n:  # the ragged tail is always ranked
        picked = torch.cat([picked, torch.arange(head, n).expand(m, -1)], dim=1)
    return top_k_sorted(torch.gather(sims, 1, picked), picked, k)


def _product(q: np.ndarray, block: np.ndarray) -> torch.Tensor:
    out = np.empty((q.shape[0], block.shape[0]), dtype=np.float32)
    np.matmul(q, block.T, out=out)
    return torch.from_numpy(out)


#: Largest ``[queries, rows]`` similarity block (float32 elements: 128 MiB).
MAX_SIMS = 1 << 25


def _views(rows: ArrayOrTensor, m: int) -> Iterator[tuple[int, ArrayOrTensor]]:
    """Row blocks (views) of the resident hook, smaller for big query batches so the
    similarity block stays within :data:`MAX_SIMS`."""
    step = max(4096, min(RESIDENT_BLOCK, MAX_SIMS // max(m, 1)))
    for start in range(0, rows.shape[0], step):
        yield start, rows[start : start + step]


def candidate_union(candidates: Int[np.ndarray, "m c"], n: int) -> Int[np.ndarray, " u"]:
    """Sorted distinct valid rows (``-1`` pads left out) of ``candidates`` over a hook of ``n``
    stored vectors: a mask over the hook instead of a hash-based :func:`numpy.unique` (3x
    cheaper for the ~100k candidates of a query group)."""
    mask = np.zeros(n + 1, dtype=bool)
    mask[np.asarray(candidates).ravel()] = True  # a -1 pad marks the extra last slot
    mask[n] = False
    return np.flatnonzero(mask)


def exact_rows(
    hv: HookVectors,
    queries: Float[np.ndarray, "m d"],
    candidates: Int[np.ndarray, "m c"],
    k: int,
    union: Int[np.ndarray, " u"] | None = None,
) -> tuple[Sims, Rows]:
    """Exact re-rank: top-``k`` of each query among its own candidate rows.

    ``candidates`` holds each query's rows (``-1`` pads; repeats are harmless). All candidates
    of the call are decoded once (their union) and multiplied by all queries in one product;
    each query then reads only its own candidates' similarities. A query with fewer than
    ``k`` distinct candidates is padded with similarity ``-inf`` and row ``-1``. Ties are
    ordered by the lower row, as in :func:`exact_top_k`. ``union`` (sorted distinct valid
    rows of ``candidates``), when the caller has it, is not computed again.

    Written in numpy: these are small arrays, and small torch operations with several threads
    on a busy CPU cost 10-20x more (measured: 31 ms vs 7 ms for 49 queries).
    """
    m = queries.shape[0]
    rows = np.sort(np.asarray(candidates, dtype=np.int64).reshape(m, -1), axis=1)
    rows[:, 1:][rows[:, 1:] == rows[:, :-1]] = -1  # a row listed twice counts once
    if union is None:
        union = candidate_union(rows, hv.n)
    sims = np.empty((m, union.size + 1), dtype=np.float32)
    np.matmul(hv.to_search(queries), hv.search_rows(union).T, out=sims[:, :-1])
    sims[:, -1] = -np.inf  # the column every pad reads
    # stored row -> its column in ``sims``: a lookup table over the hook (a pad, -1, reads its
    # last slot: the -inf column); 3x cheaper than a binary search of the union per candidate
    col_of = np.full(hv.n + 1, union.size, dtype=np.int32)
    col_of[union] = np.arange(union.size, dtype=np.int32)
    cand = np.take_along_axis(sims, col_of[rows], axis=1)
    kk = min(k + 8, cand.shape[1])  # spare places so ties at the k-th place sort by row
    part = np.argpartition(-cand, kk - 1, axis=1)[:, :kk]
    s, r = np.take_along_axis(cand, part, 1), np.take_along_axis(rows, part, 1)
    order = np.lexsort((r, -s), axis=-1)[:, : min(k, kk)]
    s, r = np.take_along_axis(s, order, 1), np.take_along_axis(r, order, 1)
    r[np.isinf(s)] = -1
    if s.shape[1] < k:  # fewer candidate places than k
        pad = k - s.shape[1]
        s = np.pad(s, ((0, 0), (0, pad)), constant_values=-np.inf)
        r = np.pad(r, ((0, 0), (0, pad)), constant_values=-1)
    return s, r
