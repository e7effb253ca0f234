"""Gemma3 (``Gemma3ForConditionalGeneration``): SigLIP tower pooled to a square grid.

Layout: one ``sqrt(mm_tokens_per_image)``-sided grid per image, row-major.
"""

from __future__ import annotations

import math

from tl_latentlens.models.families.base import (
    VLMFamily,
    image_token_id,
    square_blocks,
    token_positions,
)

__all__ = ["Gemma3Family"]


class Gemma3Family(VLMFamily):
    """Gemma3: one pooled square grid per image.

    Pan-and-scan crops (``do_pan_and_scan=True``, off by default) are not supported: their
    extra image blocks raise :class:`~tl_latentlens.models.base.ImageTokenMismatchError`.
    """

    def layout(self, input_ids, inputs, hf_config, n_images, tokenizer):
        per_image = int(hf_config.mm_tokens_per_image)
        positions = token_positions(input_ids, image_token_id(hf_config))
        return square_blocks(positions, n_images, per_image, math.isqrt(per_image))
