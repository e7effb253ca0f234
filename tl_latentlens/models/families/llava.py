"""The LLaVA families: LLaVA-1.5, and LLaVA-NeXT / LLaVA-OneVision ("anyres").

LLaVA-1.5 (:class:`LlavaFamily`) has one square grid per image, row-major
(``image_size // patch_size`` per side); a leading CLS token (with
``vision_feature_select_strategy="full"``) gets ``-1``. Its CLIP processor resizes the short
side and centre-crops a square, so the grid covers the middle of a non-square image only
(:meth:`LlavaFamily.view_box`).

LLaVA-NeXT and LLaVA-OneVision encode an image as one low-resolution *base* view (the whole
image resized to the tower's input size) plus high-resolution tiles picked from ``image_grid_pinpoints``. The
HF model packs each image's features as::

    base view patches (side x side, row-major)
    high-res patches, unpadded to the image's aspect ratio, row-major, each row closed by
    one ``image_newline`` embedding

(an image without high-res tiles -- one OneVision image among several -- is the base view
plus one trailing ``image_newline``). All of these positions carry the image token.

Layout choice (:class:`AnyresLlavaFamily`): ``positions`` are *all* image-token positions
(so ``n_visual`` equals the number of features the HF model inserts); the base-view patches
get their ``(row, col)`` on the ``side x side`` base grid, which is :attr:`VisualLayout.grid`;
high-res tile patches and ``image_newline`` tokens get ``-1``. The high-res patches are left
off the grid because the unpadded high-res grid differs per image and would overlap the base
grid's coordinates; each image's base view covers the base grid exactly once.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers import LlavaOnevisionProcessor

from tl_latentlens.models.base import ImageTokenMismatchError, VisualLayout
from tl_latentlens.models.families.base import (
    ImageOnlyProcessorMixin,
    VLMFamily,
    centre_crop_box,
    image_token_id,
    square_blocks,
    token_positions,
    token_runs,
)

__all__ = [
    "AnyresLlavaFamily",
    "LlavaFamily",
    "ImageOnlyLlavaOnevisionProcessor",
    "image_only_onevision_processor",
]

logger = logging.getLogger(__name__)


class ImageOnlyLlavaOnevisionProcessor(ImageOnlyProcessorMixin, LlavaOnevisionProcessor):
    """``LlavaOnevisionProcessor`` with an empty video slot (images only, no torchvision)."""


def image_only_onevision_processor(
    image_processor: Any, tokenizer: Any, num_image_tokens: int, **kwargs: Any
) -> ImageOnlyLlavaOnevisionProcessor:
    """A LLaVA-OneVision processor from a (PIL) image processor and a tokenizer.

    Args:
        image_processor: E.g. ``LlavaOnevisionImageProcessorPil``.
        tokenizer: The model's tokenizer (with ``<image>``).
        num_image_tokens: Features of one view, ``(image_size // patch_size) ** 2``.
        **kwargs: Other ``LlavaOnevisionProcessor`` arguments (e.g. ``vision_aspect_ratio``).
    """
    kwargs.setdefault("vision_feature_select_strategy", "full")
    kwargs.setdefault("chat_template", getattr(tokenizer, "chat_template", None))
    return ImageOnlyLlavaOnevisionProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=None,
        num_image_tokens=num_image_tokens,
        **kwargs,
    )


def _base_view(hf_config: Any) -> tuple[int, int]:
    """``(side, offset)`` of one tower view: ``side x side`` patches; feature ``i`` is grid
    cell ``i + offset`` (``-1``: a leading CLS token kept, ``0``: exactly the patches).

    CLIP towers put a CLS token first, SigLIP ones do not; the ``"default"`` feature strategy
    drops the first token whatever it is.
    """
    vis = hf_config.vision_config
    side = int(vis.image_size) // int(vis.patch_size)
    has_cls = "siglip" not in str(getattr(vis, "model_type", ""))
    drops_first = getattr(hf_config, "vision_feature_select_strategy", "default") == "default"
    return side, int(drops_first) - int(has_cls)


class LlavaFamily(VLMFamily):
    """LLaVA-1.5 (``LlavaForConditionalGeneration``): CLIP/SigLIP tower + MLP projector."""

    def view_box(self, processor, size):
        """The centre crop (or square padding) of the CLIP processor (:func:`centre_crop_box`)."""
        return centre_crop_box(getattr(processor, "image_processor", processor), size)

    def layout(self, input_ids, inputs, hf_config, n_images, tokenizer):
        side, offset = _base_view(hf_config)
        positions = token_positions(input_ids, image_token_id(hf_config))
        return square_blocks(positions, n_images, side * side - offset, side, offset)


class AnyresLlavaFamily(VLMFamily):
    """LLaVA-NeXT / LLaVA-OneVision: base view + anyres high-res tiles (module docstring).

    Each image's tokens must be one contiguous run (as the processor expands ``<image>``);
    two images whose placeholders touch (``<image><image>``) are not told apart.
    """

    def build_processor(self, name_or_path: str, tokenizer: Any = None, **kwargs: Any) -> Any:
        """The HF processor; for OneVision without torchvision, an image-only one."""
        from transformers.utils import is_torchvision_available

        if self.name != "llava_onevision" or is_torchvision_available():
            return super().build_processor(name_or_path, tokenizer, **kwargs)
        import json
        from pathlib import Path

        from transformers import AutoImageProcessor, AutoTokenizer
        from transformers.utils import cached_file

        logger.info("torchvision missing: building an image-only LLaVA-OneVision processor")
        tok = tokenizer or AutoTokenizer.from_pretrained(name_or_path, **kwargs)
        image_processor = AutoImageProcessor.from_pretrained(name_or_path, **kwargs)
        saved: dict[str, Any] = {}
        proc_file = cached_file(
            name_or_path, "processor_config.json", _raise_exceptions_for_missing_entries=False
        )
        if proc_file is not None:
            saved = json.loads(Path(proc_file).read_text())
        keep = ("num_image_tokens", "vision_feature_select_strategy", "vision_aspect_ratio")
        extra = {k: saved[k] for k in keep if saved.get(k) is not None}
        num = extra.pop("num_image_tokens", None)
        if num is None:  # one view's features, from the vision tower's config
            from transformers import AutoConfig

            vis = AutoConfig.from_pretrained(name_or_path, **kwargs).vision_config
            num = (int(vis.image_size) // int(vis.patch_size)) ** 2
        return image_only_onevision_processor(image_processor, tok, num, **extra)

    def layout(self, input_ids, inputs, hf_config, n_images, tokenizer):
        side, offset = _base_view(hf_config)
        n_base = side * side - offset
        positions = token_positions(input_ids, image_token_id(hf_config))
        runs = token_runs(positions)
        if len(runs) != n_images or any(run.shape[0] <= n_base for run in runs):
            raise ImageTokenMismatchError(
                f"{len(runs)} image-token block(s) of sizes {[int(r.shape[0]) for r in runs]} "
                f"for {n_images} image(s); each image needs more than its {n_base} base-view "
                "features"
            )
        rows, cols, index = [], [], []
        for i, run in enumerate(runs):
            idx = torch.arange(run.shape[0]) + offset
            on_grid = (idx >= 0) & (idx < side * side)
            rows.append(torch.where(on_grid, idx // side, torch.full_like(idx, -1)))
            cols.append(torch.where(on_grid, idx % side, torch.full_like(idx, -1)))
            index.append(torch.full_like(idx, i))
        return VisualLayout(
            positions, torch.cat(rows), torch.cat(cols), (side, side), torch.cat(index)
        )
