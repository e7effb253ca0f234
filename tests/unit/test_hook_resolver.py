"""Hooks by layer number or any equivalent name, everywhere (one resolver: hooks.resolve_hook),
and the one-call lens (LatentLens.default / from_pretrained) on the tiny model."""

import numpy as np
import pytest
import torch

from tiny_models import WORDS, random_image
from tl_latentlens import hooks as hk
from tl_latentlens.bank import Bank, MissingHookError, build_bank
from tl_latentlens.lens import LatentLens
from tl_latentlens.lens.results import NotExplainedError

HOOKS = ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.2.hook_resid_post"]


@pytest.fixture(scope="module")
def bank(tiny_vlm, tmp_path_factory):
    out = tmp_path_factory.mktemp("resolver") / "bank"
    corpus = [" ".join(WORDS[i : i + 5]) for i in range(0, 60, 2)]
    return build_bank(tiny_vlm, corpus, out, hooks=HOOKS, max_per_token=None, progress=False)


@pytest.fixture(scope="module")
def result(tiny_vlm, bank):
    return LatentLens(tiny_vlm, bank).explain(random_image(3), k=3, baselines=False)


# ---- the resolver ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "want"),
    [
        ("blocks.0.hook_resid_post", "blocks.0.hook_resid_post"),  # the name itself
        ("blocks.1.hook_resid_pre", "blocks.0.hook_resid_post"),  # an equivalent name
        (1, "blocks.0.hook_resid_post"),  # a layer number
        (np.int64(3), "blocks.2.hook_resid_post"),  # numpy ints too
        (0.0, "blocks.0.hook_resid_pre"),
    ],
)
def test_resolve_hook_by_name_equivalent_name_or_layer(key, want):
    assert hk.resolve_hook(key, HOOKS) == want


@pytest.mark.parametrize(
    "key", [2, "blocks.1.hook_resid_post", "nonsense", True, None, float("nan")]
)
def test_resolve_hook_errors_list_what_exists(key):
    with pytest.raises(hk.UnknownHookError) as err:
        hk.resolve_hook(key, HOOKS, where="the bank stores")
    assert isinstance(err.value, ValueError)
    if isinstance(key, int) and not isinstance(key, bool):
        assert "blocks.2.hook_resid_post (layer 3)" in str(err.value)


def test_resolve_model_hook_gives_canonical_names():
    assert hk.resolve_model_hook(0, 3) == "blocks.0.hook_resid_pre"
    assert hk.resolve_model_hook(3, 3) == "blocks.2.hook_resid_post"
    assert hk.resolve_model_hook("blocks.1.hook_resid_pre", 3) == "blocks.1.hook_resid_pre"
    with pytest.raises(hk.UnknownHookError, match="0..3"):
        hk.resolve_model_hook(4, 3)


# ---- every place that takes a hook ----------------------------------------------------------
def test_bank_resolves_like_everyone(bank):
    assert bank.resolve_hook(1) == bank.resolve_hook("blocks.1.hook_resid_pre")
    with pytest.raises(MissingHookError) as err:
        bank.resolve_hook(2)
    assert isinstance(err.value, hk.UnknownHookError) and "the bank stores" in str(err.value)


def test_explanation_takes_layers_and_equivalent_names(result):
    by_name = result.neighbours("blocks.0.hook_resid_post", 2)
    assert result.neighbours(1, 2) == by_name
    assert result.neighbours("blocks.1.hook_resid_pre", 2) == by_name
    assert result.patch(np.int64(1), 2).latent == tuple(by_name) or result.patch(
        np.int64(1), 2
    ).latent == list(by_name)
    assert [p.index for p in result.at(3)] == [p.index for p in result.at(HOOKS[2])]
    assert result.hook(0) == "blocks.0.hook_resid_pre"


def test_explanation_errors_name_the_explained_hooks(result):
    with pytest.raises(NotExplainedError) as err:
        result.neighbours(2, 0)
    assert isinstance(err.value, KeyError) and isinstance(err.value, ValueError)
    assert "blocks.2.hook_resid_post (layer 3)" in str(err.value)
    with pytest.raises(KeyError, match="no visual token 999"):
        result.patch(0, 999)


def test_explain_hooks_by_layer_number(tiny_vlm, bank, result):
    lens = LatentLens(tiny_vlm, bank)
    by_layer = lens.explain(random_image(3), hooks=[1, 3], k=3, baselines=False)
    assert by_layer.hooks == ["blocks.0.hook_resid_post", "blocks.2.hook_resid_post"]
    assert by_layer.neighbours(3, 4) == result.neighbours(3, 4)
    many = lens.explain_many([random_image(3)], hooks=[3], k=3, baselines=False)[0]
    assert many.neighbours(3, 4) == result.neighbours(3, 4)
    with pytest.raises(hk.UnknownHookError, match="0..3"):
        lens.explain(random_image(3), hooks=[7])


