"""Last build step of a hook: raw per-entry rows -> distinct stored vectors + occurrences.

The encoding pass writes one raw row (float32/float16) per entry into ``vectors.npy``. This
step (resumable: it can be rerun from any point until the build records the hook as final)
renames that file to ``raw.npy``, groups identical rows (:mod:`~tl_latentlens.bank.build.dedup`),
writes the distinct rows in the bank's codec (with the codec's parameter files: the 1-byte codecs
are fitted over all distinct rows of the hook first) with their norms and the occurrence table,
and removes ``raw.npy`` once the caller has recorded the hook as final.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from tl_latentlens._io import atomic_save_npy
from tl_latentlens.bank.format import codec as cd
from tl_latentlens.bank.build.dedup import group_identical, occurrence_table
from tl_latentlens.bank.format.vectors import CHUNK_ROWS

__all__ = ["finalize_hook", "remove_raw"]

logger = logging.getLogger(__name__)


def finalize_hook(folder: Path, codec: str, n_components: int | None = None) -> dict[str, int]:
    """Turn ``folder``'s raw per-entry ``vectors.npy`` into the stored layout.

    Args:
        folder: The hook folder.
        codec: The bank's storage codec.
        n_components: ``int8_pca``'s principal directions ``P`` (``None``:
            :func:`~tl_latentlens.bank.format.codec.default_components`); ignored by other codecs.

    Returns:
        ``{"n_vectors": distinct vectors, "n_duplicates": entries that share a vector}``.

    Raises:
        BankError: ``n_components`` is not in ``1 .. d - 1``.
    """
    folder = Path(folder)
    raw_path = folder / "raw.npy"
    if not raw_path.is_file():
        os.replace(folder / "vectors.npy", raw_path)
    raw = np.load(raw_path, mmap_mode="r")
    raw_codec = "float32" if raw.dtype == np.float32 else "float16"
    first, vector_of_row = group_identical(raw)
    n_vec = int(first.shape[0])
    offsets, entries = occurrence_table(vector_of_row, n_vec)
    d = int(raw.shape[1])

    def distinct(s: int) -> np.ndarray:  # float32 distinct rows s .. s + CHUNK_ROWS
        return cd.decode(raw[first[s : s + CHUNK_ROWS]], raw_codec)

    pca, p = codec == "int8_pca", 0
    if pca:
        p = cd.default_components(d) if n_components is None else n_components
        cd.check_components(p, d)
    params, centre, rotation, scales, components, coeffs = None, None, None, None, None, None
    if codec == "int8":
        params = cd.fit_int8(distinct(s) for s in range(0, n_vec, CHUNK_ROWS))
        atomic_save_npy(folder / "codec.npy", params)
    elif codec in ("int8_rotated", "int8_pca"):
        centre = cd.fit_centre(distinct(s) for s in range(0, n_vec, CHUNK_ROWS))
        rotation = cd.rotation_matrix(d)
        scales = np.empty((n_vec, 2), dtype="<f4")
        atomic_save_npy(folder / "codec_centre.npy", centre)
        atomic_save_npy(folder / "codec_rotation.npy", rotation)
    if pca:
        components = cd.fit_components(cd.decode(raw[_sample(first)], raw_codec), centre, p)
        coeffs = np.empty((n_vec, p), dtype="<f2")
        atomic_save_npy(folder / "codec_components.npy", components)
    tmp = folder / f".vectors.npy.{os.getpid()}.tmp"
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=cd.numpy_dtype(codec), shape=(n_vec, d))
    norms = np.empty(n_vec, dtype="<f4")
    for s in range(0, n_vec, CHUNK_ROWS):
        rows = raw[first[s : s + CHUNK_ROWS]]
        e = s + rows.shape[0]
        if scales is not None:  # int8_rotated, int8_pca
            x = cd.decode(rows, raw_codec)
            if pca:
                stored, scales[s:e], coeffs[s:e] = cd.encode_pca(x, centre, rotation, components)
            else:
                stored, scales[s:e] = cd.encode_rotated(x, centre, rotation)
            a = None if coeffs is None else coeffs[s:e]
            norms[s:e] = cd.rotated_norms(stored, scales[s:e], centre, rotation, a, components)
        else:
            if codec == "int8":
                stored = cd.encode_int8(cd.decode(rows, raw_codec), params)
            else:
                stored = rows if codec == raw_codec else cd.decode(rows, raw_codec).astype("<f4")
            norms[s:e] = np.linalg.norm(cd.decode(stored, codec, params), axis=1)
        out[s:e] = stored
    out.flush()
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    del out
    if scales is not None:
        atomic_save_npy(folder / "codec_scales.npy", scales)
    if coeffs is not None:
        atomic_save_npy(folder / "codec_coeffs.npy", coeffs)
    atomic_save_npy(folder / "norms.npy", norms)
    atomic_save_npy(folder / "occ_offsets.npy", offsets)
    atomic_save_npy(folder / "occ_entries.npy", entries)
    os.replace(tmp, folder / "vectors.npy")
    n = int(raw.shape[0])
    logger.info("%s: %d entries -> %d distinct vectors", folder.name, n, n_vec)
    return {"n_vectors": n_vec, "n_duplicates": n - n_vec}


def _sample(first: np.ndarray) -> np.ndarray:
    """Raw rows of a seeded sample of at most :data:`~tl_latentlens.bank.format.codec.PCA_SAMPLE`
    distinct vectors, ascending (fast memory-map reads), to fit ``int8_pca``'s directions on."""
    if first.shape[0] <= cd.PCA_SAMPLE:
        return np.asarray(first)
    pick = np.random.default_rng(cd.PCA_SEED).choice(first.shape[0], cd.PCA_SAMPLE, False)
    return np.sort(np.asarray(first)[pick])


def remove_raw(folder: Path) -> None:
    """Delete the raw rows (after the hook is recorded as final)."""
    (Path(folder) / "raw.npy").unlink(missing_ok=True)
