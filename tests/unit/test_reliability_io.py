"""tl_latentlens._io: atomic writes, locks with owner records, crash-safe directory replace."""

from __future__ import annotations

import json
import os
import signal
import socket

import numpy as np
import pytest

from tl_latentlens import _io
from tl_latentlens.bank.format import store


def test_store_reexports_the_one_implementation():
    assert store.atomic_write_json is _io.atomic_write_json
    assert store.atomic_save_npy is _io.atomic_save_npy
    assert store.sha256_file is _io.sha256_file


def test_atomic_write_leaves_old_file_on_error_and_no_temp(tmp_path):
    path = tmp_path / "f.json"
    _io.atomic_write_json(path, {"a": 1})

    def boom(f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        _io.atomic_write(path, boom)
    assert json.loads(path.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]
    _io.atomic_save_npy(tmp_path / "a.npy", np.arange(3))
    assert np.load(tmp_path / "a.npy").tolist() == [0, 1, 2]
    assert _io.sha256_bytes(b"abc") == _io.sha256_file(_write(tmp_path / "b", b"abc"))


def _write(path, data):
    path.write_bytes(data)
    return path


def test_lock_refuses_a_second_holder_and_names_the_owner(tmp_path):
    path = tmp_path / ".x.lock"
    with _io.FileLock(path) as lock:
        assert lock.held
        owner = _io.FileLock.owner_of(path)
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
        with pytest.raises(_io.LockedError, match=f"pid {os.getpid()} on host"):
            _io.FileLock(path).acquire()
    assert not path.exists()  # released and removed
    with _io.FileLock(path) as again:
        assert again.stale_owner is None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_lock_of_a_killed_process_is_taken_over(tmp_path):
    path = tmp_path / ".x.lock"
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        held = _io.FileLock(path).acquire()  # noqa: F841 - kept alive until the kill
        os.kill(os.getpid(), signal.SIGKILL)
    os.waitpid(pid, 0)
    assert _io.FileLock.owner_of(path)["pid"] == pid  # the dead owner's file is still there
    with _io.FileLock(path) as lock:
        assert lock.stale_owner["pid"] == pid
        assert _io.FileLock.owner_of(path)["pid"] == os.getpid()


@pytest.mark.parametrize("exchange", [True, False])
def test_replace_dir(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(_io, "_exchange", lambda a, b: False)
    dst, new = tmp_path / "bank", tmp_path / "stage"
    dst.mkdir()
    (dst / "v").write_text("old")
    new.mkdir()
    (new / "v").write_text("new")
    _io.replace_dir(new, dst)
    assert (dst / "v").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank"]
    newer = tmp_path / "stage2"
    newer.mkdir()
    _io.replace_dir(newer, tmp_path / "fresh")  # nothing to replace
    assert (tmp_path / "fresh").is_dir()


def test_recover_replace_finishes_an_interrupted_replace(tmp_path):
    dst, new, aside = tmp_path / "bank", tmp_path / "stage", tmp_path / ".bank.old-1-2"
    aside.mkdir()
    (aside / "v").write_text("old")
    new.mkdir()
    (new / "v").write_text("new")
    _io.atomic_write_json(tmp_path / ".bank.replace.json", {"new": str(new), "old": str(aside)})
    # the process died after renaming the old bank aside: no bank at dst
    assert _io.recover_replace(dst)
    assert (dst / "v").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank"]
    assert not _io.recover_replace(dst)


# ---- digests remembered by file stamp ------------------------------------------------------
def test_digest_memo_hashes_a_file_once_and_again_after_any_write(tmp_path, monkeypatch):
    hashed = []
    real = _io.sha256_file
    monkeypatch.setattr(_io, "sha256_file", lambda p: hashed.append(p) or real(p))
    f = tmp_path / "vectors.npy"
    f.write_bytes(b"a" * 1000)
    memo_file = tmp_path / "memo" / "digests.json"
    first = _io.DigestMemo(memo_file).sha256(f)
    assert first == real(f) and len(hashed) == 1
    assert _io.DigestMemo(memo_file).sha256(f) == first and len(hashed) == 1  # another process
    # same size, mtime put back: the status-change time still moves, so it is hashed again
    st = os.stat(f)
    f.write_bytes(b"b" * 1000)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert _io.DigestMemo(memo_file).sha256(f) == real(f) != first and len(hashed) == 2


def test_digest_memo_survives_garbage_and_stays_small(tmp_path, monkeypatch):
    memo_file = tmp_path / "digests.json"
    memo_file.write_text("{not json")
    memo = _io.DigestMemo(memo_file)
    assert memo.lookup((1, 2, 3, 4, 5)) is None
    monkeypatch.setattr(_io.DigestMemo, "MAX_ENTRIES", 3)
    memo.record([((i, 0, 0, 0, 0), f"d{i}") for i in range(5)])
    again = _io.DigestMemo(memo_file)
    assert [again.lookup((i, 0, 0, 0, 0)) for i in range(5)] == [None, None, "d2", "d3", "d4"]
    memo_file.write_text('["a list"]')
    assert _io.DigestMemo(memo_file).lookup((4, 0, 0, 0, 0)) is None


def test_no_usable_cache_directory_means_no_memo_not_an_error(tmp_path, monkeypatch):
    """A read-only home must not stop a bank from opening: the memo is then empty."""

    def refuse():
        raise PermissionError("read-only file system")

    monkeypatch.setattr(_io, "cache_dir", refuse)
    memo = _io.digest_memo()
    f = tmp_path / "x.bin"
    f.write_bytes(b"abc")
    assert memo.path is None and memo.sha256(f) == _io.sha256_file(f)
    assert not list(tmp_path.glob("*.json"))  # nothing written anywhere
