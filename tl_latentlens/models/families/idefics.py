"""Idefics3 (SmolVLM lineage): an image split into tiles plus a global thumbnail.

Layout: each ``<row_r_col_c>`` tile's tokens are placed in the global grid of the split image
(``rows * side`` by ``cols * side``); the downscaled global thumbnail that follows the tiles
gets ``-1``, unless the image was not split, in which case the thumbnail is the grid.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from tl_latentlens.models.base import ImageTokenMismatchError, VisualLayout
from tl_latentlens.models.families.base import (
    VLMFamily,
    image_token_id,
    token_positions,
    token_runs,
)

__all__ = ["Idefics3Family"]


class Idefics3Family(VLMFamily):
    """Idefics3 (``Idefics3ForConditionalGeneration``): tiles + global thumbnail."""

    def layout(self, input_ids, inputs, hf_config, n_images, tokenizer):
        ids = input_ids.flatten().cpu()
        positions = token_positions(ids, image_token_id(hf_config))
        tags = _tile_tags(tokenizer)
        rows, cols, index, grid, tiles = [], [], [], (0, 0), []
        for run in token_runs(positions):
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
            r, c, image_grid = _image_grid(tiles, side)
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


def _image_grid(tiles: list[tuple[int, int]], side: int) -> tuple[Tensor, Tensor, tuple[int, int]]:
    """Rows, cols and grid of one image: its tiles in order, then its thumbnail."""
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
