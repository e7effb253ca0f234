"""Settings of an interpretability study (:class:`EvalConfig`)."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

from tl_latentlens.bank.search.dispatch import Method
from tl_latentlens.evaluate.judges import KINDS

__all__ = ["PROTOCOLS", "EvalConfig"]

logger = logging.getLogger(__name__)

#: ``default``: paired patches across layers; ``paper``: the paper's protocol (see
#: :meth:`EvalConfig.paper`).
PROTOCOLS = ("default", "paper")

# Fields that decide which patches are judged with which candidates.
_IDENTITY = (
    "layers",
    "k",
    "patches_per_layer",
    "seed",
    "paired",
    "protocol",
    "per_layer",
    "prompt",
    "method",
    "min_label_fraction",
)


@dataclass(frozen=True)
class EvalConfig:
    """What a study samples, asks and counts.

    Attributes:
        layers: Visual layers to judge (tl_latentlens layer convention, 0 = connector output);
            ``None``: the layers the bank stores.
        k: Candidates per lens shown to the judge (top-k).
        patches_per_layer: Patches judged per layer (spread one per image where possible).
        seed: Seed of the patch sampling.
        paired: Judge the same patches at every layer (``False``: a fresh draw per layer).
        protocol: ``"default"`` or ``"paper"`` (recorded; ``paper`` pins ``k=5`` and
            ``paired=False``).
        per_layer: LatentLens searches only the bank layer equal to the visual layer (default:
            every bank layer, which the mid-layer-leap heatmap needs).
        prompt: Prompt with the image placeholder (``None``: the model's default).
        method: Bank search (:meth:`~tl_latentlens.bank.Bank.search`): ``"auto"`` (routes
            where the bank proved them, audited on each search), ``"exact"`` or ``"routes"``.
        min_label_fraction: Share of a patch one label must cover for the patch to count as
            labelled (pixel masks only).
        count_kinds: Verdict kinds counted as interpretable in the table.
        judge_workers: Judge requests in flight at once (threads; 1 = sequential).
        plots: Draw ``layers.png``, ``layers_pass1.png`` and ``leap.png``.
        save_explanations: Keep each image's :class:`~tl_latentlens.lens.Explanation` as JSON
            under ``explanations/`` (a resumed run then skips the model for finished images).

    Example:
        >>> EvalConfig(layers=(0, 8, 16), patches_per_layer=20, seed=1)
        >>> EvalConfig.paper(seed=3)
    """

    layers: tuple[int, ...] | None = None
    k: int = 5
    patches_per_layer: int = 100
    seed: int = 0
    paired: bool = True
    protocol: str = "default"
    per_layer: bool = False
    prompt: str | None = None
    method: Method = "auto"
    min_label_fraction: float = 0.5
    count_kinds: tuple[str, ...] = KINDS
    judge_workers: int = 1
    plots: bool = True
    save_explanations: bool = True

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.patches_per_layer < 1:
            raise ValueError(f"patches_per_layer must be >= 1, got {self.patches_per_layer}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if self.protocol == "paper" and (self.k != 5 or self.paired):
            raise ValueError(
                "the paper protocol judges the top-5 candidates (k=5) with paired=False"
            )
        if self.layers is not None:
            if not self.layers:
                raise ValueError("layers must not be empty (None: the bank's layers)")
            if any(int(x) < 0 for x in self.layers):
                raise ValueError(f"layers must be >= 0, got {self.layers}")
        if not 0 < self.min_label_fraction <= 1:
            raise ValueError(f"min_label_fraction must be in (0, 1], got {self.min_label_fraction}")
        bad = [x for x in self.count_kinds if x not in KINDS]
        if bad or not self.count_kinds:
            raise ValueError(
                f"count_kinds must be a non-empty subset of {KINDS}, got {self.count_kinds}"
            )
        if self.method not in ("auto", "exact", "routes"):
            raise ValueError(f"method must be 'auto', 'exact' or 'routes', got {self.method!r}")
        if self.judge_workers < 1:
            raise ValueError(f"judge_workers must be >= 1, got {self.judge_workers}")

    @classmethod
    def paper(cls, **overrides: Any) -> EvalConfig:
        """The paper's protocol: 100 patches per layer, one per image, fresh per layer, top-5.

        With a vision judge this matches the paper's setup (red box over the 3x3 block + crop,
        top-5 words, interpretable if any candidate is a concrete/abstract/global match).
        """
        base = {"k": 5, "patches_per_layer": 100, "paired": False, "protocol": "paper"}
        return cls(**{**base, **overrides})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        d = asdict(self)
        d["layers"] = list(self.layers) if self.layers is not None else None
        d["count_kinds"] = list(self.count_kinds)
        return d

    def identity(self) -> dict[str, Any]:
        """The fields that decide which patches are judged with which candidates (a resumed run
        must agree on them)."""
        d = self.to_dict()
        return {name: d[name] for name in _IDENTITY}
