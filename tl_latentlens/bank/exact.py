"""Exact top-k cosine search over one hook's stored vectors, on the CPU or a torch device.

One matrix product per chunk for all queries of a call (float32 accumulation), chunks taken
from the resident decoded copy when there is one (:meth:`HookVectors.resident`) or decoded
from the memory-mapped file otherwise. The same code runs on every device: on ``cuda`` the
chunks are moved to the device (or the whole decoded hook is kept there when asked).
Ties are broken by the lower row, so results do not depend on chunking or device.
"""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Float, Int

from tl_latentlens.bank.vectors import CHUNK_ROWS, HookVectors

__all__ = ["exact_rows", "exact_top_k", "top_k_sorted"]

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
            ``device`` under the key ``"vectors"`` and reused by later calls.

    Returns:
        ``(similarities, rows)`` ``[m, k]``, most similar first.
    """
    dev = torch.device(device)
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).to(dev)
    m, k = q.shape[0], min(k, hv.n)
    best_s = torch.empty((m, 0), dtype=torch.float32, device=dev)
    best_r = torch.empty((m, 0), dtype=torch.long, device=dev)
    # Blocks are [d, c] (stored vectors as columns) when resident, [c, d] rows when streamed.
    if device_cache is not None and dev.type != "cpu":
        if "columns" not in device_cache:
            device_cache["columns"] = [(s, torch.from_numpy(b).to(dev)) for s, b in hv.resident()]
        blocks = ((s, b, True) for s, b in device_cache["columns"])
    elif hv.is_resident and dev.type == "cpu":
        blocks = ((s, torch.from_numpy(b), True) for s, b in hv.resident())
    else:
        blocks = ((s, torch.from_numpy(b).to(dev), False) for s, b in hv.chunks(True, chunk_rows))
    for start, block, columns in blocks:
        sims = q @ block if columns else q @ block.T
        kk = min(k, sims.shape[1])
        v, i = torch.topk(sims, kk, dim=1, sorted=False)
        best_s = torch.cat([best_s, v], dim=1)
        best_r = torch.cat([best_r, i + start], dim=1)
        if best_s.shape[1] > 4 * k:
            best_s, best_r = top_k_sorted(best_s, best_r, k)
    best_s, best_r = top_k_sorted(best_s, best_r, k)
    return best_s.cpu().numpy(), best_r.cpu().numpy().astype(np.int64)


def exact_rows(
    hv: HookVectors,
    queries: Float[np.ndarray, "m d"],
    candidates: list[np.ndarray],
    k: int,
) -> tuple[Sims, Rows]:
    """Exact re-rank: top-``k`` of each query among its own candidate rows.

    All candidates of the call are decoded once (their union), multiplied by all queries in
    one product, and each query keeps only its own candidates. A query with fewer than ``k``
    candidates is padded with similarity ``-inf`` and row ``-1``.
    """
    m = queries.shape[0]
    union, inverse = np.unique(np.concatenate(candidates), return_inverse=True)
    block = hv.decode(union)
    sims = (
        torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
        @ torch.from_numpy(block).T
    )
    mask = torch.zeros((m, union.shape[0]), dtype=torch.bool)
    owner = np.repeat(np.arange(m), [c.shape[0] for c in candidates])
    mask[torch.from_numpy(owner), torch.from_numpy(inverse.reshape(-1))] = True
    sims = sims.masked_fill(~mask, float("-inf"))
    # a few spare places before the (row-ordered) sort: exact ties at the k-th place are rare
    # with identical vectors stored once, and sorting all candidates would cost more
    kk = min(k + 8, sims.shape[1])
    v, i = torch.topk(sims, kk, dim=1)
    rows = torch.from_numpy(union)[i]
    s, r = top_k_sorted(v, rows, k)
    r = r.masked_fill(torch.isinf(s), -1)
    return s.numpy(), r.numpy().astype(np.int64)
