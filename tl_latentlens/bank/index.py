"""Nearest-neighbour search over one hook's stored vectors: hnswlib (approximate) and exact.

Both return cosine similarities (descending) and row numbers of the entries table. Exact search
is a chunked matrix product over the memory-mapped stored vectors divided by their stored
norms, so it never loads a whole hook into memory.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import hnswlib
import numpy as np
import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm

from tl_latentlens.bank import codec
from tl_latentlens.bank.hnsw_file import validate_hnsw_file

__all__ = ["build_hnsw", "exact_search", "hnsw_search", "load_hnsw"]

logger = logging.getLogger(__name__)

#: Rows decoded and multiplied at once by exact search / added at once to an index.
CHUNK_ROWS = 32768

Sims = Float[np.ndarray, "n_query k"]
Rows = Int[np.ndarray, "n_query k"]


def build_hnsw(
    vectors: np.ndarray,
    scales: np.ndarray | None,
    dtype: str,
    path: str | os.PathLike,
    *,
    M: int,
    ef_construction: int,
    seed: int,
    threads: int,
    progress: bool = True,
    desc: str = "bank: hnsw index",
) -> None:
    """Build a cosine hnswlib index over stored vectors (labels = row numbers), saved atomically.

    Example:
        >>> build_hnsw(vecs, None, "float16", "index.hnsw", M=16, ef_construction=200,
        ...            seed=42, threads=2)
    """
    n, dim = vectors.shape
    index = hnswlib.Index(space="cosine", dim=dim)
    index.init_index(max_elements=max(n, 1), M=M, ef_construction=ef_construction, random_seed=seed)
    index.set_num_threads(threads)
    with tqdm(total=n, desc=desc, unit="vec", disable=not progress) as bar:
        for start in range(0, n, CHUNK_ROWS):
            stop = min(start + CHUNK_ROWS, n)
            block = codec.decode(
                vectors[start:stop], None if scales is None else scales[start:stop], dtype
            )
            index.add_items(block, np.arange(start, stop), num_threads=threads)
            bar.update(stop - start)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    index.save_index(str(tmp))
    os.replace(tmp, path)


def load_hnsw(path: str | os.PathLike, dim: int, n: int, threads: int) -> hnswlib.Index:
    """Load an index written by :func:`build_hnsw` (check its checksum first: hnswlib does not)."""
    validate_hnsw_file(path, dim=dim, n=n)  # hnswlib has no bounds checks: never crash on a file
    index = hnswlib.Index(space="cosine", dim=dim)
    index.load_index(str(path), max_elements=max(n, 1))
    index.set_num_threads(threads)
    return index


def hnsw_search(
    index: hnswlib.Index, queries: np.ndarray, k: int, ef_search: int, threads: int
) -> tuple[Sims, Rows]:
    """Approximate top-``k`` (``ef = max(ef_search, k)``) of L2-normalised float32 queries."""
    index.set_ef(max(ef_search, k))
    labels, dist = index.knn_query(queries, k=k, num_threads=threads)
    return (1.0 - dist).astype(np.float32), labels.astype(np.int64)


def exact_search(
    vectors: np.ndarray,
    scales: np.ndarray | None,
    norms: np.ndarray,
    dtype: str,
    queries: np.ndarray,
    k: int,
) -> tuple[Sims, Rows]:
    """Exact top-``k`` cosine similarity by a chunked product over (memory-mapped) vectors.

    Args:
        vectors: Stored vectors ``[n, d]`` (any codec dtype).
        scales: Per-row scales (float8 codec) or ``None``.
        norms: Norms of the decoded rows ``[n]``.
        dtype: Codec name.
        queries: L2-normalised float32 ``[n_query, d]``.
        k: Neighbours per query (``<= n``).
    """
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    best_v = torch.empty((q.shape[0], 0), dtype=torch.float32)
    best_i = torch.empty((q.shape[0], 0), dtype=torch.long)
    n = vectors.shape[0]
    for start in range(0, n, CHUNK_ROWS):
        stop = min(start + CHUNK_ROWS, n)
        block = codec.decode(
            vectors[start:stop], None if scales is None else scales[start:stop], dtype
        )
        inv = 1.0 / np.maximum(np.asarray(norms[start:stop], dtype=np.float32), 1e-30)
        sims = (q @ torch.from_numpy(block).T) * torch.from_numpy(inv)[None, :]
        v, i = torch.topk(sims, min(k, stop - start), dim=1)
        best_v = torch.cat([best_v, v], dim=1)
        best_i = torch.cat([best_i, i + start], dim=1)
        if best_v.shape[1] > k:
            best_v, pick = torch.topk(best_v, k, dim=1)
            best_i = torch.gather(best_i, 1, pick)
    order = torch.argsort(best_v, dim=1, descending=True, stable=True)
    return (
        torch.gather(best_v, 1, order).numpy(),
        torch.gather(best_i, 1, order).numpy().astype(np.int64),
    )
