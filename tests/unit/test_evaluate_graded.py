"""Graded mask-judge levels (concrete / related / global), per-level columns, CIs, hubness."""

from __future__ import annotations

import math

import pytest
from test_evaluate_wordnet import TINY

from fixtures.wordnet_files import SynsetSpec, write_wordnet
from tl_latentlens.evaluate.hubness import hubness, hubness_of_words
from tl_latentlens.evaluate.judges import JudgeCase, MaskJudge
from tl_latentlens.evaluate.records import aggregate, wilson_interval
from tl_latentlens.evaluate.study import whole_word
from tl_latentlens.wordnet import WordNet

S = SynsetSpec
# canine (depth 8) > dog, wolf; whole (depth 3) > table, rock: siblings under a shallow class
EXTRA = [
    S("wolf", "n", ("wolf",), (("@", "canine"),)),
    S("rock", "n", ("rock",), (("@", "whole"),)),
    S("tail", "n", ("tail",), (("#p", "dog"),)),
    S("terrier", "n", ("terrier",), (("@", "dog"),)),  # hyponyms: dog > terrier > scottie
    S("scottie", "n", ("scottie",), (("@", "terrier"),)),
    S("minischottie", "n", ("minischottie",), (("@", "scottie"),)),
]


#: Inverse pointers the tiny database needs written out (WordNet lists both directions).
MORE = {
    "canine": (("~", "dog"), ("~", "wolf")),
    "dog": (("~", "terrier"), ("%p", "tail")),
    "terrier": (("~", "scottie"),),
    "scottie": (("~", "minischottie"),),
    "whole": (("~", "table"), ("~", "rock")),
}


@pytest.fixture(scope="module")
def wn(tmp_path_factory):
    specs = [S(s.key, s.pos, s.lemmas, (*s.pointers, *MORE.get(s.key, ()))) for s in TINY + EXTRA]
    return WordNet(write_wordnet(tmp_path_factory.mktemp("wn"), specs))


def case(cands, label="dog", others=("dog", "cat")):
    return JudgeCase(
        image=None, image_id="im", row=0, col=0, grid=(2, 2), candidates=tuple(cands),
        label=label, image_labels=tuple(others),
    )  # fmt: skip


def test_levels_on_hand_made_cases(wn):
    judge = MaskJudge(wordnet=wn)
    words = ["dogs", "canine", "cats", "puppy", "wolf", "tail", "scottie", "minischottie", "the"]
    v = judge.judge(case(words))
    assert v.candidate_kinds == (
        "concrete",  # the label itself (plural)
        "concrete",  # hypernym at depth >= 6
        "global",  # another object of the image
        "abstract",  # hyponym, one level
        "abstract",  # sibling under canine (depth 8)
        "abstract",  # part
        "abstract",  # hyponym, two levels
        "none",  # three levels down: too specific to follow
        "none",
    )
    assert "~sibling" in v.raw and "~part" in v.raw and "~hyponym" in v.raw


def test_related_needs_a_deep_parent_and_strict_judge_ignores_it(wn):
    judge = MaskJudge(wordnet=wn)
    # table and rock are siblings only under "whole" (depth 3): not related
    assert judge.judge(case(["rock"], label="table", others=("table",))).kind == "none"
    # the whole a part belongs to is related
    assert judge.judge(case(["dog"], label="tail", others=("tail",))).kind == "abstract"
    flat = MaskJudge(wordnet=wn, graded=False)
    assert flat.judge(case(["wolf", "puppy"])).candidate_kinds == ("none", "none")
    assert "related_rule" not in flat.describe() and "related_rule" in judge.describe()
    # a global match wins over a related one (cat is in the image and not the label)
    assert judge.judge(case(["cat"], others=("dog", "cat"))).kind == "global"


def _rec(patch, layer, lens, words, kinds):
    matches = tuple(i for i, k in enumerate(kinds) if k != "none")
    return {
        "image": "im", "patch": patch, "layer": layer, "lens": lens, "words": words,
        "verdict": {"interpretable": bool(matches), "matched": matches[0] if matches else None,
                    "kind": next((k for k in kinds if k != "none"), "none"),
                    "matches": matches, "candidate_kinds": kinds},
    }  # fmt: skip


