"""Rendering of tl_latentlens results: HTML pages (circuitsvis) and PNG pictures (matplotlib).

This is the only package that talks to circuitsvis or matplotlib. Imports are lazy, so
``import tl_latentlens.render`` stays cheap.

Example:
    >>> from tl_latentlens.render import explanation_html, patch_words_png
    >>> explanation_html(result, "out/page.html")
    >>> patch_words_png(result, "out/words.png")
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "explanation_html",
    "explanation_fragment",
    "show_explanation",
    "patch_words_png",
    "leap_heatmap_png",
    "layer_curve_png",
]

_WHERE = {
    "explanation_html": "html",
    "explanation_fragment": "html",
    "show_explanation": "html",
    "patch_words_png": "pictures",
    "leap_heatmap_png": "pictures",
    "layer_curve_png": "pictures",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
