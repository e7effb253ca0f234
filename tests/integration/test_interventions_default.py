"""Interventions, attention and vision hooks on the embedded default VLM with its cached
1,500-sentence default bank (skipped when that bank is not built yet)."""

import numpy as np
import pytest
import torch

from tiny_models import random_image
from tl_latentlens import LatentLens, load_default_vlm
from tl_latentlens.lens.default_bank import default_bank, default_bank_dir
from tl_latentlens.models.base import VISION_ENCODER_OUT, VISION_PROJECTOR_OUT

pytestmark = pytest.mark.integration

SENTENCES = 1500
PROMPT = "<image>\nWhat is in the picture?"


@pytest.fixture(scope="module")
def lens():
    vlm = load_default_vlm()
    if not (default_bank_dir(vlm, SENTENCES) / "manifest.json").is_file():
        pytest.skip(f"the {SENTENCES}-sentence default bank is not cached (run the demo once)")
    return LatentLens(vlm, default_bank(vlm, max_sentences=SENTENCES, progress=False))


def test_ablating_block_4_moves_only_later_neighbours(lens):
    vlm = lens.vlm
    image = random_image(1, size=224)
    positions = vlm.prepare(image, PROMPT).layout.positions

    def mean_ablate(resid, hook):
        out = resid.clone()
        out[:, positions] = resid[:, positions].mean(dim=1, keepdim=True)
        return out

    hooks, patches = [0, 2, 4, 8], list(range(0, 49, 4))
    plain = lens.explain(image, PROMPT, hooks=hooks, k=5, patches=patches, baselines=False,
                         attention=[8])  # fmt: skip
    ablated = lens.explain(image, PROMPT, hooks=hooks, k=5, patches=patches, baselines=False,
                           fwd_hooks=[(4, mean_ablate)])  # fmt: skip
    overlap = {layer: plain.diff(ablated).mean_overlap()[plain.hook(layer)] for layer in hooks}
    assert overlap[0] == overlap[2] == 1.0
    assert overlap[4] < 0.5 and overlap[8] < 1.0
    att = plain.attention
    np.testing.assert_allclose(att.pattern.sum(-1), 1.0, atol=1e-4)
    assert len(att.top_patches(8, prompt_positions=[-1], n=3)) == 3


def test_vision_side_in_one_cache(lens):
    vlm = lens.vlm
    inputs = vlm.prepare(random_image(2, size=224), PROMPT)
    _, cache = vlm.run_with_cache(inputs, ["blocks.0.hook_resid_pre"], vision=True)
    assert cache[VISION_ENCODER_OUT].shape[:2] == (1, 49)
    proj = cache[VISION_PROJECTOR_OUT][0]
    assert torch.equal(proj, cache["blocks.0.hook_resid_pre"][0, inputs.layout.positions])
