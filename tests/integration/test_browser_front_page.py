"""The demo's front page in a real headless Chromium at 1280 px: the pictures load, nothing
scrolls sideways, the screenshot is not blank.

Set ``TL_LATENTLENS_ARTIFACTS=<dir>`` to keep the screenshot; the test prints where it is.
"""

import io
import os
from pathlib import Path

import pytest

from tl_latentlens.render.front_page import FrontPage, ShowcaseEntry, front_page_html

pytestmark = pytest.mark.browser

LENSES = ("latent", "logit", "embedding")


def picture(path: Path, size: tuple[int, int], seed: int) -> str:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", size, (30 + 40 * seed % 200, 120, 200 - 30 * seed % 150))
    draw = ImageDraw.Draw(img)
    for x in range(0, size[0], 64):
        draw.line([(x, 0), (x, size[1])], fill="white", width=2)
        draw.text((x + 6, size[1] // 2), f"w{seed}{x}", fill="black")
    img.save(path)
    return path.name


def study_rows() -> list[dict]:
    rows = []
    for i, layer in enumerate((0, 1, 2, 4, 8, 15, 22, 28, 29, 30)):
        row = {"layer": layer, "n_patches": 100}
        for j, lens in enumerate(LENSES):
            v = max(0.0, 30.0 - 3 * abs(i - 5) - 9 * j)
            row |= {f"{lens}_top5": v, f"{lens}_pass1": v / 3, f"{lens}_errors": 0,
                    f"{lens}_top5_img_lo": max(0, v - 6), f"{lens}_top5_img_hi": v + 7,
                    f"{lens}_concrete": v / 2, f"{lens}_abstract": v / 4, f"{lens}_global": 1.0}  # fmt: skip
        rows.append(row)
    rows.append({"layer": "text control", "n_patches": 100, "latent_top5": 71.0})
    return rows


def test_front_page_at_1280(browser, tmp_path, capsys):
    names = ["chelsea", "coffee", "astronaut", "composite-000", "composite-001", "voc-photo"]
    shows = tuple(
        ShowcaseEntry(
            name, f"{name}.html",
            picture(tmp_path / f"{name}_patches.png", (640, 462 + 40 * (i % 3)), i),
            picture(tmp_path / f"{name}_thumb.jpg", (224, 224), i + 7) if i % 2 == 0 else None,
        )
        for i, name in enumerate(names)
    )  # fmt: skip
    chance = {"words": ["animal", "works", "fruit"], "strict": 46.0,
              "per_layer": {str(r["layer"]): 46.0 for r in study_rows()[:-1]},
              "shuffled": {"latent": {str(r["layer"]): 0.3 for r in study_rows()[:-1]}}}  # fmt: skip
    hubs = tuple(
        {"layer": layer, "slots": 100, "distinct": 20 + layer, "max_k_occurrence": 64,
         "top5_share": 84.0, "hubs": "cup×64, curettage×7, bit×6, buttercup×4, bits×3"}
        for layer in (0, 1, 2, 4, 8, 15, 22, 28, 29, 30)
    )  # fmt: skip
    page = FrontPage(
        showcase=shows, table=tuple(study_rows()), chance=chance,
        chance_text="Chance level: answering the same 3 bank words for every patch names 46 %.",
        hubness=hubs,
        timings={"model_load_s": 3.6, "bank_s": 654.0, "explain_s": 6.5, "study_s": 1.3,
                 "total_s": 665.4},
        bank="default-visual1-v2-0ced68e2-raw-12000-20: 46,392 contexts per layer, 10 layers",
        notes=("bank forward passes: float32",),
        leap=picture(tmp_path / "leap.png", (889, 675), 3),
    )  # fmt: skip
    index = tmp_path / "index.html"
    front_page_html(page, index)
    session = browser.open_page(index.as_uri())
    browser.set_width(session, 1280, 900)
    browser.wait_until(
        session, "[...document.images].every(i => i.complete && i.naturalWidth > 0)", timeout=30
    )
    assert browser.evaluate(session, "document.documentElement.scrollWidth") <= 1280
    n_images = browser.evaluate(session, "document.images.length")
    assert n_images == len(names) + 3 + 1  # words pictures, three thumbnails, the leap
    heads = browser.evaluate(
        session, "[...document.querySelectorAll('thead th')].map(t => t.innerText)"
    )
    assert "LatentLens top-5 (%)" in heads and not any("_" in h for h in heads)
    height = browser.evaluate(session, "document.documentElement.scrollHeight")
    browser.set_width(session, 1280, min(height, 6000))
    where = os.environ.get("TL_LATENTLENS_ARTIFACTS")
    out = Path(where) if where else tmp_path
    out.mkdir(parents=True, exist_ok=True)
    shot = browser.screenshot(session, out / "front_page_1280.png")
    from PIL import Image, ImageStat

    img = Image.open(io.BytesIO(shot.read_bytes())).convert("RGB")
    assert img.width == 1280 and max(ImageStat.Stat(img).stddev) > 20
    with capsys.disabled():
        print(f"\n[browser] front page screenshot: {shot}")
    assert browser.problems() == []
    assert [u for u in browser.requests() if not u.startswith(("file:", "data:"))] == []
