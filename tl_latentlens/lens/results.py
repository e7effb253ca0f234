"""Plain-data results of the lenses: what ``LatentLens.explain`` returns.

Nothing here renders; ``show`` / ``to_html`` / ``save_png`` hand the data to
:mod:`tl_latentlens.render` (imported lazily).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from tl_latentlens._io import atomic_write_bytes
from tl_latentlens.bank.results import Neighbour
from tl_latentlens.hooks import HookKey, UnknownHookError, resolve_hook
from tl_latentlens.lens.diff import diff_explanations
from tl_latentlens.lens.leap import mid_layer_leap

__all__ = [
    "FORMAT_VERSION",
    "Explanation",
    "NotExplainedError",
    "PatchExplanation",
    "TokenCandidate",
]

FORMAT_VERSION = 1


class NotExplainedError(KeyError, UnknownHookError):
    """A hook or visual token that an :class:`Explanation` does not hold (the message lists
    what it holds)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class TokenCandidate:
    """A vocabulary token proposed by LogitLens or EmbeddingLens.

    Attributes:
        token: The decoded token string.
        token_id: Its id.
        score: Logit (LogitLens) or cosine similarity to the embedding row (EmbeddingLens).
    """

    token: str
    token_id: int
    score: float


_FIELDS: dict[type, tuple[str, ...]] = {}


def _shallow(obj: Any) -> dict[str, Any]:
    """Fields of a dataclass instance as a dict (values not copied)."""
    names = _FIELDS.get(type(obj))
    if names is None:
        names = _FIELDS[type(obj)] = tuple(f.name for f in fields(obj))
    return {name: getattr(obj, name) for name in names}


