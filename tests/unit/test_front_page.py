"""The demo's front page: readable headers, ranges, chance beside the numbers, timings in
words, relative links only, everything escaped (fake data, no model)."""

import re
from pathlib import Path

import pandas as pd
import pytest

from tl_latentlens.render.front_page import (
    AbsoluteLinkError,
    FrontPage,
    ShowcaseEntry,
    format_duration,
    front_page_html,
    timings_in_words,
)

ROWS = (
    {"layer": 0, "n_patches": 100, "latent_top5": 15.0, "latent_pass1": 4.0, "latent_errors": 0,
     "latent_top5_lo": 9.3, "latent_top5_hi": 23.3, "latent_top5_img_lo": 12.2,
     "latent_top5_img_hi": 17.9, "logit_top5": 2.5, "logit_pass1": 0.0, "logit_errors": 3,
     "embedding_top5": float("nan"), "latent_concrete": 11.0, "latent_abstract": 3.0},
    {"layer": 8, "n_patches": 100, "latent_top5": 31.0, "latent_pass1": 12.0,
     "latent_top5_lo": 22.8, "latent_top5_hi": 40.6, "logit_top5": 6.0, "embedding_top5": 1.0},
    {"layer": "text control", "n_patches": 50, "latent_top5": 64.0},
)  # fmt: skip
CHANCE = {
    "words": ["animal", "works"],
    "strict": 46.0,
    "per_layer": {"0": 46.0, "8": 44.0},
    "shuffled": {"latent": {"0": 0.4, "8": 0.23}},
    "n": 1000,
    "text_control": {"0": 7.5, "8": 9.0},
}


def page(**kw):
    base = dict(
        showcase=(
            ShowcaseEntry("cat <b>&", "cat <b>.html", "cat_patches.png", "cat_thumb.jpg"),
            ShowcaseEntry("dog", "sub/dog.html", "sub/dog_patches.png"),
        ),
        table=ROWS,
        chance=CHANCE,
        chance_text="Chance level: the same 2 words <x>.",
        hubness=(
            {"layer": 0, "slots": 100, "distinct": 20, "top5_share": 84.0, "hubs": "cup×64, <s>×7"},
        ),  # fmt: skip
        timings={"model_load_s": 3.6, "bank_s": 654.0, "explain_s": 6.5, "total_s": 700.0},
        bank="default-bank: 46,392 contexts per layer, 10 layers",
        notes=("bank forward passes: float32",),
        leap="leap.png",
    )
    return front_page_html(FrontPage(**{**base, **kw}))


def text_of(html: str) -> str:
    return re.sub(r"<[^>]+>", " ", re.sub(r"<style>.*?</style>", "", html, flags=re.S))


def test_headers_are_readable_and_numbers_are_percentages():
    html = page()
    heads = re.findall(r"<th>([^<]*)</th>", html)
    assert "LatentLens top-5 (%)" in heads and "LogitLens top-5 (%)" in heads
    assert "EmbeddingLens top-5 (%)" in heads and "Patches judged" in heads
    text = text_of(html)
    for raw in ("latent_top5", "_lo", "_img", "pass1", "model_load_s", "total_s", "n_patches"):
        assert raw not in text, raw
    assert "12-18 %" in text  # the image-resampled interval, as a range
    assert "22.8-40.6" not in text and "23-41 %" in text  # Wilson where no image interval
    assert "top-1 4 %" in text and "3 judge errors" in text
    assert "–" in text  # a missing (NaN) rate is a dash, not "nan"
    assert "nan" not in text.lower().replace("nanosecond", "")


def test_chance_and_controls_beside_the_numbers():
    html = page()
    heads = re.findall(r"<th>([^<]*)</th>", html)
    assert "Chance: the same words for every patch (%)" in heads
    assert "Chance: LatentLens vs shuffled labels (%)" in heads
    assert "Text control (%)" in heads  # a control added later shows as it comes
    row8 = re.search(r"<tr><th>8</th>(.*?)</tr>", html).group(1)
    assert re.findall(r'<td class="ctl">([^<]*)</td>', row8) == ["44", "0.2", "9"]
    control = re.search(r"<tr class=control><th>text control</th>(.*?)</tr>", html).group(1)
    assert "<b>64</b>" in control
    assert "Chance level" in html
    assert "Chance" not in text_of(page(chance=None, chance_text=""))


def test_timings_in_words():
    assert format_duration(3.62) == "3.6 s" and format_duration(654) == "10.9 min"
    assert format_duration(5400) == "1.5 h"
    words = timings_in_words({"model_load_s": 3.6, "bank_s": 654.0, "explain_s": 6.5,
                              "total_s": 700.0})  # fmt: skip
    assert words == "model 3.6 s, bank 10.9 min, explanations 6.5 s; total 11.7 min"
    assert "model 3.6 s, bank 10.9 min" in text_of(page())


def test_links_relative_and_escaped():
    html = page()
    links = re.findall(r'(?:href|src)="([^"]*)"', html)
    assert links and all(not re.match(r"^([a-z]+:|/|\\)", x) for x in links)
    assert "cat%20%3Cb%3E.html" in links and "sub/dog_patches.png" in links
    assert "cat_thumb.jpg" in links and "leap.png" in links
    assert "cat &lt;b&gt;&amp;" in html and "<b>&" not in html
    assert "&lt;x&gt;" in html and "&lt;s&gt;×7" in html
    assert "<script" not in html
    for bad in ("/home/me/cat.html", "file:///tmp/x.html", "C:\\demo\\x.html", "https://x/y"):
        with pytest.raises(AbsoluteLinkError, match="relative"):
            page(showcase=(ShowcaseEntry("x", bad),))
    with pytest.raises(ValueError):
        page(leap="/abs/leap.png")


def test_demo_index_names_no_machine_path(tmp_path):
    from tl_latentlens.apps.demo import _write_index

    class Bank:
        root = tmp_path / "cache" / "banks" / "default-bank"
        hooks = ("blocks.0.hook_resid_pre", "blocks.8.hook_resid_pre")

        def n_entries(self) -> int:
            return 46392

    out = tmp_path / "demo"
    out.mkdir()
    for name in ("cat.html", "cat_patches.png", "cat_thumb.jpg", "leap.png"):
        (out / name).write_bytes(b"x")
    path = _write_index(
        out, [("cat", out / "cat.html", out / "cat_patches.png")], out / "leap.png",
        pd.DataFrame(list(ROWS[:2])), {"model_load_s": 3.6, "bank_s": 654.0}, Bank(),
        None, CHANCE, {"bank_forward_dtype": "float32", "choice": None, "reason": None},
    )  # fmt: skip
    html = path.read_text(encoding="utf-8")
    assert path == out / "index.html"
    assert str(tmp_path) not in html and "/cache/" not in html
    assert set(re.findall(r'(?:href|src)="([^"]*)"', html)) == {
        "cat.html", "cat_patches.png", "cat_thumb.jpg", "leap.png"
    }  # fmt: skip
    assert "46,392 contexts per layer, 2 layers" in html and "default-bank" in html
    assert "model 3.6 s, bank 10.9 min" in html and "LatentLens top-5 (%)" in html
    assert Path(out / "index.html").stat().st_size == len(html.encode("utf-8"))
