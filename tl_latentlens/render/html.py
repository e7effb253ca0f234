"""Standalone, offline HTML pages of :class:`~tl_latentlens.lens.results.Explanation` results.

The page has a header (model, bank, prompt, grid, timings, the image with its patch grid; one
per image for a prompt with several), a patch-grid overview per hook (and image) (top LatentLens word per patch, click to jump) and one card per
visual token and hook: its k LatentLens neighbours as their corpus sentences with the matched
token highlighted (a circuitsvis ``TopkSamples``), beside a table of the LatentLens, LogitLens
and EmbeddingLens tokens.

circuitsvis's JS bundle is inlined once (see :mod:`tl_latentlens.render._circuitsvis`), so the
page needs no network. Before the JS runs, and if it cannot, each card shows the same sentences
as plain HTML.

Example:
    >>> html = explanation_html(result, "out/explanation.html", max_patches=64)
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Sequence
from typing import Any

from tl_latentlens._io import atomic_write_text
from tl_latentlens.hooks import layer_of
from tl_latentlens.render import _circuitsvis as cv
from tl_latentlens.render._assets import EXPLORE_CSS, EXPLORE_JS, INIT_JS, PAGE_CSS
from tl_latentlens.render._explore import explore_data, explore_html
from tl_latentlens.render._figures import image_indices
from tl_latentlens.render._markup import card_html, esc, fmt_layer, header_html, overview_html
from tl_latentlens.render._protocols import ExplanationLike

logger = logging.getLogger(__name__)

__all__ = ["explanation_html", "explanation_fragment", "show_explanation", "EAGER_CARDS"]

#: Pages with at most this many cards mount every circuitsvis component on load; larger
#: pages mount a card when it scrolls near the viewport.
EAGER_CARDS = 60


def _select_hooks(exp: ExplanationLike, hooks: str | Sequence[str] | None) -> list[str]:
    if hooks is None:
        return list(exp.hooks)
    chosen = [hooks] if isinstance(hooks, str) else list(hooks)
    unknown = [h for h in chosen if h not in exp.hooks]
    if unknown or not chosen:
        raise ValueError(f"unknown hook(s) {unknown}; this result explains hooks {exp.hooks}")
    return chosen


def _layers(exp: ExplanationLike, hooks: Sequence[str]) -> dict[str, float]:
    layers = {p.hook: p.layer for p in exp.patches}
    out = {}
    for h in hooks:
        try:
            out[h] = layers[h] if h in layers else layer_of(h)
        except ValueError:  # a hook without patches and outside the naming convention
            out[h] = float("nan")
    return out


def explanation_fragment(
    exp: ExplanationLike,
    hooks: str | Sequence[str] | None = None,
    max_patches: int | None = None,
    title: str | None = None,
    lazy: bool | None = None,
) -> str:
    """The page body as one self-contained ``<div>`` (CSS, data, bundle and JS included).

    Used by :func:`explanation_html` (wrapped in a document) and :func:`show_explanation`
    (displayed inline in a notebook). Arguments as in :func:`explanation_html`.

    Example:
        >>> div = explanation_fragment(result, hooks=result.hooks[:1])
    """
    hooks = _select_hooks(exp, hooks)
    if max_patches is not None and (not isinstance(max_patches, int) or max_patches < 1):
        raise ValueError(f"max_patches must be a positive int or None, got {max_patches!r}")
    title = title or f"LatentLens · {exp.model}"
    root_id = "ll-" + uuid.uuid4().hex[:10]
    layers = _layers(exp, hooks)

    several = len(image_indices(exp)) > 1
    shown: dict[str, set[int]] = {}
    sections, cards = [], {}
    for h, hook in enumerate(hooks):
        patches = exp.at(hook)
        picked = patches if max_patches is None else patches[:max_patches]
        shown[hook] = {p.index for p in picked}
        parts = []
        for p in picked:
            key = f"h{h}p{p.index}"
            which = f"image {p.image_index}, " if several else ""
            label = f"#{p.index} ({which}row {p.row}, col {p.col})"
            props = cv.topk_props(p, f"{hook} (layer {fmt_layer(p.layer)})", label)
            if props is not None:
                cards[key] = props
            parts.append(card_html(p, h, root_id, key, several_images=several))
        note = f"{len(picked)} of {len(patches)} visual tokens"
        if len(picked) < len(patches):
            note += f" (max_patches={max_patches})"
        sections.append(
            f'<section class="ll-hook"><h2><code>{esc(hook)}</code> '
            f"<small>layer {fmt_layer(layers[hook])}</small></h2>"
            f'<p class="ll-note">{note}. Neighbour sentences best first; the matched token is '
            f"highlighted (darker = more similar). Hover a token for its similarity.</p>"
            f"{''.join(parts)}</section>"
        )
    n_cards = sum(len(s) for s in shown.values())
    eager = n_cards if lazy is False else (0 if lazy else EAGER_CARDS)
    explore = explore_data(exp, hooks, layers, shown)
    data = {"component": cv.COMPONENT, "eager": eager, "cards": cards, "x": explore}
    logger.info(
        "explanation page: %d hooks, %d cards (%s mounting)",
        len(hooks),
        n_cards,
        "eager" if n_cards <= eager else "lazy",
    )
    return (
        f'<div class="ll-root" id="{root_id}">'
        f"{header_html(exp, title, hooks, layers, shown, root_id)}"
        f"{explore_html(exp, explore, root_id)}"
        f"{overview_html(exp, hooks, layers, shown, root_id)}"
        f"{''.join(sections)}"
        f'<script type="application/json" class="ll-data">{cv.script_json(data)}</script>'
        f"<script>{cv.bundle_js()}</script>"
        f"<script>{(EXPLORE_JS + INIT_JS).replace('__ROOT__', root_id)}</script>"
        "</div>"
    )


def explanation_html(
    exp: ExplanationLike,
    path: str | os.PathLike | None = None,
    hooks: str | Sequence[str] | None = None,
    max_patches: int | None = None,
    title: str | None = None,
    lazy: bool | None = None,
) -> str:
    """A standalone HTML page of ``exp`` that works offline.

    Args:
        exp: The :class:`~tl_latentlens.lens.results.Explanation` to show.
        path: If given, the page is also written there (atomically, UTF-8).
        hooks: Visual hooks to show (default: all explained hooks, in order).
        max_patches: Show detail cards for at most this many visual tokens per hook (the
            overview grid always shows all).
        title: Page title (default ``"LatentLens · <model>"``).
        lazy: Mount the circuitsvis components only when scrolled near (``True``), all on load
            (``False``), or automatically by page size (``None``, see :data:`EAGER_CARDS`).

    Returns:
        The HTML text.

    Raises:
        ValueError: An unknown hook (the message lists the explained ones) or a bad
            ``max_patches``.

    Example:
        >>> page = explanation_html(result, "out/cat.html", hooks=["blocks.0.hook_resid_pre"])
        >>> page.startswith("<!doctype html>")
        True
    """
    body = explanation_fragment(exp, hooks=hooks, max_patches=max_patches, title=title, lazy=lazy)
    page_title = esc(title or f"LatentLens · {exp.model}")
    page = (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="generator" content="tl_latentlens">'
        f"<title>{page_title}</title><style>{PAGE_CSS}{EXPLORE_CSS}</style></head>"
        f'<body style="margin:0;background:#fff">{body}</body></html>\n'
    )
    if path is not None:
        atomic_write_text(path, page, parents=True)
        logger.info("wrote %s (%.1f MB)", path, len(page.encode("utf-8")) / 1e6)
    return page


def show_explanation(exp: ExplanationLike, **kwargs: Any) -> Any:
    """An ``IPython.display.HTML`` object of ``exp`` for notebooks.

    Args:
        exp: The explanation.
        **kwargs: ``hooks``, ``max_patches``, ``title``, ``lazy`` as in :func:`explanation_html`.

    Returns:
        ``IPython.display.HTML`` (displayed when it is the last expression of a cell).

    Raises:
        ImportError: IPython is not installed.

    Example:
        >>> show_explanation(result, max_patches=16)  # in a Jupyter cell
    """
    try:
        from IPython.display import HTML
    except ImportError as e:
        raise ImportError(
            "show_explanation needs IPython (pip install ipython, or use Jupyter); "
            "to get a file instead use explanation_html(exp, path)"
        ) from e
    fragment = explanation_fragment(exp, **kwargs)
    return HTML(f"<style>{PAGE_CSS}{EXPLORE_CSS}</style>{fragment}")
