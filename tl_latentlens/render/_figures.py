"""matplotlib / PIL helpers of the picture renderers (no pyplot, Agg canvas, atomic saves)."""

from __future__ import annotations

import io
import logging
import os
import warnings
from pathlib import Path
from typing import Any

from tl_latentlens.render._io import atomic_write_bytes

logger = logging.getLogger(__name__)

__all__ = ["figure", "save_png", "rgb_image", "outline"]


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
    out = atomic_write_bytes(path, buf.getvalue())
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
