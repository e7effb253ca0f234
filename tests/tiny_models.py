"""Tiny random models built from configs (no downloads), shared by the unit tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

WORDS = (
    "the a an of and to in on with is are was red green blue small big cat dog car tree house "
    "sky sun water road man woman child bird boat flower grass street city sits runs flies "
    "stands near under over white black yellow old new happy picture photo image shows"
).split()


def build_tokenizer(path: Path):
    """A word-level fast tokenizer over WORDS, saved to ``path`` (bridges reload from disk)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3}
    for w in WORDS + [".", ",", "?", "!", ":"]:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    fast.save_pretrained(path)
    return fast


def tiny_llama_dir(path: Path, n_layers: int = 3, d_model: int = 64, seed: int = 0) -> Path:
    """Save a random tiny Llama + tokenizer to ``path``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    tok = build_tokenizer(path)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=d_model,
        intermediate_size=2 * d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    cfg.architectures = ["LlamaForCausalLM"]
    torch.manual_seed(seed)
    LlamaForCausalLM(cfg).eval().save_pretrained(path)
    return path


class TinyEncoder(nn.Module):
    """A random patchifying conv encoder: 32x32 image -> 4x4 grid of d_vision features."""

    def __init__(self, d_vision: int = 24, image_size: int = 32, patch: int = 8, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.d_vision, self.image_size = d_vision, image_size
        self.grid = (image_size // patch, image_size // patch)
        self.conv = nn.Conv2d(3, d_vision, kernel_size=patch, stride=patch)
        self.eval()

    def preprocess(self, images):
        arrs = [
            np.asarray(im.convert("RGB").resize((self.image_size, self.image_size)), dtype=np.float32)
            / 255.0
            for im in images
        ]
        return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2)

    def forward(self, pixels):
        return self.conv(pixels).flatten(2).transpose(1, 2)


def random_image(seed: int = 0, size: int = 32) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
