"""SAE features through LatentLens on the tiny connector VLM: an SAE fitted here on the tiny
model's residuals, saved in SAELens's on-disk format, loaded back by directory and as a
duck-typed object; encoders, feature labels and per-patch features checked numerically."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from tiny_models import random_image, random_sentences
from tl_latentlens.bank import build_bank
from tl_latentlens.capture import capture_image, capture_text
from tl_latentlens.lens import LatentLens, SAEAdapter, SAEError, load_sae
from tl_latentlens.lens.sae import as_sae, fit_sae, save_sae

pytestmark = pytest.mark.usefixtures("one_thread")

BANK_HOOKS = ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.2.hook_resid_post"]
#: Layer 1, the bank's ``blocks.0.hook_resid_post`` under its other name.
SAE_HOOK = "blocks.1.hook_resid_pre"
D_SAE = 48


@pytest.fixture(scope="module")
def bank(tiny_vlm, tmp_path_factory):
    out = tmp_path_factory.mktemp("sae") / "bank"
    return build_bank(
        tiny_vlm, random_sentences(100), out, hooks=BANK_HOOKS, max_per_token=None, progress=False
    )


@pytest.fixture(scope="module")
def lens(tiny_vlm, bank):
    return LatentLens(tiny_vlm, bank)


@pytest.fixture(scope="module")
def residuals(tiny_vlm):
    """The tiny model's text residuals at the SAE's hook."""
    acts = list(capture_text(tiny_vlm, random_sentences(60, seed=1), [SAE_HOOK], batch_size=30))
    return torch.cat([a.residuals[SAE_HOOK] for a in acts])


@pytest.fixture(scope="module")
def sae(residuals):
    return fit_sae(residuals, D_SAE, SAE_HOOK, steps=150, l1=0.1, seed=0)


@pytest.fixture(scope="module")
def sae_dir(sae, tmp_path_factory):
    return save_sae(sae, tmp_path_factory.mktemp("sae") / "layer1")


def _manual(x, W_enc, W_dec, b_enc, b_dec):
    return torch.relu((x - b_dec) @ W_enc + b_enc)


# ---- fitting, SAELens format, adapters -------------------------------------------------------
def test_fit_sae_reconstructs_better_than_the_mean(sae, residuals):
    acts = sae.encode(residuals)
    recon = acts @ sae.W_dec + sae.b_dec
    err = (recon - residuals).pow(2).sum(-1).mean()
    base = (residuals - residuals.mean(0)).pow(2).sum(-1).mean()
    assert err < 0.5 * base
    assert 0 < (acts > 0).float().mean() < 0.9  # sparse, not dead


def test_saved_in_saelens_format_and_loaded_back(sae, sae_dir, residuals):
    cfg = json.loads((sae_dir / "cfg.json").read_text())
    # the fields SAELens 6's SAEConfig.to_dict writes (sae_lens/saes/sae.py)
    assert cfg["architecture"] == "standard" and cfg["d_in"] == 64 and cfg["d_sae"] == D_SAE
    assert cfg["dtype"] == "float32" and cfg["apply_b_dec_to_input"] is True
    assert cfg["normalize_activations"] == "none" and cfg["reshape_activations"] == "none"
    assert cfg["metadata"]["hook_name"] == SAE_HOOK
    assert cfg["metadata"]["sae_lens_version"].startswith("6.")
    weights = load_file(str(sae_dir / "sae_weights.safetensors"))
    assert set(weights) == {"W_enc", "W_dec", "b_enc", "b_dec"}
    assert weights["W_enc"].shape == (64, D_SAE) and weights["W_dec"].shape == (D_SAE, 64)

    back = load_sae(sae_dir)
    assert back.hook == SAE_HOOK and back.source == str(sae_dir)
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        assert torch.equal(getattr(back, name), getattr(sae, name))
    assert torch.equal(back.encode(residuals), sae.encode(residuals))


def test_encode_is_the_saelens_formula(sae, residuals):
    x = residuals[:20]
    manual = _manual(x, sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec)
    torch.testing.assert_close(sae.encode(x), manual, rtol=0, atol=0)

    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    thr = torch.linspace(0, 0.5, D_SAE)
    jump = SAEAdapter(sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec, 1, "jumprelu", threshold=thr)
    torch.testing.assert_close(jump.encode(x), pre.relu() * (pre > thr), rtol=0, atol=0)

    topk = SAEAdapter(sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec, 1, "topk", k=3)
    got = topk.encode(x)
    assert ((got > 0).sum(-1) <= 3).all()
    for row, p in zip(got, pre):
        keep = torch.topk(p, 3).indices
        expect = torch.zeros_like(p)
        expect[keep] = p[keep].relu()
        torch.testing.assert_close(row, expect, rtol=0, atol=0)

    no_bias = SAEAdapter(sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec, 1, apply_b_dec_to_input=False)
    torch.testing.assert_close(no_bias.encode(x), (x @ sae.W_enc + sae.b_enc).relu())

    rescale = SAEAdapter(
        sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec, 1, normalize_activations="constant_norm_rescale"
    )
    xn = x * 8.0 / x.norm(dim=-1, keepdim=True)  # sqrt(d_in) = 8
    torch.testing.assert_close(rescale.encode(x), _manual(xn, *_weights(sae)))


def _weights(sae):
    return sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec


def test_duck_typed_objects(sae, residuals):
    x = residuals[:10]
    # SAELens 6 layout: cfg.metadata.hook_name; parameters (float64 here) are read as float32
    obj = SimpleNamespace(
        W_enc=torch.nn.Parameter(sae.W_enc.double()),
        W_dec=torch.nn.Parameter(sae.W_dec.double()),
        b_enc=torch.nn.Parameter(sae.b_enc.double()),
        b_dec=torch.nn.Parameter(sae.b_dec.double()),
        cfg=SimpleNamespace(metadata=SimpleNamespace(hook_name=SAE_HOOK), architecture="standard"),
    )
    got = as_sae(obj)
    assert got.hook == SAE_HOOK and got.W_enc.dtype == torch.float32
    torch.testing.assert_close(got.encode(x), sae.encode(x))
    # older SAELens: cfg.hook_name; a dict cfg works too
    old = SimpleNamespace(**{n: getattr(sae, n) for n in ("W_enc", "W_dec", "b_enc", "b_dec")})
    old.cfg = SimpleNamespace(hook_name="blocks.0.hook_resid_post", metadata=None)
    assert as_sae(old).hook == "blocks.0.hook_resid_post"
    old.cfg = {"hook_point": 2}
    assert as_sae(old).hook == 2

    # an object's own encode is used (here: a different formula that the adapter cannot know)
    class WithEncode:
        W_enc, W_dec, b_enc, b_dec = _weights(sae)
        cfg = SimpleNamespace(metadata=SimpleNamespace(hook_name=SAE_HOOK), architecture=None)

        def encode(self, t):
            return torch.sigmoid(t @ self.W_enc)

    own = as_sae(WithEncode())
    torch.testing.assert_close(own.encode(x), torch.sigmoid(x @ sae.W_enc))


def test_pre_6_config_and_jumprelu_on_disk(sae, tmp_path):
    d = tmp_path / "old"
    d.mkdir()
    save_file({n: t.contiguous() for n, t in zip(("W_enc", "W_dec", "b_enc", "b_dec"),
                                                 _weights(sae))}, str(d / "sae_weights.safetensors"))  # fmt: skip
    cfg = {"d_in": 64, "d_sae": D_SAE, "hook_point": SAE_HOOK, "activation_fn_str": "topk",
           "activation_fn_kwargs": {"k": 2}, "normalize_activations": False, "dtype": "float32"}  # fmt: skip
    (d / "cfg.json").write_text(json.dumps(cfg))
    old = load_sae(d)
    assert (old.architecture, old.k, old.hook, old.normalize_activations) == (
        "topk", 2, SAE_HOOK, "none",
    )  # fmt: skip

    thr = torch.full((D_SAE,), 0.05)
    jump = SAEAdapter(*_weights(sae), hook=SAE_HOOK, architecture="jumprelu", threshold=thr)
    back = load_sae(save_sae(jump, tmp_path / "jump"))
    assert back.architecture == "jumprelu" and torch.equal(back.threshold, thr)
    x = torch.randn(5, 64)
    torch.testing.assert_close(back.encode(x), jump.encode(x), rtol=0, atol=0)


# ---- the lens ---------------------------------------------------------------------------------
def test_explain_sae_equals_explain_vectors_and_bank_search(lens, bank, sae_dir, sae):
    feats = [0, 7, 31]
    res = lens.explain_sae(sae_dir, features=feats, k=4, method="exact")
    assert res.features == tuple(feats) and res.hook == SAE_HOOK and res.layer == 1
    ref = lens.explain_vectors(sae.W_dec[feats], SAE_HOOK, k=4, per_layer=True, method="exact")
    for i, f in enumerate(feats):
        got = res.neighbours(f)
        want = ref.patches[i].latent
        assert [(n.sentence_id, n.position, n.hook) for n in got] == [
            (n.sentence_id, n.position, n.hook) for n in want
        ]
        np.testing.assert_allclose(
            [n.similarity for n in got], [n.similarity for n in want], rtol=1e-6
        )
        # independently: the bank's exact search of the decoder row at the SAE's layer
        direct = bank.search(sae.W_dec[f], hook="blocks.0.hook_resid_post", k=4, method="exact")[0]
        assert [(n.sentence_id, n.position) for n in got] == [
            (n.sentence_id, n.position) for n in direct
        ]
        assert {n.hook for n in got} == {"blocks.0.hook_resid_post"}
        assert res.label(f).neighbours == tuple(got)
    df = res.to_dataframe()
    latent = df[df.lens == "latent"]
    assert sorted(set(latent.feature)) == feats and len(latent) == 3 * 4
    assert (latent.groupby("feature")["index"].first().to_dict()) == {0: 0, 7: 1, 31: 2}
    assert [p.position for p in res.explanation.patches] == feats  # position = feature id
    page = res.to_html()
    assert "feature 31" in page and "TopkSamples" in page and "<script src=" not in page


def test_sae_on_image_top_features_are_a_manual_argsort(lens, tiny_vlm, sae):
    img = random_image(3)
    res = lens.sae_on_image(sae, img, top=3, k=2, method="exact")
    x = capture_image(tiny_vlm, img, hooks=[SAE_HOOK]).residuals[SAE_HOOK]
    manual = _manual(x, *_weights(sae)).numpy()
    assert res.grid == (4, 4) and len(res.patches) == 16 and res.hook == SAE_HOOK
    firing = set()
    for p in res.patches:
        order = np.argsort(-manual[p.index], kind="stable")[:3]
        want = [int(f) for f in order if manual[p.index, f] > 0]
        assert list(p.features) == want
        np.testing.assert_allclose(p.activations, manual[p.index, want], rtol=1e-5, atol=1e-6)
        firing |= set(want)
    assert firing, "the fitted SAE should fire on the image"
    # each firing feature labelled once, exactly as explain_sae labels it
    assert res.explained is not None and list(res.explained.features) == sorted(firing)
    ref = lens.explain_sae(sae, features=sorted(firing), k=2, method="exact", baselines=False)
    for f in firing:
        assert res.explained.neighbours(f) == ref.neighbours(f)
        assert res.label(f) == ref.label(f).label != ""
    f0 = res.patches[0].features[0]
    np.testing.assert_allclose(res.heatmap(f0), manual[:, f0].reshape(4, 4), rtol=1e-5)
    assert res.features[0] == max(firing, key=lambda f: (manual[:, f].max(), -f))
    df = res.to_dataframe()
    assert len(df) == sum(len(p.features) for p in res.patches)
    assert df.iloc[0].feature == f0 and df.iloc[0].label == res.label(f0)


def test_sae_image_page(lens, sae, tmp_path):
    res = lens.sae_on_image(sae, random_image(4), top=2, k=2)
    out = tmp_path / "sae.html"
    page = res.to_html(out, feature=res.features[0])
    assert out.read_text(encoding="utf-8") == page
    assert "ColoredTokensMulti" in page and "data:image/png;base64," in page
    assert f"feature {res.features[0]}" in page and "<script src=" not in page
    for f in res.features:  # every labelled feature has a card
        assert f'-f{f}"' in page
    # circuitsvis props: one token per visual token, one column per shown feature
    start = page.index('class="ll-ctm-data">') + len('class="ll-ctm-data">')
    props = json.loads(page[start : page.index("</script>", start)])
    assert len(props["tokens"]) == 16 and all(len(v) == 1 for v in props["values"])
    with pytest.raises(ValueError, match="outside"):
        res.to_html(features=[10_000])


# ---- errors -----------------------------------------------------------------------------------
def test_errors(lens, tiny_vlm, sae, sae_dir, tmp_path):
    with pytest.raises(SAEError, match="cfg.json, sae_weights.safetensors missing"):
        load_sae(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "cfg.json").write_text("{not json")
    (broken / "sae_weights.safetensors").write_bytes(b"junk")
    with pytest.raises(SAEError, match="cannot read"):
        load_sae(broken)
    (broken / "cfg.json").write_text(json.dumps({"d_in": 64, "d_sae": 5, "hook_name": 1}))
    (broken / "sae_weights.safetensors").write_bytes(
        (sae_dir / "sae_weights.safetensors").read_bytes()
    )
    with pytest.raises(SAEError, match="different SAEs"):
        load_sae(broken)

    narrow = SAEAdapter(torch.zeros(32, 8), torch.zeros(8, 32), torch.zeros(8), torch.zeros(32), 1)
    with pytest.raises(SAEError, match="32-dim .* 64-dim"):
        lens.explain_sae(narrow)
    with pytest.raises(SAEError, match="inconsistent shapes"):
        SAEAdapter(sae.W_dec, sae.W_dec, sae.b_enc, sae.b_dec, 1)  # W_enc transposed
    with pytest.raises(SAEError, match="not a residual-stream hook"):
        lens.explain_sae(sae.with_hook("blocks.0.hook_mlp_out"))
    with pytest.raises(SAEError, match="not a residual-stream hook"):
        lens.explain_sae(sae.with_hook("blocks.9.hook_resid_pre"))
    with pytest.raises(SAEError, match="bank_hooks="):
        lens.explain_sae(sae.with_hook(2), features=[0])  # the bank has no layer 2
    cross = lens.explain_sae(sae.with_hook(2), features=[0], bank_hooks=[0])
    assert {n.hook for n in cross.neighbours(0)} == {"blocks.0.hook_resid_pre"}
    with pytest.raises(SAEError, match=r"0\.\.47"):
        lens.explain_sae(sae, features=[D_SAE])
    with pytest.raises(SAEError, match="has no attribute 'b_dec'"):
        as_sae(SimpleNamespace(W_enc=sae.W_enc, W_dec=sae.W_dec, b_enc=sae.b_enc, cfg=None), hook=1)
    with pytest.raises(SAEError, match="names no hook"):
        as_sae(SimpleNamespace(**dict(zip(("W_enc", "W_dec", "b_enc", "b_dec"), _weights(sae)))))
    with pytest.raises(SAEError, match="'gated' .* encode"):
        SAEAdapter(*_weights(sae), hook=1, architecture="gated")
    with pytest.raises(SAEError, match="hook_z"):
        as_sae(SimpleNamespace(**dict(zip(("W_enc", "W_dec", "b_enc", "b_dec"), _weights(sae))),
                               cfg={"hook_name": 1, "reshape_activations": "hook_z"}))  # fmt: skip
    with pytest.raises(SAEError, match="top must be positive"):
        lens.sae_on_image(sae, random_image(1), top=0)
    assert issubclass(SAEError, ValueError)
    # a layer number and an equivalent name address the same hook
    a = lens.explain_sae(sae.with_hook(1), features=[2], k=2)
    b = lens.explain_sae(sae, features=[2], k=2)
    assert a.hook == "blocks.0.hook_resid_post" and b.hook == SAE_HOOK
    assert a.neighbours(2) == b.neighbours(2)


def test_real_saelens_class_when_importable(sae, sae_dir, residuals):
    """SAELens pins transformer-lens<4, so beside TransformerLens 4 it usually cannot be
    imported; where it can, its own loader reads what save_sae writes and encodes the same."""
    try:
        from sae_lens import SAE
    except Exception as err:  # noqa: BLE001 - ImportError or its incompatibility with TL 4
        pytest.skip(f"sae_lens is not importable here ({type(err).__name__}: {err})")
    real = SAE.load_from_disk(str(sae_dir))
    adapter = as_sae(real)
    assert adapter.hook == SAE_HOOK and adapter.encoder is not None
    torch.testing.assert_close(adapter.encode(residuals[:8]), sae.encode(residuals[:8]))
