"""One hook's stored vectors: distinct rows on disk (memory-mapped), decoded on demand.

A hook folder holds the *distinct* residual vectors of the hook (identical vectors, e.g. every
occurrence of a token at the input layer, are stored once) and, per distinct vector, the entry
rows (corpus occurrences) it stands for::

    vectors.npy         [n_vectors, d] codec dtype (float32 | float16 | int8)
    norms.npy           [n_vectors] float32 norms of the decoded rows
    codec.npy           [2, d] float32 offset/scale (int8 only)
    occ_offsets.npy     [n_vectors + 1] int64: vector v stands for occ_entries[off[v]:off[v+1]]
    occ_entries.npy     [n_entries] int32 entry rows, grouped by vector, ascending within a group

:class:`HookVectors` decodes row ranges and row sets to float32 and can keep the whole hook
decoded in RAM (``resident``) when it fits the caller's budget, so repeated exact searches do
not decode again.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from jaxtyping import Float, Int

from tl_latentlens.bank import codec as cd

__all__ = ["HookVectors"]

#: Rows decoded at once when streaming.
CHUNK_ROWS = 32768

#: Rows multiplied at once from the resident copy (a view, no copy). Measured on real residuals
#: (457,730 x 576, 49 queries, 1 thread, CPU time): one [n, d] product 443 ms, 262,144-row
#: blocks 461 ms, 131,072 516 ms; [d, c] column blocks of 131,072 564 ms.
RESIDENT_BLOCK = 262144


class HookVectors:
    """Decoded access to one hook folder.

    Args:
        stored: ``[n_vectors, d]`` stored rows (codec dtype; typically memory-mapped).
        norms: ``[n_vectors]`` float32 norms of the decoded rows.
        codec: Storage codec name.
        params: int8 offset/scale ``[2, d]``.
        occ_offsets, occ_entries: The occurrence table (``None``: one entry per vector).

    Example:
        >>> hv = HookVectors.from_folder(bank.root / "hooks/blocks.0.hook_resid_pre", "float16")
        >>> hv.decode(np.array([0, 5])).shape
        (2, 576)
    """

    def __init__(
        self,
        stored: np.ndarray,
        norms: np.ndarray,
        codec: str,
        params: np.ndarray | None = None,
        occ_offsets: np.ndarray | None = None,
        occ_entries: np.ndarray | None = None,
    ) -> None:
        self.stored, self.norms, self.codec, self.params = stored, norms, codec, params
        if codec == "int8" and params is None:
            raise ValueError("the int8 codec needs its codec.npy parameters")
        self._occ = None if occ_offsets is None else (occ_offsets, occ_entries)
        self._rows: np.ndarray | None = None
        self._inv_norms: np.ndarray | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_folder(cls, folder: str | Path, codec: str) -> HookVectors:
        """Open a hook folder's files memory-mapped."""
        folder = Path(folder)

        def load(name: str) -> np.ndarray:
            return np.load(folder / name, mmap_mode="r", allow_pickle=False)

        params = load("codec.npy") if codec == "int8" else None
        occ = (None, None)
        if (folder / "occ_offsets.npy").is_file():
            occ = (load("occ_offsets.npy"), load("occ_entries.npy"))
        return cls(load("vectors.npy"), load("norms.npy"), codec, params, *occ)

    @property
    def n(self) -> int:
        """Distinct stored vectors."""
        return int(self.stored.shape[0])

    @property
    def d(self) -> int:
        """Vector width."""
        return int(self.stored.shape[1])

    @property
    def inv_norms(self) -> Float[np.ndarray, " n"]:
        """``1 / norm`` of every stored row (0 for an all-zero row), float32, in RAM."""
        if self._inv_norms is None:
            norms = np.asarray(self.norms, dtype=np.float32)
            with np.errstate(divide="ignore"):
                inv = np.where(norms > 0, 1.0 / norms, 0.0).astype(np.float32)
            self._inv_norms = inv
        return self._inv_norms

    def nbytes_decoded(self) -> int:
        """RAM the decoded hook takes when resident."""
        return self.n * self.d * 4

    def resident(self) -> Float[np.ndarray, "n d"]:
        """The whole hook decoded to unit float32 rows, kept in RAM after the first call.

        Exact search multiplies row blocks of this array (views) by the queries, and re-ranking
        gathers candidate rows from it instead of decoding them again.
        """
        with self._lock:
            if self._rows is None:
                out = np.empty((self.n, self.d), dtype=np.float32)
                for start, block in self.chunks(True):
                    out[start : start + block.shape[0]] = block
                self._rows = out
            return self._rows

    @property
    def is_resident(self) -> bool:
        """Whether :meth:`resident` holds the decoded hook."""
        return self._rows is not None

    def drop_resident(self) -> None:
        """Free the resident copy."""
        self._rows = None

    def decode(self, rows: Int[np.ndarray, " m"], unit: bool = True) -> Float[np.ndarray, "m d"]:
        """Rows ``rows`` as float32 (divided by their norms when ``unit``)."""
        rows = np.asarray(rows, dtype=np.int64)
        resident = self._rows
        if resident is not None:
            block = resident[rows]
            if not unit:
                block *= np.asarray(self.norms, dtype=np.float32)[rows][:, None]
            return block
        block = cd.decode(self.stored[rows], self.codec, self.params)
        if unit:
            block *= self.inv_norms[rows][:, None]
        return block

    def chunks(
        self, unit: bool = True, chunk_rows: int = CHUNK_ROWS
    ) -> Iterator[tuple[int, Float[np.ndarray, "c d"]]]:
        """``(start, decoded rows)`` over the whole hook, ``chunk_rows`` at a time, decoded from
        storage (see :meth:`resident` for the in-RAM copy)."""
        inv = self.inv_norms
        for start in range(0, self.n, chunk_rows):
            stop = min(start + chunk_rows, self.n)
            block = cd.decode(self.stored[start:stop], self.codec, self.params)
            if unit:
                block *= inv[start:stop, None]
            yield start, block

    # ---- occurrences --------------------------------------------------------------------------
    def _occurrences(self) -> tuple[np.ndarray, np.ndarray]:
        if self._occ is None:  # no table: every vector is one entry, in order
            ident = np.arange(self.n + 1, dtype=np.int64)
            self._occ = (ident, ident[:-1].astype(np.int32))
        return self._occ

    def occurrences(self, row: int) -> Int[np.ndarray, " c"]:
        """Entry rows (corpus occurrences) that stored vector ``row`` stands for, ascending."""
        off, ent = self._occurrences()
        return np.asarray(ent[int(off[row]) : int(off[row + 1])], dtype=np.int64)

    def n_occurrences(self, row: int) -> int:
        """How many entries share stored vector ``row``."""
        off, _ = self._occurrences()
        return int(off[row + 1] - off[row])
