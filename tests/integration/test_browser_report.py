"""The explorable report (image + patch grid, layer slider, lens panel, leap heatmap) in a real
headless Chromium: real mouse and key events, the DOM read back, a screenshot, 1280 px wide.

Set ``TL_LATENTLENS_ARTIFACTS=<dir>`` to keep the screenshots; the test prints where they are.
"""

import io
import json

import pytest

from fixtures.explanations import sample_explanation
from tl_latentlens.render._circuitsvis import display_tokens
from tl_latentlens.render._markup import fmt_layer
from tl_latentlens.render.html import explanation_html

pytestmark = pytest.mark.browser

#: Given out of layer order on purpose: the slider must run 0, 2, 4.
HOOKS = ("blocks.3.hook_resid_post", "blocks.0.hook_resid_pre", "blocks.2.hook_resid_pre")


STATE = """(() => { const r = document.querySelector('.ll-root'); return {
  layer: r.dataset.llLayer, patch: +r.dataset.llPatch, locked: r.dataset.llLocked === '1',
  slider: document.querySelector('.ll-x-slider').value,
  words: [...document.querySelectorAll('.ll-x-cell')].map(c => [+c.dataset.p, c.textContent]),
  marked: [...document.querySelectorAll('.ll-x-cell.ll-x-in')].map(c => +c.dataset.p),
  selected: [...document.querySelectorAll('.ll-x-cell.ll-x-sel')].map(c => +c.dataset.p),
  lenses: Object.fromEntries([...document.querySelectorAll('.ll-x-panel [data-lens]')].map(b =>
    [b.dataset.lens, [...b.querySelectorAll('li')].map(li => ({
      token: (c => c.classList.contains('ll-word') ? JSON.parse(c.title) : c.textContent)(
        li.querySelector('.ll-tok')),
      shown: li.querySelector('.ll-tok').textContent,
      sentence: (li.querySelector('.ll-x-sent') || {}).textContent,
      mark: ((li.querySelector('.ll-x-sent mark') || {}).textContent)}))])),
  current: [...document.querySelectorAll('.ll-x-table tr.ll-x-cur th')].map(t => t.textContent),
  tableLayers: [...document.querySelectorAll('.ll-x-table tbody th')].map(t => t.textContent),
}; })()"""


def cell(exp, index):
    """The ``data-p`` of visual token ``index`` (patches are listed by ascending index)."""
    return sorted({p.index for p in exp.patches}).index(index)


def check_panel(state, exp, hook, index):
    """The lens panel shows visual token ``index`` at ``hook``: every lens's top-k."""
    p = exp.patch(hook, index)
    assert state["patch"] == index
    latent = state["lenses"]["LatentLens"]
    assert [x["token"] for x in latent] == [n.token for n in p.latent]
    # a sub-word neighbour is shown inside its whole word, the matched piece marked
    assert [x["shown"] for x in latent] == [n.word if n.is_subword else n.token for n in p.latent]
    assert [x["sentence"] for x in latent] == ["".join(display_tokens(n)) for n in p.latent]
    assert [x["mark"] for x in latent] == [display_tokens(n)[n.position] for n in p.latent]
    assert [x["token"] for x in state["lenses"]["LogitLens"]] == [c.token for c in p.logit]
    assert [x["token"] for x in state["lenses"]["EmbeddingLens"]] == [c.token for c in p.embedding]


def overlay(exp, hook):
    return {cell(exp, p.index): p.top_word for p in exp.at(hook)}


def nonblank(png: bytes) -> None:
    from PIL import Image, ImageStat

    img = Image.open(io.BytesIO(png)).convert("RGB")
    assert img.width >= 1000 and img.height >= 600
    assert max(ImageStat.Stat(img).stddev) > 20  # not one flat colour
    assert len(img.getcolors(1 << 20) or range(1 << 20)) > 50


