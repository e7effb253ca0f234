"""SAE features on the embedded default VLM: an SAE fitted on its default bank's residuals at
a middle layer, run on a default-set image (skipped unless a default bank is cached)."""

import numpy as np
import pytest
import torch

from tl_latentlens import LatentLens, load_default_vlm, load_sae
from tl_latentlens.capture import capture_inputs
from tl_latentlens.evaluate.default_set import heldout_composites
from tl_latentlens.hooks import hook_for_layer
from tl_latentlens.lens.default_bank import DEFAULT_SENTENCES, default_bank, default_bank_dir
from tl_latentlens.lens.sae import fit_sae, save_sae

pytestmark = pytest.mark.integration

LAYER = 15


@pytest.fixture(scope="module")
def lens():
    vlm = load_default_vlm()
    for n in (DEFAULT_SENTENCES, 1500):
        if (default_bank_dir(vlm, n) / "manifest.json").is_file():
            return LatentLens(vlm, default_bank(vlm, max_sentences=n, progress=False))
    pytest.skip("no default bank in the cache (run the demo once to build it)")


def test_sae_on_a_default_image(lens, tmp_path):
    hook = hook_for_layer(LAYER, lens.vlm.n_layers)
    vectors = torch.from_numpy(lens.bank.decoded(hook))
    sae = fit_sae(vectors, 128, hook, steps=150, seed=0)
    # a useful fit: well under the variance around the mean
    recon = sae.encode(vectors) @ sae.W_dec + sae.b_dec
    base = (vectors - vectors.mean(0)).pow(2).sum(-1).mean()
    assert (recon - vectors).pow(2).sum(-1).mean() < 0.5 * base

    sae = load_sae(save_sae(sae, tmp_path / "sae"))
    image = heldout_composites(1)[0].image
    res = lens.sae_on_image(sae, image, top=3, k=3)
    assert res.hook == hook and res.grid == (7, 7) and len(res.patches) == 49

    x = capture_inputs(lens.vlm, lens.vlm.prepare(image), [hook]).residuals[hook]
    manual = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc).numpy()
    for p in res.patches:
        order = [int(f) for f in np.argsort(-manual[p.index], kind="stable")[:3]]
        assert list(p.features) == [f for f in order if manual[p.index, f] > 0]
    assert res.features and all(res.label(f) != "?" for f in res.features)
    # every label is the bank's nearest text tokens at the SAE's layer
    f = res.features[0]
    direct = lens.bank.search(sae.W_dec[f], hook=hook, k=3, method="exact")[0]
    assert [n.sentence_id for n in res.explained.neighbours(f)] == [n.sentence_id for n in direct]
    page = res.to_html(tmp_path / "sae.html")
    assert "ColoredTokensMulti" in page and f"feature {f}" in page
