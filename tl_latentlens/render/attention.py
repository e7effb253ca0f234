"""Pictures of a :class:`~tl_latentlens.lens.attention.PatchAttention`: the attention of prompt
tokens to the patches drawn on the image (PNG, matplotlib), and circuitsvis's
``AttentionHeads`` view of the prompt tokens over the visual tokens (offline HTML).
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tl_latentlens._io import atomic_write_text
from tl_latentlens.render._circuitsvis import bundle_js, cv_token, script_json
from tl_latentlens.render._figures import figure, rgb_image, save_png
from tl_latentlens.render._markup import esc

__all__ = ["attention_html", "attention_png", "patch_words_at"]

logger = logging.getLogger(__name__)

_HEADER_PX = 40


def patch_words_at(explanation: Any, layer: int, hook: Any = None) -> dict[int, str]:
    """Top LatentLens word of each visual token at ``hook`` (default: the explained hook of
    ``layer``, the residual that block ``layer``'s attention reads; else the first hook)."""
    if explanation is None:
        return {}
    if hook is None:
        try:
            hook = explanation.hook(layer)
        except (KeyError, ValueError, AttributeError):
            hook = explanation.hooks[0]
    return {p.index: p.top_word for p in explanation.at(hook)}


def _query_label(att: Any, queries: Sequence[int]) -> str:
    words = [att.tokens[q].strip() or repr(att.tokens[q]) for q in queries]
    shown = " ".join(words[:6]) + (" …" if len(words) > 6 else "")
    return f"positions {queries[0]}–{queries[-1]}" if len(queries) > 6 else f'"{shown}"'


def attention_png(
    att: Any,
    path: str | os.PathLike,
    layer: int,
    head: int | None = None,
    prompt_positions: Sequence[int] | None = None,
    *,
    explanation: Any = None,
    hook: Any = None,
    image: Any = None,
    image_index: int = 0,
    width: int = 640,
    dpi: int = 100,
    max_chars: int = 10,
) -> Path:
    """The image with the attention its patches get as a heatmap (mean over the query
    positions; head ``head`` or the mean over heads), each cell labelled with its share and
    the LatentLens word of the patch (from ``explanation``, when given).

    Args:
        att: A :class:`~tl_latentlens.lens.attention.PatchAttention`.
        path: Output PNG (written atomically).
        layer: The block whose attention to draw.
        head: One head (default: the mean over heads).
        prompt_positions: Query positions (default: the text after the image; negative
            numbers count from the end).
        explanation: An :class:`~tl_latentlens.lens.results.Explanation` of the same run for
            the words.
        hook: Which of its hooks gives the words (default: the hook of layer ``layer``).
        image: The picture (default: ``att.image``, else ``explanation.image``).
        image_index: Which image of the prompt.
        width: Output width in pixels.
        dpi: Resolution used to convert points to pixels.
        max_chars: Longer words are cut with "…".

    Raises:
        ValueError: No picture, or a block / head / position not held.

    Example:
        >>> attention_png(att, "att.png", layer=8, prompt_positions=[-1], explanation=result)
    """
    src = image if image is not None else att.image
    if src is None and explanation is not None:
        src = explanation.image
    if isinstance(src, (list, tuple)):
        src = src[image_index] if image_index < len(src) else None
    if src is None:
        raise ValueError("no image to draw on: pass image=... (or explain(..., attention=True))")
    queries = att._queries(prompt_positions)
    heat = att.to_grid(layer, head, queries, image_index=image_index)
    words = patch_words_at(explanation, layer, hook)
    img = rgb_image(src)
    rows, cols = heat.shape
    img_h = max(1, round(width * img.size[1] / img.size[0]))
    fig = figure(width, img_h + _HEADER_PX, dpi)
    ax = fig.add_axes((0, 0, 1, img_h / (img_h + _HEADER_PX)))
    ax.imshow(img, extent=(0, cols, rows, 0))
    ax.imshow(
        np.nan_to_num(heat), cmap="inferno", alpha=0.55, extent=(0, cols, rows, 0),
        interpolation="nearest", vmin=0.0, vmax=max(float(np.nanmax(heat)), 1e-9),
    )  # fmt: skip
    ax.set_xlim(0, cols)
    ax.set_ylim(rows, 0)
    ax.axis("off")
    size = max(5.0, min(11.0, 0.28 * width / cols * 72.0 / dpi))
    index_of = {
        (int(r), int(c)): i
        for i, (r, c, im) in enumerate(zip(att.rows, att.cols, att.image_index))
        if int(im) == image_index
    }
    for (r, c), i in index_of.items():
        word = words.get(i, "")
        word = word if len(word) <= max_chars else word[: max_chars - 1] + "…"
        label = f"{word}\n{heat[r, c]:.0%}" if word else f"{heat[r, c]:.0%}"
        ax.text(
            c + 0.5, r + 0.5, label, ha="center", va="center", fontsize=size, color="white",
            parse_math=False,
            bbox={"boxstyle": "round,pad=0.15", "fc": "black", "alpha": 0.45, "lw": 0},
        )  # fmt: skip
    who = "mean over heads" if head is None else f"head {head}"
    fig.text(
        0.01, 1 - 0.5 * _HEADER_PX / (img_h + _HEADER_PX),
        f"Attention to the patches · block {layer} · {who} · from {_query_label(att, queries)}",
        va="center", ha="left", fontsize=10, color="#1f2933", parse_math=False,
    )  # fmt: skip
    return save_png(fig, path, dpi)


def attention_html(
    att: Any,
    path: str | os.PathLike | None = None,
    layer: int | None = None,
    prompt_positions: Sequence[int] | None = None,
    *,
    explanation: Any = None,
    hook: Any = None,
    title: str | None = None,
) -> str:
    """circuitsvis ``AttentionHeads`` of block ``layer`` (default: the first held) over the
    visual tokens and the query positions (their rows and columns of the pattern, in sequence
    order; each visual token is labelled ``img[r,c]`` and, with ``explanation``, its LatentLens
    word). Standalone and offline (the circuitsvis bundle is inlined); written atomically to
    ``path`` if given.

    Example:
        >>> attention_html(att, "attention.html", layer=8, explanation=result)
    """
    layer = att.layers[0] if layer is None else int(layer)
    pat = att.pattern[att._layer_index(layer)]
    queries = att._queries(prompt_positions)
    keep = sorted(set(int(p) for p in att.positions) | set(queries))
    sub = pat[:, keep][:, :, keep]
    words = patch_words_at(explanation, layer, hook)
    visual = {int(p): i for i, p in enumerate(att.positions)}
    tokens = []
    for pos in keep:
        label = att.tokens[pos]
        if pos in visual and visual[pos] in words:
            label = f"{label} {words[visual[pos]]}"
        tokens.append(cv_token(label))
    props = {
        "attention": np.round(sub.astype(np.float64), 5).tolist(),
        "tokens": tokens,
        "attentionHeadNames": [f"L{layer}H{h}" for h in range(sub.shape[0])],
        "maskUpperTri": True,
    }
    div = f"ll-att-{uuid.uuid4().hex[:8]}"
    title = title or f"Attention of the prompt over the visual tokens · block {layer}"
    page = (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{esc(title)}</title>'
        '</head><body style="font-family:system-ui,sans-serif;margin:24px">'
        f'<h1 style="font-size:18px">{esc(title)}</h1>'
        f'<div id="{div}"></div><script>{bundle_js()}</script>'
        f"<script>CircuitsVis.render({script_json(div)}, CircuitsVis.AttentionHeads, "
        f"{script_json(props)});</script></body></html>"
    )
    if path is not None:
        atomic_write_text(path, page, parents=True)
        logger.info("wrote %s", path)
    return page
