"""When does a candidate word name an annotated label? WordNet relations, decided up front.

The ground-truth judge (:class:`~tl_latentlens.evaluate.judges.MaskJudge`) knows only an
object-level label per patch ("dog"), not what part of the object the patch shows. The default
rule (:meth:`MatchRule.strict`) therefore accepts exactly the words whose truth *follows from
the annotation*:

* **synonyms**: any lemma of the label's synset(s) (``dog`` -> ``domestic_dog``);
* **hypernyms** at any distance, as long as they are no more general than
  ``hypernym_min_depth`` steps below WordNet's root (depth 6 keeps ``animal``, ``vehicle``,
  ``furniture``; drops ``organism``, ``artifact``, ``object``, ``entity``, which would describe
  anything);
* **derived forms** of the label word itself (WordNet ``+`` pointers whose source is that word).

Not accepted by default, each for a stated reason (and available for a more lenient study via
:meth:`MatchRule.lenient`, recorded in the report):

* **hyponyms** (``puppy``, ``poodle`` for ``dog``): consistent with the label but asserting more
  than it says;
* **part meronyms** (``wing`` for ``bird``, ``back``/``leg`` for ``chair``): the mask does not say
  which part a patch shows, and part names are frequent words that match by chance.

The label's senses: ``"dog.n.01"`` names one sense; a bare ``"dog"`` uses its first ``senses``
noun senses (WordNet orders senses by frequency). Multi-word labels (``"dining table"``) fall
back to their longest ending that WordNet knows (``"big dining table"`` -> ``dining table``).

Candidates are normalised (lower-case, stripped of spaces, BPE markers and edge punctuation) and
lemmatised with WordNet's ``morphy`` in every part of speech; a candidate matches when its
surface form or any base form is an accepted lemma. The same rule is applied to every lens.

Example:
    >>> m = LabelMatcher(WordNet.default())
    >>> m.relation("dogs", "dog"), m.relation("animal", "dog"), m.relation("entity", "dog")
    ('synonym', 'hypernym', None)
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from tl_latentlens.wordnet import Synset, WordNet, closure, lemma_names, parse_sense

__all__ = ["LabelMatcher", "MatchRule", "normalise_word"]

_EDGE = re.compile(r"^[^\w]+|[^\w]+$")
_MARKERS = ("Ġ", "▁", "##", "Ċ")


@dataclass(frozen=True)
class MatchRule:
    """Which WordNet relations make a candidate word name a label.

    Attributes:
        senses: Noun senses of a bare label word to use (most frequent first).
        hypernym_min_depth: Accept hypernyms whose minimum depth below the root is at least this
            (``None``: no hypernyms).
        hypernym_max_levels: Accept hypernyms at most this many steps up (``None``: any).
        derivations: Accept derivationally related forms of the label word.
        hyponym_levels: Accept (non-instance) hyponyms down to this many steps (0: none,
            ``None``: all).
        part_meronyms: Accept direct part meronyms (and their synonyms).
        min_chars: Candidates shorter than this (after normalisation) never match.
        co_hyponyms: Accept siblings: the other direct hyponyms of the label's direct
            hypernyms (``wolf``, ``fox`` for ``dog`` under ``canine``).
        co_hyponym_min_depth: ... only under a hypernym at least this deep (a sibling under a
            shallow class such as ``whole`` says nothing).
        holonyms: Accept direct part holonyms (the whole the label is a part of).
    """

    senses: int = 1
    hypernym_min_depth: int | None = 6
    hypernym_max_levels: int | None = None
    derivations: bool = True
    hyponym_levels: int | None = 0
    part_meronyms: bool = False
    min_chars: int = 2
    co_hyponyms: bool = False
    co_hyponym_min_depth: int = 6
    holonyms: bool = False

    def __post_init__(self) -> None:
        if self.senses < 1:
            raise ValueError(f"senses must be >= 1, got {self.senses}")
        if self.hyponym_levels is not None and self.hyponym_levels < 0:
            raise ValueError("hyponym_levels must be >= 0 or None")

    @classmethod
    def strict(cls) -> MatchRule:
        """The default: synonyms, hypernyms down to depth 6, derived forms."""
        return cls()

    @classmethod
    def related(cls) -> MatchRule:
        """The graded judge's *related* level (the paper's "abstract"), applied only to words
        the strict rule rejects: hyponyms down to two levels (``puppy`` for ``dog``), siblings
        under a hypernym at least 6 deep (``wolf``), direct part meronyms (``wing`` for
        ``bird``) and part holonyms (``bird`` for ``wing``). Hypernyms and derived forms are
        left to the strict rule."""
        return cls(
            hypernym_min_depth=None,
            derivations=False,
            hyponym_levels=2,
            part_meronyms=True,
            co_hyponyms=True,
            holonyms=True,
        )

    @classmethod
    def lenient(cls) -> MatchRule:
        """Strict plus all hyponyms and direct part meronyms."""
        return cls(hyponym_levels=None, part_meronyms=True)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (recorded in reports)."""
        return asdict(self)


