"""Unit tests of connector training on a tiny random Llama + TinyEncoder (no real weights)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tiny_models import TinyEncoder
from tl_latentlens.default import loader
from tl_latentlens.default.features import encode_images
from tl_latentlens.models.connector import Connector, ConnectorVLM
from tl_latentlens.training import captioning
from tl_latentlens.training import train as train_mod
from tl_latentlens.training.captioning import (
    CaptionSet,
    CaptionTemplate,
    caption_losses,
    grounding_eval,
    mean_caption_loss,
    other_index,
)
from tl_latentlens.training.train import TrainConfig, batch_indices, train_connector

PROMPT = "<image> image shows"
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 200, 40),
    "blue": (30, 40, 220),
    "yellow": (230, 220, 20),
}
NOUNS = ["cat", "dog", "car", "tree"]


def _vlm(bridge, seed=1):
    enc = TinyEncoder()
    torch.manual_seed(seed)
    return ConnectorVLM(bridge, enc, Connector(enc.d_vision, bridge.cfg.d_model), name="tiny")


def _data(vlm, template, n, seed):
    """Flat-colour images; the caption names the colour, so the image predicts it."""
    rng = np.random.default_rng(seed)
    images, caps = [], []
    for _ in range(n):
        colour = list(COLOURS)[rng.integers(len(COLOURS))]
        noun = NOUNS[rng.integers(len(NOUNS))]
        images.append(Image.new("RGB", (32, 32), COLOURS[colour]))
        caps.append(tuple(template.encode_caption(vlm.tokenizer, f"a {colour} {noun} .")))
    return CaptionSet(encode_images(vlm.encoder, images, batch_size=8), tuple(caps))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def setup(tiny_bridge):
    vlm = _vlm(tiny_bridge)
    tpl = CaptionTemplate.from_vlm(vlm, PROMPT)
    return vlm, tpl, _data(vlm, tpl, 24, 0), _data(vlm, tpl, 8, 1)


def test_template_is_prepare_layout(setup):
    vlm, tpl, _, _ = setup
    inputs = vlm.prepare(Image.new("RGB", (32, 32)), PROMPT)
    assert list(tpl.prefix_ids) == inputs.input_ids[0].tolist()
    assert list(tpl.visual_positions) == inputs.layout.positions.tolist()
    ids = tpl.encode_caption(vlm.tokenizer, "a red cat sits on the grass .", max_tokens=4)
    assert len(ids) == 4 and ids[-1] == vlm.tokenizer.eos_token_id
    with pytest.raises(ValueError):
        CaptionTemplate.from_vlm(vlm, "no image here")


def test_fast_loss_equals_hooked_bridge_forward(setup):
    vlm, tpl, data, _ = setup
    with torch.no_grad():
        vis = vlm.connector(data.features[:3])
        fast, n1 = caption_losses(vlm, tpl, vis, data.captions[:3])
        slow, n2 = caption_losses(vlm, tpl, vis, data.captions[:3], via_bridge=True)
    assert torch.equal(n1, n2)
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-4)


def test_batch_indices_are_epoch_permutations():
    seen = np.concatenate([batch_indices(s, 10, 3, seed=0) for s in range(3)])
    assert sorted(seen.tolist()) == sorted(set(seen.tolist())) and len(seen) == 9
    np.testing.assert_array_equal(batch_indices(5, 10, 3, 0), batch_indices(5, 10, 3, 0))
    assert len(batch_indices(0, 2, 8, 0)) == 2


def test_train_config_validates():
    with pytest.raises(ValueError):
        TrainConfig(steps=0)
    with pytest.raises(ValueError):
        TrainConfig(lr=-1.0)
    cfg = TrainConfig(steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert cfg.lr_factor(0) == pytest.approx(0.1) and cfg.lr_factor(9) == pytest.approx(1.0)
    assert cfg.lr_factor(100) == pytest.approx(0.1)


def test_training_lowers_loss_and_writes_manifest(setup, tmp_path):
    vlm, tpl, train, held = setup
    before = mean_caption_loss(vlm, tpl, held)
    cfg = TrainConfig(steps=30, batch_size=6, lr=3e-3, warmup_steps=2, eval_every=10)
    res = train_connector(vlm, tpl, train, held, cfg, tmp_path, data_info={"fingerprint": "x"})
    curve = [loss for _, loss in res.manifest["loss_curve"]]
    assert np.mean(curve[-5:]) < np.mean(curve[:5])
    assert res.best_held_loss < before
    assert mean_caption_loss(vlm, tpl, held) == pytest.approx(res.best_held_loss, rel=1e-5)
    manifest = json.loads((tmp_path / train_mod.MANIFEST).read_text())
    for key in ("config", "seed", "steps_done", "loss_curve", "evals", "best", "timings", "data"):
        assert key in manifest
    assert manifest["steps_done"] == 30 and len(manifest["evals"]) == 3
    assert manifest["data"] == {"fingerprint": "x"}
    assert (tmp_path / train_mod.BEST_WEIGHTS).is_file() and (
        tmp_path / train_mod.LAST_CKPT
    ).is_file()
    g = grounding_eval(vlm, tpl, held)
    assert set(g) >= {"image", "zeros", "other_image"} and g["n_samples"] == len(held)


def test_resume_gives_identical_results(setup, tiny_bridge, tmp_path, monkeypatch):
    _, tpl, train, held = setup
    cfg = TrainConfig(steps=12, batch_size=4, lr=2e-3, warmup_steps=2, eval_every=4)
    vlm_a = _vlm(tiny_bridge)
    res_a = train_connector(vlm_a, tpl, train, held, cfg, tmp_path / "a")

    real_eval, calls = train_mod._evaluate, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_eval(*args, **kwargs)

    monkeypatch.setattr(train_mod, "_evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_connector(_vlm(tiny_bridge), tpl, train, held, cfg, tmp_path / "b")
    monkeypatch.setattr(train_mod, "_evaluate", real_eval)
    vlm_b = _vlm(tiny_bridge, seed=99)  # a different init: everything must come from the ckpt
    res_b = train_connector(vlm_b, tpl, train, held, cfg, tmp_path / "b")
    assert res_a.manifest["loss_curve"] == res_b.manifest["loss_curve"]
    assert res_a.best_step == res_b.best_step
    for k, v in vlm_a.connector.state_dict().items():
        torch.testing.assert_close(v, vlm_b.connector.state_dict()[k], rtol=0, atol=0)
    with pytest.raises(ValueError, match="another TrainConfig"):
        train_connector(vlm_b, tpl, train, held, TrainConfig(steps=13), tmp_path / "b")


def test_save_and_read_connector_vlm_dir(tmp_path, monkeypatch):
    conn = Connector(24, 64)
    path = loader.save_connector_vlm(
        conn,
        tmp_path,
        lm={"name": "smollm2-135m"},
        encoder={"name": "x", "grid": [4, 4]},
        prompt=PROMPT,
    )
    manifest = json.loads(path.read_text())
    assert manifest["connector"] == conn.config() and manifest["grid"] == [4, 4]
    assert loader._read_manifest(tmp_path)["prompt"] == PROMPT
    (tmp_path / loader.WEIGHTS_NAME).unlink()
    with pytest.raises(FileNotFoundError, match="weights"):
        loader._read_manifest(tmp_path)
    with pytest.raises(FileNotFoundError, match="connector_vlm.json"):
        loader.load_connector_vlm(tmp_path / "nothing")
    monkeypatch.setattr(loader, "WEIGHTS_DIR", tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="train-connector"):
        loader.load_default_vlm()


def test_grounding_eval_by_kind_and_other_image_shift(setup):
    vlm, tpl, _, held = setup
    kinds = tuple("stamp" if i % 2 else "composite" for i in range(len(held)))
    data = CaptionSet(held.features, held.captions, kinds)
    g = grounding_eval(vlm, tpl, data, batch_size=3)
    assert set(g["by_kind"]) == {"stamp", "composite"}
    assert sum(v["n_samples"] for v in g["by_kind"].values()) == len(held)
    assert sum(v["n_tokens"] for v in g["by_kind"].values()) == g["n_tokens"] == held.n_tokens
    # "other" takes another sample of the same kind, half the kind's samples away
    other = other_index(data)
    assert [kinds[int(i)] for i in other] == list(kinds)
    assert all(int(o) != i for i, o in enumerate(other))
    assert other_index(held).tolist() == torch.roll(torch.arange(8), -4).tolist()
    swapped = CaptionSet(held.features[other], held.captions)
    assert g["other_image"] == pytest.approx(mean_caption_loss(vlm, tpl, swapped, 3), rel=1e-5)
    with pytest.raises(ValueError):
        mean_caption_loss(vlm, tpl, held, visual="nothing")


def _without_patches(tpl: CaptionTemplate, keep: list[int]) -> CaptionTemplate:
    """The layout of an image that has only the patches ``keep`` (reference for regions)."""
    dropped = {p for j, p in enumerate(tpl.visual_positions) if j not in keep}
    ids = [t for p, t in enumerate(tpl.prefix_ids) if p not in dropped]
    shift = [sum(d < p for d in dropped) for p in tpl.visual_positions]
    vis = tuple(p - shift[j] for j, p in enumerate(tpl.visual_positions) if j in keep)
    return CaptionTemplate(tpl.prompt, tuple(ids), vis, tpl.eos_id, tpl.pad_id)


def test_region_loss_equals_an_image_of_only_those_patches(setup):
    vlm, tpl, data, _ = setup
    n_vis = len(tpl.visual_positions)
    assert n_vis >= 4
    regions = [(1, 2), (), (n_vis - 1,)]
    with torch.no_grad():
        vis = vlm.connector(data.features[:3])
        caps = data.captions[:3]
        packed, n_packed = caption_losses(vlm, tpl, vis, caps, keep=regions)
        whole, n_whole = caption_losses(vlm, tpl, vis, caps)
        for b, keep in enumerate(regions):
            if keep:
                ref_tpl, ref_vis = _without_patches(tpl, list(keep)), vis[b : b + 1, list(keep)]
            else:
                ref_tpl, ref_vis = tpl, vis[b : b + 1]
            ref, n_ref = caption_losses(vlm, ref_tpl, ref_vis, caps[b : b + 1])
            torch.testing.assert_close(packed[b : b + 1], ref, rtol=1e-5, atol=1e-5)
            assert int(n_packed[b]) == int(n_ref[0]) == int(n_whole[b])
        # a sample that sees all its patches is unchanged by its neighbours' regions
        torch.testing.assert_close(packed[1], whole[1], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(packed[0], whole[0])
        with pytest.raises(ValueError, match="via_bridge"):
            caption_losses(vlm, tpl, vis, caps, via_bridge=True, keep=regions)
        with pytest.raises(ValueError, match="outside"):
            caption_losses(vlm, tpl, vis, caps, keep=[(n_vis,), (), ()])


def test_caption_set_regions_share_feature_rows(setup):
    vlm, tpl, data, _ = setup
    caps = data.captions[:2] + data.captions[:1]
    regional = CaptionSet(data.features[:2], caps, ("composite", "composite", "patch"),
                          rows=(0, 1, 0), patches=((), (), (2,)))  # fmt: skip
    feats, got_caps, keep = regional.batch([2, 1])
    assert torch.equal(feats[0], data.features[0]) and torch.equal(feats[1], data.features[1])
    assert got_caps == [caps[2], caps[1]] and keep == [(2,), ()]
    sub = regional.subset([2])
    assert sub.rows == (0,) and sub.patches == ((2,),) and len(sub) == 1
    assert mean_caption_loss(vlm, tpl, sub) != pytest.approx(
        mean_caption_loss(vlm, tpl, data.subset([0]))
    )
    with pytest.raises(ValueError, match="row index"):
        CaptionSet(data.features[:2], caps, rows=(0, 1, 2))
    with pytest.raises(ValueError, match="patch lists"):
        CaptionSet(data.features[:3], caps, patches=((),))
    with pytest.raises(ValueError, match="feature rows"):
        CaptionSet(data.features[:2], caps)


def test_pipeline_region_samples_read_their_composites_rows(setup):
    from tl_latentlens.default.features import Sample
    from tl_latentlens.training.pipeline import PipelineConfig, _caption_set

    vlm, tpl, data, _ = setup
    img = Image.new("RGB", (32, 32))
    samples = [
        Sample(img, "a red cat .", "stamp"),
        Sample(img, "a cat and a dog .", "composite",
               (("a cat .", (0, 1, 4)), ("a dog .", (3,)))),
    ]  # fmt: skip
    feats = data.features[:2]
    plain = _caption_set(vlm, tpl, samples, feats, 16)
    assert len(plain) == 2 and plain.patches == ((), ()) and plain.rows == (0, 1)
    both = _caption_set(vlm, tpl, samples, feats, 16, regions="objects+patch", seed=0)
    assert both.kinds == ("stamp", "composite", "region", "patch", "patch")
    assert both.rows == (0, 1, 1, 1, 1)
    assert both.patches[2] == (0, 1, 4) and both.patches[3][0] in (0, 1, 4)
    assert both.patches[4:] == ((3,),)  # a one-patch object is not repeated
    cat = tuple(tpl.encode_caption(vlm.tokenizer, "a cat .", 16))
    assert both.captions[2] == both.captions[3] == cat
    objects = _caption_set(vlm, tpl, samples, feats, 16, regions="objects")
    assert objects.kinds == ("stamp", "composite", "region", "patch")
    assert objects.patches[3] == (3,)
    again = _caption_set(vlm, tpl, samples, feats, 16, regions="objects+patch", seed=0)
    assert again.patches == both.patches  # the single patch is a seeded choice
    with pytest.raises(ValueError, match="regions"):
        PipelineConfig(regions="pixels")


def test_grouped_losses_equal_one_padded_batch(setup):
    vlm, tpl, data, _ = setup
    keep = [(), (0, 2), (), (1,)]
    with torch.no_grad():
        vis = vlm.connector(data.features[:4])
        one, n_one = captioning._padded_losses(vlm, tpl, vis, data.captions[:4], False, keep)
        grouped, n_grouped = caption_losses(vlm, tpl, vis, data.captions[:4], keep=keep)
    assert torch.equal(n_one, n_grouped)
    torch.testing.assert_close(one, grouped, rtol=1e-5, atol=1e-5)
