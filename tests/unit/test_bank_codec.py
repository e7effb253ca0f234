"""The 1-byte codecs: ``int8_pca`` (float16 principal coefficients + ``int8_rotated`` residual),
``int8_rotated`` (centred unit rows, random rotation, per-row scale) and the legacy
per-dimension ``int8``.

The synthetic vectors have the structure that makes residual streams hard to quantise: a large
common component, anisotropic heavy-tailed dimensions, a few outlier dimensions and rare rows
with massive activations; queries are held-out text-like vectors and shifted "visual" ones.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from bank_fixtures import hook_from_rows as _hook

from tiny_models import WORDS
from tl_latentlens.bank import Bank, build_bank
from tl_latentlens.bank.build.finalize import finalize_hook, remove_raw
from tl_latentlens.bank.errors import BankError
from tl_latentlens.bank.format import codec
from tl_latentlens.bank.format import manifest as mf
from tl_latentlens.bank.format.config import STORAGE_DTYPES, BankConfig, RetiredCodecError
from tl_latentlens.bank.format.store import file_record
from tl_latentlens.bank.format.vectors import HookVectors
from tl_latentlens.bank.search.calibrate import calibrate_hook, unit_rows
from tl_latentlens.bank.search.dispatch import HookSearcher
from tl_latentlens.bank.search.exact import exact_rows, exact_top_k
from tl_latentlens.bank.search.recall import tie_aware_recall
from tl_latentlens.bank.search.routes import Routes

CODECS = ["float16", "float32", "int8", "int8_rotated", "int8_pca"]


def _residual_like(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(stored, held-out text queries, shifted visual queries)`` with residual-stream
    structure."""
    rng = np.random.default_rng(seed)
    scales = np.exp(rng.standard_normal(d) * 0.7).astype(np.float32)  # anisotropic
    common = rng.standard_normal(d).astype(np.float32) * 4  # large common component
    basis = rng.standard_normal((8, d)).astype(np.float32)

    def text(m: int, r: np.random.Generator) -> np.ndarray:
        z = r.standard_t(3, (m, d)).astype(np.float32) * scales  # heavy tails
        out = common + z + r.standard_normal((m, 8)).astype(np.float32) @ basis
        out[:, :3] += r.standard_normal((m, 3)).astype(np.float32) * 3  # outlier dimensions
        out[np.ix_(r.random(m) < 0.01, [0, 1, 2])] += 150  # rare massive activations
        return out.astype(np.float32)

    x = text(n, rng)
    shift = rng.standard_normal(d).astype(np.float32) * 4
    visual = shift + 0.5 * text(300, np.random.default_rng(seed + 2))
    return x, text(300, np.random.default_rng(seed + 1)), visual.astype(np.float32)


@pytest.fixture(scope="module")
def residuals():
    return _residual_like(4000, 64, 0)


def test_rotated_codec_round_trip_and_search_space(residuals):
    x, text, _ = residuals
    x = np.concatenate([x[:500], np.zeros((1, x.shape[1]), np.float32)])  # and an all-zero row
    centre, rot = codec.fit_centre([x[:200], x[200:]]), codec.rotation_matrix(x.shape[1])
    np.testing.assert_allclose(rot @ rot.T, np.eye(x.shape[1]), atol=1e-5)
    np.testing.assert_array_equal(rot, codec.rotation_matrix(x.shape[1]))  # seeded
    q, scales = codec.encode_rotated(x, centre, rot)
    assert q.dtype == np.int8 and np.abs(q).max() == 127
    dec = codec.decode_rotated(q, scales, centre, rot)
    assert not dec[-1].any()  # the zero row stays zero
    cos = (
        (dec[:-1] * x[:-1]).sum(1)
        / np.linalg.norm(dec[:-1], axis=1)
        / np.linalg.norm(x[:-1], axis=1)
    )
    assert cos.min() > 0.9995, cos.min()
    np.testing.assert_allclose(np.linalg.norm(dec, axis=1), np.linalg.norm(x, axis=1), rtol=1e-2)
    # the search-space product is the cosine with the decoded vector, without rotating rows back
    norms = np.linalg.norm(dec, axis=1)
    inv = np.where(norms > 0, 1 / np.maximum(norms, 1e-30), 0).astype(np.float32)
    y = unit_rows(text[:20])
    got = codec.rotated_search_queries(y, centre, rot) @ codec.rotated_search_rows(q, scales, inv).T
    want = y @ (dec * inv[:, None]).T
    np.testing.assert_allclose(got, want, atol=2e-6)


