"""Offline HTML views of SAE results: feature labels and an SAE on an image's visual tokens.

Two pages, both self-contained (circuitsvis's bundle inlined once, images as ``data:`` URIs):

* :func:`sae_features_html`: one card per SAE feature, its decoder direction's LatentLens
  neighbours as their corpus sentences (circuitsvis ``TopkSamples``, plain HTML before the JS
  runs or if it cannot).
* :func:`sae_image_html`: the image under a heatmap of each of the strongest features, the
  visual tokens coloured by those features (circuitsvis ``ColoredTokensMulti``: hover a token
  for its activations, click a feature to colour by it), a table of every visual token's
  strongest features with their labels, and the feature cards.

Results are read through the structural types below, so this module imports no lens module.

Example:
    >>> sae_image_html(lens.sae_on_image(sae, image), "out/sae.html")
"""

from __future__ import annotations

import logging
import math
import os
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from tl_latentlens._io import atomic_write_text
from tl_latentlens.render import _circuitsvis as cv
from tl_latentlens.render._assets import INIT_JS, PAGE_CSS
from tl_latentlens.render._markup import esc, fallback_sentences, fmt_layer, thumbnail_uri, tok
from tl_latentlens.render._protocols import NeighbourLike, PatchLike

logger = logging.getLogger(__name__)

__all__ = [
    "MAX_HEATMAPS",
    "sae_features_fragment",
    "sae_features_html",
    "sae_image_fragment",
    "sae_image_html",
    "show_sae_features",
    "show_sae_image",
]

#: Features drawn as heatmaps (and coloured in the token view) unless ``features=`` says.
MAX_HEATMAPS = 6

SAE_CSS = """
.ll-root .ll-heats{display:flex;flex-wrap:wrap;gap:16px 22px;margin:8px 0 4px}
.ll-root .ll-heat{margin:0;width:220px}
.ll-root .ll-heat figcaption{font-size:12.5px;margin-top:4px;overflow-wrap:anywhere}
.ll-root .ll-heat-box{position:relative;width:220px;height:220px;background:#e5e7eb;
 border:1px solid var(--ll-line);border-radius:4px;overflow:hidden}
.ll-root .ll-heat-box img{position:absolute;inset:0;width:100%;height:100%;object-fit:fill}
.ll-root .ll-heat-grid{position:absolute;inset:0;display:grid}
.ll-root .ll-heat-grid span{border:1px solid rgba(255,255,255,.25)}
.ll-root .ll-ctm{border:1px solid var(--ll-line);border-radius:6px;padding:6px 10px;margin:6px 0 10px}
.ll-root .ll-ctm-plain span{font-family:ui-monospace,"DejaVu Sans Mono",Menlo,monospace;font-size:12px}
.ll-root table.ll-pf{font-size:12.5px}
.ll-root table.ll-pf th{text-align:left;color:var(--ll-mute);font-weight:600;padding:3px 8px;
 border-bottom:1px solid var(--ll-line)}
.ll-root table.ll-pf td{padding:3px 8px;border-bottom:1px solid #eef2f7;vertical-align:baseline}
.ll-root table.ll-pf td.ll-num{text-align:right;color:var(--ll-mute);font-variant-numeric:tabular-nums}
.ll-root table.ll-pf a{color:var(--ll-accent);text-decoration:none}
"""

# Mounts the ColoredTokensMulti view (``__ROOT__``: the root element's id).
CTM_JS = """
(function () {
  "use strict";
  var root = document.getElementById("__ROOT__");
  var slot = document.getElementById("__ROOT__-ctm");
  if (!root || !slot) { return; }
  if (typeof CircuitsVis === "undefined" || !CircuitsVis.ColoredTokensMulti) {
    console.error("tl_latentlens: circuitsvis did not load; showing plain tokens");
    return;
  }
  var props = JSON.parse(root.querySelector("script.ll-ctm-data").textContent);
  try {
    CircuitsVis.render(slot.id, CircuitsVis.ColoredTokensMulti, props);
    root.setAttribute("data-ll-ctm", "1");
  } catch (err) {
    console.error("tl_latentlens: circuitsvis failed on " + slot.id, err);
  }
})();
"""


