"""Cold start: the dequantised GGUF weights are cached, keyed and checked by the GGUF's SHA-256."""

from __future__ import annotations

import json

import torch

from tiny_models import tiny_llama_dir
from tl_latentlens.default import assets, lm


def test_weights_cache_keyed_by_gguf_hash(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path / "cache"))
    tiny = tiny_llama_dir(tmp_path / "tiny")
    gguf = tmp_path / "pkg" / "m.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"version one")
    spec = lm.LMSpec("tiny", "x/tiny", "m.gguf", "LlamaForCausalLM")
    monkeypatch.setitem(lm.LM_SPECS, "tiny", spec)
    monkeypatch.setattr(lm.LMSpec, "gguf_path", lambda self: gguf)
    monkeypatch.setattr(lm, "_local_dir", lambda spec, g, model: tiny)
    real = AutoModelForCausalLM.from_pretrained
    dequantised = []

    def fake(path, *args, gguf_file=None, **kw):
        if gguf_file is None:
            return real(path, *args, **kw)
        dequantised.append(gguf_file)  # stands in for the slow GGUF path
        return real(str(tiny), *args, **kw)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", fake)

    first, _, _ = lm.load_hf_lm("tiny")
    sha = lm.file_sha256(gguf)
    cached = lm.weights_cache_dir(spec, sha)
    assert dequantised == ["m.gguf"] and (cached / "model.safetensors").is_file()
    assert json.loads((cached / "source.json").read_text())["gguf_sha256"] == sha

    second, _, _ = lm.load_hf_lm("tiny")
    assert dequantised == ["m.gguf"]  # read from the cache, not dequantised again
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name
    assert second.lm_head.weight.data_ptr() == second.model.embed_tokens.weight.data_ptr() or (
        not second.config.tie_word_embeddings
    )

    gguf.write_bytes(b"version two, longer")  # another GGUF: another key
    lm.load_hf_lm("tiny")
    assert len(dequantised) == 2
    other = lm.weights_cache_dir(spec, lm.file_sha256(gguf))
    assert other != cached and (other / "source.json").is_file()

    (other / "model.safetensors").write_bytes(b"torn")  # a damaged cache is rebuilt
    lm.load_hf_lm("tiny")
    assert len(dequantised) == 3
    rec = json.loads((other / "source.json").read_text())
    (other / "source.json").write_text(json.dumps({**rec, "gguf_sha256": "0" * 64}))
    lm.load_hf_lm("tiny")  # a record of another file is not trusted
    assert len(dequantised) == 4

    lm.load_hf_lm("tiny", cache=False)
    assert len(dequantised) == 5
