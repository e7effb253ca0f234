"""Per-family knowledge about Hugging Face VLMs: prompts, processors and visual layouts.

One :class:`VLMFamily` per family, registered by HF ``model_type`` in :data:`FAMILIES`.
:class:`~tl_latentlens.models.hf_vlm.HFVLM` asks its family three things:

* the default prompt and how a generic ``"<image>"`` marker is spelled for this family;
* how to build the HF processor when TransformerLens could not (Qwen-VL without torchvision);
* where the visual tokens are in the patch grid (:meth:`VLMFamily.layout`).

Layouts (``rows``/``cols`` of each visual token, ``-1`` where it is not a grid patch):

* LLaVA-1.5 and Gemma3: one square grid per image, row-major (``image_size // patch_size``
  per side for LLaVA, ``sqrt(mm_tokens_per_image)`` for Gemma3's pooled grid); a leading CLS
  token (LLaVA with ``vision_feature_select_strategy="full"``) gets ``-1``.
* LLaVA-NeXT / LLaVA-OneVision (anyres, :mod:`tl_latentlens.models.hf_llava`): all
  image tokens are ``positions``; the base-view patches are on the base grid, high-res tile
  patches and ``image_newline`` tokens get ``-1``.
* Qwen2-VL / Qwen2.5-VL: the merged patch grid ``image_grid_thw[1:] // spatial_merge_size``,
  row-major (each visual token is one ``merge x merge`` block of patches).
* Idefics3: each ``<row_r_col_c>`` tile's tokens are placed in the global grid of the split
  image (``rows * side`` by ``cols * side``); the downscaled global thumbnail that follows the
  tiles gets ``-1``, unless the image was not split, in which case the thumbnail is the grid.

When images of one prompt have different grids, :attr:`VisualLayout.grid` is the largest;
coordinates always refer to each token's own image.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from tl_latentlens.models.base import IMAGE_MARKER, ImageTokenMismatchError, VisualLayout

__all__ = [
    "FAMILIES",
    "VLMFamily",
    "family_for_config",
    "image_token_id",
    "supported_model_types",
]

logger = logging.getLogger(__name__)

_PROMPT_TAIL = "\nDescribe the image."


def _square_blocks(
    positions: Tensor, n_images: int, per_image: int, side: int, offset: int = 0
) -> VisualLayout:
    """Equal blocks of ``per_image`` tokens on a ``side x side`` row-major grid.

    Token ``i`` of a block is grid cell ``i + offset``: ``offset=-1`` for a leading CLS token
    (off the grid), ``+1`` when the first patch was dropped.
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


