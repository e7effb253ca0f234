"""HF VLM families (LLaVA, LLaVA-NeXT, LLaVA-OneVision, Qwen2/2.5/3-VL, Idefics3, Gemma3) and
their registry."""

from tl_latentlens.models.families.base import VLMFamily, image_token_id
from tl_latentlens.models.families.registry import (
    FAMILIES,
    family_for_config,
    register_family,
    supported_model_types,
)

__all__ = [
    "FAMILIES",
    "VLMFamily",
    "family_for_config",
    "image_token_id",
    "register_family",
    "supported_model_types",
]
