"""Static pictures of results (PNG, matplotlib Agg; never opens a window).

* :func:`patch_words_png` — the image with its patch grid and the top LatentLens word per patch.
* :func:`leap_heatmap_png` — visual layer x text layer heatmap of a
  :class:`~tl_latentlens.lens.leap.LeapTable` (the "mid-layer leap").
* :func:`layer_curve_png` — a value per layer for several lenses, as lines.

Figures are built on :class:`matplotlib.figure.Figure` with an Agg canvas, so pyplot's global
state and the user's backend are left alone; every file is written atomically.

Example:
    >>> patch_words_png(result, "out/words.png", hook="blocks.8.hook_resid_post")
    >>> leap_heatmap_png(result.leap(), "out/leap.png")
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tl_latentlens.render._figures import (
    figure,
    image_grid,
    image_indices,
    outline,
    result_images,
    rgb_image,
    save_png,
)
from tl_latentlens.render._markup import fmt_layer
from tl_latentlens.render._protocols import ExplanationLike, LeapTableLike, PatchLike

logger = logging.getLogger(__name__)

__all__ = ["patch_words_png", "leap_heatmap_png", "layer_curve_png"]

_HEADER_PX = 36
_PANEL_GAP_PX = 8  # white space between the panels of a several-image result
_LEAP_VALUES = {
    "shares": "Share of top-1 neighbours per text layer",
    "counts": "Top-1 neighbours per text layer",
    "mean_similarity": "Mean cosine of top-1 neighbours",
}


def _short(word: str, max_chars: int) -> str:
    return word if len(word) <= max_chars else word[: max_chars - 1] + "…"


def patch_words_png(
    exp: ExplanationLike,
    path: str | os.PathLike,
    hook: str | None = None,
    image: Any = None,
    fontsize: float | None = None,
    width: int | None = None,
    max_chars: int = 12,
    title: bool = True,
    dpi: int = 100,
) -> Path:
    """Draw the image, its patch grid and the top LatentLens word of every patch at ``hook``.

    Words sit in semi-transparent dark boxes with white text, readable on any image. The grid
    is spread evenly over the picture: ``exp.image`` is what the model saw (a processor's crop
    already applied by :meth:`~tl_latentlens.lens.LatentLens.explain`); a picture passed as
    ``image`` is taken as such. A result of a prompt with several images is drawn as one
    panel per image, side by side, each with its own grid and words.

    Args:
        exp: An :class:`~tl_latentlens.lens.results.Explanation`.
        path: Output PNG (written atomically).
        hook: Visual hook to show (default: the first explained hook).
        image: PIL image, array (HWC or CHW) or image path, or a list of them (one per image
            of the prompt); default ``exp.image``.
        fontsize: Word size in points (default: fitted to the patch size; long words shrink).
        width: Output width in pixels (default: the images' width, but at least 640 px and
            72 px per patch column, at most 2400). The height follows the images' aspect
            ratios, plus a 36 px title band.
        max_chars: Longer words are cut with "…".
        title: Draw the title band (hook, layer, model).
        dpi: Resolution used to convert points to pixels.

    Returns:
        The written path.

    Raises:
        ValueError: Unknown hook (lists the explained ones), no image (or fewer pictures than
            the result has images), or bad sizes.

    Example:
        >>> patch_words_png(result, "words.png", image=PIL.Image.open("cat.jpg"))
        PosixPath('words.png')
    """
    hook = exp.hooks[0] if hook is None else hook
    if hook not in exp.hooks:
        raise ValueError(f"unknown hook {hook!r}; this result explains hooks {exp.hooks}")
    pictures = result_images(exp, image)
    if not pictures:
        raise ValueError(
            "no image to draw on: pass image=... (results loaded from JSON carry no image)"
        )
    rows, cols = exp.grid
    if rows < 1 or cols < 1:
        raise ValueError(f"the result has no patch grid (grid={exp.grid})")
    indices = image_indices(exp)
    imgs = [rgb_image(pictures[i]) for i in indices]
    grids = [image_grid(exp, i) for i in indices]
    gap = _PANEL_GAP_PX if len(imgs) > 1 else 0
    aspects = [im.size[0] / im.size[1] for im in imgs]
    natural = sum(im.size[0] for im in imgs)
    width = (
        int(width)
        if width is not None
        else min(2400, max(natural, 72 * sum(c for _, c in grids), 640))
    )
    if width < 16 + gap * (len(imgs) - 1) or max_chars < 2:
        raise ValueError(f"width must be >= 16 px and max_chars >= 2, got {width}, {max_chars}")
    img_h = max(1, round((width - gap * (len(imgs) - 1)) / sum(aspects)))
    head = _HEADER_PX if title else 0
    fig = figure(width, img_h + head, dpi)
    by_image = {i: [p for p in exp.at(hook) if p.image_index == i] for i in indices}
    x = 0.0
    for n, (i, img, grid, aspect) in enumerate(zip(indices, imgs, grids, aspects)):
        panel_w = img_h * aspect if n < len(imgs) - 1 else width - x
        ax = fig.add_axes((x / width, 0, panel_w / width, img_h / (img_h + head)))
        label = f"image {i}" if len(imgs) > 1 else None
        _draw_panel(ax, img, by_image[i], grid, panel_w, img_h, fontsize, max_chars, dpi, label)
        x += panel_w + gap
    if title:
        pt = 72.0 / dpi
        layer = next((p.layer for p in exp.patches if p.hook == hook), None)
        label = f"Top LatentLens word per patch · {hook}"
        label += f" (layer {fmt_layer(layer)})" if layer is not None else ""
        if (len(label) + len(exp.model) + 3) * 11 * 0.62 / pt < width:  # room for the model?
            label += f" · {exp.model}"
        fig.text(
            0.01,
            1 - 0.5 * head / (img_h + head),
            label,
            va="center",
            ha="left",
            fontsize=11,
            color="#1f2933",
            parse_math=False,
        )
    return save_png(fig, path, dpi)


def _draw_panel(
    ax: Any,
    img: Any,
    patches: Sequence[PatchLike],
    grid: tuple[int, int],
    width: float,
    height: float,
    fontsize: float | None,
    max_chars: int,
    dpi: int,
    label: str | None,
) -> None:
    """One image with its ``grid`` and the top word of each of its ``patches``
    (``width`` x ``height``: the panel's size in pixels)."""
    import numpy as np

    rows, cols = grid
    ax.imshow(np.asarray(img), extent=(0, cols, rows, 0), aspect="auto", interpolation="lanczos")
    ax.set_xlim(0, cols)
    ax.set_ylim(rows, 0)
    ax.set_axis_off()
    grid_kw = {"color": "white", "alpha": 0.7, "linewidth": 0.8}
    for c in range(1, cols):
        ax.axvline(c, **grid_kw)
    for r in range(1, rows):
        ax.axhline(r, **grid_kw)
    cell_w, cell_h = width / cols, height / rows
    pt = 72.0 / dpi  # points per pixel
    base = fontsize if fontsize is not None else min(cell_w / 5.0, cell_h * 0.42, 28.0) * pt
    for p in patches:
        if not (0 <= p.row < rows and 0 <= p.col < cols) or not p.top_word:
            continue
        word = _short(p.top_word, max_chars)
        size = base if fontsize is not None else min(base, cell_w * 0.92 / (0.62 * len(word)) * pt)
        ax.text(
            p.col + 0.5,
            p.row + 0.5,
            word,
            ha="center",
            va="center",
            color="white",
            fontsize=max(size, 4.0),
            parse_math=False,
            bbox={"boxstyle": "round,pad=0.18", "fc": (0, 0, 0, 0.62), "ec": "none"},
        )
    if label:
        ax.text(
            0.01,
            0.99,
            label,
            transform=ax.transAxes,
            ha="left",
            va="top",
            color="white",
            fontsize=9,
            parse_math=False,
            bbox={"boxstyle": "square,pad=0.2", "fc": (0.12, 0.39, 0.77, 0.85), "ec": "none"},
        )


def leap_heatmap_png(
    table: LeapTableLike, path: str | os.PathLike, value: str = "shares", title: str | None = None
) -> Path:
    """Heatmap of a :class:`~tl_latentlens.lens.leap.LeapTable` with the values written in.

    Rows are visual layers, columns text layers; the cell holding each row's most frequent
    text layer is outlined.

    Args:
        table: The leap table (see :func:`tl_latentlens.lens.leap.mid_layer_leap`).
        path: Output PNG (written atomically).
        value: ``"shares"`` (row-normalised counts), ``"counts"`` or ``"mean_similarity"``.
        title: Figure title (default describes ``value``).

    Returns:
        The written path.

    Raises:
        ValueError: Unknown ``value`` or an empty table.

    Example:
        >>> leap_heatmap_png(mid_layer_leap(results), "leap.png", value="counts")
        PosixPath('leap.png')
    """
    if value not in _LEAP_VALUES:
        raise ValueError(f"value must be one of {sorted(_LEAP_VALUES)}, got {value!r}")
    import numpy as np

    data = np.asarray(getattr(table, value), dtype=float)
    n_vis, n_txt = len(table.visual_layers), len(table.text_layers)
    if n_vis == 0 or n_txt == 0 or data.shape != (n_vis, n_txt):
        raise ValueError(f"empty or malformed leap table ({n_vis} visual x {n_txt} text layers)")
    dpi = 110
    fig = figure(
        int(dpi * max(5.0, 0.62 * n_txt + 2.8)), int(dpi * max(3.4, 0.5 * n_vis + 1.9)), dpi
    )
    ax = fig.add_subplot()
    finite = data[np.isfinite(data)]
    vmin, vmax = (
        (0.0, 1.0)
        if value == "shares"
        else (
            float(finite.min()) if finite.size else 0.0,
            float(finite.max()) if finite.size else 1.0,
        )
    )
    im = ax.imshow(
        np.ma.masked_invalid(data),
        cmap="Blues",
        aspect="auto",
        vmin=vmin,
        vmax=vmax if vmax > vmin else vmin + 1,
    )
    fig.colorbar(im, ax=ax, fraction=0.05, pad=0.03).set_label(value.replace("_", " "))
    counts = np.asarray(table.counts)
    for i in range(n_vis):
        for j in range(n_txt):
            v = data[i, j]
            if not math.isfinite(v):
                continue
            text = (
                f"{v:.0%}"
                if value == "shares"
                else (f"{int(v)}" if value == "counts" else f"{v:.2f}")
            )
            light = (v - vmin) / (vmax - vmin) > 0.55 if vmax > vmin else False
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=8.5,
                color="white" if light else "#1f2933",
            )
        if counts[i].sum() > 0:
            j = int(counts[i].argmax())
            ax.add_patch(outline(j, i))
    ax.set_xticks(range(n_txt), [fmt_layer(x) for x in table.text_layers])
    ax.set_yticks(range(n_vis), [fmt_layer(x) for x in table.visual_layers])
    ax.set_xlabel("text layer (bank)")
    ax.set_ylabel("visual layer")
    ax.set_title(title or _LEAP_VALUES[value], fontsize=11)
    return save_png(fig, path, dpi, bbox_inches="tight")


