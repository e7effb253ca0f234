"""Low-level storage: atomic writes, file checksums and ragged (offset-indexed) arrays.

A *ragged* store ``name`` is two files: ``name.bin`` (the items' bytes back to back) and
``name.offsets.npy`` (int64 ``[n + 1]``; item ``i`` is ``bin[offsets[i]:offsets[i+1]]``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "RaggedReader",
    "RaggedWriter",
    "atomic_save_npy",
    "atomic_write_json",
    "file_record",
    "fsync_dir",
    "publish_dir",
    "read_json",
    "sha256_file",
]

_CHUNK = 1 << 23


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a directory's entries (renames, new files) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, write: Any) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (temp file + fsync + ``os.replace``)."""
    data = json.dumps(obj, indent=2, sort_keys=True).encode("utf-8")
    _atomic_write(Path(path), lambda f: f.write(data))


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """``np.save`` to ``path`` atomically."""
    _atomic_write(Path(path), lambda f: np.save(f, array, allow_pickle=False))


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file, read in 8 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_record(path: str | os.PathLike) -> dict[str, Any]:
    """``{"size": bytes, "sha256": hex}`` of a file, as kept in the manifest."""
    return {"size": os.path.getsize(path), "sha256": sha256_file(path)}


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

    def __len__(self) -> int:
        return int(self.offsets.shape[0]) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.data[int(self.offsets[i]) : int(self.offsets[i + 1])]

    def text(self, i: int) -> str:
        """Item ``i`` decoded as UTF-8 (for byte stores)."""
        return self[i].tobytes().decode("utf-8")

    def lengths(self) -> np.ndarray:
        """Length of every item (loads the offsets)."""
        return np.diff(np.asarray(self.offsets))


def publish_dir(stage: Path, out: Path) -> None:
    """fsync everything under ``stage`` and rename it to ``out`` (replacing what is there).

    The rename is atomic: readers see the old ``out`` or the complete new one. A replaced
    ``out`` is first renamed aside, then deleted."""
    for root, _dirs, files in os.walk(stage):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(root)
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.rename(out, old)
    os.rename(stage, out)
    fsync_dir(out.parent)
    if old is not None:
        if old.is_dir():
            shutil.rmtree(old)
        else:
            old.unlink()
