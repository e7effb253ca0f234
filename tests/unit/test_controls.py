"""Positive controls (text, visual) on the tiny VLM, their failure on a broken bank, and the
whole-word view of sub-word neighbours."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tiny_models import random_sentences
from tl_latentlens.bank import build_bank
from tl_latentlens.bank.results import Neighbour, word_span
from tl_latentlens.capture import capture_text
from tl_latentlens.evaluate.controls import (
    ControlResult,
    ControlRow,
    drop_own_sentence,
    format_controls,
    is_content_word,
    text_control,
    visual_control,
)
from tl_latentlens.evaluate.report import format_table
from tl_latentlens.lens import LatentLens

pytestmark = pytest.mark.usefixtures("one_thread")

HOOKS = ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.2.hook_resid_post"]
WORDS4 = ["cat", "dog", "car", "tree"]


BANK_TEXT = random_sentences(120, 0)
HELD_OUT = [s for s in random_sentences(80, 1) if s not in set(BANK_TEXT)]


@pytest.fixture(scope="module")
def bank(tiny_vlm, tmp_path_factory):
    out = tmp_path_factory.mktemp("controls") / "bank"
    return build_bank(tiny_vlm, BANK_TEXT, out, hooks=HOOKS, max_per_token=None, progress=False)


@pytest.fixture(scope="module")
def lens(tiny_vlm, bank):
    return LatentLens(tiny_vlm, bank)


@pytest.fixture
def shuffled(tiny_vlm, tmp_path):
    """A bank whose vector rows no longer line up with their entries (rows permuted)."""
    b = build_bank(tiny_vlm, BANK_TEXT, tmp_path / "b", hooks=HOOKS, max_per_token=None,
                   progress=False)  # fmt: skip
    real = b.neighbour
    perms = {h: np.random.default_rng(3).permutation(b.n_vectors(h)) for h in b.hooks}

    def neighbour(hook, row, similarity, max_contexts=8):
        return real(hook, int(perms[hook][int(row)]), similarity, max_contexts)

    b.neighbour = neighbour  # what Bank.search builds its results with
    return LatentLens(tiny_vlm, b)


# ---- the text control --------------------------------------------------------------------------
def test_text_control_passes_on_a_sound_bank(lens):
    result = text_control(lens, HELD_OUT, k=5, max_positions=80)
    assert result.kind == "text" and result.failures() == []
    assert result.layers == [0, 1, 3]
    assert {(r.lens, r.layer) for r in result.rows} == {
        (lens_, layer) for lens_ in ("latent", "logit", "embedding") for layer in (0, 1, 3)
    }
    assert result.row("latent", 0).topk >= 95.0
    assert result.row("latent", 0).pass1 >= 95.0
    assert result.row("embedding", 0).pass1 == 100.0  # the residual is the token embedding
    assert result.row("logit", 0).target == "next word"
    assert result.row("latent", 0).target == "same word"
    assert result.row("latent", 0).n == 80
    assert result.row("logit", 0).n < 80  # positions after BOS have no previous token read
    assert result.excluded == 0  # held-out text: nothing of its own sentence is in the bank
    r = result.row("latent", 1)
    assert r.lo <= r.topk <= r.hi + 1e-9 and r.group_lo <= r.lo and r.group_hi >= r.hi


def test_text_control_samples_content_words_only(lens):
    result = text_control(lens, HELD_OUT, k=3, max_positions=1000)
    targets = {c.target for c in result.cases}
    assert targets and all(is_content_word(t) for t in targets)
    assert not targets & {"the", "a", "of", "and", "with", "is"}
    assert is_content_word("Kangaroo") and not is_content_word("the") and not is_content_word(".")


def test_text_control_excludes_the_query_sentence(lens, bank, tiny_vlm):
    # sentences *in* the bank: their own contextual vectors are its exact neighbours
    result = text_control(lens, BANK_TEXT[:40], k=5, max_positions=60)
    assert result.excluded > 0
    sentence = BANK_TEXT[0]
    acts = next(iter(capture_text(tiny_vlm, [sentence], [HOOKS[2]])))
    found = bank.search(acts.residuals[HOOKS[2]][:1], hook=HOOKS[2], k=5)
    found = list(getattr(found, "neighbours", found))[0]
    assert found[0].sentence == sentence and found[0].similarity > 0.999
    kept = drop_own_sentence(found, "  " + sentence.upper() + " ", bank)  # case/space aside
    assert all(n.sentence != sentence or n.n_occurrences > 1 for n in kept)
    assert len(kept) < len(found)


def test_text_control_collapses_on_a_shuffled_bank(shuffled):
    result = text_control(shuffled, HELD_OUT, k=5, max_positions=80)
    assert result.row("latent", 0).topk < 50.0
    assert result.row("embedding", 0).topk == 100.0  # the baselines do not read the bank
    assert any("latent top-5 at layer 0" in f for f in result.failures())


def test_text_control_refuses_text_without_content_words(lens):
    with pytest.raises(ValueError, match="no content word"):
        text_control(lens, ["the of and", "a"])
    with pytest.raises(ValueError, match="k must be positive"):
        text_control(lens, HELD_OUT, k=0)


# ---- the visual control --------------------------------------------------------------------------
def test_visual_control_returns_the_injected_words_at_layer_0(lens):
    result = visual_control(lens, WORDS4, k=5)
    assert result.kind == "visual" and result.failures() == []
    for name in ("latent", "embedding"):
        row = result.row(name, 0)
        assert (row.n, row.hits1, row.pass1) == (4, 4, 100.0)
    cases = [c for c in result.cases if c.lens == "latent"]
    assert [c.answers[0] for c in cases] == WORDS4


def test_injection_writes_the_embedding_at_layer_0(lens, tiny_vlm, monkeypatch):
    # the residual the control reads at layer 0 is exactly the words' input embedding
    seen = {}
    import tl_latentlens.evaluate.controls as controls

    real = controls.capture_inputs

    def spy(vlm, inputs, hooks):
        acts = real(vlm, inputs, hooks)
        seen["x"] = acts.residuals[HOOKS[0]]
        return acts

    monkeypatch.setattr(controls, "capture_inputs", spy)
    visual_control(lens, WORDS4)
    ids = [tiny_vlm.tokenizer.convert_tokens_to_ids(w) for w in WORDS4]
    emb = tiny_vlm.embedding_matrix().detach().float()
    n_vis = seen["x"].shape[0]
    want = emb[[ids[i % 4] for i in range(n_vis)]]
    torch.testing.assert_close(seen["x"], want)


def test_visual_control_fails_on_a_shuffled_bank(shuffled):
    result = visual_control(shuffled, WORDS4)
    assert result.row("latent", 0).hits1 < 4
    assert any("latent top-1 at layer 0" in f for f in result.failures())
    assert result.row("embedding", 0).hits1 == 4


def test_visual_control_refuses_unusable_words(lens):
    with pytest.raises(ValueError, match="one-token words"):
        visual_control(lens, ["zebra"])  # not in the tiny vocabulary
    with pytest.raises(ValueError, match="at least one word"):
        visual_control(lens, [])


def test_visual_control_refuses_or_skips_words_the_bank_lacks(tiny_vlm, tmp_path):
    b = build_bank(tiny_vlm, ["the cat sits", "a dog runs"], tmp_path / "b", hooks=HOOKS[:1],
                   max_per_token=None, progress=False)  # fmt: skip
    small = LatentLens(tiny_vlm, b)
    with pytest.raises(ValueError, match="never holds"):
        visual_control(small, ["cat", "tree"])
    result = visual_control(small, ["cat", "tree", "dog"], skip_missing=True)
    assert result.extra["words"] == ["cat", "dog"] and result.failures() == []


# ---- records and tables ------------------------------------------------------------------------
def test_control_result_round_trips_and_tabulates(lens):
    result = visual_control(lens, WORDS4, k=3)
    back = ControlResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert back.rows == tuple(
        ControlRow.from_dict(json.loads(json.dumps(r.to_dict()))) for r in result.rows
    )
    assert back.failures() == result.failures() and back.k == 3
    table = result.table()
    assert list(table["layer"]) == [0, 1, 3]
    assert {"latent_top3", "latent_pass1", "latent_top3_lo", "latent_top3_img_hi"} <= set(table)


def test_format_table_puts_the_controls_above_the_visual_rows(lens):
    import pandas as pd

    text = text_control(lens, HELD_OUT, k=5, max_positions=40)
    visual = visual_control(lens, WORDS4, k=5)
    study = pd.DataFrame([{"layer": 0, "n_patches": 7, **{
        f"{x}_{s}": v for x in ("latent", "logit", "embedding")
        for s, v in (("top5", 50.0), ("pass1", 25.0), ("errors", 0))
    }}])  # fmt: skip
    lines = format_table(study, [text, visual]).splitlines()
    first = [line.split()[0] + " " + line.split()[1] for line in lines[1:6]]
    assert first == ["text 0", "text 1", "text 3", "visual 0", "0 7"]
    assert " next" in lines[1]  # the text control's LogitLens is scored on the next word
    assert "text control:" in lines[6] and "visual control:" in lines[7]
    assert "text control" in format_controls([text])


# ---- whole words of sub-word neighbours -----------------------------------------------------------
# SmolLM2's tokenizer (the embedded default's) decodes these sentences to these tokens
# (tokenizer.decode([id]) per id of vlm.tokenize_sentences).
SMOL = (
    "<|im_start|>",
    "A",
    " kangaroo",
    " met",
    " a",
    " narc",
    "ot",
    "error",
    "ism",
    " expert",
    ".",
)
SMOL_TEXT = "A kangaroo met a narcoterrorism expert."
AXOLOTL = ("<|im_start|>", "An", " ax", "ol", "ot", "l", " swim", "s", ".")


def _n(tokens, position, sentence=SMOL_TEXT):
    return Neighbour(tokens[position], 0, sentence, 0, position, tuple(tokens), 0.5, "h", 0)


def test_neighbour_word_and_marked_forms_of_a_subword():
    n = _n(SMOL, 8)
    assert (n.token, n.word, n.is_subword) == ("ism", "narcoterrorism", True)
    assert n.marked_word() == "narcoterror[ism]"
    assert n.marked_word_html() == "narcoterror<mark>ism</mark>"
    assert n.sentence[slice(*n.char_span)] == "ism"
    assert n.highlighted(skip=("<|im_start|>",)) == "A kangaroo met a narcoterror[ism] expert."
    first = _n(SMOL, 5)
    assert (first.word, first.marked_word()) == ("narcoterrorism", "[narc]oterrorism")
    assert first.highlighted(skip=("<|im_start|>",)) == "A kangaroo met a [narc]oterrorism expert."
    assert first.sentence[slice(*first.char_span)] == "narc"
    assert _n(SMOL, 6).marked_word() == "narc[ot]errorism"
    ax = _n(AXOLOTL, 4, "An axolotl swims.")
    assert (ax.word, ax.marked_word()) == ("axolotl", "axol[ot]l")
    assert _n(AXOLOTL, 7, "An axolotl swims.").marked_word() == "swim[s]"
    whole = _n(SMOL, 2)
    assert (whole.word, whole.is_subword, whole.marked_word()) == ("kangaroo", False, "[kangaroo]")
    assert _n(SMOL, 10).word == "."  # punctuation is its own word
    assert _n(SMOL, 1).word == "A"  # the special token before it is not joined


def test_word_span_on_word_level_tokens_and_html_escaping():
    toks = ("<s>", "the", "red", "car")
    assert word_span(toks, 2).word == "red"  # bare words are never joined
    assert word_span(toks, 9) is None
    n = Neighbour("y", 0, "x<y>z", 0, 2, ("<s>", " x<", "y", ">z"), 0.1, "h", 0)
    assert "<mark>y</mark>" in n.marked_word_html() and "&lt;" not in n.marked_word_html()
    odd = Neighbour(" cat", 0, "a cat", 0, 5, ("<s>",), 0.1, "h", 0)  # position off the tokens
    assert (odd.word, odd.char_span) == ("cat", None)


def test_dataframe_and_report_show_whole_words(lens, tiny_vlm):
    from tiny_models import random_image
    from tl_latentlens.render._markup import neighbour_tok

    exp = lens.explain(random_image(1), k=3, hooks=[HOOKS[0]])
    df = exp.to_dataframe()
    latent = df[df["lens"] == "latent"]
    assert list(latent["word"]) == [n.word for p in exp.patches for n in p.latent]
    assert df[df["lens"] == "logit"]["word"].isna().all()
    assert "narcoterror<mark>ism</mark>" in neighbour_tok(_n(SMOL, 8))
    assert neighbour_tok(_n(SMOL, 2)) == '<code class="ll-tok"> kangaroo</code>'


def test_demo_shows_the_controls_and_caches_them(lens, tmp_path, monkeypatch):
    """The demo's controls: on the front page above the study (labelled by kind, with their
    description) and read back on a rerun with the same lens and options instead of run again."""
    from tl_latentlens.apps import demo
    from tl_latentlens.evaluate import controls as control_runs
    from tl_latentlens.render.front_page import FrontPage, front_page_html

    calls = []
    real_text = control_runs.text_control
    monkeypatch.setattr(control_runs, "default_corpus", lambda n: [" ".join(WORDS4 * 2)] * n)

    def text(lens, sentences, **kw):
        calls.append("text")
        return real_text(lens, sentences, **kw)

    monkeypatch.setattr(control_runs, "text_control", text)
    real_visual = control_runs.visual_control
    monkeypatch.setattr(  # the tiny tokenizer's one-token words
        control_runs, "visual_control", lambda lens, **kw: real_visual(lens, words=WORDS4, **kw)
    )
    cfg = demo.DemoConfig(quick=True, k=3)
    first = demo.positive_controls(lens, cfg, tmp_path / "cache")
    again = demo.positive_controls(lens, cfg, tmp_path / "cache")
    assert calls == ["text"] and [c.to_dict() for c in again] == [c.to_dict() for c in first]
    other = demo.positive_controls(lens, demo.DemoConfig(quick=True, k=2), tmp_path / "cache")
    assert calls == ["text", "text"] and other[0].k == 2
    rows = [r for c in first for r in demo.control_rows(c)]
    assert rows[0]["layer"] == "text 0" and rows[-1]["layer"] == "visual 0"
    html = front_page_html(FrontPage(controls=tuple(rows), control_notes=(first[0].description,)))
    assert "Positive controls" in html and "text 0" in html and "visual 0" in html
    assert html.index("Positive controls") < len(html)


def test_evaluate_cli_controls(lens, tmp_path, caplog):
    """``evaluate --controls``: none runs nothing; a file of held-out sentences gives the text
    control, and the default control words a tokenizer splits are left out, not fatal."""
    from tl_latentlens.apps.evaluate import run_controls

    assert run_controls(lens, "none", k=3) == []
    held = tmp_path / "held.txt"
    held.write_text("\n".join(" ".join(WORDS4[i:] + WORDS4[:i]) for i in range(4)) + "\n")
    text, visual = run_controls(lens, str(held), k=3)
    assert text.kind == "text" and text.n_groups > 0
    assert visual.kind == "visual" and visual.row("latent", 0).n > 0


def test_the_explorer_shows_a_subword_inside_its_whole_word():
    """The report's explorer data carries ``[before, piece, after]`` for a sub-word neighbour
    (drawn as ``narcoterror<mark>ism</mark>``) and nothing for a whole-word one."""
    from tl_latentlens.render._explore import _subword

    assert _subword(_n(SMOL, 8)) == ["narcoterror", "ism", ""]
    assert _subword(_n(AXOLOTL, 4, "An axolotl swims.")) == ["axol", "ot", "l"]
    assert _subword(_n(SMOL, 2)) is None