# ---- what the pages read ----------------------------------------------------------------------
class FeatureLabelLike(Protocol):
    """A feature's LatentLens label."""

    @property
    def feature(self) -> int: ...
    @property
    def label(self) -> str: ...
    @property
    def neighbours(self) -> Sequence[NeighbourLike]: ...


class _ExplanationPatches(Protocol):
    @property
    def patches(self) -> Sequence[PatchLike]: ...


class FeatureExplanationLike(Protocol):
    """SAE features explained (``SAEFeatureExplanation``)."""

    @property
    def sae(self) -> str: ...
    @property
    def hook(self) -> str: ...
    @property
    def layer(self) -> float: ...
    @property
    def features(self) -> Sequence[int]: ...
    @property
    def explanation(self) -> _ExplanationPatches: ...
    def label(self, feature: int) -> FeatureLabelLike: ...


class PatchFeaturesLike(Protocol):
    """One visual token's strongest features."""

    @property
    def index(self) -> int: ...
    @property
    def position(self) -> int: ...
    @property
    def row(self) -> int: ...
    @property
    def col(self) -> int: ...
    @property
    def image_index(self) -> int: ...
    @property
    def features(self) -> Sequence[int]: ...
    @property
    def activations(self) -> Sequence[float]: ...


class ImageFeaturesLike(Protocol):
    """An SAE on one image (``SAEImageFeatures``)."""

    @property
    def model(self) -> str: ...
    @property
    def sae(self) -> str: ...
    @property
    def hook(self) -> str: ...
    @property
    def layer(self) -> float: ...
    @property
    def prompt(self) -> str | None: ...
    @property
    def grid(self) -> tuple[int, int]: ...
    @property
    def top(self) -> int: ...
    @property
    def patches(self) -> Sequence[PatchFeaturesLike]: ...
    @property
    def explained(self) -> FeatureExplanationLike | None: ...
    @property
    def features(self) -> Sequence[int]: ...
    @property
    def image(self) -> Any: ...
    @property
    def activations(self) -> Any: ...  # [n_visual, d_sae] tensor or array
    def label(self, feature: int) -> str: ...
    def heatmap(self, feature: int, image: int = 0) -> np.ndarray: ...


# ---- small pieces ---------------------------------------------------------------------------
def _token_table(patch: PatchLike) -> str:
    rows = "".join(
        f'<tr><td class="ll-num">{i + 1}</td><td>{tok(n.token)}</td>'
        f'<td class="ll-num">{n.similarity:.3f} · L{fmt_layer(n.layer)}</td></tr>'
        for i, n in enumerate(patch.latent)
    )
    return (
        f'<table class="ll-lenses"><tr><th>#</th><th colspan="2">LatentLens</th></tr>{rows}</table>'
    )


def _feature_cards(
    feats: FeatureExplanationLike, order: Sequence[int], root_id: str
) -> tuple[str, dict[str, Any]]:
    """One card per feature of ``order`` and the TopkSamples props of each."""
    by_feature = dict(zip(feats.features, feats.explanation.patches))
    hook_label = f"{feats.hook} (layer {fmt_layer(feats.layer)})"
    cards, props = [], {}
    for f in order:
        patch = by_feature[f]
        key = f"f{f}"
        got = cv.topk_props(patch, hook_label, f"feature {f}")
        if got is not None:
            props[key] = got
        top = ""
        if patch.latent:
            n = patch.latent[0]
            top = f"top {tok(n.token)} {n.similarity:.3f} · text layer {fmt_layer(n.layer)}"
        compact = " data-compact" if len(patch.latent) <= 5 else ""
        cards.append(
            f'<article class="ll-card" id="{root_id}-f{f}">'
            f'<div class="ll-card-head"><b>feature {f}</b>'
            f'<span class="ll-where">{esc(feats.label(f).label)}</span><span>{top}</span></div>'
            f'<div class="ll-card-body"><div class="ll-cv" id="{root_id}-cv-{key}" '
            f'data-key="{key}"{compact}>{fallback_sentences(patch.latent)}</div>'
            f"{_token_table(patch)}</div></article>"
        )
    return "".join(cards), props


