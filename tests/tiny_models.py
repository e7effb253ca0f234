"""Tiny random models built from configs (no downloads), shared by the unit tests."""

from __future__ import annotations

import json
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
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
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
            np.asarray(
                im.convert("RGB").resize((self.image_size, self.image_size)), dtype=np.float32
            )
            / 255.0
            for im in images
        ]
        return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2)

    def forward(self, pixels):
        return self.conv(pixels).flatten(2).transpose(1, 2)


def random_sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` sentences of 3-8 random :data:`WORDS` (seeded): a tiny bank's corpus."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(3, 9, (1,), generator=g))
        out.append(" ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (length,), generator=g)))
    return out


def random_image(seed: int = 0, size: int = 32) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


# ---- tiny Hugging Face VLMs (tests/unit/test_hf_vlm.py) --------------------------------------


def build_vlm_tokenizer(path: Path, specials: list[str], **named):
    """Word-level fast tokenizer over WORDS plus ``specials`` (each one id), saved to ``path``.

    ``named`` sets extra named special tokens / attributes (e.g. ``image_token="<image>"``).
    """
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3}
    for w in WORDS + [".", ",", "?", "!", ":"]:
        vocab.setdefault(w, len(vocab))
    for s in specials:
        vocab.setdefault(s, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens=named or None,
    )
    fast.save_pretrained(path)
    return fast


def _tiny_llama_text(tok, d_model: int = 32, n_layers: int = 2) -> dict:
    return dict(
        model_type="llama",
        vocab_size=len(tok),
        hidden_size=d_model,
        intermediate_size=2 * d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )


def _save_vlm(path: Path, model, processor) -> Path:
    processor.save_pretrained(path)
    model.eval().save_pretrained(path)
    return path


def _tiny_clip_vision():
    """A 2-layer CLIP vision tower on 32px images, patch 8 (a 4x4 grid + CLS)."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=24,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        projection_dim=24,
    )


def tiny_llava_dir(path: Path, seed: int = 0, strategy: str = "default") -> Path:
    """LLaVA-1.5 shaped: CLIP tower (32px, patch 8 -> 4x4 grid; CLS dropped unless
    ``strategy="full"``) + Llama."""
    from transformers import (
        CLIPImageProcessorPil,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    path = Path(path)
    tok = build_vlm_tokenizer(path, ["<image>"], image_token="<image>")
    vision = _tiny_clip_vision()
    cfg = LlavaConfig(
        vision_config=vision.to_dict(),
        text_config=_tiny_llama_text(tok),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy=strategy,
        projector_hidden_act="gelu",
    )
    cfg.architectures = ["LlavaForConditionalGeneration"]
    size = {"shortest_edge": 32}
    improc = CLIPImageProcessorPil(size=size, crop_size={"height": 32, "width": 32})
    proc = LlavaProcessor(
        image_processor=improc,
        tokenizer=tok,
        patch_size=8,
        vision_feature_select_strategy=strategy,
        num_additional_image_tokens=1,
    )
    torch.manual_seed(seed)
    return _save_vlm(path, LlavaForConditionalGeneration(cfg), proc)


QWEN_SPECIALS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


def _tiny_qwen_text(tok, d_model: int = 32, n_layers: int = 2) -> dict:
    # mrope_section halves must sum to head_dim / 2 (head_dim 8 -> 4 = 2 + 1 + 1).
    return dict(
        vocab_size=len(tok),
        hidden_size=d_model,
        intermediate_size=2 * d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]},
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )


def _qwen_common(path: Path, tok, vision: dict, config_cls, model_cls, arch, seed, text=None):
    from transformers import Qwen2VLImageProcessorPil

    ids = {s: tok.convert_tokens_to_ids(s) for s in QWEN_SPECIALS}
    cfg = config_cls(
        text_config={**_tiny_qwen_text(tok), **(text or {})},
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    cfg.architectures = [arch]
    # 32x32 image, patch 4, merge 2 -> 8x8 patches -> 4x4 visual tokens.
    improc = Qwen2VLImageProcessorPil(
        size={"shortest_edge": 16 * 16, "longest_edge": 48 * 48},
        patch_size=4,
        temporal_patch_size=2,
        merge_size=2,
    )
    # Saved as a real checkpoint is (tokenizer + preprocessor_config.json): the Qwen-VL
    # processors cannot even be constructed without torchvision (their video processor).
    improc.save_pretrained(path)
    torch.manual_seed(seed)
    model_cls(cfg).eval().save_pretrained(path)
    return path


def tiny_qwen2_vl_dir(path: Path, seed: int = 0) -> Path:
    """Qwen2-VL shaped: ViT (patch 4, merge 2) + Qwen2 text model with mRoPE."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    path = Path(path)
    tok = build_vlm_tokenizer(
        path, QWEN_SPECIALS, image_token="<|image_pad|>", video_token="<|video_pad|>"
    )
    vision = dict(
        depth=2,
        embed_dim=16,
        hidden_size=32,
        num_heads=2,
        mlp_ratio=2,
        patch_size=4,
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
    return _qwen_common(
        path,
        tok,
        vision,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        "Qwen2VLForConditionalGeneration",
        seed,
    )


def tiny_qwen2_5_vl_dir(path: Path, seed: int = 0) -> Path:
    """Qwen2.5-VL shaped: windowed ViT (patch 4, merge 2) + Qwen2 text model with mRoPE."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    path = Path(path)
    tok = build_vlm_tokenizer(
        path, QWEN_SPECIALS, image_token="<|image_pad|>", video_token="<|video_pad|>"
    )
    vision = dict(
        depth=2,
        hidden_size=16,
        intermediate_size=32,
        num_heads=2,
        out_hidden_size=32,
        patch_size=4,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=16,
        fullatt_block_indexes=[1],
    )
    return _qwen_common(
        path,
        tok,
        vision,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        "Qwen2_5_VLForConditionalGeneration",
        seed,
    )


IDEFICS3_SPECIALS = [
    "<fake_token_around_image>",
    "<image>",
    "<global-img>",
    "<end_of_utterance>",
    *[f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)],
]


def tiny_idefics3_dir(path: Path, seed: int = 0) -> Path:
    """Idefics3 shaped: SigLIP-like tower on 32px tiles (patch 4 -> 8x8, pixel shuffle 2 ->
    16 tokens per tile), image splitting into 32px tiles + a global thumbnail, Llama text."""
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
    )

    path = Path(path)
    tok = build_vlm_tokenizer(path, IDEFICS3_SPECIALS, image_token="<image>")
    cfg = Idefics3Config(
        vision_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=4,
        ),
        text_config=_tiny_llama_text(tok),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        scale_factor=2,
    )
    cfg.architectures = ["Idefics3ForConditionalGeneration"]
    improc = Idefics3ImageProcessorPil(
        size={"longest_edge": 64},
        max_image_size={"longest_edge": 32},
        do_image_splitting=True,
    )
    proc = Idefics3Processor(image_processor=improc, tokenizer=tok, image_seq_len=16)
    torch.manual_seed(seed)
    return _save_vlm(path, Idefics3ForConditionalGeneration(cfg), proc)


GEMMA3_SPECIALS = ["<start_of_image>", "<end_of_image>", "<image_soft_token>"]


def tiny_gemma3_dir(path: Path, seed: int = 0) -> Path:
    """Gemma3 multimodal shaped: SigLIP tower (32px, patch 4 -> 8x8, pooled to 4x4 = 16
    tokens) + Gemma3 text model."""
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessorPil,
        Gemma3Processor,
    )

    path = Path(path)
    tok = build_vlm_tokenizer(
        path,
        GEMMA3_SPECIALS,
        boi_token="<start_of_image>",
        eoi_token="<end_of_image>",
        image_token="<image_soft_token>",
    )
    ids = {s: tok.convert_tokens_to_ids(s) for s in GEMMA3_SPECIALS}
    cfg = Gemma3Config(
        vision_config=dict(
            model_type="siglip_vision_model",
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=4,
        ),
        text_config=dict(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            max_position_embeddings=512,
            sliding_window=16,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        ),
        mm_tokens_per_image=16,
        boi_token_index=ids["<start_of_image>"],
        eoi_token_index=ids["<end_of_image>"],
        image_token_index=ids["<image_soft_token>"],
    )
    cfg.architectures = ["Gemma3ForConditionalGeneration"]
    improc = Gemma3ImageProcessorPil(size={"height": 32, "width": 32})
    proc = Gemma3Processor(image_processor=improc, tokenizer=tok, image_seq_length=16)
    torch.manual_seed(seed)
    return _save_vlm(path, Gemma3ForConditionalGeneration(cfg), proc)


# Anyres (LLaVA-NeXT / LLaVA-OneVision): 32px base view, pinpoints of at most 2x1 tiles.
ANYRES_PINPOINTS = [[32, 32], [32, 64], [64, 32]]


def tiny_llava_next_dir(path: Path, seed: int = 0) -> Path:
    """LLaVA-NeXT shaped: CLIP tower (32px, patch 8 -> 4x4 per view, CLS dropped), anyres
    split over ``ANYRES_PINPOINTS`` (a 32px base view + up to two 32px tiles) + Llama."""
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
    )

    path = Path(path)
    tok = build_vlm_tokenizer(path, ["<image>"], image_token="<image>")
    vision = _tiny_clip_vision()
    cfg = LlavaNextConfig(
        vision_config=vision.to_dict(),
        text_config=_tiny_llama_text(tok),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=ANYRES_PINPOINTS,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    cfg.architectures = ["LlavaNextForConditionalGeneration"]
    improc = LlavaNextImageProcessorPil(
        size={"shortest_edge": 32},
        crop_size={"height": 32, "width": 32},
        image_grid_pinpoints=ANYRES_PINPOINTS,
    )
    proc = LlavaNextProcessor(
        image_processor=improc,
        tokenizer=tok,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    torch.manual_seed(seed)
    return _save_vlm(path, LlavaNextForConditionalGeneration(cfg), proc)


def tiny_llava_onevision_dir(path: Path, seed: int = 0) -> Path:
    """LLaVA-OneVision shaped: SigLIP tower (32px, patch 8 -> 4x4 per view, no CLS), anyres
    split over ``ANYRES_PINPOINTS`` + Qwen2 text model. Images only (no video processor)."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessorPil,
    )

    from tl_latentlens.models.families.llava import image_only_onevision_processor

    path = Path(path)
    tok = build_vlm_tokenizer(
        path, ["<image>", "<video>"], image_token="<image>", video_token="<video>"
    )
    text = dict(_tiny_llama_text(tok), model_type="qwen2")
    cfg = LlavaOnevisionConfig(
        vision_config=dict(
            model_type="siglip_vision_model",
            hidden_size=24,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        text_config=text,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        video_token_id=tok.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=ANYRES_PINPOINTS,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
    )
    cfg.architectures = ["LlavaOnevisionForConditionalGeneration"]
    improc = LlavaOnevisionImageProcessorPil(
        size={"height": 32, "width": 32},
        image_grid_pinpoints=ANYRES_PINPOINTS,
    )
    # Saved as a real checkpoint is (tokenizer + preprocessor and processor configs): the
    # OneVision processor cannot be saved or loaded without torchvision (its video processor).
    image_only_onevision_processor(improc, tok, num_image_tokens=16)  # it builds
    improc.save_pretrained(path)
    (path / "processor_config.json").write_text(
        json.dumps(
            {
                "processor_class": "LlavaOnevisionProcessor",
                "num_image_tokens": 16,
                "vision_feature_select_strategy": "full",
                "vision_aspect_ratio": "anyres_max_9",
            }
        )
    )
    torch.manual_seed(seed)
    LlavaOnevisionForConditionalGeneration(cfg).eval().save_pretrained(path)
    return path


def tiny_qwen3_vl_dir(path: Path, seed: int = 0) -> Path:
    """Qwen3-VL shaped: ViT with learned position embeddings and DeepStack mergers after
    vision blocks 0 and 1 (patch 4, merge 2) + Qwen3 text model (QK-norm, interleaved mRoPE)."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    path = Path(path)
    tok = build_vlm_tokenizer(
        path, QWEN_SPECIALS, image_token="<|image_pad|>", video_token="<|video_pad|>"
    )
    vision = dict(
        depth=2,
        hidden_size=16,
        intermediate_size=32,
        num_heads=2,
        out_hidden_size=32,
        patch_size=4,
        spatial_merge_size=2,
        temporal_patch_size=2,
        num_position_embeddings=64,
        deepstack_visual_indexes=[0, 1],
    )
    text = dict(
        head_dim=8,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [2, 1, 1],
            "mrope_interleaved": True,
        },
    )
    return _qwen_common(
        path,
        tok,
        vision,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        "Qwen3VLForConditionalGeneration",
        seed,
        text=text,
    )
