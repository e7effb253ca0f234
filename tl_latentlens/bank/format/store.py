"""Low-level storage: atomic writes, file checksums and ragged (offset-indexed) arrays.

A *ragged* store ``name`` is two files: ``name.bin`` (the items' bytes back to back) and
``name.offsets.npy`` (int64 ``[n + 1]``; item ``i`` is ``bin[offsets[i]:offsets[i+1]]``).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from tl_latentlens._io import (
    atomic_save_npy,
    atomic_write_json,
    fsync_dir,
    fsync_tree,
    read_json,
    replace_dir,
    sha256_file,
)

__all__ = [
    "NpyFormatError",
    "RaggedReader",
    "RaggedWriter",
    "atomic_save_npy",
    "atomic_write_json",
    "file_record",
    "fsync_dir",
    "npy_from_buffer",
    "publish_dir",
    "read_json",
    "sha256_file",
]


def file_record(path: str | os.PathLike) -> dict[str, Any]:
    """``{"size": bytes, "sha256": hex}`` of a file, as kept in the manifest."""
    return {"size": os.path.getsize(path), "sha256": sha256_file(path)}


class NpyFormatError(ValueError):
    """Bytes that are not a plain (non-object) ``.npy`` array of the size they claim."""


def npy_from_buffer(buf: Any) -> np.ndarray:
    """A read-only array viewing the ``.npy`` bytes ``buf`` (e.g. an ``mmap``) without copying.

    Unlike ``np.load`` it never reads past the buffer and never unpickles: object dtypes and
    headers whose shape does not fit the data are refused.

    Raises:
        NpyFormatError: Not a ``.npy`` header, an object dtype, or a size mismatch.
    """
    view = memoryview(buf).cast("B")
    head = io.BytesIO(bytes(view[: min(len(view), 1 << 16)]))
    try:
        version = np.lib.format.read_magic(head)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(head)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(head)
        else:
            raise NpyFormatError(f"unsupported .npy version {version}")
    except NpyFormatError:
        raise
    except Exception as err:  # noqa: BLE001 - numpy raises ValueError/EOFError/SyntaxError …
        raise NpyFormatError(f"not a valid .npy header ({err})") from err
    if dtype.hasobject:
        raise NpyFormatError("object arrays are refused (they would need unpickling)")
    offset = head.tell()
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if count < 0 or offset + count * dtype.itemsize != len(view):
        raise NpyFormatError(
            f"header says {shape} {dtype} ({count * dtype.itemsize} bytes) but "
            f"{len(view) - offset} data bytes follow"
        )
    if count == 0:
        return np.zeros(shape, dtype=dtype)
    arr = np.ndarray(shape, dtype=dtype, buffer=buf, offset=offset, order="F" if fortran else "C")
    arr.flags.writeable = False
    return arr


class RaggedWriter:
    """Append-only ragged store; items are ``bytes`` or 1-D arrays of ``dtype``.

    Offsets are streamed to disk too, so memory stays constant however many items are added.

    Example:
        >>> w = RaggedWriter(tmp, "texts", np.uint8)
        >>> w.append("a cat".encode())
        >>> w.close()
        1
    """

    def __init__(self, directory: str | os.PathLike, name: str, dtype: Any = np.uint8) -> None:
        self.directory, self.name, self.dtype = Path(directory), name, np.dtype(dtype)
        self._data = open(self.directory / f"{name}.bin", "wb")
        self._raw_offsets = open(self.directory / f"{name}.offsets.raw", "wb")
        self._end = 0
        self._n = 0
        self._raw_offsets.write(np.zeros(1, dtype="<i8").tobytes())

    def append(self, item: bytes | np.ndarray) -> None:
        """Add one item."""
        if isinstance(item, (bytes, bytearray)):
            data = bytes(item)
        else:
            data = np.ascontiguousarray(item, dtype=self.dtype).tobytes()
        self._data.write(data)
        self._end += len(data) // self.dtype.itemsize
        self._n += 1
        self._raw_offsets.write(np.array([self._end], dtype="<i8").tobytes())

    def __len__(self) -> int:
        return self._n

    def close(self) -> int:
        """Flush, write ``name.offsets.npy`` and return the number of items."""
        self._data.close()
        self._raw_offsets.close()
        raw = self.directory / f"{self.name}.offsets.raw"
        offsets = np.lib.format.open_memmap(
            self.directory / f"{self.name}.offsets.npy",
            mode="w+",
            dtype="<i8",
            shape=(self._n + 1,),
        )
        src = np.memmap(raw, dtype="<i8", mode="r")
        for start in range(0, self._n + 1, 1 << 20):
            offsets[start : start + (1 << 20)] = src[start : start + (1 << 20)]
        offsets.flush()
        del offsets, src
        raw.unlink()
        return self._n


class RaggedReader:
    """Random access to a ragged store written by :class:`RaggedWriter` (memory-mapped)."""

    def __init__(self, directory: str | os.PathLike, name: str, dtype: Any = np.uint8) -> None:
        directory = Path(directory)
        self.dtype = np.dtype(dtype)
        self.offsets = np.load(directory / f"{name}.offsets.npy", mmap_mode="r")
        path = directory / f"{name}.bin"
        if os.path.getsize(path) == 0:
            self.data = np.zeros(0, dtype=self.dtype)
        else:
            self.data = np.memmap(path, dtype=self.dtype, mode="r")

    @classmethod
    def from_arrays(cls, offsets: np.ndarray, data: Any, dtype: Any = np.uint8) -> RaggedReader:
        """A reader over already opened offsets and raw data bytes (e.g. ``mmap`` views)."""
        self = cls.__new__(cls)
        self.dtype = np.dtype(dtype)
        self.offsets = offsets
        raw = memoryview(data).cast("B") if data is not None else memoryview(b"")
        usable = len(raw) - len(raw) % self.dtype.itemsize
        self.data = np.frombuffer(raw[:usable], dtype=self.dtype)
        self._nbytes = len(raw)
        return self

    def check(self) -> str | None:
        """Why the store is malformed (offsets not int64 ``[n+1]``, not starting at 0, decreasing
        or not ending at the data length), or ``None`` when it is well-formed."""
        off = self.offsets
        if off.dtype != np.dtype("<i8") or off.ndim != 1 or off.shape[0] < 1:
            return f"offsets must be int64 [n + 1], got {off.dtype} {off.shape}"
        nbytes = getattr(self, "_nbytes", self.data.shape[0] * self.dtype.itemsize)
        if nbytes % self.dtype.itemsize:
            return f"data is {nbytes} bytes, not a multiple of {self.dtype.itemsize}"
        if int(off[0]) != 0 or int(off[-1]) != self.data.shape[0]:
            return f"offsets run {int(off[0])}..{int(off[-1])}, data has {self.data.shape[0]} items"
        if off.shape[0] > 1 and bool((np.diff(off) < 0).any()):
            return "offsets decrease"
        return None

    def __len__(self) -> int:
        return int(self.offsets.shape[0]) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.data[int(self.offsets[i]) : int(self.offsets[i + 1])]

    def text(self, i: int) -> str:
        """Item ``i`` decoded as UTF-8 (for byte stores; invalid bytes become U+FFFD)."""
        return self[i].tobytes().decode("utf-8", errors="replace")

    def lengths(self) -> np.ndarray:
        """Length of every item (loads the offsets)."""
        return np.diff(np.asarray(self.offsets))


def publish_dir(stage: Path, out: Path) -> None:
    """fsync everything under ``stage`` and move it to ``out``, replacing what is there.

    Crash-safe: readers see the old ``out`` or the complete new one, and an interrupted
    replace is finished by :func:`tl_latentlens._io.recover_replace` (see
    :func:`tl_latentlens._io.replace_dir`)."""
    fsync_tree(stage)
    replace_dir(stage, out)
