"""Positive controls of the lenses: inputs whose right answer is known, scored per layer.

A lens that cannot name a word it was shown outright cannot be trusted on visual tokens; a bank
whose hooks are mislabelled or whose rows are misaligned still returns fluent-looking words,
so the study and the demo put these rows above the visual ones.

* :func:`text_control`: residuals of *held-out* sentences (not in the bank) at each of the
  bank's hooks, searched per layer with their own sentence excluded (by sentence text), scored
  by whether the top-k holds the same word (token string or whole word, case and space
  normalised). LogitLens predicts the *next* token, so it reads the position before each
  sampled word and is scored against that word ("next word"); EmbeddingLens is scored against
  the same word.
* :func:`visual_control`: an image whose visual tokens are replaced by the LM's input embedding
  of known words (a ``blocks.0.hook_resid_pre`` hook on the visual positions: where the
  connector's output enters the LM); at layer 0 LatentLens and EmbeddingLens must give back
  exactly that word as their top-1.

Rates come with the study's intervals (:func:`~tl_latentlens.evaluate.records.wilson_interval`
and, resampling whole sentences, :func:`~tl_latentlens.evaluate.records.image_interval`).

Example:
    >>> text = text_control(lens, held_out_sentences)
    >>> visual = visual_control(lens, words=["dog", "car", "tree"])
    >>> print(format_controls([text, visual]))
    >>> text.failures() + visual.failures()   # [] when the lens and bank are sound
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import torch
from jaxtyping import Float
from PIL import Image

from tl_latentlens import hooks as hk
from tl_latentlens.bank.results import Neighbour, word_span
from tl_latentlens.capture import capture_inputs, capture_text
from tl_latentlens.default.bank_corpus import default_corpus
from tl_latentlens.evaluate.matching import normalise_word
from tl_latentlens.evaluate.records import LENSES, image_interval, wilson_interval
from tl_latentlens.lens.baselines import decode_tokens
from tl_latentlens.lens.results import TokenCandidate
from tl_latentlens.models.base import VLM

__all__ = [
    "CONTROL_WORDS",
    "STOP_WORDS",
    "ControlCase",
    "ControlResult",
    "ControlRow",
    "default_held_out",
    "drop_own_sentence",
    "format_controls",
    "is_content_word",
    "positive_controls",
    "text_control",
    "visual_control",
]

logger = logging.getLogger(__name__)

#: Words the visual control injects by default: concrete nouns, each one token (with its
#: leading space) in SmolLM2's tokenizer and held by the default bank.
CONTROL_WORDS = (
    "dog", "cat", "car", "tree", "house", "boat", "bird", "horse", "apple", "chair", "water",
    "flower",
)  # fmt: skip

#: Function words the text control does not sample (besides words under three letters).
STOP_WORDS = frozenset(
    """about above after again against all also and any are because been before being below
    between both but can could did does doing down during each few for from further had has
    have having her here hers herself him himself his how into its itself just may might more
    most much must not now off once only other our ours out over own same she should some such
    than that the their theirs them themselves then there these they this those through too
    under until upon very was were what when where which while who whom whose why will with
    would you your yours yourself one two""".split()
)

#: Extra neighbours searched per query so that dropping its own sentence still leaves ``k``.
_EXCLUSION_MARGIN = 5

Target = Literal["same word", "next word", "injected word"]


class _LensLike(Protocol):
    """What the controls need of a :class:`~tl_latentlens.lens.LatentLens`."""

    vlm: VLM
    bank: Any

    def logit_lens(self, vectors: Any, k: int = 5) -> list[tuple[TokenCandidate, ...]]: ...
    def embedding_lens(self, vectors: Any, k: int = 5) -> list[tuple[TokenCandidate, ...]]: ...


def is_content_word(word: str) -> bool:
    """A word the text control samples: letters only, at least three, not a function word.

    Example:
        >>> is_content_word("Kangaroo"), is_content_word("the"), is_content_word("3d")
        (True, False, False)
    """
    w = normalise_word(word)
    return len(w) >= 3 and w.isalpha() and w not in STOP_WORDS


# ---- records ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ControlRow:
    """One lens at one layer of a control.

    Attributes:
        lens: ``"latent"``, ``"logit"`` or ``"embedding"``.
        layer: The layer (tl_latentlens convention).
        hook: The hook the query residuals were read at.
        target: What a hit names: ``"same word"``, ``"next word"`` (LogitLens) or
            ``"injected word"``.
        n: Scored positions.
        hits: Positions whose top-k holds the target.
        hits1: Positions whose top-1 is the target.
        topk: ``100 * hits / n``.
        pass1: ``100 * hits1 / n``.
        lo: 95 % Wilson interval of ``topk`` (percent), low end.
        hi: Its high end.
        group_lo: 95 % interval resampling whole groups (sentences; words for the visual
            control), widened to hold Wilson's (:func:`~.records.image_interval`), low end.
        group_hi: Its high end.
    """

    lens: str
    layer: int | float
    hook: str
    target: str
    n: int
    hits: int
    hits1: int
    topk: float
    pass1: float
    lo: float
    hi: float
    group_lo: float
    group_hi: float

    @classmethod
    def of(
        cls,
        lens: str,
        layer: int | float,
        hook: str,
        target: str,
        outcomes: Sequence[tuple[Any, bool, bool]],
    ) -> ControlRow:
        """The row of ``(group, top-k hit, top-1 hit)`` outcomes."""
        n = len(outcomes)
        hits = sum(bool(o[1]) for o in outcomes)
        hits1 = sum(bool(o[2]) for o in outcomes)
        groups: dict[Any, list[int]] = {}
        for g, hit, _ in outcomes:
            groups.setdefault(g, [0, 0])
            groups[g][0] += int(bool(hit))
            groups[g][1] += 1
        lo, hi = wilson_interval(hits, n)
        g_lo, g_hi = image_interval([tuple(c) for c in groups.values()])
        nan = float("nan")
        return cls(
            lens=lens,
            layer=int(layer) if float(layer).is_integer() else float(layer),
            hook=hook,
            target=target,
            n=n,
            hits=hits,
            hits1=hits1,
            topk=100.0 * hits / n if n else nan,
            pass1=100.0 * hits1 / n if n else nan,
            lo=100.0 * lo,
            hi=100.0 * hi,
            group_lo=100.0 * g_lo,
            group_hi=100.0 * g_hi,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (rates rounded to 0.01)."""
        out: dict[str, Any] = dict(self.__dict__)
        for key in ("topk", "pass1", "lo", "hi", "group_lo", "group_hi"):
            out[key] = None if out[key] != out[key] else round(float(out[key]), 2)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ControlRow:
        """Inverse of :meth:`to_dict`."""
        d = {k: (float("nan") if v is None else v) for k, v in d.items()}
        return cls(**d)


