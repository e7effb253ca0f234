"""Explanations under interventions (``fwd_hooks``) and ``Explanation.diff`` on the tiny VLM."""

import json

import pytest
import torch

from tiny_models import random_image, random_sentences
from tl_latentlens.bank import build_bank
from tl_latentlens.capture import capture_image
from tl_latentlens.hooks import UnknownHookError
from tl_latentlens.lens import Explanation, LatentLens
from tl_latentlens.lens.diff import ExplanationDiff, rank_biased_overlap

pytestmark = pytest.mark.usefixtures("one_thread")

HOOKS = ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.2.hook_resid_post"]
PROMPT = "the <image> the cat sits"


@pytest.fixture(scope="module")
def lens(tiny_vlm, tmp_path_factory):
    out = tmp_path_factory.mktemp("interventions") / "bank"
    bank = build_bank(
        tiny_vlm, random_sentences(120), out, hooks=HOOKS, max_per_token=None, progress=False
    )
    return LatentLens(tiny_vlm, bank)


def _at_visual(tiny_vlm, fn):
    """A hook applying ``fn`` to the visual positions only."""
    positions = tiny_vlm.prepare(random_image(3), PROMPT).layout.positions

    def hook(act, hook):
        out = act.clone()
        out[:, positions] = fn(act[:, positions])
        return out

    return hook


def noop(act, hook):
    return act


def test_noop_hook_gives_full_overlap_and_is_recorded(lens):
    img = random_image(3)
    plain = lens.explain(img, PROMPT, k=4)
    hooked = lens.explain(img, PROMPT, k=4, fwd_hooks=[("blocks.1.hook_resid_pre", noop)])
    assert plain.interventions == []
    assert hooked.interventions == [
        {"key": "blocks.1.hook_resid_pre", "hook": "blocks.1.hook_resid_pre", "fn": "noop",
         "module": noop.__module__}
    ]  # fmt: skip
    diff = plain.diff(hooked)
    assert isinstance(diff, ExplanationDiff)
    assert len(diff.patches) == len(HOOKS) * plain.n_visual
    assert all(p.overlap == 1.0 and p.rbo == pytest.approx(1.0) for p in diff.patches)
    assert all(p.jaccard == 1.0 and p.entered == () == p.left for p in diff.patches)
    assert max(abs(p.similarity_change) for p in diff.patches) < 1e-6
    assert set(diff.summary()["overlap"]) == {1.0}


def test_negating_visual_tokens_entering_block_1(lens, tiny_vlm):
    img = random_image(3)
    neg = _at_visual(tiny_vlm, lambda x: -x)
    # residuals: layer 0 unchanged, layer 1 exactly negated, later layers changed
    plain = capture_image(tiny_vlm, img, PROMPT, HOOKS)
    for key in ("blocks.1.hook_resid_pre", 1, "blocks.0.hook_resid_post"):
        acts = capture_image(tiny_vlm, img, PROMPT, HOOKS, fwd_hooks=[(key, neg)])
        r0, r1, r3 = (acts.residuals[h] for h in HOOKS)
        assert torch.equal(r0, plain.residuals[HOOKS[0]])
        torch.testing.assert_close(r1, -plain.residuals[HOOKS[1]], rtol=0, atol=1e-6)
        assert (r3 - plain.residuals[HOOKS[2]]).abs().max() > 1e-2
    # neighbours: layer 0 identical, layers 1 and 3 moved
    before = lens.explain(img, PROMPT, k=5)
    after = lens.explain(img, PROMPT, k=5, fwd_hooks=[(1, neg)])
    assert after.interventions[0]["hook"] == "blocks.0.hook_resid_post"
    assert after.interventions[0]["key"] == "1"
    for p, q in zip(before.at(HOOKS[0]), after.at(HOOKS[0])):
        assert p.latent == q.latent
    overlap = before.diff(after).mean_overlap()
    assert overlap[HOOKS[0]] == 1.0
    assert overlap[HOOKS[1]] < 0.5 and overlap[HOOKS[2]] < 1.0
    summary = before.diff(after).summary()
    assert list(summary["layer"]) == [0, 1, 3]
    assert summary.loc[1, "top1_changed"] > 0.5


