"""Helpers of the gpu tier (tests/gpu): a corpus, a drawn picture, and the ranking check that
allows two devices to order near-equal scores differently."""

from __future__ import annotations

import os

import numpy as np
import torch

#: The device the tier compares with the CPU: CUDA; ``TL_GPU_TIER_DEVICE=cpu`` runs the tier's
#: code against a second CPU copy (a dry run of the tests themselves on a machine without a GPU).
DEVICE = os.environ.get("TL_GPU_TIER_DEVICE", "cuda")
#: Skip the tier where its device is missing.
MISSING = torch.device(DEVICE).type == "cuda" and not torch.cuda.is_available()

#: Captions-like sentences for the default model's banks (real English: its tokenizer is BPE).
SENTENCES = [
    "a small red car is parked near the old house",
    "the black dog runs across the green grass",
    "two birds sit on a branch of the tall tree",
    "a white boat floats on the calm blue water",
    "the child holds a yellow flower in her hand",
    "an old man walks down the busy city street",
    "the sun sets behind the snowy mountains",
    "a cat sleeps on the warm window sill",
    "a bowl of fresh fruit stands on the kitchen table",
    "the red bus stops in front of the train station",
    "a woman rides a bicycle along the river",
    "the picture shows a horse in a wide field",
    "a glass of milk next to a plate of cookies",
    "the lighthouse stands on a rocky island",
    "a guitar leans against the brick wall",
    "the airplane flies high above the clouds",
]


def corpus(n: int = 96, seed: int = 0) -> list[str]:
    """:data:`SENTENCES` plus recombinations of their words (deterministic)."""
    words = sorted({w for s in SENTENCES for w in s.split()})
    rng = np.random.default_rng(seed)
    extra = [
        " ".join(rng.choice(words, rng.integers(5, 12))) for _ in range(max(0, n - len(SENTENCES)))
    ]
    return SENTENCES + extra


def picture(size: int = 224, seed: int = 0):
    """A drawn scene (shapes on a gradient): structured, so its patches differ from one
    another, and needing no packaged photo."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([80 + 120 * x, 90 + 100 * y, 160 - 60 * x * y], -1).astype(np.uint8)
    img = Image.fromarray(base)
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = rng.integers(0, size * 3 // 4, 2)
        w, h = rng.integers(size // 8, size // 3, 2)
        color = tuple(int(c) for c in rng.integers(0, 255, 3))
        if rng.random() < 0.5:
            draw.ellipse([x0, y0, x0 + w, y0 + h], fill=color)
        else:
            draw.rectangle([x0, y0, x0 + w, y0 + h], fill=color)
    return img


def same_ranking(cpu, gpu, k: int, key, score, tol: float) -> str:
    """Check that the top ``k`` of ``gpu`` is the top ``k`` of ``cpu`` up to near-ties.

    ``cpu`` and ``gpu`` hold ``k + 1`` ranked items (the extra one shows a tie at place ``k``).
    The scores must agree place by place within ``tol``; an item may differ only where the CPU
    scores the GPU's item within ``2 * tol`` of its own at that place (two devices' rounding
    may order near-equal scores either way).

    Returns:
        ``"same"`` or ``"tie"`` (an allowed reordering), for the records.
    """
    cs, gs = [score(x) for x in cpu], [score(x) for x in gpu]
    assert len(cs) >= k and len(gs) >= k, (len(cs), len(gs), k)
    for r in range(k):
        assert abs(cs[r] - gs[r]) <= tol, f"place {r}: cpu {cs[r]:.6g} vs gpu {gs[r]:.6g}"
    ck, gk = [key(x) for x in cpu[:k]], [key(x) for x in gpu[:k]]
    if ck == gk:
        return "same"
    where = {key(x): i for i, x in enumerate(cpu)}
    for r in range(k):
        if ck[r] != gk[r]:
            assert gk[r] in where, f"place {r}: gpu's {gk[r]} is not in the cpu's top {len(cpu)}"
            gap = abs(cs[where[gk[r]]] - cs[r])
            assert gap <= 2 * tol, f"place {r}: {gk[r]} vs {ck[r]}: cpu scores differ by {gap:.3g}"
    return "tie"
