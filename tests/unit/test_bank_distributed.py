"""Multi-rank bank builds (torch.distributed, gloo, 2 CPU processes) on the tiny model.

The ranks are forked from the test process (as torchrun would start them, but without booting
the model again in each), join a gloo group through a rendezvous file and call the ordinary
``build_bank``; the published bank is compared byte for byte with a single-process build.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import time
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

import tl_latentlens.bank.build.distributed as dist_mod
import tl_latentlens.bank.build.encode as encode_mod
from tiny_models import WORDS
from tl_latentlens.bank import build_bank
from tl_latentlens.bank.build.distributed import RankContext, assign_shards, rank_device

HOOKS = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]
OPTS = dict(batch_size=4, shard_batches=1, num_threads=1, progress=False)
N_SENT = 40


def corpus(n: int = N_SENT, seed: int = 11) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, rng.integers(2, 10))) for _ in range(n)]


def run_ranks(
    tmp: Path, work, n: int = 2, timeout: float = 120, init: bool = True
) -> list[tuple[int, str]]:
    """Fork ``n`` ranks that each run ``work(rank)`` in a gloo group (joined here when
    ``init``); their exit codes and error texts (``Type: message``)."""
    rdv = tmp / f"rdv-{time.time_ns()}"
    pids = []
    for rank in range(n):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            code = 1
            try:
                torch.set_num_threads(1)
                if init:
                    dist.init_process_group(
                        "gloo",
                        init_method=f"file://{rdv}",
                        rank=rank,
                        world_size=n,
                        timeout=dt.timedelta(seconds=60),
                    )
                work(rank)
                code = 0
            except BaseException as err:  # noqa: BLE001 - reported to the parent
                (tmp / f"err-{rank}.txt").write_text(f"{type(err).__name__}: {err}")
                traceback.print_exc()
            finally:
                os._exit(code)
        pids.append(pid)
    out = []
    deadline = time.monotonic() + timeout
    for rank, pid in enumerate(pids):
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                for p in pids:
                    try:
                        os.kill(p, 9)
                    except ProcessLookupError:
                        pass
                pytest.fail(f"rank {rank} hangs (no exit within {timeout} s)")
            time.sleep(0.05)
        err = tmp / f"err-{rank}.txt"
        text = err.read_text() if err.exists() else ""
        err.unlink(missing_ok=True)
        out.append((os.waitstatus_to_exitcode(status), text))
    return out


def count_captures(tmp: Path, rank: int, monkeypatch=None) -> None:
    """Count this rank's forward passes into ``calls-<rank>.txt``."""
    real = encode_mod.capture_text_batch
    path = tmp / f"calls-{rank}.txt"
    path.write_text("0")

    def counting(*a, **k):
        path.write_text(str(int(path.read_text()) + 1))
        return real(*a, **k)

    if monkeypatch is None:  # a forked rank: its module state dies with it
        encode_mod.capture_text_batch = counting
    else:
        monkeypatch.setattr(encode_mod, "capture_text_batch", counting)


def n_calls(tmp: Path, n: int = 2) -> list[int]:
    return [int((tmp / f"calls-{r}.txt").read_text()) for r in range(n)]


def bank_bytes(root: Path) -> dict[str, bytes]:
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name != "manifest.json":
            out[path.relative_to(root).as_posix()] = path.read_bytes()
    return out


def manifest_body(root: Path) -> dict:
    m = json.loads((root / "manifest.json").read_text())
    for key in ("generation", "created"):  # a fresh id and the build time: differ per build
        m.pop(key)
    return m


