"""Shared pieces of the bank benchmarks: models, a synthetic corpus, timing helpers.

Models (``--model``):

* ``tiny`` — a random Llama, d_model 576, 4 layers (SmolLM2-135M's width and heads), with a
  word-level tokenizer of ``--vocab`` words that adds a BOS token; built in a temp dir.
* ``smollm2`` — SmolLM2-135M-Instruct from the packaged GGUF (``tl_latentlens.default.lm``).
* a path — a local Hugging Face causal-LM directory.
"""

from __future__ import annotations

import os
import platform
import resource
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tl_latentlens.models.base import VLM

_SYLLABLES = "ka ri to mu sen la vo pe di na gu shi ra te mo bi lu fa ze co".split()
ENGLISH = (
    "the a an of and to in on with is are was red green blue small big cat dog car tree house "
    "sky sun water road man woman child bird boat flower grass street city sits runs flies "
    "stands near under over white black yellow old new happy picture photo image shows"
).split()


class TextLM(VLM):
    """A bare language-model bridge as a :class:`VLM` (text only; no image front end)."""

    def __init__(self, bridge: Any, name: str) -> None:
        self.bridge, self.name = bridge, name

    def prepare(self, images: Any, prompt: str | None = None) -> Any:
        raise NotImplementedError("text-only model")


def words(n: int) -> list[str]:
    """``n`` distinct words: English ones first, then syllable pseudo-words."""
    out = list(dict.fromkeys(ENGLISH))
    rng = np.random.default_rng(123)
    seen = set(out)
    while len(out) < n:
        w = "".join(rng.choice(_SYLLABLES, rng.integers(2, 4)))
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out[:n]


def synthetic_corpus(n: int, vocab: list[str], seed: int = 0, zipf: float = 1.1) -> list[str]:
    """``n`` sentences of 6-20 words drawn Zipf-like from ``vocab`` (frequent words repeat, as
    in real captions, so the per-token cap matters)."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, len(vocab) + 1) ** zipf
    p /= p.sum()
    lengths = rng.integers(6, 21, n)
    idx = rng.choice(len(vocab), size=int(lengths.sum()), p=p)
    out, pos = [], 0
    for length in lengths:
        out.append(" ".join(vocab[i] for i in idx[pos : pos + length]))
        pos += length
    return out


def tiny_lm_dir(path: Path, vocab: list[str], d_model: int = 576, n_layers: int = 4) -> Path:
    """Save a random Llama + word-level tokenizer (BOS added) to ``path``."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    table = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3}
    for w in vocab + [".", ","]:
        table.setdefault(w, len(table))
    tok = Tokenizer(models.WordLevel(table, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
    )
    fast.save_pretrained(path)
    cfg = LlamaConfig(
        vocab_size=len(table), hidden_size=d_model, intermediate_size=1536, num_hidden_layers=n_layers,
        num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=512,
        bos_token_id=1, eos_token_id=2, pad_token_id=3, tie_word_embeddings=True,
    )  # fmt: skip
    cfg.architectures = ["LlamaForCausalLM"]
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).eval().save_pretrained(path)
    return Path(path)


@dataclass
class Loaded:
    """A benchmark model: the handle, the HF directory it came from, a description."""

    vlm: TextLM
    hf_dir: Path
    desc: str


def load_model(spec: str, vocab_size: int = 4000) -> Loaded:
    """Load ``tiny``, ``smollm2`` or a local HF directory as a :class:`TextLM`."""
    import torch
    from transformer_lens.model_bridge import TransformerBridge

    torch.set_grad_enabled(False)
    if spec == "smollm2":
        from tl_latentlens.default.lm import load_hf_lm, load_lm

        bridge = load_lm()
        hf_dir = load_hf_lm()[2]
        desc = "SmolLM2-135M-Instruct (packaged GGUF, dequantised fp32), 30 layers, d_model 576"
    else:
        if spec == "tiny":
            hf_dir = tiny_lm_dir(Path(tempfile.mkdtemp(prefix="bench-tiny-lm-")), words(vocab_size))
            desc = f"random Llama, 4 layers, d_model 576, word-level vocab {vocab_size + 6}"
        else:
            hf_dir, desc = Path(spec), f"HF model at {spec}"
        bridge = TransformerBridge.boot_transformers(str(hf_dir), device="cpu")
        bridge.eval()
    return Loaded(TextLM(bridge, name=spec), hf_dir, desc)


@contextmanager
def timer(store: dict[str, float], key: str):
    """Add the elapsed seconds of the block to ``store[key]``."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        store[key] = store.get(key, 0.0) + time.perf_counter() - t0


def fastest(fn, n: int = 3, warm_up: bool = False):
    """``(seconds, result)`` of the fastest of ``n`` calls of ``fn`` (after one untimed call
    when ``warm_up``)."""
    if warm_up:
        fn()
    runs = []
    for _ in range(n):
        t = time.perf_counter()
        out = fn()
        runs.append((time.perf_counter() - t, out))
    return min(runs, key=lambda r: r[0])


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    """Current resident memory, MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def dir_size(path: Path) -> int:
    """Bytes of all files under ``path``."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def machine() -> str:
    """One line about the machine and hnswlib build."""
    import hnswlib
    import torch

    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads), hnswlib {hnswlib.__version__ if hasattr(hnswlib, '__version__') else '0.8.0'} "
        "(pip build with HNSWLIB_NO_NATIVE=1: no -march=native)"
    )
