"""Banks on the hub with no network: ``push_to_hub`` / ``from_pretrained`` through the real
``huggingface_hub`` client against a local endpoint (tests/fixtures/hub_server.py).

Why a local endpoint rather than a cache laid out by hand: the push (create repo, branch,
preupload, commit), the download (repo info, tree listing, HEAD + GET per file, the
``allow_patterns`` filter) and the hub cache itself (blobs, ``snapshots/<commit>``, ``refs``,
tree listing) are then all huggingface_hub's own code and layout, exactly as with the real hub;
the offline checks read that cache with the server shut down and ``HF_HUB_OFFLINE`` on. The
endpoint accepts only inline ("regular") uploads, so LFS/Xet transfers are not exercised.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import constants

from fixtures.hub_server import HubServer
from tiny_models import WORDS
from tl_latentlens.bank import Bank, CorruptBankError, MissingHookError, build_bank
from tl_latentlens.bank.format import manifest as mf
from tl_latentlens.bank.hub.remote import HubBankError

HOOKS = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]
TOKEN = "hf_test_token"


def corpus(n: int, seed: int = 3) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, rng.integers(2, 10))) for _ in range(n)]


@pytest.fixture(scope="module")
def bank(tiny_vlm, tmp_path_factory):
    out = tmp_path_factory.mktemp("hub") / "bank"
    return build_bank(tiny_vlm, corpus(30), out, HOOKS, progress=False, num_threads=1)


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("TL_LATENTLENS_CACHE", str(tmp_path / "tl-cache"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return {"cache_dir": str(tmp_path / "hf-cache"), "token": TOKEN}


def search(b: Bank, hook: str, q: np.ndarray):
    return [[(n.token, n.sentence, n.position, round(n.similarity, 6)) for n in row]
            for row in b.search(q, hook=hook, k=4)]  # fmt: skip


def test_push_then_download_only_the_requested_hooks_and_offline(tiny_vlm, bank, env, monkeypatch):
    q = np.random.default_rng(0).standard_normal((3, bank.d_model)).astype(np.float32)
    with HubServer() as hub:
        commit = bank.push_to_hub("org/bank", endpoint=hub.url, token=TOKEN)
        files = hub.files("org/bank")
        assert set(files) == set(bank.manifest.files) | {mf.MANIFEST, "README.md"}
        for rel in bank.manifest.files:
            assert files[rel] == (bank.root / rel).read_bytes(), rel
        assert 'Bank.from_pretrained("org/bank"' in files["README.md"].decode()

        got = Bank.from_pretrained("org/bank", tiny_vlm, hooks=[2], endpoint=hub.url, **env)
        assert got.hooks == [HOOKS[1]]  # layer 2
        want = {mf.MANIFEST, *mf.shared_files(), *mf.hook_files(HOOKS[1], bank.dtype)}
        assert set(hub.downloads()) == want  # nothing of the other hooks was fetched
        assert search(got, HOOKS[1], q) == search(bank, HOOKS[1], q)
        assert got.manifest.hub.commit == commit
    # offline: the server is gone, the hub cache answers
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    again = Bank.from_pretrained("org/bank", tiny_vlm, hooks=["blocks.2.hook_resid_pre"], **env)
    assert again.hooks == [HOOKS[1]]
    assert search(again, HOOKS[1], q) == search(bank, HOOKS[1], q)
    with pytest.raises(HubBankError, match="only hooks downloaded before"):
        Bank.from_pretrained("org/bank", hooks=[HOOKS[2]], **env)
    with pytest.raises(MissingHookError, match="stores no hook for 7"):
        Bank.from_pretrained("org/bank", hooks=[7], **env)
    with pytest.raises(HubBankError, match="run once with network access"):
        Bank.from_pretrained("org/other", **env)


def test_corrupt_download_is_refused(tiny_vlm, bank, env):
    with HubServer() as hub:
        bank.push_to_hub("org/bank", endpoint=hub.url, token=TOKEN)
        Bank.from_pretrained("org/bank", hooks=[0], endpoint=hub.url, **env)
        blobs = Path(env["cache_dir"]).glob("models--org--bank/snapshots/*/hooks/"
                                            f"{HOOKS[0]}/vectors.npy")  # fmt: skip
        blob = Path(next(blobs)).resolve()
        data = bytearray(blob.read_bytes())
        data[-1] ^= 0xFF  # same size, one flipped byte
        blob.write_bytes(bytes(data))
        with pytest.raises(CorruptBankError, match="SHA-256.*force_download=True"):
            Bank.from_pretrained("org/bank", hooks=[0], endpoint=hub.url, **env)
        fixed = Bank.from_pretrained(
            "org/bank", hooks=[0], endpoint=hub.url, force_download=True, **env
        )
        assert fixed.hooks == [HOOKS[0]]


def test_revisions_and_a_smaller_push_replacing_a_bigger_one(tiny_vlm, bank, env, tmp_path):
    small = build_bank(tiny_vlm, corpus(12, seed=9), tmp_path / "small", HOOKS[:1],
                       progress=False, num_threads=1)  # fmt: skip
    with HubServer() as hub:
        v1 = bank.push_to_hub("org/bank", endpoint=hub.url, token=TOKEN, revision="v1")
        bank.push_to_hub("org/bank", endpoint=hub.url, token=TOKEN)
        small.push_to_hub("org/bank", endpoint=hub.url, token=TOKEN)
        assert set(hub.files("org/bank")) == set(small.manifest.files) | {
            mf.MANIFEST, "README.md"}  # fmt: skip
        main = Bank.from_pretrained("org/bank", endpoint=hub.url, **env)
        old = Bank.from_pretrained("org/bank", revision="v1", endpoint=hub.url, **env)
        pinned = Bank.from_pretrained("org/bank", revision=v1, hooks=[3], endpoint=hub.url, **env)
    assert main.hooks == HOOKS[:1] and main.n_sentences == small.n_sentences
    assert old.hooks == HOOKS and old.n_sentences == bank.n_sentences
    assert pinned.hooks == [HOOKS[2]]


def test_a_published_bank_opens_by_its_registry_name(tiny_vlm, bank, env, monkeypatch):
    """A registry entry of format ``tl_latentlens`` names a bank on the hub: from_pretrained
    takes the name (and the entry's pinned revision); from_latentlens points back to it."""
    from tl_latentlens.bank import UnknownPretrainedError
    from tl_latentlens.bank.hub import registry

    q = np.random.default_rng(2).standard_normal((2, bank.d_model)).astype(np.float32)
    with HubServer() as hub:
        v1 = bank.push_to_hub("org/bank", endpoint=hub.url, token=TOKEN, revision="v1")
        entry = {"model": "tiny", "kind": "llm", "repo_id": "org/bank", "layers": [0, 2, 3],
                 "revision": "v1", "format": "tl_latentlens"}  # fmt: skip
        tiny = registry.parse_registry({"indices": {"tiny-bank": entry}})
        monkeypatch.setattr(registry, "_package_registry", lambda: tiny)
        got = Bank.from_pretrained("tiny-bank", tiny_vlm, hooks=[2], endpoint=hub.url, **env)
    assert got.manifest.hub.commit == v1 and got.hooks == [HOOKS[1]]
    assert search(got, HOOKS[1], q) == search(bank, HOOKS[1], q)
    with pytest.raises(UnknownPretrainedError, match=r"Bank.from_pretrained\('tiny-bank'"):
        Bank.from_latentlens("tiny-bank", tiny_vlm, trust_pickle=True)
