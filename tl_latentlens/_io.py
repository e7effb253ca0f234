"""Durable file operations shared by the package: atomic writes, SHA-256 (and a memo of digests
by file stamp, :class:`DigestMemo`), directory replacement and inter-process file locks.

* Atomic writes go to a unique temporary file in the target's directory, are fsynced and then
  renamed over the target (``os.replace``), so a reader sees the old file or the whole new one.
* :func:`replace_dir` swaps a finished directory into place. On Linux it uses
  ``renameat2(RENAME_EXCHANGE)`` (one atomic step); elsewhere it renames the old directory aside
  after writing a small journal, and :func:`recover_replace` finishes an interrupted replace.
* :class:`FileLock` is an exclusive ``flock`` on a lock file that records the owner's pid and
  host. The kernel drops the lock when its owner dies (even by ``kill -9``), so a stale lock
  file is simply taken over; no pid guessing is needed.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from tl_latentlens.packaged_data import cache_dir

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "DigestMemo",
    "FileLock",
    "LockedError",
    "atomic_save_npy",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "digest_memo",
    "fsync_dir",
    "file_stamp",
    "fsync_tree",
    "locked",
    "read_json",
    "recover_replace",
    "replace_dir",
    "sha256_bytes",
    "sha256_file",
]

_CHUNK = 1 << 23

logger = logging.getLogger(__name__)


# ---- atomic writes ---------------------------------------------------------------------------
def fsync_dir(path: str | os.PathLike) -> None:
    """Make a directory's entries (renames, new files) durable."""
    if os.name == "nt":  # pragma: no cover - directories cannot be opened on Windows
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every file and directory under ``root`` (before publishing it by a rename)."""
    for here, _dirs, files in os.walk(root):
        for name in files:
            with open(os.path.join(here, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(here)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(f)`` on a unique temp file next to ``path``, fsync it and rename it over
    ``path``; on any error the temp file is removed and ``path`` is untouched.

    Example:
        >>> atomic_write("out.bin", lambda f: f.write(b"data"))
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes 0600; written files get the usual 0644 so that another user or a web
        # server can read a shared bank or report.
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, parents: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically (readers never see a partial file).

    Args:
        path: Destination.
        data: The file content.
        parents: Create missing parent folders first (output files of the renderers).

    Returns:
        The destination as a :class:`~pathlib.Path`.

    Example:
        >>> atomic_write_bytes("out/a.bin", b"\\x00\\x01", parents=True)
        PosixPath('out/a.bin')
    """
    path = Path(path)
    if parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(data))
    logger.debug("wrote %s (%d bytes)", path, len(data))
    return path