@contextlib.contextmanager
def one_thread():
    """Run torch on one thread, as the ranks do: CPU kernels may round differently with another
    thread count, and byte-identity holds for the same kernels."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(tiny_vlm, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "bank"
    with one_thread():
        build_bank(tiny_vlm, corpus(), out, HOOKS, **OPTS)
    return out


def assert_same_bank(a: Path, b: Path) -> None:
    got, want = bank_bytes(a), bank_bytes(b)
    assert sorted(got) == sorted(want)
    for rel in want:
        assert got[rel] == want[rel], rel
    assert manifest_body(a) == manifest_body(b)


def test_two_ranks_build_the_single_process_bank_byte_for_byte(tiny_vlm, tmp_path, reference):
    out = tmp_path / "bank"

    def work(rank):
        count_captures(tmp_path, rank)
        bank = build_bank(tiny_vlm, corpus(), out, HOOKS, **OPTS)
        assert bank.n_entries() > 0

    results = run_ranks(tmp_path, work)
    assert results == [(0, ""), (0, "")]
    calls = n_calls(tmp_path)
    n_batches = -(-json.loads((reference / "manifest.json").read_text())["counts"]["n_sentences"]
                  // OPTS["batch_size"])  # fmt: skip
    assert sum(calls) == n_batches and min(calls) > 0  # the work was split, nothing twice
    assert_same_bank(out, reference)
    assert not out.with_name("bank.partial").exists()
    assert not list(tmp_path.glob(".bank.*"))  # no spool, lock or temp left


@pytest.mark.parametrize("resume_ranks", [2, 1])
def test_dead_rank_fails_clearly_and_rerun_resumes(
    tiny_vlm, tmp_path, reference, resume_ranks, monkeypatch
):
    out = tmp_path / "bank"

    def dying(rank):
        if rank == 1:  # rank 1 dies (like a kill -9) right after its first complete shard
            real = dist_mod._write_shard

            def write_then_die(*a, **k):
                real(*a, **k)
                os._exit(17)

            dist_mod._write_shard = write_then_die
        build_bank(tiny_vlm, corpus(), out, HOOKS, **OPTS)

    (code0, err0), (code1, _) = run_ranks(tmp_path, dying)
    assert code1 == 17
    assert code0 == 1
    assert err0.startswith("DistributedBuildError: rank 0: lost the other ranks during")
    assert "Rerun the same command" in err0
    assert not out.exists()
    shards = sorted((out.with_name("bank.partial") / "shards").glob("s*"))
    assert len(shards) >= 2  # rank 0's shards and rank 1's first one are kept

    def rerun(rank):
        count_captures(tmp_path, rank)
        build_bank(tiny_vlm, corpus(), out, HOOKS, **OPTS)

    n_batches = -(-json.loads((reference / "manifest.json").read_text())["counts"]["n_sentences"]
                  // OPTS["batch_size"])  # fmt: skip
    if resume_ranks == 2:
        assert run_ranks(tmp_path, rerun) == [(0, ""), (0, "")]
        calls = sum(n_calls(tmp_path))
    else:  # the same work folder finished by a single process
        count_captures(tmp_path, 0, monkeypatch)
        with one_thread():
            build_bank(tiny_vlm, corpus(), out, HOOKS, **OPTS)
        calls = n_calls(tmp_path, 1)[0]
    assert calls == n_batches - len(shards)  # only the missing shards ran again
    assert_same_bank(out, reference)


def test_a_failing_rank_stops_every_rank_with_its_error(tiny_vlm, tmp_path):
    out = tmp_path / "bank"

    def work(rank):
        if rank == 1:

            def broken(*a, **k):
                raise RuntimeError("out of memory on this rank")

            encode_mod.capture_text_batch = broken
        build_bank(tiny_vlm, corpus(12), out, HOOKS[:1], **OPTS)

    (code0, err0), (code1, err1) = run_ranks(tmp_path, work)
    assert (code0, code1) == (1, 1)
    assert err1 == "RuntimeError: out of memory on this rank"
    assert err0 == (
        "DistributedBuildError: rank 1 failed during 'encode (pass 2)': "
        "RuntimeError: out of memory on this rank"
    )


def test_shards_are_dealt_by_cost():
    costs = np.array([9, 8, 7, 6, 5, 4, 3, 2, 1, 1])
    plan = assign_shards(range(10), costs, 3)
    assert sorted(s for p in plan for s in p) == list(range(10))
    loads = [int(costs[p].sum()) for p in plan]
    assert max(loads) - min(loads) <= 1
    assert assign_shards([2, 5], costs, 3) == [[2], [5], []]
    assert assign_shards(range(10), costs, 3) == plan  # deterministic


def fake_gpus(monkeypatch, n: int) -> None:
    """Pretend this process sees ``n`` CUDA devices (no CUDA call is made, so forked ranks
    later in this module are not started after a CUDA initialisation)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)


