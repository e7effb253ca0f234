"""Check an hnswlib index file completely before hnswlib parses it.

hnswlib (0.8) trusts its file: a wrong count, offset or link id makes it read or write out of
bounds and crash the process. :func:`validate_hnsw_file` reads the layout ``saveIndex`` writes
and checks every field, so that no file can reach hnswlib unless hnswlib can use it safely:

* a 96-byte header: ``offsetLevel0, max_elements, cur_element_count, size_data_per_element,
  label_offset, offsetData`` (uint64 each), ``maxlevel`` (int32), ``enterpoint_node``
  (uint32), ``maxM, maxM0, M`` (uint64), ``mult`` (float64), ``ef_construction`` (uint64);
* ``cur_element_count`` level-0 records of ``size_data_per_element`` bytes: a link count
  (uint16, then a flags byte whose bit 0 marks a deleted element, then one spare byte),
  ``maxM0`` uint32 neighbour ids, ``dim`` float32 components and a uint64 label;
* per element, a uint32 byte size of its upper-level link lists (0 for a level-0 element, else
  ``level * (4 + 4 * maxM)``) followed by those lists (same count word, ``maxM`` ids each).

It checks the header against the bank (element count, dimension, ``M``), the derived sizes and
offsets, the file size, every neighbour count and id (also that a node linked at level ``l``
has a level ``>= l``), the entry point and level, the labels (each row ``0 … n-1`` once) and
that no element is marked deleted. A file that passes is the shape hnswlib would write for
this bank; its float contents may still differ (the checksum guards those).
"""

from __future__ import annotations

import math
import os
import struct
from typing import Any

import numpy as np

from tl_latentlens.bank.errors import CorruptBankError

__all__ = ["HEADER_SIZE", "HnswHeader", "read_header", "validate_hnsw_file"]

_HEADER = struct.Struct("<QQQQQQiIQQQdQ")
#: Bytes of the hnswlib header.
HEADER_SIZE = _HEADER.size  # 96
_FIELDS = (
    "offset_level0", "max_elements", "cur_element_count", "size_data_per_element",
    "label_offset", "offset_data", "maxlevel", "enterpoint_node", "maxM", "maxM0", "M", "mult",
    "ef_construction",
)  # fmt: skip
_MAX_LEVEL = 64  # hnswlib draws levels as -ln(U) * mult; 64 is far beyond any real index
_MAX_M = 1 << 15  # link counts are uint16


class HnswHeader(dict):
    """The header fields of an hnswlib index file (a dict with attribute access)."""

    __getattr__ = dict.__getitem__


def read_header(data: Any) -> HnswHeader:
    """Parse the 96-byte header from the start of ``data`` (bytes-like)."""
    view = memoryview(data).cast("B")
    if len(view) < HEADER_SIZE:
        raise CorruptBankError(f"the file has {len(view)} bytes, less than the 96-byte header")
    return HnswHeader(zip(_FIELDS, _HEADER.unpack_from(view, 0)))


def validate_hnsw_file(
    source: str | os.PathLike | Any, *, dim: int, n: int, M: int | None = None
) -> None:
    """Refuse an hnswlib index file that is not a well-formed index of ``n`` vectors of ``dim``.

    Call it right before ``hnswlib.Index.load_index``; it reads the file once (memory-mapped).

    Args:
        source: The file path, or its bytes (``bytes``, ``mmap`` …).
        dim: Vector dimension the index must have.
        n: Number of elements (labels ``0 … n-1``) it must hold.
        M: The graph degree it must have been built with (unchecked when ``None``).

    Raises:
        CorruptBankError: The message names the first field found wrong.

    Example:
        >>> validate_hnsw_file("bank/hooks/blocks.0.hook_resid_pre/index.hnsw", dim=576, n=72831)
    """
    where = str(source) if isinstance(source, (str, os.PathLike)) else "index"
    try:
        if isinstance(source, (str, os.PathLike)):
            size = os.path.getsize(source)
            if size == 0:
                raise CorruptBankError("the file is empty")
            data: Any = np.memmap(source, dtype=np.uint8, mode="r")
        else:
            data = np.frombuffer(memoryview(source).cast("B"), dtype=np.uint8)
        _validate(data, dim, n, M)
    except CorruptBankError as err:
        raise CorruptBankError(f"{where}: not a valid hnswlib index for this bank: {err}") from None
    except OSError as err:
        raise CorruptBankError(f"{where}: cannot read the hnswlib index: {err}") from err


def _fail(msg: str) -> None:
    raise CorruptBankError(msg)