def test_interventions_round_trip_through_save_and_load(lens, tiny_vlm, tmp_path):
    img = random_image(3)
    neg = _at_visual(tiny_vlm, lambda x: -x)
    result = lens.explain(img, PROMPT, k=3, fwd_hooks=[("blocks.1.hook_resid_pre", neg)])
    path = result.save(tmp_path / "r.json")
    assert json.loads(path.read_text())["interventions"][0]["fn"].endswith("hook")
    back = Explanation.load(path)
    assert back.interventions == result.interventions
    assert back.patches == result.patches
    # a file written before interventions existed loads as a plain run
    d = json.loads(path.read_text())
    del d["interventions"]
    (tmp_path / "old.json").write_text(json.dumps(d))
    assert Explanation.load(tmp_path / "old.json").interventions == []


def test_diff_tables_and_page(lens, tiny_vlm, tmp_path):
    img = random_image(3)
    before = lens.explain(img, PROMPT, k=5)
    after = lens.explain(img, PROMPT, k=5, fwd_hooks=[(1, _at_visual(tiny_vlm, lambda x: -x))])
    diff = before.diff(after)
    df = diff.to_dataframe()
    assert len(df) == len(diff.patches)
    assert {"overlap", "rbo", "jaccard", "similarity_change", "entered", "left"} <= set(df)
    page = diff.to_html(tmp_path / "diff.html")
    assert (tmp_path / "diff.html").read_text() == page
    assert "<script" not in page and "http" not in page  # offline, no code
    assert page.count('class="ll-grid"') == len(HOOKS)
    changed = next(p for p in diff.at(HOOKS[1]) if p.overlap < 1)
    assert f"before: {', '.join(changed.before)}" in page.replace("&#x27;", "'")


def test_diff_errors(lens):
    a = lens.explain(random_image(3), PROMPT, k=2, hooks=[HOOKS[0]])
    b = lens.explain(random_image(3), PROMPT, k=2, hooks=[HOOKS[2]])
    with pytest.raises(ValueError, match="share no"):
        a.diff(b)


def test_explain_many_under_hooks_equals_explain(lens, tiny_vlm, tmp_path):
    neg = _at_visual(tiny_vlm, lambda x: -x)
    imgs = [random_image(3), random_image(3)]
    many = lens.explain_many(imgs, PROMPT, k=3, fwd_hooks=[(1, neg)], progress=False)
    one = lens.explain(imgs[0], PROMPT, k=3, fwd_hooks=[(1, neg)])
    for got in many:
        assert [(p.hook, p.index) for p in got.patches] == [(p.hook, p.index) for p in one.patches]
        for p, q in zip(got.patches, one.patches):
            assert [(n.sentence_id, n.position) for n in p.latent] == [
                (n.sentence_id, n.position) for n in q.latent
            ]
    assert many[0].interventions == one.interventions
    with pytest.raises(ValueError, match="cache_dir"):
        lens.explain_many(imgs, PROMPT, fwd_hooks=[(1, neg)], cache_dir=tmp_path, progress=False)


def test_bad_fwd_hooks(lens):
    img = random_image(3)
    with pytest.raises(UnknownHookError, match="hook_nonsense"):
        lens.explain(img, PROMPT, fwd_hooks=[("blocks.1.hook_nonsense", noop)])
    with pytest.raises(ValueError, match="pairs"):
        lens.explain(img, PROMPT, fwd_hooks=[("blocks.1.hook_resid_pre", "not a function")])
    with pytest.raises(UnknownHookError):
        lens.explain(img, PROMPT, fwd_hooks=[(99, noop)])


def test_a_hook_on_the_embedding_sees_the_visual_tokens(tiny_vlm):
    img = random_image(3)
    seen = {}

    def look(act, hook):
        seen["x"] = act.detach().clone()

    acts = capture_image(tiny_vlm, img, PROMPT, HOOKS, fwd_hooks=[("embed.hook_out", look)])
    pos = acts.layout.positions
    assert torch.equal(seen["x"][0, pos], acts.residuals[HOOKS[0]])


def test_rank_biased_overlap():
    assert rank_biased_overlap("abcde", "abcde") == pytest.approx(1.0)
    assert rank_biased_overlap("abc", "xyz") == 0.0
    swapped = rank_biased_overlap("abcde", "bacde")
    tail = rank_biased_overlap("abcde", "abced")
    assert 0 < swapped < tail < 1  # a change at the top costs more than one at the bottom


def test_report_header_names_the_intervention(lens, tiny_vlm):
    img = random_image(3)
    plain = lens.explain(img, PROMPT, k=2).to_html()
    hooked = lens.explain(img, PROMPT, k=2, fwd_hooks=[("blocks.1.hook_resid_pre", noop)])
    page = hooked.to_html()
    assert "Interventions" not in plain
    assert (
        "<dt>Interventions</dt><dd><code>noop</code> at <code>blocks.1.hook_resid_pre</code>"
        in page
    )
