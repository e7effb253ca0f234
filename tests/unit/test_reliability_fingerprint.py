"""Model identity: one cached, dtype-independent weight digest per part (issue 14 item 3,
issue 10 item 7)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import tl_latentlens.models.base as base_mod
from tiny_models import WORDS
from tl_latentlens.bank import Bank, BankModelMismatchError, build_bank
from tl_latentlens.bank.format.manifest import model_differences
from tl_latentlens.models.connector import ConnectorVLM

HOOKS = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_post"]  # needs embed + blocks 0, 1


def clone(vlm, dtype=None, name=None, edit=None) -> ConnectorVLM:
    bridge = copy.deepcopy(vlm.bridge)
    if edit is not None:
        with torch.no_grad():
            edit(bridge)
    if dtype is not None:
        bridge = bridge.to(dtype)
    return ConnectorVLM(
        bridge,
        vlm.encoder,
        copy.deepcopy(vlm.connector).to(dtype or torch.float32),
        name=name or vlm.name,
    )


@pytest.fixture(scope="module")
def bf16_exact(tiny_vlm):
    """The tiny model with every weight rounded to a bfloat16 value (kept in float32), as
    models published in bfloat16 and loaded in float32 are."""

    def round_all(bridge):
        for p in bridge.parameters():
            p.copy_(p.to(torch.bfloat16).to(torch.float32))

    return clone(tiny_vlm, edit=round_all, name="hub/tiny")


@pytest.fixture(scope="module")
def bank_dir(bf16_exact, tmp_path_factory):
    rng = np.random.default_rng(0)
    sents = [" ".join(rng.choice(WORDS, rng.integers(3, 8))) for _ in range(12)]
    out = tmp_path_factory.mktemp("fp") / "bank"
    build_bank(bf16_exact, sents, out, HOOKS, max_per_token=None, progress=False)
    return out


def test_fingerprint_is_computed_once_and_cached(tiny_vlm, monkeypatch):
    calls = []
    real = base_mod.digest_parts
    monkeypatch.setattr(base_mod, "digest_parts", lambda parts: calls.append(1) or real(parts))
    vlm = clone(tiny_vlm)
    fp = vlm.fingerprint()
    assert vlm.fingerprint() == fp and vlm.fingerprint() == fp
    assert len(calls) == 1
    with torch.no_grad():  # an in-place change is seen (version counter)
        vlm.bridge.blocks[0].mlp.original_component.down_proj.weight.mul_(2.0)
    assert vlm.fingerprint() != fp and len(calls) == 2
    vlm.fingerprint(refresh=True)
    assert len(calls) == 3


def test_parts_cover_embedding_and_every_block(tiny_vlm):
    parts = tiny_vlm.fingerprint()["weights"]["parts"]
    assert list(parts) == ["embed"] + [f"blocks.{i}" for i in range(tiny_vlm.n_layers)]
    assert all(set(d) == {"bf16", "fp16"} for d in parts.values())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_same_bf16_weights_in_another_dtype_and_name_are_accepted(bf16_exact, bank_dir, dtype):
    other = clone(bf16_exact, dtype=dtype, name="/local/copy/of/tiny")
    assert model_differences(bf16_exact.fingerprint(), other.fingerprint(), HOOKS) == []
    Bank.open(bank_dir, other)  # accepted: same weights, other dtype, other name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_float32_weights_match_their_bf16_or_fp16_cast(tiny_vlm, dtype):
    other = clone(tiny_vlm, dtype=dtype)
    assert model_differences(tiny_vlm.fingerprint(), other.fingerprint(), HOOKS) == []


def test_rebuilding_with_the_same_weights_elsewhere_reuses_the_bank(bf16_exact, bank_dir, caplog):
    rng = np.random.default_rng(0)
    sents = [" ".join(rng.choice(WORDS, rng.integers(3, 8))) for _ in range(12)]
    other = clone(bf16_exact, dtype=torch.bfloat16, name="/local/copy")
    with caplog.at_level("INFO", logger="tl_latentlens.bank"):
        bank = build_bank(other, sents, bank_dir, HOOKS, max_per_token=None, progress=False)
    assert "an identical bank exists" in caplog.text
    assert bank.manifest.model["name"] == "hub/tiny"


def test_one_changed_block_weight_is_refused_naming_the_block(bf16_exact, bank_dir):
    def edit(bridge):
        bridge.blocks[1].attn.original_component.o_proj.weight[0, 0] += 0.5

    tuned = clone(bf16_exact, edit=edit)  # same embeddings, another block 1 (a fine-tune)
    assert tuned.fingerprint()["embedding_sha256"] == bf16_exact.fingerprint()["embedding_sha256"]
    assert model_differences(bf16_exact.fingerprint(), tuned.fingerprint(), HOOKS) == [
        "weights of blocks.1 differ (digests of the embedding and blocks 0-1 are compared, "
        "dtype-independently)"
    ]
    with pytest.raises(BankModelMismatchError, match=r"weights of blocks\.1 differ.*build_bank"):
        Bank.open(bank_dir, tuned)
    with pytest.raises(BankModelMismatchError):  # in bfloat16 too
        Bank.open(bank_dir, clone(tuned, dtype=torch.bfloat16))


def test_a_block_after_the_last_hook_does_not_matter(bf16_exact, bank_dir):
    def edit(bridge):
        bridge.blocks[2].mlp.original_component.up_proj.weight.mul_(3.0)

    Bank.open(bank_dir, clone(bf16_exact, edit=edit))


def test_changed_embedding_is_refused(bf16_exact, bank_dir):
    def edit(bridge):
        bridge.embed.original_component.weight[5] *= -1

    with pytest.raises(BankModelMismatchError, match="weights of embed differ"):
        Bank.open(bank_dir, clone(bf16_exact, edit=edit))


def test_hf_vlm_parts_are_the_language_model(tmp_path):
    from tiny_models import tiny_llava_dir
    from tl_latentlens.models.load import load_vlm

    vlm = load_vlm(tiny_llava_dir(tmp_path), device="cpu")
    parts = vlm.fingerprint_parts()
    assert list(parts) == ["embed"] + [f"blocks.{i}" for i in range(vlm.n_layers)]
    assert any(t is vlm.embedding_matrix() for _, t in parts["embed"])
    fp = vlm.fingerprint()
    assert model_differences(fp, clone_hf(vlm).fingerprint(), ["blocks.1.hook_resid_post"]) == []


def clone_hf(vlm):
    from tl_latentlens.models.hf_vlm import HFVLM

    return HFVLM(copy.deepcopy(vlm.bridge).to(torch.bfloat16), name="elsewhere")


def test_kept_fingerprint_is_read_by_the_next_load_of_the_same_source(
    tiny_vlm, tmp_path, monkeypatch
):
    """A loader that knows its weights' source keeps the digests on disk; the next handle
    loaded from that source reads them instead of hashing, unless anything differs."""
    calls = []
    real = base_mod.digest_parts
    monkeypatch.setattr(base_mod, "digest_parts", lambda parts: calls.append(1) or real(parts))
    store, source = tmp_path / "fp" / "fingerprint.json", {"gguf_sha256": "ab", "dtype": "f32"}
    first = clone(tiny_vlm)
    first.keep_fingerprint(store, source)
    want = first.fingerprint()
    assert len(calls) == 1 and store.is_file()

    second = clone(tiny_vlm)
    second.keep_fingerprint(store, source)
    assert second.fingerprint() == want and len(calls) == 1  # read, not hashed

    other = clone(tiny_vlm)
    other.keep_fingerprint(store, {**source, "gguf_sha256": "cd"})  # another source
    assert other.fingerprint() == want and len(calls) == 2

    edited = clone(tiny_vlm)
    edited.keep_fingerprint(store, {**source, "gguf_sha256": "cd"})
    with torch.no_grad():  # changed after loading: the kept digests no longer apply
        edited.bridge.blocks[0].mlp.original_component.down_proj.weight.mul_(2.0)
    assert edited.fingerprint() != want and len(calls) == 3

    store.write_text('{"source": {"gguf_sha256": "ab", "dtype": "f32"}, "parts": [1]}')
    broken = clone(tiny_vlm)
    broken.keep_fingerprint(store, source)
    assert broken.fingerprint() == want and len(calls) == 4  # malformed: hashed again
