"""Sampling, the study loop with a fake lens, JSONL resume and re-aggregation."""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from test_evaluate_wordnet import TINY

from fixtures.wordnet_files import write_wordnet
from tl_latentlens import hooks as hk
from tl_latentlens.bank.results import Neighbour
from tl_latentlens.evaluate import (
    EvalConfig,
    EvalImage,
    JudgementLog,
    MaskJudge,
    aggregate,
    run_study,
)
from tl_latentlens.evaluate.controls import ControlResult, ControlRow
from tl_latentlens.evaluate.judges import Verdict
from tl_latentlens.evaluate.report import format_table
from tl_latentlens.evaluate.sampling import draw, sample_plan
from tl_latentlens.lens.results import Explanation, PatchExplanation, TokenCandidate
from tl_latentlens.models.base import VisualLayout
from tl_latentlens.wordnet import WordNet

VOCAB = ["dog", "cat", "animal", "the", "of", "grass", "canine", "puppy", "organism", "ing"]
N_LAYERS = 4


class FakeLens:
    """Duck-typed LatentLens: 4x4 grid, 4 layers, words drawn from VOCAB per (image, patch, layer)."""

    def __init__(self):
        self.calls = 0
        self.batches = 0
        self.prepared = 0  # images put through vlm.prepare
        layout = VisualLayout.from_grid(torch.arange(16) + 1, (4, 4))

        def prepare(image, prompt=None):
            self.prepared += 1
            return SimpleNamespace(layout=layout)

        self.vlm = SimpleNamespace(
            n_layers=N_LAYERS,
            prepare=prepare,
            fingerprint=lambda: {"name": "fake", "embedding_sha256": "0"},
        )
        hooks = [hk.hook_for_layer(x, N_LAYERS) for x in (0, 2, 4)]
        manifest = {
            "model": {"name": "fake"},
            "hooks": [{"name": h} for h in hooks],
            "corpus": {"fingerprint": "c"},
        }
        sentences = ("A table.", "An animal.")  # the constant answer's vocabulary
        self.bank = SimpleNamespace(
            hooks=hooks, root=Path("fake-bank"), manifest=manifest,
            n_sentences=len(sentences), sentence=sentences.__getitem__,
        )  # fmt: skip

    def default_hooks(self):
        return list(self.bank.hooks)

    def explain_many(
        self, images, prompt=None, hooks=None, k=5, *, batch_size=8, per_layer=False,
        method="auto", patches=None, inputs=None, progress=True, **_,
    ):  # fmt: skip
        # as LatentLens.explain_many: one batched search for several images
        self.batches += 1
        return [
            self.explain(im, prompt, hooks, k, per_layer=per_layer, method=method,
                         patches=patches[i], inputs=inputs[i])
            for i, im in enumerate(images)
        ]  # fmt: skip

    def explain(
        self,
        image,
        prompt=None,
        hooks=None,
        k=5,
        *,
        per_layer=False,
        method="auto",
        patches=None,
        inputs=None,
    ):
        self.calls += 1
        if inputs is None:  # as LatentLens.explain: prepare unless handed the inputs
            self.vlm.prepare(image, prompt)
        seed = int(np.asarray(image).sum())
        out = []
        for hook in hooks:
            layer = hk.layer_of(hook)
            for i in patches:
                rng = random.Random(f"{seed}:{i}:{layer}")
                words = [rng.choice(VOCAB) for _ in range(3 * k)]
                lat = tuple(
                    Neighbour(
                        " " + w,
                        j,
                        f"a {w}",
                        j,
                        1,
                        ("<s>", w),
                        0.9 - j / 100,
                        hook,
                        rng.choice([0, 2, 4]),
                    )
                    for j, w in enumerate(words[:k])
                )
                lg = tuple(TokenCandidate(w, j, 1.0) for j, w in enumerate(words[k : 2 * k]))
                em = tuple(TokenCandidate(w, j, 0.5) for j, w in enumerate(words[2 * k :]))
                out.append(PatchExplanation(hook, layer, i, i + 1, i // 4, i % 4, 0, lat, lg, em))
        return Explanation(
            "fake",
            "fake-bank",
            prompt,
            (4, 4),
            list(hooks),
            list(self.bank.hooks),
            per_layer,
            k,
            out,
        )


def images(n=5):
    out = []
    for i in range(n):
        labels = [
            [("dog" if (r + c + i) % 2 else "cat") if (r + c) % 3 else None for c in range(4)]
            for r in range(4)
        ]
        arr = np.full((8, 8, 3), 10 * i + 1, dtype=np.uint8)
        out.append(
            EvalImage(id=f"im{i}", image=Image.fromarray(arr), source="test", patch_labels=labels)
        )
    return out


@pytest.fixture(scope="module")
def wordnet(tmp_path_factory):
    return WordNet(write_wordnet(tmp_path_factory.mktemp("wn"), TINY))


CFG = EvalConfig(k=3, patches_per_layer=6, seed=1, plots=False)


# ---- sampling -------------------------------------------------------------------------------------
def test_sampling_deterministic_and_one_per_image():
    elig = [list(range(16)) for _ in range(10)]
    a = sample_plan(elig, [4, 0, 2], 6, seed=3, paired=False)
    b = sample_plan(elig, [0, 2, 4], 6, seed=3, paired=False)
    assert a == b and a.layers == (0, 2, 4)
    assert a.picks != sample_plan(elig, [0, 2, 4], 6, seed=4, paired=False).picks
    for layer in a.layers:
        imgs = [i for i, _ in a.picks[layer]]
        assert len(imgs) == len(set(imgs)) == 6  # one patch per image
        assert a.stats[layer] == {"drawn": 6, "images": 6, "max_per_image": 1}
    assert len({tuple(v) for v in a.picks.values()}) > 1  # fresh draw per layer
    p = sample_plan(elig, [0, 2, 4], 6, seed=3, paired=True)
    assert p.picks[0] == p.picks[2] == p.picks[4]


def test_sampling_fewer_images_spreads_evenly_and_respects_eligibility():
    elig = [[0, 1, 2, 3, 4], [7], [2, 3, 9, 10]]
    picks = draw(elig, 7, random.Random(0))
    assert len(picks) == len(set(picks)) == 7
    assert all(p in elig[i] for i, p in picks)
    per = {i: sum(1 for j, _ in picks if j == i) for i in range(3)}
    assert per[1] == 1 and max(per.values()) - min(per[0], per[2]) <= 1
    assert len(draw(elig, 50, random.Random(0))) == 10  # everything eligible, no more
    plan = sample_plan(elig, [1], 7, seed=0)
    assert plan.stats[1]["images"] == 3 and plan.stats[1]["max_per_image"] == 3
    assert plan.patches_for_image(1) == [7] and plan.layers_for(1, 7) == [1]
    with pytest.raises(ValueError, match="no eligible"):
        sample_plan([[], []], [0], 3, seed=0)
    with pytest.raises(ValueError):
        sample_plan(elig, [], 3, seed=0)
    with pytest.raises(ValueError):
        sample_plan(elig, [0], 0, seed=0)


def test_config_validation():
    with pytest.raises(ValueError, match="k=5"):
        EvalConfig(protocol="paper", k=3)
    assert EvalConfig.paper().paired is False and EvalConfig.paper().patches_per_layer == 100
    for bad in (
        {"k": 0},
        {"layers": ()},
        {"layers": (-1,)},
        {"count_kinds": ("x",)},
        {"protocol": "x"},
        {"min_label_fraction": 0},
    ):
        with pytest.raises(ValueError):
            EvalConfig(**bad)


# ---- the study ------------------------------------------------------------------------------------
def test_study_outputs_and_report(tmp_path, wordnet):
    lens = FakeLens()
    res = run_study(
        lens, images(), MaskJudge(wordnet=wordnet), replace(CFG, plots=True), tmp_path / "s"
    )
    recs = JudgementLog(tmp_path / "s" / "judgements.jsonl").read()
    assert len(recs) == 3 * 6 * 3 == res.judged  # layers x patches x lenses
    assert lens.calls == 5  # one model run per image
    assert lens.batches == 1  # their tokens searched together
    assert lens.prepared == 5  # each image prepared once (sampling and the run share it)
    assert set(res.table["layer"]) == {0, 2, 4} and (res.table["n_patches"] == 6).all()
    assert res.table.equals(aggregate(tmp_path / "s" / "judgements.jsonl"))
    for name in ("table.csv", "report.json", "plan.json", "layers.png", "leap.png"):
        assert (tmp_path / "s" / name).is_file(), name
    rec = recs[0]
    assert rec["label"] in ("dog", "cat") and len(rec["words"]) == 3 and "verdict" in rec
    report = json.loads((tmp_path / "s" / "report.json").read_text())
    assert report["k"] == 3 and report["seed"] == 1 and report["model"]["name"] == "fake"
    assert (
        report["bank"]["path"] == "fake-bank"
        and report["bank"]["identity"]["corpus_fingerprint"] == "c"
    )
    assert report["judge"]["name"] == "mask" and len(report["images"]) == 5
    # every patch is a dog or a cat: the bank word "animal" names them all, whatever the lens says
    assert report["chance"]["words"] == ["animal"] and report["chance"]["strict"] == 100.0
    assert report["chance"]["n"] == 18 and set(report["chance"]["per_layer"]) == {"0", "2", "4"}
    shuffled = report["chance"]["shuffled"]  # each lens's own words against other images' labels
    assert set(shuffled) == {"latent", "logit", "embedding"}
    assert all(set(v) == {"0", "2", "4"} and all(0 <= x <= 100 for x in v.values())
               for v in shuffled.values())  # fmt: skip
    # labelled patches only were sampled for the mask judge
    assert all(r["label"] is not None for r in recs)


def _controls():
    """A text and a visual control as the lens would give them (hits per sentence / word)."""
    text_rows = tuple(
        ControlRow.of(lens_, layer, hk.hook_for_layer(layer, N_LAYERS), target,
                      [(i % 5, i % 4 != 0, i % 2 == 0) for i in range(40)])
        for layer in (0, 2, 4)
        for lens_, target in (("latent", "same word"), ("logit", "next word"),
                              ("embedding", "same word"))
    )  # fmt: skip
    visual_rows = tuple(
        ControlRow.of(lens_, 0, "blocks.0.hook_resid_pre", "injected word",
                      [(i, True, True) for i in range(6)])
        for lens_ in ("latent", "logit", "embedding")
    )  # fmt: skip
    return [
        ControlResult("text", 3, text_rows, description="held-out sentences"),
        ControlResult("visual", 3, visual_rows, description="injected words"),
    ]


def test_study_records_and_prints_the_positive_controls(tmp_path, wordnet):
    controls = _controls()
    res = run_study(
        FakeLens(), images(), MaskJudge(wordnet=wordnet), CFG, tmp_path / "s", controls=controls
    )
    assert res.controls == controls
    report = json.loads((tmp_path / "s" / "report.json").read_text())
    assert [c["kind"] for c in report["controls"]] == ["text", "visual"]
    assert [ControlResult.from_dict(c).to_dict() for c in report["controls"]] == [
        c.to_dict() for c in controls
    ]
    latent0 = ControlResult.from_dict(report["controls"][0]).row("latent", 0)
    assert (latent0.n, latent0.hits, latent0.topk) == (40, 30, 75.0)
    assert latent0.lo < 75.0 < latent0.hi  # Wilson, as the study's own rows
    assert latent0.group_lo <= latent0.lo and latent0.group_hi >= latent0.hi  # by sentence
    csv = pd.read_csv(tmp_path / "s" / "controls.csv")
    assert list(csv["control"]) == ["text control"] * 3 + ["visual control"]
    assert csv.loc[0, "latent_top3"] == 75.0 and csv.loc[0, "logit_target"] == "next word"
    text = format_table(res.table, res.controls).splitlines()
    labels = [line.strip().split("  ")[0] for line in text[1:]]
    assert labels[:7] == ["text 0", "text 2", "text 4", "visual 0", "0", "2", "4"]
    assert "75.0 / " in text[1] and text[1].count(" next") == 1
    assert "text control: held-out sentences" in text and "visual control: injected words" in text
    # 75 % at layer 0 is below the text control's floor: the table says so
    assert text[-2:] == [
        "! text control: latent top-3 at layer 0 is 75.0 % (expected >= 80 %)",
        "! text control: embedding top-3 at layer 0 is 75.0 % (expected >= 100 %)",
    ]
    # without controls: the table as before, nothing recorded
    plain = run_study(FakeLens(), images(), MaskJudge(wordnet=wordnet), CFG, tmp_path / "p")
    assert plain.controls == [] and not (tmp_path / "p" / "controls.csv").exists()
    assert format_table(plain.table).splitlines()[1].split()[0] == "0"


def test_resume_skips_done_work_and_matches_a_fresh_run(tmp_path, wordnet):
    full = run_study(FakeLens(), images(), MaskJudge(wordnet=wordnet), CFG, tmp_path / "a")
    b = tmp_path / "b"
    b.mkdir()
    shutil.copy(tmp_path / "a" / "plan.json", b / "plan.json")
    lines = (tmp_path / "a" / "judgements.jsonl").read_text().splitlines(keepends=True)
    (b / "judgements.jsonl").write_text("".join(lines[:20]) + lines[20][:30])  # torn last line
    lens = FakeLens()
    res = run_study(lens, images(), MaskJudge(wordnet=wordnet), CFG, b, resume=True)
    assert res.judged == len(lines) - 20
    assert res.table.equals(full.table)
    assert aggregate(b / "judgements.jsonl").equals(full.table)
    # everything judged and explained: resuming again runs neither model nor judge
    lens2 = FakeLens()
    again = run_study(lens2, images(), MaskJudge(wordnet=wordnet), CFG, b, resume=True)
    assert again.judged == 0 and lens2.calls == 0 and again.table.equals(full.table)


class FlakyJudge:
    """Fails its first ``n`` cases, then defers to ``inner``."""

    def __init__(self, inner, n):
        self.inner, self.n = inner, n
        self.needs_labels = True

    def describe(self):
        return self.inner.describe()

    def judge(self, case):
        if self.n > 0:
            self.n -= 1
            return Verdict.failed("flaky")
        return self.inner.judge(case)


def test_errors_are_counted_then_retried_on_resume(tmp_path, wordnet):
    mask = MaskJudge(wordnet=wordnet)
    first = run_study(FakeLens(), images(), FlakyJudge(mask, 4), CFG, tmp_path / "s")
    assert (
        first.table[[c for c in first.table.columns if c.endswith("_errors")]].to_numpy().sum() == 4
    )
    second = run_study(FakeLens(), images(), mask, CFG, tmp_path / "s", resume=True)
    assert second.judged == 4
    fresh = run_study(FakeLens(), images(), mask, CFG, tmp_path / "fresh")
    assert second.table.equals(fresh.table)


def test_refuses_to_overwrite_or_resume_a_different_study(tmp_path, wordnet):
    judge = MaskJudge(wordnet=wordnet)
    run_study(FakeLens(), images(), judge, CFG, tmp_path / "s")
    with pytest.raises(ValueError, match="already holds judgements"):
        run_study(FakeLens(), images(), judge, CFG, tmp_path / "s")
    with pytest.raises(ValueError, match="differs"):
        run_study(
            FakeLens(),
            images(),
            judge,
            EvalConfig(k=3, patches_per_layer=6, seed=2, plots=False),
            tmp_path / "s",
            resume=True,
        )
    relabelled = images()
    relabelled[0].patch_labels = [
        [lab and "cat" for lab in row] for row in relabelled[0].patch_labels
    ]
    with pytest.raises(ValueError, match="identity"):
        run_study(FakeLens(), relabelled, judge, CFG, tmp_path / "s", resume=True)


def test_parallel_judging_and_counting_options(tmp_path, wordnet):
    judge = MaskJudge(wordnet=wordnet)
    seq = run_study(FakeLens(), images(), judge, CFG, tmp_path / "seq")
    par = run_study(
        FakeLens(),
        images(),
        judge,
        EvalConfig(k=3, patches_per_layer=6, seed=1, judge_workers=3, plots=False),
        tmp_path / "par",
    )
    assert par.table.equals(seq.table)
    log = tmp_path / "seq" / "judgements.jsonl"
    strict = aggregate(log, kinds=("concrete",))
    assert (strict["latent_top3"] <= seq.table["latent_top3"]).all()
    top1 = aggregate(log, k=1)
    assert np.allclose(top1["logit_top1"], seq.table["logit_pass1"], equal_nan=True)
    with pytest.raises(ValueError, match="unknown verdict kinds"):
        aggregate(log, kinds=("nope",))


def test_layers_outside_model_and_unlabelled_images(tmp_path, wordnet):
    with pytest.raises(ValueError, match="outside"):
        run_study(
            FakeLens(),
            images(),
            MaskJudge(wordnet=wordnet),
            EvalConfig(layers=(9,)),
            tmp_path / "x",
        )
    bare = [EvalImage(id="b", image=Image.new("RGB", (8, 8)), source="t")]
    with pytest.raises(ValueError, match="annotated"):
        run_study(FakeLens(), bare, MaskJudge(wordnet=wordnet), CFG, tmp_path / "y")


def test_grid_labels_from_pixel_masks():
    lm = np.zeros((40, 40), dtype=np.int64)
    lm[:20, :20] = 1  # dog fills cell (0, 0)
    lm[20:, 20:32] = 2  # cat covers 60% of cell (1, 1)
    im = EvalImage(
        id="m",
        image=Image.new("RGB", (40, 40)),
        source="t",
        label_map=lm,
        class_names={1: "dog", 2: "cat"},
    )
    assert im.grid_labels((2, 2)) == [["dog", None], [None, "cat"]]
    assert im.grid_labels((2, 2), min_fraction=0.7) == [["dog", None], [None, None]]
    im.background = "grass"
    assert im.grid_labels((2, 2))[0][1] == "grass" and im.labels == ("dog", "cat")
    with pytest.raises(ValueError, match="grid"):
        EvalImage(id="p", image=None, source="t", patch_labels=[["a"]]).grid_labels((2, 2))


def test_grid_labels_follow_the_crop_the_model_saw():
    # A wide mask: dog on the left third, cat in the middle, nothing on the right. A
    # centre-cropping processor (LLaVA-1.5) sees the middle square only: the cat.
    lm = np.zeros((30, 90), dtype=np.int64)
    lm[:, :30] = 1
    lm[:, 30:60] = 2
    im = EvalImage(
        id="w", image=Image.new("RGB", (90, 30)), source="t", label_map=lm,
        class_names={1: "dog", 2: "cat"},
    )  # fmt: skip
    assert im.grid_labels((1, 3)) == [["dog", "cat", None]]
    assert im.grid_labels((1, 1), box=(30, 0, 60, 30)) == [["cat"]]
    # a padding box (past the edges) leaves the padded cells unlabelled, even with a background
    im.background = "grass"
    assert im.grid_labels((3, 3), box=(0, -30, 90, 60)) == [
        [None, None, None],
        ["dog", "cat", "grass"],
        [None, None, None],
    ]
