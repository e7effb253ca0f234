"""Bank.open trusts nothing on disk; queries and hook arguments get clear errors
(issue 14, items 7, 8, 9, 10, 11 and 12)."""

from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest
import torch

from tiny_models import WORDS
from tl_latentlens.bank import (
    Bank,
    BankError,
    BankFormatError,
    BankQueryError,
    CorruptBankError,
    MissingHookError,
    build_bank,
)

HOOKS = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_post"]


def corpus(seed=0, n=30):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, rng.integers(3, 9))) for _ in range(n)]


@pytest.fixture(scope="module")
def bank_dir(tiny_vlm, tmp_path_factory):
    out = tmp_path_factory.mktemp("rel") / "bank"
    build_bank(tiny_vlm, corpus(), out, HOOKS, max_per_token=None, progress=False)
    return out


@pytest.fixture
def copy(bank_dir, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(bank_dir, dst)
    return dst


def edit_manifest(path, change):
    m = json.loads((path / "manifest.json").read_text())
    change(m)
    (path / "manifest.json").write_text(json.dumps(m))


# ---- manifest fields (items 7, 8) --------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.update(hooks=[]), "'hooks' must be a non-empty list"),
        (lambda m: m["hnsw"].update(ef_search="fast"), "hnsw.ef_search must be a positive int"),
        (lambda m: m["hooks"][1].update(layer=5), "recorded at layer 5, but it is layer 2"),
        (lambda m: m["hooks"][0].update(name="../../etc"), "not a residual-stream hook"),
        (lambda m: m.update(d_model="64"), "'d_model' must be a positive int"),
        (lambda m: m["counts"].update(n_entries=-1), "counts.n_entries"),
        (lambda m: m["files"].update({"../outside": {"size": 1, "sha256": "0" * 64}}), "leaves"),
        (lambda m: m["model"].pop("weights"), "per-part weight digests"),
        (lambda m: m.update(dtype="float64"), "unknown storage dtype"),
    ],
)
def test_malformed_manifest_is_a_clear_error(copy, change, message):
    edit_manifest(copy, change)
    for verify in ("size", "lazy", "full"):
        with pytest.raises(BankFormatError, match=message):
            Bank.open(copy, verify=verify)


# ---- hook arguments (item 7) ---------------------------------------------------------------
def test_hook_arguments(bank_dir):
    bank = Bank.open(bank_dir)
    q = torch.randn(64)
    with pytest.raises(MissingHookError, match=r"no hook for 2\.5.*blocks\.0\.hook_resid_pre"):
        bank.search(q, hook=2.5)
    with pytest.raises(MissingHookError, match="not a residual-stream hook"):
        bank.search(q, hook="blocks.x.attn")
    for bad in (None, True, float("nan")):
        with pytest.raises(BankQueryError):
            bank.search(q, hook=[bad])
    assert bank.search(q, hook=2.0, k=1)[0][0].layer == 2
    assert bank.search(q, hook=np.int64(0), k=1)[0][0].layer == 0


# ---- queries with huge or tiny components (item 9) -----------------------------------------
@pytest.mark.parametrize("scale", [1e19, 1e25, 1e-30])
def test_queries_are_normalised_safely(bank_dir, scale):
    bank = Bank.open(bank_dir)
    q = torch.randn(3, 64, generator=torch.Generator().manual_seed(0))
    want = [[(n.sentence_id, n.position) for n in r] for r in bank.search(q, k=3, method="exact")]
    for big in (q * scale, (q.double() * scale).numpy()):
        got = bank.search(big, k=3, method="exact")
        assert [[(n.sentence_id, n.position) for n in r] for r in got] == want
        assert all(n.similarity > 0.0 for r in got for n in r[:1])
    for far in (1e300, 1e-300):  # beyond float32 (given as float64): still a direction
        got = bank.search(q.double().numpy() * far, k=3, method="exact")
        assert [[(n.sentence_id, n.position) for n in r] for r in got] == want
    with pytest.raises(BankQueryError, match="all zeros"):
        bank.search(torch.zeros(64))


