"""Captioning samples of the default VLM and their frozen-encoder features, cached on disk.

The training set is made of (a) every train stamp centred on white, (b) ``views_per_stamp - 1``
more random views of it (random scale, place and background) and (c) ``n_composites``
composites of train stamps; the held-out set is built the same way from the held-out stamps
only. The encoder runs once per image; the features are stored (float16) in the cache under a
fingerprint of everything that determines them.

Example:
    >>> spec = SampleSpec()
    >>> samples = build_samples(train_stamps, spec, seed=0)
    >>> feats = encode_images(encoder, [s.image for s in samples])
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from tl_latentlens.default import assets
from tl_latentlens.default.data import Composite, Stamp, make_composite, single_stamp_image
from tl_latentlens.default.encoder import ENCODER_ID

__all__ = [
    "Sample",
    "SampleSpec",
    "build_samples",
    "cached_features",
    "composite_regions",
    "encode_images",
    "fingerprint",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SampleSpec:
    """How many samples of each kind to make from a pool of stamps.

    Attributes:
        views_per_stamp: Images per stamp: one centred on white plus ``views_per_stamp - 1``
            random views.
        n_composites: Composites of 2-4 stamps.
        image_size: Side of every image in pixels.
        grid: Patch grid of composite label maps.
    """

    views_per_stamp: int = 2
    n_composites: int = 1500
    image_size: int = 224
    grid: tuple[int, int] = (7, 7)

    def __post_init__(self) -> None:
        if self.views_per_stamp < 1 or self.n_composites < 0:
            raise ValueError("views_per_stamp must be >= 1 and n_composites >= 0")


@dataclass(frozen=True)
class Sample:
    """One image with its caption.

    Attributes:
        image: RGB image.
        caption: Target text.
        kind: ``"stamp"`` (centred on white), ``"stamp_view"`` or ``"composite"``.
        regions: For a composite, one ``(caption, patches)`` per visible object: the object's
            own caption and the flat indices (row-major on the spec's grid) of the patches it
            covers most of; empty for other kinds. Region captioning
            (``train-connector --regions``) trains on them.
    """

    image: Image.Image
    caption: str
    kind: str
    regions: tuple[tuple[str, tuple[int, ...]], ...] = ()


def build_samples(
    stamps: Sequence[Stamp], spec: SampleSpec, seed: int, caption_style: str = "sentences"
) -> list[Sample]:
    """Deterministic samples (a function of ``stamps``, ``spec`` and ``seed``); composites are
    captioned in ``caption_style`` (:func:`~tl_latentlens.default.data.make_composite`)."""
    rng = np.random.default_rng(seed)
    out: list[Sample] = []
    for stamp in stamps:
        out.append(Sample(single_stamp_image(stamp, None, spec.image_size), stamp.caption, "stamp"))
        for _ in range(spec.views_per_stamp - 1):
            img = single_stamp_image(stamp, rng, spec.image_size)
            out.append(Sample(img, stamp.caption, "stamp_view"))
    if spec.n_composites:
        lo = min(2, len(stamps))
        for _ in range(spec.n_composites):
            comp = make_composite(
                stamps, rng, (lo, min(4, len(stamps))), spec.image_size, spec.grid,
                caption_style=caption_style,
            )  # fmt: skip
            out.append(Sample(comp.image, comp.caption, "composite", composite_regions(comp)))
    return out


def composite_regions(comp: Composite) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """``(caption, patches)`` of every object that covers most of at least one patch.

    Objects come in paste order; ``patches`` are flat row-major indices into the label grid.
    """
    flat = comp.labels.reshape(-1)
    out = []
    for k, stamp in enumerate(comp.stamps):
        patches = tuple(int(i) for i in np.flatnonzero(flat == k))
        if patches:
            out.append((stamp.caption, patches))
    return tuple(out)


def fingerprint(stamps: Sequence[Stamp], spec: SampleSpec, seed: int, encoder_id: str) -> str:
    """Hex digest of what determines a sample set's features."""
    h = hashlib.sha256()
    h.update(json.dumps({"spec": asdict(spec), "seed": seed, "encoder": encoder_id}).encode())
    for s in stamps:
        h.update(f"{s.category}/{s.path.name}\t{s.caption}\n".encode())
    return h.hexdigest()[:16]


@torch.no_grad()
def encode_images(
    encoder, images: Sequence[Image.Image], batch_size: int = 32, desc: str = "encoding images"
) -> torch.Tensor:
    """Frozen encoder features ``[n, patches, d_vision]`` (float32, CPU)."""
    chunks = []
    for start in tqdm(range(0, len(images), batch_size), desc=desc, leave=False):
        pixels = encoder.preprocess(list(images[start : start + batch_size]))
        chunks.append(encoder(pixels).float().cpu())
    return torch.cat(chunks) if chunks else torch.zeros(0)


def cached_features(
    encoder, samples: Sequence[Sample], cache_file: str | Path, desc: str = "encoding images"
) -> torch.Tensor:
    """Encoder features of ``samples``, loaded from ``cache_file`` or computed and saved there.

    The file is written atomically (temporary file + rename) in float16.
    """
    from safetensors.torch import load_file, save_file

    cache_file = Path(cache_file)
    if cache_file.is_file():
        feats = load_file(str(cache_file))["features"]
        if feats.shape[0] == len(samples):
            logger.info("loaded cached features %s %s", cache_file.name, tuple(feats.shape))
            return feats.float()
        logger.warning("cached features %s have the wrong length; recomputing", cache_file)
    feats = encode_images(encoder, [s.image for s in samples], desc=desc)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_suffix(cache_file.suffix + ".tmp")
    save_file({"features": feats.half().contiguous()}, str(tmp))
    os.replace(tmp, cache_file)
    return feats.half().float()


def sample_set(
    encoder, stamps: Sequence[Stamp], spec: SampleSpec, seed: int, part: str
) -> tuple[list[Sample], torch.Tensor, str]:
    """Samples of ``stamps`` with their (cached) features: ``(samples, features, fingerprint)``.

    Args:
        encoder: The frozen vision encoder; its ``ENCODER_ID`` enters the fingerprint.
        stamps: The pool (e.g. the held-out stamps).
        spec: What to make of it.
        seed: Seed of the random views and composites.
        part: Name used in the cache file (``"train"``, ``"held_out"``).
    """
    fp = fingerprint(stamps, spec, seed, ENCODER_ID)
    samples = build_samples(stamps, spec, seed)
    path = assets.cache_dir() / "features" / f"{part}-{fp}.safetensors"
    return samples, cached_features(encoder, samples, path, f"encoding {part}"), fp
