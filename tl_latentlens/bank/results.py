"""Search results of a contextual text bank."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Neighbour", "SearchReport"]


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

    Example:
        >>> n = bank.search(vec, k=1)[0][0]
        >>> n.highlighted()
        'a red [car] parked near the tree'
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

    def highlighted(self, left: str = "[", right: str = "]", skip: tuple[str, ...] = ()) -> str:
        """The sentence's tokens joined, the matched one wrapped in ``left``/``right``.

        Args:
            left: Text before the matched token.
            right: Text after it.
            skip: Token strings to leave out (e.g. ``("<s>",)``) unless matched.
        """
        parts = []
        for i, tok in enumerate(self.sentence_tokens):
            if i == self.position:
                parts.append(f"{left}{tok}{right}")
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
    """Neighbours of a :meth:`~tl_latentlens.bank.Bank.query` and how they were found.

    Attributes:
        neighbours: Per query row, its neighbours, most similar first.
        methods: Searched hook -> ``"exact"`` or ``"routes"``.
        exact_fallback: Searched hook -> queries routes sent to exact search.
        seconds: Searched hook -> search wall time.
    """

    neighbours: list[list[Neighbour]]
    methods: dict[str, str]
    exact_fallback: dict[str, int]
    seconds: dict[str, float]
