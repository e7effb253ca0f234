"""Search results of a contextual text bank."""

from __future__ import annotations

import html
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property

__all__ = ["Neighbour", "SearchReport", "WordSpan", "word_span"]


@dataclass(frozen=True)
class WordSpan:
    """The whole word around one token of a tokenised sentence, split at the token.

    Attributes:
        before: The word's text before the token (``"k"`` for ``"ang"`` in ``"kangaroo"``).
        piece: The token's own text, without its leading space.
        after: The word's text after the token (``"aroo"``).
        start: Index of the word's first token in the sentence tokens.
        end: One past the index of its last token.

    Example:
        >>> word_span(["<s>", " k", "ang", "aroo", " jumps"], 2).marked()
        'k[ang]aroo'
    """

    before: str
    piece: str
    after: str
    start: int
    end: int

    @property
    def word(self) -> str:
        """The whole word (``"kangaroo"``)."""
        return f"{self.before}{self.piece}{self.after}"

    @property
    def is_subword(self) -> bool:
        """Whether the token is only part of its word."""
        return bool(self.before or self.after)

    def marked(self, left: str = "[", right: str = "]") -> str:
        """The word with the token's piece wrapped in ``left``/``right`` (``"k[ang]aroo"``)."""
        return f"{self.before}{left}{self.piece}{right}{self.after}"

    def marked_html(self, tag: str = "mark") -> str:
        """The word as escaped HTML, the token's piece in ``<tag>`` (``k<mark>ang</mark>aroo``)."""
        esc = html.escape
        return f"{esc(self.before)}<{tag}>{esc(self.piece)}</{tag}>{esc(self.after)}"


def _joins_previous(token: str) -> bool:
    """A token that starts with a letter or digit (no leading space, no punctuation)
    continues the word before it."""
    return token[:1].isalnum()


def word_span(tokens: Sequence[str], position: int) -> WordSpan | None:
    """The whole word of a sentence that contains the token at ``position``.

    Sub-word tokenizers decode a word-initial token with its leading space (``" kang"``) and a
    continuation without one (``"aroo"``): a word is a run of tokens where each one after the
    first starts with a letter or digit and the one before it ends with one. Word-level
    tokenizers (no token after the first starts with a space) make every token its own word.
    Special tokens (``"<s>"``) end in punctuation and never join a word.

    Args:
        tokens: The sentence's tokens as strings (``Neighbour.sentence_tokens``).
        position: The token's index.

    Returns:
        The :class:`WordSpan`, or ``None`` when ``position`` is outside ``tokens``.

    Example:
        >>> word_span(["<s>", "A", " kidn", "ey", " bean"], 3).word
        'kidney'
    """
    if not 0 <= position < len(tokens):
        return None
    token = tokens[position]
    if not any(t[:1].isspace() for t in tokens[1:]):  # word-level: one token, one word
        return WordSpan("", token.strip(), "", position, position + 1)
    start = position
    while start > 0 and _joins_previous(tokens[start]) and tokens[start - 1][-1:].isalnum():
        start -= 1
    end = position + 1
    while end < len(tokens) and _joins_previous(tokens[end]) and tokens[end - 1][-1:].isalnum():
        end += 1
    before = "".join(tokens[start:position]).lstrip()
    piece = token.lstrip() if position == start else token
    after = "".join(tokens[position + 1 : end])
    if after:
        after = after.rstrip()
    else:
        piece = piece.rstrip()
    return WordSpan(before, piece, after, start, end)


