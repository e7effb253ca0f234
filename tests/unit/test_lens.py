"""LatentLens, LogitLens and EmbeddingLens on a tiny connector VLM and a tiny bank."""

import pytest
import torch

from tiny_models import random_image, random_sentences, tiny_llama_dir
from tl_latentlens.bank import BankModelMismatchError, build_bank
from tl_latentlens.capture import capture_image
from tl_latentlens.lens import EmbeddingLens, Explanation, LatentLens, LogitLens, mid_layer_leap
from tl_latentlens.models.base import ImageTokenMismatchError

HOOKS = ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.2.hook_resid_post"]


@pytest.fixture(scope="module")
def bank(tiny_vlm, tmp_path_factory):
    out = tmp_path_factory.mktemp("lens") / "bank"
    return build_bank(
        tiny_vlm, random_sentences(120), out, hooks=HOOKS, max_per_token=None, progress=False
    )


@pytest.fixture(scope="module")
def lens(tiny_vlm, bank):
    return LatentLens(tiny_vlm, bank)


def test_explain_equals_exact_search_of_captured_residuals(tiny_vlm, bank, lens):
    img = random_image(7)
    result = lens.explain(img, k=4, method="exact")
    assert result.hooks == HOOKS and result.grid == (4, 4) and result.n_visual == 16
    acts = capture_image(tiny_vlm, img, hooks=HOOKS)
    for hook in HOOKS:
        expected = bank.search(acts.residuals[hook], hook=None, k=4, method="exact")
        for i in range(16):
            got = result.neighbours(hook, i)
            assert [(n.sentence_id, n.position, n.hook) for n in got] == [
                (n.sentence_id, n.position, n.hook) for n in expected[i]
            ]
            assert got[0].similarity >= got[-1].similarity
    # cross-layer by default: neighbours come from several text layers
    layers = {n.layer for p in result.patches for n in p.latent}
    assert len(layers) > 1


def test_default_search_is_exact_on_a_small_bank_and_recorded(lens, tmp_path):
    img = random_image(8)
    a = lens.explain(img, k=3, method="exact", baselines=False)
    b = lens.explain(img, k=3, baselines=False)
    assert b.search == {h: "exact" for h in HOOKS}
    assert [[(n.sentence_id, n.position) for n in p.latent] for p in a.patches] == [
        [(n.sentence_id, n.position) for n in p.latent] for p in b.patches
    ]
    back = Explanation.load(b.save(tmp_path / "r.json"))
    assert back.search == b.search and back.patches == b.patches
    assert "exact (every hook)" in b.to_html()


def test_explain_many_equals_explain(lens):
    images = [random_image(s) for s in (11, 12, 13)]
    many = lens.explain_many(images, k=3, batch_size=2, progress=False)
    assert len(many) == 3
    for img, got in zip(images, many):
        one = lens.explain(img, k=3)
        assert got.grid == one.grid and got.hooks == one.hooks
        assert [(p.hook, p.index, p.row, p.col) for p in got.patches] == [
            (p.hook, p.index, p.row, p.col) for p in one.patches
        ]
        for p, q in zip(got.patches, one.patches):
            assert [(n.sentence_id, n.position) for n in p.latent] == [
                (n.sentence_id, n.position) for n in q.latent
            ]
            assert [c.token_id for c in p.logit] == [c.token_id for c in q.logit]
            assert [c.token_id for c in p.embedding] == [c.token_id for c in q.embedding]
        assert got.image is img and "forward" in got.timings


