"""Loading hnswlib index files safely (the routes' sample index, :mod:`~.routes`).

hnswlib parses its file without bounds checks, so every file is validated first
(:func:`~tl_latentlens.bank.search.hnsw_file.validate_hnsw_file`): a hostile or corrupted file gets a
clear :class:`~tl_latentlens.bank.errors.CorruptBankError`, never a crash.
"""

from __future__ import annotations

import os

import hnswlib

from tl_latentlens.bank.search.hnsw_file import validate_hnsw_file

__all__ = ["load_hnsw"]


def load_hnsw(
    path: str | os.PathLike, dim: int, n: int, threads: int, space: str = "cosine"
) -> hnswlib.Index:
    """Validate and load an hnswlib index of ``n`` vectors of ``dim`` dimensions.

    Example:
        >>> index = load_hnsw("hooks/blocks.0.hook_resid_pre/routes/samples.hnsw", 576, 8000, 2,
        ...                   space="ip")
    """
    validate_hnsw_file(path, dim=dim, n=n)  # hnswlib has no bounds checks: never crash on a file
    index = hnswlib.Index(space=space, dim=dim)
    index.load_index(str(path), max_elements=max(n, 1))
    index.set_num_threads(threads)
    return index
