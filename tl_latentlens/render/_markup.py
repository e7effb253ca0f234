"""HTML pieces of the explanation page (our own markup: every string goes through ``esc``)."""

from __future__ import annotations

import base64
import html
import io
import logging
from collections.abc import Sequence
from typing import Any

from tl_latentlens.render._circuitsvis import display_tokens
from tl_latentlens.render._figures import image_grid, image_indices, rgb_image
from tl_latentlens.render._protocols import ExplanationLike, NeighbourLike, PatchLike

logger = logging.getLogger(__name__)

__all__ = [
    "esc",
    "fmt_layer",
    "header_html",
    "overview_html",
    "card_html",
    "card_id",
    "thumbnail_uri",
]


def esc(value: Any) -> str:
    """HTML-escape any value for text and attribute positions (quotes included).

    Example:
        >>> esc("<s> & 'x'")
        '&lt;s&gt; &amp; &#x27;x&#x27;'
    """
    return html.escape(str(value), quote=True)


def tok(token: str) -> str:
    """A token as a monospace chip (whitespace kept visible by ``white-space: pre``)."""
    return f'<code class="ll-tok">{esc(token)}</code>'


def neighbour_tok(n: Any) -> str:
    """A LatentLens neighbour's token as a chip: a sub-word token as its whole word with the
    matched piece marked (``k<mark>ang</mark>aroo``; :meth:`Neighbour.marked_word_html`), the
    token itself otherwise (and for neighbours without that method)."""
    if getattr(n, "is_subword", False) and hasattr(n, "marked_word_html"):
        title = esc(repr(n.token))
        return f'<code class="ll-tok ll-word" title="{title}">{n.marked_word_html()}</code>'
    return tok(n.token)


def fmt_layer(layer: float) -> str:
    """``4.0 -> "4"``, ``4.5 -> "4.5"`` (``"?"`` when unknown/NaN)."""
    if layer is None or layer != layer:
        return "?"
    return str(int(layer)) if float(layer).is_integer() else f"{layer:g}"


def card_id(root_id: str, h: int, index: int) -> str:
    """DOM id of the card of visual token ``index`` at the ``h``-th shown hook."""
    return f"{root_id}-h{h}-p{index}"


def thumbnail_uri(image: Any, max_side: int = 600) -> str | None:
    """``data:`` URI of a PNG thumbnail of a PIL image / array (``None`` if not an image)."""
    if image is None:
        return None
    try:
        img = rgb_image(image)
        img.thumbnail((max_side, max_side))
        buf = io.BytesIO()
        img.save(buf, format="PNG", optimize=True)
    except Exception as e:  # noqa: BLE001 - a thumbnail is optional decoration
        logger.warning("cannot embed the image in the page (%s: %s)", type(e).__name__, e)
        return None
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def search_methods_html(exp: ExplanationLike) -> str:
    """How the bank was searched: exact, or routes (approximate, proven recall) per hook."""
    methods = getattr(exp, "search", None) or {}
    if not methods:
        return "<i>not recorded</i>"
    kinds = sorted(set(methods.values()))
    if kinds == ["exact"] and not getattr(exp, "search_audit", None):
        return "exact (every hook)"
    parts = []
    fallback = getattr(exp, "exact_fallback", {}) or {}
    audit = getattr(exp, "search_audit", {}) or {}
    for hook, how in methods.items():
        extra = f", {fallback[hook]} exact fallbacks" if fallback.get(hook) else ""
        if hook in audit:
            recall, n = audit[hook]
            checked = f"audited recall {recall:.3f} on {n} queries"
            # a routed hook whose audit failed was answered exactly
            extra += f", {checked}" if how == "routes" else f" (routes failed the audit: {checked})"
        parts.append(f"<code>{esc(hook)}</code>: {esc(how)}{extra}")
    return "; ".join(parts) + (
        " (routes: approximate, recall@10 ≥ 0.98 proven by calibration and audited on a share "
        "of this search's queries)"
    )


