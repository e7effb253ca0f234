"""The vision side's hooks (``vision_encoder.hook_out``, ``vision_projector.hook_out``) in the
same cache as the language model's: the connector VLM and a tiny HF LLaVA."""

import pytest
import torch

from tiny_models import WORDS, random_image, tiny_llava_dir
from tl_latentlens.bank import build_bank
from tl_latentlens.capture import capture_image
from tl_latentlens.lens import LatentLens
from tl_latentlens.models.base import (
    VISION_ENCODER_OUT,
    VISION_PROJECTOR_OUT,
    _stop_layer_for_names,
)

pytestmark = pytest.mark.usefixtures("one_thread")

L0 = "blocks.0.hook_resid_pre"
PROMPT = "the <image> the cat"


def test_one_cache_for_both_sides(tiny_vlm):
    img = random_image(2)
    inputs = tiny_vlm.prepare(img, PROMPT)
    _, cache = tiny_vlm.run_with_cache(inputs, [L0, "blocks.1.hook_resid_post"], vision=True)
    assert tiny_vlm.vision_hooks() == [VISION_ENCODER_OUT, VISION_PROJECTOR_OUT]
    assert {VISION_ENCODER_OUT, VISION_PROJECTOR_OUT, L0} <= set(cache.keys())
    feats = cache[VISION_ENCODER_OUT]
    proj = cache[VISION_PROJECTOR_OUT]
    assert feats.shape == (1, 16, tiny_vlm.encoder.d_vision)
    assert proj.shape == (1, 16, tiny_vlm.d_model)
    with torch.no_grad():
        expected = tiny_vlm.encoder(inputs.extras["pixels"])
        torch.testing.assert_close(feats, expected, rtol=0, atol=0)
        torch.testing.assert_close(proj, tiny_vlm.connector(expected), rtol=0, atol=0)
    # the projector's output is the layer-0 residual at the visual positions (no scaling)
    assert torch.equal(proj[0], cache[L0][0, inputs.layout.positions])
    # not asked: not cached
    _, plain = tiny_vlm.run_with_cache(inputs, [L0])
    assert VISION_PROJECTOR_OUT not in plain.keys()


def test_capture_image_vision_and_hooks_on_the_vision_side(tiny_vlm):
    img = random_image(2)
    acts = capture_image(tiny_vlm, img, PROMPT, [L0], vision=True)
    assert set(acts.extra) == {VISION_ENCODER_OUT, VISION_PROJECTOR_OUT}
    assert torch.equal(acts.extra[VISION_PROJECTOR_OUT][0], acts.residuals[L0])

    def zero_patch_5(act, hook):
        out = act.clone()
        out[:, 5] = 0
        return out

    for name in (VISION_PROJECTOR_OUT, VISION_ENCODER_OUT):
        hooked = capture_image(tiny_vlm, img, PROMPT, [L0], fwd_hooks=[(name, zero_patch_5)])
        changed = (hooked.residuals[L0] - acts.residuals[L0]).abs().amax(-1)
        assert changed[5] > 0 and changed[torch.arange(16) != 5].max() == 0
        if name == VISION_PROJECTOR_OUT:
            assert hooked.residuals[L0][5].abs().max() == 0


def test_explain_vectors_on_the_projector_output(tiny_vlm, tmp_path):
    g = torch.Generator().manual_seed(0)
    corpus = [
        " ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (5,), generator=g))
        for _ in range(60)
    ]
    bank = build_bank(tiny_vlm, corpus, tmp_path / "bank", hooks=[L0], progress=False)
    lens = LatentLens(tiny_vlm, bank)
    img = random_image(2)
    _, cache = tiny_vlm.run_with_cache(tiny_vlm.prepare(img, PROMPT), [L0], vision=True)
    from_proj = lens.explain_vectors(cache, VISION_PROJECTOR_OUT, k=3, per_layer=True)
    explained = lens.explain(img, PROMPT, hooks=[L0], k=3, per_layer=True)
    assert from_proj.hooks == [L0]
    for p, q in zip(from_proj.at(L0), explained.at(L0)):
        assert [(n.sentence_id, n.position) for n in p.latent] == [
            (n.sentence_id, n.position) for n in q.latent
        ]


def test_stop_layer_for_hooks_of_any_kind():
    assert _stop_layer_for_names([VISION_PROJECTOR_OUT], 30) == 1
    assert _stop_layer_for_names(["blocks.4.attn.hook_pattern", L0], 30) == 5
    assert _stop_layer_for_names(["blocks.29.hook_resid_post"], 30) is None
    assert _stop_layer_for_names(["ln_final.hook_out"], 30) is None


def test_unknown_vision_hook_is_refused(tiny_vlm):
    with pytest.raises(ValueError, match="vision_tower.hook_out"):
        tiny_vlm.run_with_cache(tiny_vlm.prepare(random_image(2)), ["vision_tower.hook_out"])


def test_hf_llava_bridge_vision_hooks(tmp_path):
    from tl_latentlens.models.load import load_vlm

    vlm = load_vlm(str(tiny_llava_dir(tmp_path / "llava")), device="cpu")
    assert vlm.vision_hooks() == [VISION_ENCODER_OUT, VISION_PROJECTOR_OUT]
    inputs = vlm.prepare(random_image(2), "the <image>\nthe cat sits")
    _, cache = vlm.run_with_cache(inputs, [L0], vision=True)
    proj = cache[VISION_PROJECTOR_OUT]
    assert proj.shape == (1, 16, vlm.d_model)
    torch.testing.assert_close(
        proj.reshape(-1, vlm.d_model), cache[L0][0, inputs.layout.positions], rtol=0, atol=0
    )
    acts = capture_image(vlm, random_image(2), "the <image>\nthe cat sits", [L0], vision=True)
    assert acts.extra[VISION_ENCODER_OUT].shape[-1] == vlm.hf_config.vision_config.hidden_size
