"""The workflow pages (SAE features on an image, an intervention's diff, attention to patches)
in a real headless Chromium: they load offline, their circuitsvis views mount, nothing fails in
the console and nothing scrolls sideways at 1280 px.

Set ``TL_LATENTLENS_ARTIFACTS=<dir>`` to keep the screenshots; the test prints where they are.
"""

import os
from pathlib import Path

import pytest
import torch

from tiny_models import WORDS, random_image
from tl_latentlens.bank import build_bank
from tl_latentlens.lens import LatentLens, fit_sae

pytestmark = pytest.mark.browser

HOOKS = ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.2.hook_resid_post"]
PROMPT = "the <image> the cat sits"


#: JS that is true once a page's circuitsvis view has mounted.
MOUNTED = {
    "attention.html": (
        "(() => { const s = [...document.scripts].map(x => x.textContent).join('\\n');"
        ' const ids = [...s.matchAll(/CircuitsVis\\.render\\("([^"]+)"/g)].map(x => x[1]);'
        " return ids.length > 0 && ids.every(id => { const e = document.getElementById(id);"
        " return e && e.children.length > 0; }); })()"
    ),
    "sae.html": "document.querySelector('[data-ll-ctm=\"1\"]') !== null",
}


@pytest.fixture(scope="module")
def pages(tiny_vlm, tmp_path_factory):
    """The three pages of one image on the tiny model."""
    out = Path(os.environ.get("TL_LATENTLENS_ARTIFACTS") or tmp_path_factory.mktemp("pages"))
    out.mkdir(parents=True, exist_ok=True)
    corpus = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(6)) for i in range(80)]
    bank = build_bank(tiny_vlm, corpus, out / "bank", hooks=HOOKS, max_per_token=None,
                      progress=False, overwrite=True)  # fmt: skip
    lens = LatentLens(tiny_vlm, bank)
    image = random_image(3)
    positions = tiny_vlm.prepare(image, PROMPT).layout.positions

    def negate_visual(resid, hook):
        out = resid.clone()
        out[:, positions] = -resid[:, positions]
        return out

    plain = lens.explain(image, PROMPT, k=3, attention=[1])
    ablated = lens.explain(image, PROMPT, k=3, fwd_hooks=[(1, negate_visual)])
    plain.diff(ablated).to_html(out / "diff.html")
    plain.attention.to_html(out / "attention.html", layer=1, explanation=plain)
    torch.manual_seed(0)
    vectors = torch.from_numpy(bank.decoded(HOOKS[1]))
    sae = fit_sae(vectors, 32, HOOKS[1], steps=30)
    features = lens.sae_on_image(sae, image, top=3, k=2, prompt=PROMPT)
    features.to_html(out / "sae.html", feature=features.features[0])
    return out


@pytest.mark.parametrize("name", ["diff.html", "attention.html", "sae.html"])
def test_workflow_page_loads_offline(browser, pages, name, capsys):
    path = pages / name
    session = browser.open_page(path.as_uri())
    browser.set_width(session, 1280)
    browser.wait_until(session, "document.readyState === 'complete'")
    if name in MOUNTED:  # the circuitsvis view rendered into its element
        browser.wait_until(session, MOUNTED[name], timeout=60)
    text = browser.evaluate(session, "document.body.innerText")
    assert len(text) > 100, text
    assert browser.evaluate(session, "document.documentElement.scrollWidth") <= 1280
    shot = browser.screenshot(session, pages / f"{name}.png")
    assert shot.stat().st_size > 5_000
    assert not browser.problems(), browser.problems()
    assert not [u for u in browser.requests() if u.startswith("http")], browser.requests()
    with capsys.disabled():
        print(f"\n[browser] {name}: {shot}")