def test_explain_many_cache_reads_back_and_recomputes_what_changed(lens, tmp_path, monkeypatch):
    images = [random_image(s) for s in (21, 22)]
    cache = tmp_path / "cache"
    first = lens.explain_many(images, k=3, batch_size=2, progress=False, cache_dir=cache)
    assert len(list(cache.glob("*.json"))) == 2
    calls = []
    real = lens._explain_batch
    monkeypatch.setattr(
        lens, "_explain_batch", lambda batch, *a: calls.append(len(batch)) or real(batch, *a)
    )
    # same images and settings: nothing recomputed, identical results, images attached
    again = lens.explain_many(images, k=3, batch_size=2, progress=False, cache_dir=cache)
    assert calls == []
    for a, b, img in zip(first, again, images):
        assert a.patches == b.patches and b.image is not None and b.image.size == img.size
    # a new image and a different k are computed; the cached image is not
    third = random_image(23)
    lens.explain_many([images[0], third], k=3, progress=False, cache_dir=cache)
    assert calls == [1]
    lens.explain_many(images, k=2, progress=False, cache_dir=cache)
    assert calls == [1, 2]
    # a corrupt file is recomputed, not trusted
    for f in cache.glob("*.json"):
        f.write_text("{not json")
    lens.explain_many(images[:1], k=3, progress=False, cache_dir=cache)
    assert calls == [1, 2, 1]


def test_explain_many_with_patches_and_inputs_equals_explain(lens, tiny_vlm):
    images = [random_image(s) for s in (31, 32)]
    subsets = [[0, 5, 15], None]
    ready = [tiny_vlm.prepare(images[0]), None]
    many = lens.explain_many(
        images, k=3, progress=False, method="exact", patches=subsets, inputs=ready
    )
    for img, sub, got in zip(images, subsets, many):
        one = lens.explain(img, k=3, method="exact", patches=sub)
        assert [(p.hook, p.index) for p in got.patches] == [(p.hook, p.index) for p in one.patches]
        assert [[n.sentence_id for n in p.latent] for p in got.patches] == [
            [n.sentence_id for n in p.latent] for p in one.patches
        ]
    with pytest.raises(ValueError, match="out of range"):
        lens.explain_many(images[:1], k=3, progress=False, patches=[[99]])
    with pytest.raises(ValueError, match="2 entries for 1 images"):
        lens.explain_many(images[:1], k=3, progress=False, patches=[None, None])


def test_explanation_cache_key_follows_the_lens_identity(lens, tmp_path):
    from tl_latentlens.lens.cache import ExplanationCache, image_digest

    img = random_image(24)
    a = ExplanationCache(tmp_path, lens.identity())
    b = ExplanationCache(tmp_path, {**lens.identity(), "bank": {"other": 1}})
    assert a.key(img, {"k": 3}) != b.key(img, {"k": 3})
    assert a.key(img, {"k": 3}) != a.key(random_image(25), {"k": 3})
    assert image_digest(img) == image_digest(img.copy())
    with pytest.raises(TypeError, match="PIL image"):
        image_digest("not an image")


def test_equivalent_hook_names_are_accepted(lens, bank):
    """``blocks.{l}.hook_resid_pre`` is the same residual as ``blocks.{l-1}.hook_resid_post``."""
    img = random_image(14)
    a = lens.explain(
        img, hooks=["blocks.1.hook_resid_pre"], bank_hooks=["blocks.1.hook_resid_pre"], k=3,
        baselines=False,
    )  # fmt: skip
    assert a.bank_hooks == ["blocks.0.hook_resid_post"]
    b = lens.explain(img, hooks=["blocks.1.hook_resid_pre"], per_layer=True, k=3, baselines=False)
    assert {n.hook for p in b.patches for n in p.latent} == {"blocks.0.hook_resid_post"}


def test_per_layer_search_stays_in_layer(lens):
    result = lens.explain(random_image(9), k=3, per_layer=True, baselines=False)
    for p in result.patches:
        assert {n.layer for n in p.latent} == {p.layer}
    with pytest.raises(ValueError, match="no hook at layer 2"):
        lens.explain(random_image(9), hooks=["blocks.1.hook_resid_post"], per_layer=True)