def normalise_word(token: str) -> str:
    """Lower-case word of a token string: BPE markers, spaces and edge punctuation removed.

    Example:
        >>> normalise_word(" Dogs,"), normalise_word("Ġcat"), normalise_word("...")
        ('dogs', 'cat', '')
    """
    word = token.strip()
    for marker in _MARKERS:
        word = word.replace(marker, " ")
    return _EDGE.sub("", word.strip()).lower()


class LabelMatcher:
    """Decide whether a candidate word names a label under a :class:`MatchRule`.

    Args:
        wordnet: The database.
        rule: The relations that count (default :meth:`MatchRule.strict`).
    """

    def __init__(self, wordnet: WordNet, rule: MatchRule | None = None) -> None:
        self.wordnet, self.rule = wordnet, rule or MatchRule.strict()
        self._accepted: dict[str, dict[str, str]] = {}
        self._bases: dict[str, tuple[str, ...]] = {}

    # ---- labels ---------------------------------------------------------------------------------
    def label_synsets(self, label: str) -> list[Synset]:
        """The synsets a label stands for (see the module docstring).

        Raises:
            ValueError: WordNet does not know the label (nor its head noun) as a noun.
        """
        sense = parse_sense(label)
        if sense is not None:
            found = self.wordnet.synsets(sense.lemma, sense.pos)
            if not 1 <= sense.number <= len(found):
                raise ValueError(f"label {label!r}: {sense.lemma!r} has {len(found)} senses")
            return [found[sense.number - 1]]
        word = label.strip().lower().replace("_", " ")
        found = self.wordnet.synsets(word, "n")
        words = word.split()
        for start in range(1, len(words)):  # "big dining table" -> "dining table" -> "table"
            if found:
                break
            found = self.wordnet.synsets(" ".join(words[start:]), "n")
        if not found:
            raise ValueError(f"label {label!r} is not a WordNet noun (give e.g. 'dog.n.01')")
        return found[: self.rule.senses]

    def accepted(self, label: str) -> dict[str, str]:
        """Every accepted lemma for ``label`` and the relation it was accepted by.

        Relations, strongest first: ``label``, ``synonym``, ``derived``, ``hyponym``, ``part``,
        ``hypernym`` (a lemma reached by several keeps the strongest).
        """
        if label not in self._accepted:
            self._accepted[label] = self._build(label)
        return self._accepted[label]

    def _build(self, label: str) -> dict[str, str]:
        rule = self.rule
        out: dict[str, str] = {}

        def add(lemmas: tuple[str, ...] | list[str], relation: str) -> None:
            for lemma in lemmas:
                out.setdefault(lemma.lower(), relation)

        synsets = self.label_synsets(label)
        sense = parse_sense(label)
        words = {sense.lemma if sense else label.strip().lower().replace(" ", "_")}
        add(sorted(words), "label")
        for s in synsets:
            add(lemma_names(s), "synonym")
        if rule.derivations:  # derivationally related forms of the label word itself
            for s in synsets:
                for lemma in s.lemmas():
                    if lemma.name().lower() in words:
                        add([d.name() for d in lemma.derivationally_related_forms()], "derived")
        if rule.hyponym_levels != 0:
            for s in closure(synsets, ("hyponyms",), rule.hyponym_levels):
                add(lemma_names(s), "hyponym")
        if rule.part_meronyms:
            for s in synsets:
                for part in s.part_meronyms():
                    add(lemma_names(part), "part")
        if rule.co_hyponyms:
            for s in synsets:
                for parent in s.hypernyms():
                    if parent.min_depth() < rule.co_hyponym_min_depth:
                        continue
                    for sibling in parent.hyponyms():
                        if sibling != s:
                            add(lemma_names(sibling), "sibling")
        if rule.holonyms:
            for s in synsets:
                for whole in s.part_holonyms():
                    add(lemma_names(whole), "whole")
        if rule.hypernym_min_depth is not None:
            relations = ("hypernyms", "instance_hypernyms")
            for s in closure(synsets, relations, rule.hypernym_max_levels):
                if s.min_depth() >= rule.hypernym_min_depth:
                    add(lemma_names(s), "hypernym")
        return out

    # ---- candidates -----------------------------------------------------------------------------
    def forms(self, candidate: str) -> tuple[str, ...]:
        """Normalised surface form and its WordNet base forms (empty if too short / no word)."""
        word = normalise_word(candidate)
        if word not in self._bases:
            if len(word) < self.rule.min_chars or not any(ch.isalpha() for ch in word):
                self._bases[word] = ()
            else:
                key = word.replace(" ", "_")
                bases = [key]
                for forms in self.wordnet.base_forms(key).values():
                    bases += [b for b in forms if b not in bases]
                self._bases[word] = tuple(bases)
        return self._bases[word]

    def relation(self, candidate: str, label: str) -> str | None:
        """The relation by which ``candidate`` names ``label``, or ``None``."""
        accepted = self.accepted(label)
        for form in self.forms(candidate):
            if form in accepted:
                return accepted[form]
        return None