def test_pca_codec_round_trip_and_search_space(residuals):
    x, text, visual = residuals
    x = np.concatenate([x[:500], np.zeros((1, x.shape[1]), np.float32)])  # and an all-zero row
    d, p = x.shape[1], 12
    centre, rot = codec.fit_centre([x]), codec.rotation_matrix(d)
    comp = codec.fit_components(x, centre, p)
    assert comp.shape == (p, d) and comp.dtype == np.float32
    np.testing.assert_allclose(comp @ comp.T, np.eye(p), atol=1e-5)  # orthonormal
    np.testing.assert_array_equal(comp, codec.fit_components(x, centre, p))  # deterministic
    # largest variance first: the first direction explains more than the last
    c = codec._unit(x[:-1])[0] - centre
    var = ((c @ comp.T) ** 2).mean(0)
    assert (np.diff(var) <= 1e-7).all(), var
    q, scales, coeffs = codec.encode_pca(x, centre, rot, comp)
    assert q.dtype == np.int8 and coeffs.dtype == np.float16 and coeffs.shape == (x.shape[0], p)
    dec = codec.decode_rotated(q, scales, centre, rot, coeffs, comp)
    assert not dec[-1].any()  # the zero row stays zero
    cos = lambda a, b: (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)  # noqa: E731
    q_r, sc_r = codec.encode_rotated(x, centre, rot)
    dec_r = codec.decode_rotated(q_r, sc_r, centre, rot)
    # the principal part takes most of the row's spread off the int8 codes: a smaller error
    err, err_r = 1 - cos(dec[:-1], x[:-1]), 1 - cos(dec_r[:-1], x[:-1])
    assert err.mean() < 0.8 * err_r.mean(), (err.mean(), err_r.mean())
    # norms without rotating back == norms of the decoded vectors
    norms = codec.rotated_norms(q, scales, centre, rot, coeffs, comp)
    np.testing.assert_allclose(norms, np.linalg.norm(dec, axis=1), rtol=1e-5, atol=1e-6)
    # the search-space product is the cosine with the decoded vector
    inv = np.where(norms > 0, 1 / np.maximum(norms, 1e-30), 0).astype(np.float32)
    y = unit_rows(np.concatenate([text[:20], visual[:20]]))
    sq = codec.rotated_search_queries(y, centre, rot, comp)
    sr = codec.rotated_search_rows(q, scales, inv, coeffs=coeffs)
    assert sq.shape[1] == sr.shape[1] == d + p + 1
    np.testing.assert_allclose(sq @ sr.T, y @ (dec * inv[:, None]).T, atol=2e-6)


@pytest.mark.parametrize("bad", [0, -1, 64, 65, 2.5])
def test_pca_components_out_of_range_is_a_clear_error(tmp_path, residuals, bad):
    x, _, _ = residuals  # d = 64
    folder = tmp_path / "h"
    folder.mkdir()
    raw, _, _ = codec.encode(torch.from_numpy(x[:300]), "float16")
    np.save(folder / "vectors.npy", raw)
    with pytest.raises(BankError, match=r"1 <= n_components < d_model = 64.*int8_rotated"):
        finalize_hook(folder, "int8_pca", n_components=bad)
    assert issubclass(BankError, ValueError)
    assert not list(folder.glob("codec*"))  # refused before writing anything
    assert codec.default_components(576) == 64 and codec.default_components(64) == 16
    assert codec.default_components(3) == 1