def _scripts(root_id: str, cards: Mapping[str, Any], extra: str = "") -> str:
    data = {"component": cv.COMPONENT, "eager": len(cards), "cards": dict(cards)}
    return (
        f'<script type="application/json" class="ll-data">{cv.script_json(data)}</script>'
        f"{extra}<script>{cv.bundle_js()}</script>"
        f"<script>{INIT_JS.replace('__ROOT__', root_id)}</script>"
    )


def _page(body: str, title: str) -> str:
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="generator" content="tl_latentlens">'
        f"<title>{esc(title)}</title><style>{PAGE_CSS}{SAE_CSS}</style></head>"
        f'<body style="margin:0;background:#fff">{body}</body></html>\n'
    )


def _write(page: str, path: str | os.PathLike | None) -> str:
    if path is not None:
        atomic_write_text(path, page, parents=True)
        logger.info("wrote %s (%.1f MB)", path, len(page.encode("utf-8")) / 1e6)
    return page


def _ipython_html(text: str) -> Any:
    try:
        from IPython.display import HTML
    except ImportError as e:
        raise ImportError(
            "show needs IPython (pip install ipython, or use Jupyter); to get a file instead "
            "use to_html(path)"
        ) from e
    return HTML(f"<style>{PAGE_CSS}{SAE_CSS}</style>{text}")


# ---- feature labels page --------------------------------------------------------------------
def sae_features_fragment(feats: FeatureExplanationLike, title: str | None = None) -> str:
    """The features page body as one self-contained ``<div>`` (see :func:`sae_features_html`).

    Example:
        >>> div = sae_features_fragment(lens.explain_sae(sae, features=range(8)))
    """
    root_id = "ll-" + uuid.uuid4().hex[:10]
    title = title or f"SAE features · {feats.hook}"
    cards, props = _feature_cards(feats, list(feats.features), root_id)
    head = (
        f'<h1>{esc(title)}</h1><dl class="ll-meta"><dt>SAE</dt><dd>{esc(feats.sae)}</dd>'
        f"<dt>Hook</dt><dd><code>{esc(feats.hook)}</code> (layer {fmt_layer(feats.layer)})</dd>"
        f"<dt>Features</dt><dd>{len(feats.features)}</dd></dl>"
        '<p class="ll-note">Each feature\'s decoder direction, explained by its nearest '
        "contextual text tokens in the bank: the sentences they occur in, best first, with "
        "the matched token highlighted.</p>"
    )
    return f'<div class="ll-root" id="{root_id}">{head}{cards}{_scripts(root_id, props)}</div>'


def sae_features_html(
    feats: FeatureExplanationLike, path: str | os.PathLike | None = None, title: str | None = None
) -> str:
    """A standalone offline page of SAE feature labels (``SAEFeatureExplanation.to_html``).

    Args:
        feats: The explained features.
        path: If given, the page is also written there (atomically).
        title: Page title.

    Returns:
        The HTML text.

    Example:
        >>> sae_features_html(lens.explain_sae(sae, features=[3, 17]), "out/features.html")
    """
    body = sae_features_fragment(feats, title=title)
    return _write(_page(body, title or f"SAE features · {feats.hook}"), path)


def show_sae_features(feats: FeatureExplanationLike, **kwargs: Any) -> Any:
    """An ``IPython.display.HTML`` of :func:`sae_features_fragment` for notebooks."""
    return _ipython_html(sae_features_fragment(feats, **kwargs))


# ---- image page -----------------------------------------------------------------------------
def _pick_features(
    res: ImageFeaturesLike, feature: int | None, features: Sequence[int] | None
) -> list[int]:
    if feature is not None and features is not None:
        raise ValueError("pass feature= or features=, not both")
    if feature is not None:
        chosen = [int(feature)]
    elif features is not None:
        chosen = [int(f) for f in features]
    else:
        chosen = list(res.features)[:MAX_HEATMAPS]
    n = int(res.activations.shape[1])
    bad = [f for f in chosen if not 0 <= f < n]
    if bad:
        raise ValueError(f"feature ids {bad} outside 0..{n - 1}")
    return chosen


