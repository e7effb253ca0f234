"""Atomic file writes shared by the renderers (temp file in the target folder + ``os.replace``)."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["atomic_write_bytes", "atomic_write_text"]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` so readers never see a partial file.

    The bytes go to a temporary file next to ``path`` which is then renamed over it; on any
    error the temporary file is removed and ``path`` is left untouched.

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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    logger.debug("wrote %s (%d bytes)", path, len(data))
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """UTF-8 variant of :func:`atomic_write_bytes`.

    Example:
        >>> atomic_write_text("out/page.html", "<!doctype html>")
        PosixPath('out/page.html')
    """
    return atomic_write_bytes(path, text.encode("utf-8"))
