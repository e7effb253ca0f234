"""Labelled cut-out objects for the default VLM: Tux Paint stamps and Debian clip art.

Every object gets a WordNet noun **label** and an **identity** (the label's synset, written
``lemma.n.NN`` with the synset's first lemma), and the train / validation / test split is made
by identity, never by file: two drawings of a kangaroo always fall on the same side, whatever
package they come from. The split is a function of the identity string alone (a salted
SHA-256 bucket), so adding a source never moves an object to the other side.

Sources:

* ``tuxpaint``: Debian ``tuxpaint-stamps-default`` (caption = the stamp's own English line; label
  from the file name and caption, see :func:`stamp_label`).
* ``openclipart``: Debian ``openclipart-png`` (PNGs with alpha in category folders; the file
  name carries the object and an author suffix: ``light_bulb_karl_bartel_01.png``). Label:
  :func:`clipart_label`; caption: ``"A <colour> <label>."`` with the colour named from the opaque
  pixels when one colour dominates (:func:`colour_name`), else ``"A <label>."``.

Example:
    >>> objs = load_objects(("tuxpaint", "openclipart"))
    >>> parts = split_objects(objs)
    >>> {o.identity for o in parts.train} & {o.identity for o in parts.test}
    set()
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tl_latentlens._io import atomic_write_bytes
from tl_latentlens.default import assets
from tl_latentlens.default.data import load_stamps
from tl_latentlens.wordnet import (
    SenseName,
    Synset,
    WordNet,
    closure,
    display_label,
    parse_sense,
    sense_name,
    strip_sense,
)

__all__ = [
    "CLIPART_ANCHORS",
    "ObjectSplit",
    "StampLike",
    "STAMP_ANCHORS",
    "LabelledObject",
    "clipart_label",
    "colour_name",
    "identity_of",
    "load_clipart",
    "load_objects",
    "object_caption",
    "side_of",
    "split_objects",
    "stamp_label",
]

logger = logging.getLogger(__name__)

#: Top-level Tux Paint stamp folder -> WordNet senses a stamp's label should fall under.
STAMP_ANCHORS: dict[str, tuple[str, ...]] = {
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
#: Top-level openclipart folder -> senses its labels must fall under. Folders not listed
#: (shapes, special, logos, buttons, signs_and_symbols, geography) hold no namable objects.
CLIPART_ANCHORS: dict[str, tuple[str, ...]] = {
    "animals": ("animal.n.01",),
    "plants": ("plant.n.02", "plant_part.n.01"),
    "food": ("food.n.01", "food.n.02", "container.n.01"),
    "transportation": ("conveyance.n.03",),
    "tools": ("artifact.n.01",),
    "electronics": ("artifact.n.01",),
    "containers": ("container.n.01",),
    "buildings": ("structure.n.01",),
    "people": ("person.n.01",),
    "recreation": ("artifact.n.01",),
    "office": ("artifact.n.01",),
    "education": ("artifact.n.01",),
    "science": ("artifact.n.01",),
    "decorations": ("artifact.n.01",),
    "computer": ("artifact.n.01",),
    "unsorted": ("physical_object.n.01",),
}
_MAX_SENSE = 3
#: A label must be at least this deep below ``entity`` (drops "object", "thing", "whole").
MIN_LABEL_DEPTH = 5
_SALT = "tl_latentlens-default-split-v1"
#: Bump when a labelling rule changes (invalidates cached object lists).
LABEL_RULES_VERSION = 1
#: PNG modes that carry transparency (the cut-out mask).
_ALPHA = frozenset({"RGBA", "LA", "PA", "P"})


@dataclass(frozen=True)
class LabelledObject:
    """One cut-out object (RGBA, alpha = mask) with a caption and a WordNet label.

    Attributes:
        path: The PNG file.
        name: Readable name from the file name.
        category: Folder relative to the source root (``"animals/mammals"``).
        caption: A sentence naming it.
        label: WordNet noun (``"kangaroo"``, or ``"letter.n.02"`` when not sense 1).
        identity: The label's synset as ``lemma.n.NN`` of its first lemma (split key).
        source: ``"tuxpaint"`` or ``"openclipart"``.
    """

    path: Path
    name: str
    category: str
    caption: str
    label: str
    identity: str
    source: str

    def image(self) -> Image.Image:
        """The cut-out as RGBA."""
        with Image.open(self.path) as im:
            return im.convert("RGBA")


StampLike = LabelledObject  # what make_composite needs: .image() and .caption


@dataclass(frozen=True)
class ObjectSplit:
    """Objects split by identity: train, validation (model selection), test (reported)."""

    train: tuple[LabelledObject, ...]
    validation: tuple[LabelledObject, ...]
    test: tuple[LabelledObject, ...]


# ---- WordNet helpers -----------------------------------------------------------------------------
def _anchors(wn: WordNet, specs: Iterable[str]) -> set[Synset]:
    """The synsets of the sense names ``specs`` that this WordNet has."""
    return {found for spec in specs if (found := wn.sense(spec)) is not None}


def _sense_under(
    wn: WordNet, lemma: str, anchors: set[Synset], instances: bool = True
) -> tuple[int, Synset] | None:
    """``(sense_number, synset)`` of ``lemma``'s first noun sense under ``anchors``
    (``instances=False``: proper names, reached only by instance links, do not count)."""
    relations = ("hypernyms", "instance_hypernyms") if instances else ("hypernyms",)
    for i, synset in enumerate(wn.synsets(lemma, "n")[:_MAX_SENSE]):
        if not instances and synset.instance_hypernyms():
            continue
        ups = {synset, *closure([synset], relations)}
        if not anchors or ups & anchors:
            return i + 1, synset
    return None


def identity_of(label: str, wn: WordNet) -> str:
    """The synset of ``label`` (``"cat"`` / ``"cat.n.02"``) as ``first_lemma.n.NN`` (its nltk
    name: the sense number is the synset's rank among its first lemma's senses).

    Synonymous labels share an identity (``"car"`` and ``"automobile"`` -> ``car.n.01``).

    Raises:
        ValueError: WordNet does not know the label.
    """
    parsed = parse_sense(label) or SenseName(label, "n", 1)
    synset = wn.sense(parsed) if parsed.pos == "n" else None
    if synset is None:
        raise ValueError(f"label {label!r} is not a WordNet noun sense")
    return synset.name()


def _written(lemma: str, sense: int) -> str:
    return lemma if sense == 1 else sense_name(lemma, "n", sense)


# ---- Tux Paint stamps ----------------------------------------------------------------------------
_ARTICLE = re.compile(r"^(a|an|the)\s+", re.I)
_CUT = frozenset(
    "of for in on with who that which is are was were than to from by at as "
    "making playing holding eating wearing riding carrying".split()
)
_MEASURES = frozenset("pair piece quarter string slice bunch bag box".split())


def stamp_label(
    name: str, caption: str, wordnet: WordNet | None = None, category: str | None = None
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
    the stamp's folder (:data:`STAMP_ANCHORS`: ``plants/flowers`` -> ``plant.n.02``, so
    ``iris`` is the flower, not the eye), written as ``"iris"`` when that is sense 1 and
    ``"letter.n.02"`` otherwise; without a category or such a sense, sense 1.
    """
    wn = wordnet if wordnet is not None else WordNet.default()

    def noun(words: list[str]) -> str | None:
        word = "_".join(words)
        if len(word.replace("_", "")) < 3:
            return None
        bases = wn.morphy(word, "n")
        return bases[0] if bases else None

    lemma = _stamp_lemma(name, caption, noun)
    if not lemma:
        return None
    anchors = _anchors(wn, STAMP_ANCHORS.get((category or "").split("/")[0], ()))
    if not anchors:
        return lemma
    found = _sense_under(wn, lemma, anchors)
    return _written(lemma, found[0]) if found else lemma