def test_pca_parameter_files_are_checked(tmp_path, residuals):
    x, _, _ = residuals
    folder = tmp_path / "h"
    folder.mkdir()
    raw, _, _ = codec.encode(torch.from_numpy(x[:1000]), "float16")
    np.save(folder / "vectors.npy", raw)
    finalize_hook(folder, "int8_pca", n_components=20)
    hv = HookVectors.from_folder(folder, "int8_pca")
    assert hv.width == hv.d + 20 + 1
    params = {n: np.load(folder / n) for n in codec.param_files("int8_pca")}
    assert params["codec_coeffs.npy"].dtype == np.float16
    assert params["codec_components.npy"].shape == (20, hv.d)
    assert codec.params_problem("int8_pca", params, hv.n, hv.d) is None
    bad = dict(params, **{"codec_coeffs.npy": params["codec_coeffs.npy"][:, :-1]})
    assert "codec_coeffs.npy" in codec.params_problem("int8_pca", bad, hv.n, hv.d)
    bad = dict(params, **{"codec_coeffs.npy": params["codec_coeffs.npy"].astype(np.float32)})
    assert "float16" in codec.params_problem("int8_pca", bad, hv.n, hv.d)
    full = {"codec_components.npy": np.zeros((hv.d, hv.d), np.float32)}
    full["codec_coeffs.npy"] = np.zeros((hv.n, hv.d), np.float16)
    assert "directions" in codec.params_problem("int8_pca", dict(params, **full), hv.n, hv.d)


@pytest.mark.parametrize("dtype", ["int8_rotated", "int8_pca"])
def test_rotated_hook_files_and_decoding(tmp_path, residuals, dtype):
    x, _, _ = residuals
    hv = _hook(tmp_path / "h", x[:1000], dtype)
    names = {p.name for p in (tmp_path / "h").iterdir()}
    assert set(codec.param_files(dtype)) <= names and "codec.npy" not in names
    pca = {"codec_components.npy", "codec_coeffs.npy"}
    assert pca <= names if dtype == "int8_pca" else not pca & names
    p = codec.default_components(hv.d) if dtype == "int8_pca" else 0
    assert hv.stored.dtype == np.int8 and hv.width == hv.d + p + 1
    params = {n: np.load(tmp_path / "h" / n) for n in codec.param_files(dtype)}
    assert codec.params_problem(dtype, params, hv.n, hv.d) is None
    params["codec_scales.npy"] = params["codec_scales.npy"][:-1]
    assert "codec_scales.npy" in codec.params_problem(dtype, params, hv.n, hv.d)
    dec = hv.decode(np.arange(hv.n), unit=False)
    np.testing.assert_allclose(np.linalg.norm(dec, axis=1), hv.norms, rtol=1e-5)
    cos = (dec * x[:1000]).sum(1) / np.linalg.norm(dec, axis=1) / np.linalg.norm(x[:1000], axis=1)
    assert cos.min() > 0.9995
    # decoded vectors do not depend on a resident (search-space) copy
    hv.resident()
    np.testing.assert_array_equal(hv.decode(np.arange(5), unit=False), dec[:5])
    with pytest.raises(ValueError, match="parameter files"):
        HookVectors(hv.stored, hv.norms, dtype)


@pytest.mark.parametrize("dtype", CODECS)
def test_exact_search_equals_search_over_decoded_vectors(tmp_path, residuals, dtype):
    x, text, visual = residuals
    hv = _hook(tmp_path / "h", x[:3000], dtype)
    dec = hv.decode(np.arange(hv.n), unit=True)
    q = unit_rows(np.concatenate([text[:30], visual[:30]]))
    full = q @ dec.T
    want = -np.sort(-full, axis=1)[:, :10]
    for chunk in (700, 5000):
        sims, rows = exact_top_k(hv, q, 10, chunk_rows=chunk)
        np.testing.assert_allclose(sims, want, atol=2e-6)
        np.testing.assert_allclose(np.take_along_axis(full, rows, 1), sims, atol=2e-6)
    hv.resident()
    sims, rows = exact_top_k(hv, q, 10)
    np.testing.assert_allclose(sims, want, atol=2e-6)
    assert tie_aware_recall(np.take_along_axis(full, rows, 1), want, tol=2e-6) == 1.0


