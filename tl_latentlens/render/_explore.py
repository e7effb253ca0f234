"""The explorable part of the explanation page: image + patch grid, layer slider, lens panel,
layer x lens table of the selected patch and a clickable mid-layer-leap heatmap.

Python writes the markup (escaped, readable without JS: the overlay shows the first layer's
words, the heatmap its shares) and one plain-data dict that goes into the page's JSON blob
under ``"x"``; :data:`~tl_latentlens.render._assets.EXPLORE_JS` makes it live (every string
it shows is set with ``textContent``, never parsed as HTML).

Data layout (positions, not visual-token indices, index the per-layer lists)::

    layers:  [{"hook", "layer", "h", "cards": [0|1 per patch]}]   in layer order
    patches: [[index, image, row, col], ...]                        ascending index
    sents:   [[display token, ...], ...]                            deduplicated sentences
    lat:     per layer, per patch: [[token, sim, text layer, sentence, position,
             [before, piece, after] of its whole word for a sub-word token, else null], ...] | None
    logit, emb: per layer, per patch: [[token, score], ...] | None
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

from tl_latentlens.render._circuitsvis import display_tokens
from tl_latentlens.render._figures import image_grid, image_indices, result_images
from tl_latentlens.render._markup import esc, fmt_layer, thumbnail_uri
from tl_latentlens.render._protocols import ExplanationLike, PatchLike

logger = logging.getLogger(__name__)

__all__ = ["explore_data", "explore_html", "layer_order"]


def layer_order(hooks: Sequence[str], layers: dict[str, float]) -> list[str]:
    """``hooks`` sorted by layer (hooks of unknown layer last, in their given order).

    Example:
        >>> layer_order(["b", "a"], {"a": 0.0, "b": 4.0})
        ['a', 'b']
    """
    known = [h for h in hooks if layers[h] == layers[h]]
    return sorted(known, key=lambda h: layers[h]) + [h for h in hooks if h not in known]


def _num(x: float, digits: int) -> float | None:
    x = float(x)
    return round(x, digits) if math.isfinite(x) else None


def explore_data(
    exp: ExplanationLike,
    hooks: Sequence[str],
    layers: dict[str, float],
    shown: dict[str, set[int]],
) -> dict[str, Any]:
    """The explorer's plain data (see the module docstring); ``hooks`` in the shown order."""
    ordered = layer_order(hooks, layers)
    at = {h: {p.index: p for p in exp.at(h)} for h in ordered}
    first: dict[int, PatchLike] = {}
    for h in ordered:
        for i, p in at[h].items():
            first.setdefault(i, p)
    indices = sorted(first)
    sents: dict[tuple[str, ...], int] = {}
    lat, logit, emb, meta = [], [], [], []
    for hook in ordered:
        row_l, row_g, row_e = [], [], []
        for i in indices:
            p = at[hook].get(i)
            if p is None:
                row_l.append(None)
                row_g.append(None)
                row_e.append(None)
                continue
            items = []
            for n in p.latent:
                toks = tuple(display_tokens(n))
                sid = sents.setdefault(toks, len(sents))
                whole = _subword(n)
                items.append(
                    [n.token, _num(n.similarity, 4), fmt_layer(n.layer), sid, n.position, whole]
                )
            row_l.append(items)
            row_g.append([[c.token, _num(c.score, 3)] for c in p.logit])
            row_e.append([[c.token, _num(c.score, 4)] for c in p.embedding])
        lat.append(row_l)
        logit.append(row_g)
        emb.append(row_e)
        meta.append(
            {
                "hook": hook,
                "layer": fmt_layer(layers[hook]),
                "h": list(hooks).index(hook),
                "cards": [int(i in shown[hook]) for i in indices],
            }
        )
    patches = [[i, first[i].image_index, first[i].row, first[i].col] for i in indices]
    return {
        "layers": meta,
        "patches": patches,
        "sents": [list(s) for s in sents],
        "lat": lat,
        "logit": logit,
        "emb": emb,
        "several": len(image_indices(exp)) > 1,
    }


def _figure(
    exp: ExplanationLike,
    image: int,
    picture: Any,
    data: dict[str, Any],
    several: bool,
) -> str:
    """One image with its patch grid; the cells show the first layer's top words."""
    rows, cols = image_grid(exp, image)
    pos = {(im, r, c): k for k, (_, im, r, c) in enumerate(data["patches"])}
    first = data["lat"][0] if data["lat"] else []
    cells = []
    for r in range(rows):
        for c in range(cols):
            k = pos.get((image, r, c))
            if k is None:
                cells.append('<span class="ll-x-void"></span>')
                continue
            items = first[k] if k < len(first) else None
            word = esc(items[0][0].strip()) if items else ""
            tip = esc(f"#{data['patches'][k][0]} row {r}, col {c}")
            cells.append(
                f'<div class="ll-x-cell" data-p="{k}" title="{tip}" tabindex="0" role="button" '
                f'aria-label="{tip}"><span>{word}</span></div>'
            )
    uri = thumbnail_uri(picture, max_side=900) if picture is not None else None
    img = f'<img alt="input image{f" {image}" if several else ""}" src="{uri}">' if uri else ""
    shape = f"aspect-ratio:{cols}/{rows}" if not uri else ""
    style = f"grid-template:repeat({rows},1fr)/repeat({cols},1fr)"
    dense = " ll-x-dense ll-x-vdense" if cols > 16 else " ll-x-dense" if cols > 10 else ""
    caption = f"<figcaption>image {image}</figcaption>" if several else ""
    # class="ll-thumb" exactly: one per image, the page's only copy of the picture
    return (
        f'<figure class="ll-x-fig">{caption}<div class="ll-thumb" style="{shape}">{img}'
        f'<div class="ll-thumb-grid ll-x-grid{dense}" style="{style}">{"".join(cells)}</div>'
        "</div></figure>"
    )