def _stamp_lemma(name: str, caption: str, noun: Callable[[list[str]], str | None]) -> str | None:
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


# ---- openclipart ---------------------------------------------------------------------------------
def clipart_label(stem: str, category: str, wordnet: WordNet | None = None) -> str | None:
    """A WordNet noun for an openclipart file name, or ``None``.

    The stem is split into words at ``_``, ``-`` and spaces (digits dropped: ``arrow01`` ->
    ``arrow``). Among the first four words, the earliest start and then the longest run (up to
    three words) that WordNet knows as a noun (through ``morphy``: ``frogs`` -> ``frog``) and
    whose sense (one of the first three) falls under the folder's anchor
    (:data:`CLIPART_ANCHORS`) and lies at least :data:`MIN_LABEL_DEPTH` below the root wins:
    ``contour_baboon`` -> ``baboon`` (``contour`` is no animal), ``light_bulb_karl_bartel_01``
    -> ``light bulb``. Single words that WordNet knows better as adjectives (``simple``) and
    proper names (instances: ``john``) are skipped. Folders without an anchor, and stems with no such run, give ``None``.

    Example:
        >>> clipart_label("2_dead_frogs_lumen_desig_01", "animals")
        'frog'
    """
    top = category.split("/")[0]
    if top not in CLIPART_ANCHORS:
        return None
    wn = wordnet if wordnet is not None else WordNet.default()
    anchors = _anchors(wn, CLIPART_ANCHORS[top])
    if not anchors:  # the anchor senses are unknown to this WordNet: nothing can qualify
        return None
    words = [re.sub(r"\d+", "", w) for w in re.split(r"[_\-\s.]+", stem.lower())]
    words = [w for w in words if w]
    for start in range(min(4, len(words))):
        for n in (3, 2, 1):
            run = words[start : start + n]
            if len(run) < n or len("".join(run)) < 3:
                continue
            if n == 1 and len(wn.synsets(run[0], "a")) > len(wn.synsets(run[0], "n")):
                continue  # mostly an adjective ("simple", "green"): not the object's name
            for lemma in wn.morphy("_".join(run), "n"):
                found = _sense_under(wn, lemma, anchors, instances=False)
                if found and found[1].min_depth() >= MIN_LABEL_DEPTH:
                    return _written(lemma.replace("_", " "), found[0])
    return None