def test_logit_lens_is_unembedding_of_normed_residual(tiny_vlm):
    x = torch.randn(5, tiny_vlm.d_model)
    got = LogitLens(tiny_vlm)(x, k=3)
    hf = tiny_vlm.bridge.original_model
    with torch.no_grad():
        ref = hf.lm_head(hf.model.norm(x))
    top = torch.topk(ref, 3, dim=-1)
    for row, ids, vals in zip(got, top.indices, top.values):
        assert [c.token_id for c in row] == ids.tolist()
        torch.testing.assert_close(torch.tensor([c.score for c in row]), vals, rtol=1e-5, atol=1e-5)


def test_embedding_lens_is_nearest_embedding_row(tiny_vlm):
    emb = tiny_vlm.embedding_matrix().detach()
    x = emb[[5, 9, 11]] * 3.0 + 0.01 * torch.randn(3, tiny_vlm.d_model)
    got = EmbeddingLens(tiny_vlm)(x, k=2)
    assert [row[0].token_id for row in got] == [5, 9, 11]
    assert got[0][0].token == tiny_vlm.tokenizer.decode([5])
    assert got[0][0].score == pytest.approx(
        torch.nn.functional.cosine_similarity(x[0], emb[5], dim=0).item(), abs=1e-5
    )


class _EmbeddingOnly:
    """The part of a VLM EmbeddingLens.top_k reads."""

    def __init__(self, emb: torch.Tensor) -> None:
        self._emb = emb
        self.d_model = emb.shape[1]

    def embedding_matrix(self) -> torch.Tensor:
        return self._emb


@pytest.mark.parametrize("near_ties", [False, True])
def test_embedding_lens_bf16_scan_returns_the_float32_top_k(monkeypatch, near_ties):
    """The bfloat16 scan (forced here: it runs on any CPU, fast only on some) gives the float32
    scan's top-k: proved rows from the re-scored candidates, the others re-scanned. Near-tie
    embeddings (many rows closer than bfloat16 can tell apart) exercise the re-scan."""
    from tl_latentlens.lens import baselines

    gen = torch.Generator().manual_seed(0)
    emb = torch.randn(3000, 64, generator=gen)
    queries = torch.randn(40, 64, generator=gen)
    if near_ties:  # the first 600 rows all within 1e-3 of the queries' common direction
        emb[:600] = queries.mean(0) + 1e-3 * torch.randn(600, 64, generator=gen)
        queries = queries.mean(0) + 0.3 * queries
    lens = EmbeddingLens(_EmbeddingOnly(emb))  # type: ignore[arg-type]
    unit = torch.nn.functional.normalize(queries, dim=-1)
    want = torch.topk(unit @ lens.unit_embeddings.T, k=5, dim=-1)
    rescans = []
    real_topk = torch.topk

    def counting_topk(x, k, dim=-1):
        rescans.append(x.shape[0] if x.dtype == torch.float32 and x.shape[1] == 3000 else 0)
        return real_topk(x, k=k, dim=dim)

    monkeypatch.setattr(baselines, "_bf16_is_fast", lambda device: True)
    monkeypatch.setattr(baselines.torch, "topk", counting_topk)
    values, ids = lens.top_k(unit, 5)
    assert torch.equal(ids, want.indices)
    torch.testing.assert_close(values, want.values, atol=1e-6, rtol=0)
    assert (sum(rescans) > 0) == near_ties  # only near ties need the float32 re-scan


def test_explain_vectors_from_cache_and_tensor(tiny_vlm, lens, bank):
    _, cache = tiny_vlm.bridge.run_with_cache("the red cat sits", names_filter=HOOKS)
    hook = "blocks.0.hook_resid_post"
    res = lens.explain_vectors(cache, hook, k=2, positions=[1, 2], method="exact")
    assert res.hooks == [hook] and res.n_visual == 2
    # a token of a sentence in the bank finds itself (similarity ~1) when the prefix matches
    vec = cache[hook][0, 2]
    direct = lens.explain_vectors(vec, hook, k=1, method="exact")
    assert direct.patch(hook, 0).latent[0].similarity == pytest.approx(
        res.patch(hook, 1).latent[0].similarity, abs=1e-6
    )
    layerless = lens.explain_vectors(torch.randn(3, tiny_vlm.d_model), k=2)
    assert layerless.hooks == ["vectors"] and layerless.patches[0].layer == -1


