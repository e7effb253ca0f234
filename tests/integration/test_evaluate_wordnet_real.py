"""The ground-truth judge with the real WordNet 3.0 (Debian ``wordnet-base``) and real labels."""

from __future__ import annotations

import pytest

from tl_latentlens.evaluate.default_set import VOC_SENSES, stamp_label, voc_image
from tl_latentlens.evaluate.judges import JudgeCase, MaskJudge
from tl_latentlens.evaluate.matching import LabelMatcher, MatchRule
from tl_latentlens.wordnet import WordNet

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def wn():
    return WordNet.default()


def test_real_wordnet_morphology_and_depth(wn):
    assert wn.morphy("mice", "n") == ["mouse"]
    assert wn.morphy("churches", "n") == ["church"]
    assert "big" in wn.morphy("bigger", "a")
    assert wn.synsets("cat")[0].lemma_names()[:2] == ["cat", "true_cat"]
    assert wn.synsets("entity")[0].min_depth() == 0
    assert wn.synsets("animal")[0].min_depth() == 6
    assert wn.sense("dog.n.01").name() == "dog.n.01" and wn.reader.get_version() == "3.0"


@pytest.mark.parametrize(
    "word, label, relation",
    [
        ("dogs", "dog", "label"),
        ("Automobile", "car", "synonym"),
        ("vehicle", "car", "hypernym"),
        ("mammals", "cat", "hypernym"),
        ("animal", "bird", "hypernym"),
        ("furniture", "chair", "hypernym"),
        ("table", "dining_table.n.01", "hypernym"),
        ("tv", "television_receiver.n.01", "synonym"),
        ("entity", "dog", None),
        ("object", "car", None),
        ("puppy", "dog", None),
        ("back", "chair", None),
        ("the", "person.n.01", None),
    ],
)
def test_strict_rule_on_real_words(wn, word, label, relation):
    assert LabelMatcher(wn).relation(word, label) == relation


def test_lenient_rule_on_real_words(wn):
    m = LabelMatcher(wn, MatchRule.lenient())
    assert m.relation("puppy", "dog") == "hyponym"
    assert m.relation("wing", "bird") == "part"
    assert m.relation("woman", "person.n.01") == "hyponym"


def test_mask_judge_real(wn):
    judge = MaskJudge(wordnet=wn)
    v = judge.judge(
        JudgeCase(None, "x", 0, 0, (7, 7), ("the", "chairs", "persons", "of", "seat"), label="chair.n.01",
                  image_labels=("chair.n.01", "person.n.01"))
    )  # fmt: skip
    assert v.candidate_kinds == ("none", "concrete", "global", "none", "concrete")
    assert v.matched == 1 and v.counts(top=1) is False and v.counts(top=2) is True


def test_voc_senses_and_photo(wn):
    m = LabelMatcher(wn)
    for sense in VOC_SENSES.values():
        assert m.label_synsets(sense)
    photo = voc_image()
    assert set(photo.labels) == {"bottle.n.01", "chair.n.01", "person.n.01", "dining_table.n.01"}
    grid = photo.grid_labels((7, 7))
    assert sum(lab == "person.n.01" for row in grid for lab in row) >= 5
    assert sum(lab is None for row in grid for lab in row) >= 10  # background and mixed cells


@pytest.mark.parametrize(
    "name, caption, category, label",
    [
        ("cow white", "A cow.", "animals/mammals/bovines", "cow"),
        ("plyers", "A pair of pliers.", "household/tools", "plyers"),
        ("grave d", "A tombstone.", "seasonal/halloween", "tombstone"),
        ("002", "A European coin of 2 cents (0.02 €).", None, "coin"),
        ("final roll call", "We remember those who have died.", "military", None),
        ("g filled", "The letter g.", "symbols/alphabets/english/filled/lowercase", "letter.n.02"),
        ("iris", "An iris.", "plants/flowers", "iris"),
        ("wheel tractor", "A tractor wheel.", "vehicles", "wheel"),  # sense 7 (bicycle) is too far
    ],
)
def test_stamp_labels(wn, name, caption, category, label):
    assert stamp_label(name, caption, wn, category=category) == label
