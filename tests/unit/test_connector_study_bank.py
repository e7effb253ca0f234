"""The table bank of docs/default_connector.md: its corpus and hooks (no model, no data)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tl_latentlens.apps import connector_study


@pytest.fixture
def fake_sources(monkeypatch):
    calls = {}

    def fake_phrases(nouns, per_noun, seed):
        calls["phrases"] = (list(nouns), per_noun, seed)
        return [f"A {n}." for n in nouns]

    def fake_nouns(n):
        calls["nouns"] = n
        return ["kettle", "dog"]

    monkeypatch.setattr(connector_study, "load_stamps", lambda: ["s1", "s2", "s3"])
    monkeypatch.setattr(connector_study, "stamp_captions", lambda stamps: ["A dog.", "A cat."])
    monkeypatch.setattr(connector_study, "concrete_nouns", fake_nouns)
    monkeypatch.setattr(connector_study, "visual_phrases", fake_phrases)

    def fake_noun_phrases(nouns, per_noun, seed):
        calls["noun_phrases"] = (list(nouns), per_noun, seed)
        return [f"A {n}." for n in nouns] + [f"The {n} is red." for n in nouns]

    monkeypatch.setattr(connector_study, "noun_phrases", fake_noun_phrases)
    return calls


def test_corpus_is_captions_then_one_phrase_per_noun_deduplicated(fake_sources):
    sentences = connector_study.table_bank_corpus()
    assert sentences == ["A dog.", "A cat.", "A kettle."]
    assert fake_sources["nouns"] == connector_study.TABLE_BANK_NOUNS == 1200
    assert fake_sources["phrases"] == (["kettle", "dog"], 1, 0)


def test_phrases_corpus_is_captions_then_six_noun_led_phrases_per_noun(fake_sources):
    sentences = connector_study.table_bank_corpus(corpus="phrases")
    assert sentences == ["A dog.", "A cat.", "A kettle.", "The kettle is red.", "The dog is red."]
    assert fake_sources["noun_phrases"] == (["kettle", "dog"], 6, 0)
    assert "phrases" not in fake_sources  # B1's phrases are not drawn


def test_unknown_corpus_is_refused_naming_the_choices(fake_sources):
    with pytest.raises(ValueError, match="'glosses'.*'visual', 'phrases'"):
        connector_study.table_bank_corpus(corpus="glosses")


def test_build_table_bank_passes_its_corpus(fake_sources, monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(
        connector_study, "bank_build", lambda vlm, s, out, **kw: seen.update(sentences=s)
    )
    connector_study.build_table_bank(SimpleNamespace(n_layers=30), tmp_path / "b", "phrases")
    assert seen["sentences"][-1] == "The dog is red."


def test_build_table_bank_stores_the_table_layers(fake_sources, monkeypatch, tmp_path):
    seen = {}

    def fake_build(vlm, sentences, out, hooks=None, **kw):
        seen.update(sentences=sentences, out=out, hooks=hooks, **kw)
        return "bank"

    monkeypatch.setattr(connector_study, "bank_build", fake_build)
    vlm = SimpleNamespace(n_layers=30)
    assert connector_study.build_table_bank(vlm, tmp_path / "b") == "bank"
    assert seen["hooks"] == [
        "blocks.0.hook_resid_pre",  # the canonical names of layers 0, 2, 8, 16, 24, as in
        "blocks.1.hook_resid_post",  # the bank the table was measured with
        "blocks.7.hook_resid_post",
        "blocks.15.hook_resid_post",
        "blocks.23.hook_resid_post",
    ]
    assert seen["max_per_token"] == 20
    assert seen["sentences"] == ["A dog.", "A cat.", "A kettle."]


def test_existing_bank_is_opened_not_rebuilt(monkeypatch, tmp_path):
    (tmp_path / "manifest.json").write_text("{}")
    monkeypatch.setattr(connector_study.Bank, "open", classmethod(lambda cls, p, v: ("open", p)))
    monkeypatch.setattr(connector_study, "bank_build", lambda *a, **k: pytest.fail("rebuilt"))
    assert connector_study.build_table_bank(SimpleNamespace(n_layers=30), tmp_path) == (
        "open",
        tmp_path,
    )


def test_build_bank_flag_needs_a_bank_dir():
    with pytest.raises(SystemExit):
        connector_study.main(["--connector", "x", "--out", "y", "--build-bank"])
