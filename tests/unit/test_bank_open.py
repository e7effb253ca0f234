"""Bank.open validation and search: clear errors, exact vs HNSW, cross-hook merge."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from tiny_models import WORDS, TinyEncoder, tiny_llama_dir
from tl_latentlens.bank import (
    Bank,
    BankError,
    BankExistsError,
    BankFormatError,
    BankModelMismatchError,
    BankQueryError,
    CorruptBankError,
    MissingHookError,
    Neighbour,
    build_bank,
)

HOOKS = ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.2.hook_resid_post"]


@pytest.fixture(scope="module")
def bank_dir(tiny_vlm, tmp_path_factory):
    rng = np.random.default_rng(0)
    sents = [" ".join(rng.choice(WORDS, rng.integers(3, 10))) for _ in range(80)]
    path = tmp_path_factory.mktemp("bank") / "bank"
    build_bank(tiny_vlm, sents, path, HOOKS, max_per_token=None, progress=False)
    return path


@pytest.fixture
def copy(bank_dir, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(bank_dir, dst)
    return dst


@pytest.fixture(scope="module")
def other_vlm(tmp_path_factory):
    from transformer_lens.model_bridge import TransformerBridge

    from tl_latentlens.models.connector import Connector, ConnectorVLM

    path = tiny_llama_dir(tmp_path_factory.mktemp("other"), seed=1)
    bridge = TransformerBridge.boot_transformers(str(path), device="cpu")
    enc = TinyEncoder()
    return ConnectorVLM(
        bridge, enc, Connector(enc.d_vision, bridge.cfg.d_model), name="tiny-connector-vlm"
    )


def test_open_and_metadata(bank_dir, tiny_vlm):
    bank = Bank.open(bank_dir, tiny_vlm, verify="full")
    assert bank.hooks == HOOKS
    assert bank.layers == {HOOKS[0]: 0, HOOKS[1]: 1, HOOKS[2]: 3}
    assert bank.d_model == 64 and bank.dtype == "float16"
    n = bank.n_entries(HOOKS[0])
    assert bank.vectors(HOOKS[2]).shape == (n, 64)
    assert not bank.vectors(HOOKS[2]).flags.owndata  # a view of the memory-mapped file
    assert bank.manifest.counts.n_entries == n
    assert bank.sentence(0) and bank.sentence_tokens(0)[0] == "<s>"


def test_model_mismatch_names_the_field(bank_dir, other_vlm, tmp_path):
    with pytest.raises(BankModelMismatchError, match="weights of embed, blocks.0"):
        Bank.open(bank_dir, other_vlm)
    bank = Bank.open(bank_dir)
    with pytest.raises(BankModelMismatchError):
        bank.check_model(other_vlm)
    # building another model's bank over it is refused too
    with pytest.raises(BankExistsError, match="model.weights of embed, blocks.0"):
        build_bank(other_vlm, ["a cat"], bank_dir, HOOKS, max_per_token=None, progress=False)


def test_missing_dir_manifest_and_wrong_version(copy, tmp_path):
    with pytest.raises(BankError, match="does not exist"):
        Bank.open(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BankError, match="no manifest.json"):
        Bank.open(empty)
    m = json.loads((copy / "manifest.json").read_text())
    m["format_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BankFormatError, match="version 99"):
        Bank.open(copy)
    # a bank of the first format (per-entry vectors + a text-only hnswlib index) is refused
    # with the way to rebuild it
    m["format_version"] = 1
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BankFormatError, match=r"version 1;.*version 2.*[Rr]ebuild"):
        Bank.open(copy)
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(BankFormatError):
        Bank.open(copy)


def test_truncated_vectors_detected_at_open(copy):
    vec = copy / "hooks" / HOOKS[1] / "vectors.npy"
    data = vec.read_bytes()
    vec.write_bytes(data[:-10])
    with pytest.raises(CorruptBankError, match="truncated"):
        Bank.open(copy, verify="size")


def _flip(path, offset=-100):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_lazy_open_hashes_each_file_once_per_user_until_it_changes(copy, tmp_path, monkeypatch):
    """A file confirmed once is not hashed again by later opens (its stamp is remembered in
    the cache directory); a write to it, or ``verify="full"``, hashes it again."""
    from tl_latentlens.bank.format import manifest as mf

    monkeypatch.setenv("TL_LATENTLENS_CACHE", str(tmp_path / "cache"))
    hashed: list[str] = []
    real = mf.verify_files

    def counting(root, manifest, paths, full, opened=None):
        if full:
            hashed.extend(paths)
        return real(root, manifest, paths, full, opened)

    monkeypatch.setattr(mf, "verify_files", counting)
    q = np.ones(64, dtype=np.float32)
    vec = f"hooks/{HOOKS[1]}/vectors.npy"
    Bank.open(copy).search(q, hook=HOOKS[1], method="exact")
    assert vec in hashed and "entries.npy" in hashed
    hashed.clear()
    Bank.open(copy).search(q, hook=HOOKS[1], method="exact")
    assert hashed == []
    Bank.open(copy, verify="full")
    assert vec in hashed
    hashed.clear()
    _flip(copy / vec)
    bank = Bank.open(copy)
    with pytest.raises(CorruptBankError, match="checksum"):
        bank.search(q, hook=HOOKS[1], method="exact")
    assert hashed == [vec]  # only the changed file


def test_bank_opens_without_a_usable_cache_directory(copy, monkeypatch):
    from tl_latentlens import _io

    def refuse():
        raise PermissionError("read-only file system")

    monkeypatch.setattr(_io, "cache_dir", refuse)
    hits = Bank.open(copy).search(np.ones(64, dtype=np.float32), hook=HOOKS[1], k=2)
    assert len(hits[0]) == 2


def test_corrupted_vectors_detected(copy):
    _flip(copy / "hooks" / HOOKS[1] / "vectors.npy")
    with pytest.raises(CorruptBankError, match="checksum"):
        Bank.open(copy, verify="full")
    bank = Bank.open(copy)  # lazy: the hook is hashed on first use
    q = np.ones(64, dtype=np.float32)
    bank.search(q, hook=HOOKS[0])  # an intact hook works
    with pytest.raises(CorruptBankError, match="vectors.npy"):
        bank.search(q, hook=HOOKS[1], method="exact")


def test_corrupted_index_and_tables_detected(copy):
    _flip(copy / "hooks" / HOOKS[2] / "vectors.npy", offset=500)
    bank = Bank.open(copy)
    with pytest.raises(CorruptBankError, match="vectors.npy"):
        bank.search(np.ones(64), hook=HOOKS[2])
    _flip(copy / "entries.npy")
    with pytest.raises(CorruptBankError, match="entries.npy"):
        Bank.open(copy)


def test_missing_hook_files_and_hooks(copy):
    bank = Bank.open(copy)
    with pytest.raises(MissingHookError, match="stores: blocks.0.hook_resid_pre"):
        bank.search(np.ones(64), hook="blocks.1.hook_resid_post")
    with pytest.raises(MissingHookError):
        bank.vectors("blocks.1.hook_resid_mid")
    # an equivalent name of a stored layer resolves to it
    assert bank.resolve_hook("blocks.1.hook_resid_pre") == HOOKS[1]
    assert bank.resolve_hook(3) == HOOKS[2]
    (copy / "hooks" / HOOKS[2] / "occ_entries.npy").unlink()
    with pytest.raises(CorruptBankError, match="missing"):
        Bank.open(copy)


def test_query_validation(bank_dir):
    bank = Bank.open(bank_dir)
    with pytest.raises(BankQueryError, match="63.*64"):
        bank.search(torch.randn(2, 63))
    with pytest.raises(ValueError, match="dimension"):
        bank.search(np.ones(65))
    bad = torch.randn(2, 64)
    bad[1, 3] = float("nan")
    with pytest.raises(BankQueryError, match="NaN"):
        bank.search(bad)
    with pytest.raises(BankQueryError, match="zeros"):
        bank.search(torch.zeros(64))
    for k in (0, -1, 2.5):
        with pytest.raises(BankQueryError, match="k must"):
            bank.search(torch.randn(64), k=k)
    with pytest.raises(BankQueryError, match="shape"):
        bank.search(torch.randn(2, 3, 64))


def test_search_exact_matches_brute_force_across_hooks(bank_dir):
    bank = Bank.open(bank_dir)
    rng = np.random.default_rng(1)
    rows = rng.choice(bank.n_entries(), 6, replace=False)
    q = bank.entry_vectors(HOOKS[1], rows) + 0.3 * rng.standard_normal((6, 64)).astype(np.float32)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    results = bank.search(torch.from_numpy(q), hook=None, k=7, method="exact")
    assert len(results) == 6
    sims = []
    for hook in HOOKS:
        v = bank.decoded(hook)  # the distinct stored vectors
        sims.append(qn @ (v / np.linalg.norm(v, axis=1, keepdims=True)).T)
    allsims = np.concatenate(sims, axis=1)
    for i, hits in enumerate(results):
        want = np.sort(allsims[i])[::-1][:7]
        np.testing.assert_allclose([h.similarity for h in hits], want, rtol=1e-4, atol=1e-5)
        for h in hits:
            assert isinstance(h, Neighbour)
            entry = int(np.flatnonzero(
                (bank.entries["sentence_id"] == h.sentence_id) & (bank.entries["position"] == h.position)
            )[0])  # fmt: skip
            v = bank.entry_vectors(h.hook, [entry])[0]
            assert qn[i] @ v / np.linalg.norm(v) == pytest.approx(h.similarity, abs=1e-5)
            assert h.layer == bank.layers[h.hook]
            assert h.sentence_tokens[h.position] == h.token
            assert h.sentence == bank.sentence(h.sentence_id)
            assert h.n_occurrences >= 1 + len(h.other_contexts)
    # the query's own row is its best match in its own hook
    own = bank.search(bank.entry_vectors(HOOKS[1], rows), hook=HOOKS[1], k=1, method="exact")
    assert [o[0].sentence_id for o in own] == bank.entries["sentence_id"][rows].tolist()


def test_identical_vectors_are_one_neighbour_with_all_contexts(bank_dir):
    """At the input layer every occurrence of a token has the same vector: it is returned
    once, with the number of occurrences and where the others are."""
    bank = Bank.open(bank_dir)
    tok = np.bincount(bank.entries["token_id"]).argmax()  # the most frequent token
    entry = int(np.flatnonzero(bank.entries["token_id"] == tok)[0])
    hits = bank.search(bank.entry_vectors(HOOKS[0], [entry]), hook=HOOKS[0], k=3, method="exact")[0]
    top = hits[0]
    assert top.token_id == tok and top.similarity == pytest.approx(1.0, abs=1e-5)
    n_occ = int((bank.entries["token_id"] == tok).sum())
    assert top.n_occurrences == n_occ > 1
    assert len(top.other_contexts) == min(8, n_occ - 1)
    assert all(h.token_id != tok for h in hits[1:])  # distinct vectors, not copies
    for sid, pos in top.other_contexts:
        assert bank.sentence_token_ids(sid)[pos] == tok


def test_auto_is_exact_on_a_small_bank_and_routes_are_calibrated(bank_dir, tmp_path):
    import shutil

    from tl_latentlens.bank.search.calibrate import calibrate_bank

    path = tmp_path / "bank"
    shutil.copytree(bank_dir, path)
    q = torch.randn(20, 64, generator=torch.Generator().manual_seed(0))
    bank = Bank.open(path)
    report = bank.search(q, hook=HOOKS, k=5)
    assert report.methods == {h: "exact" for h in HOOKS}
    exact = bank.search(q, hook=HOOKS, k=5, method="exact")
    assert [[n.similarity for n in r] for r in report.neighbours] == [
        [n.similarity for n in r] for r in exact
    ]
    with pytest.raises(BankQueryError, match="calibrate"):
        bank.search(q, hook=HOOKS[1], k=5, method="routes")
    rng = np.random.default_rng(0)
    shift = rng.standard_normal(64).astype(np.float32) * 2
    samples = {h: shift + rng.standard_normal((300, 64)).astype(np.float32) for h in HOOKS[1:]}
    held = {
        "visual": {h: shift + rng.standard_normal((50, 64)).astype(np.float32) for h in HOOKS[1:]}
    }
    cal = calibrate_bank(path, samples=samples, prove_on=held, list_len=64, progress=False)
    assert set(cal) == set(HOOKS[1:])
    from tl_latentlens.bank.search.calibrate import CALIBRATION_POLICY, GAIN, expected_cost

    opened = Bank.open(path)
    for hook, c in cal.items():
        n = opened.searcher(hook).vectors.n
        # the cheapest probe meeting the bar; bigger ones skipped only when their candidates
        # alone cost more than it or the last probe tried lowered the best cost too little
        probes = [2, 4, 8, 16, 32]
        assert set(c.frontier) == set(c.cost) == set(probes[: len(c.frontier)])
        meeting = [p for p, r in c.frontier.items() if min(r.values()) >= 0.98]
        if meeting:
            assert c.params.probe == min(meeting, key=lambda p: (c.cost[p], p))
            costs = [c.cost[p] for p in probes[: len(c.frontier)]]
            for p in probes[len(c.frontier) :]:
                assert expected_cost(p, c.list_len, n, {}) >= c.cost[c.params.probe] or (
                    len(costs) >= 2 and min(costs) > GAIN * min(costs[:-1])
                )
        else:
            assert set(c.frontier) == set(probes)
        assert c.to_dict()["policy"] == CALIBRATION_POLICY == 3
    bank = Bank.open(path, verify="full")  # route files are listed with checksums
    info = bank.hook_info(HOOKS[1])["routes"]
    assert info["recall_at_10"]["visual"] == pytest.approx(cal[HOOKS[1]].recall["visual"], abs=1e-4)
    routed = bank.search(q, hook=HOOKS[1], k=5, method="routes")
    assert routed.methods == {HOOKS[1]: "routes"}
    # auto still searches exactly: the bank is far below the size where routes pay
    assert bank.search(q, hook=HOOKS[1], k=5).methods == {HOOKS[1]: "exact"}
    single = bank.search(q[0].numpy(), hook=HOOKS[0], k=3)
    assert len(single) == 1 and len(single[0]) == 3
    assert [n.similarity for n in single[0]] == sorted(
        (n.similarity for n in single[0]), reverse=True
    )


def test_hooks_sharing_a_sample_graph_look_it_up_once(bank_dir, tmp_path, monkeypatch):
    import shutil

    from tl_latentlens.bank.search.calibrate import calibrate_bank
    from tl_latentlens.bank.search.routes import Routes

    path = tmp_path / "bank"
    shutil.copytree(bank_dir, path)
    rng = np.random.default_rng(1)
    shared = rng.standard_normal((300, 64)).astype(np.float32)  # the same samples at two hooks
    held = {"visual": {h: rng.standard_normal((40, 64)).astype(np.float32) for h in HOOKS[1:]}}
    calibrate_bank(path, samples=dict.fromkeys(HOOKS[1:], shared), prove_on=held, list_len=64,
                   progress=False)  # fmt: skip
    bank = Bank.open(path)
    q = torch.randn(12, 64, generator=torch.Generator().manual_seed(3))
    calls = []
    real = Routes.lookup
    monkeypatch.setattr(Routes, "lookup", lambda self, *a: calls.append(1) or real(self, *a))
    joint = bank.search(q, hook=HOOKS[1:], k=5, method="routes")
    assert joint.methods == {h: "routes" for h in HOOKS[1:]} and len(calls) == 1
    # the same neighbours as each hook looking its samples up on its own
    unit = np.asarray(torch.nn.functional.normalize(q, dim=1))
    for h in HOOKS[1:]:
        alone = bank._search_rows(unit, h, 5, "routes")
        assert np.array_equal(
            alone.rows, bank.searcher(h).search(unit, 5, "routes", lookups={}).rows
        )
        assert len(joint.neighbours[0]) == 5  # merged across hooks


def test_k_larger_than_bank_and_highlight(tiny_vlm, tmp_path):
    bank = build_bank(tiny_vlm, ["the red car"], tmp_path / "b", HOOKS[:1], progress=False)
    hits = bank.search(torch.randn(64), k=10)[0]
    assert len(hits) == bank.n_entries() == 3
    n = next(h for h in hits if h.token == "red")
    assert n.highlighted(skip=("<s>",)) == "the [red] car"
    assert n.context(before=1, after=1) == (("the",), "red", ("car",))


def test_calibrate_with_images_records_every_proving_set(bank_dir, tiny_vlm, tmp_path):
    from tiny_models import random_image
    from tl_latentlens.bank.search.calibrate import calibrate_bank

    path = tmp_path / "bank"
    shutil.copytree(bank_dir, path)
    bank = Bank.open(path, tiny_vlm)
    images = [random_image(seed) for seed in range(6)]
    mine = [random_image(50 + s) for s in range(2)]  # the user's own images: one argument
    vectors = np.random.default_rng(0).standard_normal((30, 64)).astype(np.float32)
    cal = calibrate_bank(
        bank, tiny_vlm, images, prove_on={"photos": [random_image(99)], "mine": mine,
                                          "vectors": vectors},
        held_out_text=["the red car", "a small dog"], list_len=32, progress=False,
    )  # fmt: skip
    assert set(cal) == set(bank.hooks)
    sets = {"held-out images", "photos", "mine", "vectors", "held-out text", "text"}
    n_visual = tiny_vlm.prepare(mine[0]).layout.n_visual
    for c in cal.values():
        assert set(c.recall) == sets
        assert 0.0 <= c.recall["held-out text"] <= 1.0
        # the user's images' visual tokens at every bank layer
        assert c.n_queries["mine"] == 2 * n_visual * len(bank.hooks)
        assert c.n_queries["vectors"] == 30
    recorded = Bank.open(path).hook_info(HOOKS[-1])["routes"]
    assert "held-out text" in recorded["recall_at_10"]
    proving = recorded["proving_sets"]
    assert set(proving) == sets
    assert proving["mine"]["kind"] == "images" and proving["vectors"]["kind"] == "vectors"
    assert proving["held-out text"]["kind"] == "text"
    for name, info in proving.items():
        assert info["recall_at_10"] == pytest.approx(cal[HOOKS[-1]].recall[name], abs=1e-4)
        assert info["queries"] == cal[HOOKS[-1]].n_queries[name] > 0


def test_calibrate_bank_refuses_what_it_cannot_use(bank_dir, tiny_vlm):
    from tiny_models import random_image
    from tl_latentlens.bank.search.calibrate import calibrate_bank

    images = [random_image(seed) for seed in range(3)]
    with pytest.raises(ValueError, match="pass vlm="):
        calibrate_bank(bank_dir, images=images)
    with pytest.raises(ValueError, match="pass images= .* or samples="):
        calibrate_bank(bank_dir, tiny_vlm)
    with pytest.raises(ValueError, match="at least 2 images"):
        calibrate_bank(bank_dir, tiny_vlm, images[:1])


def test_calibrate_with_images_gives_routes_to_the_named_hooks_only(bank_dir, tiny_vlm, tmp_path):
    from tiny_models import random_image
    from tl_latentlens.bank.search.calibrate import calibrate_bank

    path = tmp_path / "bank"
    shutil.copytree(bank_dir, path)
    bank = Bank.open(path, tiny_vlm)
    images = [random_image(seed) for seed in range(4)]
    with pytest.raises(ValueError, match="blocks.99.hook_resid_post"):
        calibrate_bank(bank, tiny_vlm, images, hooks=["blocks.99.hook_resid_post"])
    with pytest.raises(ValueError, match="blocks.99.hook_resid_post"):
        calibrate_bank(path, tiny_vlm, images, hooks=["blocks.99.hook_resid_post"])
    cal = calibrate_bank(bank, tiny_vlm, images, hooks=[HOOKS[-1]], list_len=32, progress=False)
    assert set(cal) == {HOOKS[-1]}
    opened = Bank.open(path)
    assert [h for h in opened.hooks if opened.hook_info(h).get("routes")] == [HOOKS[-1]]


def test_calibrate_bank_command_checks_hooks_before_loading(bank_dir, tmp_path):
    import argparse

    from tl_latentlens.apps import calibrate_bank as app
    from tl_latentlens.apps._args import UsageError

    parser = argparse.ArgumentParser(prog="tl-latentlens")
    app.add_parser(parser.add_subparsers(dest="command"))
    images = [tmp_path / f"im{i}.png" for i in range(2)]
    for image in images:
        image.write_bytes(b"not read")
    argv = ["calibrate-bank", str(bank_dir), "--images", *map(str, images), "--hooks"]
    with pytest.raises(UsageError, match=r"does not store: \['blocks.99.hook_resid_post'\]"):
        app.validate(parser.parse_args([*argv, "blocks.99.hook_resid_post"]))
    app.validate(parser.parse_args([*argv, HOOKS[-1]]))  # a stored hook passes


def test_calibrate_with_images_refuses_bad_held_out_text(bank_dir, tiny_vlm):
    from tiny_models import random_image
    from tl_latentlens.bank.search.calibrate import calibrate_bank

    bank = Bank.open(bank_dir, tiny_vlm)
    images = [random_image(seed) for seed in range(3)]
    with pytest.raises(ValueError, match="list of sentences, not one string"):
        calibrate_bank(bank, tiny_vlm, images, held_out_text="the red car")
    with pytest.raises(ValueError, match="max_text_tokens must be positive"):
        calibrate_bank(bank, tiny_vlm, images, held_out_text=["the red car"], max_text_tokens=0)


def test_routes_proven_for_another_connector_are_not_used_by_auto(bank_dir, tiny_vlm, tmp_path):
    from tiny_models import random_image
    from tl_latentlens.bank.search.calibrate import calibrate_bank
    from tl_latentlens.lens import LatentLens
    from tl_latentlens.models.connector import Connector, ConnectorVLM

    path = tmp_path / "bank"
    shutil.copytree(bank_dir, path)
    bank = Bank.open(path, tiny_vlm)
    images = [random_image(seed) for seed in range(4)]
    calibrate_bank(bank, tiny_vlm, images, list_len=32, progress=False)
    bank = Bank.open(path, tiny_vlm)
    mine = tiny_vlm.visual_fingerprint()
    assert {bank.hook_info(h)["routes"]["queries_from"] for h in bank.hooks} == {mine}
    lens = LatentLens(tiny_vlm, bank)
    assert lens.routes_for_other_queries() == []
    assert lens._method_for(bank.hooks, "auto") == "auto"
    # the same language model with a retrained connector: same bank, other visual tokens
    torch.manual_seed(7)
    conn = Connector(tiny_vlm.encoder.d_vision, tiny_vlm.d_model)
    other = ConnectorVLM(tiny_vlm.bridge, tiny_vlm.encoder, conn, name="retrained")
    assert other.fingerprint()["weights"] == tiny_vlm.fingerprint()["weights"]
    assert other.visual_fingerprint() != mine
    other_lens = LatentLens(other, bank)
    assert other_lens.routes_for_other_queries() == list(bank.hooks)
    assert other_lens._method_for(bank.hooks[:1], "auto") == "exact"
    assert other_lens._method_for(bank.hooks[:1], "routes") == "routes"  # asked for explicitly
    assert other_lens.identity() != lens.identity()  # explanation caches tell them apart


def test_visual_fingerprint_ignores_dtype_and_sees_every_connector_tensor(tiny_vlm):
    import copy

    from tl_latentlens.models.connector import ConnectorVLM

    fp = tiny_vlm.visual_fingerprint()
    assert fp == tiny_vlm.visual_fingerprint() and len(fp) == 16
    half = copy.deepcopy(tiny_vlm.connector).to(torch.bfloat16)
    as_bf16 = ConnectorVLM(tiny_vlm.bridge, tiny_vlm.encoder, half, name="bf16 copy")
    assert as_bf16.visual_fingerprint() == fp
    names = [n for n, _ in tiny_vlm.visual_state()]
    assert any(n.startswith("connector.") for n in names)
    assert any(n.startswith("encoder.") for n in names)
    text = {id(t) for part in tiny_vlm.fingerprint_parts().values() for _, t in part}
    assert not any(id(t) in text for _, t in tiny_vlm.visual_state())
    bumped = copy.deepcopy(tiny_vlm.connector)
    with torch.no_grad():
        next(bumped.parameters()).add_(0.5)
    assert ConnectorVLM(tiny_vlm.bridge, tiny_vlm.encoder, bumped).visual_fingerprint() != fp
