"""The judge interface and the deterministic ground-truth judge.

A judge answers one question per (image, patch, layer, lens): *do these top-k candidate words
describe the patch?* It sees a :class:`JudgeCase` and returns a :class:`Verdict`. Judges never
learn which lens produced the candidates.

Verdict kinds follow the paper: ``concrete`` (names what is in the patch), ``abstract`` (a
related concept or attribute), ``global`` (describes something elsewhere in the image),
``none``; plus ``error`` when the judge could not answer (aggregation leaves errors out and
counts them separately; a resumed run asks again).

Example:
    >>> judge = MaskJudge()
    >>> case = JudgeCase(image=None, image_id="x", row=0, col=0, grid=(7, 7),
    ...                  candidates=("the", "puppy", "dogs"), label="dog")
    >>> judge.judge(case).matched
    2
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

from tl_latentlens.evaluate.matching import LabelMatcher, MatchRule
from tl_latentlens.wordnet import WordNet

__all__ = ["KINDS", "Judge", "JudgeCase", "MaskJudge", "Verdict"]

#: Verdict kinds that mean "interpretable", strongest first.
KINDS = ("concrete", "abstract", "global")


@dataclass(frozen=True)
class JudgeCase:
    """What a judge sees about one lens's answer for one patch.

    Attributes:
        image: The PIL image (``None`` for judges that do not look at pixels).
        image_id: Stable identifier of the image in the study.
        row: Patch-grid row of the target patch.
        col: Patch-grid column.
        grid: ``(rows, cols)`` of the model's patch grid over the whole image.
        candidates: The lens's top-k words, best first (as shown to the judge).
        label: Annotated label of the patch (``None`` when unknown).
        image_labels: Labels of every annotated object in the image (for ``global`` matches).
        caption: A caption of the image if one is known (text-only judges use it).
    """

    image: Any
    image_id: str
    row: int
    col: int
    grid: tuple[int, int]
    candidates: tuple[str, ...]
    label: str | None = None
    image_labels: tuple[str, ...] = ()
    caption: str | None = None


@dataclass(frozen=True)
class Verdict:
    """A judge's answer.

    Attributes:
        interpretable: At least one candidate describes the patch (any kind in :data:`KINDS`).
        matched: Index of the first matching candidate, ``None`` if none.
        kind: ``concrete``, ``abstract``, ``global``, ``none`` or ``error``.
        matches: Indices of every matching candidate, ascending.
        candidate_kinds: Kind of each candidate (``none`` where it does not match); empty when
            the judge gives only an overall kind.
        raw: The judge's raw output (an LLM's text; the mask judge's reasoning).
        error: What went wrong, for ``kind == "error"``.
    """

    interpretable: bool
    matched: int | None
    kind: str
    matches: tuple[int, ...] = ()
    candidate_kinds: tuple[str, ...] = ()
    raw: str = ""
    error: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in (*KINDS, "none", "error"):
            raise ValueError(f"unknown verdict kind {self.kind!r}")

    @classmethod
    def failed(cls, error: str, raw: str = "") -> Verdict:
        """A verdict recording that the judge could not answer."""
        return cls(interpretable=False, matched=None, kind="error", raw=raw, error=error)

    @property
    def is_error(self) -> bool:
        """True for a verdict from :meth:`failed`."""
        return self.kind == "error"

    def counts(self, kinds: tuple[str, ...] = KINDS, top: int | None = None) -> bool:
        """Interpretable when only ``kinds`` count, looking at the first ``top`` candidates.

        With per-candidate kinds this is exact; otherwise the overall kind is used and ``top``
        restricts by the matched indices.
        """
        if self.is_error:
            return False
        if self.candidate_kinds:
            ks = self.candidate_kinds if top is None else self.candidate_kinds[:top]
            return any(k in kinds for k in ks)
        if not self.interpretable or self.kind not in kinds:
            return False
        return top is None or any(i < top for i in self.matches)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Verdict:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        d["matches"] = tuple(d.get("matches", ()))
        d["candidate_kinds"] = tuple(d.get("candidate_kinds", ()))
        return cls(**d)


@runtime_checkable
class Judge(Protocol):
    """Anything with a ``judge(case) -> Verdict`` method and a ``describe() -> dict``."""

    def judge(self, case: JudgeCase) -> Verdict:
        """Judge one case (never raises for a bad answer: returns :meth:`Verdict.failed`)."""
        ...

    def describe(self) -> dict[str, Any]:
        """JSON-ready description recorded in the report (name, settings)."""
        ...


@dataclass
class MaskJudge:
    """Ground truth from annotations: a candidate counts if WordNet links it to the label.

    Levels, per candidate, the first that applies (the paper's three, decided by the annotation):

    1. ``concrete``: the candidate names the patch's own label under ``rule`` (default strict:
       synonym, hypernym at depth >= 6, derived form; see :mod:`~.matching`);
    2. ``global``: it names, under ``rule``, another object annotated in the same image;
    3. ``abstract`` (with ``graded``; reported as *related*): it names a closely related
       concept of the patch's label under ``related_rule`` (default
       :meth:`MatchRule.related`: a hyponym down to two levels, a sibling under a hypernym at
       least 6 deep, a direct part or the whole it is a part of).

    The *strict* headline counts ``concrete`` only. Cases without a label are errors (the study
    samples only labelled patches for this judge).

    Attributes:
        rule: Which WordNet relations make a word *name* a label (:class:`MatchRule`).
        wordnet: The database (default: Debian ``wordnet-base``, :meth:`WordNet.default`).
        graded: Also decide the related level.
        related_rule: Relations of the related level.
    """

    rule: MatchRule = field(default_factory=MatchRule.strict)
    wordnet: WordNet | None = None
    name: str = "mask"
    graded: bool = True
    related_rule: MatchRule = field(default_factory=MatchRule.related)
    #: The study samples only labelled patches for this judge.
    needs_labels = True

    def __post_init__(self) -> None:
        self._matcher: LabelMatcher | None = None
        self._related: LabelMatcher | None = None

    @property
    def matcher(self) -> LabelMatcher:
        """The :class:`LabelMatcher` (loads WordNet on first use)."""
        if self._matcher is None:
            if self.wordnet is None:
                self.wordnet = WordNet.default()
            self._matcher = LabelMatcher(self.wordnet, self.rule)
        return self._matcher

    @property
    def related_matcher(self) -> LabelMatcher:
        """The :class:`LabelMatcher` of the related level."""
        if self._related is None:
            self._related = LabelMatcher(self.matcher.wordnet, self.related_rule)
        return self._related

    def describe(self) -> dict[str, Any]:
        """Name, rule and WordNet location."""
        root = getattr(self.wordnet, "root", None)
        out = {
            "name": self.name,
            "rule": self.rule.to_dict(),
            "wordnet": str(root) if root else None,
        }
        if self.graded:  # only graded judges record it: old studies keep their identity
            out["related_rule"] = self.related_rule.to_dict()
        return out

    def judge(self, case: JudgeCase) -> Verdict:
        """Match every candidate against the patch label, then the image's other labels."""
        if not case.label:
            return Verdict.failed("the mask judge needs a labelled patch")
        others = [lab for lab in dict.fromkeys(case.image_labels) if lab != case.label]
        kinds: list[str] = []
        notes: list[str] = []
        try:
            for cand in case.candidates:
                rel = self.matcher.relation(cand, case.label)
                if rel is not None:
                    kinds.append("concrete")
                    notes.append(f"{cand.strip()!r}={rel}({case.label})")
                    continue
                hit = next(
                    ((lab, r) for lab in others if (r := self.matcher.relation(cand, lab))), None
                )
                if hit:
                    kinds.append("global")
                    notes.append(f"{cand.strip()!r}={hit[1]}({hit[0]})")
                    continue
                rel = self.related_matcher.relation(cand, case.label) if self.graded else None
                kinds.append("abstract" if rel else "none")
                if rel:
                    notes.append(f"{cand.strip()!r}~{rel}({case.label})")
        except ValueError as e:  # a label WordNet does not know
            return Verdict.failed(str(e))
        matches = tuple(i for i, k in enumerate(kinds) if k != "none")
        best = next((k for k in KINDS if k in kinds), "none")
        return Verdict(
            interpretable=bool(matches),
            matched=matches[0] if matches else None,
            kind=best,
            matches=matches,
            candidate_kinds=tuple(kinds),
            raw="; ".join(notes),
        )