def test_result_round_trip_and_tables(lens, tmp_path):
    result = lens.explain(random_image(10), k=2)
    path = result.save(tmp_path / "r.json")
    back = Explanation.load(path)
    assert back.patches == result.patches and back.grid == result.grid
    df = result.to_dataframe()
    assert set(df["lens"]) == {"latent", "logit", "embedding"}
    assert len(df[df.lens == "latent"]) == len(HOOKS) * 16 * 2
    leap = mid_layer_leap(result)
    assert [sum(r) for r in leap.counts] == [16] * len(HOOKS)
    assert leap.visual_layers == [0, 1, 3]


def test_errors(tiny_vlm, lens, bank, tmp_path):
    with pytest.raises(ValueError, match="k must be positive"):
        lens.explain(random_image(), k=0)
    with pytest.raises(ImageTokenMismatchError):
        lens.explain(random_image(), prompt="no placeholder here")
    with pytest.raises(ValueError, match="no hook for .*the bank stores"):
        lens.explain(random_image(), bank_hooks=["blocks.1.hook_resid_post"])
    with pytest.raises(ValueError, match="unknown hook"):
        lens.explain(random_image(), hooks=["blocks.9.hook_resid_post"])
    with pytest.raises(ValueError, match="the cache holds"):
        lens.explain_vectors(
            {"blocks.0.hook_resid_pre": torch.zeros(1, 2, 64)}, "blocks.1.hook_resid_pre"
        )
    with pytest.raises(ValueError, match=r"d_model|dimension|dim"):
        lens.explain_vectors(torch.zeros(2, 10), "blocks.0.hook_resid_pre")
    # a bank built from a different model is refused
    from transformer_lens.model_bridge import TransformerBridge

    from tiny_models import TinyEncoder
    from tl_latentlens.models.connector import Connector, ConnectorVLM

    other_bridge = TransformerBridge.boot_transformers(
        str(tiny_llama_dir(tmp_path / "m", seed=5)), device="cpu"
    )
    enc = TinyEncoder()
    other = ConnectorVLM(other_bridge, enc, Connector(enc.d_vision, 64))
    with pytest.raises(BankModelMismatchError):
        LatentLens(other, bank)


def test_search_in_cpu_blocks_of_query_rows_changes_nothing(lens, monkeypatch):
    """On a CPU the queries go to the bank ``CPU_QUERY_ROWS`` at a time (blocks that cut across
    hooks and images here): the neighbours, methods and timings' keys are those of one call."""
    from tl_latentlens.lens import latent

    images = [random_image(31), random_image(32)]
    whole = lens.explain_many(images, k=3, batch_size=2, progress=False)
    monkeypatch.setattr(latent, "CPU_QUERY_ROWS", 7)
    calls = []
    search = lens.bank.search
    monkeypatch.setattr(
        lens.bank, "search", lambda q, **kw: calls.append(len(q)) or search(q, **kw)
    )
    blocks = lens.explain_many(images, k=3, batch_size=2, progress=False)
    assert max(calls) == 7 and sum(calls) == 2 * 16 * len(HOOKS)
    for a, b in zip(whole, blocks):  # same neighbours; similarities to float32 rounding
        assert a.search == b.search and len(a.patches) == len(b.patches)
        for p, q in zip(a.patches, b.patches):
            assert (p.hook, p.index) == (q.hook, q.index)
            assert [(n.sentence_id, n.position, n.hook) for n in p.latent] == [
                (n.sentence_id, n.position, n.hook) for n in q.latent
            ]
            assert [n.similarity for n in p.latent] == pytest.approx(
                [n.similarity for n in q.latent], abs=1e-5
            )
