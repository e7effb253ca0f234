"""Pictures for a visual judge: the image with a red box around a patch block, and its crop.

Patch ``(row, col)`` of a ``rows x cols`` grid covers the image region
``[col/cols, (col+1)/cols) x [row/rows, (row+1)/rows)`` of the *whole* image: this is exact for
encoders that resize the image to a square without cropping (the embedded default VLM does);
for processors that centre-crop, the box is approximate.

Example:
    >>> box = block_box((500, 375), grid=(7, 7), row=3, col=3)    # the 3x3 block around (3, 3)
    >>> marked = mark_box(image, box)
    >>> data_url(crop_box(image, box, size=224))[:22]
    'data:image/png;base64,'
"""

from __future__ import annotations

import base64
import io
from typing import Any

__all__ = ["block_box", "crop_box", "data_url", "describe_position", "mark_box", "fit"]


def block_box(
    size: tuple[int, int], grid: tuple[int, int], row: int, col: int, block: int = 3
) -> tuple[int, int, int, int]:
    """Pixel box ``(x0, y0, x1, y1)`` of the ``block x block`` patches centred on ``(row, col)``,
    clipped to the grid.

    Args:
        size: Image ``(width, height)``.
        grid: ``(rows, cols)`` of the patch grid.
        row: Target patch row.
        col: Target patch column.
        block: Side of the block in patches (odd; 1 = the patch alone).

    Raises:
        ValueError: The patch is outside the grid or ``block`` is not a positive odd number.
    """
    rows, cols = grid
    if not (0 <= row < rows and 0 <= col < cols):
        raise ValueError(f"patch ({row}, {col}) is outside the {rows}x{cols} grid")
    if block < 1 or block % 2 == 0:
        raise ValueError(f"block must be a positive odd number, got {block}")
    half = block // 2
    r0, r1 = max(0, row - half), min(rows, row + half + 1)
    c0, c1 = max(0, col - half), min(cols, col + half + 1)
    w, h = size
    return (
        round(c0 * w / cols),
        round(r0 * h / rows),
        round(c1 * w / cols),
        round(r1 * h / rows),
    )


def fit(image: Any, longest: int) -> Any:
    """Copy of ``image`` (RGB) scaled so that its longest side is ``longest`` pixels."""
    from PIL import Image

    image = image.convert("RGB")
    w, h = image.size
    scale = longest / max(w, h)
    return image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC)


def mark_box(image: Any, box: tuple[int, int, int, int], width: int | None = None) -> Any:
    """Copy of ``image`` (RGB) with a red rectangle drawn along ``box``."""
    from PIL import ImageDraw

    out = image.convert("RGB").copy()
    width = width or max(2, round(max(out.size) / 150))
    x0, y0, x1, y1 = box
    ImageDraw.Draw(out).rectangle((x0, y0, x1 - 1, y1 - 1), outline=(255, 0, 0), width=width)
    return out


def crop_box(image: Any, box: tuple[int, int, int, int], size: int = 224) -> Any:
    """The region ``box`` of ``image``, scaled so that its longest side is ``size``."""
    return fit(image.convert("RGB").crop(box), size)


def data_url(image: Any, fmt: str = "PNG") -> str:
    """``data:image/...;base64,...`` URL of a PIL image (for ``image_url`` content parts)."""
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def describe_position(grid: tuple[int, int], row: int, col: int) -> str:
    """Plain-words position of a patch: ``"upper left"``, ``"middle right"``, ``"centre"`` ...

    Example:
        >>> describe_position((7, 7), 0, 0), describe_position((7, 7), 3, 3)
        ('upper left', 'centre')
    """
    rows, cols = grid
    v = ("upper", "middle", "lower")[min(2, 3 * row // rows)]
    h = ("left", "middle", "right")[min(2, 3 * col // cols)]
    if v == h == "middle":
        return "centre"
    return f"{v} {h}"