def layer_curve_png(
    curves: Mapping[str, Mapping[float, float]],
    path: str | os.PathLike,
    title: str | None = None,
    ylabel: str = "% interpretable",
    ylim: tuple[float, float] | None = None,
) -> Path:
    """Lines of a value per layer, one per lens (e.g. % interpretable tokens per layer).

    Args:
        curves: ``{lens name: {layer: value}}``; layers need not match between lenses.
        path: Output PNG (written atomically).
        title: Figure title.
        ylabel: Y axis label.
        ylim: Y range (default ``(0, 100)`` when all values lie in it, else automatic).

    Returns:
        The written path.

    Raises:
        ValueError: No curves, or a lens without points.

    Example:
        >>> layer_curve_png({"LatentLens": {0: 72, 8: 80}, "LogitLens": {0: 10, 8: 31}}, "c.png")
        PosixPath('c.png')
    """
    if not curves:
        raise ValueError("no curves given")
    empty = [name for name, pts in curves.items() if not pts]
    if empty:
        raise ValueError(f"lens(es) without points: {empty}")
    dpi = 110
    fig = figure(int(6.4 * dpi), int(4.0 * dpi), dpi)
    ax = fig.add_subplot()
    values = []
    for name, pts in curves.items():
        xs = sorted(pts)
        ys = [float(pts[x]) for x in xs]
        values += ys
        ax.plot(xs, ys, marker="o", linewidth=1.8, markersize=4, label=str(name))
    if ylim is None and all(0 <= v <= 100 for v in values):
        ylim = (0, 100)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(frameon=False)
    if title:
        ax.set_title(title, fontsize=11)
    return save_png(fig, path, dpi, bbox_inches="tight")
