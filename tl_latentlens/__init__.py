"""tl_latentlens: LatentLens for TransformerLens.

Explain a VLM's visual tokens at any layer by their nearest contextual text-token neighbours
(Krojer et al., arXiv 2602.00462), beside LogitLens and EmbeddingLens.

Example:
    >>> from tl_latentlens import LatentLens, build_bank, load_default_vlm
    >>> vlm = load_default_vlm()
    >>> lens = LatentLens(vlm, build_bank(vlm, "corpus.txt", "banks/demo"))
    >>> lens.explain(image).to_html("report.html")
"""

from tl_latentlens.bank import Bank, Neighbour, build_bank
from tl_latentlens.capture import capture_image, capture_text
from tl_latentlens.default import load_connector_vlm, load_default_vlm
from tl_latentlens.hooks import LAYER_CONVENTION, hook_for_layer, layer_of
from tl_latentlens.lens import (
    EmbeddingLens,
    Explanation,
    LatentLens,
    LogitLens,
    PatchExplanation,
    TokenCandidate,
    mid_layer_leap,
)
from tl_latentlens.models import VLM, Connector, ConnectorVLM, load_vlm

__all__ = [
    "LAYER_CONVENTION",
    "VLM",
    "Bank",
    "Connector",
    "ConnectorVLM",
    "EmbeddingLens",
    "Explanation",
    "LatentLens",
    "LogitLens",
    "Neighbour",
    "PatchExplanation",
    "TokenCandidate",
    "build_bank",
    "capture_image",
    "capture_text",
    "hook_for_layer",
    "layer_of",
    "load_connector_vlm",
    "load_default_vlm",
    "load_vlm",
    "mid_layer_leap",
]