#: Basic colour names and their (hue centre in degrees); achromatic ones handled apart.
_HUES = (("red", 0), ("orange", 30), ("yellow", 55), ("green", 120), ("blue", 220),
         ("purple", 280), ("pink", 330), ("red", 360))  # fmt: skip


def colour_name(rgba: Image.Image, dominance: float = 0.5) -> str | None:
    """The colour of most opaque pixels, if one basic colour covers ``dominance`` of them.

    Pixels are named in HSV: dark (value < 0.2) is black, unsaturated light is white, other
    unsaturated grey, else the nearest hue of :data:`_HUES` (orange with low value is brown).

    Example:
        >>> colour_name(Image.new("RGBA", (8, 8), (200, 20, 20, 255)))
        'red'
    """
    small = rgba.convert("RGBA")
    small.thumbnail((64, 64))
    arr = np.asarray(small, dtype=np.float32) / 255.0
    opaque = arr[..., 3] >= 0.5
    if opaque.sum() < 4:
        return None
    rgb = arr[..., :3][opaque]
    mx, mn = rgb.max(1), rgb.min(1)
    sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0)
    r, g, b = rgb.T
    d = np.maximum(mx - mn, 1e-6)
    hue = (
        np.select([mx == r, mx == g], [((g - b) / d) % 6, (b - r) / d + 2], (r - g) / d + 4) * 60.0
    )
    names = np.empty(len(rgb), dtype=object)
    centres = np.array([c for _, c in _HUES], dtype=np.float32)
    nearest = np.abs(hue[:, None] - centres[None]).argmin(1)
    names[:] = [_HUES[i][0] for i in nearest]
    names[(names == "orange") & (mx < 0.6)] = "brown"
    names[sat < 0.25] = "grey"
    names[(sat < 0.25) & (mx > 0.85)] = "white"
    names[mx < 0.2] = "black"
    values, counts = np.unique(names.astype(str), return_counts=True)
    best = int(np.argmax(counts))
    return str(values[best]) if counts[best] >= dominance * len(rgb) else None


def _article(word: str) -> str:
    return "An" if word[:1].lower() in "aeiou" else "A"


def object_caption(label: str) -> str:
    """The object-only caption of a label: ``"A kangaroo."``, ``"An owl."`` (no colour, no
    position; the sense suffix is dropped)."""
    return clipart_caption(label, None)


def clipart_caption(label: str, colour: str | None) -> str:
    """``"A red apple."`` / ``"An owl."`` (the sense suffix of a label is dropped)."""
    noun = display_label(label)
    phrase = f"{colour} {noun}" if colour else noun
    return f"{_article(phrase)} {phrase}."


def load_clipart(
    root: str | Path | None = None,
    wordnet: WordNet | None = None,
    per_identity: int | None = 4,
    min_side: int = 48,
    max_side: int = 4096,
) -> list[LabelledObject]:
    """Labelled openclipart objects (see :func:`clipart_label`), sorted by path.

    Args:
        root: The ``png`` folder; default: that of Debian ``openclipart-png``
            (``tl-latentlens fetch-data``).
        wordnet: The WordNet database (default: Debian ``wordnet-base``).
        per_identity: Keep at most this many files per identity (the first by path; ``None``:
            all), so a few prolific motifs (stars, flags) do not dominate.
        min_side: Skip images smaller than this.
        max_side: Skip images larger than this (slow to decode, some are decompression bombs).
    """
    wn = wordnet if wordnet is not None else WordNet.default()
    if root is None:
        root = _clipart_root()
    root = Path(root)
    out: list[LabelledObject] = []
    counts: dict[str, int] = {}
    for png in _pngs(root):
        category = png.parent.relative_to(root).as_posix()
        label = clipart_label(png.stem, category, wn)
        if label is None:
            continue
        ident = identity_of(label, wn)
        if per_identity is not None and counts.get(ident, 0) >= per_identity:
            continue
        colour = _read_colour(png, min_side, max_side)
        if colour is False:
            continue
        counts[ident] = counts.get(ident, 0) + 1
        name = strip_sense(label)
        out.append(
            LabelledObject(
                png, name, category, clipart_caption(label, colour), label, ident, "openclipart"
            )
        )
    logger.info("openclipart: %d labelled objects, %d identities", len(out), len(counts))
    return out


