"""The WordNet module (nltk's reader, sense names, morphy, closure) and the label-matching
rule, on a tiny database written in WordNet's file format."""

from __future__ import annotations

import pytest

from fixtures.wordnet_files import SynsetSpec, write_wordnet
from tl_latentlens.evaluate.matching import LabelMatcher, MatchRule, normalise_word
from tl_latentlens.wordnet import (
    SenseName,
    WordNet,
    closure,
    display_label,
    lemma_names,
    parse_sense,
    sense_name,
    strip_sense,
)

S = SynsetSpec

# entity(0) > physical(1) > object(2) > whole(3) > living(4) > organism(5) > animal(6)
#   > carnivore(7) > canine(8) > dog(9) > puppy(10);  organism > person(6)
TINY = [
    S("entity", "n", ("entity",)),
    S("physical", "n", ("physical_entity",), (("@", "entity"),)),
    S("object", "n", ("object",), (("@", "physical"),)),
    S("whole", "n", ("whole", "unit"), (("@", "object"),)),
    S("living", "n", ("living_thing",), (("@", "whole"),)),
    S("organism", "n", ("organism", "being"), (("@", "living"),)),
    S("animal", "n", ("animal", "beast", "creature"), (("@", "organism"),)),
    S("carnivore", "n", ("carnivore",), (("@", "animal"),)),
    S("canine", "n", ("canine", "canid"), (("@", "carnivore"),)),
    S(
        "dog",
        "n",
        ("dog", "domestic_dog"),
        (("@", "canine"), ("~", "puppy"), ("%p", "flag"), ("+", "dogv", 1, 1)),
    ),
    S("puppy", "n", ("puppy",), (("@", "dog"),)),
    S("flag", "n", ("flag",)),
    S("dog2", "n", ("frump", "dog")),
    S("cat", "n", ("cat", "true_cat"), (("@", "carnivore"),)),
    S("mouse", "n", ("mouse",), (("@", "animal"),)),
    S("person", "n", ("person", "individual"), (("@", "organism"),)),
    S("table", "n", ("table",), (("@", "whole"),)),
    S("dining_table", "n", ("dining_table",), (("@", "table"),)),
    S("dogv", "v", ("dog", "chase"), (("+", "dog", 1, 1),)),
    S("run", "v", ("run",)),
    S("big", "a", ("big", "large")),
]


@pytest.fixture(scope="module")
def wn(tmp_path_factory):
    root = write_wordnet(
        tmp_path_factory.mktemp("wn"),
        TINY,
        exceptions={"n": {"mice": "mouse"}, "v": {"ran": "run"}},
    )
    return WordNet(root)


def test_read_by_nltk(wn):
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    assert isinstance(wn.reader, WordNetCorpusReader)
    dog = wn.synsets("dog")[0]
    assert dog.name() == "dog.n.01" and dog.definition() == "a synset"
    assert [h.name() for h in dog.hypernyms()] == ["canine.n.01"]
    verb = wn.synsets("dog", "v")[0]  # a verb line (with its empty frame list) parses
    assert verb.pos() == "v" and lemma_names(verb) == ("dog", "chase")
    assert len(list(wn.all_synsets("n"))) == sum(1 for spec in TINY if spec.pos == "n")


def test_synsets_exact_and_in_sense_order(wn):
    dogs = wn.synsets("dog")
    assert [lemma_names(s) for s in dogs] == [("dog", "domestic_dog"), ("frump", "dog")]
    assert wn.synsets("Domestic Dog")[0] == dogs[0]
    assert wn.synsets("dog", None)[-1].pos() == "v"
    assert wn.synsets("unknownword") == []
    assert wn.synsets("dogs") == [] and wn.synsets("mice") == []  # no lemmatising
    assert wn.has_lemma("dining table", "n") and not wn.has_lemma("dogs", "n")


def test_sense_names_parsed_in_one_place(wn):
    assert parse_sense("dog.n.02") == SenseName("dog", "n", 2)
    assert parse_sense("Pot Plant.n.01") == SenseName("pot_plant", "n", 1)
    assert parse_sense("good.s.03") == SenseName("good", "a", 3)
    assert parse_sense("dog") is None and parse_sense("dog.x.01") is None
    assert sense_name("dog", "n", 2) == "dog.n.02" == str(SenseName("dog", "n", 2))
    assert strip_sense("letter.n.02") == "letter" and strip_sense("a.b") == "a.b"
    assert display_label("pot_plant.n.01") == "pot plant"
    assert wn.sense("dog.n.02") == wn.synsets("dog")[1]
    assert wn.sense("dog.n.03") is None and wn.sense("zzz.n.01") is None
    assert wn.sense("dog") is None


