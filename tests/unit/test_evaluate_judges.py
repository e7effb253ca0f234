"""Judge logic: MaskJudge verdicts, Verdict counting, answer parsing, prompts and marking."""

from __future__ import annotations

import pytest
from PIL import Image
from test_evaluate_wordnet import TINY

from fixtures.wordnet_files import write_wordnet
from tl_latentlens.evaluate.answers import MalformedAnswer, parse_answer
from tl_latentlens.evaluate.judges import JudgeCase, MaskJudge, Verdict
from tl_latentlens.evaluate.llm_judge import LLMJudgeConfig, build_messages
from tl_latentlens.evaluate.marking import (
    block_box,
    crop_box,
    data_url,
    describe_position,
    mark_box,
)
from tl_latentlens.wordnet import WordNet


@pytest.fixture(scope="module")
def judge(tmp_path_factory):
    root = write_wordnet(tmp_path_factory.mktemp("wn"), TINY)
    return MaskJudge(wordnet=WordNet(root))


def case(cands, label="dog", others=("dog", "cat"), **kw):
    return JudgeCase(
        image=None,
        image_id="im",
        row=1,
        col=2,
        grid=(4, 4),
        candidates=tuple(cands),
        label=label,
        image_labels=tuple(others),
        **kw,
    )


def test_mask_judge_concrete_global_none(judge):
    v = judge.judge(case(["cats", " the", " dogs", "animal"]))
    assert v.candidate_kinds == ("global", "none", "concrete", "concrete")
    assert v.kind == "concrete" and v.interpretable
    assert v.matched == 0 and v.matches == (0, 2, 3)
    assert "dogs" in v.raw and "cat" in v.raw
    assert v.counts() and v.counts(("concrete",))
    assert not v.counts(top=1, kinds=("concrete",))  # top-1 is a global match only
    assert v.counts(top=1)
    none = judge.judge(case(["the", "of"]))
    assert none.kind == "none" and not none.interpretable and none.matched is None
    assert not none.counts()


def test_mask_judge_same_rule_for_any_candidates(judge):
    # the judge never sees which lens produced the words: same words, same verdict
    a = judge.judge(case(["puppy", "canine"]))
    b = judge.judge(case(["puppy", "canine"]))
    assert a == b and a.candidate_kinds == ("abstract", "concrete")  # puppy: related level


def test_mask_judge_errors(judge):
    assert judge.judge(case(["dog"], label=None)).is_error
    bad = judge.judge(case(["dog"], label="zzz"))
    assert bad.is_error and "not a WordNet noun" in bad.error
    assert judge.describe()["rule"]["hypernym_min_depth"] == 6


def test_verdict_roundtrip_and_validation():
    v = Verdict(True, 0, "abstract", (0,), ("abstract", "none"), raw="x")
    assert Verdict.from_dict(v.to_dict()) == v
    with pytest.raises(ValueError, match="unknown verdict kind"):
        Verdict(False, None, "maybe")
    f = Verdict.failed("boom", raw="?")
    assert f.is_error and not f.counts() and f.error == "boom"
    # overall-kind verdicts (no per-candidate kinds) count by their matches
    w = Verdict(True, 2, "concrete", (2,))
    assert w.counts() and not w.counts(top=1) and w.counts(top=3)


CANDS = ("the", "dog", "grass", "runs", "ing")


