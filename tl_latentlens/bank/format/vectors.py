"""One hook's stored vectors: distinct rows on disk (memory-mapped), decoded on demand.

A hook folder holds the *distinct* residual vectors of the hook (identical vectors, e.g. every
occurrence of a token at the input layer, are stored once) and, per distinct vector, the entry
rows (corpus occurrences) it stands for::

    vectors.npy           [n_vectors, d] codec dtype (float32 | float16 | int8_pca |
                          int8_rotated | int8)
    norms.npy             [n_vectors] float32 norms of the decoded rows
    codec_centre.npy      [d] float32 mean unit row            (int8_rotated, int8_pca)
    codec_rotation.npy    [d, d] float32 orthogonal rotation   (int8_rotated, int8_pca)
    codec_scales.npy      [n_vectors, 2] float32 step, |x|     (int8_rotated, int8_pca)
    codec_components.npy  [P, d] float32 principal directions  (int8_pca)
    codec_coeffs.npy      [n_vectors, P] float16 coefficients  (int8_pca)
    codec.npy             [2, d] float32 offset/scale          (legacy int8)
    occ_offsets.npy       [n_vectors + 1] int64: vector v stands for occ_entries[off[v]:off[v+1]]
    occ_entries.npy       [n_entries] int32 entry rows, grouped by vector, ascending within a group

Two views of the rows: :meth:`HookVectors.decode` / :meth:`HookVectors.chunks` give the stored
vectors in the model's space (what users get back); search multiplies *search-space* rows
(:meth:`HookVectors.search_rows`, :meth:`HookVectors.search_chunks`,
:meth:`HookVectors.resident`) by queries mapped with :meth:`HookVectors.to_search`. For the
float codecs and legacy ``int8`` both are the unit decoded rows; for ``int8_rotated`` the search
space is the rotated one (width ``d + 1``), for ``int8_pca`` the rotated one with the principal
coefficients beside it (width ``d + P + 1``; see :mod:`~tl_latentlens.bank.format.codec`), so no stored
row is ever rotated back. Either way a query-row product is the cosine with the decoded vector.
:class:`HookVectors` can keep the whole hook's search-space rows in RAM (``resident``) when it
fits the caller's budget, so repeated exact searches do not decode again. A device keeps or
streams its own form of the rows (:meth:`HookVectors.stage_rows`): float16 rows as stored (made
unit on the device, in float32, just before each product), float32 search-space rows otherwise.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float, Int

from tl_latentlens.bank.format import codec as cd

__all__ = [
    "DEFAULT_RESIDENT_BYTES",
    "DEVICE_RESERVE_BYTES",
    "DEVICE_SHARE",
    "HookVectors",
]

#: Rows decoded at once when streaming.
CHUNK_ROWS = 32768

#: Rows multiplied at once from the resident copy (a view, no copy): the largest block size
#: measured on real residuals, nearly as fast as one whole-hook product and cheaper in memory
#: than smaller row blocks or column blocks (figures in benchmarks/README.md).
RESIDENT_BLOCK = 262144

#: Default RAM for decoded hooks kept resident (:attr:`Bank.resident_bytes
#: <tl_latentlens.bank.Bank.resident_bytes>`, calibration).
DEFAULT_RESIDENT_BYTES = 2 << 30

#: Share of a device's free memory (at a bank's first search there) that hooks may keep
#: resident on it when :attr:`Bank.device_resident_bytes
#: <tl_latentlens.bank.Bank.device_resident_bytes>` is ``None``: the rest stays for the model.
DEVICE_SHARE = 0.5

#: Device memory a hook going resident must leave free: the search's own similarity blocks,
#: widened float16 blocks and top-k work live there too.
DEVICE_RESERVE_BYTES = 1 << 30

#: Codecs whose resident rows are widened and scaled in one pass (:meth:`HookVectors.resident`).
_WIDENED = ("float16", "float32")

CodecParams = np.ndarray | Mapping[str, np.ndarray]


class HookVectors:
    """Decoded access to one hook folder.

    Args:
        stored: ``[n_vectors, d]`` stored rows (codec dtype; typically memory-mapped).
        norms: ``[n_vectors]`` float32 norms of the decoded rows.
        codec: Storage codec name.
        params: The codec's parameter arrays by file name (:func:`codec.param_files`); for
            legacy ``int8`` also the bare ``[2, d]`` offset/scale array.
        occ_offsets, occ_entries: The occurrence table (``None``: one entry per vector).

    Example:
        >>> hv = HookVectors.from_folder(bank.root / "hooks/blocks.0.hook_resid_pre", "float16")
        >>> hv.decode(np.array([0, 5])).shape
        (2, 576)
        >>> sims = hv.to_search(unit_queries) @ hv.search_rows(np.array([0, 5])).T
    """

    def __init__(
        self,
        stored: np.ndarray,
        norms: np.ndarray,
        codec: str,
        params: CodecParams | None = None,
        occ_offsets: np.ndarray | None = None,
        occ_entries: np.ndarray | None = None,
    ) -> None:
        self.stored, self.norms, self.codec = stored, norms, codec
        names = cd.param_files(codec)
        if isinstance(params, np.ndarray) and codec == "int8":
            params = {"codec.npy": params}
        arrays = dict(params or {})
        missing = [name for name in names if name not in arrays]
        if missing:
            raise ValueError(f"the {codec} codec needs its parameter files {missing}")
        #: Legacy int8 offset/scale ``[2, d]`` (``None`` for the other codecs).
        self.params = arrays["codec.npy"] if codec == "int8" else None
        #: int8_rotated/int8_pca: (centre, rotation, per-row scales, int8_pca's principal
        #: directions and per-row coefficients, or None for int8_rotated).
        self._rotated: tuple[np.ndarray, ...] | None = None
        if "codec_rotation.npy" in names:
            pca = "codec_components.npy" in names
            self._rotated = (
                np.ascontiguousarray(arrays["codec_centre.npy"], dtype=np.float32),
                np.ascontiguousarray(arrays["codec_rotation.npy"], dtype=np.float32),
                arrays["codec_scales.npy"],
                np.ascontiguousarray(arrays["codec_components.npy"], dtype=np.float32)
                if pca
                else None,
                arrays["codec_coeffs.npy"] if pca else None,
            )
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

        params = {name: load(name) for name in cd.param_files(codec)}
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
    def width(self) -> int:
        """Width of the search-space rows (``d``; ``d + 1`` for ``int8_rotated``,
        ``d + P + 1`` for ``int8_pca``)."""
        if self._rotated is None:
            return self.d
        components = self._rotated[3]
        return self.d + 1 + (0 if components is None else int(components.shape[0]))

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
        """RAM the resident (search-space, float32) hook takes."""
        return self.n * self.width * 4

    # ---- device rows --------------------------------------------------------------------------
    @property
    def device_dtype(self) -> torch.dtype:
        """Dtype of the rows a device keeps or streams (:meth:`stage_rows`): ``float16`` for
        the float16 codec (its stored rows as they are, half the memory and transfer of
        float32), ``float32`` search-space rows for every other codec."""
        return torch.float16 if self.device_scaled else torch.float32

    @property
    def device_scaled(self) -> bool:
        """Whether device rows are the stored rows, to be widened to float32 and multiplied by
        :attr:`inv_norms` on the device just before each product (the float16 codec); else
        they are already the unit search-space rows."""
        return self._rotated is None and self.codec == "float16"

    def nbytes_device(self) -> int:
        """Device memory the resident hook takes (its rows, plus the inverse norms when
        :attr:`device_scaled`)."""
        itemsize = 2 if self.device_scaled else 4
        return self.n * self.width * itemsize + (self.n * 4 if self.device_scaled else 0)

    def stage_rows(self, start: int, stop: int, out: Float[np.ndarray, "c w"]) -> None:
        """Write rows ``start:stop`` as a device keeps them (:attr:`device_dtype`) into
        ``out`` (``[stop - start, width]``, typically a pinned host buffer), straight from the
        memory-mapped file (or the resident copy) for the float codecs; the 1-byte codecs
        decode the block first.

        The float32 rows equal :meth:`resident`'s bit for bit; float16 rows widened and
        multiplied by :attr:`inv_norms` in float32 equal them too.
        """
        if self.device_scaled:
            np.copyto(out, self.stored[start:stop])
        elif self._rows is not None:
            np.copyto(out, self._rows[start:stop])
        elif self._rotated is None and self.codec in _WIDENED:
            np.multiply(
                self.stored[start:stop],
                self.inv_norms[start:stop, None],
                out=out,
                dtype=np.float32,
            )
        else:
            out[...] = self._search_block(slice(start, stop))

    # ---- search space -----------------------------------------------------------------------
    def to_search(self, queries: Float[np.ndarray, "m d"]) -> Float[np.ndarray, "m w"]:
        """Queries mapped into the search space (float32, contiguous): the identity except for
        ``int8_rotated`` (``[y @ R, y . mu]``) and ``int8_pca`` (``[y @ R, y @ V.T, y . mu]``)."""
        if self._rotated is None:
            return np.ascontiguousarray(queries, dtype=np.float32)
        centre, rotation, _, components, _ = self._rotated
        return cd.rotated_search_queries(queries, centre, rotation, components)

    def _search_block(self, rows: slice | np.ndarray) -> np.ndarray:
        """Search-space unit rows decoded from storage."""
        if self._rotated is None:
            block = self._decode(rows)
            block *= self.inv_norms[rows][:, None]
            return block
        _, _, scales, _, coeffs = self._rotated
        return cd.rotated_search_rows(
            self.stored[rows],
            scales[rows],
            self.inv_norms[rows],
            coeffs=None if coeffs is None else coeffs[rows],
        )

    def search_rows(self, rows: Int[np.ndarray, " m"]) -> Float[np.ndarray, "m w"]:
        """Rows ``rows`` in the search space (from the resident copy when there is one)."""
        rows = np.asarray(rows, dtype=np.int64)
        resident = self._rows
        if resident is not None:
            return resident[rows]
        return self._search_block(rows)

    def search_chunks(
        self, chunk_rows: int = CHUNK_ROWS
    ) -> Iterator[tuple[int, Float[np.ndarray, "c w"]]]:
        """``(start, search-space rows)`` over the whole hook, decoded from storage."""
        for start in range(0, self.n, chunk_rows):
            yield start, self._search_block(slice(start, min(start + chunk_rows, self.n)))

    def resident(self) -> Float[np.ndarray, "n w"]:
        """The whole hook as search-space rows (float32), kept in RAM after the first call.

        Exact search multiplies row blocks of this array (views) by the queries, and re-ranking
        gathers candidate rows from it instead of decoding them again.
        """
        with self._lock:
            if self._rows is None:
                # torch's allocator, not np.empty: numpy asks the kernel for transparent huge
                # pages on large arrays, and faulting those in (with compaction) is several
                # times slower than 4 KiB pages (benchmarks/bench_cold_start.py).
                out = torch.empty((self.n, self.width), dtype=torch.float32).numpy()
                if self._rotated is None and self.codec in _WIDENED:
                    self._fill_widened(out)
                else:
                    for start, block in self.search_chunks():
                        out[start : start + block.shape[0]] = block
                self._rows = out
            return self._rows

    def _fill_widened(self, out: Float[np.ndarray, "n d"]) -> None:
        """Float rows times their inverse norms, written straight into ``out``.

        One numpy pass per chunk widens, scales and stores (decoding first needs a decoded copy,
        a scaling pass and a copy into ``out``): the same float32 products in about half the
        time. Not torch: its two threads were faster on an idle machine but slower than this
        under load (figures in benchmarks/README.md).
        """
        inv = self.inv_norms
        for start in range(0, self.n, CHUNK_ROWS):
            stop = min(start + CHUNK_ROWS, self.n)
            np.multiply(
                self.stored[start:stop],
                inv[start:stop, None],
                out=out[start:stop],
                dtype=np.float32,
            )

    @property
    def is_resident(self) -> bool:
        """Whether :meth:`resident` holds the decoded hook."""
        return self._rows is not None

    def drop_resident(self) -> None:
        """Free the resident copy."""
        self._rows = None

    # ---- the model's space ------------------------------------------------------------------
    def _decode(self, rows: slice | np.ndarray) -> np.ndarray:
        """Stored rows ``rows`` decoded to float32 vectors of the model's space (a new array)."""
        if self._rotated is None:
            return cd.decode(self.stored[rows], self.codec, self.params)
        centre, rotation, scales, components, coeffs = self._rotated
        a = None if coeffs is None else coeffs[rows]
        return cd.decode_rotated(self.stored[rows], scales[rows], centre, rotation, a, components)

    def decode(self, rows: Int[np.ndarray, " m"], unit: bool = True) -> Float[np.ndarray, "m d"]:
        """Rows ``rows`` as float32 vectors of the model's space (divided by their norms when
        ``unit``)."""
        rows = np.asarray(rows, dtype=np.int64)
        resident = self._rows
        if resident is not None and self._rotated is None:  # resident rows are these ones
            block = resident[rows]
            if not unit:
                block *= np.asarray(self.norms, dtype=np.float32)[rows][:, None]
            return block
        block = self._decode(rows)
        if unit:
            block *= self.inv_norms[rows][:, None]
        return block

    def chunks(
        self, unit: bool = True, chunk_rows: int = CHUNK_ROWS
    ) -> Iterator[tuple[int, Float[np.ndarray, "c d"]]]:
        """``(start, decoded rows)`` of the model's space over the whole hook, ``chunk_rows`` at
        a time, decoded from storage (search uses :meth:`search_chunks`)."""
        inv = self.inv_norms
        for start in range(0, self.n, chunk_rows):
            stop = min(start + chunk_rows, self.n)
            block = self._decode(slice(start, stop))
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