@pytest.mark.parametrize("dtype", CODECS)
def test_resident_rows_are_the_streamed_search_rows_bit_for_bit(
    tmp_path, residuals, monkeypatch, dtype
):
    """The resident copy (one torch kernel per chunk for the float codecs) holds exactly the
    rows that streaming search decodes, across a chunk boundary."""
    from tl_latentlens.bank.format import vectors

    monkeypatch.setattr(vectors, "CHUNK_ROWS", 700)
    x, _, _ = residuals
    hv = _hook(tmp_path / "h", x[:2000], dtype)
    streamed = np.concatenate([block for _, block in hv.search_chunks()])
    resident = hv.resident()
    assert resident.dtype == np.float32 and resident.flags.c_contiguous
    np.testing.assert_array_equal(resident, streamed)


@pytest.mark.parametrize("dtype", CODECS)
def test_device_path_equals_cpu_path_for_every_codec(tmp_path, residuals, dtype):
    x, text, visual = residuals
    hv = _hook(tmp_path / "h", x[:2500], dtype)
    q = unit_rows(np.concatenate([text[:20], visual[:20]]))
    cpu_s, cpu_r = exact_top_k(hv, q, 10)
    for dev in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        for cache in ({}, None):
            s, r = exact_top_k(hv, q, 10, device=dev, device_cache=cache)
            np.testing.assert_array_equal(r, cpu_r)
            np.testing.assert_allclose(s, cpu_s, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", ["int8_rotated", "int8_pca"])
def test_rerank_and_routes_equal_exact_on_a_small_rotated_bank(tmp_path, residuals, dtype):
    x, text, visual = residuals
    small = x[:600]
    hv = _hook(tmp_path / "h", small, dtype)
    q = unit_rows(np.concatenate([visual[:40], text[:20]]))
    want_s, want_r = exact_top_k(hv, q, 10)
    cands = np.tile(np.arange(hv.n), (q.shape[0], 1))
    s, r = exact_rows(hv, q, cands, 10)
    np.testing.assert_array_equal(r, want_r)
    np.testing.assert_allclose(s, want_s, atol=1e-6)
    cal = calibrate_hook(
        tmp_path / "h", dtype, visual[100:300], {"visual": visual[40:100]},
        text_samples=100, list_len=600, probes=(2,), progress=False,
    )  # fmt: skip
    hits = HookSearcher(hv, Routes(tmp_path / "h", hv.d), cal.params).search(q, 10, "routes")
    np.testing.assert_array_equal(hits.rows, want_r)
    np.testing.assert_allclose(hits.sims, want_s, atol=1e-6)


def test_rotated_codec_keeps_recall_where_per_dimension_int8_does_not(tmp_path):
    """recall@10 against exact float32 search >= 0.98 for held-out (in-distribution) and
    shifted (out-of-distribution) queries, int8_pca at least as good as int8_rotated on every
    set; the legacy per-dimension int8 is clearly worse."""
    recall: dict[str, list[float]] = {"int8_pca": [], "int8_rotated": [], "int8": []}
    for seed in (0, 1):
        x, text, visual = _residual_like(4000, 64, seed)
        ref = _hook(tmp_path / f"f32-{seed}", x, "float32")
        ref_x = ref.decode(np.arange(ref.n))
        for dtype, got in recall.items():
            hv = _hook(tmp_path / f"{dtype}-{seed}", x, dtype)
            for q in (unit_rows(text), unit_rows(visual)):
                truth, _ = exact_top_k(ref, q, 10)
                _, rows = exact_top_k(hv, q, 10)
                got.append(tie_aware_recall(np.take_along_axis(q @ ref_x.T, rows, 1), truth))
    msg = f"recall@10 [text, visual] x 2 seeds: {recall}"
    assert min(recall["int8_rotated"]) >= 0.98, msg
    assert min(recall["int8_pca"]) >= 0.98, msg
    assert all(p >= r for p, r in zip(recall["int8_pca"], recall["int8_rotated"])), msg
    assert np.mean(recall["int8"]) <= np.mean(recall["int8_rotated"]) - 0.015, msg


def test_legacy_int8_hook_still_opens_and_searches(tmp_path, residuals):
    """A hook folder of the old per-dimension int8 format (``codec.npy`` [2, d])."""
    x, text, _ = residuals
    hv = _hook(tmp_path / "h", x[:1500], "int8")
    names = {p.name for p in (tmp_path / "h").iterdir()}
    assert "codec.npy" in names and not names & set(codec.param_files("int8_rotated"))
    assert hv.params.shape == (2, hv.d) and hv.width == hv.d
    raw = x[:1500].astype(np.float16).astype(np.float32)
    err = np.abs(hv.decode(np.arange(hv.n), unit=False) - raw).max(axis=0)
    assert (err <= hv.params[1] * 0.5001 + 1e-6).all()  # at most half a quantisation step
    # the bare [2, d] array (how banks passed it) still works
    old = HookVectors(hv.stored, hv.norms, "int8", np.load(tmp_path / "h" / "codec.npy"))
    q = unit_rows(text[:10])
    np.testing.assert_array_equal(exact_top_k(old, q, 5)[1], exact_top_k(hv, q, 5)[1])


def test_manifest_lists_each_codecs_files():
    hook = "blocks.0.hook_resid_pre"
    base = {f"hooks/{hook}/{n}" for n in ("vectors.npy", "norms.npy", "occ_offsets.npy", "occ_entries.npy")}  # fmt: skip
    assert set(mf.hook_files(hook, "float16")) == base
    assert set(mf.hook_files(hook, "int8")) == base | {f"hooks/{hook}/codec.npy"}
    for dtype in ("int8_rotated", "int8_pca"):
        extra = set(mf.hook_files(hook, dtype)) - base
        assert extra == {f"hooks/{hook}/{n}" for n in codec.param_files(dtype)}
    assert {"codec_components.npy", "codec_coeffs.npy"} < set(codec.param_files("int8_pca"))


def test_bank_build_takes_the_number_of_principal_directions(tiny_vlm, tmp_path):
    """``pca_components`` reaches the codec, is recorded with the content options (a build
    with another P is another bank), and is refused with any other codec."""
    from tl_latentlens.bank import BankConfig

    hook = "blocks.1.hook_resid_post"
    sents = [" ".join(WORDS[i : i + 5]) for i in range(0, 40, 2)]
    bank = build_bank(
        tiny_vlm, sents, tmp_path / "p8", [hook], dtype="int8_pca", pca_components=8,
        progress=False,
    )  # fmt: skip
    assert bank.manifest.build.content["pca_components"] == 8
    comps = np.load(tmp_path / "p8" / "hooks" / hook / "codec_components.npy")
    assert comps.shape == (8, tiny_vlm.d_model)
    Bank.open(tmp_path / "p8", verify="full")
    assert "pca_components" not in BankConfig(dtype="int8_pca").content_options
    with pytest.raises(ValueError, match="applies to dtype=.int8_pca. only"):
        BankConfig(dtype="float16", pca_components=8)
    with pytest.raises(ValueError, match="positive int"):
        BankConfig(dtype="int8_pca", pca_components=0)


def legacy_bank(src: Bank, out: Path, dtype: str) -> Bank:
    """``src`` (a float16 bank) re-stored as ``dtype`` through the low-level path, as
    ``build_bank(dtype=...)`` wrote banks before the codec was retired: the float16 raw rows
    of every entry (a float16 bank stores exactly those) finalised with ``dtype``, the manifest
    rewritten with the new files' checksums."""
    assert src.dtype == "float16"
    shutil.copytree(src.root, out)
    hooks = []
    for rec in src.manifest.hooks:
        folder = out / mf.hook_dir(rec.name)
        shutil.rmtree(folder)
        folder.mkdir()
        np.save(folder / "vectors.npy", src.entry_vectors(rec.name).astype(np.float16))
        final = finalize_hook(folder, dtype)
        remove_raw(folder)
        hooks.append(replace(rec, n_vectors=final["n_vectors"], n_duplicates=final["n_duplicates"]))
    rels = mf.shared_files() + [f for h in hooks for f in mf.hook_files(h.name, dtype)]
    files = {rel: mf.FileRecord.from_json(file_record(out / rel)) for rel in rels}
    content = {**(src.manifest.build.content or {}), "dtype": dtype}
    build = replace(src.manifest.build, content=content)
    mf.write_manifest(
        out, replace(src.manifest, dtype=dtype, hooks=tuple(hooks), files=files, build=build)
    )
    return Bank.open(out, verify="full")


@pytest.fixture(scope="module")
def bank16(tiny_vlm, tmp_path_factory):
    hooks = ["blocks.0.hook_resid_pre", "blocks.2.hook_resid_post"]
    rng = np.random.default_rng(0)
    sents = [" ".join(rng.choice(WORDS, rng.integers(2, 10))) for _ in range(30)]
    root = tmp_path_factory.mktemp("b16")
    b16 = build_bank(tiny_vlm, sents, root / "f16", hooks, dtype="float16", progress=False)
    b32 = build_bank(tiny_vlm, sents, root / "f32", hooks, dtype="float32", progress=False)
    b8 = build_bank(tiny_vlm, sents, root / "pca", hooks, dtype="int8_pca", progress=False)
    return b16, b32, b8


@pytest.mark.parametrize("dtype", ["int8", "int8_rotated", "int8_pca"])
def test_one_byte_bank_search_equals_search_over_its_decoded_vectors(bank16, tmp_path, dtype):
    """A whole bank stored with a 1-byte codec (``int8_pca`` as built; the retired ``int8`` and
    ``int8_rotated`` as old builds wrote them): files checksummed, exact search equal to a
    search over the vectors it decodes, which are the float32 bank's up to quantisation."""
    b16, b32, built = bank16
    b8 = Bank.open(built.root, verify="full") if dtype == "int8_pca" else (
        legacy_bank(b16, tmp_path / dtype, dtype))  # fmt: skip
    hooks = b8.hooks
    assert b8.dtype == dtype and b8.vectors(hooks[1]).dtype == np.int8
    assert b8.n_entries() == b32.n_entries()
    for name in codec.param_files(dtype):  # checksummed with the rest
        assert f"hooks/{hooks[1]}/{name}" in b8.manifest.files
    a, b = b8.entry_vectors(hooks[1]), b32.entry_vectors(hooks[1])
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > (0.999 if dtype != "int8" else 0.99)
    dec = unit_rows(b8.decoded(hooks[1]))
    q = unit_rows(np.random.default_rng(1).standard_normal((12, b8.d_model)))
    want = -np.sort(-(q @ dec.T), axis=1)[:, :10]
    for device in (None, "cpu"):
        hits = b8._search_rows(q, hooks[1], 10, "exact", device)
        np.testing.assert_allclose(hits.sims, want, atol=2e-6)
    got = b8.search(q[0], hook=hooks[1], k=3)[0]
    np.testing.assert_allclose([n.similarity for n in got], want[0, :3], atol=2e-6)
    # the neighbours are the float32 bank's up to quantisation: mostly the same entries
    top8 = {(n.sentence_id, n.position) for n in b8.search(q[0], hook=hooks[1], k=10)[0]}
    top32 = {(n.sentence_id, n.position) for n in b32.search(q[0], hook=hooks[1], k=10)[0]}
    assert len(top8 & top32) >= 8


@pytest.mark.parametrize("dtype", ["int8", "int8_rotated"])
def test_retired_codecs_are_refused_for_new_builds(tiny_vlm, tmp_path, dtype):
    """``int8``/``int8_rotated`` stay readable (above) but a build asking for one stops before
    any work, with a ValueError that points to ``int8_pca``."""
    with pytest.raises(RetiredCodecError, match=f"dtype='{dtype}' is no longer offered.*int8_pca"):
        build_bank(tiny_vlm, ["a b c"], tmp_path / "b", ["blocks.0.hook_resid_pre"], dtype=dtype)
    assert not (tmp_path / "b").exists() and not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="int8_pca"):
        BankConfig(dtype=dtype)
    assert issubclass(RetiredCodecError, ValueError)
    assert set(STORAGE_DTYPES) == {"float32", "float16", "int8_pca"}
    assert set(codec.CODECS) >= set(STORAGE_DTYPES) | {dtype}  # still read


def test_build_bank_cli_offers_only_the_build_codecs(capsys):
    from tl_latentlens.apps.cli import main

    with pytest.raises(SystemExit):
        main(["build-bank", "--dtype", "int8_rotated", "corpus.txt", "out"])
    err = capsys.readouterr().err
    assert "invalid choice: 'int8_rotated'" in err and "int8_pca" in err
