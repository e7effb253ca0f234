"""The registry of HF VLM families, keyed by HF ``model_type``.

:func:`family_for_config` finds a config's family by ``model_type``, then by
``architectures``; :func:`register_family` adds one (a user's own family, or a new HF
``model_type`` of a known family).

Example:
    >>> family_for_config(AutoConfig.from_pretrained("llava-hf/llava-1.5-7b-hf")).name
    'llava'
    >>> register_family(QwenVLFamily("my_qwen", "MyQwenForConditionalGeneration", QWEN_PLACEHOLDER))
"""

from __future__ import annotations

from typing import Any

from tl_latentlens.models.families.base import VLMFamily
from tl_latentlens.models.families.gemma import Gemma3Family
from tl_latentlens.models.families.idefics import Idefics3Family
from tl_latentlens.models.families.llava import AnyresLlavaFamily, LlavaFamily
from tl_latentlens.models.families.qwen import QWEN_PLACEHOLDER, QwenVLFamily

__all__ = ["FAMILIES", "family_for_config", "register_family", "supported_model_types"]

#: HF ``model_type`` -> family. Add to it with :func:`register_family`.
FAMILIES: dict[str, VLMFamily] = {}


def register_family(family: VLMFamily, *, replace: bool = False) -> VLMFamily:
    """Register ``family`` under its ``name`` (the HF ``model_type``).

    Raises:
        ValueError: The name is taken and ``replace`` is false.
    """
    if family.name in FAMILIES and not replace and FAMILIES[family.name] != family:
        raise ValueError(
            f"a VLM family {family.name!r} is already registered; pass replace=True to replace it"
        )
    FAMILIES[family.name] = family
    return family


for _family in (
    LlavaFamily("llava", "LlavaForConditionalGeneration"),
    AnyresLlavaFamily("llava_next", "LlavaNextForConditionalGeneration"),
    AnyresLlavaFamily("llava_onevision", "LlavaOnevisionForConditionalGeneration"),
    QwenVLFamily("qwen2_vl", "Qwen2VLForConditionalGeneration", QWEN_PLACEHOLDER),
    QwenVLFamily("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration", QWEN_PLACEHOLDER),
    QwenVLFamily("qwen3_vl", "Qwen3VLForConditionalGeneration", QWEN_PLACEHOLDER),
    Idefics3Family("idefics3", "Idefics3ForConditionalGeneration"),
    Gemma3Family("gemma3", "Gemma3ForConditionalGeneration", "<start_of_image>"),
):
    register_family(_family)


def supported_model_types() -> list[str]:
    """HF ``model_type`` values :func:`~tl_latentlens.models.load.load_vlm` supports."""
    return sorted(FAMILIES)


def family_for_config(hf_config: Any) -> VLMFamily:
    """The family of an HF config, by ``model_type`` then ``architectures``.

    Raises:
        ValueError: Unsupported family (the message lists the supported ones).
    """
    model_type = getattr(hf_config, "model_type", None)
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    archs = list(getattr(hf_config, "architectures", None) or [])
    for family in FAMILIES.values():
        if family.architecture in archs:
            return family
    supported = ", ".join(f"{k} ({f.architecture})" for k, f in sorted(FAMILIES.items()))
    raise ValueError(
        f"unsupported VLM family: model_type={model_type!r}, architectures={archs}. "
        f"Supported HF VLM families: {supported}"
    )