def atomic_write_text(path: str | os.PathLike, text: str, *, parents: bool = False) -> Path:
    """UTF-8 variant of :func:`atomic_write_bytes`.

    Example:
        >>> atomic_write_text("out/page.html", "<!doctype html>", parents=True)
        PosixPath('out/page.html')
    """
    return atomic_write_bytes(path, text.encode("utf-8"), parents=parents)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (temp file + fsync + ``os.replace``)."""
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True).encode("utf-8"))


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """``np.save`` to ``path`` atomically (never pickles)."""
    atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# ---- checksums -------------------------------------------------------------------------------
def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file, read in 8 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: Any) -> str:
    """SHA-256 hex digest of a bytes-like object (e.g. an ``mmap``), hashed in chunks."""
    view = memoryview(data).cast("B")
    h = hashlib.sha256()
    for start in range(0, len(view), _CHUNK):
        h.update(view[start : start + _CHUNK])
    return h.hexdigest()


#: ``(device, inode, size, mtime_ns, ctime_ns)`` of a file: any write to it, a rename over it
#: or a ``touch`` changes it (the status-change time cannot be set back by the user).
Stamp = tuple[int, int, int, int, int]


def file_stamp(st: os.stat_result) -> Stamp:
    """The :data:`Stamp` of a ``stat`` / ``fstat`` result."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class DigestMemo:
    """SHA-256 digests already computed, remembered across processes by the file's stamp.

    Hashing a 7B bank's hook files on every open costs seconds; a file whose :data:`Stamp` is
    the one it had when it was hashed still holds those bytes (short of a disk fault, which only
    a full re-hash would catch). The memo is a small JSON file (``{stamp: sha256}``, newest last,
    at most :attr:`MAX_ENTRIES`); an unreadable memo counts as empty and a failed write is
    ignored: it only saves time, it never decides that a file is right on its own.

    Example:
        >>> memo = DigestMemo(cache_dir() / "digests.json")
        >>> memo.sha256("bank/hooks/blocks.0.hook_resid_pre/vectors.npy")  # hashed once
        '3f…'
        >>> memo.lookup(file_stamp(os.stat(path)))  # later processes: no hashing
        '3f…'
    """

    MAX_ENTRIES = 4096

    def __init__(self, path: str | os.PathLike | None) -> None:
        #: The memo file; ``None``: a memo that remembers nothing.
        self.path = None if path is None else Path(path)
        self._entries: dict[str, str] | None = None

    @staticmethod
    def _key(stamp: Stamp) -> str:
        return ":".join(map(str, stamp))

    def _read(self) -> dict[str, str]:
        if self.path is None:
            return {}
        try:
            data = read_json(self.path)
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}

    def lookup(self, stamp: Stamp | None) -> str | None:
        """The digest recorded for a file with this stamp, if any."""
        if stamp is None:
            return None
        if self._entries is None:
            self._entries = self._read()
        return self._entries.get(self._key(stamp))

    def record(self, items: Iterable[tuple[Stamp, str]]) -> None:
        """Remember ``(stamp, sha256)`` pairs (merged with what other processes wrote)."""
        entries = self._read()
        for stamp, digest in items:
            key = self._key(stamp)
            entries.pop(key, None)
            entries[key] = digest
        entries = dict(list(entries.items())[-self.MAX_ENTRIES :])
        self._entries = entries
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.path, json.dumps(entries).encode("utf-8"))
        except OSError as err:  # a read-only cache only costs time
            logger.debug("could not write the digest memo %s: %s", self.path, err)

    def sha256(self, path: str | os.PathLike) -> str:
        """:func:`sha256_file` of ``path``, hashed only when its stamp is not in the memo."""
        stamp = file_stamp(os.stat(path))
        known = self.lookup(stamp)
        if known is not None:
            return known
        digest = sha256_file(path)
        if file_stamp(os.stat(path)) == stamp:  # not written while it was read
            self.record([(stamp, digest)])
        return digest


def digest_memo() -> DigestMemo:
    """The user's memo of file digests (``<cache>/digests.json``): bank files and packaged
    weights are hashed once, not on every start, while their stamp is unchanged. Without a
    usable cache directory (read-only home) the memo is empty and remembers nothing."""
    try:
        return DigestMemo(cache_dir() / "digests.json")
    except OSError as err:
        logger.debug("no digest memo (cache directory unusable: %s)", err)
        return DigestMemo(None)


