"""The registry of prebuilt official ``latentlens`` indices (``tl_latentlens.pretrained()``):
the packaged JSON file, its records, tables, and how names resolve (no network here; the
import of a registry entry from a local hub is in test_bank_official.py)."""

from __future__ import annotations

import dataclasses
import json
from importlib import resources

import pytest

import tl_latentlens
from tl_latentlens.bank import Bank, PretrainedIndex, UnknownPretrainedError, pretrained
from tl_latentlens.bank.errors import BankFormatError
from tl_latentlens.bank.hub import registry

#: The official README's "Pre-built Indices" tables (McGill-NLP/latentlens @ 36de5cb).
README_TABLE = {
    "Llama-3.1-8B": ("McGill-NLP/contextual_embeddings-llama3.1-8b", (1, 2, 4, 8, 16, 24, 30, 31), 32),
    "Gemma-2-9B": ("McGill-NLP/contextual_embeddings-gemma2-9b", (1, 2, 4, 8, 16, 24, 40, 41), 15),
    "Qwen2.5-7B": ("McGill-NLP/contextual_embeddings-qwen2.5-7b", (1, 2, 4, 8, 16, 24, 26, 27), 28),
    "Qwen2.5-VL-7B": ("McGill-NLP/contextual_embeddings-qwen2.5-vl-7b", (1, 2, 4, 8, 16, 24, 26, 27), 28),
    "Qwen3-VL-8B": ("McGill-NLP/contextual_embeddings-qwen3-vl-8b", (1, 2, 4, 8, 16, 24, 34, 35), 32),
    "Molmo2-8B": ("McGill-NLP/contextual_embeddings-molmo2-8b", (1, 2, 4, 8, 16, 24, 34, 35), 32),
}  # fmt: skip


def test_the_packaged_registry_lists_the_official_indices():
    # read as package data (importlib.resources), as an installed wheel reads it
    text = resources.files("tl_latentlens.bank.hub").joinpath("pretrained.json").read_text()
    assert json.loads(text)["indices"]
    indices = tl_latentlens.pretrained()
    assert indices is pretrained() and len(indices) == len(indices.names) >= 6
    by_model = {e.model: e for e in indices}
    for model, (repo, layers, size) in README_TABLE.items():
        entry = by_model[model]
        assert (entry.repo_id, entry.layers, entry.size_gb) == (repo, layers, size)
        assert entry.corpus == "concepts.txt"
    assert {e.kind for e in indices} == {"llm", "vlm"}
    assert [e.name for e in pretrained("vlm")] == [e.name for e in indices if e.kind == "vlm"]
    assert all(e.kind == "llm" for e in pretrained("llm")) and len(pretrained("llm")) == 3
    with pytest.raises(ValueError, match="kind must be one of"):
        pretrained("audio")  # type: ignore[arg-type]
    # an entry the README's tables do not hold says what is unconfirmed
    for entry in indices:
        if entry.model not in README_TABLE:
            assert entry.size_gb is None and entry.note


def test_records_are_frozen_and_tabulate():
    indices = pretrained()
    entry = indices["qwen2.5-vl-7b"]
    assert isinstance(entry, PretrainedIndex)
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.repo_id = "x/y"  # type: ignore[misc]
    assert indices["QWEN2.5-VL-7B"] is entry and indices[3] is indices.entries[3]
    assert "qwen2.5-vl-7b" in indices and "nope" not in indices
    assert entry.to_dict()["layers"] == list(entry.layers)
    table = str(indices).splitlines()
    assert table[0].split() == ["name", "model", "kind", "repo_id", "layers", "size_gb"]
    assert len(table) == len(indices) + 2
    row = next(line for line in table if line.startswith("gemma2-9b "))
    assert row.split() == ["gemma2-9b", "Gemma-2-9B", "llm",
                           "McGill-NLP/contextual_embeddings-gemma2-9b", "1,2,4,8,16,24,40,41",
                           "15", "GB"]  # fmt: skip
    assert repr(indices).startswith(f"PretrainedIndices({len(indices)} entries)")
    html = indices._repr_html_()
    assert html.count("<tr>") == len(indices) + 1 and "<td>Molmo2-8B</td>" in html
    df = indices.to_dataframe()
    assert list(df["name"]) == list(indices.names)
    assert df.set_index("name").loc["llama3.1-8b", "repo_id"] == README_TABLE["Llama-3.1-8B"][0]


def test_names_resolve_to_repositories_and_unknown_names_list_the_known(tmp_path, tiny_vlm):
    entry = pretrained()["molmo2-8b"]
    assert registry.resolve_source("molmo2-8b") == (entry.repo_id, entry)
    assert registry.resolve_source(" Molmo2-8B ") == (entry.repo_id, entry)
    assert registry.resolve_source(entry.repo_id) == (entry.repo_id, entry)
    assert registry.resolve_source("org/other") == ("org/other", None)
    assert registry.resolve_source(tmp_path) == (tmp_path, None)  # a folder wins
    (tmp_path / "molmo2-8b").mkdir()
    assert registry.resolve_source(str(tmp_path / "molmo2-8b"))[1] is None
    for bad in ("qwen-9000", "./missing/folder", "a/b/c"):
        with pytest.raises(UnknownPretrainedError, match="known names: llama3.1-8b, gemma2-9b"):
            registry.resolve_source(bad)
    # Bank.from_latentlens resolves before any download or pickle question
    with pytest.raises(UnknownPretrainedError, match="not a folder, a hub repository id") as err:
        Bank.from_latentlens("qwen-9000", tiny_vlm, trust_pickle=True)
    assert "qwen2.5-vl-7b" in str(err.value) and isinstance(err.value, ValueError)


def test_from_pretrained_points_official_indices_to_from_latentlens(tiny_vlm):
    for name in ("gemma2-9b", "McGill-NLP/contextual_embeddings-gemma2-9b"):
        with pytest.raises(UnknownPretrainedError, match=r"Bank.from_latentlens\('gemma2-9b'"):
            Bank.from_pretrained(name, tiny_vlm)


def test_malformed_registries_are_refused():
    good = {"model": "m", "kind": "llm", "repo_id": "org/x", "layers": [1, 2]}
    assert registry.parse_registry({"indices": {"x": good}})["x"].layers == (1, 2)
    bad = [
        ({}, "no 'indices'"),
        ({"indices": {"x": {**good, "repo_id": "x"}}}, "repo_id must be 'org/name'"),
        ({"indices": {"x": {**good, "layers": [1, -2]}}}, "non-negative ints"),
        ({"indices": {"x": {**good, "kind": "audio"}}}, "kind must be one of"),
        ({"indices": {"x": {**good, "size": 3}}}, r"unknown fields \['size'\]"),
        ({"indices": {"x": {k: v for k, v in good.items() if k != "model"}}}, "no 'model'"),
        ({"indices": {"x": good, "X": good}}, "repeats a name"),
    ]
    for data, match in bad:
        with pytest.raises(BankFormatError, match=match):
            registry.parse_registry(data)
