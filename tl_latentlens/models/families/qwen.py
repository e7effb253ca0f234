"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL: dynamic-resolution ViT, merged patch grid, 3-D mRoPE.

Layout: the merged patch grid ``image_grid_thw[1:] // spatial_merge_size``, row-major (each
visual token is one ``merge x merge`` block of patches).

Qwen3-VL adds DeepStack: features of early vision blocks are *added* to the residual stream
at the visual positions after the first decoder layers. ``blocks.0.hook_resid_pre`` is still
the projector (``model.visual.merger``) output; ``blocks.{l}.hook_resid_pre`` for the next
``len(deepstack_visual_indexes)`` layers includes the injected features (HF's
``hidden_states[l]`` is recorded before the addition, so the two differ there).

The HF Qwen-VL processors cannot be built without torchvision (their video processor needs
it); :func:`image_only_qwen_processor` builds them with the video slot empty.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers import Qwen2_5_VLProcessor, Qwen2VLProcessor, Qwen3VLProcessor

from tl_latentlens.models.base import ImageTokenMismatchError, VisualLayout
from tl_latentlens.models.families.base import (
    ImageOnlyProcessorMixin,
    VLMFamily,
    image_token_id,
    token_positions,
)

__all__ = [
    "QWEN_PLACEHOLDER",
    "QwenVLFamily",
    "image_only_qwen_processor",
]

logger = logging.getLogger(__name__)

QWEN_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"


class ImageOnlyQwen2VLProcessor(ImageOnlyProcessorMixin, Qwen2VLProcessor):
    """``Qwen2VLProcessor`` without a video processor."""


class ImageOnlyQwen2_5_VLProcessor(ImageOnlyProcessorMixin, Qwen2_5_VLProcessor):
    """``Qwen2_5_VLProcessor`` without a video processor."""


class ImageOnlyQwen3VLProcessor(ImageOnlyProcessorMixin, Qwen3VLProcessor):
    """``Qwen3VLProcessor`` without a video processor."""


_IMAGE_ONLY_PROCESSORS = {
    "Qwen2VLForConditionalGeneration": ImageOnlyQwen2VLProcessor,
    "Qwen2_5_VLForConditionalGeneration": ImageOnlyQwen2_5_VLProcessor,
    "Qwen3VLForConditionalGeneration": ImageOnlyQwen3VLProcessor,
}


def image_only_qwen_processor(architecture: str, image_processor: Any, tokenizer: Any) -> Any:
    """The Qwen-VL processor of ``architecture`` from a tokenizer and an image processor.

    Args:
        architecture: ``"Qwen2VLForConditionalGeneration"``,
            ``"Qwen2_5_VLForConditionalGeneration"`` or ``"Qwen3VLForConditionalGeneration"``.
        image_processor: E.g. ``Qwen2VLImageProcessorPil`` (what ``AutoImageProcessor`` gives
            without torchvision).
        tokenizer: The model's tokenizer (with ``<|image_pad|>``).

    Raises:
        ValueError: Not a Qwen-VL architecture.

    Example:
        >>> proc = image_only_qwen_processor(
        ...     "Qwen2_5_VLForConditionalGeneration",
        ...     AutoImageProcessor.from_pretrained(path),
        ...     AutoTokenizer.from_pretrained(path),
        ... )
        >>> proc(images=[img], text=QWEN_PLACEHOLDER + "Hi", return_tensors="pt")
    """
    if architecture not in _IMAGE_ONLY_PROCESSORS:
        raise ValueError(
            f"no Qwen-VL processor for {architecture!r}; "
            f"expected one of {sorted(_IMAGE_ONLY_PROCESSORS)}"
        )
    return _IMAGE_ONLY_PROCESSORS[architecture](
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=None,
        chat_template=getattr(tokenizer, "chat_template", None),
    )


class QwenVLFamily(VLMFamily):
    """Qwen2-VL / Qwen2.5-VL / Qwen3-VL (module docstring)."""

    def build_processor(self, name_or_path: str, tokenizer: Any = None, **kwargs: Any) -> Any:
        """The HF processor; without torchvision an image-only one (PIL image processor)."""
        from transformers import AutoImageProcessor, AutoTokenizer
        from transformers.utils import is_torchvision_available

        if is_torchvision_available():
            return super().build_processor(name_or_path, tokenizer, **kwargs)
        logger.info("torchvision missing: building an image-only %s processor", self.name)
        tok = (
            tokenizer
            if tokenizer is not None
            else AutoTokenizer.from_pretrained(name_or_path, **kwargs)
        )
        image_processor = AutoImageProcessor.from_pretrained(name_or_path, **kwargs)
        return image_only_qwen_processor(self.architecture, image_processor, tok)

    def complete_inputs(self, inputs, token_id):
        # Without mm_token_type_ids Qwen-VL silently falls back to 1-D positions (or refuses).
        if inputs.get("mm_token_type_ids") is None:
            inputs["mm_token_type_ids"] = (inputs["input_ids"] == token_id).long()
        return inputs

    def layout(self, input_ids, inputs, hf_config, n_images, tokenizer):
        merge = int(hf_config.vision_config.spatial_merge_size)
        thw = inputs["image_grid_thw"].reshape(-1, 3).tolist()
        positions = token_positions(input_ids, image_token_id(hf_config))
        rows, cols, index, grid = [], [], [], (0, 0)
        for i, (t, h, w) in enumerate(thw):
            hm, wm = h // merge, w // merge
            idx = torch.arange(t * hm * wm) % (hm * wm)
            rows.append(idx // wm)
            cols.append(idx % wm)
            index.append(torch.full_like(idx, i))
            grid = (max(grid[0], hm), max(grid[1], wm))
        total = sum(r.shape[0] for r in rows)
        if total != positions.shape[0]:
            raise ImageTokenMismatchError(
                f"{positions.shape[0]} image tokens in the sequence but image_grid_thw "
                f"{thw} gives {total} merged patches"
            )
        return VisualLayout(positions, torch.cat(rows), torch.cat(cols), grid, torch.cat(index))
