"""Text corpora of the default bank: WordNet sentences and short visual phrases.

* :func:`wordnet_sentences`: WordNet example sentences and glosses (abstract text, mostly).
* :func:`visual_phrases`: short descriptions of visible things, like the region descriptions of
  Visual Genome that the paper's bank is made of (``"a red kettle on the left"``), composed from
  the most frequent concrete nouns of WordNet (:func:`concrete_nouns`), colours and places.
* :func:`noun_phrases`: the same ingredients, every phrase led by its noun (among its first
  three words), several per noun (docs/default_connector.md, round 8).

A synset's gloss is a definition followed by quoted examples separated by ``;`` (nltk splits
them: ``definition()``, ``examples()``). :func:`wordnet_sentences` yields each example as a
sentence and each definition as ``"<lemma>: <definition>."``.

Example:
    >>> it = wordnet_sentences()
    >>> next(it)
    'entity: that which is perceived or known or inferred to have its own distinct existence.'
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import numpy as np

from tl_latentlens.wordnet import POS, Synset, WordNet, closure

__all__ = ["concrete_nouns", "gloss_parts", "noun_phrases", "visual_phrases", "wordnet_sentences"]

logger = logging.getLogger(__name__)


def gloss_parts(synset: Synset) -> tuple[str, str, list[str]]:
    """``(lemma, definition, examples)`` of a synset: its first lemma (``_`` as spaces), its
    definition with the ``;``-separated parts stripped, and its non-empty examples.

    Example:
        >>> gloss_parts(wn.synsets("dog")[0])[0]
        'dog'
    """
    lemma = synset.lemma_names()[0].replace("_", " ")
    definition = "; ".join(p.strip() for p in synset.definition().split(";") if p.strip())
    examples = [e.strip() for e in synset.examples() if e.strip()]
    return lemma, definition, examples


def _sentence(text: str) -> str:
    text = text.strip()
    if text and text[-1] not in ".!?":
        text += "."
    return text


def _wordnet(root: str | Path | None) -> WordNet:
    return WordNet(root) if root is not None else WordNet.default()


def wordnet_sentences(
    root: str | Path | None = None, examples: bool = True, glosses: bool = True
) -> Iterator[str]:
    """Sentences of WordNet 3.0: glosses (``"lemma: definition."``) and usage examples, in the
    order of the database files (nouns, verbs, adjectives, adverbs).

    Args:
        root: Folder with the WordNet files; default: Debian ``wordnet-base``.
        examples: Yield the quoted usage examples.
        glosses: Yield the definitions.
    """
    for is_gloss, text in _sentences(str(root) if root is not None else None):
        if (glosses and is_gloss) or (examples and not is_gloss):
            yield text


@lru_cache(maxsize=2)
def _sentences(root: str | None) -> tuple[tuple[bool, str], ...]:
    """Every gloss and example of a database, read once per process: nltk builds a ``Synset``
    per line (slow for the whole database), and the default corpus reads it twice."""
    wn = _wordnet(root)
    out: list[tuple[bool, str]] = []
    for pos in POS:
        for synset in wn.all_synsets(pos):
            lemma, definition, exs = gloss_parts(synset)
            if definition:
                out.append((True, _sentence(f"{lemma}: {definition}")))
            out += [(False, _sentence(e)) for e in exs]
    return tuple(out)


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
#: Round 8's templates: the noun is among the first three words, as in a region description
#: ("white dog on grass"); ``{Noun}`` is the noun with a capital first letter.
_NOUN_LED = (
    "a {noun}",
    "a {noun} {place}",
    "the {noun} is {colour}",
    "a {colour} {noun}",
    "a {noun} and a {other}",
    "the {noun} next to the {other}",
    "a small {noun}",
    "{Noun} {place}",
)
_WORD = re.compile(r"[a-z]+")


def concrete_nouns(n: int = 3000, root: str | Path | None = None, min_depth: int = 5) -> list[str]:
    """The ``n`` concrete nouns used most in WordNet's own glosses and examples.

    A word counts when its first noun sense lies under ``physical_object.n.01`` (at least
    ``min_depth`` steps below the root) and it is not mainly an adjective or verb; frequency in
    the glosses stands in for word frequency (WordNet has no corpus counts for every word).
    """
    wn = _wordnet(root)
    counts: Counter[str] = Counter()
    for sentence in wordnet_sentences(root):
        counts.update(_WORD.findall(sentence.lower()))
    anchor = wn.sense("physical_object.n.01")
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
        if anchor in closure([first], ("hypernyms",)) and first.min_depth() >= min_depth:
            out.append(word)
    return out


def _phrases(
    templates: tuple[str, ...], nouns: list[str], per_noun: int, seed: int, distinct: bool = False
) -> list[str]:
    """``per_noun`` of ``templates`` (drawn without replacement) filled in for every noun.

    ``distinct``: ``{other}`` is never the noun itself (the next noun of the list instead, so the
    draws, and every other phrase, stay those of ``distinct=False``).
    """
    rng = np.random.default_rng(seed)
    out = []
    for noun in nouns:
        for t in rng.choice(len(templates), size=min(per_noun, len(templates)), replace=False):
            text = templates[int(t)].format(
                noun=noun,
                Noun=noun[:1].upper() + noun[1:],
                colour=_COLOURS[int(rng.integers(len(_COLOURS)))],
                place=_PLACES[int(rng.integers(len(_PLACES)))],
                other=_other(nouns, int(rng.integers(len(nouns))), noun, distinct),
            )
            text = re.sub(r"\b([aA]) ([aeiou])", r"\1n \2", text)
            out.append(_sentence(text[0].upper() + text[1:]))
    return out


def _other(nouns: list[str], i: int, noun: str, distinct: bool) -> str:
    if distinct and nouns[i] == noun and len(nouns) > 1:
        return nouns[(i + 1) % len(nouns)]
    return nouns[i]


def visual_phrases(nouns: list[str], per_noun: int = 3, seed: int = 0) -> list[str]:
    """``per_noun`` short visual phrases for every noun (seeded templates, colours, places).

    Example:
        >>> visual_phrases(["kettle"], per_noun=1)
        ['A drawing of a grey kettle.']
    """
    return _phrases(_TEMPLATES, nouns, per_noun, seed)


def noun_phrases(nouns: list[str], per_noun: int = 6, seed: int = 0) -> list[str]:
    """``per_noun`` short phrases for every noun, each led by it (among its first three words).

    Visual tokens of the default VLM match text tokens that have seen little context (the second
    to fourth token of a sentence) far above their share of a bank; a bank of noun-led phrases
    gives every noun several such contexts, like the region descriptions of the paper's bank.

    Example:
        >>> noun_phrases(["kettle", "owl"], per_noun=1)
        ['A small kettle.', 'The owl is red.']
    """
    return _phrases(_NOUN_LED, nouns, per_noun, seed, distinct=True)
