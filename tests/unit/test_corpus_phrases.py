"""The default corpus's phrases: noun-led phrases (round 8) and the visual phrases (no model)."""

from __future__ import annotations

import re

from tl_latentlens.default.corpus import noun_phrases, visual_phrases

NOUNS = ["kettle", "owl", "apple", "dog", "umbrella"]


def test_noun_phrases_lead_with_their_noun():
    out = noun_phrases(NOUNS, per_noun=6, seed=0)
    assert len(out) == 6 * len(NOUNS)
    for i, noun in enumerate(NOUNS):
        for phrase in out[6 * i : 6 * (i + 1)]:
            words = re.findall(r"[a-z]+", phrase.lower())
            assert noun in words[:3], phrase
            assert phrase[0].isupper() and phrase.endswith(".")


def test_noun_phrases_use_distinct_templates_per_noun_and_are_seeded():
    out = noun_phrases(NOUNS, per_noun=8, seed=3)
    assert out == noun_phrases(NOUNS, per_noun=8, seed=3)
    assert out != noun_phrases(NOUNS, per_noun=8, seed=4)
    for i in range(len(NOUNS)):
        assert len(set(out[8 * i : 8 * (i + 1)])) == 8  # all eight templates, no repeats


def test_noun_phrases_never_pair_a_noun_with_itself_and_fix_articles():
    out = noun_phrases(["apple", "owl"], per_noun=8, seed=0)
    assert not any(re.search(r"\b(\w+)\b.*\b\1 next to the \1\b", p) for p in out)
    for noun in ("apple", "owl"):
        assert not any(f"the {noun} next to the {noun}" in p.lower() for p in out)
        assert not any(f"a {noun}" in p.lower().split(" and ")[0] for p in out)
    assert "An apple." in out and "An owl." in out


def test_visual_phrases_are_unchanged_by_the_shared_template_code():
    # the table bank B1 and the demo's default corpus of earlier versions are built from these
    assert visual_phrases(["kettle"], per_noun=1) == ["A drawing of a grey kettle."]
    # pinned from the implementation before noun_phrases shared its code (commit 80093dd)
    assert visual_phrases(NOUNS, per_noun=3, seed=0)[:6] == [
        "A small kettle next to a kettle.",
        "The kettle is blue.",
        "A kettle and a dog.",
        "An owl and an umbrella.",
        "The owl is grey.",
        "A drawing of a pink owl.",
    ]