def test_each_rank_gets_its_own_gpu(monkeypatch):
    fake_gpus(monkeypatch, 8)
    ctx = RankContext(rank=5, world_size=8, local_rank=1)
    assert rank_device("cuda", ctx) == "cuda:1"
    assert rank_device("cuda:0", ctx) == "cuda:0"  # an explicit index is kept
    assert rank_device("cpu", ctx) == "cpu"  # a CPU rank stays on the CPU
    assert rank_device("cuda", None) == "cuda"  # a single process: as given
    assert rank_device(None, ctx) == "cuda:1"  # no device: CUDA when present


def test_ranks_without_gpus_stay_on_the_cpu(monkeypatch):
    fake_gpus(monkeypatch, 0)
    ctx = RankContext(rank=1, world_size=2, local_rank=1)
    assert rank_device(None, ctx) is None
    assert rank_device("cpu", ctx) == "cpu"
    for asked in ("cuda", "cuda:1"):
        with pytest.raises(dist_mod.DistributedBuildError, match="sees 0 CUDA device"):
            rank_device(asked, ctx)


def test_more_ranks_than_gpus_share_them(monkeypatch, caplog):
    """Two ranks on one GPU (the gpu tier's torchrun case) both get cuda:0, not cuda:1."""
    fake_gpus(monkeypatch, 1)
    ranks = [RankContext(rank=r, world_size=2, local_rank=r) for r in range(2)]
    with caplog.at_level("WARNING"):
        assert [rank_device("cuda", c) for c in ranks] == ["cuda:0", "cuda:0"]
    assert "2 ranks share 1 GPU" in caplog.text
    with pytest.raises(dist_mod.DistributedBuildError, match="cuda:1"):
        rank_device("cuda:1", ranks[1])


def test_cli_joins_the_ranks_torchrun_describes(tiny_vlm, tmp_path, monkeypatch):
    """``tl-latentlens build-bank`` as torchrun starts it: RANK/WORLD_SIZE/MASTER_* in the
    environment (model loading replaced by the tiny model)."""
    import argparse
    import socket

    from tl_latentlens.apps import build_bank as app

    text = tmp_path / "c.txt"
    text.write_text("\n".join(corpus()) + "\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    from tl_latentlens.apps import build_bank as bank_cli

    monkeypatch.setattr(
        bank_cli,
        "load_vlm",
        lambda name, device=None, dtype=None: (
            (tmp_path / f"device-{os.environ['RANK']}.txt").write_text(repr(device)) and tiny_vlm
        ),
    )
    fake_gpus(monkeypatch, 0)  # the forked ranks inherit it: CPU ranks on any machine
    parser = argparse.ArgumentParser()
    app.add_parser(parser.add_subparsers(dest="command"))
    argv = ["build-bank", str(text), str(tmp_path / "bank"), "--model", "tiny", "--layers", "0",
            "2", "--batch-size", "1", "--no-progress", "--threads", "1"]  # fmt: skip

    def rank_main(rank):
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
        count_captures(tmp_path, rank)
        args = parser.parse_args(argv)
        assert args.func(args) == 0
        assert not dist.is_initialized()  # the run leaves the group

    assert run_ranks(tmp_path, rank_main, init=False) == [(0, ""), (0, "")]
    assert min(n_calls(tmp_path)) > 0  # both ranks encoded
    assert {(tmp_path / f"device-{r}.txt").read_text() for r in (0, 1)} == {"None"}  # no GPU seen
    single = tmp_path / "single"
    with one_thread():
        build_bank(tiny_vlm, text, single, ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_post"],
                   batch_size=1, num_threads=1, ef_construction=100, progress=False)  # fmt: skip
    assert_same_bank(tmp_path / "bank", single)
