"""Text corpora of the default bank: WordNet sentences and short visual phrases.

* :func:`wordnet_sentences`: WordNet example sentences and glosses (abstract text, mostly).
* :func:`visual_phrases`: short descriptions of visible things, like the region descriptions of
  Visual Genome that the paper's bank is made of (``"a red kettle on the left"``), composed from
  the most frequent concrete nouns of WordNet (:func:`concrete_nouns`), colours and places.

Each synset line of ``data.{noun,verb,adj,adv}`` ends with ``| gloss``; the gloss is a
definition followed by quoted examples separated by ``;``. :func:`wordnet_sentences` yields each
example as a sentence and each definition as ``"<lemma>: <definition>."``.

Example:
    >>> it = wordnet_sentences()
    >>> next(it)
    'entity: that which is perceived or known or inferred to have its own distinct existence.'
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

from tl_latentlens.default import assets

__all__ = ["concrete_nouns", "parse_synset_line", "visual_phrases", "wordnet_sentences"]

logger = logging.getLogger(__name__)

_POS_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
_EXAMPLE = re.compile(r'"([^"]+)"')


def parse_synset_line(line: str) -> tuple[str, str, list[str]] | None:
    """``(lemma, definition, examples)`` of one ``data.*`` line (None for header lines).

    Example:
        >>> parse_synset_line('00001 03 n 01 dog 0 000 | a pet; "the dog barked"')
        ('dog', 'a pet', ['the dog barked'])
    """
    if not line or line[0] == " " or "|" not in line:
        return None
    head, gloss = line.split("|", 1)
    fields = head.split()
    if len(fields) < 5:
        return None
    lemma = re.sub(r"\(\w+\)$", "", fields[4]).replace("_", " ")
    examples = [e.strip() for e in _EXAMPLE.findall(gloss) if e.strip()]
    definition = _EXAMPLE.sub("", gloss)
    definition = "; ".join(p.strip() for p in definition.split(";") if p.strip())
    return lemma, definition.strip(" ;"), examples


def _sentence(text: str) -> str:
    text = text.strip()
    if text and text[-1] not in ".!?":
        text += "."
    return text


def wordnet_sentences(
    root: str | Path | None = None, examples: bool = True, glosses: bool = True
) -> Iterator[str]:
    """Sentences of WordNet 3.0: glosses (``"lemma: definition."``) and usage examples.

    Args:
        root: Folder with the ``data.*`` files; default installs/uses Debian ``wordnet-base``.
        examples: Yield the quoted usage examples.
        glosses: Yield the definitions.
    """
    root = Path(root) if root is not None else assets.wordnet_dir()
    for name in _POS_FILES:
        path = root / name
        if not path.is_file():
            logger.warning("WordNet file %s is missing; skipped", path)
            continue
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                parsed = parse_synset_line(line)
                if parsed is None:
                    continue
                lemma, definition, exs = parsed
                if glosses and definition:
                    yield _sentence(f"{lemma}: {definition}")
                if examples:
                    yield from (_sentence(e) for e in exs)


_COLOURS = ("red", "blue", "green", "yellow", "black", "white", "brown", "grey", "orange", "pink",
            "purple")  # fmt: skip
_PLACES = ("on the left", "on the right", "at the top", "at the bottom", "in the middle",
           "in the corner", "on a white background", "on the grass", "on the table",
           "in the sky", "next to the wall")  # fmt: skip
_TEMPLATES = (
    "a {colour} {noun}",
    "a {noun} {place}",
    "the {colour} {noun} {place}",
    "a picture of a {noun}",
    "a small {noun} next to a {other}",
    "a {noun} and a {other}",
    "a drawing of a {colour} {noun}",
    "the {noun} is {colour}",
)
_WORD = re.compile(r"[a-z]+")


def concrete_nouns(n: int = 3000, root: str | Path | None = None, min_depth: int = 5) -> list[str]:
    """The ``n`` concrete nouns used most in WordNet's own glosses and examples.

    A word counts when its first noun sense lies under ``physical_object.n.01`` (at least
    ``min_depth`` steps below the root) and it is not mainly an adjective or verb; frequency in
    the glosses stands in for word frequency (WordNet has no corpus counts for every word).
    """
    from collections import Counter

    from tl_latentlens.wordnet import WordNet, closure

    wn = WordNet(root) if root is not None else WordNet.default()
    counts: Counter[str] = Counter()
    for sentence in wordnet_sentences(root):
        counts.update(_WORD.findall(sentence.lower()))
    anchor = wn.synsets("physical_object", "n")[0].offset
    out: list[str] = []
    for word, _ in counts.most_common():
        if len(out) >= n:
            break
        if len(word) < 3:
            continue
        senses = wn.synsets(word, "n")
        if not senses or len(wn.synsets(word, "v")) + len(wn.synsets(word, "a")) > len(senses):
            continue
        first = senses[0]
        ups = {s.offset for s in closure(wn, [first], ("@",))}
        if anchor in ups and wn.min_depth(first) >= min_depth:
            out.append(word)
    return out


def visual_phrases(nouns: list[str], per_noun: int = 3, seed: int = 0) -> list[str]:
    """``per_noun`` short visual phrases for every noun (seeded templates, colours, places).

    Example:
        >>> visual_phrases(["kettle"], per_noun=1)
        ['A kettle on the left.']
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for noun in nouns:
        for t in rng.choice(len(_TEMPLATES), size=min(per_noun, len(_TEMPLATES)), replace=False):
            text = _TEMPLATES[int(t)].format(
                noun=noun,
                colour=_COLOURS[int(rng.integers(len(_COLOURS)))],
                place=_PLACES[int(rng.integers(len(_PLACES)))],
                other=nouns[int(rng.integers(len(nouns)))],
            )
            text = re.sub(r"\ba ([aeiou])", r"an \1", text)
            out.append(_sentence(text[0].upper() + text[1:]))
    return out