# ---- every file corrupted, every verify mode (items 4, 12) ---------------------------------
def _flip_spots(size: int, rng, dense: bool = False) -> list[int]:
    """Bytes to flip: the .npy header region and a few data bytes (``dense``: many more)."""
    spots = {0, 8, 40, 64, 100, size // 2, size - 1}
    if dense:
        spots |= set(range(min(size, 128)))
    spots |= {int(i) for i in rng.integers(0, size, 24 if dense else 2)}
    return sorted(s for s in spots if 0 <= s < size)


def _use(bank):
    q = torch.randn(2, 64, generator=torch.Generator().manual_seed(1))
    for hook in bank.hooks:
        for exact in (True, False):
            for row in bank.search(q, hook=hook, k=3, method="exact" if exact else "auto"):
                for n in row:
                    n.sentence, n.token, n.sentence_tokens  # noqa: B018 - must not raise


def corruption_campaign(
    bank_dir, tmp_path, verify: str, dense: bool = False
) -> tuple[int, int, list[str]]:
    """Flip / truncate / delete each bank file; returns (refused, total, crashes)."""
    rng = np.random.default_rng(0)
    files = json.loads((bank_dir / "manifest.json").read_text())["files"]
    refused = total = 0
    crashes: list[str] = []
    work = tmp_path / f"c-{verify}"
    shutil.copytree(bank_dir, work)
    for rel, rec in files.items():
        original = (work / rel).read_bytes()
        mutants = [("delete", None), ("truncate", original[:-1]), ("extend", original + b"\0")]
        for pos in _flip_spots(rec["size"], rng, dense):
            buf = bytearray(original)
            buf[pos] ^= 0x41
            mutants.append((f"flip@{pos}", bytes(buf)))
        for what, data in mutants:
            if data is None:
                (work / rel).unlink()
            else:
                (work / rel).write_bytes(data)
            total += 1
            try:
                _use(Bank.open(work, verify=verify))
            except BankError:
                refused += 1
            except Exception as err:  # noqa: BLE001 - the campaign records any other failure
                crashes.append(f"{rel} {what}: {type(err).__name__}: {err}")
            (work / rel).write_bytes(original)
    return refused, total, crashes


@pytest.mark.parametrize("verify", ["lazy", "full"])
def test_every_corruption_is_refused_by_checksum_modes(bank_dir, tmp_path, verify):
    refused, total, crashes = corruption_campaign(bank_dir, tmp_path, verify)
    assert crashes == []
    assert refused == total


def test_size_mode_never_crashes_and_refuses_structural_damage(bank_dir, tmp_path, copy):
    refused, total, crashes = corruption_campaign(bank_dir, tmp_path, "size")
    assert crashes == []
    assert refused > total // 2
    # structural damage is refused even without checksums
    e = np.load(copy / "entries.npy")
    e["token_id"][3] += 1
    np.save(copy / "entries.npy", e)
    with pytest.raises(CorruptBankError, match="token ids do not match"):
        Bank.open(copy, verify="size")
    shutil.copy(bank_dir / "entries.npy", copy / "entries.npy")
    off = np.load(copy / "sentences/text.offsets.npy")
    off[2], off[3] = off[3], off[2]
    np.save(copy / "sentences/text.offsets.npy", off)
    with pytest.raises(CorruptBankError, match="offsets decrease"):
        Bank.open(copy, verify="size")


def test_size_mode_returns_no_undecodable_text(bank_dir, copy):
    data = bytearray((copy / "sentences/text.bin").read_bytes())
    data[0] = 0xFF  # invalid UTF-8 in sentence 0
    (copy / "sentences/text.bin").write_bytes(bytes(data))
    assert "\ufffd" in Bank.open(copy, verify="size").sentence(0)
    with pytest.raises(CorruptBankError, match="checksum"):
        Bank.open(copy)


def test_object_arrays_are_never_unpickled(copy):
    marker = copy / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    np.save(copy / "entries.npy", np.array([Evil()], dtype=object), allow_pickle=True)
    for verify in ("size", "lazy"):
        with pytest.raises(CorruptBankError):
            Bank.open(copy, verify=verify)
    assert not marker.exists()


# ---- reproducible builds (item 10) ----------------------------------------------------------
def test_builds_are_reproducible_with_several_threads(tiny_vlm, tmp_path):
    digests = []
    for name in ("a", "b"):
        bank = build_bank(
            tiny_vlm, corpus(2, 20), tmp_path / name, HOOKS, num_threads=2, progress=False
        )
        digests.append({rel: r.sha256 for rel, r in bank.manifest.files.items()})
        assert bank.manifest.hnsw.deterministic is True
    assert digests[0] == digests[1]


# ---- leftovers of killed builds (item 5) ----------------------------------------------------
def test_next_build_removes_what_killed_builds_left(tiny_vlm, tmp_path):
    out = tmp_path / "bank"
    (tmp_path / ".bank.spool-abc").mkdir()
    (tmp_path / ".bank.spool-abc" / "texts.bin").write_bytes(b"x")
    (tmp_path / ".bank.old-123-456").mkdir()
    (tmp_path / "bank.partial").mkdir()  # a work folder without progress record
    build_bank(tiny_vlm, corpus(3, 10), out, HOOKS, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank"]


# ---- checkpoints never run code (item 11) ---------------------------------------------------
def test_training_checkpoint_cannot_run_code(tmp_path, monkeypatch):
    from tl_latentlens.training import train as train_mod

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    out = tmp_path / "run"
    out.mkdir()
    with open(out / train_mod.LAST_CKPT, "wb") as f:
        pickle.dump({"config": Evil()}, f, protocol=2)

    class Stop(Exception):
        pass

    def no_training(*a, **k):  # never reached: loading must fail first
        raise Stop

    monkeypatch.setattr(train_mod, "batch_indices", no_training)
    conn = torch.nn.Linear(2, 2)
    fake = type("V", (), {"connector": conn, "device": torch.device("cpu")})()
    with pytest.raises(pickle.UnpicklingError):
        train_mod.train_connector(fake, None, None, None, train_mod.TrainConfig(steps=1), out)
    assert not marker.exists()
