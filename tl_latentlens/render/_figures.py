"""matplotlib / PIL helpers of the picture renderers (no pyplot, Agg canvas, atomic saves)."""

from __future__ import annotations

import io
import logging
import os
import warnings
from pathlib import Path
from typing import Any

from tl_latentlens._io import atomic_write_bytes
from tl_latentlens.render._protocols import ExplanationLike

logger = logging.getLogger(__name__)

__all__ = [
    "figure",
    "image_grid",
    "image_indices",
    "outline",
    "result_images",
    "rgb_image",
    "save_png",
]


def figure(width_px: int, height_px: int, dpi: int) -> Any:
    """A pyplot-free ``Figure`` of ``width_px x height_px`` pixels with an Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Any, path: str | os.PathLike, dpi: int, **kwargs: Any) -> Path:
    """Render ``fig`` to PNG in memory, then write it atomically to ``path``."""
    buf = io.BytesIO()
    with warnings.catch_warnings():  # e.g. CJK / emoji tokens missing from the default font
        warnings.filterwarnings("ignore", message=r"Glyph .* missing from")
        warnings.filterwarnings("ignore", message=r"Matplotlib currently does not support")
        fig.savefig(buf, format="png", dpi=dpi, **kwargs)
    out = atomic_write_bytes(path, buf.getvalue(), parents=True)
    logger.info("wrote %s", out)
    return out


def rgb_image(src: Any) -> Any:
    """An RGB PIL image from a PIL image, an image path or an array (HWC/CHW, uint8 or 0..1).

    Example:
        >>> rgb_image(np.zeros((3, 8, 8))).size
        (8, 8)
    """
    from PIL import Image

    if isinstance(src, (str, os.PathLike)):
        with Image.open(src) as im:
            return im.convert("RGB")
    if isinstance(src, Image.Image):
        return src.convert("RGB")
    import numpy as np

    arr = np.asarray(src)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3, 4):
        arr = arr.transpose(1, 2, 0)  # CHW -> HWC
    if arr.dtype != np.uint8:
        arr = np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    return Image.fromarray(arr.squeeze()).convert("RGB")


def outline(x: int, y: int) -> Any:
    """An orange square outlining heatmap cell ``(x, y)``."""
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, ec="#d97706", lw=2)


# ---- the images of a result ------------------------------------------------------------------
def image_indices(exp: ExplanationLike) -> list[int]:
    """The images a result has patches of (``PatchExplanation.image_index``), ascending."""
    return sorted({int(p.image_index) for p in exp.patches}) or [0]


def result_images(exp: ExplanationLike, image: Any = None) -> list[Any]:
    """The pictures of a result, one per image of its prompt: ``image`` if given (one or a
    list), else ``exp.image``; ``[]`` when there is none.

    Raises:
        ValueError: Fewer pictures than the result has images (the message says how many).
    """
    src = image if image is not None else exp.image
    if src is None:
        return []
    pictures = list(src) if isinstance(src, (list, tuple)) else [src]
    need = max(image_indices(exp)) + 1
    if len(pictures) < need:
        raise ValueError(
            f"this result has patches of {need} images (a prompt with several images) but "
            f"{len(pictures)} picture(s) were given: pass image=[...] with one per image"
        )
    return pictures


def image_grid(exp: ExplanationLike, index: int) -> tuple[int, int]:
    """``(rows, cols)`` of image ``index``'s patch grid.

    The result's grid when it has one image. With several (images of one prompt may differ
    in grid: Qwen-VL, Idefics3; the result's grid is the largest), the extent of that image's
    grid patches when they fill it; otherwise (a result restricted to a few patches with
    ``explain(patches=...)``) the result's grid.
    """
    rows, cols = (int(x) for x in exp.grid)
    if len(image_indices(exp)) == 1:
        return rows, cols
    cells = {(p.row, p.col) for p in exp.patches if p.image_index == index and p.row >= 0}
    if not cells:
        return rows, cols
    extent = (max(r for r, _ in cells) + 1, max(c for _, c in cells) + 1)
    if len(cells) != extent[0] * extent[1] or extent[0] > rows or extent[1] > cols:
        return rows, cols
    return extent
