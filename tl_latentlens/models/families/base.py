"""What every HF VLM family answers, and the layout helpers the families share.

:class:`~tl_latentlens.models.hf_vlm.HFVLM` asks its family three things:

* the default prompt and how a generic ``"<image>"`` marker is spelled for this family;
* how to build the HF processor when TransformerLens could not (no torchvision);
* where the visual tokens are in the patch grid (:meth:`VLMFamily.layout`);
* which part of each image that grid covers (:meth:`VLMFamily.view_box`).

Layouts give ``rows``/``cols`` of each visual token, ``-1`` where it is not a grid patch.
When images of one prompt have different grids, :attr:`VisualLayout.grid` is the largest;
coordinates always refer to each token's own image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from tl_latentlens.models.base import IMAGE_MARKER, Box, ImageTokenMismatchError, VisualLayout

__all__ = [
    "ImageOnlyProcessorMixin",
    "VLMFamily",
    "centre_crop_box",
    "image_token_id",
    "square_blocks",
    "token_positions",
    "token_runs",
]

_PROMPT_TAIL = "\nDescribe the image."


@dataclass(frozen=True)
class VLMFamily:
    """What differs between HF VLM families.

    Attributes:
        name: Family name (the HF ``model_type`` it is registered under).
        architecture: The HF ``*ForConditionalGeneration`` class name.
        prompt_placeholder: What stands for one image in a prompt of this family.
    """

    name: str
    architecture: str
    prompt_placeholder: str = IMAGE_MARKER

    @property
    def default_prompt(self) -> str:
        """A prompt with one image placeholder."""
        return f"{self.prompt_placeholder}{_PROMPT_TAIL}"

    def normalize_prompt(self, prompt: str, processor_token: str) -> str:
        """Spell a generic ``"<image>"`` marker as this family's placeholder.

        Only when the prompt has no family placeholder already (``processor_token`` is the
        string the HF processor counts, e.g. ``<|image_pad|>``).
        """
        if processor_token not in prompt and IMAGE_MARKER in prompt:
            return prompt.replace(IMAGE_MARKER, self.prompt_placeholder)
        return prompt

    def build_processor(self, name_or_path: str, tokenizer: Any = None, **kwargs: Any) -> Any:
        """The HF processor, for when TransformerLens did not attach one."""
        from transformers import AutoProcessor

        if tokenizer is not None:
            kwargs["tokenizer"] = tokenizer
        return AutoProcessor.from_pretrained(name_or_path, **kwargs)

    def complete_inputs(self, inputs: dict[str, Any], token_id: int) -> dict[str, Any]:
        """Add model inputs the family needs but a processor may not return (default: none)."""
        return inputs

    def view_box(self, processor: Any, size: tuple[int, int]) -> Box | None:
        """The region of a ``(width, height)`` image that its patch grid covers.

        Default ``None``: the whole image (the family's processor resizes or tiles it without
        cutting anything off). Families whose processor crops or pads override this.
        """
        return None

    def layout(
        self,
        input_ids: Int[Tensor, " pos"],
        inputs: dict[str, Any],
        hf_config: Any,
        n_images: int,
        tokenizer: Any,
    ) -> VisualLayout:
        """Locate the visual tokens (see the family's module docstring).

        Raises:
            ImageTokenMismatchError: The image tokens do not add up to the model's features.
        """
        raise NotImplementedError


class ImageOnlyProcessorMixin:
    """Lets an HF multimodal processor be built with ``video_processor=None`` (images only).

    Processors with a video slot (Qwen-VL, LLaVA-OneVision) insist it holds a
    ``VideoProcessorMixin``, which transformers only defines when torchvision is importable;
    images need no torchvision, so the slot is left empty. Put it first in the bases.
    """

    def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> Any:
        if argument_name == "video_processor" and argument is None:
            return None
        return super().check_argument_for_proper_class(argument_name, argument)  # type: ignore[misc]


def _size_field(size: Any, key: str) -> int | None:
    """A field of an HF size spec (``SizeDict`` or plain dict)."""
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return int(value) if value else None


def centre_crop_box(image_processor: Any, size: tuple[int, int]) -> Box | None:
    """Region of a ``(width, height)`` image that a CLIP-style image processor keeps.

    Follows the processor's own steps (``transformers`` CLIP / LLaVA image processors): an
    optional pad to a square (``do_pad``, LLaVA's "pad" mode), a resize (``shortest_edge``:
    the short side to that length, the long one ``int(short * long / short)``; or a fixed
    ``height`` x ``width``), then a centre crop of ``crop_size`` at offset
    ``(resized - crop) // 2`` (negative: the crop pads). The box is that crop mapped back to
    the image's pixels.

    Returns:
        ``(left, top, right, bottom)``, or ``None`` when the processor keeps the whole image
        (no centre crop and no padding, or a size spec this does not know).

    Example:
        >>> centre_crop_box(CLIPImageProcessorPil(), (640, 480))   # shortest_edge 224, crop 224
        (80.0, 0.0, 560.0, 480.0)
    """
    width, height = size
    left, top = 0.0, 0.0
    if getattr(image_processor, "do_pad", False) and width != height:
        side = max(width, height)  # pad_to_square: the image centred in a square
        left, top = -float((side - width) // 2), -float((side - height) // 2)
        width = height = side
    if not getattr(image_processor, "do_center_crop", False):
        return None if (left, top) == (0.0, 0.0) else (left, top, left + width, top + height)
    crop = getattr(image_processor, "crop_size", None)
    crop_h, crop_w = _size_field(crop, "height"), _size_field(crop, "width")
    if crop_h is None or crop_w is None:
        return None
    new_w, new_h = width, height
    if getattr(image_processor, "do_resize", False):
        spec = getattr(image_processor, "size", None)
        shortest, longest = _size_field(spec, "shortest_edge"), _size_field(spec, "longest_edge")
        fixed_h, fixed_w = _size_field(spec, "height"), _size_field(spec, "width")
        if shortest and not longest:
            short, long = min(width, height), max(width, height)
            new_short, new_long = shortest, int(shortest * long / short)
            new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
        elif fixed_h and fixed_w:
            new_w, new_h = fixed_w, fixed_h
        else:
            return None
    sx, sy = width / new_w, height / new_h
    crop_top, crop_left = (new_h - crop_h) // 2, (new_w - crop_w) // 2
    return (
        left + crop_left * sx,
        top + crop_top * sy,
        left + (crop_left + crop_w) * sx,
        top + (crop_top + crop_h) * sy,
    )


def image_token_id(hf_config: Any) -> int:
    """The token id an HF VLM config puts at every visual position.

    Raises:
        ValueError: The config names no image token.
    """
    for attr in ("image_token_id", "image_token_index"):
        value = getattr(hf_config, attr, None)
        if value is not None:
            return int(value)
    raise ValueError(f"{type(hf_config).__name__} has no image_token_id")


def token_positions(input_ids: Tensor, token_id: int) -> Int[Tensor, " n"]:
    """Sequence positions (on CPU) where ``input_ids`` holds ``token_id``."""
    return torch.nonzero(input_ids.flatten() == token_id, as_tuple=True)[0].cpu()


def token_runs(positions: Int[Tensor, " n"]) -> list[Tensor]:
    """Split sorted positions into runs of consecutive ones.

    Example:
        >>> [r.tolist() for r in token_runs(torch.tensor([3, 4, 5, 9, 10]))]
        [[3, 4, 5], [9, 10]]
    """
    if positions.numel() == 0:
        return []
    breaks = torch.nonzero(positions[1:] != positions[:-1] + 1, as_tuple=True)[0] + 1
    return list(torch.tensor_split(positions, breaks))


def square_blocks(
    positions: Int[Tensor, " n"], n_images: int, per_image: int, side: int, offset: int = 0
) -> VisualLayout:
    """Equal blocks of ``per_image`` tokens on a ``side x side`` row-major grid.

    Token ``i`` of a block is grid cell ``i + offset``: ``offset=-1`` for a leading CLS token
    (off the grid), ``+1`` when the first patch was dropped.

    Raises:
        ImageTokenMismatchError: ``positions`` is not ``n_images`` blocks of ``per_image``.
    """
    if positions.shape[0] != n_images * per_image:
        raise ImageTokenMismatchError(
            f"{positions.shape[0]} image tokens in the sequence for {n_images} image(s), but the "
            f"vision tower yields {per_image} features per image: the processor and the model "
            "config disagree"
        )
    idx = torch.arange(per_image).repeat(n_images) + offset
    grid_ok = idx >= 0
    rows = torch.where(grid_ok, idx // side, torch.full_like(idx, -1))
    cols = torch.where(grid_ok, idx % side, torch.full_like(idx, -1))
    image_index = torch.arange(n_images).repeat_interleave(per_image)
    return VisualLayout(positions, rows, cols, (side, side), image_index)
