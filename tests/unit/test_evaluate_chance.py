"""The constant-answer chance level of the strict judge, on hand-made studies (tiny WordNet)."""

from __future__ import annotations

import json
import math

import pytest
from test_evaluate_wordnet import TINY

from fixtures.wordnet_files import write_wordnet
from tl_latentlens.evaluate.chance import (
    ConstantAnswer,
    constant_answer,
    patch_labels,
    sentence_words,
    shuffled_label_rates,
)
from tl_latentlens.evaluate.matching import LabelMatcher, MatchRule
from tl_latentlens.wordnet import WordNet


@pytest.fixture(scope="module")
def matcher(tmp_path_factory):
    return LabelMatcher(WordNet(write_wordnet(tmp_path_factory.mktemp("wn"), TINY)))


def record(layer, label, patch, lens="latent", words=("x",)):
    return {"image": "im", "patch": patch, "layer": layer, "lens": lens, "label": label,
            "words": list(words)}  # fmt: skip


def test_one_general_word_names_every_animal(matcher):
    # layer 0: dog, cat, mouse, table; layer 8: dog, dog, table, table
    labels = {0: ["dog", "cat", "mouse", "table"], 8: ["dog", "dog", "table", "table"]}
    a = constant_answer(labels, ["table", "creature", "dog", "the"], matcher, k=1)
    assert a.words == ("creature",)  # a synonym of animal: hypernym of dog, cat and mouse
    assert a.per_layer == {0: 75.0, 8: 50.0}
    assert a.rate == pytest.approx(62.5) and a.n == 8


def test_greedy_adds_the_word_that_names_most_patches_not_yet_named(matcher):
    labels = {0: ["dog", "dog", "dog", "cat", "table", "table"]}
    a = constant_answer(labels, ["dog", "table", "animal", "cat"], matcher, k=2)
    assert a.words == ("animal", "table")  # animal: 4 patches; then table: 2 more
    assert a.rate == 100.0
    # no word adds a patch any more: the answer stops short of k
    assert constant_answer(labels, ["dog", "table", "animal"], matcher, k=5).words == (
        "animal",
        "table",
    )


def test_ties_go_to_the_word_first_in_the_vocabulary(matcher):
    labels = {0: ["dog", "cat"]}
    assert constant_answer(labels, ["cat", "dog"], matcher, k=1).words == ("cat",)
    assert constant_answer(labels, ["dog", "cat"], matcher, k=1).words == ("dog",)


def test_words_are_normalised_and_unknown_labels_name_nothing(matcher):
    labels = {0: ["dog", "unicornfish"]}  # the tiny WordNet does not know the second label
    a = constant_answer(labels, [" Dogs", "ĠDOG", "fish"], matcher, k=3)
    assert a.words == ("dogs",) and a.rate == 50.0


def test_no_patches_and_bad_k(matcher):
    a = constant_answer({}, ["dog"], matcher)
    assert a.words == () and math.isnan(a.rate) and a.per_layer == {}
    with pytest.raises(ValueError, match="k must be positive"):
        constant_answer({0: ["dog"]}, ["dog"], matcher, k=0)