def test_explain_vectors_hook_by_layer(tiny_vlm, bank):
    lens = LatentLens(tiny_vlm, bank)
    vec = torch.randn(2, tiny_vlm.d_model, generator=torch.Generator().manual_seed(0))
    a = lens.explain_vectors(vec, 1, k=3, per_layer=True, baselines=False)
    b = lens.explain_vectors(vec, "blocks.0.hook_resid_post", k=3, per_layer=True, baselines=False)
    assert a.hooks == b.hooks == ["blocks.0.hook_resid_post"]
    assert a.neighbours(1, 0) == b.neighbours(1, 0)
    cache = {"blocks.0.hook_resid_post": vec[None]}
    c = lens.explain_vectors(cache, 1, k=3, per_layer=True, baselines=False)
    assert c.neighbours(1, 0) == a.neighbours(1, 0)


# ---- one call to a working lens -------------------------------------------------------------
def test_default_is_one_call(tiny_vlm, bank, monkeypatch):
    from tl_latentlens.lens import latent

    calls = {}

    def fake_default_bank(vlm, *args, encoder=None, progress=True, **kw):
        calls["bank"] = (vlm, encoder, progress)
        return bank

    monkeypatch.setattr(latent, "load_default_vlm", lambda device=None, **kw: tiny_vlm)
    monkeypatch.setattr(latent, "default_bank", fake_default_bank)
    lens = LatentLens.default(progress=False)
    assert lens.vlm is tiny_vlm and lens.bank is bank
    assert calls["bank"][0] is tiny_vlm and calls["bank"][2] is False


def test_from_pretrained_opens_a_bank_by_path_or_object(tiny_vlm, bank, monkeypatch):
    from tl_latentlens.lens import latent

    monkeypatch.setattr(latent, "load_vlm", lambda model, **kw: tiny_vlm)
    by_path = LatentLens.from_pretrained("some/model", bank.root)
    assert isinstance(by_path.bank, Bank) and by_path.bank.root == bank.root
    assert LatentLens.from_pretrained(tiny_vlm, bank).bank is bank
    monkeypatch.setattr(latent, "default_bank", lambda vlm, **kw: bank)
    assert LatentLens.from_pretrained(tiny_vlm, "default").bank is bank


def test_pictures_and_pages_take_layer_numbers(result, tmp_path):
    png = result.save_png(tmp_path / "p.png", hook=1)
    assert png.stat().st_size > 0
    page = result.to_html(hooks=[1])
    assert "blocks.0.hook_resid_post" in page
    with pytest.raises(NotExplainedError):
        result.save_png(tmp_path / "q.png", hook=2)


def test_from_pretrained_routes_official_names_and_hub_ids(tiny_vlm, bank, monkeypatch):
    from tl_latentlens.bank import pretrained

    seen = []
    monkeypatch.setattr(
        Bank,
        "from_latentlens",
        classmethod(lambda cls, s, vlm, **kw: seen.append(("off", s, kw)) or bank),
    )
    monkeypatch.setattr(
        Bank,
        "from_pretrained",
        classmethod(lambda cls, s, vlm=None, **kw: seen.append(("hub", s)) or bank),
    )
    name = next(e.name for e in pretrained() if e.format == "latentlens")
    LatentLens.from_pretrained(tiny_vlm, name, trust_pickle=True)
    LatentLens.from_pretrained(tiny_vlm, "someone/some-bank")
    assert seen == [("off", name, {"trust_pickle": True}), ("hub", "someone/some-bank")]


def test_hook_names_of_other_kinds_come_from_hooks_py():
    assert hk.block_of("blocks.8.attn.hook_pattern") == 8
    assert hk.block_of("blocks.0.hook_resid_pre") == 0
    assert (
        hk.block_of("embed.hook_out") is None and hk.block_of("vision_projector.hook_out") is None
    )
    assert hk.attention_pattern_hook(3) == "blocks.3.attn.hook_pattern"
    assert hk.last_hook_for_layer(4, 30) == "blocks.4.hook_resid_pre"
    assert hk.last_hook_for_layer(0, 30) == "blocks.0.hook_resid_pre"
    assert hk.last_hook_for_layer(30, 30) == "blocks.29.hook_resid_post"
    assert hk.layer_of(hk.last_hook_for_layer(7, 30)) == 7
