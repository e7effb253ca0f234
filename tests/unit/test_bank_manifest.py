"""The typed manifest: ``BankManifest.from_json`` validates, ``to_json`` gives the JSON back
exactly (unknown keys and explicit nulls included), and a bank's manifest.json is
``json.dumps(bank.manifest.to_json(), indent=2, sort_keys=True)`` byte for byte."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest

from tiny_models import WORDS
from tl_latentlens.bank import Bank, BankFormatError, build_bank
from tl_latentlens.bank.format import manifest as mf
from tl_latentlens.bank.format.config import FORMAT_VERSION
from tl_latentlens.bank.format.manifest import BankManifest, HookRecord

HOOKS = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_post"]
SHA = "ab" * 32


def manifest_json() -> dict:
    """A valid manifest with what older or newer writers may add: unknown keys at every level
    and optional keys holding null."""
    return {
        "format_version": FORMAT_VERSION,
        "generation": "0" * 32,
        "created": "2026-01-01T00:00:00+00:00",
        "library": {"tl_latentlens": "0.1.0", "hnswlib": None},
        "model": {"name": "m", "n_layers": 2, "weights": {"parts": {"embed": {"bf16": "x"}}}},
        "tokenizer": {"name": "t", "class": "T", "vocab_size": 9},
        "layer_convention": "layer l = ...",
        "hooks": [
            {
                "name": HOOKS[0],
                "layer": 0,
                "dir": f"hooks/{HOOKS[0]}",
                "n_vectors": 3,
                "n_duplicates": 1,
                "routes": None,
                "future": [1, 2],
            },
            {"name": HOOKS[1], "layer": 2, "routes": {"params": {"probe": 2}, "proven": True}},
        ],  # fmt: skip
        "d_model": 8,
        "dtype": "float16",
        "corpus": {"kind": "iterable", "fingerprint": "f" * 64, "skipped": {}},
        "counts": {"n_entries": 4, "n_sentences": 2, "n_token_types": 3, "n_other": 7},
        "build": {
            "content": {"max_tokens": None, "seed": 42},
            "forward_dtype": "float32",
            "new_option": {"a": 1},
        },  # fmt: skip
        "hnsw": {"library": "hnswlib", "M": 16, "ef_search": 64, "deterministic": True},
        "files": {"entries.npy": {"size": 10, "sha256": SHA}},
        "hub": {"repo_id": "org/bank", "commit": "c" * 40, "hooks_of_repo": 5},
        "unknown_top_level": {"kept": True},
    }


def test_round_trip_is_exact():
    obj = manifest_json()
    m = BankManifest.from_json(obj)
    assert m.to_json() == obj
    assert json.dumps(m.to_json(), sort_keys=True) == json.dumps(obj, sort_keys=True)
    assert m.extra == {"unknown_top_level": {"kept": True}}
    assert m.hooks[0].extra == {"routes": None, "future": [1, 2]}  # null kept as given
    assert m.hooks[0].routes is None and m.hooks[1].dir is None
    assert isinstance(m.hooks[1].layer, int)  # 2 stays 2, not 2.0


def test_typed_access():
    m = BankManifest.from_json(manifest_json())
    assert m.counts.n_entries == 4 and m.counts.n_full_token_types is None
    assert m.hook_names == HOOKS
    assert m.hook(HOOKS[1]).routes == {"params": {"probe": 2}, "proven": True}
    assert m.files["entries.npy"] == mf.FileRecord(10, SHA)
    assert m.hnsw.M == 16 and m.hnsw.space is None
    assert m.build is not None and m.build.forward_dtype == "float32"
    assert m.hub == mf.HubOrigin("org/bank", "c" * 40, 5)
    assert m.corpus_fingerprint == "f" * 64
    with pytest.raises(KeyError):
        m.hook("blocks.7.hook_resid_post")
    # the JSON view, for code written against the dict manifest
    assert m["counts"] == m.to_json()["counts"]
    assert mf.identity(m) == mf.identity(m.to_json())


def test_frozen_and_never_shares_mutable_state():
    obj = manifest_json()
    m = BankManifest.from_json(obj)
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.d_model = 9  # type: ignore[misc]
    obj["hooks"][1]["routes"]["proven"] = False  # the source changes after reading
    obj["model"]["name"] = "other"
    assert m.hook(HOOKS[1]).routes["proven"] is True and m.model["name"] == "m"
    out = m.to_json()
    out["counts"]["n_entries"] = 99
    out["hooks"][0]["future"].append(3)
    assert m.to_json() == manifest_json()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.update(format_version=1), "format version 1"),
        (lambda m: m.pop("files"), r"lacks the fields \['files'\]"),
        (lambda m: m.update(hooks=[]), "'hooks' must be a non-empty list"),
        (lambda m: m["counts"].update(n_sentences="2"), "counts.n_sentences"),
        (lambda m: m["hooks"][1].update(layer=5), "recorded at layer 5, but it is layer 2"),
        (lambda m: m["hooks"][0].update(n_vectors=-1), "n_vectors must be a non-negative int"),
        (lambda m: m["hooks"][1].update(routes=[1]), "'routes' must be an object"),
        (lambda m: m.update(build="fast"), "'build' must be an object"),
        (lambda m: m["files"].update({"/etc/passwd": {"size": 1, "sha256": SHA}}), "leaves"),
    ],
)
def test_from_json_validates(change, message, tmp_path):
    obj = manifest_json()
    change(obj)
    with pytest.raises(BankFormatError, match=message) as err:
        BankManifest.from_json(obj, tmp_path)
    assert str(tmp_path) in str(err.value)
    with pytest.raises(BankFormatError, match="not a JSON object"):
        BankManifest.from_json([obj])


def test_replace_builds_a_new_manifest():
    m = BankManifest.from_json(manifest_json())
    hooks = (dataclasses.replace(m.hooks[0], routes={"proven": False}), m.hooks[1])
    new = dataclasses.replace(m, hooks=hooks)
    assert new.to_json()["hooks"][0]["routes"] == {"proven": False}  # the field wins over extra
    assert m.to_json() == manifest_json()
    assert HookRecord.from_json({"name": HOOKS[0], "layer": 0}).to_json() == {
        "name": HOOKS[0],
        "layer": 0,
    }


def test_a_built_bank_manifest_is_to_json_byte_for_byte(tiny_vlm, tmp_path):
    sentences = [" ".join(WORDS[i : i + 4]) for i in range(6)]
    bank = build_bank(tiny_vlm, sentences, tmp_path / "b", HOOKS, progress=False, num_threads=1)
    raw = (bank.root / mf.MANIFEST).read_bytes()
    m = bank.manifest
    assert isinstance(m, BankManifest) and isinstance(mf.read_manifest(bank.root), BankManifest)
    assert json.dumps(m.to_json(), indent=2, sort_keys=True).encode() == raw
    assert m.build is not None and m.build.forward_dtype == "float32"
    assert [h.n_vectors for h in m.hooks] == [bank.n_vectors(h) for h in HOOKS]
    assert set(m.files) == set(mf.shared_files()) | {
        f for h in HOOKS for f in mf.hook_files(h, bank.dtype)
    }
    mf.write_manifest(tmp_path, m)  # written again: the same bytes
    assert (tmp_path / mf.MANIFEST).read_bytes() == raw
    again = Bank.open(bank.root, verify="full")
    assert again.manifest == m and copy.deepcopy(m) == m