def test_morphy_rules_and_exceptions(wn):
    assert wn.morphy("dogs", "n") == ["dog"]
    assert wn.morphy("mice", "n") == ["mouse"]
    assert wn.morphy("ran", "v") == ["run"]
    assert wn.morphy("running", "v") == []  # "runn" is no verb: the rules only detach
    assert wn.morphy("tables", "n") == ["table"]
    assert wn.morphy("Dining Tables", "n") == ["dining_table"]
    assert wn.base_forms("dogs") == {"n": ["dog"], "v": ["dog"]}


def test_min_depth_and_closure(wn):
    assert wn.synsets("entity")[0].min_depth() == 0
    assert wn.synsets("animal")[0].min_depth() == 6
    dog = wn.synsets("dog")[0]
    assert dog.min_depth() == 9
    ups = closure([dog], ("hypernyms", "instance_hypernyms"))
    assert [lemma_names(s)[0] for s in ups[:3]] == ["canine", "carnivore", "animal"]
    assert len(ups) == 9 and dog not in ups
    assert closure([dog], ("hypernyms",), max_levels=1) == dog.hypernyms()
    assert [s.name() for s in closure([dog], ("hyponyms",))] == ["puppy.n.01"]


def test_not_a_database(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a WordNet database"):
        WordNet(tmp_path)


def test_normalise_word():
    assert normalise_word(" Dogs,") == "dogs"
    assert normalise_word("Ġcat") == "cat"
    assert normalise_word("...") == ""
    assert normalise_word("\n") == ""


def test_strict_rule_relations(wn):
    m = LabelMatcher(wn, MatchRule.strict())
    assert m.relation(" dogs", "dog") == "label"
    assert m.relation("domestic dog", "dog") == "synonym"
    assert m.relation("Canine", "dog") == "hypernym"
    assert m.relation("animals", "dog") == "hypernym"  # depth 6: kept
    assert m.relation("organism", "dog") is None  # depth 5: too general
    assert m.relation("entity", "dog") is None
    assert m.relation("puppy", "dog") is None  # hyponym: not entailed by the label
    assert m.relation("flag", "dog") is None  # part: not entailed
    assert m.relation("frump", "dog") is None  # second sense not used (senses=1)
    assert m.relation("chase", "dog") is None  # derived synset, other word
    assert m.relation("dog", "dog") == "label"
    assert m.relation("cat", "dog") is None
    assert m.relation("a", "dog") is None


def test_lenient_rule_and_senses(wn):
    m = LabelMatcher(wn, MatchRule.lenient())
    assert m.relation("puppies", "dog") == "hyponym"
    assert m.relation("flag", "dog") == "part"
    m2 = LabelMatcher(wn, MatchRule(senses=2))
    assert m2.relation("frump", "dog") == "synonym"
    m3 = LabelMatcher(wn, MatchRule(hypernym_max_levels=1))
    assert m3.relation("canine", "dog") == "hypernym"
    assert m3.relation("carnivore", "dog") is None


def test_derived_forms_only_from_the_label_word(wn):
    m = LabelMatcher(wn)
    acc = m.accepted("dog")
    assert acc["dog"] == "label"
    assert "chase" not in acc  # the pointer targets word 1 ("dog") of the verb synset only


def test_label_forms(wn):
    m = LabelMatcher(wn)
    assert lemma_names(m.label_synsets("dog.n.02")[0]) == ("frump", "dog")
    assert m.relation("frump", "dog.n.02") == "synonym"
    assert m.relation("table", "dining table") is None  # depth 4: too general by default
    assert (
        LabelMatcher(wn, MatchRule(hypernym_min_depth=4)).relation("table", "dining table")
        == "hypernym"
    )
    assert lemma_names(m.label_synsets("big dining_table")[0]) == ("dining_table",)
    assert m.relation("table", "old table") == "synonym"
    with pytest.raises(ValueError, match="not a WordNet noun"):
        m.label_synsets("zzz")
    with pytest.raises(ValueError, match="senses"):
        m.label_synsets("dog.n.07")


def test_rule_validation():
    with pytest.raises(ValueError):
        MatchRule(senses=0)
    with pytest.raises(ValueError):
        MatchRule(hyponym_levels=-1)
    assert MatchRule.lenient().to_dict()["part_meronyms"] is True
