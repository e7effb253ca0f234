"""PNG pictures: valid images of the expected size, written atomically, clear errors."""

import re

import numpy as np
import pytest
from PIL import Image

from fixtures.explanations import sample_explanation
from tl_latentlens.lens.leap import LeapTable
from tl_latentlens.render.pictures import layer_curve_png, leap_heatmap_png, patch_words_png


@pytest.fixture(scope="module")
def exp():
    return sample_explanation(rows=2, cols=3, cell=80)  # 240 x 160 image


def png_size(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.verify()
    with Image.open(path) as im:
        im.load()
        return im.size


def only_file(folder):
    names = [f.name for f in folder.iterdir()]
    assert len(names) == 1, names  # no temp file left behind
    return names[0]


def test_patch_words_default_size(exp, tmp_path):
    out = patch_words_png(exp, tmp_path / "w.png")
    # At least 640 px wide; height keeps the 3:2 aspect, plus the 36 px title band.
    assert png_size(out) == (640, round(640 * 160 / 240) + 36)
    assert only_file(tmp_path) == "w.png"


def test_patch_words_options(exp, tmp_path):
    img = np.random.default_rng(0).random((3, 90, 120))  # CHW floats in 0..1
    out = patch_words_png(
        exp, tmp_path / "w.png", hook=exp.hooks[1], image=img, width=480, title=False, fontsize=9
    )
    assert png_size(out) == (480, 360)
    path_img = tmp_path / "in.png"
    Image.new("RGB", (300, 100), "white").save(path_img)
    assert png_size(patch_words_png(exp, tmp_path / "p.png", image=path_img, width=900)) == (
        900,
        336,
    )


def test_patch_words_draws_words(exp, tmp_path):
    # The dark word boxes darken the middle of a white image's patches.
    white = Image.new("RGB", (240, 160), "white")
    out = patch_words_png(exp, tmp_path / "w.png", image=white, title=False)
    arr = np.asarray(Image.open(out).convert("L"), dtype=float)
    h, w = arr.shape
    centre = arr[h // 4 - 5 : h // 4 + 5, w // 6 - 20 : w // 6 + 20]
    corner = arr[5:15, 5:15]
    assert centre.mean() < corner.mean() - 40


def test_patch_words_errors(exp, tmp_path):
    with pytest.raises(ValueError, match=re.escape(exp.hooks[0])):
        patch_words_png(exp, tmp_path / "x.png", hook="blocks.7.hook_resid_post")
    no_image = sample_explanation(image=False)
    with pytest.raises(ValueError, match="no image"):
        patch_words_png(no_image, tmp_path / "x.png")
    assert not list(tmp_path.iterdir())


def test_save_png_delegates(exp, tmp_path):
    out = exp.save_png(tmp_path / "e.png", hook=exp.hooks[-1], width=320)
    assert png_size(out)[0] == 320


@pytest.mark.parametrize("value", ["shares", "counts", "mean_similarity"])
def test_leap_heatmap(exp, tmp_path, value):
    out = leap_heatmap_png(exp.leap(), tmp_path / f"{value}.png", value=value)
    w, h = png_size(out)
    assert 300 < w < 2000 and 200 < h < 1500
    assert only_file(tmp_path) == f"{value}.png"


def test_leap_heatmap_errors(exp, tmp_path):
    with pytest.raises(ValueError, match="shares"):
        leap_heatmap_png(exp.leap(), tmp_path / "x.png", value="share")
    empty = LeapTable(visual_layers=[], text_layers=[], counts=[], mean_similarity=[])
    with pytest.raises(ValueError, match="empty"):
        leap_heatmap_png(empty, tmp_path / "x.png")


def test_leap_heatmap_with_nan_cells(tmp_path):
    table = LeapTable([0, 8], [0, 4, 8], [[3, 0, 1], [0, 0, 4]], [[0.4, float("nan"), 0.3]] * 2)
    assert png_size(leap_heatmap_png(table, tmp_path / "n.png", value="mean_similarity"))


def test_layer_curve(tmp_path):
    curves = {"LatentLens": {0: 72.0, 8: 80.0, 16: 77.5}, "LogitLens": {0: 10, 16: 31}}
    w, h = png_size(layer_curve_png(curves, tmp_path / "c.png", title="% interpretable"))
    assert 400 < w < 1200 and 300 < h < 900
    with pytest.raises(ValueError, match="no curves"):
        layer_curve_png({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="LogitLens"):
        layer_curve_png({"LogitLens": {}}, tmp_path / "x.png")


def test_no_pyplot_backend_change(exp, tmp_path):
    import matplotlib

    before = matplotlib.get_backend()
    patch_words_png(exp, tmp_path / "w.png")
    assert matplotlib.get_backend() == before