def _read_colour(png: Path, min_side: int, max_side: int) -> str | None | bool:
    """The cut-out's colour name (``None``: no dominant colour); ``False``: unusable file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(png) as im:
                if not min_side <= min(im.size) or max(im.size) > max_side or im.mode not in _ALPHA:
                    return False
                return colour_name(im.convert("RGBA"))
    except (OSError, Image.DecompressionBombError) as e:
        logger.warning("unreadable clip art %s skipped: %s", png, e)
        return False


def _pngs(root: Path) -> list[Path]:
    return sorted(root.rglob("*.png"))


def load_objects(
    sources: Sequence[str] = ("tuxpaint", "openclipart"),
    wordnet: WordNet | None = None,
    per_identity: int | None = 4,
    cache: bool = True,
) -> list[LabelledObject]:
    """Labelled objects of the given sources (unlabelled stamps are dropped).

    Labelling reads every clip-art file once (slow); with ``cache`` the list is stored as JSON
    in the cache directory under a digest of the file listing, the sources and
    :data:`LABEL_RULES_VERSION`, and reused.
    """
    bad = set(sources) - {"tuxpaint", "openclipart"}
    if bad:
        raise ValueError(f"unknown object sources {sorted(bad)}; known: tuxpaint, openclipart")
    roots = {"tuxpaint": assets.tuxpaint_stamps_dir() if "tuxpaint" in sources else None}
    if "openclipart" in sources:
        roots["openclipart"] = _clipart_root()
    path = None
    if cache and wordnet is None:
        h = hashlib.sha256(f"{LABEL_RULES_VERSION}|{sorted(sources)}|{per_identity}".encode())
        for name in sorted(roots):
            if roots[name] is not None:
                h.update(
                    "\n".join(
                        p.relative_to(roots[name]).as_posix() for p in _pngs(roots[name])
                    ).encode()
                )
        path = assets.cache_dir() / "objects" / f"objects-{h.hexdigest()[:16]}.json"
        if path.is_file():
            return [_from_json(d) for d in json.loads(path.read_text(encoding="utf-8"))]
    out = _label_objects(sources, wordnet, per_identity)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, json.dumps([_to_json(o) for o in out]).encode("utf-8"))
    return out


def _to_json(o: LabelledObject) -> dict[str, str]:
    d = asdict(o)
    d["path"] = str(o.path)
    return d


def _from_json(d: dict[str, str]) -> LabelledObject:
    return LabelledObject(**{**d, "path": Path(d["path"])})


def _clipart_root() -> Path:
    return assets.clipart_dir()


def _label_objects(
    sources: Sequence[str], wordnet: WordNet | None, per_identity: int | None
) -> list[LabelledObject]:
    wn = wordnet if wordnet is not None else WordNet.default()
    out: list[LabelledObject] = []
    if "tuxpaint" in sources:
        for s in load_stamps():
            label = stamp_label(s.name, s.caption, wn, s.category)
            if label is None:
                continue
            ident = identity_of(label, wn)
            out.append(
                LabelledObject(s.path, s.name, s.category, s.caption, label, ident, "tuxpaint")
            )
    if "openclipart" in sources:
        out += load_clipart(wordnet=wn, per_identity=per_identity)
    return out


# ---- split ---------------------------------------------------------------------------------------
def side_of(identity: str, validation: float = 0.1, test: float = 0.1, salt: str = _SALT) -> str:
    """``"train"``, ``"validation"`` or ``"test"`` for an identity (a salted hash bucket)."""
    if validation < 0 or test < 0 or validation + test >= 1:
        raise ValueError(
            f"need validation, test >= 0 and validation + test < 1, got {validation}, {test}"
        )
    u = int(hashlib.sha256(f"{salt}:{identity}".encode()).hexdigest()[:12], 16) / 16**12
    if u < test:
        return "test"
    return "validation" if u < test + validation else "train"


def split_objects(
    objects: Sequence[LabelledObject], validation: float = 0.1, test: float = 0.1, salt: str = _SALT
) -> ObjectSplit:
    """Split ``objects`` by identity (see :func:`side_of`); each part keeps path order."""
    parts: dict[str, list[LabelledObject]] = {"train": [], "validation": [], "test": []}
    for obj in sorted(objects, key=lambda o: o.path.as_posix()):
        parts[side_of(obj.identity, validation, test, salt)].append(obj)
    return ObjectSplit(tuple(parts["train"]), tuple(parts["validation"]), tuple(parts["test"]))
