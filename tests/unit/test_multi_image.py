"""Prompts with several images, and what the model saw of an image (issue 13 defects).

* ``explain`` keeps every image of the prompt, and the renderers draw each image's patches on
  that image (one grid per image; before, patches of different images collided in one grid);
* the patch grid is drawn over the part of the image the model saw (LLaVA-1.5's processor
  centre-crops a non-square image);
* an image is prepared once per explanation (``explain(inputs=...)``).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from fixtures.explanations import sample_explanation
from tiny_models import WORDS, random_image, tiny_llava_dir
from tl_latentlens.bank import build_bank
from tl_latentlens.lens import LatentLens
from tl_latentlens.models.base import crop_to_box
from tl_latentlens.models.families.base import centre_crop_box
from tl_latentlens.render.html import explanation_html
from tl_latentlens.render.pictures import patch_words_png

HOOKS = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_post"]


def _corpus(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        " ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (6,), generator=g))
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def lens(tiny_vlm, tmp_path_factory):
    out = tmp_path_factory.mktemp("multi") / "bank"
    bank = build_bank(tiny_vlm, _corpus(), out, hooks=HOOKS, max_per_token=None, progress=False)
    return LatentLens(tiny_vlm, bank)


# ---- explain ---------------------------------------------------------------------------------
def test_explain_keeps_every_image_of_the_prompt(lens):
    a, b = random_image(1), random_image(2)
    result = lens.explain([a, b], "<image> and <image> here", k=2, method="exact")
    assert isinstance(result.image, list) and len(result.image) == 2
    assert result.image[1] is b or np.array_equal(np.asarray(result.image[1]), np.asarray(b))
    per_image = {i: [p for p in result.at(HOOKS[0]) if p.image_index == i] for i in (0, 1)}
    assert [len(v) for v in per_image.values()] == [16, 16]
    assert {(p.row, p.col) for p in per_image[1]} == {(r, c) for r in range(4) for c in range(4)}
    one = lens.explain(a, k=2, method="exact")
    assert one.image is a  # one image (no crop box): the image itself, not a list


def test_explain_with_prepared_inputs_does_not_prepare_again(lens, monkeypatch):
    img = random_image(3)
    inputs = lens.vlm.prepare(img, None)
    want = lens.explain(img, k=2, method="exact")
    calls = []
    real = lens.vlm.prepare
    monkeypatch.setattr(lens.vlm, "prepare", lambda *a, **k: calls.append(a) or real(*a, **k))
    got = lens.explain(img, k=2, method="exact", inputs=inputs)
    assert calls == []
    assert [p.latent for p in got.patches] == [p.latent for p in want.patches]


# ---- renderers -------------------------------------------------------------------------------
def _cell_words(html: str) -> list[list[str]]:
    """Per overview table, the words of its cells in row-major order."""
    tables = re.findall(r'<figure class="ll-grid[^"]*">(.*?)</figure>', html, re.S)
    return [re.findall(r"<td[^>]*><a [^>]*>(.*?)</a></td>", t, re.S) for t in tables]


def test_html_has_one_grid_per_image_and_hook():
    exp = sample_explanation(rows=2, cols=3, n_images=2)
    html = explanation_html(exp)
    tables = _cell_words(html)
    assert len(tables) == len(exp.hooks) * 2
    from tl_latentlens.render._markup import esc

    for t, (hook, image) in enumerate((h, i) for h in exp.hooks for i in (0, 1)):
        want = [esc(p.top_word) for p in exp.at(hook) if p.image_index == image]
        assert tables[t] == want, (hook, image)
    assert html.count('class="ll-thumb"') == 2  # one thumbnail (with its grid) per image
    assert "image 1" in html


def test_png_draws_each_image_in_its_own_panel(tmp_path):
    exp = sample_explanation(rows=2, cols=3, n_images=2)
    white = [Image.new("RGB", (240, 160), "white"), Image.new("RGB", (240, 160), "white")]
    out = patch_words_png(exp, tmp_path / "w.png", image=white, title=False, width=968)
    arr = np.asarray(Image.open(out).convert("L"), dtype=float)
    h, w = arr.shape
    assert (w, h) == (968, 320)  # two 480 x 320 panels and an 8 px gap
    for x0 in (0, 488):  # the word boxes darken the centre of every patch of both panels
        for r in range(2):
            for c in range(3):
                cy, cx = int((r + 0.5) * 160), int(x0 + (c + 0.5) * 160)
                assert arr[cy - 4 : cy + 4, cx - 15 : cx + 15].mean() < 200, (
                    x0,
                    r,
                    c,
                )  # white: 255


def test_png_needs_a_picture_per_image(tmp_path):
    exp = sample_explanation(rows=2, cols=3, n_images=2)
    with pytest.raises(ValueError, match="2 images"):
        patch_words_png(exp, tmp_path / "w.png", image=Image.new("RGB", (30, 20)))


# ---- what the model saw ----------------------------------------------------------------------
def test_centre_crop_box_follows_the_clip_processor():
    from transformers import CLIPImageProcessorPil

    proc = CLIPImageProcessorPil()  # shortest edge 224, centre crop 224 x 224
    assert centre_crop_box(proc, (640, 480)) == pytest.approx((80.0, 0.0, 560.0, 480.0), abs=2)
    assert centre_crop_box(proc, (300, 300)) == pytest.approx((0, 0, 300, 300))
    proc.do_center_crop = False
    assert centre_crop_box(proc, (640, 480)) is None


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    from tl_latentlens.models.load import load_vlm

    return load_vlm(tiny_llava_dir(tmp_path_factory.mktemp("llava")), device="cpu")


def test_llava_layout_records_the_crop_the_model_saw(llava):
    # A wide image: left third red, middle blue, right third green. The CLIP processor keeps
    # the middle square, so the model sees mostly blue.
    arr = np.zeros((40, 96, 3), dtype=np.uint8)
    arr[:, :32, 0] = arr[:, 32:64, 2] = arr[:, 64:, 1] = 255
    img = Image.fromarray(arr)
    layout = llava.prepare(img).layout
    box = layout.box(0)
    assert box is not None and box[1] == 0 and box[3] == 40
    assert box[0] == pytest.approx(28, abs=1) and box[2] == pytest.approx(68, abs=1)
    # The crop holds the pixels the processor kept: processing the crop gives the same input.
    proc = llava.processor.image_processor
    full = proc(images=[img], return_tensors="pt")["pixel_values"]
    seen = proc(images=layout.seen_images(img), return_tensors="pt")["pixel_values"]
    whole = proc(images=[img.resize((40, 40))], return_tensors="pt")["pixel_values"]
    assert (full - seen).abs().mean() < 0.25 * (full - whole).abs().mean()


def test_llava_explanation_draws_on_the_crop(llava, tmp_path):
    bank = build_bank(
        llava, _corpus(12), tmp_path / "bank", hooks=["blocks.0.hook_resid_pre"],
        max_per_token=None, progress=False,
    )  # fmt: skip
    img = random_image(5, 48).resize((64, 40))
    result = LatentLens(llava, bank).explain(img, k=2, method="exact")
    box = llava.prepare(img).layout.box(0)
    assert result.image.size == (40, 40)
    assert np.array_equal(np.asarray(result.image), np.asarray(crop_to_box(img, box)))
