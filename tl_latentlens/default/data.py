"""Data of the default VLM: Tux Paint stamps, composites of them, and a text corpus.

* :func:`load_stamps`: the ~785 cut-out images of Debian ``tuxpaint-stamps-default`` with
  their one-line English captions (alpha channel = exact object mask), and
  :func:`split_stamps`, a fixed seeded train / held-out split.
* :func:`make_composite`: several cut-outs pasted at random places onto a scikit-image photo
  or a plain background, with a caption built from theirs and a per-patch label map on the
  encoder grid (the label covering most of each patch, or background).
* :func:`text_corpus`: WordNet example sentences and glosses (see
  :mod:`tl_latentlens.default.corpus`) followed by the stamp captions.

Example:
    >>> stamps = load_stamps()
    >>> train, held = split_stamps(stamps)
    >>> comp = make_composite(train, np.random.default_rng(0))
    >>> comp.image.size, comp.labels.shape          # ((224, 224), (7, 7))
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tl_latentlens.default import assets
from tl_latentlens.default.corpus import wordnet_sentences

__all__ = [
    "BACKGROUNDS",
    "BACKGROUND_LABEL",
    "Composite",
    "Stamp",
    "list_caption",
    "load_stamps",
    "make_composite",
    "patch_labels",
    "split_stamps",
    "single_stamp_image",
    "stamp_captions",
    "text_corpus",
    "wordnet_sentences",
]

logger = logging.getLogger(__name__)

#: Label of patches that no cut-out covers most of.
BACKGROUND_LABEL = -1

#: scikit-image sample photos used as backgrounds -> how captions name them; ``None`` keys
#: are plain colours.
BACKGROUNDS: dict[str, str] = {
    "brick.png": "a brick wall",
    "grass.png": "grass",
    "gravel.png": "gravel",
    "hubble_deep_field.jpg": "a starry sky",
    "moon.png": "a grey rocky surface",
    "coffee.png": "a table with a cup of coffee",
    "rocket.jpg": "a rocket launch",
}
_PLAIN = {"white": (255, 255, 255), "black": (0, 0, 0), "grey": (128, 128, 128),
          "blue": (70, 110, 200), "green": (80, 160, 90), "yellow": (235, 215, 90)}  # fmt: skip


@dataclass(frozen=True)
class Stamp:
    """One Tux Paint stamp.

    Attributes:
        path: The PNG file.
        name: Readable name from the file name (``"sedan police"``).
        category: Relative folder (``"vehicles/emergency"``).
        caption: The English one-line description (``"A police car."``).
    """

    path: Path
    name: str
    category: str
    caption: str

    def image(self) -> Image.Image:
        """The cut-out as RGBA (alpha = object mask)."""
        with Image.open(self.path) as im:
            return im.convert("RGBA")


@dataclass(frozen=True)
class Composite:
    """A composite image with its caption and per-patch labels.

    Attributes:
        image: RGB image, ``size x size``.
        caption: One sentence per object in reading order, then the background.
        labels: ``[rows, cols]`` int array: index into ``stamps`` of the object covering most
            of the patch, or :data:`BACKGROUND_LABEL`.
        stamps: The pasted stamps, in paste order (later ones occlude earlier ones).
        background: The background's caption phrase.
    """

    image: Image.Image
    caption: str
    labels: np.ndarray
    stamps: tuple[Stamp, ...]
    background: str


def _clean_name(stem: str) -> str:
    name = re.sub(r"^[0-9]+", "", stem)
    name = re.sub(r"[_\-]+", " ", name).strip()
    return name or stem


def load_stamps(root: str | Path | None = None) -> list[Stamp]:
    """All stamps with an English caption, sorted by path (``*_mirror`` variants skipped).

    Args:
        root: The ``stamps`` folder; default installs/uses Debian ``tuxpaint-stamps-default``.
    """
    root = Path(root) if root is not None else assets.tuxpaint_stamps_dir()
    stamps = []
    for png in sorted(root.rglob("*.png")):
        txt = png.with_suffix(".txt")
        if png.stem.endswith("_mirror") or not txt.is_file():
            continue
        with open(txt, encoding="utf-8") as fh:
            caption = fh.readline().strip()
        if not caption:
            continue
        category = png.parent.relative_to(root).as_posix()
        stamps.append(Stamp(png, _clean_name(png.stem), category, caption))
    if not stamps:
        raise FileNotFoundError(f"no captioned stamps under {root}")
    return stamps


def split_stamps(
    stamps: Sequence[Stamp], held_out: float = 0.1, seed: int = 0
) -> tuple[list[Stamp], list[Stamp]]:
    """A fixed seeded split into ``(train, held_out)`` (independent of input order)."""
    if not 0.0 < held_out < 1.0:
        raise ValueError(f"held_out must be in (0, 1), got {held_out}")
    ordered = sorted(stamps, key=lambda s: s.path.as_posix())
    perm = np.random.default_rng(seed).permutation(len(ordered))
    n_held = max(1, round(held_out * len(ordered)))
    held = {int(i) for i in perm[:n_held]}
    train = [s for i, s in enumerate(ordered) if i not in held]
    return train, [s for i, s in enumerate(ordered) if i in held]


def stamp_captions(stamps: Sequence[Stamp]) -> list[str]:
    """Distinct stamp captions, in order."""
    return list(dict.fromkeys(s.caption for s in stamps))


def text_corpus(
    stamps: Sequence[Stamp] = (), wordnet_root: str | Path | None = None
) -> Iterator[str]:
    """WordNet sentences and glosses, then the captions of ``stamps``."""
    yield from wordnet_sentences(wordnet_root)
    yield from stamp_captions(stamps)


def patch_labels(label_map: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Per-patch majority label of a pixel label map (background competes like any label).

    Args:
        label_map: ``[H, W]`` int array, :data:`BACKGROUND_LABEL` where no object is.
        grid: ``(rows, cols)``; ``H`` and ``W`` must be divisible by them.

    Returns:
        ``[rows, cols]`` int array (ties go to the smallest label, background first).
    """
    h, w = label_map.shape
    rows, cols = grid
    if h % rows or w % cols:
        raise ValueError(f"label map {h}x{w} is not divisible into a {rows}x{cols} grid")
    blocks = label_map.reshape(rows, h // rows, cols, w // cols).transpose(0, 2, 1, 3)
    blocks = blocks.reshape(rows, cols, -1)
    out = np.empty((rows, cols), dtype=np.int64)
    for r in range(rows):
        for c in range(cols):
            vals, counts = np.unique(blocks[r, c], return_counts=True)
            out[r, c] = vals[np.argmax(counts)]
    return out


def _background(rng: np.random.Generator, size: int, photo_p: float) -> tuple[Image.Image, str]:
    if rng.random() < photo_p:
        name = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
        with Image.open(assets.skimage_data_dir() / name) as im:
            photo = im.convert("RGB")
        side = min(photo.size)
        crop = int(side * rng.uniform(0.6, 1.0))
        x0 = int(rng.integers(0, photo.size[0] - crop + 1))
        y0 = int(rng.integers(0, photo.size[1] - crop + 1))
        img = photo.crop((x0, y0, x0 + crop, y0 + crop)).resize((size, size), Image.BICUBIC)
        return img, BACKGROUNDS[name]
    colour = list(_PLAIN)[rng.integers(len(_PLAIN))]
    return Image.new("RGB", (size, size), _PLAIN[colour]), f"plain {colour}"


def _period(text: str) -> str:
    return text if text[-1:] in ".!?" else text + "."


def list_caption(captions: Sequence[str]) -> str:
    """One sentence listing object captions as noun phrases.

    Example:
        >>> list_caption(["A dog.", "A cup.", "An owl."])
        'A dog, a cup and an owl.'
    """
    phrases = [c.strip().rstrip(".!?").strip() for c in captions]
    phrases = [p for p in phrases if p]
    if not phrases:
        return ""
    # lower-case a leading article of the later phrases only ("A dog, a cup"); names keep case
    rest = [re.sub(r"^(A|An|The) ", lambda m: m.group(1).lower() + " ", p) for p in phrases[1:]]
    body = phrases[0] if not rest else f"{', '.join([phrases[0], *rest[:-1]])} and {rest[-1]}"
    return body + "."


def _where(cx: float, cy: float, size: int) -> str:
    col = ("left", "middle", "right")[min(2, int(3 * cx / size))]
    row = ("top", "middle", "bottom")[min(2, int(3 * cy / size))]
    if row == col == "middle":
        return "In the middle"
    if row == "middle":
        return f"On the {col}"
    return f"At the {row}" if col == "middle" else f"At the {row} {col}"


def make_composite(
    stamps: Sequence[Stamp],
    rng: np.random.Generator,
    n_objects: tuple[int, int] = (2, 4),
    size: int = 224,
    grid: tuple[int, int] = (7, 7),
    scale: tuple[float, float] = (0.3, 0.55),
    photo_p: float = 0.6,
    caption_style: str = "sentences",
) -> Composite:
    """Paste ``n_objects`` random stamps onto a random background.

    Args:
        stamps: Pool to draw from (e.g. the train split).
        rng: Source of randomness (the composite is a function of its state).
        n_objects: Inclusive range of how many cut-outs to paste.
        size: Output side in pixels.
        grid: Patch grid of the label map.
        scale: Range of a cut-out's longer side as a fraction of ``size``.
        photo_p: Probability of a scikit-image photo background (else a plain colour).
        caption_style: ``"sentences"``: one ``"<where>: <caption>"`` sentence per visible
            object (left to right, top to bottom), then the background; ``"objects"``: one
            sentence listing the visible objects' captions as noun phrases in the same order,
            nothing else (``"A dog, a cup and a tree."``, from captions ``"A dog."`` ...).
            The random draws are the same for both styles.

    Returns:
        The :class:`Composite` (see ``caption_style`` for its caption).
    """
    lo, hi = n_objects
    if not 1 <= lo <= hi:
        raise ValueError(f"n_objects must satisfy 1 <= lo <= hi, got {n_objects}")
    if caption_style not in ("sentences", "objects"):
        raise ValueError(f"caption_style must be 'sentences' or 'objects', got {caption_style!r}")
    canvas, bg = _background(rng, size, photo_p)
    label_map = np.full((size, size), BACKGROUND_LABEL, dtype=np.int64)
    picked = [
        stamps[int(i)]
        for i in rng.choice(len(stamps), int(rng.integers(lo, hi + 1)), replace=False)
    ]
    for k, stamp in enumerate(picked):
        cut = stamp.image()
        longer = max(2, int(size * rng.uniform(*scale)))
        f = longer / max(cut.size)
        cut = cut.resize(
            (max(1, round(cut.width * f)), max(1, round(cut.height * f))), Image.BICUBIC
        )
        x0 = int(rng.integers(0, size - cut.width + 1))
        y0 = int(rng.integers(0, size - cut.height + 1))
        canvas.paste(cut, (x0, y0), cut)
        mask = np.asarray(cut.getchannel("A")) >= 128
        label_map[y0 : y0 + cut.height, x0 : x0 + cut.width][mask] = k
    visible = [k for k in range(len(picked)) if (label_map == k).any()]
    centres = {}
    for k in visible:
        ys, xs = np.nonzero(label_map == k)
        centres[k] = (float(xs.mean()), float(ys.mean()))
    visible.sort(key=lambda k: (int(3 * centres[k][1] / size), centres[k][0]))
    if caption_style == "objects":
        caption = list_caption([picked[k].caption for k in visible])
    else:
        sentences = [f"{_where(*centres[k], size)}: {_period(picked[k].caption)}" for k in visible]
        sentences.append(f"The background is {bg}.")
        caption = " ".join(sentences)
    return Composite(
        image=canvas,
        caption=caption,
        labels=patch_labels(label_map, grid),
        stamps=tuple(picked),
        background=bg,
    )


def single_stamp_image(
    stamp: Stamp, rng: np.random.Generator | None = None, size: int = 224, photo_p: float = 0.3
) -> Image.Image:
    """One stamp centred on white (``rng=None``) or at a random scale/place and background."""
    cut = stamp.image()
    if rng is None:
        canvas, longer, at = Image.new("RGB", (size, size), (255, 255, 255)), int(0.8 * size), None
    else:
        canvas, _ = _background(rng, size, photo_p)
        longer, at = int(size * rng.uniform(0.5, 0.95)), rng
    f = longer / max(cut.size)
    cut = cut.resize((max(1, round(cut.width * f)), max(1, round(cut.height * f))), Image.BICUBIC)
    if at is None:
        x0, y0 = (size - cut.width) // 2, (size - cut.height) // 2
    else:
        x0 = int(at.integers(0, size - cut.width + 1))
        y0 = int(at.integers(0, size - cut.height + 1))
    canvas.paste(cut, (x0, y0), cut)
    return canvas