def _leap_html(exp: ExplanationLike, data: dict[str, Any]) -> str:
    """Visual layer (rows) x text layer (columns) shares of top-1 neighbours; a cell is a
    button that selects the cell's best-matching patch at that layer."""
    text_layers: dict[str, float] = {}
    for row in data["lat"]:
        for items in row:
            if items:
                text_layers.setdefault(items[0][2], _as_float(items[0][2]))
    cols = sorted(text_layers, key=lambda t: text_layers[t])
    if not cols:
        return ""
    head = "<tr><th>visual ↓ text →</th>" + "".join(f"<th>{esc(t)}</th>" for t in cols) + "</tr>"
    body = []
    for li, (meta, row) in enumerate(zip(data["layers"], data["lat"])):
        count = dict.fromkeys(cols, 0)
        best: dict[str, tuple[float, int]] = {}
        for k, items in enumerate(row):
            if not items:
                continue
            t, sim = items[0][2], items[0][1] if items[0][1] is not None else -math.inf
            count[t] += 1
            if t not in best or sim > best[t][0]:
                best[t] = (sim, k)
        total = max(1, sum(count.values()))
        tds = []
        for t in cols:
            share = count[t] / total
            if not count[t]:
                tds.append('<td class="ll-x-empty"></td>')
                continue
            tip = esc(
                f"visual layer {meta['layer']}: {count[t]} of {total} patches match text layer "
                f"{t} best; click for the best of them"
            )
            tds.append(
                f'<td style="--ll-s:{0.08 + 0.8 * share:.2f}">'
                f'<button type="button" data-l="{li}" data-p="{best[t][1]}" data-t="{esc(t)}" '
                f'title="{tip}"{" class=ll-x-light" if share > 0.5 else ""}>'
                f"{100 * share:.0f}</button></td>"
            )
        body.append(f'<tr data-l="{li}"><th>{esc(meta["layer"])}</th>{"".join(tds)}</tr>')
    return (
        '<div class="ll-x-leap"><h3>Mid-layer leap <small>(% of patches per text layer of '
        "their top LatentLens match; click a cell)</small></h3>"
        f'<div class="ll-x-scroll"><table>{head}{"".join(body)}</table></div></div>'
    )


def _as_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.inf


def explore_html(exp: ExplanationLike, data: dict[str, Any], root_id: str) -> str:
    """The explorer section: image(s) with patch grid and layer slider beside the lens panel;
    below, the layer x lens table of the selected patch and the leap heatmap."""
    if not data["patches"] or not data["layers"]:
        return ""
    try:
        pictures = result_images(exp)
    except ValueError as e:  # fewer pictures than images: the grids go without them
        logger.warning("%s", e)
        pictures = []
    indices = image_indices(exp)
    several = len(indices) > 1
    figures = "".join(
        _figure(exp, i, pictures[i] if i < len(pictures) else None, data, several) for i in indices
    )
    n = len(data["layers"])
    first = data["layers"][0]
    slider = (
        f'<label class="ll-x-slide">Layer <input type="range" class="ll-x-slider" min="0" '
        f'max="{n - 1}" step="1" value="0" aria-label="layer"{" disabled" if n == 1 else ""}>'
        f'<output class="ll-x-out">{esc(first["layer"])} · <code>{esc(first["hook"])}</code>'
        "</output></label>"
    )
    ticks = "".join(f"<span>{esc(m['layer'])}</span>" for m in data["layers"])
    return (
        f'<section class="ll-x" id="{root_id}-x"><h2>Explore <small>hover a patch for its '
        "words; click to lock it (click again or Esc to unlock), arrow keys move the lock; "
        "the slider changes the layer</small></h2>"
        f'<div class="ll-x-main"><div class="ll-x-left"><div class="ll-x-figs">{figures}</div>'
        f'{slider}<div class="ll-x-ticks">{ticks}</div></div>'
        '<div class="ll-x-panel" aria-live="polite"><p class="ll-note">Hover a patch of the '
        "image to see its nearest words at this layer.</p></div></div>"
        '<div class="ll-x-below"><div class="ll-x-layers"><h3>The patch at every layer '
        '<small>(click a row for that layer)</small></h3><div class="ll-x-scroll">'
        '<table class="ll-x-table"></table></div></div>'
        f"{_leap_html(exp, data)}</div></section>"
    )


def _subword(n: Any) -> list[str] | None:
    """``[before, piece, after]`` of the whole word around a sub-word neighbour (shown as
    ``k<mark>ang</mark>aroo``), ``None`` for a whole-word token or a neighbour without one."""
    span = getattr(n, "word_span", None)
    if span is None or not getattr(span, "is_subword", False):
        return None
    return [span.before, span.piece, span.after]