@pytest.mark.parametrize(
    "text, matches, kind",
    [
        ('{"interpretable": "yes", "candidates": [2, 3], "kind": "concrete"}', (1, 2), "concrete"),
        (
            'Sure!\n```json\n{"interpretable": "yes", "candidate": 2, "kind": "Abstract"}\n```',
            (1,),
            "abstract",
        ),
        ("{'interpretable': True, 'candidates': ['grass'], 'kind': 'global',}", (2,), "global"),
        ('{"Interpretable": "Yes", "words": ["Dog", "9"], "kind": "concrete"}', (1,), "concrete"),
        ("interpretable: yes\ncandidates: 1, 4\nkind: concrete", (0, 3), "concrete"),
        ('I think {"interpretable": "no", "candidates": [], "kind": "none"} because', (), "none"),
        ('{"interpretable": false}', (), "none"),
    ],
)
def test_parse_answer_tolerant(text, matches, kind):
    v = parse_answer(text, CANDS)
    assert v.matches == matches and v.kind == kind and v.raw == text
    assert v.interpretable == bool(matches)
    assert len(v.candidate_kinds) == len(CANDS)


@pytest.mark.parametrize(
    "text",
    [
        "I cannot tell.",
        '{"interpretable": "perhaps"}',
        '{"interpretable": "yes", "candidates": [], "kind": "concrete"}',  # yes, but which?
        '{"interpretable": "yes", "candidates": [7], "kind": "concrete"}',  # not a shown number
        '{"interpretable": "yes", "candidates": [1], "kind": "nice"}',
        '{"interpretable": "yes", "candidates": [1]',  # truncated
    ],
)
def test_parse_answer_malformed(text):
    with pytest.raises(MalformedAnswer):
        parse_answer(text, CANDS)


def test_block_box_and_pictures():
    assert block_box((70, 70), (7, 7), 3, 3) == (20, 20, 50, 50)
    assert block_box((70, 70), (7, 7), 0, 0) == (0, 0, 20, 20)  # clipped at the corner
    assert block_box((70, 35), (7, 7), 6, 6, block=1) == (60, 30, 70, 35)
    with pytest.raises(ValueError):
        block_box((70, 70), (7, 7), 7, 0)
    with pytest.raises(ValueError):
        block_box((70, 70), (7, 7), 0, 0, block=2)
    im = Image.new("RGB", (70, 70), (0, 0, 255))
    marked = mark_box(im, (20, 20, 50, 50))
    assert marked.getpixel((20, 35)) == (255, 0, 0) and marked.getpixel((35, 35)) == (0, 0, 255)
    assert im.getpixel((20, 35)) == (0, 0, 255)  # original untouched
    assert crop_box(im, (20, 20, 50, 50), size=60).size == (60, 60)
    assert data_url(im).startswith("data:image/png;base64,")
    assert describe_position((7, 7), 0, 6) == "upper right"
    assert describe_position((7, 7), 3, 3) == "centre"
    assert describe_position((7, 7), 3, 0) == "middle left"


def test_build_messages_vision_and_text():
    cfg = LLMJudgeConfig(base_url="http://127.0.0.1:1/v1", model="m")
    im = Image.new("RGB", (64, 48), (10, 200, 10))
    c = JudgeCase(
        im,
        "im",
        1,
        2,
        (4, 4),
        ("grass", "the"),
        label="grass.n.01",
        image_labels=("grass.n.01", "pot_plant"),
        caption="A lawn.",
    )
    msgs = build_messages(c, cfg)
    parts = msgs[1]["content"]
    assert [p["type"] for p in parts] == ["text", "image_url", "image_url", "text"]
    assert parts[1]["image_url"]["url"].startswith("data:image/png;base64,")
    assert "1. grass" in parts[3]["text"] and "2. the" in parts[3]["text"]
    assert "grass" not in parts[0]["text"]  # the vision judge is not told the label
    text = build_messages(
        c, LLMJudgeConfig(base_url="http://127.0.0.1:1/v1", model="m", vision=False)
    )
    body = text[1]["content"]
    assert isinstance(body, str)
    assert (
        "A lawn." in body
        and "row 2, column 3" in body
        and "Annotated content of the region: grass." in body
        and "annotated in the image: grass, pot plant" in body
    )
    with pytest.raises(ValueError, match="needs the image"):
        build_messages(JudgeCase(None, "im", 0, 0, (4, 4), ("a",)), cfg)
