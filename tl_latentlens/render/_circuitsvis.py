"""The bridge to circuitsvis: its inlined JS bundle and ``TopkSamples`` props for our results.

circuitsvis renders a visualisation either from a CDN (``str(RenderedHTML)``, fails offline) or
with its whole JS bundle inlined (``RenderedHTML.local_src``, ~1.3 MB *per visualisation*). A page
of ours holds hundreds of visualisations, so it inlines the very bundle ``local_src`` uses *once*
as a classic ``<script>`` (which defines the global ``CircuitsVis``) and then mounts every
component with ``CircuitsVis.render(div_id, CircuitsVis.TopkSamples, props)`` — the call
``local_src`` itself makes.

Two circuitsvis quirks handled here:

* ``Token`` inserts each token with ``dangerouslySetInnerHTML``, so token strings are HTML. We
  pass them HTML-escaped, otherwise ``<s>`` would become a strike-through element and vanish.
  (Its hover tooltip shows the token as React text, so there a token containing ``<``, ``>``
  or ``&`` appears escaped, e.g. ``&lt;s&gt;``; the sentence itself shows correctly.)
* Strings embedded in ``<script>`` must not contain ``</script``; :func:`script_json` escapes
  ``<``, ``>`` and ``&`` as JSON unicode escapes.
"""

from __future__ import annotations

import functools
import html
import json
import logging
import re
from pathlib import Path
from typing import Any

from tl_latentlens.render._protocols import NeighbourLike, PatchLike

logger = logging.getLogger(__name__)

__all__ = ["COMPONENT", "bundle_js", "display_tokens", "script_json", "topk_props"]

#: The circuitsvis React component the cards use.
COMPONENT = "TopkSamples"

_SOURCE_MAP = re.compile(r"^//# sourceMappingURL=.*$", re.MULTILINE)


def _bundle_path() -> Path:
    import circuitsvis.utils.render as cv_render

    # Same file ``circuitsvis.utils.render.render_local`` inlines.
    return Path(cv_render.__file__).parent.parent / "dist" / "cdn" / "iife.js"


def _bundle_from_local_src() -> str:
    """Fallback: cut the bundle out of a tiny ``local_src`` (if the file moved)."""
    from circuitsvis.topk_samples import topk_samples

    src = topk_samples(tokens=[[[["x"]]]], activations=[[[[0.0]]]]).local_src
    start = src.find(">", src.find("<script")) + 1
    end = src.rfind("CircuitsVis.render(")
    if start <= 0 or end <= start:
        raise RuntimeError("cannot find the circuitsvis JS bundle (unexpected circuitsvis layout)")
    return src[start:end]


@functools.lru_cache(maxsize=1)
def bundle_js() -> str:
    """circuitsvis's browser bundle (defines ``CircuitsVis``), safe to inline in ``<script>``.

    ``</script`` inside it is written ``<\\/script`` (same string for JS, but no longer ends
    the script element) and the source-map comment is dropped (the browser would try to load
    the map next to the page).

    Returns:
        JavaScript source text.

    Raises:
        RuntimeError: circuitsvis is installed without its bundle.

    Example:
        >>> js = bundle_js()
        >>> "CircuitsVis" in js
        True
    """
    path = _bundle_path()
    if path.is_file():
        js = path.read_text(encoding="utf-8")
    else:  # pragma: no cover - depends on the circuitsvis build
        logger.warning("circuitsvis bundle not at %s; extracting it from local_src", path)
        js = _bundle_from_local_src()
    js = _SOURCE_MAP.sub("", js).replace("</script", "<\\/script")
    if "CircuitsVis" not in js or f"{COMPONENT}:" not in js:
        raise RuntimeError(f"the circuitsvis bundle at {path} does not provide {COMPONENT}")
    logger.debug("circuitsvis bundle: %d characters", len(js))
    return js


def script_json(obj: Any) -> str:
    """JSON text that can sit inside an HTML ``<script>`` element unchanged.

    ``<``, ``>``, ``&``, U+2028 and U+2029 are written as ``\\uXXXX`` escapes, so no string
    in ``obj`` can close the script element; ``JSON.parse`` restores them.

    Example:
        >>> script_json({"t": "</script>"})
        '{"t": "\\\\u003c/script\\\\u003e"}'
    """
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(ch, esc)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def cv_token(token: str) -> str:
    """A token as circuitsvis must receive it (it inserts tokens as HTML)."""
    return html.escape(token, quote=False)


def display_tokens(neighbour: NeighbourLike) -> list[str]:
    """The sentence tokens of a neighbour as they are shown (one string per token).

    Sub-word tokenizers decode word-initial tokens with their leading space and the tokens
    concatenate to the sentence. Tokenizers that decode bare words get a space before every
    token but the first (as in ``Neighbour.highlighted``). An empty token list shows the
    sentence as one token.

    Example:
        >>> display_tokens(n)  # n.sentence_tokens == ("<s>", "a", "cat")
        ['<s>', ' a', ' cat']
    """
    toks = list(neighbour.sentence_tokens) or [neighbour.sentence]
    if len(toks) > 1 and not any(t[:1].isspace() for t in toks[1:]):
        toks = toks[:1] + [" " + t for t in toks[1:]]
    return toks


def sample_of(neighbour: NeighbourLike) -> tuple[list[str], list[float]]:
    """Tokens and activations of one neighbour's sentence for ``TopkSamples``.

    The matched token (``sentence_tokens[position]``) gets the similarity, all others 0.
    """
    tokens = display_tokens(neighbour)
    acts = [0.0] * len(tokens)
    if 0 <= neighbour.position < len(tokens):
        acts[neighbour.position] = _finite(neighbour.similarity)
    else:
        logger.warning(
            "neighbour %r: position %d outside its %d sentence tokens; nothing highlighted",
            neighbour.token,
            neighbour.position,
            len(tokens),
        )
    return [cv_token(t) for t in tokens], acts


def topk_props(patch: PatchLike, hook_label: str, token_label: str) -> dict[str, Any] | None:
    """``TopkSamples`` props for one visual token: 1 hook x 1 token x k samples x tokens.

    Args:
        patch: A :class:`~tl_latentlens.lens.results.PatchExplanation`.
        hook_label: Label of the zeroth dimension (the visual hook).
        token_label: Label of the first dimension (the visual token).

    Returns:
        The props, or ``None`` when the patch has no LatentLens neighbours.
    """
    if not patch.latent:
        return None
    samples = [sample_of(n) for n in patch.latent]
    return {
        "tokens": [[[s[0] for s in samples]]],
        "activations": [[[s[1] for s in samples]]],
        "zerothDimensionName": "Hook",
        "firstDimensionName": "Visual token",
        # Labels are rendered as React text (not HTML): pass them raw.
        "zerothDimensionLabels": [hook_label],
        "firstDimensionLabels": [token_label],
    }


def _finite(x: float) -> float:
    x = float(x)
    return x if x == x and abs(x) != float("inf") else 0.0