def _validate(data: np.ndarray, dim: int, n: int, M: int | None) -> None:
    total = int(data.shape[0])
    h = read_header(data)
    link0 = 4 + 4 * h.maxM0
    link_up = 4 + 4 * h.maxM
    expect = {
        "offset_level0": 0,
        "cur_element_count": n,
        "size_data_per_element": link0 + 4 * dim + 8,
        "offset_data": link0,
        "label_offset": link0 + 4 * dim,
    }
    if not 1 <= h.maxM <= _MAX_M or h.maxM0 != 2 * h.maxM or h.M != h.maxM:
        _fail(f"M={h.M}, maxM={h.maxM}, maxM0={h.maxM0} (expected maxM=M, maxM0=2M, M>=1)")
    if M is not None and h.M != M:
        _fail(f"M={h.M}, the bank was built with M={M}")
    for name, want in expect.items():
        if h[name] != want:
            _fail(f"{name}={h[name]}, expected {want} (n={n}, dim={dim}, M={h.M})")
    if h.max_elements < n:
        _fail(f"max_elements={h.max_elements} < element count {n}")
    if not 0 <= h.maxlevel <= _MAX_LEVEL:
        _fail(f"maxlevel={h.maxlevel} out of range")
    if not (math.isfinite(h.mult) and h.mult > 0) or h.ef_construction < 1:
        _fail(f"mult={h.mult}, ef_construction={h.ef_construction}")
    if n == 0:
        _fail("the index holds no element")
    if h.enterpoint_node >= n:
        _fail(f"entry point {h.enterpoint_node} >= element count {n}")
    size_el = h.size_data_per_element
    level0_end = HEADER_SIZE + n * size_el
    if total < level0_end + 4 * n:
        _fail(f"the file has {total} bytes, too few for {n} elements of {size_el} bytes")

    # level 0: counts, flags, neighbour ids, labels (the record size is a multiple of 4)
    rec = data[HEADER_SIZE:level0_end].reshape(n, size_el)
    words = rec.view("<u4")
    counts = words[:, 0] & 0xFFFF
    flags = (words[:, 0] >> 16) & 0xFF
    if (counts > h.maxM0).any():
        i = int(np.argmax(counts > h.maxM0))
        _fail(f"element {i} has {int(counts[i])} level-0 links > maxM0={h.maxM0}")
    if flags.any():
        _fail(f"{int(np.count_nonzero(flags))} element(s) carry deleted/unknown flags")
    links = words[:, 1 : 1 + h.maxM0]
    used = np.arange(h.maxM0)[None, :] < counts[:, None]
    if (links[used] >= n).any():
        _fail("a level-0 link points past the last element")
    labels = rec[:, h.label_offset : h.label_offset + 8].copy().view("<u8").reshape(n)
    if (labels >= n).any() or np.unique(labels).shape[0] != n:
        _fail("labels are not the rows 0 … n-1, each once")

    # upper levels: a variable-length section, 4-byte aligned
    tail = data[level0_end:]
    if tail.shape[0] % 4:
        _fail(f"the link-list section has {tail.shape[0]} bytes, not a multiple of 4")
    up = tail.view("<u4")
    levels, blocks = _walk_link_lists(up, n, link_up)
    top = int(levels.max())
    if top != h.maxlevel:
        _fail(f"maxlevel={h.maxlevel} but the highest element level is {top}")
    if levels[h.enterpoint_node] != h.maxlevel:
        _fail(f"the entry point {h.enterpoint_node} is not on the top level {h.maxlevel}")
    if blocks.shape[0]:
        # blocks: (word offset of the level's count word, level, element)
        starts, lvl = blocks[:, 0], blocks[:, 1]
        cnt = up[starts] & 0xFFFF
        if (up[starts] >> 16).any() or (cnt > h.maxM).any():
            _fail(f"an upper-level link count exceeds maxM={h.maxM}")
        cols = np.arange(h.maxM)[None, :]
        ids = up[starts[:, None] + 1 + cols]
        mask = cols < cnt[:, None]
        target = ids[mask]
        if (target >= n).any():
            _fail("an upper-level link points past the last element")
        need = np.broadcast_to(lvl[:, None], ids.shape)[mask]
        if (levels[target] < need).any():
            _fail("an upper-level link points to an element that is not on that level")


def _walk_link_lists(up: np.ndarray, n: int, link_up: int) -> tuple[np.ndarray, np.ndarray]:
    """Walk the per-element ``[size][lists]`` records: element levels and list positions.

    Most elements are on level 0 only (size word 0), so the walk jumps over runs of zero words
    with one ``searchsorted`` and loops only over elements with upper levels.
    """
    if link_up % 4:
        _fail("bad upper link-list size")
    per_level = link_up // 4
    levels = np.zeros(n, dtype=np.int64)
    blocks: list[tuple[int, int, int]] = []
    nonzero = np.flatnonzero(up)
    w, i, total = 0, 0, up.shape[0]
    while i < n:
        k = int(np.searchsorted(nonzero, w))
        q = int(nonzero[k]) if k < nonzero.shape[0] else total
        zeros = q - w
        if zeros >= n - i:  # every remaining element is a level-0 one
            w += n - i
            i = n
            break
        if q >= total:
            _fail(f"the file ends after {i + zeros} of {n} elements' link lists")
        i += zeros
        w = q
        size = int(up[w])
        if size % link_up or size // link_up > _MAX_LEVEL:
            _fail(f"element {i} has a link-list size of {size} bytes (not a level multiple)")
        level = size // link_up
        if w + 1 + level * per_level > total:
            _fail(f"element {i}'s link lists run past the end of the file")
        levels[i] = level
        for lv in range(level):
            blocks.append((w + 1 + lv * per_level, lv + 1, i))
        w += 1 + level * per_level
        i += 1
    if w != total:
        _fail(f"{4 * (total - w)} bytes follow the last element's link lists")
    return levels, np.asarray(blocks, dtype=np.int64).reshape(-1, 3)
