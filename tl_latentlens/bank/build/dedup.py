"""Group identical stored rows of a hook, so each distinct vector is stored and searched once.

At the input layer a token's residual is its embedding whatever its context, and shared
prefixes give identical vectors at every layer; storing them once saves disk and RAM, keeps
the search structures small and makes "top-k" mean k distinct vectors.

Rows are compared by their exact bytes: each row gets a 64-bit hash (a fixed random linear
combination of its 64-bit words), rows are grouped by hash, and every row is then compared
byte for byte with its group's first row, so a hash collision can never merge different rows.
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Int

__all__ = ["group_identical", "occurrence_table"]

_CHUNK = 65536


def _row_hashes(block: np.ndarray, mult: np.ndarray) -> np.ndarray:
    raw = np.ascontiguousarray(block).view(np.uint8).reshape(block.shape[0], -1)
    pad = (-raw.shape[1]) % 8
    if pad:
        raw = np.pad(raw, ((0, 0), (0, pad)))
    words = raw.view("<u8")
    with np.errstate(over="ignore"):
        h = (words * mult[: words.shape[1]]).sum(axis=1, dtype=np.uint64)
        h ^= h >> np.uint64(31)
    return h


def group_identical(
    rows: np.ndarray,
) -> tuple[Int[np.ndarray, " n_vectors"], Int[np.ndarray, " n"]]:
    """Find identical rows of ``rows`` ``[n, d]`` (any dtype, e.g. a memory map).

    Returns:
        ``(first, vector_of_row)``: the row index of each distinct vector's first occurrence
        (ascending, so distinct vectors keep the rows' order) and, for every row, the index of
        its distinct vector.

    Example:
        >>> group_identical(np.array([[1, 2], [3, 4], [1, 2]], np.float16))
        (array([0, 1]), array([0, 1, 0]))
    """
    n = rows.shape[0]
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    width = (rows.shape[1] * rows.dtype.itemsize + 7) // 8
    mult = np.random.default_rng(0x5EED).integers(1, 2**63, size=width, dtype=np.uint64) | 1
    hashes = np.concatenate([_row_hashes(rows[s : s + _CHUNK], mult) for s in range(0, n, _CHUNK)])
    _, first, group = np.unique(hashes, return_index=True, return_inverse=True)
    group = group.reshape(-1)
    rep = first[group]  # the first row with the same hash
    # Verify bytes: rows whose hash matches but bytes differ become their own groups.
    bad = []
    for s in range(0, n, _CHUNK):
        stop = min(s + _CHUNK, n)
        same = rep[s:stop] == np.arange(s, stop)
        check = ~same
        if check.any():
            idx = np.flatnonzero(check) + s
            a = np.asarray(rows[idx]).view(np.uint8).reshape(idx.shape[0], -1)
            b = np.asarray(rows[rep[idx]]).view(np.uint8).reshape(idx.shape[0], -1)
            diff = (a != b).any(axis=1)
            bad.extend(idx[diff].tolist())
    rep = rep.copy()
    for i in bad:  # collisions: rare enough for a plain loop
        rep[i] = i
        for j in bad:
            if j >= i:
                break
            if rep[j] == j and np.array_equal(np.asarray(rows[i]), np.asarray(rows[j])):
                rep[i] = j
                break
    firsts = np.unique(rep)
    vector_of_row = np.searchsorted(firsts, rep)
    return firsts.astype(np.int64), vector_of_row.astype(np.int64)


def occurrence_table(
    vector_of_row: Int[np.ndarray, " n"], n_vectors: int
) -> tuple[Int[np.ndarray, " n_vectors_plus_1"], Int[np.ndarray, " n"]]:
    """CSR table ``(offsets, rows)``: vector ``v`` stands for ``rows[offsets[v]:offsets[v+1]]``
    (ascending)."""
    order = np.argsort(vector_of_row, kind="stable")
    counts = np.bincount(vector_of_row, minlength=n_vectors)
    offsets = np.zeros(n_vectors + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return offsets, order.astype(np.int32)