@dataclass(frozen=True)
class PatchExplanation:
    """All lenses' answers for one visual token at one hook.

    Attributes:
        hook: The visual hook (where the query residual was read).
        layer: Its layer in the tl_latentlens convention.
        index: Index of the visual token (0 … n_visual-1).
        position: Its sequence position.
        row: Patch-grid row (-1 when not a grid patch).
        col: Patch-grid column.
        image_index: Which image of the prompt the token belongs to.
        latent: LatentLens neighbours, best first (each tagged with its text hook/layer).
        logit: LogitLens top-k tokens, best first (empty when baselines are off).
        embedding: EmbeddingLens top-k tokens, best first.
    """

    hook: str
    layer: float
    index: int
    position: int
    row: int
    col: int
    image_index: int
    latent: tuple[Neighbour, ...]
    logit: tuple[TokenCandidate, ...] = ()
    embedding: tuple[TokenCandidate, ...] = ()

    @property
    def top_word(self) -> str:
        """The top LatentLens token, stripped (``""`` when there are no neighbours)."""
        return self.latent[0].token.strip() if self.latent else ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (what :func:`dataclasses.asdict` gives, without its deep copies,
        which dominate serialising a whole result; figures in benchmarks/README.md)."""
        out = _shallow(self)
        for name in ("latent", "logit", "embedding"):
            out[name] = tuple(_shallow(x) for x in out[name])
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PatchExplanation:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        d["latent"] = tuple(
            Neighbour(
                **{
                    **n,
                    "sentence_tokens": tuple(n["sentence_tokens"]),
                    "other_contexts": tuple(tuple(c) for c in n.get("other_contexts", ())),
                }
            )
            for n in d["latent"]
        )
        d["logit"] = tuple(TokenCandidate(**c) for c in d["logit"])
        d["embedding"] = tuple(TokenCandidate(**c) for c in d["embedding"])
        return cls(**d)


@dataclass
class Explanation:
    """LatentLens (and baseline) explanations of the visual tokens of one run.

    Attributes:
        model: Model name.
        bank: Path of the bank searched (``None`` when unknown).
        prompt: The prompt of the run (``None`` for :meth:`LatentLens.explain_vectors`).
        grid: ``(rows, cols)`` of the patch grid.
        hooks: Visual hooks explained, in order.
        bank_hooks: Text hooks searched (all of them = cross-layer search).
        per_layer: True when each visual hook was searched only against its own layer.
        k: Neighbours per lens.
        patches: One entry per (hook, visual token).
        timings: Seconds spent per stage (``forward``, ``search``, ``baselines``).
        search: How each bank hook was searched: ``{bank hook: "exact" | "routes"}``
            (``auto`` decides per hook; see :meth:`tl_latentlens.bank.Bank.search`).
        exact_fallback: Per bank hook, visual tokens that routes sent to exact search.
        search_audit: Per routed bank hook, ``(recall, queries)``: the tie-aware recall@10 of
            the routed answer estimated by the search's audit and how many queries it searched
            exactly (a hook whose audit fell below the bar was answered exactly: its
            ``search`` is ``"exact"``).
        image: What the model saw (the processor's crop), kept in memory for pictures and not
            saved; a list for a prompt with several images.
        interventions: The ``fwd_hooks`` the run was made under, one dict per hook: ``key``
            (as given), ``hook`` (where it ran), ``fn`` and ``module`` of the function
            (empty: a plain run). Saved.
        attention: The run's attention to the patches when asked
            (``explain(..., attention=True)``, a
            :class:`~tl_latentlens.lens.attention.PatchAttention`); in memory only.
    """

    model: str
    bank: str | None
    prompt: str | None
    grid: tuple[int, int]
    hooks: list[str]
    bank_hooks: list[str]
    per_layer: bool
    k: int
    patches: list[PatchExplanation]
    timings: dict[str, float] = field(default_factory=dict)
    search: dict[str, str] = field(default_factory=dict)
    exact_fallback: dict[str, int] = field(default_factory=dict)
    search_audit: dict[str, tuple[float, int]] = field(default_factory=dict)
    image: Any = field(default=None, repr=False, compare=False)
    interventions: list[dict[str, str]] = field(default_factory=list)
    attention: Any = field(default=None, repr=False, compare=False)

    # ---- access -----------------------------------------------------------------------------
    def hook(self, key: HookKey) -> str:
        """The explained hook that ``key`` addresses: its name, any equivalent name of the same
        layer, or a layer number (:func:`tl_latentlens.hooks.resolve_hook`).

        Raises:
            NotExplainedError: No explained hook matches (the message lists them).

        Example:
            >>> result.hook(8)
            'blocks.7.hook_resid_post'
        """
        try:
            return resolve_hook(key, self.hooks, where="explained hooks")
        except UnknownHookError as err:
            raise NotExplainedError(str(err)) from None

    def patch(self, hook: HookKey, index: int) -> PatchExplanation:
        """The explanation of visual token ``index`` at ``hook`` (a name or a layer number).

        Raises:
            NotExplainedError: No such hook / index in this result (the message lists the
                hooks); a ``KeyError`` and a ``ValueError``.
        """
        name = self.hook(hook)
        for p in self.patches:
            if p.hook == name and p.index == index:
                return p
        raise NotExplainedError(f"no visual token {index} at {name!r} (n_visual={self.n_visual})")

    def neighbours(self, hook: HookKey, patch: int) -> list[Neighbour]:
        """LatentLens neighbours of visual token ``patch`` at ``hook``, best first.

        Example:
            >>> [n.token for n in result.neighbours(8, 12)]
            >>> [n.token for n in result.neighbours("blocks.0.hook_resid_pre", 0)]
        """
        return list(self.patch(hook, patch).latent)

    def at(self, hook: HookKey) -> list[PatchExplanation]:
        """Every visual token's explanation at ``hook`` (a name or a layer number), in token
        order."""
        name = self.hook(hook)
        return sorted((p for p in self.patches if p.hook == name), key=lambda p: p.index)

    @property
    def n_visual(self) -> int:
        """Number of visual tokens explained per hook."""
        return len({p.index for p in self.patches})

    # ---- tables -----------------------------------------------------------------------------
    def to_dataframe(self) -> Any:
        """One row per (hook, visual token, lens, rank) as a pandas DataFrame.

        Columns: hook, layer, index, image_index, row, col, lens ("latent"/"logit"/"embedding"), rank, token,
        score, and for LatentLens: word (the whole word containing the token, see
        :attr:`Neighbour.word`), text_hook, text_layer, sentence, sentence_id, position.
        """
        import pandas as pd

        rows: list[dict[str, Any]] = []
        for p in self.patches:
            base = {
                "hook": p.hook,
                "layer": p.layer,
                "index": p.index,
                "image_index": p.image_index,
                "row": p.row,
                "col": p.col,
            }
            for rank, n in enumerate(p.latent):
                rows.append(
                    {
                        **base,
                        "lens": "latent",
                        "rank": rank,
                        "token": n.token,
                        "word": n.word,
                        "score": n.similarity,
                        "text_hook": n.hook,
                        "text_layer": n.layer,
                        "sentence": n.sentence,
                        "sentence_id": n.sentence_id,
                        "position": n.position,
                    }
                )
            for lens, cands in (("logit", p.logit), ("embedding", p.embedding)):
                for rank, c in enumerate(cands):
                    rows.append(
                        {**base, "lens": lens, "rank": rank, "token": c.token, "score": c.score}
                    )
        return pd.DataFrame(rows)

    def leap(self) -> Any:
        """Mid-layer-leap table of this result (see :func:`tl_latentlens.lens.leap.mid_layer_leap`)."""

        return mid_layer_leap(self)

    def diff(self, other: Explanation) -> Any:
        """How the LatentLens neighbours moved from this result to ``other`` (e.g. a run under
        ``fwd_hooks``): an :class:`~tl_latentlens.lens.diff.ExplanationDiff` with per visual
        token and hook the top-k overlap, rank-biased overlap, token Jaccard, similarity
        change and the tokens that entered / left.

        Example:
            >>> plain.diff(ablated).summary()
        """
        return diff_explanations(self, other)

    # ---- persistence ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the image is not included)."""
        return {
            "format_version": FORMAT_VERSION,
            "model": self.model,
            "bank": self.bank,
            "prompt": self.prompt,
            "grid": list(self.grid),
            "hooks": self.hooks,
            "bank_hooks": self.bank_hooks,
            "per_layer": self.per_layer,
            "k": self.k,
            "timings": self.timings,
            "search": self.search,
            "exact_fallback": self.exact_fallback,
            "search_audit": {h: [r, n] for h, (r, n) in self.search_audit.items()},
            "interventions": [dict(x) for x in self.interventions],
            "patches": [p.to_dict() for p in self.patches],
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write JSON atomically (temp file, fsync, rename). Returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps(self.to_dict(), ensure_ascii=False).encode("utf-8")
        atomic_write_bytes(path, data)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Explanation:
        """Read a result written by :meth:`save`.

        Raises:
            ValueError: Not an Explanation file, or a different format version.
        """
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read explanation file {str(path)!r}: {e}") from e
        if not isinstance(d, dict) or d.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{str(path)!r} is not a tl_latentlens explanation of format {FORMAT_VERSION}"
            )
        return cls(
            model=d["model"],
            bank=d["bank"],
            prompt=d["prompt"],
            grid=tuple(d["grid"]),
            hooks=list(d["hooks"]),
            bank_hooks=list(d["bank_hooks"]),
            per_layer=bool(d["per_layer"]),
            k=int(d["k"]),
            patches=[PatchExplanation.from_dict(p) for p in d["patches"]],
            timings=dict(d.get("timings", {})),
            search=dict(d.get("search", {})),
            exact_fallback={k: int(v) for k, v in d.get("exact_fallback", {}).items()},
            interventions=[
                {str(k): str(v) for k, v in x.items()} for x in d.get("interventions", [])
            ],
            search_audit={h: (float(r), int(n)) for h, (r, n) in d.get("search_audit", {}).items()},
        )

    # ---- rendering (delegated) ----------------------------------------------------------------
    def to_html(self, path: str | os.PathLike | None = None, **kwargs: Any) -> str:
        """Standalone offline HTML page (circuitsvis bundle inlined); written to ``path`` if given."""
        # lazy: a notebook convenience; render sits above lens and imports it
        from tl_latentlens.render.html import explanation_html

        return explanation_html(self, path=path, **self._resolved(kwargs))

    def show(self, **kwargs: Any) -> Any:
        """Display in a notebook (inline HTML)."""
        # lazy: a notebook convenience; render sits above lens and imports it
        from tl_latentlens.render.html import show_explanation

        return show_explanation(self, **self._resolved(kwargs))

    def save_png(self, path: str | os.PathLike, hook: HookKey | None = None, **kwargs: Any) -> Path:
        """Image with its patch grid and the top LatentLens word per patch at ``hook`` (a name
        or a layer number; default: the middle explained hook)."""
        # lazy: a notebook convenience; render sits above lens and imports it
        from tl_latentlens.render.pictures import patch_words_png

        name = None if hook is None else self.hook(hook)
        return patch_words_png(self, path, hook=name, **kwargs)

    def _resolved(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Render options with ``hook``/``hooks`` given by layer number or any name resolved
        to the explained hooks."""
        out = dict(kwargs)
        if out.get("hook") is not None:
            out["hook"] = self.hook(out["hook"])
        if out.get("hooks") is not None:
            out["hooks"] = [self.hook(h) for h in out["hooks"]]
        return out