def test_explore_hover_lock_arrows_slider_heatmap(browser, artifacts, tmp_path, capsys):
    exp = sample_explanation(rows=3, cols=4, k=3, hooks=HOOKS)
    page = tmp_path / "report.html"
    explanation_html(exp, page)
    session = browser.open_page(page.as_uri())
    browser.wait_until(session, "document.querySelector('.ll-root').dataset.llExplore === 'ready'")
    ordered = ["blocks.0.hook_resid_pre", "blocks.2.hook_resid_pre", "blocks.3.hook_resid_post"]

    s = browser.evaluate(session, STATE)
    assert s["layer"] == "0" and s["tableLayers"] == ["0", "2", "4"] and s["current"] == ["0"]
    assert dict(s["words"]) == overlay(exp, ordered[0])

    # hover shows the patch's words at the current layer
    browser.hover(session, f'.ll-x-cell[data-p="{cell(exp, 5)}"]')
    s = browser.evaluate(session, STATE)
    assert not s["locked"] and s["selected"] == [cell(exp, 5)]
    check_panel(s, exp, ordered[0], 5)
    browser.hover(session, f'.ll-x-cell[data-p="{cell(exp, 2)}"]')
    check_panel(browser.evaluate(session, STATE), exp, ordered[0], 2)

    # click locks: hovering elsewhere changes nothing
    browser.click(session, f'.ll-x-cell[data-p="{cell(exp, 5)}"]')
    browser.hover(session, f'.ll-x-cell[data-p="{cell(exp, 0)}"]')
    s = browser.evaluate(session, STATE)
    assert s["locked"] and s["patch"] == 5
    check_panel(s, exp, ordered[0], 5)

    # arrows move the lock: 5 is row 1, col 1 of a 3 x 4 grid
    browser.key(session, "ArrowRight")
    assert browser.evaluate(session, STATE)["patch"] == 6
    browser.key(session, "ArrowDown")
    s = browser.evaluate(session, STATE)
    assert s["patch"] == 10 and s["locked"] and s["selected"] == [cell(exp, 10)]
    check_panel(s, exp, ordered[0], 10)
    browser.key(session, "ArrowDown")  # the last row: stays
    assert browser.evaluate(session, STATE)["patch"] == 10

    # the slider (focused, moved with its own arrow key) changes the layer of words and table
    browser.evaluate(session, "document.querySelector('.ll-x-slider').focus()")
    browser.key(session, "ArrowRight")
    s = browser.evaluate(session, STATE)
    assert s["slider"] == "1" and s["layer"] == "2" and s["current"] == ["2"]
    assert dict(s["words"]) == overlay(exp, ordered[1])
    assert s["patch"] == 10 and s["locked"]  # the lock survives a layer change
    check_panel(s, exp, ordered[1], 10)

    # Escape unlocks; a click locks and a second click on the same patch unlocks
    browser.evaluate(session, "document.activeElement.blur()")
    browser.key(session, "Escape")
    assert not browser.evaluate(session, STATE)["locked"]
    browser.click(session, f'.ll-x-cell[data-p="{cell(exp, 3)}"]')
    assert browser.evaluate(session, STATE)["locked"]
    browser.click(session, f'.ll-x-cell[data-p="{cell(exp, 3)}"]')
    assert not browser.evaluate(session, STATE)["locked"]

    # a table row picks its layer
    browser.click(session, '.ll-x-table tr[data-l="2"]')
    s = browser.evaluate(session, STATE)
    assert s["layer"] == "4" and dict(s["words"]) == overlay(exp, ordered[2])

    # a heatmap cell selects its best-matching patch at its visual layer
    hook = ordered[1]
    top = {p.index: p.latent[0] for p in exp.at(hook)}
    text = max({fmt_layer(n.layer) for n in top.values()})
    members = {i for i, n in top.items() if fmt_layer(n.layer) == text}
    best = max(members, key=lambda i: top[i].similarity)
    browser.click(session, f'.ll-x-leap button[data-l="1"][data-t="{text}"]')
    s = browser.evaluate(session, STATE)
    assert s["layer"] == "2" and s["locked"] and s["patch"] == best
    assert sorted(s["marked"]) == sorted(cell(exp, i) for i in members)
    check_panel(s, exp, hook, best)
    share = browser.evaluate(
        session,
        f'document.querySelector(\'.ll-x-leap button[data-l="1"][data-t="{text}"]\').textContent',
    )
    assert share == f"{100 * len(members) / len(top):.0f}"

    # keyboard only: a focused patch is shown, Enter locks it, arrows move lock and focus,
    # Space unlocks; every patch is in the Tab order
    browser.evaluate(session, "document.activeElement && document.activeElement.blur()")
    browser.key(session, "Escape")  # unlock what the heatmap locked
    assert browser.evaluate(
        session, "[...document.querySelectorAll('.ll-x-cell')].every(c => c.tabIndex === 0)"
    )
    browser.evaluate(
        session, f"document.querySelector('.ll-x-cell[data-p=\"{cell(exp, 7)}\"]').focus()"
    )
    s = browser.evaluate(session, STATE)
    assert not s["locked"] and s["patch"] == 7
    browser.key(session, "Enter")
    s = browser.evaluate(session, STATE)
    assert s["locked"] and s["patch"] == 7
    browser.key(session, "ArrowLeft")
    assert browser.evaluate(session, STATE)["patch"] == 6
    assert browser.evaluate(session, "document.activeElement.dataset.p") == str(cell(exp, 6))
    browser.key(session, " ")
    assert not browser.evaluate(session, STATE)["locked"]

    shot = browser.screenshot(session, artifacts / "report_explore.png")
    nonblank(shot.read_bytes())
    browser.set_width(session, 1280)
    assert browser.evaluate(session, "document.documentElement.scrollWidth") <= 1280
    shot = browser.screenshot(session, artifacts / "report_explore_1280.png")
    nonblank(shot.read_bytes())
    with capsys.disabled():
        print(f"\n[browser] report screenshots: {shot.parent}/report_explore*.png")
    assert browser.problems() == []
    assert [u for u in browser.requests() if not u.startswith(("file:", "data:"))] == []


