"""A synthetic :class:`~tl_latentlens.lens.results.Explanation` to preview the renderers.

No model or bank is needed: the neighbours are made up, and deliberately contain strings that
break naive HTML (``<s>``, ``<image>``, ``a&b``, ``</script>``, quotes) and non-ASCII text.

Example:
    >>> from tl_latentlens.render.sample import sample_explanation
    >>> exp = sample_explanation(rows=2, cols=3)
    >>> exp.to_html("preview.html")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from typing import Any

from tl_latentlens.bank.results import Neighbour
from tl_latentlens.hooks import layer_of
from tl_latentlens.lens.results import Explanation, PatchExplanation, TokenCandidate

logger = logging.getLogger(__name__)

__all__ = ["SAMPLE_SENTENCES", "sample_explanation"]

#: The made-up corpus: each sentence as its tokens (the sentence is their concatenation).
SAMPLE_SENTENCES: tuple[tuple[str, ...], ...] = (
    ("<s>", " A", " cat", " sat", " on", " the", " mat", "."),
    ("<s>", " R", "&", "D", " a&b", " lab", " opens", "."),
    ("<s>", " Un", " café", " très", " chaud", " ☕"),
    ("<s>", " 日本", "の", "猫", " 🐱", " 眠る"),
    ("<s>", " Never", " write", " </script>", " inside", " HTML", "."),
    ("<s>", " She", " said", ' "hi"', " and", " '", "bye", "'"),
    ("<s>", " A", " red", " <image>", " of", " a", " dog", " &amp;", " co"),
)

# (sentence, position) of the matched tokens, cycled through the patches.
_PICKS = ((0, 0), (6, 3), (1, 4), (2, 2), (3, 1), (4, 3), (5, 3), (0, 2), (6, 7), (3, 4))
_BANK_HOOKS = (
    "blocks.0.hook_resid_pre",
    "blocks.1.hook_resid_pre",
    "blocks.2.hook_resid_pre",
    "blocks.3.hook_resid_pre",
    "blocks.3.hook_resid_post",
)
_VOCAB = ("<s>", " the", "<image>", " a&b", " café", " cat", "</s>", " 🐱", ' "', " mat")


def _neighbour(pick: int, rank: int, patch: int, text_hook: str) -> Neighbour:
    sid, pos = _PICKS[pick % len(_PICKS)]
    toks = SAMPLE_SENTENCES[sid]
    return Neighbour(
        token=toks[pos],
        token_id=1000 + 10 * sid + pos,
        sentence="".join(toks),
        sentence_id=sid,
        position=pos,
        sentence_tokens=toks,
        similarity=round(0.92 - 0.07 * rank - 0.004 * patch, 4),
        hook=text_hook,
        layer=int(layer_of(text_hook)),
    )


def _candidates(seed: int, k: int, top: float) -> tuple[TokenCandidate, ...]:
    return tuple(
        TokenCandidate(
            token=_VOCAB[(seed + i) % len(_VOCAB)],
            token_id=(seed + i) % len(_VOCAB),
            score=round(top - 0.5 * i, 3),
        )
        for i in range(k)
    )


def _image(rows: int, cols: int, cell: int) -> Any:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (cols * cell, rows * cell))
    draw = ImageDraw.Draw(img)
    for r in range(rows):
        for c in range(cols):
            shade = (40 + 200 * c // max(1, cols - 1), 80 + 150 * r // max(1, rows - 1), 170)
            draw.rectangle([c * cell, r * cell, (c + 1) * cell - 1, (r + 1) * cell - 1], fill=shade)
    draw.ellipse(
        [cell // 3, cell // 3, cols * cell - cell // 3, rows * cell - cell // 3],
        outline=(255, 255, 255),
        width=max(1, cell // 16),
    )
    return img


def sample_explanation(
    rows: int = 2,
    cols: int = 3,
    hooks: tuple[str, ...] = ("blocks.0.hook_resid_pre", "blocks.3.hook_resid_post"),
    k: int = 3,
    baselines: bool = True,
    image: bool = True,
    cell: int = 80,
) -> Explanation:
    """Build a deterministic fake result of ``rows x cols`` visual tokens at ``hooks``.

    Args:
        rows: Patch-grid rows.
        cols: Patch-grid columns.
        hooks: Visual hooks (residual-stream hook names).
        k: Neighbours (and baseline tokens) per visual token.
        baselines: Fill LogitLens / EmbeddingLens candidates.
        image: Attach a synthetic PIL image of ``rows*cell x cols*cell`` pixels.
        cell: Patch size in pixels of that image.

    Returns:
        An :class:`Explanation` with ``len(hooks) * rows * cols`` patches.

    Raises:
        ValueError: Non-positive sizes or no hooks.

    Example:
        >>> exp = sample_explanation(rows=1, cols=2, k=2)
        >>> exp.at("blocks.0.hook_resid_pre")[0].top_word
        '<s>'
    """
    if rows < 1 or cols < 1 or k < 1 or cell < 1:
        raise ValueError(f"rows, cols, k and cell must be >= 1, got {rows}, {cols}, {k}, {cell}")
    if not hooks:
        raise ValueError("at least one visual hook is needed")
    patches = []
    for h, hook in enumerate(hooks):
        for idx in range(rows * cols):
            latent = tuple(
                _neighbour(idx + r + h, r, idx, _BANK_HOOKS[(idx + 2 * r + h) % len(_BANK_HOOKS)])
                for r in range(k)
            )
            patches.append(
                PatchExplanation(
                    hook=hook,
                    layer=layer_of(hook),
                    index=idx,
                    position=5 + idx,
                    row=idx // cols,
                    col=idx % cols,
                    image_index=0,
                    latent=latent,
                    logit=_candidates(idx + h, k, 12.5) if baselines else (),
                    embedding=_candidates(idx + h + 3, k, 0.31) if baselines else (),
                )
            )
    return Explanation(
        model="sample/tiny-vlm <demo>",
        bank="banks/sample & <test>.bank",
        prompt="<image>\nDescribe the <image> & name 'things' in \"quotes\" (café ☕).",
        grid=(rows, cols),
        hooks=list(hooks),
        bank_hooks=list(_BANK_HOOKS),
        per_layer=False,
        k=k,
        patches=patches,
        timings={"forward": 0.4213, "search": 0.0871, "baselines": 0.0123},
        image=_image(rows, cols, cell) if image else None,
    )