def _images(res: ImageFeaturesLike) -> list[Any]:
    if isinstance(res.image, (list, tuple)):
        return list(res.image)
    return [res.image]


def _heat_figure(
    res: ImageFeaturesLike, feature: int, image_index: int, image_uri: str | None
) -> str:
    heat = res.heatmap(feature, image=image_index)
    rows, cols = heat.shape
    peak = float(np.nanmax(heat)) if np.isfinite(heat).any() else 0.0
    cells = []
    for r in range(rows):
        for c in range(cols):
            v = float(heat[r, c])
            alpha = 0.0 if not math.isfinite(v) or peak <= 0 else max(v, 0.0) / peak * 0.8
            cells.append(
                f'<span style="background:rgba(220,38,38,{alpha:.3f})" '
                f'title="row {r}, col {c}: {v:.3f}"></span>'
            )
    img = f'<img src="{image_uri}" alt="image">' if image_uri else ""
    which = f"image {image_index} · " if len(_images(res)) > 1 else ""
    return (
        f'<figure class="ll-heat"><div class="ll-heat-box">{img}'
        f'<div class="ll-heat-grid" style="grid-template-columns:repeat({cols},1fr);'
        f'grid-template-rows:repeat({rows},1fr)">{"".join(cells)}</div></div>'
        f"<figcaption>{which}<b>feature {feature}</b> · {esc(res.label(feature))} "
        f"<small>(peak {peak:.3f})</small></figcaption></figure>"
    )


def _ctm_props(res: ImageFeaturesLike, shown: Sequence[int]) -> dict[str, Any]:
    """ColoredTokensMulti props: one token per visual token (its top feature's label), one
    value column per shown feature."""
    tokens, values = [], []
    for p in res.patches:
        word = res.label(p.features[0]).split(",")[0] if p.features else "·"
        tokens.append(cv.cv_token(f"[{p.row},{p.col}] {word} "))
        acts = dict(zip(p.features, p.activations))
        values.append([_finite(_activation(res, p, f, acts)) for f in shown])
    labels = [f"f{f}: {res.label(f)}" for f in shown]
    return {"tokens": tokens, "values": values, "labels": labels}


def _activation(res: ImageFeaturesLike, p: PatchFeaturesLike, f: int, known: dict) -> float:
    return float(known[f]) if f in known else float(res.activations[p.index, f])


def _finite(x: float) -> float:
    return x if math.isfinite(x) else 0.0


def _patch_table(res: ImageFeaturesLike, root_id: str, max_patches: int | None) -> str:
    several = len(_images(res)) > 1
    picked = list(res.patches) if max_patches is None else list(res.patches)[:max_patches]
    known = set(res.explained.features) if res.explained is not None else set()
    rows = []
    for p in picked:
        cells = []
        for f, a in zip(p.features, p.activations):
            name = f'<a href="#{root_id}-f{f}">f{f}</a>' if f in known else f"f{f}"
            cells.append(f"<td>{name} <small>{a:.3f}</small> {esc(res.label(f))}</td>")
        cells += ["<td></td>"] * (res.top - len(p.features))
        where = f"{p.image_index} · " if several else ""
        rows.append(
            f'<tr><td class="ll-num">{p.index}</td><td class="ll-num">{where}{p.row}, {p.col}'
            f"</td>{''.join(cells)}</tr>"
        )
    head = "".join(f"<th>#{i + 1} feature · activation · label</th>" for i in range(res.top))
    note = f"{len(picked)} of {len(res.patches)} visual tokens"
    return (
        f'<p class="ll-note">{note}; features that do not fire (activation 0) are left out.</p>'
        f'<table class="ll-pf"><tr><th>token</th><th>{"image · " if several else ""}row, col'
        f"</th>{head}</tr>{''.join(rows)}</table>"
    )


