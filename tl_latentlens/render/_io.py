"""File writes of the renderers: :mod:`tl_latentlens._io`'s atomic write (unique temp file,
fsync, ``os.replace``), plus what output files need: missing folders created, the written path
returned, and the usual ``0644`` mode (``mkstemp`` makes ``0600``, which a web server or another
user could not read)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import IO

from tl_latentlens._io import atomic_write

logger = logging.getLogger(__name__)

__all__ = ["atomic_write_bytes", "atomic_write_text"]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` so readers never see a partial file.

    On any error the temporary file is removed and ``path`` is left untouched.

    Args:
        path: Destination; missing parent folders are created.
        data: The file content.

    Returns:
        The destination as a :class:`~pathlib.Path`.

    Example:
        >>> atomic_write_bytes("out/a.bin", b"\\x00\\x01")
        PosixPath('out/a.bin')
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(f: IO[bytes]) -> None:
        os.fchmod(f.fileno(), 0o644)
        f.write(data)

    atomic_write(path, write)
    logger.debug("wrote %s (%d bytes)", path, len(data))
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """UTF-8 variant of :func:`atomic_write_bytes`.

    Example:
        >>> atomic_write_text("out/page.html", "<!doctype html>")
        PosixPath('out/page.html')
    """
    return atomic_write_bytes(path, text.encode("utf-8"))