# ---- replacing a directory -------------------------------------------------------------------
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _renameat2() -> Any:
    if not hasattr(os, "uname") or os.uname().sysname != "Linux":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):  # pragma: no cover - old glibc
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths; False where the OS/filesystem cannot."""
    fn = _renameat2()
    if fn is None:
        return False
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _journal(dst: Path) -> Path:
    return dst.with_name(f".{dst.name}.replace.json")


def replace_dir(src: Path, dst: Path) -> None:
    """Move the (fsynced) directory ``src`` to ``dst``, replacing what is there, crash-safely.

    Readers see the old ``dst`` or the new one: on Linux the two are exchanged in one atomic
    step. Without that, the old ``dst`` is renamed aside under a journal; if the process dies
    between the two renames, :func:`recover_replace` (called by the next build or open) puts
    the new directory in place. The old directory is deleted afterwards.

    Example:
        >>> replace_dir(Path("bank.partial/bank"), Path("bank"))
    """
    src, dst = Path(src), Path(dst)
    if dst.exists() or dst.is_symlink():
        if dst.is_dir() and not dst.is_symlink() and _exchange(src, dst):
            fsync_dir(dst.parent)
            if src.parent != dst.parent:
                fsync_dir(src.parent)
            _remove(src)  # src now holds the old directory
            return
        aside = dst.with_name(f".{dst.name}.old-{os.getpid()}-{time.time_ns()}")
        atomic_write_json(_journal(dst), {"new": str(src), "old": str(aside)})
        os.rename(dst, aside)
        os.rename(src, dst)
        fsync_dir(dst.parent)
        _journal(dst).unlink()
        _remove(aside)
    else:
        os.rename(src, dst)
        fsync_dir(dst.parent)


def recover_replace(dst: Path) -> bool:
    """Finish a :func:`replace_dir` interrupted between its two renames; True if one was.

    Call it while holding the lock that guards ``dst`` (see :class:`FileLock`).
    """
    dst = Path(dst)
    journal = _journal(dst)
    if not journal.is_file():
        return False
    try:
        record = read_json(journal)
        new, old = Path(record["new"]), Path(record["old"])
    except (OSError, ValueError, KeyError, TypeError):
        journal.unlink(missing_ok=True)
        return False
    if not dst.exists() and new.is_dir():
        os.rename(new, dst)
    elif not dst.exists() and old.is_dir():
        os.rename(old, dst)  # the new directory is gone: put the old one back
    fsync_dir(dst.parent)
    journal.unlink(missing_ok=True)
    if old.exists():
        _remove(old)
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# ---- locks -----------------------------------------------------------------------------------
class LockedError(RuntimeError):
    """Another live process holds the lock (the message names its pid and host)."""


class FileLock:
    """Exclusive inter-process lock on ``path``; the file records the owner's pid and host.

    The lock is an ``flock`` held on an open descriptor: the kernel releases it when the owner
    exits or is killed, so a lock file left by a dead process is taken over by the next
    acquirer (its record is kept in :attr:`stale_owner`). The file is removed on release. Re-checking the inode after locking makes unlinking safe against a concurrent
    acquirer that opened the old file.

    Args:
        path: The lock file (created if missing).

    Raises:
        LockedError: From :meth:`acquire` when a live process holds the lock.

    Example:
        >>> with FileLock("banks/.captions.lock"):
        ...     build()
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self.stale_owner: dict[str, Any] | None = None

    @staticmethod
    def owner_of(path: str | os.PathLike) -> dict[str, Any] | None:
        """The ``{"pid", "host", "since"}`` record of a lock file, if readable."""
        try:
            record = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def acquire(self) -> FileLock:
        """Take the lock without waiting."""
        if self._fd is not None:
            raise LockedError(f"{self.path} is already held by this FileLock")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                _flock(fd)
            except BlockingIOError:
                os.close(fd)
                owner = self.owner_of(self.path) or {}
                raise LockedError(
                    f"{self.path} is held by pid {owner.get('pid', '?')} on host "
                    f"{owner.get('host', '?')} since {owner.get('since', '?')}"
                ) from None
            except BaseException:
                os.close(fd)
                raise
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the holder released and unlinked it between our open and flock
                os.close(fd)
                continue
            previous = self.owner_of(self.path)
            record = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(record).encode("utf-8"), 0)
            os.fsync(fd)
            self._fd = fd
            self.stale_owner = previous  # a dead owner's record, None for a fresh lock
            return self
        raise LockedError(
            f"could not lock {self.path}: it keeps being replaced"
        )  # pragma: no cover

    def release(self) -> None:
        """Remove the lock file and drop the lock."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self._fd)  # closing drops the flock
        self._fd = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:  # a forgotten lock must not outlive the object
        with contextlib.suppress(Exception):
            self.release()


def _flock(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    import msvcrt  # pragma: no cover - Windows

    try:  # pragma: no cover
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError as err:  # pragma: no cover
        raise BlockingIOError(str(err)) from err


@contextlib.contextmanager
def locked(path: str | os.PathLike) -> Iterator[FileLock]:
    """``with locked(path):`` — :class:`FileLock` as a context manager function."""
    lock = FileLock(path).acquire()
    try:
        yield lock
    finally:
        lock.release()