@dataclass(frozen=True)
class VLMFamily:
    """What differs between HF VLM families.

    Attributes:
        name: Family name (the HF ``model_type`` it was registered under).
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

    def layout(
        self,
        input_ids: Int[Tensor, " pos"],
        inputs: dict[str, Any],
        hf_config: Any,
        n_images: int,
        tokenizer: Any,
    ) -> VisualLayout:
        """Locate the visual tokens (see the module docstring).

        Raises:
            ImageTokenMismatchError: The image tokens do not add up to the model's features.
        """
        raise NotImplementedError


class Gemma3Family(VLMFamily):
    """Gemma3 (``Gemma3ForConditionalGeneration``): SigLIP tower, pooled to a square grid.

    Pan-and-scan crops (``do_pan_and_scan=True``, off by default) are not supported: their
    extra image blocks raise :class:`ImageTokenMismatchError`.
    """

    def layout(self, input_ids, inputs, hf_config, n_images, tokenizer):
        per_image = int(hf_config.mm_tokens_per_image)
        positions = _positions(input_ids, image_token_id(hf_config))
        return _square_blocks(positions, n_images, per_image, math.isqrt(per_image))


class QwenVLFamily(VLMFamily):
    """Qwen2-VL / Qwen2.5-VL: dynamic-resolution ViT, merged patch grid, 3-D mRoPE."""

    def build_processor(self, name_or_path: str, tokenizer: Any = None, **kwargs: Any) -> Any:
        """An image-only processor: tokenizer + (slow, PIL) image processor, no video part.

        The HF Qwen-VL processors cannot be built without torchvision because their video
        processor needs it; images do not, so the video slot is left empty.
        """
        from transformers import AutoImageProcessor, AutoTokenizer
        from transformers.utils import is_torchvision_available

        from tl_latentlens.models.qwen2_vl import image_only_qwen_processor

        if is_torchvision_available():
            return super().build_processor(name_or_path, tokenizer, **kwargs)
        logger.info("torchvision missing: building an image-only Qwen-VL processor")
        tok = (
            tokenizer
            if tokenizer is not None
            else AutoTokenizer.from_pretrained(name_or_path, **kwargs)
        )
        image_processor = AutoImageProcessor.from_pretrained(name_or_path, **kwargs)
        return image_only_qwen_processor(self.architecture, image_processor, tok)

    def complete_inputs(self, inputs, token_id):
        # Without mm_token_type_ids Qwen2.5-VL silently falls back to 1-D positions.
        if inputs.get("mm_token_type_ids") is None:
            inputs["mm_token_type_ids"] = (inputs["input_ids"] == token_id).long()
        return inputs

    def layout(self, input_ids, inputs, hf_config, n_images, tokenizer):
        merge = int(hf_config.vision_config.spatial_merge_size)
        thw = inputs["image_grid_thw"].reshape(-1, 3).tolist()
        positions = _positions(input_ids, image_token_id(hf_config))
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


class Idefics3Family(VLMFamily):
    """Idefics3 (SmolVLM lineage): image split into tiles + a global thumbnail."""

    def layout(self, input_ids, inputs, hf_config, n_images, tokenizer):
        ids = input_ids.flatten().cpu()
        positions = _positions(ids, image_token_id(hf_config))
        tags = _tile_tags(tokenizer)
        rows, cols, index, grid, tiles = [], [], [], (0, 0), []
        for run in _runs(positions):
            side = math.isqrt(run.shape[0])
            if side * side != run.shape[0]:
                raise ImageTokenMismatchError(
                    f"an Idefics3 image block of {run.shape[0]} tokens is not square"
                )
            tag = tags.get(int(ids[run[0] - 1])) if run[0] > 0 else None
            if tag is not None:  # a <row_r_col_c> tile of the current image
                tiles.append(tag)
                continue
            # the global thumbnail closes the image
            r, c, image_grid = _idefics3_image(tiles, side)
            rows.append(r)
            cols.append(c)
            index.append(torch.full_like(r, len(index)))
            grid = (max(grid[0], image_grid[0]), max(grid[1], image_grid[1]))
            tiles = []
        if len(index) != n_images or tiles:
            raise ImageTokenMismatchError(
                f"found {len(index)} Idefics3 image(s) (tiles + global thumbnail) in the "
                f"sequence for {n_images} image(s) given"
            )
        return VisualLayout(positions, torch.cat(rows), torch.cat(cols), grid, torch.cat(index))


def _idefics3_image(
    tiles: list[tuple[int, int]], side: int
) -> tuple[Tensor, Tensor, tuple[int, int]]:
    """Rows, cols and grid of one Idefics3 image: its tiles in order, then its thumbnail."""
    idx = torch.arange(side * side)
    if not tiles:  # not split: the thumbnail is the image
        return idx // side, idx % side, (side, side)
    rows = [r * side + idx // side for r, _ in tiles] + [torch.full_like(idx, -1)]
    cols = [c * side + idx % side for _, c in tiles] + [torch.full_like(idx, -1)]
    n_rows = max(r for r, _ in tiles) + 1
    n_cols = max(c for _, c in tiles) + 1
    return torch.cat(rows), torch.cat(cols), (n_rows * side, n_cols * side)


def _tile_tags(tokenizer: Any, max_side: int = 12) -> dict[int, tuple[int, int]]:
    """Token id of ``<row_r_col_c>`` -> 0-based ``(r, c)`` (unknown tags left out)."""
    unk = tokenizer.unk_token_id
    tags = {}
    for r in range(max_side):
        for c in range(max_side):
            tid = tokenizer.convert_tokens_to_ids(f"<row_{r + 1}_col_{c + 1}>")
            if tid is not None and tid != unk:
                tags[int(tid)] = (r, c)
    return tags


def _runs(positions: Tensor) -> list[Tensor]:
    """Split sorted positions into runs of consecutive ones."""
    if positions.numel() == 0:
        return []
    breaks = torch.nonzero(positions[1:] != positions[:-1] + 1, as_tuple=True)[0] + 1
    return list(torch.tensor_split(positions, breaks))


def image_token_id(hf_config: Any) -> int:
    """The token id an HF VLM config puts at every visual position."""
    for attr in ("image_token_id", "image_token_index"):
        value = getattr(hf_config, attr, None)
        if value is not None:
            return int(value)
    raise ValueError(f"{type(hf_config).__name__} has no image_token_id")


def _positions(input_ids: Tensor, token_id: int) -> Tensor:
    return torch.nonzero(input_ids.flatten() == token_id, as_tuple=True)[0].cpu()


_QWEN_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"

FAMILIES: dict[str, VLMFamily] = {
    "qwen2_vl": QwenVLFamily("qwen2_vl", "Qwen2VLForConditionalGeneration", _QWEN_PLACEHOLDER),
    "qwen2_5_vl": QwenVLFamily(
        "qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration", _QWEN_PLACEHOLDER
    ),
    "idefics3": Idefics3Family("idefics3", "Idefics3ForConditionalGeneration"),
    "gemma3": Gemma3Family("gemma3", "Gemma3ForConditionalGeneration", "<start_of_image>"),
}

# The LLaVA families live in hf_llava, which subclasses VLMFamily and uses the helpers above.
from tl_latentlens.models.hf_llava import AnyresLlavaFamily, LlavaFamily  # noqa: E402

FAMILIES["llava"] = LlavaFamily("llava", "LlavaForConditionalGeneration")
FAMILIES["llava_next"] = AnyresLlavaFamily("llava_next", "LlavaNextForConditionalGeneration")
FAMILIES["llava_onevision"] = AnyresLlavaFamily(
    "llava_onevision", "LlavaOnevisionForConditionalGeneration"
)


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
