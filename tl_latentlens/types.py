"""jaxtyping shape aliases shared by the tensor APIs."""

from __future__ import annotations

from jaxtyping import Float, Int
from torch import Tensor

__all__ = [
    "Residuals",
    "BatchResiduals",
    "TokenIds",
    "Positions",
    "PixelBatch",
    "PatchFeatures",
]

#: Vectors in the residual stream, one row per token: ``[n, d_model]``.
Residuals = Float[Tensor, "n d_model"]
#: A padded batch of residuals: ``[batch, pos, d_model]``.
BatchResiduals = Float[Tensor, "batch pos d_model"]
#: Token ids of a padded batch: ``[batch, pos]``.
TokenIds = Int[Tensor, "batch pos"]
#: Sequence positions of visual tokens: ``[n_visual]``.
Positions = Int[Tensor, " n_visual"]
#: Preprocessed images: ``[batch, channels, height, width]``.
PixelBatch = Float[Tensor, "batch channels height width"]
#: Vision-encoder patch features: ``[batch, patches, d_vision]``.
PatchFeatures = Float[Tensor, "batch patches d_vision"]
