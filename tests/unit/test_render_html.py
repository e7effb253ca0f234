"""The offline HTML page: escaping, one inlined circuitsvis bundle, atomic writes, options."""

import html
import json
import re
import sys
import types
from dataclasses import replace

import pytest

from fixtures.explanations import SAMPLE_SENTENCES, sample_explanation
from tl_latentlens.bank.results import Neighbour
from tl_latentlens.render import _circuitsvis as cv
from tl_latentlens.render.html import explanation_html, show_explanation

SCRIPT = re.compile(r"<script\b([^>]*)>(.*?)</script>", re.S)


@pytest.fixture(scope="module")
def exp():
    return sample_explanation(rows=2, cols=3, k=3)


@pytest.fixture(scope="module")
def page(exp):
    return explanation_html(exp)


def split_page(page):
    """(our markup without any <script> element, {kind: script text})."""
    scripts = {}
    for attrs, body in SCRIPT.findall(page):
        kind = (
            "data" if "application/json" in attrs else ("bundle" if len(body) > 100_000 else "init")
        )
        scripts[kind] = body
    return SCRIPT.sub("", page), scripts


def test_tricky_strings_are_escaped_in_our_markup(page):
    markup, _ = split_page(page)
    for raw in ("<s>", "<image>", "</s>", "</script>", "<test>", "<demo>"):
        assert raw not in markup, raw
    for escaped in ("&lt;s&gt;", "&lt;image&gt;", "&lt;/script&gt;", "a&amp;b", "R&amp;D"):
        assert escaped in markup, escaped
    # A literal "&amp;" token must show as "&amp;", so it is written "&amp;amp;".
    assert "&amp;amp;" in markup
    assert "café" in markup and "日本" in markup and "🐱" in markup
    # Prompt, model and bank in the header are escaped too.
    assert "Describe the &lt;image&gt; &amp; name" in markup
    assert "banks/sample &amp; &lt;test&gt;.bank" in markup


def test_only_our_three_scripts_and_no_network(page):
    assert page.count("</script") == 3  # data, bundle, init: nothing inside closes them early
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, re.I)
    assert not re.search(r"<link\b", page, re.I)
    assert "unpkg.com" not in page and "sourceMappingURL" not in page


def test_bundle_inlined_once(exp, page):
    _, scripts = split_page(page)
    assert scripts["bundle"] == cv.bundle_js()
    assert page.count("var CircuitsVis=") == 1
    # Many cards, one bundle: the page is far below two bundles.
    assert len(page) < 2 * len(cv.bundle_js())
    big = explanation_html(sample_explanation(rows=6, cols=6, k=5))
    assert big.count("var CircuitsVis=") == 1


def test_circuitsvis_props_carry_escaped_tokens(exp, page):
    _, scripts = split_page(page)
    assert "<" not in scripts["data"]  # nothing in the JSON can close the script element
    data = json.loads(scripts["data"])
    assert data["component"] == "TopkSamples"
    assert len(data["cards"]) == len(exp.patches)
    p = exp.at(exp.hooks[0])[1]
    props = data["cards"]["h0p1"]
    samples, acts = props["tokens"][0][0], props["activations"][0][0]
    assert len(samples) == len(p.latent) == exp.k
    for n, toks, vals in zip(p.latent, samples, acts):
        # circuitsvis inserts tokens as HTML: they arrive escaped and unescape to the sentence.
        assert [html.unescape(t) for t in toks] == list(n.sentence_tokens)
        assert vals[n.position] == pytest.approx(n.similarity)
        assert sum(v != 0 for v in vals) == 1
    assert " &lt;image&gt;" in samples[0]
    # Labels are React text, not HTML: passed raw.
    assert props["zerothDimensionLabels"] == [f"{exp.hooks[0]} (layer 0)"]


def test_written_atomically(exp, tmp_path):
    out = tmp_path / "sub" / "page.html"
    text = explanation_html(exp, out)
    assert out.read_text(encoding="utf-8") == text
    assert [f.name for f in out.parent.iterdir()] == ["page.html"]


