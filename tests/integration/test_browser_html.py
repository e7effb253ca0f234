"""The standalone explanation page in a real headless Chromium (Debian package).

Chromium is driven over the DevTools protocol on ``--remote-debugging-pipe`` (no websocket
library, no port): the test loads the page from ``file://``, waits until every circuitsvis
component has mounted, reads the rendered DOM, takes a screenshot and collects console errors,
uncaught exceptions and any network request. If ``/usr/bin/chromium`` is missing it is
installed with apt-get (root only).

Set ``TL_LATENTLENS_ARTIFACTS=<dir>`` to keep the screenshots somewhere stable; the test prints
where they are.
"""

import re

import pytest

from fixtures.explanations import sample_explanation
from tl_latentlens.render._circuitsvis import display_tokens
from tl_latentlens.render.html import explanation_html

pytestmark = pytest.mark.browser


READ_CARDS = """(() => [...document.querySelectorAll('.ll-cv[data-key]')].map(el => ({
  key: el.dataset.key,
  mounted: el.hasAttribute('data-mounted'),
  fallback: el.querySelectorAll('.ll-fallback').length,
  samples: [...el.querySelectorAll('.colored-tokens')].map(s => s.textContent),
  highlighted: [...el.querySelectorAll('.colored-tokens')].map(s =>
    [...s.querySelectorAll(':scope > span > span')]
      .filter(t => getComputedStyle(t).backgroundColor !== 'rgb(255, 255, 255)')
      .map(t => t.textContent)),
})))()"""


def norm(text: str) -> str:
    """Whitespace as circuitsvis shows it (it writes every whitespace as &nbsp;)."""
    return re.sub(r"\s", " ", text.replace("\xa0", " "))


def expected_cards(exp, hooks):
    cards = {}
    for h, hook in enumerate(hooks):
        for p in exp.at(hook):
            cards[f"h{h}p{p.index}"] = p.latent
    return cards


def test_page_renders_circuitsvis_offline(browser, artifacts, tmp_path, capsys):
    exp = sample_explanation(rows=2, cols=3, k=3)
    page = tmp_path / "explanation.html"
    explanation_html(exp, page)
    session = browser.open_page(page.as_uri())
    n_samples = sum(len(p.latent) for p in exp.patches)
    browser.wait_until(
        session, f"document.querySelectorAll('.ll-cv .colored-tokens').length === {n_samples}"
    )
    shot = browser.screenshot(session, artifacts / "explanation_page.png")
    with capsys.disabled():
        print(f"\n[browser] screenshot of the explanation page: {shot}")

    cards = browser.evaluate(session, READ_CARDS)
    want = expected_cards(exp, exp.hooks)
    assert {c["key"] for c in cards} == set(want)
    for card in cards:
        neighbours = want[card["key"]]
        assert card["mounted"] and card["fallback"] == 0, card  # circuitsvis replaced our HTML
        # The sentences exist in the DOM only through circuitsvis's ColoredTokens ...
        got = [norm(text) for text in card["samples"]]
        assert got == [norm("".join(display_tokens(n))) for n in neighbours]
        # ... with exactly the matched token highlighted ("<s>", "<image>", "a&b" survive).
        marked = [[norm(t) for t in toks] for toks in card["highlighted"]]
        assert marked == [[norm(display_tokens(n)[n.position])] for n in neighbours]

    texts = browser.evaluate(
        session,
        "[...document.querySelectorAll('.ll-grid td')].map(td => td.textContent)",
    )
    assert {"<s>", "<image>", "a&b", "</script>", "café"} <= set(texts)
    assert browser.evaluate(session, "document.title") == "LatentLens · sample/tiny-vlm <demo>"
    assert browser.problems() == []
    assert [u for u in browser.requests() if not u.startswith(("file:", "data:"))] == []


def test_large_page_mounts_cards_when_scrolled(browser, artifacts, tmp_path, capsys):
    exp = sample_explanation(rows=10, cols=10, k=5, cell=24)  # 200 cards: lazy mounting
    page = tmp_path / "large.html"
    explanation_html(exp, page)
    before = len(browser.events)
    session = browser.open_page(page.as_uri())
    browser.wait_until(session, "document.querySelectorAll('[data-mounted]').length > 0")
    first = browser.evaluate(session, "document.querySelectorAll('[data-mounted]').length")
    assert 0 < first < 200
    # Follow the overview link of the last patch of the last hook, as a user would.
    browser.evaluate(session, "[...document.querySelectorAll('.ll-grid a')].pop().click()")
    last = f"h{len(exp.hooks) - 1}p99"
    browser.wait_until(
        session,
        f"!!document.querySelector('[data-key=\"{last}\"] .colored-tokens')",
    )
    assert browser.evaluate(session, "location.hash").endswith(f"-h{len(exp.hooks) - 1}-p99")
    shot = browser.screenshot(session, artifacts / "explanation_large_scrolled.png")
    with capsys.disabled():
        print(f"\n[browser] screenshot after jumping to the last card: {shot}")
    browser.events[:before] = []
    assert browser.problems() == []
    assert [u for u in browser.requests() if not u.startswith(("file:", "data:"))] == []
