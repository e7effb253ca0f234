"""Attention from prompt tokens to the patches (``explain(attention=...)``,
``LatentLens.attention_to_patches``) and its pictures, on the tiny VLM."""

import numpy as np
import pytest
import torch

from tiny_models import WORDS, random_image
from tl_latentlens.bank import build_bank
from tl_latentlens.lens import LatentLens
from tl_latentlens.lens.attention import PatchAttention

pytestmark = pytest.mark.usefixtures("one_thread")

HOOKS = ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
PROMPT = "the <image> what is the small red thing"


@pytest.fixture(scope="module")
def lens(tiny_vlm, tmp_path_factory):
    g = torch.Generator().manual_seed(0)
    corpus = [
        " ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (6,), generator=g))
        for _ in range(80)
    ]
    out = tmp_path_factory.mktemp("attention") / "bank"
    bank = build_bank(tiny_vlm, corpus, out, hooks=HOOKS, max_per_token=None, progress=False)
    return LatentLens(tiny_vlm, bank)


@pytest.fixture(scope="module")
def result(lens):
    return lens.explain(random_image(5), PROMPT, k=3, attention=True)


def test_pattern_sums_to_one_and_matches_the_bridge(lens, tiny_vlm, result):
    att = result.attention
    n_layers, n_heads = tiny_vlm.n_layers, tiny_vlm.bridge.cfg.n_heads
    n_pos = len(att.tokens)
    assert att.layers == tuple(range(n_layers))
    assert att.pattern.shape == (n_layers, n_heads, n_pos, n_pos)
    np.testing.assert_allclose(att.pattern.sum(-1), 1.0, atol=1e-5)
    # the same numbers as the bridge's own hook_pattern of a plain run
    inputs = tiny_vlm.prepare(random_image(5), PROMPT)
    _, cache = tiny_vlm.run_with_cache(inputs, ["blocks.2.attn.hook_pattern"])
    np.testing.assert_allclose(att.pattern[2], cache["blocks.2.attn.hook_pattern"][0], atol=1e-6)
    # attention_to_patches gives the same
    again = lens.attention_to_patches(random_image(5), PROMPT, layer=2)
    assert again.layers == (2,)
    np.testing.assert_allclose(again.pattern[0], att.pattern[2], atol=1e-6)


def test_grid_follows_the_visual_positions(result):
    att = result.attention
    pos = att.positions
    assert [att.tokens[p] for p in pos[:3]] == ["img[0,0]", "img[0,1]", "img[0,2]"]
    queries = att.prompt_positions()
    assert queries == list(range(int(pos[-1]) + 1, len(att.tokens)))  # the text after the image
    for head in (None, 1):
        grid = att.to_grid(1, head, [-1])
        row = att.pattern[1, :, -1].mean(0) if head is None else att.pattern[1, head, -1]
        for i, p in enumerate(pos):
            assert grid[att.rows[i], att.cols[i]] == pytest.approx(row[p], abs=1e-7)
    # a synthetic pattern: all of the last query's attention on visual token 6 (row 1, col 2)
    pattern = np.zeros_like(att.pattern[:1])
    pattern[0, :, -1, pos[6]] = 1.0
    fake = PatchAttention((0,), pattern, att.tokens, pos, att.rows, att.cols, att.image_index,
                          att.grid)  # fmt: skip
    grid = fake.to_grid(0, prompt_positions=[-1])
    assert grid[1, 2] == 1.0 and np.nansum(grid) == 1.0
    assert fake.top_patches(0, prompt_positions=[-1], n=1) == [(6, 1, 2, 1.0)]


def test_ablating_attention_to_the_image_changes_later_layers_only(lens, tiny_vlm, result):
    img = random_image(5)
    pos = tiny_vlm.prepare(img, PROMPT).layout.positions

    def no_image(pattern, hook):  # nothing attends to the visual tokens in block 1
        out = pattern.clone()
        out[..., pos] = 0
        return out

    ablated = lens.explain(img, PROMPT, k=3, attention=[1, 2],
                           fwd_hooks=[("blocks.1.attn.hook_pattern", no_image)])  # fmt: skip
    assert ablated.attention.pattern[0][..., pos].max() == 0.0  # the cache saw the ablation
    overlap = result.diff(ablated).mean_overlap()
    assert overlap["blocks.0.hook_resid_pre"] == overlap["blocks.0.hook_resid_post"] == 1.0
    diff = result.diff(ablated)
    assert min(p.similarity_change != 0 for p in diff.at("blocks.1.hook_resid_post"))


def test_pictures(result, tmp_path):
    att = result.attention
    png = att.save_png(tmp_path / "att.png", 1, prompt_positions=[-1], explanation=result)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = att.to_html(tmp_path / "att.html", layer=1, explanation=result)
    assert "CircuitsVis.AttentionHeads" in page and "http" not in page.split("<script>")[0]
    props = page.rsplit("CircuitsVis.AttentionHeads, ", 1)[1]
    assert "</script" not in props.split(");</script>")[0]
    assert "img[0,0] " + result.at(1)[0].top_word in props
    assert props.count('"L1H0"') == 1


def test_errors(lens, result):
    with pytest.raises(ValueError, match="not cached"):
        lens.attention_to_patches(random_image(5), PROMPT, layer=1).to_grid(2)
    with pytest.raises(ValueError, match="head"):
        result.attention.weights(0, head=99)
    with pytest.raises(ValueError, match="outside"):
        result.attention.weights(0, prompt_positions=[999])
    with pytest.raises(ValueError, match="blocks 0"):
        lens.explain(random_image(5), PROMPT, attention=[7])