@dataclass(frozen=True)
class Neighbour:
    """One contextual text token returned by :meth:`~tl_latentlens.bank.Bank.search`.

    Attributes:
        token: The matched token as a string (``tokenizer.decode([token_id])``).
        token_id: Its token id.
        sentence: The corpus sentence it occurs in.
        sentence_id: Index of that sentence in the bank's sentence table.
        position: Position of the token in the sentence's token sequence (as the model saw it:
            a BOS token counts), i.e. ``sentence_tokens[position] == token``.
        sentence_tokens: Every token of the sentence (truncated to the build's
            ``max_tokens``) as strings, BOS/special tokens included.
        similarity: Cosine similarity to the query.
        hook: Hook name of the residual it was stored from.
        layer: That hook's layer in the tl_latentlens convention (``hooks.layer_of``; ``l + 0.5``
            for a ``resid_mid`` hook).
        n_occurrences: Corpus occurrences that share this exact vector (at the input layer,
            every occurrence of the token); the neighbour is shown once, at its first one.
        other_contexts: ``(sentence_id, position)`` of (some of) the other occurrences.

    A sub-word neighbour stands for its whole word: :attr:`word` is that word (computed from
    ``sentence_tokens``, so stored banks and saved results need nothing new) and
    :meth:`marked_word` / :meth:`marked_word_html` show it with the matched piece marked.

    Example:
        >>> n = bank.search(vec, k=1)[0][0]
        >>> n.highlighted()
        'a red [car] parked near the tree'
        >>> n.token, n.word, n.marked_word()   # a sub-word neighbour
        ('ang', 'kangaroo', 'k[ang]aroo')
    """

    token: str
    token_id: int
    sentence: str
    sentence_id: int
    position: int
    sentence_tokens: tuple[str, ...]
    similarity: float
    hook: str
    layer: int | float
    n_occurrences: int = 1
    other_contexts: tuple[tuple[int, int], ...] = ()

    # ---- the whole word ---------------------------------------------------------------------
    @cached_property
    def word_span(self) -> WordSpan:
        """The whole word around the matched token (:func:`word_span`); when the sentence
        tokens do not hold the token at :attr:`position`, the token alone."""
        toks = self.sentence_tokens
        if 0 <= self.position < len(toks) and toks[self.position] == self.token:
            span = word_span(toks, self.position)
            if span is not None:
                return span
        return WordSpan("", self.token.strip(), "", self.position, self.position + 1)

    @property
    def word(self) -> str:
        """The whole word that contains the matched token in its sentence (``"kangaroo"`` for
        the token ``"ang"``; the stripped token for a whole-word token)."""
        return self.word_span.word

    @property
    def is_subword(self) -> bool:
        """Whether the matched token is only part of its word."""
        return self.word_span.is_subword

    def marked_word(self, left: str = "[", right: str = "]") -> str:
        """The whole word with the matched piece marked: ``"k[ang]aroo"``."""
        return self.word_span.marked(left, right)

    def marked_word_html(self, tag: str = "mark") -> str:
        """The whole word as escaped HTML, the matched piece in ``<mark>``:
        ``"k<mark>ang</mark>aroo"``."""
        return self.word_span.marked_html(tag)

    @cached_property
    def char_span(self) -> tuple[int, int] | None:
        """``(start, end)`` of the matched piece (no leading space) in :attr:`sentence`, or
        ``None`` when the sentence tokens do not spell the sentence (word-level tokenizers,
        text changed by normalisation)."""
        toks = self.sentence_tokens
        if not 0 <= self.position < len(toks):
            return None
        for first in range(min(self.position + 1, 4)):  # skip leading special tokens
            rest = "".join(toks[first:])
            if rest and self.sentence.startswith(rest):
                tok = toks[self.position]
                lo = len("".join(toks[first : self.position])) + len(tok) - len(tok.lstrip())
                return lo, len("".join(toks[first : self.position + 1]))
        return None

    def highlighted(self, left: str = "[", right: str = "]", skip: tuple[str, ...] = ()) -> str:
        """The sentence's tokens joined, the matched one wrapped in ``left``/``right`` (its
        leading space stays outside: ``"A [kidn]ey bean"``).

        Args:
            left: Text before the matched token.
            right: Text after it.
            skip: Token strings to leave out (e.g. ``("<s>",)``) unless matched.
        """
        parts = []
        for i, tok in enumerate(self.sentence_tokens):
            if i == self.position:
                bare = tok.lstrip()
                parts.append(f"{tok[: len(tok) - len(bare)]}{left}{bare}{right}")
            elif tok not in skip:
                parts.append(tok)
        # Sub-word tokenizers decode word-initial tokens with their leading space; word-level
        # ones decode bare words, which need a separator.
        spaced = any(t[:1].isspace() for t in self.sentence_tokens[1:])
        return ("" if spaced else " ").join(parts).strip()

    def context(
        self, before: int = 8, after: int = 4
    ) -> tuple[tuple[str, ...], str, tuple[str, ...]]:
        """``(tokens before, matched token, tokens after)`` around the match, at most
        ``before``/``after`` tokens each side."""
        toks = self.sentence_tokens
        lo = max(0, self.position - before)
        return (
            toks[lo : self.position],
            toks[self.position],
            toks[self.position + 1 : self.position + 1 + after],
        )


@dataclass(frozen=True)
class SearchReport:
    """What :meth:`~tl_latentlens.bank.Bank.search` found and how: per query row its
    neighbours (``report[i]``; the report is a sequence of those lists), per searched hook the
    method and, for a routed hook, its audit.

    Attributes:
        neighbours: Per query row, its neighbours, most similar first.
        methods: Searched hook -> ``"exact"`` or ``"routes"`` (a routed hook whose audit
            failed under ``method="auto"`` was answered exactly: ``"exact"``).
        exact_fallback: Searched hook -> queries routes sent to exact search.
        seconds: Searched hook -> search wall time (its audit included).
        audit_recall: Audited hook -> tie-aware recall@10 of its routed answer, estimated
            from the queries the audit also searched exactly.
        audited: Audited hook -> queries the audit searched exactly.
        audit_failed: Audited hook -> whether the estimate fell below the recall bar.

    Example:
        >>> report = bank.search(vectors, k=5)
        >>> report[0][0].token, report.methods, report.audit_recall, report.audited
    """

    neighbours: list[list[Neighbour]]
    methods: dict[str, str]
    exact_fallback: dict[str, int]
    seconds: dict[str, float]
    audit_recall: dict[str, float] = field(default_factory=dict)
    audited: dict[str, int] = field(default_factory=dict)
    audit_failed: dict[str, bool] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.neighbours)

    def __getitem__(self, i: int) -> list[Neighbour]:
        return self.neighbours[i]

    def __iter__(self) -> Iterator[list[Neighbour]]:
        return iter(self.neighbours)