def header_html(
    exp: ExplanationLike,
    title: str,
    hooks: Sequence[str],
    layers: dict[str, float],
    shown: dict[str, set[int]],
    root_id: str,
) -> str:
    """Title and run facts (the image(s) are in the explorer, :mod:`._explore`)."""
    rows, cols = exp.grid
    indices = image_indices(exp)
    hook_list = ", ".join(f"<code>{esc(h)}</code> (layer {fmt_layer(layers[h])})" for h in hooks)
    bank_layers = sorted({n.layer for p in exp.patches for n in p.latent})
    search = "per-layer search" if exp.per_layer else "cross-layer search"
    bank_desc = f"{len(exp.bank_hooks)} hooks"
    if bank_layers:
        bank_desc += f" (top matches in layers {', '.join(fmt_layer(x) for x in bank_layers)})"
    timing = " · ".join(f"{esc(k)} {v:.2f} s" for k, v in exp.timings.items())
    if len(exp.timings) > 1:
        timing += f" · total {sum(exp.timings.values()):.2f} s"
    facts = [
        ("Model", esc(exp.model)),
        ("Bank", _bank_name(exp.bank) if exp.bank else "<i>unknown</i>"),
        (
            "Prompt",
            f'<span class="ll-prompt">{esc(exp.prompt)}</span>' if exp.prompt else "<i>none</i>",
        ),
        ("Grid", f"{rows} × {cols} patches · {exp.n_visual} visual tokens{_n_images(indices)}"),
        ("Visual hooks", hook_list),
        ("Text hooks", f"{bank_desc} · {search} · k = {exp.k}"),
        ("Search", search_methods_html(exp)),
        ("Timings", timing or "<i>not recorded</i>"),
    ]
    if getattr(exp, "interventions", None):  # a run under fwd_hooks says so
        done = ", ".join(
            f"<code>{esc(x.get('fn', '?'))}</code> at <code>{esc(x.get('hook', '?'))}</code>"
            for x in exp.interventions
        )
        facts.append(("Interventions", done))
    meta = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
    return (
        f'<header class="ll-head"><h1>{esc(title)}</h1>'
        f'<div class="ll-head-body"><dl class="ll-meta">{meta}</dl></div></header>'
    )


def overview_html(
    exp: ExplanationLike,
    hooks: Sequence[str],
    layers: dict[str, float],
    shown: dict[str, set[int]],
    root_id: str,
) -> str:
    """One table per hook (and per image, for a prompt with several): the patch grid with
    the top LatentLens word in each cell."""
    indices = image_indices(exp)
    figures = []
    for h, hook in enumerate(hooks):
        every = exp.at(hook)
        sims = [p.latent[0].similarity for p in every if p.latent]
        lo, hi = (min(sims), max(sims)) if sims else (0.0, 1.0)
        for i in indices:
            patches = [p for p in every if p.image_index == i]
            figures.append(
                _grid_table(exp, hook, h, i, indices, patches, layers, shown, root_id, lo, hi)
            )
    return (
        '<section class="ll-overview"><h2>Top LatentLens word per patch '
        "<small>(click a cell for its neighbours)</small></h2>"
        f'<div class="ll-grids">{"".join(figures)}</div></section>'
    )


def _grid_table(
    exp: ExplanationLike,
    hook: str,
    h: int,
    image: int,
    indices: Sequence[int],
    patches: Sequence[PatchLike],
    layers: dict[str, float],
    shown: dict[str, set[int]],
    root_id: str,
    lo: float,
    hi: float,
) -> str:
    """The overview table of one hook and one image."""
    rows, cols = image_grid(exp, image)
    cell: dict[tuple[int, int], str] = {}
    extra = []
    for p in patches:
        sim = p.latent[0].similarity if p.latent else None
        alpha = 0.06 if sim is None else 0.1 + 0.55 * ((sim - lo) / (hi - lo) if hi > lo else 1)
        tip = f"#{p.index}{_image_of(p, indices)} (row {p.row}, col {p.col})"
        if p.latent:
            n = p.latent[0]
            tip += f": {n.token!r} sim {n.similarity:.3f}, text layer {fmt_layer(n.layer)}\n{n.sentence}"
        word = esc(p.top_word) or "&nbsp;"
        inner = (
            f'<a href="#{card_id(root_id, h, p.index)}" title="{esc(tip)}">{word}</a>'
            if p.index in shown[hook]
            else f'<span title="{esc(tip)}">{word}</span>'
        )
        bg = f"background:rgba(30,99,196,{alpha:.2f})"
        if 0 <= p.row < rows and 0 <= p.col < cols:
            cell[(p.row, p.col)] = f'<td style="{bg}">{inner}</td>'
        else:  # not a grid patch: listed after the grid
            extra.append(f'<span class="ll-extra" style="{bg}">{inner}</span>')
    head = "<tr><th></th>" + "".join(f"<th>{c}</th>" for c in range(cols)) + "</tr>"
    body = "".join(
        f"<tr><th>{r}</th>" + "".join(cell.get((r, c), "<td></td>") for c in range(cols)) + "</tr>"
        for r in range(rows)
    )
    if extra:
        body += f'<tr><th>other</th><td colspan="{max(cols, 1)}">{"".join(extra)}</td></tr>'
    which = f" · image {image}" if len(indices) > 1 else ""
    return (
        f'<figure class="ll-grid{" ll-dense" if cols > 12 else ""}"><figcaption><code>{esc(hook)}</code> '
        f"<small>layer {fmt_layer(layers[hook])}{which}</small></figcaption>"
        f"<table>{head}{body}</table></figure>"
    )