def test_aggregate_levels_and_interval():
    recs = []
    for p in range(10):
        kinds = ("concrete", "none") if p < 2 else ("none", "abstract") if p < 5 else ("none",) * 2
        recs.append(_rec(p, 0, "latent", ["a", "b"], kinds))
        recs.append(_rec(p, 0, "logit", ["a", "b"], ("none", "global") if p < 1 else ("none",) * 2))
        recs.append(_rec(p, 0, "embedding", ["a", "b"], ("none",) * 2))
    t = aggregate(recs, kinds=("concrete",)).iloc[0]
    assert t["latent_top2"] == 20.0 and t["latent_concrete"] == 20.0
    assert t["latent_abstract"] == 30.0 and t["latent_global"] == 0.0
    assert t["logit_top2"] == 0.0 and t["logit_global"] == 10.0
    lo, hi = wilson_interval(2, 10)
    assert t["latent_top2_lo"] == pytest.approx(100 * lo) and lo < 0.2 < hi
    assert all(math.isnan(x) for x in wilson_interval(0, 0))
    assert wilson_interval(0, 50)[0] == 0.0 and wilson_interval(50, 50)[1] == pytest.approx(1.0)


def test_hubness_per_layer():
    recs = [_rec(p, 0, "latent", [w, "x"], ("none",) * 2) for p, w in
            enumerate(["dog", " dog", "Dog", "cat", "sun", "sea", "sky", "tree", "car", "bus"])]  # fmt: skip
    recs += [_rec(p, 4, "latent", [f"w{p}", "x"], ("none",) * 2) for p in range(20)]
    recs += [_rec(p, 0, "logit", ["hub", "x"], ("none",) * 2) for p in range(10)]
    h = hubness(recs)
    assert list(h["layer"]) == [0, 4]
    row0 = h.iloc[0]
    assert row0["slots"] == 10 and row0["distinct"] == 8 and row0["max_k_occurrence"] == 3
    assert row0["top5_share"] == 70.0 and row0["hubs"].startswith("dog×3")
    assert h.iloc[1]["top5_share"] == 25.0
    assert hubness(recs, lens="logit").iloc[0]["top5_share"] == 100.0
    assert hubness_of_words([])["slots"] == 0


def test_whole_word_joins_pieces():
    toks = ["<|im_start|>", "A", " kidn", "ey", " bean", ".", "Kang", "aroo"]
    assert whole_word(toks, 2, " kidn") == "kidney"
    assert whole_word(toks, 3, "ey") == "kidney"
    assert whole_word(toks, 4, " bean") == "bean"
    assert whole_word(toks, 1, "A") == "A"  # the special token before it is not joined
    assert whole_word(toks, 7, "aroo") == "Kangaroo"  # after punctuation, no space
    assert whole_word((), 0, " dog") == "dog"  # unknown sentence: the token
    assert whole_word(toks, 2, " other") == "other"  # inconsistent position: the token


# ---- intervals that resample whole images ---------------------------------------------------------
def test_image_interval_is_wilson_when_nothing_hits_or_one_image():
    from tl_latentlens.evaluate.records import image_interval

    assert image_interval([(0, 10)] * 6) == wilson_interval(0, 60)
    assert image_interval([(3, 10)]) == wilson_interval(3, 10)
    assert all(math.isnan(x) for x in image_interval([]))


def test_image_interval_widens_when_hits_cluster_in_few_images():
    from tl_latentlens.evaluate.records import image_interval

    clustered = [(10, 10)] + [(0, 10)] * 9  # one image holds every hit
    spread = [(1, 10)] * 10  # the same 10 % spread evenly
    w_lo, w_hi = wilson_interval(10, 100)
    c_lo, c_hi = image_interval(clustered)
    s_lo, s_hi = image_interval(spread)
    assert c_lo <= w_lo and c_hi > w_hi + 0.05  # resampling images: 0 or 2+ hit images
    assert (s_lo, s_hi) == (w_lo, w_hi)  # no spread between images: Wilson's hull holds
    assert image_interval(clustered, seed=1) == image_interval(clustered, seed=1)


def test_aggregate_gives_image_intervals_per_lens():
    recs = []
    for image in ("a", "b", "c", "d"):
        for patch in range(3):
            kind = "concrete" if image == "a" else "none"
            recs.append({
                "image": image, "patch": patch, "layer": 0, "lens": "latent", "words": ["w"],
                "verdict": {"interpretable": kind != "none", "kind": kind,
                            "matched": 0 if kind != "none" else None,
                            "candidate_kinds": [kind]},
            })  # fmt: skip
    table = aggregate(recs)
    row = table.iloc[0]
    assert row["latent_top1"] == 25.0
    assert row["latent_top1_img_lo"] <= row["latent_top1_lo"]
    assert row["latent_top1_img_hi"] >= row["latent_top1_hi"]
    assert list(table.columns[-6:]) == [
        f"{lens}_top1_img_{end}"
        for lens in ("latent", "logit", "embedding")
        for end in ("lo", "hi")
    ]
