"""The default bank's corpus: visual text first, then WordNet, de-duplicated, capped.

Tux Paint captions, then short visual phrases over the most used concrete nouns of WordNet
(:func:`~tl_latentlens.default.corpus.visual_phrases`; the paper's bank is Visual Genome region
descriptions, short phrases about visible things), then WordNet examples and glosses.
:data:`CORPUS_VERSION` and :data:`CORPUS_NOUNS` name the recipe in the cached bank's key.

Example:
    >>> sentences = default_corpus(12000)
"""

from __future__ import annotations

import itertools

from tl_latentlens.default.corpus import concrete_nouns, visual_phrases
from tl_latentlens.default.data import load_stamps, stamp_captions, text_corpus

__all__ = ["CORPUS_NOUNS", "CORPUS_VERSION", "default_corpus"]

#: Concrete nouns the default corpus describes; part of the bank's cache key with
#: :data:`CORPUS_VERSION` (bump it when the corpus recipe changes).
CORPUS_NOUNS = 2000
CORPUS_VERSION = "visual1"


def default_corpus(max_sentences: int) -> list[str]:
    """The first ``max_sentences`` sentences of the default corpus (module docstring).

    Raises:
        ValueError: ``max_sentences`` is not positive.
    """
    if max_sentences <= 0:
        raise ValueError(f"max_sentences must be positive, got {max_sentences}")
    captions = stamp_captions(load_stamps())
    phrases = visual_phrases(concrete_nouns(CORPUS_NOUNS), per_noun=3, seed=0)
    wordnet = text_corpus((), None)
    unique = dict.fromkeys(itertools.chain(captions, phrases, wordnet))
    return list(itertools.islice(unique, max_sentences))