def _n_images(indices: Sequence[int]) -> str:
    return f" · {len(indices)} images" if len(indices) > 1 else ""


def _image_of(patch: PatchLike, indices: Sequence[int]) -> str:
    """`` image i`` for a result with several images, else nothing."""
    return f" image {patch.image_index}" if len(indices) > 1 else ""


def _fallback(patch: PatchLike) -> str:
    """Plain sentences (matched token marked); circuitsvis replaces this when it mounts."""
    return fallback_sentences(patch.latent)


def fallback_sentences(neighbours: Sequence[NeighbourLike]) -> str:
    """The neighbours' sentences as a plain list, the matched token marked: what a page shows
    before (or without) circuitsvis."""
    items = []
    for n in neighbours:
        toks = display_tokens(n)
        if 0 <= n.position < len(toks):
            pre, mid, post = toks[: n.position], toks[n.position], toks[n.position + 1 :]
            items.append(f"<li>{esc(''.join(pre))}<mark>{esc(mid)}</mark>{esc(''.join(post))}</li>")
        else:
            items.append(f"<li>{esc(''.join(toks))}</li>")
    if not items:
        return '<p class="ll-note">No LatentLens neighbours.</p>'
    return f'<ol class="ll-fallback">{"".join(items)}</ol>'


def _lens_table(patch: PatchLike) -> str:
    """Rank-aligned table: LatentLens (sim, text layer) | LogitLens | EmbeddingLens."""
    cols: list[tuple[str, list[tuple[str, str]]]] = [
        (
            "LatentLens",
            [
                (neighbour_tok(n), f"{n.similarity:.3f} · L{fmt_layer(n.layer)}")
                for n in patch.latent
            ],
        )
    ]
    if patch.logit:
        cols.append(("LogitLens", [(tok(c.token), f"{c.score:.2f}") for c in patch.logit]))
    if patch.embedding:
        cols.append(("EmbeddingLens", [(tok(c.token), f"{c.score:.3f}") for c in patch.embedding]))
    head = "<tr><th>#</th>" + "".join(
        f'<th class="ll-lens" colspan="2">{name}</th>' for name, _ in cols
    )
    n_rows = max(len(v) for _, v in cols)
    body = []
    for i in range(n_rows):
        tds = "".join(
            f'<td class="ll-lens">{v[i][0]}</td><td class="ll-num">{v[i][1]}</td>'
            if i < len(v)
            else '<td class="ll-lens"></td><td></td>'
            for _, v in cols
        )
        body.append(f'<tr><td class="ll-num">{i + 1}</td>{tds}</tr>')
    return f'<table class="ll-lenses ll-n{len(cols)}">{head}</tr>{"".join(body)}</table>'


def card_html(
    patch: PatchLike, h: int, root_id: str, key: str, several_images: bool = False
) -> str:
    """One visual token at one hook: circuitsvis slot (with fallback) beside the lens table
    (``several_images``: say which image of the prompt the token belongs to)."""
    top = ""
    if patch.latent:
        n = patch.latent[0]
        top = f"top {neighbour_tok(n)} {n.similarity:.3f} · text layer {fmt_layer(n.layer)}"
    where = f"row {patch.row} · col {patch.col} · position {patch.position}"
    if several_images:
        where = f"image {patch.image_index} · {where}"
    # circuitsvis pages 5 samples at a time: hide its (then useless) selectors up to 5.
    compact = " data-compact" if len(patch.latent) <= 5 else ""
    return (
        f'<article class="ll-card" id="{card_id(root_id, h, patch.index)}">'
        f'<div class="ll-card-head"><b>visual token #{patch.index}</b>'
        f'<span class="ll-where">{where}</span><span>{top}</span></div>'
        f'<div class="ll-card-body"><div class="ll-cv" id="{root_id}-cv-{key}" data-key="{key}"'
        f"{compact}>"
        f"{_fallback(patch)}</div>{_lens_table(patch)}</div></article>"
    )


def _bank_name(bank: str) -> str:
    """The bank's folder name (the full path, a machine detail, in its tooltip)."""
    name = bank.rstrip("/").rsplit("/", 1)[-1] or bank
    return f'<span title="{esc(bank)}">{esc(name)}</span>'
