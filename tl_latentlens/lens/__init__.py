"""Lenses over visual tokens: LatentLens and its baselines, with plain-data results."""

from tl_latentlens.lens.baselines import EmbeddingLens, LogitLens
from tl_latentlens.lens.latent import LatentLens
from tl_latentlens.lens.leap import LeapTable, mid_layer_leap
from tl_latentlens.lens.results import Explanation, PatchExplanation, TokenCandidate

__all__ = [
    "EmbeddingLens",
    "Explanation",
    "LatentLens",
    "LeapTable",
    "LogitLens",
    "PatchExplanation",
    "TokenCandidate",
    "mid_layer_leap",
]
