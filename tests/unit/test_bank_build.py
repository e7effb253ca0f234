"""build_bank on the tiny model: contents, prefix dedup, cap, resume, existing banks, dtypes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tl_latentlens.bank.build.encode as encode_mod
from tiny_models import WORDS
from tl_latentlens.bank import Bank, BankExistsError, build_bank
from tl_latentlens.capture import capture_text

HOOKS = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]


def corpus(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, rng.integers(2, 10))) for _ in range(n)]


def _ids(vlm, text, max_tokens=64):
    tb = vlm.tokenize_sentences([text], max_tokens)
    return tb.input_ids[0].tolist(), tb.keep[0].tolist()


def _entries(bank):
    e = bank.entries
    return [
        (bank.sentence(s), int(p), int(t))
        for s, p, t in zip(e["sentence_id"], e["position"], e["token_id"])
    ]


def test_bank_vectors_equal_per_sentence_capture(tiny_vlm, tmp_path):
    sents = corpus(30)
    bank = build_bank(
        tiny_vlm, sents, tmp_path / "b", HOOKS, max_per_token=None, batch_size=7,
        dtype="float32", progress=False,
    )  # fmt: skip
    assert bank.hooks == HOOKS
    assert bank.layers == {HOOKS[0]: 0, HOOKS[1]: 2, HOOKS[2]: 3}
    e = bank.entries
    for sid in range(bank.n_sentences):
        acts = next(capture_text(tiny_vlm, [bank.sentence(sid)], HOOKS, batch_size=1))
        pos_to_row = {int(p): i for i, p in enumerate(acts.position)}
        rows = np.flatnonzero(e["sentence_id"] == sid)
        assert rows.size > 0
        for hook in HOOKS:
            want = acts.residuals[hook][[pos_to_row[int(p)] for p in e["position"][rows]]]
            got = torch.from_numpy(bank.entry_vectors(hook, rows))
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    # identical vectors are stored once per hook; every entry maps to one stored vector
    for hook in HOOKS:
        assert bank.n_vectors(hook) <= bank.n_entries()
        stored = bank.decoded(hook)
        assert np.unique(stored, axis=0).shape[0] == stored.shape[0]
        np.testing.assert_allclose(bank.norms(hook), np.linalg.norm(stored, axis=1), rtol=1e-5)
    # at the input layer a token's vector is its embedding: one stored vector per token id
    n_ids = np.unique(e["token_id"]).shape[0]
    assert bank.n_vectors(HOOKS[0]) == n_ids < bank.n_entries()
    # every stored token id / position agrees with the sentence table
    for sid, p, t in zip(e["sentence_id"], e["position"], e["token_id"]):
        assert bank.sentence_token_ids(sid)[p] == t


def test_float16_bank_close_to_capture(tiny_vlm, tmp_path):
    sents = corpus(10, seed=5)
    b32 = build_bank(tiny_vlm, sents, tmp_path / "f32", HOOKS, dtype="float32", progress=False)
    b16 = build_bank(tiny_vlm, sents, tmp_path / "f16", HOOKS, progress=False)
    assert b16.vectors(HOOKS[1]).dtype == np.float16
    np.testing.assert_allclose(
        b16.entry_vectors(HOOKS[1]), b32.entry_vectors(HOOKS[1]), rtol=2e-3, atol=2e-3
    )


def test_prefix_dedup_stores_each_distinct_prefix_once(tiny_vlm, tmp_path):
    sents = [
        "the red car",
        "the red car",
        "the red car near the tree",
        "a dog",
        "the red boat",
        "a dog",
    ]
    bank = build_bank(
        tiny_vlm, sents, tmp_path / "b", HOOKS[:1], max_per_token=None, progress=False
    )
    got = _entries(bank)
    assert got == sorted(set(got), key=got.index)  # no duplicates
    # expected: every distinct storable prefix, at its first occurrence
    want, seen = set(), set()
    for text in sents:
        ids, keep = _ids(tiny_vlm, text)
        for i in range(len(ids)):
            if keep[i] and tuple(ids[: i + 1]) not in seen:
                seen.add(tuple(ids[: i + 1]))
                want.add((text, i, ids[i]))
    assert set(got) == want
    assert len(got) == 3 + 3 + 2 + 1  # "the red car" + "near the tree" + "a dog" + "boat"
    assert bank.n_sentences == 4  # the repeats hold no entry
    assert bank.manifest.corpus["n_sentences"] == 6


def test_dedup_on_random_corpus_matches_brute_force(tiny_vlm, tmp_path):
    sents = corpus(200, seed=2) + corpus(50, seed=2)  # 50 exact repeats
    bank = build_bank(
        tiny_vlm, sents, tmp_path / "b", HOOKS[:1], max_per_token=None, progress=False
    )
    prefixes = set()
    for text in sents:
        ids, keep = _ids(tiny_vlm, text)
        prefixes |= {tuple(ids[: i + 1]) for i in range(len(ids)) if keep[i]}
    e = bank.entries
    stored = [
        tuple(bank.sentence_token_ids(s)[: p + 1].tolist())
        for s, p in zip(e["sentence_id"], e["position"])
    ]
    assert len(stored) == len(set(stored)) == len(prefixes)
    assert set(stored) == prefixes


def test_cap_holds_and_is_deterministic(tiny_vlm, tmp_path):
    sents = corpus(150, seed=3)
    kw = dict(hooks=HOOKS[:1], max_per_token=4, progress=False)
    a = build_bank(tiny_vlm, sents, tmp_path / "a", **kw)
    b = build_bank(tiny_vlm, sents, tmp_path / "b", **kw)
    c = build_bank(tiny_vlm, sents, tmp_path / "c", seed=7, **kw)
    counts = np.bincount(a.entries["token_id"])
    assert counts.max() == 4
    assert (counts == 4).sum() >= 40  # frequent words hit the cap
    assert a.manifest.counts.n_full_token_types == int((counts == 4).sum())
    assert _entries(a) == _entries(b)
    np.testing.assert_array_equal(a.vectors(HOOKS[0]), b.vectors(HOOKS[0]))
    assert set(_entries(a)) != set(_entries(c))
    assert np.array_equal(np.bincount(c.entries["token_id"]), counts)


def _read(bank, rel):
    return (bank.root / rel).read_bytes()


def test_resume_after_interruption_gives_identical_bank(tiny_vlm, tmp_path, monkeypatch):
    sents = corpus(60, seed=4)
    kw = dict(hooks=HOOKS, batch_size=4, shard_batches=1, num_threads=1, progress=False)
    real = encode_mod.capture_text_batch
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt("simulated interruption")
        return real(*args, **kwargs)

    monkeypatch.setattr(encode_mod, "capture_text_batch", flaky)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        build_bank(tiny_vlm, sents, out, **kw)
    assert not out.exists()
    state = (tmp_path / "resumed.partial" / "state.json").read_text()
    assert '"batches_done": 3' in state

    def counting(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    calls["n"] = 0
    monkeypatch.setattr(encode_mod, "capture_text_batch", counting)
    resumed = build_bank(tiny_vlm, sents, out, **kw)
    n_resumed = calls["n"]
    assert not (tmp_path / "resumed.partial").exists()
    calls["n"] = 0
    fresh = build_bank(tiny_vlm, sents, tmp_path / "fresh", **kw)
    assert n_resumed == calls["n"] - 3  # only the unfinished batches ran again
    rels = ["entries.npy", "sentences/text.bin", "sentences/ids.bin"]
    for hook in HOOKS:
        rels += [f"hooks/{hook}/{name}" for name in ("vectors.npy", "norms.npy", "occ_entries.npy")]
    for rel in rels:
        assert _read(resumed, rel) == _read(fresh, rel), rel
    assert resumed.manifest.files == fresh.manifest.files


@pytest.mark.parametrize("crash_in", ["finalize", "after_rename"])
def test_resume_after_interruption_while_finalizing(tiny_vlm, tmp_path, monkeypatch, crash_in):
    import tl_latentlens.bank.build.finalize as fin_mod
    import tl_latentlens.bank.build.pipeline as build_mod

    sents = corpus(20, seed=6)
    real = build_mod.finalize_hook
    done = []

    def flaky(folder, dtype, n_components=None):
        if len(done) == 1:
            if crash_in == "after_rename":  # raw rows moved aside, nothing written yet
                real_save = fin_mod.atomic_save_npy
                monkeypatch.setattr(fin_mod, "atomic_save_npy", _raise)
                try:
                    real(folder, dtype, n_components)
                finally:
                    monkeypatch.setattr(fin_mod, "atomic_save_npy", real_save)
            raise KeyboardInterrupt
        done.append(folder)
        return real(folder, dtype, n_components)

    monkeypatch.setattr(build_mod, "finalize_hook", flaky)
    with pytest.raises(KeyboardInterrupt):
        build_bank(tiny_vlm, sents, tmp_path / "b", HOOKS, progress=False)
    monkeypatch.setattr(build_mod, "finalize_hook", real)
    monkeypatch.setattr(encode_mod, "capture_text_batch", None)  # encoding must not run again
    bank = build_bank(tiny_vlm, sents, tmp_path / "b", HOOKS, progress=False)
    assert Bank.open(bank.root, verify="full").hooks == HOOKS
    monkeypatch.undo()
    fresh = build_bank(tiny_vlm, sents, tmp_path / "fresh", HOOKS, progress=False)
    for hook in HOOKS:
        for name in ("vectors.npy", "occ_entries.npy", "occ_offsets.npy"):
            rel = f"hooks/{hook}/{name}"
            assert _read(bank, rel) == _read(fresh, rel), rel


def _raise(*args, **kwargs):
    raise KeyboardInterrupt


def test_existing_bank_is_opened_or_protected(tiny_vlm, tmp_path, monkeypatch):
    sents = corpus(20, seed=8)
    out = tmp_path / "b"
    first = build_bank(tiny_vlm, sents, out, HOOKS[:2], progress=False)
    created = first.manifest.created
    monkeypatch.setattr(encode_mod, "capture_text_batch", None)  # no rebuild allowed
    again = build_bank(tiny_vlm, iter(sents), out, HOOKS[:2], progress=False)
    assert again.manifest.created == created
    with pytest.raises(BankExistsError, match="max_per_token"):
        build_bank(tiny_vlm, sents, out, HOOKS[:2], max_per_token=3, progress=False)
    with pytest.raises(BankExistsError, match="corpus_fingerprint"):
        build_bank(tiny_vlm, sents[:-1], out, HOOKS[:2], progress=False)
    with pytest.raises(BankExistsError, match="hooks"):
        build_bank(tiny_vlm, sents, out, HOOKS, progress=False)
    monkeypatch.undo()
    replaced = build_bank(tiny_vlm, sents, out, HOOKS, overwrite=True, progress=False)
    assert replaced.hooks == HOOKS
    other = tmp_path / "not_a_bank"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(BankExistsError, match="not a bank"):
        build_bank(tiny_vlm, sents, other, HOOKS[:1], progress=False)
    assert (other / "notes.txt").read_text() == "keep me"


def test_storage_dtypes(tiny_vlm, tmp_path):
    with pytest.raises(ValueError, match="dtype must be one of"):
        build_bank(tiny_vlm, corpus(3), tmp_path / "b", HOOKS[:1], dtype="float8_e4m3")
    sents = corpus(10, seed=9)
    b8 = build_bank(tiny_vlm, sents, tmp_path / "i8", HOOKS, dtype="int8_pca", progress=False)
    b32 = build_bank(tiny_vlm, sents, tmp_path / "f32", HOOKS, dtype="float32", progress=False)
    assert b8.vectors(HOOKS[1]).dtype == np.int8
    a, b = b8.entry_vectors(HOOKS[1]), b32.entry_vectors(HOOKS[1])
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.999
    with pytest.raises(ValueError, match="dtype must be one of"):
        build_bank(tiny_vlm, corpus(3), tmp_path / "b", HOOKS[:1], dtype="bfloat16")


def test_default_hooks_are_the_paper_spread(tiny_vlm, tmp_path):
    from tl_latentlens import hooks as hk

    bank = build_bank(tiny_vlm, corpus(5), tmp_path / "b", progress=False)
    assert bank.hooks == hk.default_bank_hooks(tiny_vlm.n_layers)
    m = bank.manifest
    assert m.layer_convention == hk.LAYER_CONVENTION
    assert [h.layer for h in m.hooks] == hk.paper_layers(tiny_vlm.n_layers)
    assert m.model == tiny_vlm.fingerprint()
    assert m.hnsw.space == "cosine"


def test_the_model_runs_the_next_batch_while_the_last_one_is_written(
    tiny_vlm, tmp_path, monkeypatch
):
    """Writes are off the forward path: batch 0's write is still running when batch 1's
    forward pass starts (the write waits for it; sequential code would time out here)."""
    import threading

    second_forward = threading.Event()
    overlapped = []
    real_run, real_rows = encode_mod.run_batch, encode_mod.encode_rows
    runs = []

    def run(*a, **k):
        runs.append(1)
        if len(runs) == 2:
            second_forward.set()
        return real_run(*a, **k)

    def rows(*a, **k):
        if not overlapped:
            overlapped.append(second_forward.wait(timeout=20))
        return real_rows(*a, **k)

    monkeypatch.setattr(encode_mod, "run_batch", run)
    monkeypatch.setattr(encode_mod, "encode_rows", rows)
    sents = corpus(12)
    bank = build_bank(tiny_vlm, sents, tmp_path / "b", HOOKS, batch_size=4, dtype="float32",
                      max_per_token=None, progress=False)  # fmt: skip
    assert overlapped == [True] and len(runs) >= 3
    monkeypatch.undo()
    ref = build_bank(tiny_vlm, sents, tmp_path / "ref", HOOKS, batch_size=4, dtype="float32",
                     max_per_token=None, progress=False)  # fmt: skip
    for hook in HOOKS:
        np.testing.assert_array_equal(bank.decoded(hook), ref.decoded(hook))


def test_a_failed_write_stops_the_build_and_it_resumes(tiny_vlm, tmp_path, monkeypatch):
    real_rows, calls = encode_mod.encode_rows, []

    def failing(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return real_rows(*a, **k)

    monkeypatch.setattr(encode_mod, "encode_rows", failing)
    sents, out = corpus(20), tmp_path / "b"
    opts = dict(batch_size=3, shard_batches=1, dtype="float32", max_per_token=None,
                progress=False)  # fmt: skip
    with pytest.raises(OSError, match="disk full"):
        build_bank(tiny_vlm, sents, out, HOOKS, **opts)
    monkeypatch.undo()
    bank = build_bank(tiny_vlm, sents, out, HOOKS, **opts)
    ref = build_bank(tiny_vlm, sents, tmp_path / "ref", HOOKS, **opts)
    for hook in HOOKS:
        np.testing.assert_array_equal(bank.decoded(hook), ref.decoded(hook))


class _FakeGPUModel:
    """What :func:`~tl_latentlens.bank.build.encode.auto_batch_size` reads of a VLM on a GPU."""

    def __init__(self, d_model: int, d_mlp: int, dtype: torch.dtype) -> None:
        from types import SimpleNamespace

        self.device, self.d_model = torch.device("cuda", 0), d_model
        self.bridge = SimpleNamespace(
            cfg=SimpleNamespace(d_mlp=d_mlp), parameters=lambda: iter([torch.zeros(1, dtype=dtype)])
        )


def test_batches_are_sized_for_the_device(tiny_vlm, monkeypatch):
    from types import SimpleNamespace

    assert encode_mod.auto_batch_size(tiny_vlm, 3, 64) == encode_mod.CPU_BATCH_SIZE
    monkeypatch.setattr(
        torch.cuda, "get_device_properties", lambda dev: SimpleNamespace(total_memory=80 << 30)
    )
    seven_b = _FakeGPUModel(4096, 11008, torch.bfloat16)  # a 7B LM on an 80 GB GPU
    n = encode_mod.auto_batch_size(seven_b, 33, 64)
    assert n == 512 and n & (n - 1) == 0
    assert encode_mod.auto_batch_size(seven_b, 33, 512) < n  # longer sentences, fewer of them
    small = _FakeGPUModel(576, 1536, torch.float32)
    assert encode_mod.auto_batch_size(small, 31, 64) == 1024  # capped