def test_failed_write_keeps_old_file(exp, tmp_path, monkeypatch):
    out = tmp_path / "page.html"
    out.write_text("old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("tl_latentlens._io.os.replace", boom)
    with pytest.raises(OSError, match="disk full"):
        explanation_html(exp, out)
    assert out.read_text() == "old"
    assert [f.name for f in tmp_path.iterdir()] == ["page.html"]


def test_hooks_and_max_patches(exp):
    with pytest.raises(ValueError, match=re.escape(exp.hooks[0])):
        explanation_html(exp, hooks=["blocks.9.hook_resid_post"])
    with pytest.raises(ValueError, match="max_patches"):
        explanation_html(exp, max_patches=0)
    one = explanation_html(exp, hooks=exp.hooks[1], max_patches=2)
    data = json.loads(split_page(one)[1]["data"])
    assert sorted(data["cards"]) == ["h0p0", "h0p1"]
    assert one.count('class="ll-card"') == 2
    assert "2 of 6 visual tokens (max_patches=2)" in one
    # The overview still shows every patch's top word (not linked when it has no card).
    assert one.count('<td style="background') == 6


def test_lazy_switch(exp):
    def eager(page):
        return json.loads(split_page(page)[1]["data"])["eager"]

    assert eager(explanation_html(exp, lazy=True)) == 0
    assert eager(explanation_html(exp, lazy=False)) == len(exp.patches)


def test_unspaced_tokens_and_odd_neighbours(exp):
    p = exp.patches[0]
    bare = Neighbour(
        "cat", 7, "a cat", 0, 2, ("<s>", "a", "cat"), 0.5, "blocks.1.hook_resid_pre", 1
    )
    outside = replace(bare, position=9)
    odd = replace(p, latent=(bare, outside))
    empty = replace(exp.patches[1], latent=())
    page = explanation_html(replace(exp, patches=[odd, empty] + exp.patches[2:]))
    assert cv.display_tokens(bare) == ["<s>", " a", " cat"]
    assert "&lt;s&gt; a<mark> cat</mark>" in page  # fallback text
    data = json.loads(split_page(page)[1]["data"])
    assert data["cards"]["h0p0"]["activations"][0][0] == [[0, 0, 0.5], [0, 0, 0]]
    assert "h0p1" not in data["cards"] and "No LatentLens neighbours" in page


def test_explanation_methods_delegate(exp, tmp_path):
    text = exp.to_html(tmp_path / "e.html", max_patches=1)
    assert text.count('class="ll-card"') == len(exp.hooks)


def test_show_without_ipython(exp, monkeypatch):
    monkeypatch.setitem(sys.modules, "IPython", None)
    monkeypatch.setitem(sys.modules, "IPython.display", None)
    with pytest.raises(ImportError, match="IPython"):
        show_explanation(exp)


def test_show_returns_ipython_html(exp, monkeypatch):
    class HTML:
        def __init__(self, data):
            self.data = data

    display = types.ModuleType("IPython.display")
    display.HTML = HTML
    monkeypatch.setitem(sys.modules, "IPython", types.ModuleType("IPython"))
    monkeypatch.setitem(sys.modules, "IPython.display", display)
    obj = exp.show(max_patches=1)
    assert isinstance(obj, HTML)
    assert obj.data.count("var CircuitsVis=") == 1
    assert "<html" not in obj.data and 'class="ll-root"' in obj.data


def test_script_json_cannot_close_script():
    text = cv.script_json({"t": "</script><!-- & \u2028"})
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == {"t": "</script><!-- & \u2028"}


def test_sample_sentences_are_their_tokens():
    exp = sample_explanation(rows=1, cols=1, k=1)
    n = exp.patches[0].latent[0]
    assert n.sentence_tokens[n.position] == n.token == "<s>"
    assert all(isinstance(t, tuple) for t in SAMPLE_SENTENCES)


def test_patches_outside_the_grid_are_listed_after_it(exp):
    moved = [replace(p, row=-1, col=-1) if p.index == 5 else p for p in exp.patches]
    page = explanation_html(replace(exp, patches=moved))
    markup, _ = split_page(page)
    assert markup.count("<th>other</th>") == len(exp.hooks)
    assert markup.count('class="ll-extra"') == len(exp.hooks)
    assert markup.count('class="ll-card"') == len(exp.patches)  # still gets its card
