"""Seeded choice of which visual tokens (patches) are judged at which layer.

The paper's protocol judges 100 patches per layer, each from a different image. With fewer
eligible images than patches, the patches are spread as evenly as possible over the images
(several distinct patches per image); the plan records how many images were used and the most
patches taken from one image. With ``paired=True`` the same patches are judged at every layer
(a paired comparison across layers, less variance); with ``paired=False`` every layer draws its
own patches (the paper).

Draws use :class:`random.Random` seeded with a string built from the seed and the layer, so a
plan depends only on ``(seed, layers, eligible patches, count, paired)``, not on the order in
which anything else runs.

Example:
    >>> plan = sample_plan([[0, 1, 2], [5, 6]], layers=[0, 4], per_layer=2, seed=0)
    >>> plan.patches_for_image(1)
    [5]
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SamplePlan", "draw", "sample_plan"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplePlan:
    """Which (image, patch) pairs are judged at each layer.

    Attributes:
        layers: The layers, ascending.
        picks: Layer -> sorted list of ``(image_index, patch_index)``.
        requested: Patches asked for per layer.
        paired: Whether every layer uses the same patches.
        seed: The seed.
        stats: Per layer: ``drawn``, ``images`` (distinct images), ``max_per_image``.
    """

    layers: tuple[int, ...]
    picks: dict[int, list[tuple[int, int]]]
    requested: int
    paired: bool
    seed: int
    stats: dict[int, dict[str, int]] = field(default_factory=dict)

    def patches_for_image(self, image_index: int) -> list[int]:
        """Every patch of one image judged at any layer (sorted): what ``explain`` must run."""
        return sorted({p for picks in self.picks.values() for i, p in picks if i == image_index})

    def layers_for(self, image_index: int, patch: int) -> list[int]:
        """The layers at which ``(image_index, patch)`` is judged."""
        return [layer for layer in self.layers if (image_index, patch) in set(self.picks[layer])]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (layer keys as strings)."""
        return {
            "layers": list(self.layers),
            "requested": self.requested,
            "paired": self.paired,
            "seed": self.seed,
            "picks": {str(k): [list(p) for p in v] for k, v in self.picks.items()},
            "stats": {str(k): v for k, v in self.stats.items()},
        }


def draw(
    eligible: Sequence[Sequence[int]], count: int, rng: random.Random
) -> list[tuple[int, int]]:
    """Draw ``count`` distinct ``(image, patch)`` pairs, one per image when possible.

    Args:
        eligible: Per image, the patch indices that may be drawn.
        count: How many pairs.
        rng: The random generator.

    Returns:
        Sorted pairs; fewer than ``count`` only when fewer patches are eligible in total.
    """
    images = [i for i, e in enumerate(eligible) if len(e) > 0]
    if not images or count <= 0:
        return []
    if len(images) >= count:
        chosen = rng.sample(images, count)
        return sorted((i, rng.choice(list(eligible[i]))) for i in chosen)
    # Fewer images than patches: quotas as even as possible, capped by what each image has.
    quota = {i: 0 for i in images}
    left = count
    while left > 0:
        open_ = [i for i in images if quota[i] < len(eligible[i])]
        if not open_:
            break
        share = max(1, left // len(open_))
        order = rng.sample(open_, len(open_))
        for i in order:
            if left == 0:
                break
            take = min(share, len(eligible[i]) - quota[i], left)
            quota[i] += take
            left -= take
    out = [(i, p) for i in images for p in rng.sample(sorted(eligible[i]), quota[i])]
    return sorted(out)


def sample_plan(
    eligible: Sequence[Sequence[int]],
    layers: Sequence[int],
    per_layer: int,
    seed: int,
    paired: bool = True,
) -> SamplePlan:
    """Draw the plan of a study (see the module docstring).

    Args:
        eligible: Per image, the patch indices that may be judged (e.g. labelled patches for
            the mask judge, every grid patch for the LLM judge).
        layers: Layers to judge.
        per_layer: Patches per layer.
        seed: Seed.
        paired: Same patches at every layer.

    Raises:
        ValueError: No layers, ``per_layer < 1``, or nothing eligible.
    """
    if not layers:
        raise ValueError("no layers to evaluate")
    if per_layer < 1:
        raise ValueError(f"patches per layer must be >= 1, got {per_layer}")
    if not any(len(e) for e in eligible):
        raise ValueError("no eligible patches in any image (no labelled patches for this judge?)")
    layers = sorted(dict.fromkeys(int(x) for x in layers))
    picks: dict[int, list[tuple[int, int]]] = {}
    shared = (
        draw(eligible, per_layer, random.Random(f"tl_latentlens:{seed}:paired")) if paired else None
    )
    for layer in layers:
        picks[layer] = (
            list(shared)
            if shared is not None
            else draw(eligible, per_layer, random.Random(f"tl_latentlens:{seed}:layer:{layer}"))
        )
    stats = {}
    for layer, pairs in picks.items():
        per_image: dict[int, int] = {}
        for i, _ in pairs:
            per_image[i] = per_image.get(i, 0) + 1
        stats[layer] = {
            "drawn": len(pairs),
            "images": len(per_image),
            "max_per_image": max(per_image.values(), default=0),
        }
        if len(pairs) < per_layer:
            logger.warning(
                "layer %s: only %d eligible patches (asked for %d)", layer, len(pairs), per_layer
            )
    return SamplePlan(tuple(layers), picks, per_layer, paired, seed, stats)