def test_dense_grid_and_two_images_fit_1280(browser, artifacts, tmp_path):
    """24 x 24 patches per image, two images, no picture: the grid still draws, arrows stay in
    one image, and nothing scrolls sideways at 1280 px."""
    exp = sample_explanation(rows=24, cols=24, k=5, image=False, n_images=2, cell=8)
    page = tmp_path / "dense.html"
    explanation_html(exp, page, max_patches=4)
    before = len(browser.events)
    session = browser.open_page(page.as_uri())
    browser.set_width(session, 1280)
    browser.wait_until(session, "document.querySelector('.ll-root').dataset.llExplore === 'ready'")
    assert browser.evaluate(session, "document.querySelectorAll('.ll-x-cell').length") == 2 * 576
    last_of_first = 575  # image 0, row 23, col 23
    browser.click(session, f'.ll-x-cell[data-p="{cell(exp, last_of_first)}"]')
    browser.key(session, "ArrowRight")  # the grid's edge: not into the next image
    browser.key(session, "ArrowDown")
    s = browser.evaluate(session, STATE)
    assert s["locked"] and s["patch"] == last_of_first
    browser.key(session, "ArrowLeft")
    assert browser.evaluate(session, STATE)["patch"] == last_of_first - 1
    assert browser.evaluate(session, "document.documentElement.scrollWidth") <= 1280
    browser.screenshot(session, artifacts / "report_dense_1280.png")
    browser.events[:before] = []
    assert browser.problems() == []
    assert json.loads(json.dumps(s["lenses"]))["LatentLens"]  # the panel shows neighbours
