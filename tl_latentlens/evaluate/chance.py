"""The chance level of the strict judge: what a lens that ignores the image would score.

The mask judge accepts hypernyms at least 6 steps below WordNet's root, so one general word
("creature", a synonym of ``animal``) names every animal patch. A lens whose top-k holds such a
word for every patch scores on every animal of the evaluation set without seeing anything: a
*constant answer*. :func:`constant_answer` picks the ``k`` words of a vocabulary that together name
the most judged patches (greedily: each next word adds the most patches not yet named) and
reports their hit rate per layer. Greedy max-coverage is within a factor ``1 - 1/e`` of the best
constant answer, so the rate is a lower bound of the chance level; a lens is interpretable
beyond chance at a layer only where it scores clearly above it.

:func:`shuffled_label_rates` is the chance level of each lens's *own* answers: the rate its
top-k words would score against the label of a random patch of another image (the exact
expectation, no sampling). A lens that says "creature" for every patch scores as much with the
labels shuffled as without; a lens that reads the patch scores more without.

Example:
    >>> from tl_latentlens.evaluate import LabelMatcher, WordNet
    >>> answer = constant_answer("study/judgements.jsonl", ["creature", "tool", "kettle"],
    ...                          LabelMatcher(WordNet.default()), k=2)
    >>> answer.words, answer.per_layer
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tl_latentlens.evaluate.matching import LabelMatcher, normalise_word
from tl_latentlens.evaluate.records import latest_records

__all__ = [
    "ConstantAnswer",
    "constant_answer",
    "patch_labels",
    "sentence_words",
    "shuffled_label_rates",
]

_WORD = re.compile(r"[^\W\d_]+")


@dataclass(frozen=True)
class ConstantAnswer:
    """The greedy constant answer of a study and its strict hit rate.

    Attributes:
        words: The chosen words, in the order picked (each adds the most patches).
        rate: Percent of all judged patches (every layer) one of the words names.
        per_layer: Percent per layer (the same words at every layer).
        n: Judged patches, all layers together.
    """

    words: tuple[str, ...]
    rate: float
    per_layer: Mapping[int | float, float] = field(default_factory=dict)
    n: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (layers as strings)."""
        return {
            "words": list(self.words),
            "strict": round(self.rate, 2),
            "per_layer": {str(k): round(v, 2) for k, v in self.per_layer.items()},
            "n": self.n,
        }


def patch_labels(
    records: str | os.PathLike | Iterable[dict[str, Any]], lens: str = "latent"
) -> dict[int | float, list[str]]:
    """The label of every judged patch of ``lens``, per layer (the latest record per key)."""
    latest = latest_records(records)
    out: dict[int | float, list[str]] = {}
    for (_, _, layer, lens_), rec in sorted(latest.items()):
        if lens_ == lens and rec.get("label"):
            key = int(layer) if float(layer).is_integer() else layer  # as the study's tables
            out.setdefault(key, []).append(rec["label"])
    return out


def sentence_words(sentences: Iterable[str]) -> list[str]:
    """The distinct whole words of ``sentences`` in first-seen order (LatentLens's vocabulary:
    a neighbour is judged as the whole word around its token).

    Example:
        >>> sentence_words(["A red kettle.", "The kettle's lid."])
        ['A', 'red', 'kettle', 'The', 's', 'lid']
    """
    return list(dict.fromkeys(w for s in sentences for w in _WORD.findall(s)))


def constant_answer(
    records: str | os.PathLike | Iterable[dict[str, Any]] | Mapping[int | float, list[str]],
    vocabulary: Iterable[str],
    matcher: LabelMatcher,
    k: int = 5,
) -> ConstantAnswer:
    """The ``k`` words of ``vocabulary`` that together name the most judged patches (strict).

    Args:
        records: A study's ``judgements.jsonl``, its records, or labels per layer
            (:func:`patch_labels`).
        vocabulary: The words the lens could answer (for LatentLens: the words of the bank).
        matcher: The judge's strict rule (``MaskJudge().matcher``).
        k: Words in the answer (the study's top-k).

    Raises:
        ValueError: ``k`` is not positive.
    """
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    per_layer = records if isinstance(records, Mapping) else patch_labels(records)
    counts = Counter(label for labels in per_layer.values() for label in labels)
    accepted = {lab: _accepted(matcher, lab) for lab in counts}
    known = set().union(*accepted.values())  # a word names a label only via these lemmas
    names: dict[str, frozenset[str]] = {}  # word -> the labels it names
    for word in dict.fromkeys(normalise_word(w) for w in vocabulary):
        forms = set(matcher.forms(word))
        if forms & known:  # the same test as matcher.relation, for every label at once
            names[word] = frozenset(lab for lab, acc in accepted.items() if forms & acc)
    chosen: list[str] = []
    covered: set[str] = set()
    for _ in range(k):
        gains = {w: sum(counts[lab] for lab in labs - covered) for w, labs in names.items()}
        # ties go to the word first in the vocabulary: the answer does not depend on set order
        best = max(gains, key=lambda w: gains[w], default=None)
        if best is None or gains[best] == 0:
            break
        chosen.append(best)
        covered |= names.pop(best)
    n = sum(counts.values())
    rates = {
        layer: 100.0 * sum(lab in covered for lab in labels) / len(labels)
        for layer, labels in per_layer.items()
        if labels
    }
    total = 100.0 * sum(counts[lab] for lab in covered) / n if n else float("nan")
    return ConstantAnswer(tuple(chosen), total, rates, n)


def _accepted(matcher: LabelMatcher, label: str) -> set[str]:
    try:
        return set(matcher.accepted(label))
    except ValueError:  # a label WordNet does not know names nothing (the judge errs on it too)
        return set()


def shuffled_label_rates(
    records: str | os.PathLike | Iterable[dict[str, Any]], matcher: LabelMatcher, k: int = 5
) -> dict[str, dict[int | float, float]]:
    """Per lens and layer: the percent of patches whose top-``k`` words would name the label of
    a random patch of *another* image (strict rule), the exact expectation over that draw.

    Args:
        records: A study's ``judgements.jsonl`` or its records (the latest per key counts).
        matcher: The judge's strict rule (``MaskJudge().matcher``).
        k: Candidates per patch (the study's top-k).

    Returns:
        ``{lens: {layer: percent}}``; a layer whose patches all come from one image is left out.
    """
    latest = latest_records(records)
    groups: dict[tuple[str, int | float], list[tuple[str, str, list[str]]]] = {}
    for (image, _, layer, lens), rec in sorted(latest.items()):
        if rec.get("label") and rec.get("words") is not None:
            key = int(layer) if float(layer).is_integer() else layer
            groups.setdefault((lens, key), []).append((image, rec["label"], rec["words"][:k]))
    out: dict[str, dict[int | float, float]] = {}
    for (lens, layer), rows in groups.items():
        accepted = {lab: _accepted(matcher, lab) for _, lab, _ in rows}
        total = Counter(lab for _, lab, _ in rows)
        per_image: dict[str, Counter[str]] = {}
        for image, lab, _ in rows:
            per_image.setdefault(image, Counter())[lab] += 1
        shares = []
        for image, _, words in rows:
            others = len(rows) - sum(per_image[image].values())
            if others == 0:
                continue
            forms = set().union(*(matcher.forms(w) for w in words)) if words else set()
            named = [lab for lab, acc in accepted.items() if forms & acc]
            shares.append(sum(total[lab] - per_image[image][lab] for lab in named) / others)
        if shares:
            out.setdefault(lens, {})[layer] = 100.0 * sum(shares) / len(shares)
    return out
