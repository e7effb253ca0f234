"""Crash and concurrency campaign on the tiny model (issue 14, items 1, 2, 5 and 10).

Builds are killed with SIGKILL at chosen points (in a forked child, so the test process keeps
its loaded model); a rerun must then resume to a bank identical, file by file, to an
uninterrupted build, and leave nothing behind. Two builders into one directory: the second is
refused while the first runs, and a dead builder's lock is taken over.
"""

from __future__ import annotations

import os
import signal
import time
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch

import tl_latentlens._io as io_mod
import tl_latentlens.bank.build.encode as encode_mod
import tl_latentlens.bank.build.pipeline as build_mod
from tiny_models import WORDS
from tl_latentlens.bank import Bank, BankLockedError, build_bank

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

HOOKS = ["blocks.0.hook_resid_pre", "blocks.2.hook_resid_post"]
OPTS = dict(max_per_token=None, batch_size=4, shard_batches=2, num_threads=2, progress=False)


def corpus(seed: int = 0, n: int = 24) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, rng.integers(3, 9))) for _ in range(n)]


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def in_child(fn, timeout: float = 120.0) -> int:
    """Run ``fn`` in a forked child; return its wait status (the child is killed on timeout)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 0
        try:
            torch.set_num_threads(1)
            fn()
        except BaseException:
            traceback.print_exc()
            code = 1
        os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("the child build hung")
        time.sleep(0.02)


def killed(status: int) -> bool:
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def file_digests(path: Path) -> dict[str, str]:
    return {rel: rec.sha256 for rel, rec in Bank.open(path).manifest.files.items()}


def leftovers(out: Path) -> list[str]:
    """Anything next to ``out`` that a finished build should not leave."""
    return sorted(p.name for p in out.parent.iterdir() if p.name != out.name)


@pytest.fixture(scope="module")
def reference(tiny_vlm, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "bank"
    build_bank(tiny_vlm, corpus(), out, HOOKS, **OPTS)
    return file_digests(out)


@pytest.fixture(scope="module")
def reference_b(tiny_vlm, tmp_path_factory):
    out = tmp_path_factory.mktemp("refb") / "bank"
    build_bank(tiny_vlm, corpus(seed=1), out, HOOKS, **OPTS)
    return file_digests(out)


# ---- kill points: each patches the child so it SIGKILLs itself at one moment of a build ----
def kill_in_pass1(monkeypatch):
    real = build_mod.select_entries

    def select(vlm, sentences, *a, **kw):
        def cut():
            for i, s in enumerate(sentences):
                if i == 15:
                    _die()
                yield s

        return real(vlm, cut(), *a, **kw)

    monkeypatch.setattr(build_mod, "select_entries", select)


def kill_after_tables(monkeypatch):
    monkeypatch.setattr(build_mod, "allocate_vectors", lambda *a, **k: _die())


def kill_mid_shard(monkeypatch):
    real, calls = encode_mod.capture_text_batch, []

    def capture(*a, **k):
        calls.append(1)
        if len(calls) == 3:  # inside the second shard, before it is recorded
            _die()
        return real(*a, **k)

    monkeypatch.setattr(encode_mod, "capture_text_batch", capture)


def kill_after_first_shard(monkeypatch):
    real = build_mod.encode_batches

    def encode(vlm, hooks, stage, offsets, cfg, start, on_shard):
        def record(done):
            on_shard(done)
            _die()

        return real(vlm, hooks, stage, offsets, cfg, start, record)

    monkeypatch.setattr(build_mod, "encode_batches", encode)


def kill_between_hooks(monkeypatch):
    real, calls = build_mod.finalize_hook, []

    def finalize(*a, **k):
        calls.append(1)
        if len(calls) == 2:  # the first hook is finished and recorded, the second is not
            _die()
        return real(*a, **k)

    monkeypatch.setattr(build_mod, "finalize_hook", finalize)


def kill_while_writing_a_hook(monkeypatch):
    """Die after a hook's files were written but before progress was recorded, leaving one of
    the temp files an atomic write leaves when killed."""
    real = build_mod.finalize_hook

    def finalize(folder, *a, **k):
        real(folder, *a, **k)
        (Path(folder) / ".vectors.npy.999.tmp").write_bytes(b"half a file")
        _die()

    monkeypatch.setattr(build_mod, "finalize_hook", finalize)


def kill_before_publish(monkeypatch):
    monkeypatch.setattr(build_mod, "publish_dir", lambda *a: _die())


def kill_between_renames(monkeypatch):
    """Force the journaled replace (no atomic exchange) and die between its two renames."""

    class OsProxy:
        calls = 0

        def __getattr__(self, name):
            return getattr(os, name)

        def rename(self, a, b):
            os.rename(a, b)
            OsProxy.calls += 1
            if OsProxy.calls == 1:
                _die()

    monkeypatch.setattr(io_mod, "_exchange", lambda a, b: False)
    monkeypatch.setattr(io_mod, "os", OsProxy())


def kill_after_exchange(monkeypatch):
    monkeypatch.setattr(io_mod, "_remove", lambda path: _die())


KILLS = [
    kill_in_pass1,
    kill_after_tables,
    kill_mid_shard,
    kill_after_first_shard,
    kill_between_hooks,
    kill_while_writing_a_hook,
    kill_before_publish,
]
#: Kill points while an existing bank is being replaced (overwrite=True).
REPLACE_KILLS = [kill_mid_shard, kill_before_publish, kill_between_renames, kill_after_exchange]
CASES = [(k, False) for k in KILLS] + [(k, True) for k in REPLACE_KILLS]


@pytest.mark.parametrize(
    ("kill", "replacing"),
    CASES,
    ids=[f"{k.__name__}-{'replace' if r else 'new'}" for k, r in CASES],
)
def test_killed_build_resumes_to_identical_bank(
    kill, replacing, tiny_vlm, tmp_path, reference, reference_b
):
    out = tmp_path / "bank"
    if replacing:  # an existing different bank is being replaced (overwrite=True)
        build_bank(tiny_vlm, corpus(seed=1), out, HOOKS, **OPTS)

    def child():
        mp = pytest.MonkeyPatch()
        kill(mp)
        build_bank(tiny_vlm, corpus(), out, HOOKS, overwrite=True, **OPTS)

    assert killed(in_child(child))
    # whatever is at out is a whole bank, the old one or the new one (opening it finishes a
    # replace killed between its renames); a new bank is not there before it is complete
    if replacing:
        assert file_digests(out) in (reference, reference_b)
    else:
        assert not out.exists()
    build_bank(tiny_vlm, corpus(), out, HOOKS, overwrite=True, **OPTS)
    assert file_digests(out) == reference
    Bank.open(out, tiny_vlm, verify="full")
    assert leftovers(out) == []


def test_second_builder_is_refused_while_the_first_runs(tiny_vlm, tmp_path, reference):
    out = tmp_path / "banks" / "bank"
    go = tmp_path / "go"

    def child():
        real = build_mod.encode_batches

        def slow(*a, **k):
            (tmp_path / "started").touch()
            while not go.exists():
                time.sleep(0.02)
            return real(*a, **k)

        mp = pytest.MonkeyPatch()
        mp.setattr(build_mod, "encode_batches", slow)
        build_bank(tiny_vlm, corpus(), out, HOOKS, **OPTS)

    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            torch.set_num_threads(1)
            child()
            os._exit(0)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "started").exists():
            assert time.monotonic() < deadline, "the first builder never started"
            time.sleep(0.02)
        with pytest.raises(BankLockedError, match=f"pid {pid} on host"):
            build_bank(tiny_vlm, corpus(), out, HOOKS, **OPTS)
        with pytest.raises(BankLockedError):  # overwrite does not break the lock either
            build_bank(tiny_vlm, corpus(seed=1), out, HOOKS, overwrite=True, **OPTS)
    finally:
        go.touch()
        _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert file_digests(out) == reference  # the first builder's bank, intact
    assert leftovers(out) == []


def test_dead_builders_lock_is_taken_over(tiny_vlm, tmp_path, reference, caplog):
    out = tmp_path / "bank"

    def child():
        mp = pytest.MonkeyPatch()
        kill_after_first_shard(mp)
        build_bank(tiny_vlm, corpus(), out, HOOKS, **OPTS)

    assert killed(in_child(child))
    lock = build_mod.lock_path(out.absolute())
    assert lock.exists()  # the dead builder's lock file is still there
    assert io_mod.FileLock.owner_of(lock)["pid"] != os.getpid()
    with caplog.at_level("WARNING"):
        build_bank(tiny_vlm, corpus(), out, HOOKS, **OPTS)
    assert "ended without finishing" in caplog.text
    assert file_digests(out) == reference
    assert leftovers(out) == []


def test_builds_into_different_directories_run_side_by_side(tiny_vlm, tmp_path, reference):
    go = tmp_path / "go"

    def child():
        real = build_mod.encode_batches

        def wait(*a, **k):
            while not go.exists():
                time.sleep(0.02)
            return real(*a, **k)

        mp = pytest.MonkeyPatch()
        mp.setattr(build_mod, "encode_batches", wait)
        build_bank(tiny_vlm, corpus(), tmp_path / "a", HOOKS, **OPTS)

    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            torch.set_num_threads(1)
            child()
            os._exit(0)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
    try:
        build_bank(tiny_vlm, corpus(), tmp_path / "b", HOOKS, **OPTS)
    finally:
        go.touch()
        _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert file_digests(tmp_path / "a") == file_digests(tmp_path / "b") == reference


def test_open_bank_keeps_reading_it_after_a_replace(tiny_vlm, tmp_path):
    out = tmp_path / "bank"
    old = build_bank(tiny_vlm, corpus(), out, HOOKS, **OPTS)
    q = torch.randn(6, 64, generator=torch.Generator().manual_seed(0))
    before = {
        exact: [[(n.sentence, n.token, n.similarity) for n in row] for row in old.search(q, k=3, method="exact" if exact else "auto")]
        for exact in (True, False)
    }  # fmt: skip
    fresh = Bank.open(out, verify="size")  # opened, nothing searched yet (all lazy loads pending)

    def child():  # another process publishes a different bank at the same path
        build_bank(tiny_vlm, corpus(seed=1), out, HOOKS, overwrite=True, **OPTS)

    assert os.WIFEXITED(in_child(child))
    assert Bank.open(out).manifest.generation != old.manifest.generation
    for bank in (old, fresh):
        for exact in (True, False):
            got = [[(n.sentence, n.token, n.similarity) for n in row] for row in bank.search(q, k=3, method="exact" if exact else "auto")]  # fmt: skip
            assert got == before[exact]
    # the sentences it returns are its own
    assert {bank.sentence(i) for i in range(bank.n_sentences)} <= set(corpus())
