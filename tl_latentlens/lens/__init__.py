"""Lenses over visual tokens: LatentLens and its baselines, with plain-data results."""

from tl_latentlens.lens.attention import PatchAttention
from tl_latentlens.lens.baselines import EmbeddingLens, LogitLens
from tl_latentlens.lens.diff import ExplanationDiff
from tl_latentlens.lens.latent import LatentLens
from tl_latentlens.lens.leap import LeapTable, mid_layer_leap
from tl_latentlens.lens.results import (
    Explanation,
    NotExplainedError,
    PatchExplanation,
    TokenCandidate,
)
from tl_latentlens.lens.sae import (
    SAEAdapter,
    SAEError,
    SAEFeatureExplanation,
    SAEImageFeatures,
    fit_sae,
    load_sae,
    save_sae,
)

__all__ = [
    "EmbeddingLens",
    "Explanation",
    "ExplanationDiff",
    "LatentLens",
    "LeapTable",
    "LogitLens",
    "NotExplainedError",
    "PatchAttention",
    "PatchExplanation",
    "SAEAdapter",
    "SAEError",
    "SAEFeatureExplanation",
    "SAEImageFeatures",
    "TokenCandidate",
    "fit_sae",
    "load_sae",
    "mid_layer_leap",
    "save_sae",
]