@dataclass(frozen=True)
class ControlCase:
    """One scored example (kept for the report: what was asked and what came back).

    Attributes:
        lens: The lens.
        layer: The layer.
        context: The sentence with the target token marked (text), or the injected word.
        target: The word a hit must name.
        answers: The lens's top-k, sub-word neighbours shown as their marked whole word.
        hit: Whether the top-k holds the target.
    """

    lens: str
    layer: int | float
    context: str
    target: str
    answers: tuple[str, ...]
    hit: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {**self.__dict__, "answers": list(self.answers)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ControlCase:
        """Inverse of :meth:`to_dict`."""
        return cls(**{**d, "answers": tuple(d["answers"])})


@dataclass(frozen=True)
class ControlResult:
    """A positive control: per lens and layer, how often the known answer came back.

    Attributes:
        kind: ``"text"`` or ``"visual"``.
        k: Candidates per lens.
        rows: One :class:`ControlRow` per (lens, layer), lenses in table order.
        cases: Examples (the first few per lens and layer; every word for the visual control).
        excluded: LatentLens neighbours dropped because they came from the query's own sentence.
        n_groups: Sentences (text) or words (visual) scored.
        seconds: Wall time.
        description: What was run, in words.

    Example:
        >>> result = visual_control(lens, words=["dog", "car"])
        >>> result.row("latent", 0).pass1, result.failures()
        (100.0, [])
    """

    kind: str
    k: int
    rows: tuple[ControlRow, ...]
    cases: tuple[ControlCase, ...] = ()
    excluded: int = 0
    n_groups: int = 0
    seconds: float = 0.0
    description: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """``"text control"`` / ``"visual control"``."""
        return f"{self.kind} control"

    @property
    def layers(self) -> list[int | float]:
        """The layers scored, in order."""
        return sorted({r.layer for r in self.rows})

    def row(self, lens: str, layer: int | float) -> ControlRow:
        """The row of ``lens`` at ``layer``.

        Raises:
            KeyError: No such row (the message lists the layers).
        """
        for r in self.rows:
            if r.lens == lens and r.layer == layer:
                return r
        raise KeyError(f"no {lens!r} row at layer {layer} in the {self.label}: {self.layers}")

    def rates(self, lens: str = "latent", top1: bool = False) -> dict[int | float, float]:
        """Layer -> top-k (or top-1) percent of ``lens``."""
        return {r.layer: r.pass1 if top1 else r.topk for r in self.rows if r.lens == lens}

    def failures(self) -> list[str]:
        """What is wrong, in words (empty when the control passes).

        Visual control: at layer 0, LatentLens and EmbeddingLens must return every injected
        word as their top-1. Text control: at layer 0 (the token embeddings), EmbeddingLens must
        find every sampled word in its top-k and LatentLens at least :data:`TEXT_FLOOR` percent
        of them (a held-out word the bank's corpus never holds cannot come back).
        """
        out = []
        layer0 = [r for r in self.rows if r.layer == 0 and r.lens in ("latent", "embedding")]
        if not layer0:
            return [f"{self.label}: no layer-0 rows (the bank has no layer-0 hook)"]
        for r in layer0:
            if self.kind == "visual" and r.hits1 < r.n:
                out.append(
                    f"visual control: {r.lens} top-1 at layer 0 returned {r.hits1} of {r.n} "
                    "injected words (expected all)"
                )
            floor = TEXT_FLOOR if r.lens == "latent" else 100.0
            if self.kind == "text" and r.n and r.topk < floor:
                out.append(
                    f"text control: {r.lens} top-{self.k} at layer 0 is {r.topk:.1f} % "
                    f"(expected >= {floor:.0f} %)"
                )
        return out

    def table(self) -> Any:
        """pandas DataFrame, one row per layer, in :func:`~.records.aggregate`'s column
        names: ``control``, ``layer``, ``n``, then per lens ``<lens>_top<k>``, ``_pass1``,
        ``_n``, ``_top<k>_lo``/``_hi`` (Wilson) and ``_top<k>_img_lo``/``_img_hi`` (resampling
        sentences or words), and ``<lens>_target``."""
        import pandas as pd

        top = f"top{self.k}"
        rows = []
        for layer in self.layers:
            out: dict[str, Any] = {"control": self.label, "layer": layer}
            n = 0
            for lens in LENSES:
                r = next((x for x in self.rows if x.lens == lens and x.layer == layer), None)
                if r is None:
                    continue
                n = max(n, r.n)
                out.update({
                    f"{lens}_{top}": r.topk, f"{lens}_pass1": r.pass1, f"{lens}_n": r.n,
                    f"{lens}_{top}_lo": r.lo, f"{lens}_{top}_hi": r.hi,
                    f"{lens}_{top}_img_lo": r.group_lo, f"{lens}_{top}_img_hi": r.group_hi,
                    f"{lens}_target": r.target,
                })  # fmt: skip
            out["n"] = n
            rows.append(out)
        return pd.DataFrame(rows)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (what the study's ``report.json`` records)."""
        return {
            "kind": self.kind,
            "k": self.k,
            "description": self.description,
            "excluded": self.excluded,
            "n_groups": self.n_groups,
            "seconds": round(self.seconds, 3),
            "failures": self.failures(),
            "rows": [r.to_dict() for r in self.rows],
            "cases": [c.to_dict() for c in self.cases],
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ControlResult:
        """Inverse of :meth:`to_dict`."""
        return cls(
            kind=d["kind"],
            k=int(d["k"]),
            rows=tuple(ControlRow.from_dict(r) for r in d["rows"]),
            cases=tuple(ControlCase.from_dict(c) for c in d.get("cases", ())),
            excluded=int(d.get("excluded", 0)),
            n_groups=int(d.get("n_groups", 0)),
            seconds=float(d.get("seconds", 0.0)),
            description=d.get("description", ""),
            extra=dict(d.get("extra", {})),
        )


#: The text control's LatentLens top-k floor at layer 0 (percent): the residual there is the
#: token embedding, which the bank stores for every token its corpus holds.
TEXT_FLOOR = 80.0


# ---- matching ---------------------------------------------------------------------------------
def _hit_latent(n: Neighbour, token: str, word: str) -> bool:
    """Same token string, or a (sub-word) neighbour whose whole word is the target word."""
    t = normalise_word(n.token)
    return (bool(t) and t == token) or normalise_word(n.word) == word


def _hit_candidate(c: TokenCandidate, token: str, word: str) -> bool:
    t = normalise_word(c.token)
    return bool(t) and t in (token, word)


def _norm_sentence(text: str) -> str:
    return " ".join(text.split()).lower()


def drop_own_sentence(neighbours: Sequence[Neighbour], sentence: str, bank: Any) -> list[Neighbour]:
    """``neighbours`` without those that come only from ``sentence`` (same text, case and
    spacing aside).

    A stored vector shared by several corpus occurrences (every occurrence of a token at the
    input layer) is kept when any occurrence is in another sentence: that vector is in the bank
    apart from the query's own sentence. Unlisted occurrences (beyond ``other_contexts``)
    count as other sentences.

    Example:
        >>> drop_own_sentence(bank.search(vec, hook=3, k=5)[0], "a red car", bank)
    """
    own = _norm_sentence(sentence)
    out = []
    for n in neighbours:
        if _norm_sentence(n.sentence) == own:
            listed = n.other_contexts
            if n.n_occurrences <= 1 + len(listed) and all(
                _norm_sentence(bank.sentence(sid)) == own for sid, _ in listed
            ):
                continue
        out.append(n)
    return out


# ---- the text control -------------------------------------------------------------------------
@dataclass(frozen=True)
class _Position:
    sentence: int  # index into the control's sentences
    position: int  # token index in the sentence (BOS counted)
    token: str  # normalised token string
    word: str  # normalised whole word
    context: str  # sentence with the token marked


def _sample_positions(
    vlm: VLM, sentences: Sequence[str], max_positions: int, seed: int, max_tokens: int
) -> tuple[list[_Position], list[list[str]]]:
    batch = vlm.tokenize_sentences(sentences, max_tokens)
    strings: dict[int, str] = {}
    tokens: list[list[str]] = []
    cands: list[_Position] = []
    for b in range(len(sentences)):
        real = batch.positions[b] >= 0
        ids = batch.input_ids[b][real].tolist()
        keep = batch.keep[b][real].tolist()
        toks = decode_tokens(vlm.tokenizer, ids, strings)
        tokens.append(toks)
        # word-level tokenizers decode bare words: shown with a space between them
        sep = "" if any(t[:1].isspace() for t in toks[1:]) else " "
        for p, ok in enumerate(keep):
            span = word_span(toks, p) if ok else None
            if span is None or not is_content_word(span.word):
                continue
            shown = [sep + t if i else t for i, t in enumerate(toks)]
            lead = shown[p][: len(shown[p]) - len(shown[p].lstrip())]
            shown[p] = f"{lead}[{shown[p].lstrip()}]"
            marked = "".join(t for i, t in enumerate(shown) if keep[i])
            cands.append(
                _Position(b, p, normalise_word(toks[p]), normalise_word(span.word), marked.strip())
            )
    rng = np.random.default_rng(seed)
    if len(cands) > max_positions:
        pick = np.sort(rng.choice(len(cands), max_positions, replace=False))
        cands = [cands[i] for i in pick]
    return cands, tokens


def text_control(
    lens: _LensLike,
    sentences: Sequence[str],
    *,
    k: int = 5,
    max_positions: int = 200,
    max_sentences: int = 200,
    seed: int = 0,
    method: str = "exact",
    max_tokens: int = 64,
    n_cases: int = 3,
) -> ControlResult:
    """LatentLens, LogitLens and EmbeddingLens on held-out text, scored per bank layer.

    Content-word positions (:func:`is_content_word` of the token's whole word; BOS, special
    tokens, punctuation and function words are skipped) of ``sentences`` are sampled; their
    residuals at each bank hook are searched against that hook only (per layer), with any
    neighbour from the query's own sentence dropped (same text, case and spacing aside). A hit
    is a top-k candidate with the same token string or the same whole word (a sub-word
    neighbour counts when its whole word matches). LogitLens reads the position *before* each
    sampled token and is scored against it (the next word); positions whose previous token is
    BOS are left out of its row.

    Args:
        lens: A :class:`~tl_latentlens.lens.LatentLens`.
        sentences: Held-out sentences (not used to build the bank; for the default bank, the
            default corpus after the bank's sentences).
        k: Candidates per lens.
        max_positions: Positions sampled (all of them when fewer).
        max_sentences: Sentences read (the first ones, duplicates dropped).
        seed: Sampling seed.
        method: Bank search (``"exact"`` by default, as the study's numbers).
        max_tokens: Truncate each sentence as the bank's build does.
        n_cases: Examples kept per lens and layer.

    Returns:
        A :class:`ControlResult` of kind ``"text"``.

    Raises:
        ValueError: ``k`` not positive, or no content word in ``sentences``.

    Example:
        >>> held_out = default_corpus(12300)[12000:]
        >>> text_control(lens, held_out).rates("latent")
        {0: 97.3, 1: 95.0, ...}
    """
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    t0 = time.perf_counter()
    vlm, bank = lens.vlm, lens.bank
    sentences = list(dict.fromkeys(s for s in sentences if s and s.strip()))[:max_sentences]
    positions, tokens = _sample_positions(vlm, sentences, max_positions, seed, max_tokens)
    if not positions:
        raise ValueError(
            "the text control found no content word in the sentences given: pass held-out "
            "sentences of ordinary text"
        )
    used = sorted({p.sentence for p in positions})
    local = {s: i for i, s in enumerate(used)}
    hooks = vlm.validate_hooks(list(bank.hooks))
    want = {(p.sentence, p.position) for p in positions}
    want |= {(p.sentence, p.position - 1) for p in positions}
    rows_of: dict[tuple[int, int], int] = {}
    chunks: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
    n_rows = 0
    for acts in capture_text(vlm, [sentences[s] for s in used], hooks, max_tokens=max_tokens):
        keys = [(used[int(s)], int(p)) for s, p in zip(acts.sentence, acts.position)]
        sel = [i for i, key in enumerate(keys) if key in want]
        for i in sel:
            rows_of[keys[i]] = n_rows
            n_rows += 1
        for h in hooks:
            chunks[h].append(acts.residuals[h][sel])
    residuals = {h: torch.cat(chunks[h]) for h in hooks}
    q_rows = [rows_of[(p.sentence, p.position)] for p in positions]
    prev = [(i, rows_of.get((p.sentence, p.position - 1))) for i, p in enumerate(positions)]
    prev = [(i, r) for i, r in prev if r is not None]
    device = _search_device(vlm)
    result_rows: list[ControlRow] = []
    cases: list[ControlCase] = []
    excluded = 0
    for hook in hooks:
        layer = hk.layer_of(hook)
        x = residuals[hook]
        found = _search(bank, x[q_rows], hook, k + _EXCLUSION_MARGIN, method, device)
        latent = []
        for i, got in enumerate(found):
            kept = drop_own_sentence(got, sentences[positions[i].sentence], bank)
            excluded += len(got) - len(kept)
            latent.append(kept[:k])
        emb = lens.embedding_lens(x[q_rows], k)
        logit = lens.logit_lens(x[[r for _, r in prev]], k) if prev else []
        per_lens: dict[str, list[tuple[int, list[Any], bool]]] = {
            "latent": [
                (i, ns, _any(ns, lambda n, p=p: _hit_latent(n, p.token, p.word)))
                for i, (p, ns) in enumerate(zip(positions, latent))
            ],
            "logit": [
                (i, list(cs), _any(cs, lambda c, p=positions[i]: _hit_candidate(c, p.token, p.word)))
                for (i, _), cs in zip(prev, logit)
            ],
            "embedding": [
                (i, list(cs), _any(cs, lambda c, p=p: _hit_candidate(c, p.token, p.word)))
                for i, (p, cs) in enumerate(zip(positions, emb))
            ],
        }  # fmt: skip
        for lens_name in LENSES:
            scored = per_lens[lens_name]
            outcomes = [(local[positions[i].sentence], hit[0], hit[1]) for i, _, hit in scored]
            target = "next word" if lens_name == "logit" else "same word"
            result_rows.append(ControlRow.of(lens_name, layer, hook, target, outcomes))
            for i, answers, hit in scored[:n_cases]:
                cases.append(
                    ControlCase(
                        lens=lens_name,
                        layer=result_rows[-1].layer,
                        context=positions[i].context,
                        target=positions[i].word,
                        answers=tuple(_shown(a) for a in answers),
                        hit=hit[0],
                    )
                )
    seconds = time.perf_counter() - t0
    logger.info(
        "text control: %d positions of %d held-out sentences, %d hooks, %.1f s",
        len(positions), len(used), len(hooks), seconds,
    )  # fmt: skip
    return ControlResult(
        kind="text",
        k=k,
        rows=tuple(result_rows),
        cases=tuple(cases),
        excluded=excluded,
        n_groups=len(used),
        seconds=seconds,
        description=(
            f"{len(positions)} content-word positions of {len(used)} held-out sentences, "
            f"each searched at its own layer with its own sentence excluded; hit: the same "
            f"word in the top-{k} (LogitLens: the next word, read one position earlier)"
        ),
    )


def _any(cands: Sequence[Any], hit: Any) -> tuple[bool, bool]:
    """(top-k hit, top-1 hit) of a candidate list."""
    flags = [bool(hit(c)) for c in cands]
    return any(flags), bool(flags[:1] and flags[0])


def _shown(answer: Any) -> str:
    """A candidate as the report shows it: a sub-word neighbour as its marked whole word."""
    if isinstance(answer, Neighbour):
        return answer.marked_word() if answer.is_subword else answer.token.strip()
    return str(answer.token).strip()


def _search(
    bank: Any, x: torch.Tensor, hook: str, k: int, method: str, device: str | None
) -> list[list[Neighbour]]:
    """Per query row its neighbours at ``hook`` (``Bank.search`` gives a report or, in older
    versions, the lists themselves)."""
    found = bank.search(x, hook=hook, k=k, method=method, device=device)
    return list(getattr(found, "neighbours", found))


def _search_device(vlm: VLM) -> str | None:
    """Search on the model's device when it is not the CPU (as LatentLens does)."""
    dev = torch.device(getattr(vlm, "device", "cpu"))
    return None if dev.type == "cpu" else str(dev)


# ---- the visual control -----------------------------------------------------------------------
def word_token_id(tokenizer: Any, word: str) -> int:
    """The one token id of ``word`` as it appears inside a sentence (with its leading space
    where the tokenizer has one; else the bare word).

    Raises:
        ValueError: The word is more than one token either way.
    """
    found = _one_token_id(tokenizer, word)
    if found is not None:
        return found
    raise ValueError(
        f"the visual control needs one-token words; {word!r} is several tokens for this "
        "tokenizer: choose another word"
    )


def _one_token_id(tokenizer: Any, word: str) -> int | None:
    """:func:`word_token_id`, or ``None`` where the word is several tokens."""
    for text in (" " + word.strip(), word.strip()):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) == 1 and ids[0] != getattr(tokenizer, "unk_token_id", None):
            return int(ids[0])
    return None


def visual_control(
    lens: _LensLike,
    words: Sequence[str] = CONTROL_WORDS,
    *,
    k: int = 5,
    image: Any = None,
    prompt: str | None = None,
    method: str = "exact",
    skip_missing: bool = False,
) -> ControlResult:
    """Inject the LM's input embedding of known words at the visual positions and read them
    back at every bank layer.

    One forward pass of ``image`` (default: a grey square) with a hook on
    ``blocks.0.hook_resid_pre`` that writes the embedding rows of ``words`` (cyclically) over
    the visual positions; the first visual token of each word is explained at each bank hook
    (searched per layer). At layer 0 the residual *is* the word's embedding, which a sound bank
    stores exactly: LatentLens and EmbeddingLens must return the word as their top-1
    (:meth:`ControlResult.failures`). Later layers show how long the word survives the
    visual positions' context (LogitLens is scored against the same word there).

    Args:
        lens: A :class:`~tl_latentlens.lens.LatentLens`.
        words: One-token words the bank's corpus holds.
        k: Candidates per lens.
        image: The image whose visual tokens are replaced.
        prompt: The prompt (``None``: the model's default).
        method: Bank search.
        skip_missing: Leave out (and log) words the bank never stores or this tokenizer
            splits, instead of refusing (while at least one word is left).

    Returns:
        A :class:`ControlResult` of kind ``"visual"``.

    Raises:
        ValueError: No words, a word that is several tokens, or one the bank never stores.

    Example:
        >>> visual_control(lens, words=["dog", "tree"]).row("latent", 0).pass1
        100.0
    """
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    words = [w.strip() for w in words if w and w.strip()]
    if not words:
        raise ValueError("the visual control needs at least one word")
    t0 = time.perf_counter()
    vlm, bank = lens.vlm, lens.bank
    if skip_missing:  # words this tokenizer splits are left out, as words the bank lacks are
        split = [w for w in words if _one_token_id(vlm.tokenizer, w) is None]
        if split and len(split) < len(words):
            logger.info("visual control: %s are several tokens here; left out", split)
            words = [w for w in words if w not in split]
    ids = [word_token_id(vlm.tokenizer, w) for w in words]
    entries = getattr(bank, "entries", None)
    if entries is not None:
        held = set(np.unique(np.asarray(entries["token_id"])).tolist())
        missing = [w for w, i in zip(words, ids) if i not in held]
        if missing and skip_missing and len(missing) < len(words):
            logger.info("visual control: the bank never stores %s; left out", missing)
            words, ids = zip(*[(w, i) for w, i in zip(words, ids) if i in held])
            words, ids = list(words), list(ids)
        elif missing:
            raise ValueError(
                f"the bank's corpus never holds {missing}: the visual control needs words the "
                "bank stores; choose others"
            )
    inputs = vlm.prepare(
        image if image is not None else Image.new("RGB", (224, 224), "grey"), prompt
    )
    n_vis = inputs.layout.n_visual
    if n_vis < len(words):
        raise ValueError(
            f"{len(words)} words for {n_vis} visual tokens: pass at most {n_vis} words"
        )
    emb = vlm.embedding_matrix().detach()
    fill = torch.tensor([ids[i % len(ids)] for i in range(n_vis)], device=emb.device)
    injected: Float[torch.Tensor, "n_visual d_model"] = emb[fill]
    positions = inputs.layout.positions.to(vlm.device)

    def write(act: torch.Tensor, hook: Any) -> torch.Tensor:
        out = act.clone()
        out[:, positions] = injected.to(device=act.device, dtype=act.dtype)
        return out

    hooks = vlm.validate_hooks([hk.hook_for_layer(x, vlm.n_layers) for x in _bank_layers(bank)])
    with vlm.bridge.hooks(fwd_hooks=[(hk.hook_for_layer(0, vlm.n_layers), write)]):
        acts = capture_inputs(vlm, inputs, hooks)
    first = list(range(len(words)))  # visual token i holds word i
    device = _search_device(vlm)
    targets = [normalise_word(w) for w in words]
    rows: list[ControlRow] = []
    cases: list[ControlCase] = []
    for hook in hooks:
        layer = hk.layer_of(hook)
        x = acts.residuals[hook][first]
        latent = _search(bank, x, bank.resolve_hook(layer), k, method, device)
        answers = {
            "latent": latent,
            "logit": lens.logit_lens(x, k),
            "embedding": lens.embedding_lens(x, k),
        }
        for lens_name in LENSES:
            outcomes, got = [], answers[lens_name]
            for i, (word, cands) in enumerate(zip(targets, got)):
                if lens_name == "latent":
                    hit = _any(cands, lambda n, w=word: _hit_latent(n, w, w))
                else:
                    hit = _any(cands, lambda c, w=word: _hit_candidate(c, w, w))
                outcomes.append((i, *hit))
                if layer == 0:
                    cases.append(
                        ControlCase(
                            lens_name, 0, words[i], word, tuple(_shown(c) for c in cands), hit[0]
                        )
                    )
            rows.append(ControlRow.of(lens_name, layer, hook, "injected word", outcomes))
    seconds = time.perf_counter() - t0
    return ControlResult(
        kind="visual",
        k=k,
        rows=tuple(rows),
        cases=tuple(cases),
        n_groups=len(words),
        seconds=seconds,
        description=(
            f"the input embeddings of {len(words)} words written over the visual positions at "
            "blocks.0.hook_resid_pre; hit: the same word (top-1 must be it at layer 0)"
        ),
        extra={"words": list(words)},
    )


def _bank_layers(bank: Any) -> list[int | float]:
    layers = getattr(bank, "layers", None)
    if isinstance(layers, Mapping):
        return sorted(set(layers.values()))
    return sorted({hk.layer_of(h) for h in bank.hooks})


# ---- text -------------------------------------------------------------------------------------
def format_controls(controls: Sequence[ControlResult]) -> str:
    """The controls as aligned text: per control and layer, each lens's top-k / top-1 percent
    with the 95 % interval resampling sentences (words), and the failures, if any.

    Example:
        >>> print(format_controls([text, visual]))
    """
    lines = []
    for c in controls:
        lines.append(f"{c.label}: {c.description}")
        head = ["layer", "n"] + [
            f"{name} top{c.k} / @1 [95 %]" for name in ("LatentLens", "LogitLens", "EmbeddingLens")
        ]
        body = []
        for layer in c.layers:
            cells = [str(layer), str(max(r.n for r in c.rows if r.layer == layer))]
            for lens in LENSES:
                try:
                    cells.append(control_cell(c.row(lens, layer)))
                except KeyError:
                    cells.append("-")
            body.append(cells)
        widths = [max(len(x) for x in col) for col in zip(head, *body)]
        lines += ["  ".join(x.rjust(w) for x, w in zip(row, widths)) for row in [head, *body]]
        lines += [f"  ! {f}" for f in c.failures()]
    return "\n".join(lines)


def control_cell(r: ControlRow) -> str:
    """``"97.3 / 90.0 [94.2-98.9]"``: top-k / top-1 percent and the top-k interval."""
    if not r.n:
        return "  -  "
    return f"{r.topk:5.1f} / {r.pass1:5.1f} [{r.group_lo:.0f}-{r.group_hi:.0f}]"


def default_held_out(bank_sentences: int, count: int = 150) -> list[str]:
    """The ``count`` default-corpus sentences that follow a default bank of ``bank_sentences``:
    text its bank never read."""
    return default_corpus(bank_sentences + count)[bank_sentences:]


def positive_controls(
    lens: _LensLike, held_out: Sequence[str], *, k: int = 5
) -> list[ControlResult]:
    """Both controls: :func:`text_control` on ``held_out`` and :func:`visual_control` on the
    default words this tokenizer keeps whole and the bank holds; each failure is logged as a
    warning.

    Example:
        >>> text, visual = positive_controls(lens, default_held_out(12_000))
    """
    out = [text_control(lens, held_out, k=k), visual_control(lens, k=k, skip_missing=True)]
    for control in out:
        for failure in control.failures():
            logger.warning("%s", failure)
    return out
