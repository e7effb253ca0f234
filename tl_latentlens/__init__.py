"""tl_latentlens: LatentLens for TransformerLens.

Explain a VLM's visual tokens at any layer by their nearest contextual text-token neighbours
(Krojer et al., arXiv 2602.00462), beside LogitLens and EmbeddingLens.

Example:
    >>> from tl_latentlens import LatentLens
    >>> lens = LatentLens.default()          # the embedded default VLM and its cached bank
    >>> result = lens.explain(image)
    >>> result.neighbours(8, 12)             # hooks by layer number or name, everywhere
    >>> result.to_html("report.html")
"""

from tl_latentlens.bank import Bank, Neighbour, build_bank, pretrained
from tl_latentlens.capture import capture_image, capture_text
from tl_latentlens.default import load_default_vlm
from tl_latentlens.hooks import LAYER_CONVENTION, hook_for_layer, layer_of
from tl_latentlens.lens import (
    EmbeddingLens,
    Explanation,
    LatentLens,
    LogitLens,
    PatchExplanation,
    TokenCandidate,
    fit_sae,
    load_sae,
    mid_layer_leap,
    save_sae,
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
    "fit_sae",
    "hook_for_layer",
    "layer_of",
    "load_default_vlm",
    "load_sae",
    "load_vlm",
    "mid_layer_leap",
    "pretrained",
    "save_sae",
]
