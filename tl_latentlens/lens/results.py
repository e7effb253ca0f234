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
from tl_latentlens.lens.leap import mid_layer_leap

__all__ = ["TokenCandidate", "PatchExplanation", "Explanation", "FORMAT_VERSION"]

FORMAT_VERSION = 1


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
        """JSON-ready dict (what :func:`dataclasses.asdict` gives, without its deep copies:
        a 49-patch x 10-hook result serialises ~10x faster)."""
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
        image: What the model saw (the processor's crop), kept in memory for pictures and not
            saved; a list for a prompt with several images.
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
    image: Any = field(default=None, repr=False, compare=False)

    # ---- access -----------------------------------------------------------------------------
    def patch(self, hook: str, index: int) -> PatchExplanation:
        """The explanation of visual token ``index`` at ``hook``.

        Raises:
            KeyError: No such hook / index in this result (the message lists the hooks).
        """
        for p in self.patches:
            if p.hook == hook and p.index == index:
                return p
        if hook not in self.hooks:
            raise KeyError(f"hook {hook!r} was not explained; explained hooks: {self.hooks}")
        raise KeyError(f"no visual token {index} at {hook!r} (n_visual={self.n_visual})")

    def neighbours(self, hook: str, patch: int) -> list[Neighbour]:
        """LatentLens neighbours of visual token ``patch`` at ``hook``, best first.

        Example:
            >>> [n.token for n in result.neighbours("blocks.0.hook_resid_pre", 0)]
        """
        return list(self.patch(hook, patch).latent)

    def at(self, hook: str) -> list[PatchExplanation]:
        """Every visual token's explanation at ``hook``, in token order."""
        if hook not in self.hooks:
            raise KeyError(f"hook {hook!r} was not explained; explained hooks: {self.hooks}")
        return sorted((p for p in self.patches if p.hook == hook), key=lambda p: p.index)

    @property
    def n_visual(self) -> int:
        """Number of visual tokens explained per hook."""
        return len({p.index for p in self.patches})

    # ---- tables -----------------------------------------------------------------------------
    def to_dataframe(self) -> Any:
        """One row per (hook, visual token, lens, rank) as a pandas DataFrame.

        Columns: hook, layer, index, image_index, row, col, lens ("latent"/"logit"/"embedding"), rank, token,
        score, and for LatentLens: text_hook, text_layer, sentence, sentence_id, position.
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
        )

    # ---- rendering (delegated) ----------------------------------------------------------------
    def to_html(self, path: str | os.PathLike | None = None, **kwargs: Any) -> str:
        """Standalone offline HTML page (circuitsvis bundle inlined); written to ``path`` if given."""
        # lazy: a notebook convenience; render sits above lens and imports it
        from tl_latentlens.render.html import explanation_html

        return explanation_html(self, path=path, **kwargs)

    def show(self, **kwargs: Any) -> Any:
        """Display in a notebook (inline HTML)."""
        # lazy: a notebook convenience; render sits above lens and imports it
        from tl_latentlens.render.html import show_explanation

        return show_explanation(self, **kwargs)

    def save_png(self, path: str | os.PathLike, hook: str | None = None, **kwargs: Any) -> Path:
        """Image with its patch grid and the top LatentLens word per patch at ``hook``."""
        # lazy: a notebook convenience; render sits above lens and imports it
        from tl_latentlens.render.pictures import patch_words_png

        return patch_words_png(self, path, hook=hook, **kwargs)
