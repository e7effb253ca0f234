"""Importing indices of the official ``latentlens`` package (PyPI ``latentlens`` 0.1.0).

The index is built in the test by the package itself (``latentlens.build_index`` on the tiny
Llama, saved with ``ContextualIndex.save``), imported with ``Bank.from_latentlens``, and the
imported bank's search must give the package's own search results. The package is installed
without its dependencies (``pip install --no-deps latentlens==0.1.0``: it declares torchvision,
which this project never installs; its index and build modules do not use it).
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from tiny_models import WORDS
from tl_latentlens.bank import Bank, BankModelMismatchError, UnknownPretrainedError
from tl_latentlens.bank.hub.official import UntrustedPickleError

latentlens = pytest.importorskip(
    "latentlens", reason="pip install --no-deps latentlens==0.1.0 (scripts/setup.sh does)"
)

LAYERS = [0, 1, 2, 3]  # 3 == n_layers: HF's after-norm state, left out by the import


def corpus(n: int, seed: int = 21) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, rng.integers(3, 10))) for _ in range(n)]


@pytest.fixture(scope="module")
def official(tiny_llama_path, tmp_path_factory):
    """An index saved by the official package, and the package's loaded index."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_path).eval()
    tok = AutoTokenizer.from_pretrained(tiny_llama_path)
    index = latentlens.build_index(
        str(tiny_llama_path), corpus(40), layers=LAYERS, max_contexts_per_token=6,
        batch_size=8, show_progress=False, model=model, tokenizer=tok,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("official") / "index"
    index.save(path)
    return path, latentlens.ContextualIndex.from_directory(path)


def test_refuses_pickles_without_trust(tiny_vlm, official):
    path, _ = official
    with pytest.raises(UntrustedPickleError, match="pickles.*arbitrary code.*trust_pickle=True"):
        Bank.from_latentlens(path, tiny_vlm)


def test_imported_bank_searches_like_the_official_package(tiny_vlm, official, tmp_path, caplog):
    path, index = official
    with caplog.at_level(logging.INFO):
        bank = Bank.from_latentlens(path, tiny_vlm, trust_pickle=True, out_dir=tmp_path / "b")
    assert "loaded with torch.load(weights_only=True)" in caplog.text
    assert "after the final norm" in caplog.text  # layer 3 left out, with the reason
    assert bank.layers == {"blocks.0.hook_resid_pre": 0, "blocks.0.hook_resid_post": 1,
                           "blocks.1.hook_resid_post": 2}  # fmt: skip
    imported = bank.manifest.build.imported_from
    assert imported["entries_dropped"] == 0
    assert set(imported["loaded_with"].values()) == {"weights_only"}

    rng = np.random.default_rng(0)
    queries = torch.from_numpy(rng.standard_normal((6, bank.d_model)).astype(np.float32))
    # the official index's entries are distinct prefixes: one stored vector each, except at
    # layer 0 (a token's embedding), where we store a token once and official lists repeats
    want = index.search(queries, top_k=5, layers=[1, 2])
    got = bank.search(queries, hook=[1, 2], k=5)
    for w_row, g_row in zip(want, got):
        assert [(n.token_str, n.caption, n.position, n.contextual_layer) for n in w_row] == [
            (n.token, n.sentence, n.position, n.layer) for n in g_row
        ]
        np.testing.assert_allclose(
            [n.similarity for n in g_row], [n.similarity for n in w_row], atol=1e-5
        )
    # layer 0: the official top-k with repeats of a vector removed is ours
    want0 = index.search(queries, top_k=40, layers=[0])
    got0 = bank.search(queries, hook=0, k=5)
    for w_row, g_row in zip(want0, got0):
        distinct = list(dict.fromkeys(n.token_id for n in w_row))[:5]
        assert [n.token_id for n in g_row] == distinct
    # opening the same import again reuses it
    again = Bank.from_latentlens(path, tiny_vlm, trust_pickle=True, out_dir=tmp_path / "b")
    assert again.manifest.generation == bank.manifest.generation


def test_full_unpickle_fallback_is_logged(tiny_vlm, official, tmp_path, caplog):
    path, _ = official
    odd = tmp_path / "odd"
    (odd / "layer_2").mkdir(parents=True)
    (odd / "metadata.json").write_text(json.dumps({"layers": [2], "hidden_dim": 64}))
    cache = torch.load(path / "layer_2" / "embeddings_cache.pt", weights_only=True)
    cache["built_with"] = np.float64(1.0)  # a numpy scalar: refused by weights_only=True
    torch.save(cache, odd / "layer_2" / "embeddings_cache.pt")
    with caplog.at_level(logging.INFO):
        bank = Bank.from_latentlens(odd, tiny_vlm, trust_pickle=True, out_dir=tmp_path / "b")
    assert "cannot be loaded with torch.load(weights_only=True)" in caplog.text
    assert "a full unpickle (weights_only=False)" in caplog.text
    assert bank.manifest.build.imported_from["loaded_with"] == {"layer_2": "full unpickle"}


def test_wrong_model_is_refused(tiny_vlm, official, tmp_path):
    path, _ = official
    wide = tmp_path / "wide"
    (wide / "layer_1").mkdir(parents=True)
    (wide / "metadata.json").write_text(json.dumps({"layers": [1], "hidden_dim": 128}))
    with pytest.raises(BankModelMismatchError, match="hidden_dim 128.*d_model 64"):
        Bank.from_latentlens(wide, tiny_vlm, trust_pickle=True, out_dir=tmp_path / "b1")
    # same width, but the vectors are another layer's: the re-encoding check notices
    shifted = tmp_path / "shifted"
    (shifted / "layer_1").mkdir(parents=True)
    (shifted / "metadata.json").write_text(json.dumps({"layers": [1], "hidden_dim": 64}))
    (shifted / "layer_1" / "embeddings_cache.pt").write_bytes(
        (path / "layer_2" / "embeddings_cache.pt").read_bytes()
    )
    with pytest.raises(BankModelMismatchError, match="not this model's residuals"):
        Bank.from_latentlens(shifted, tiny_vlm, trust_pickle=True, out_dir=tmp_path / "b2")


def test_import_from_a_hub_repository(tiny_vlm, official, tmp_path, monkeypatch):
    """The official files on a (local, tests/fixtures/hub_server.py) hub: only the requested
    layers are downloaded."""
    from huggingface_hub import HfApi, constants

    from fixtures.hub_server import HubServer

    path, index = official
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with HubServer() as hub:
        api = HfApi(endpoint=hub.url, token="hf_test")
        api.create_repo("org/latentlens-tiny")
        api.upload_folder(repo_id="org/latentlens-tiny", folder_path=str(path))
        bank = Bank.from_latentlens(
            "org/latentlens-tiny", tiny_vlm, trust_pickle=True, layers=[2],
            out_dir=tmp_path / "b", endpoint=hub.url, cache_dir=str(tmp_path / "hf"),
        )  # fmt: skip
        assert set(hub.downloads()) == {"metadata.json", "layer_2/embeddings_cache.pt"}
    assert bank.hooks == ["blocks.1.hook_resid_post"]
    assert bank.manifest.corpus["source"].startswith("hf://org/latentlens-tiny@")
    q = torch.randn(3, bank.d_model)
    want = index.search(q, top_k=3, layers=[2])
    got = bank.search(q, k=3)
    assert [[n.caption for n in row] for row in want] == [[n.sentence for n in row] for row in got]


def test_a_registry_name_resolves_and_imports(tiny_vlm, official, tmp_path, monkeypatch, caplog):
    """A registry entry (the packaged registry's format) pointing at a repository on the local
    hub: ``Bank.from_latentlens(name, vlm)`` resolves the name to its repository and imports it,
    pinned to the entry's revision."""
    from huggingface_hub import HfApi, constants

    from fixtures.hub_server import HubServer
    from tl_latentlens.bank.hub import registry

    path, index = official
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with HubServer() as hub:
        api = HfApi(endpoint=hub.url, token="hf_test")
        api.create_repo("org/latentlens-tiny")
        api.upload_folder(repo_id="org/latentlens-tiny", folder_path=str(path))
        api.create_branch("org/latentlens-tiny", branch="v1")
        (tmp_path / "later").mkdir()
        (tmp_path / "later" / "metadata.json").write_text(json.dumps({"layers": [9]}))
        api.upload_folder(repo_id="org/latentlens-tiny", folder_path=str(tmp_path / "later"))
        entry = {"model": "tiny Llama", "kind": "llm", "repo_id": "org/latentlens-tiny",
                 "layers": [0, 1, 2, 3], "revision": "v1", "note": "a test fixture"}  # fmt: skip
        tiny = registry.parse_registry({"indices": {"tiny-official": entry}})
        monkeypatch.setattr(registry, "_package_registry", lambda: tiny)
        with caplog.at_level(logging.INFO):
            bank = Bank.from_latentlens(
                "Tiny-Official", tiny_vlm, trust_pickle=True, layers=[1, 2],
                out_dir=tmp_path / "b", endpoint=hub.url, cache_dir=str(tmp_path / "hf"),
            )  # fmt: skip
        assert set(hub.downloads()) == {
            "metadata.json", "layer_1/embeddings_cache.pt", "layer_2/embeddings_cache.pt"
        }  # fmt: skip
        v1 = hub._resolve("org/latentlens-tiny", "v1")
    assert "pretrained index 'tiny-official': org/latentlens-tiny (tiny Llama)" in caplog.text
    assert bank.manifest.corpus["source"] == f"hf://org/latentlens-tiny@{v1}"
    assert bank.layers == {"blocks.0.hook_resid_post": 1, "blocks.1.hook_resid_post": 2}
    q = torch.randn(4, bank.d_model)
    want = index.search(q, top_k=3, layers=[1, 2])
    got = bank.search(q, k=3)
    assert [[(n.caption, n.position) for n in row] for row in want] == [
        [(n.sentence, n.position) for n in row] for row in got
    ]
    with pytest.raises(UnknownPretrainedError, match="known names: tiny-official"):
        Bank.from_latentlens("tiny", tiny_vlm, trust_pickle=True)