def test_reads_the_latest_latent_records_of_a_study(matcher, tmp_path):
    path = tmp_path / "judgements.jsonl"
    recs = [
        record(0, "table", 1),
        record(0, "dog", 1),  # a later record of the same key replaces the first
        record(0, "cat", 2),
        record(0, "table", 1, lens="logit"),  # other lenses are not the study's patches
        {**record(2, "", 3)},  # unlabelled patches are not judged
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert patch_labels(path) == {0: ["dog", "cat"]}
    a = constant_answer(path, ["table", "animal"], matcher, k=2)
    assert a.words == ("animal",) and a.per_layer == {0: 100.0}
    assert constant_answer(recs, ["table", "animal"], matcher).to_dict() == {
        "words": ["animal"],
        "strict": 100.0,
        "per_layer": {"0": 100.0},
        "n": 2,
    }
    assert isinstance(a, ConstantAnswer)


def test_sentence_words_keep_whole_words_in_first_seen_order():
    assert sentence_words(["A red kettle.", "The kettle's lid, 2 cups."]) == [
        "A",
        "red",
        "kettle",
        "The",
        "s",
        "lid",
        "cups",
    ]


def test_report_chance_level_needs_a_wordnet_judge_and_its_constant_answer_a_bank(
    matcher, tmp_path
):
    from types import SimpleNamespace

    from tl_latentlens.evaluate.report import chance_level

    path = tmp_path / "judgements.jsonl"
    path.write_text(json.dumps(record(0, "dog", 1)) + "\n")
    bank = SimpleNamespace(n_sentences=1, sentence=lambda i: "A creature.")
    judge = SimpleNamespace(matcher=matcher, rule=matcher.rule)
    assert chance_level(path, judge, bank, 5)["words"] == ["creature"]
    assert chance_level(path, SimpleNamespace(), bank, 5) is None  # the LLM judge: no rule
    no_sentences = chance_level(path, judge, SimpleNamespace(), 5)  # shuffled labels only
    assert "words" not in no_sentences and no_sentences["shuffled"] == {}


def test_report_chance_level_is_reused_only_for_the_same_study(matcher, tmp_path):
    from types import SimpleNamespace

    from tl_latentlens.evaluate.report import chance_level

    class NoWordNet:  # a resumed study must not load WordNet for an unchanged chance level
        rule = MatchRule.strict()

        @property
        def matcher(self):
            raise AssertionError("WordNet loaded")

    path = tmp_path / "judgements.jsonl"
    path.write_text(json.dumps(record(0, "dog", 1)) + "\n")
    bank = SimpleNamespace(n_sentences=1, sentence=lambda i: "A creature.")
    judge = SimpleNamespace(matcher=matcher, rule=matcher.rule)
    first = chance_level(path, judge, bank, 5, bank_identity={"corpus": "a"})
    assert chance_level(path, NoWordNet(), bank, 5, {"corpus": "a"}, first) is first
    # another bank, another k or other judgements: computed again
    with pytest.raises(AssertionError, match="WordNet loaded"):
        chance_level(path, NoWordNet(), bank, 5, {"corpus": "b"}, first)
    with pytest.raises(AssertionError, match="WordNet loaded"):
        chance_level(path, NoWordNet(), bank, 4, {"corpus": "a"}, first)
    path.write_text(json.dumps(record(0, "cat", 1)) + "\n")
    with pytest.raises(AssertionError, match="WordNet loaded"):
        chance_level(path, NoWordNet(), bank, 5, {"corpus": "a"}, first)


# ---- the lens's own words against other images' labels ----------------------------------------------
def rec(image, patch, label, words, layer=0, lens="latent"):
    return {"image": image, "patch": patch, "layer": layer, "lens": lens, "label": label,
            "words": list(words)}  # fmt: skip


def test_a_lens_that_says_creature_everywhere_scores_as_much_with_labels_shuffled(matcher):
    recs = [
        rec("a", 0, "dog", ["creature"]),
        rec("a", 1, "table", ["creature"]),
        rec("b", 0, "cat", ["creature"]),
        rec("b", 1, "table", ["creature"]),
    ]
    # with its own labels: 2 of 4; each patch against the other image's 2 patches: one animal
    assert shuffled_label_rates(recs, matcher) == {"latent": {0: 50.0}}


def test_a_lens_that_names_its_patch_scores_little_with_labels_shuffled(matcher):
    recs = [
        rec("a", 0, "dog", ["dog"]),
        rec("b", 0, "cat", ["cat"]),
        rec("c", 0, "dog", ["dogs"]),
        rec("d", 0, "table", ["table"]),
    ]
    # a's "dog" names c's label (1 of 3 other patches); b's "cat" none; c's "dogs" a's; d none
    rates = shuffled_label_rates(recs, matcher)
    assert rates["latent"][0] == pytest.approx(100 * (1 / 3 + 0 + 1 / 3 + 0) / 4)


def test_shuffled_rates_per_lens_and_layer_cut_to_k_and_skip_lone_images(matcher):
    recs = [
        rec("a", 0, "dog", ["table", "dog"], layer=0, lens="logit"),
        rec("b", 0, "table", ["x", "y"], layer=0, lens="logit"),
        rec("a", 0, "dog", ["dog"], layer=2),  # every patch of layer 2 is in one image
        rec("a", 1, "cat", ["cat"], layer=2),
    ]
    assert shuffled_label_rates(recs, matcher, k=1) == {"logit": {0: 50.0}}
    assert shuffled_label_rates(recs, matcher, k=2) == {"logit": {0: 50.0}}  # "dog" is a's own