def sae_image_fragment(
    res: ImageFeaturesLike,
    feature: int | None = None,
    features: Sequence[int] | None = None,
    max_patches: int | None = None,
    title: str | None = None,
) -> str:
    """The image page body as one self-contained ``<div>`` (see :func:`sae_image_html`)."""
    shown = _pick_features(res, feature, features)
    root_id = "ll-" + uuid.uuid4().hex[:10]
    title = title or f"SAE features on an image · {res.model}"
    uris = [thumbnail_uri(im, max_side=440) for im in _images(res)]
    heats = (
        "".join(_heat_figure(res, f, i, uri) for f in shown for i, uri in enumerate(uris))
        or '<p class="ll-note">No feature fires on this image.</p>'
    )
    ctm = _ctm_props(res, shown) if shown else None
    plain = "".join(f"<span>{t}</span>" for t in (ctm or {}).get("tokens", []))
    order = list(res.features)
    cards, props = (
        _feature_cards(res.explained, order, root_id) if res.explained is not None else ("", {})
    )
    head = (
        f'<h1>{esc(title)}</h1><dl class="ll-meta">'
        f"<dt>Model</dt><dd>{esc(res.model)}</dd><dt>SAE</dt><dd>{esc(res.sae)}</dd>"
        f"<dt>Hook</dt><dd><code>{esc(res.hook)}</code> (layer {fmt_layer(res.layer)})</dd>"
        f'<dt>Prompt</dt><dd><span class="ll-prompt">{esc(res.prompt or "")}</span></dd>'
        f"<dt>Patch grid</dt><dd>{res.grid[0]} x {res.grid[1]}</dd>"
        f"<dt>Features</dt><dd>top {res.top} per visual token; {len(order)} distinct</dd></dl>"
    )
    body = (
        f'{head}<h2>Heatmaps</h2><p class="ll-note">Activation of each feature over the '
        "patch grid (darker red = stronger, relative to the feature's peak); hover a cell for "
        f'its value.</p><div class="ll-heats">{heats}</div>'
        '<h2>Visual tokens coloured by feature</h2><p class="ll-note">Each visual token '
        "shows its patch and the label of its strongest feature; choose a feature to colour "
        "by, hover a token for all values (circuitsvis).</p>"
        f'<div class="ll-ctm"><div id="{root_id}-ctm"><div class="ll-ctm-plain">{plain}'
        "</div></div></div>"
        f"<h2>Strongest features per visual token</h2>{_patch_table(res, root_id, max_patches)}"
        '<h2>Features</h2><p class="ll-note">Each feature\'s decoder direction explained by '
        "its nearest contextual text tokens (best first, the matched token highlighted).</p>"
        f"{cards}"
    )
    extra = ""
    if ctm is not None:
        extra = (
            f'<script type="application/json" class="ll-ctm-data">{cv.script_json(ctm)}</script>'
        )
    scripts = _scripts(root_id, props, extra)
    if ctm is not None:
        scripts += f"<script>{CTM_JS.replace('__ROOT__', root_id)}</script>"
    return f'<div class="ll-root" id="{root_id}">{body}{scripts}</div>'


def sae_image_html(
    res: ImageFeaturesLike,
    path: str | os.PathLike | None = None,
    feature: int | None = None,
    features: Sequence[int] | None = None,
    max_patches: int | None = None,
    title: str | None = None,
) -> str:
    """A standalone offline page of an SAE on an image (``SAEImageFeatures.to_html``).

    Args:
        res: The result of ``LatentLens.sae_on_image``.
        path: If given, the page is also written there (atomically).
        feature: Draw the heatmap of this feature only.
        features: Draw these features' heatmaps (default: the :data:`MAX_HEATMAPS` with the
            highest peaks).
        max_patches: Rows of the per-token table (default: every visual token).
        title: Page title.

    Returns:
        The HTML text.

    Raises:
        ValueError: Both ``feature`` and ``features``, or a feature id out of range.

    Example:
        >>> sae_image_html(res, "out/sae.html", feature=res.features[0])
    """
    body = sae_image_fragment(
        res, feature=feature, features=features, max_patches=max_patches, title=title
    )
    return _write(_page(body, title or f"SAE features on an image · {res.model}"), path)


def show_sae_image(res: ImageFeaturesLike, **kwargs: Any) -> Any:
    """An ``IPython.display.HTML`` of :func:`sae_image_fragment` for notebooks (offline)."""
    return _ipython_html(sae_image_fragment(res, **kwargs))
