"""Attention from the prompt's text tokens to the image's patches, from one forward pass.

``blocks.{l}.attn.hook_pattern`` (``[batch, heads, query pos, key pos]``, softmax over keys)
is cached only when asked: ``LatentLens.explain(..., attention=True)`` (the same pass that the
explanation reads) or ``LatentLens.attention_to_patches``. :class:`PatchAttention` keeps the
whole pattern of the chosen blocks and answers, for chosen query positions, layer and head
(or the mean over heads), how much attention each visual token gets, laid out on the patch
grid. Block ``l``'s attention reads the residual entering block ``l``, i.e. layer ``l``, so the
word of a patch that belongs next to it is the LatentLens word at layer ``l``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from jaxtyping import Float

from tl_latentlens import hooks as hk
from tl_latentlens.capture import ImageActivations

__all__ = ["PatchAttention", "attention_hooks", "patch_attention"]

logger = logging.getLogger(__name__)


def attention_hooks(layers: Sequence[int], n_layers: int) -> list[str]:
    """``blocks.{l}.attn.hook_pattern`` for each block ``l`` of ``layers``.

    Raises:
        ValueError: A block outside ``0 … n_layers-1``.
    """
    bad = [layer for layer in layers if not 0 <= int(layer) < n_layers]
    if bad:
        raise ValueError(
            f"attention layers must be blocks 0..{n_layers - 1} of this model, got {bad}"
        )
    return [hk.attention_pattern_hook(layer) for layer in layers]


@dataclass(frozen=True)
class PatchAttention:
    """The attention patterns of some blocks of one run, read as attention to the patches.

    Attributes:
        layers: Blocks whose pattern is held, ascending.
        pattern: ``[len(layers), heads, pos, pos]`` float32: row ``q`` is query position
            ``q``'s attention over every key position (sums to 1).
        tokens: Every position's token string; visual tokens are labelled ``img[r,c]``.
        positions: Sequence position of each visual token ``[n_visual]``.
        rows: Patch-grid row of each visual token.
        cols: Patch-grid column.
        image_index: Which image each visual token belongs to.
        grid: ``(rows, cols)`` of the patch grid.
        image: The image(s) the model saw (in memory, for pictures).

    Example:
        >>> att = lens.attention_to_patches(image, "<image>\\nWhat animal is this?", layer=8)
        >>> att.top_patches(layer=8, prompt_positions=[-1])[:3]
        >>> att.save_png("attention.png", layer=8, explanation=result)
    """

    layers: tuple[int, ...]
    pattern: Float[np.ndarray, "layers heads pos pos"]
    tokens: tuple[str, ...]
    positions: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    image_index: np.ndarray
    grid: tuple[int, int]
    image: Any = field(default=None, repr=False, compare=False)

    @property
    def n_heads(self) -> int:
        """Attention heads per block."""
        return int(self.pattern.shape[1])

    def prompt_positions(self) -> list[int]:
        """The default query positions: every text (non-visual) position after the first
        visual token (earlier ones cannot attend to the image)."""
        visual = set(int(p) for p in self.positions)
        first = int(min(self.positions)) if len(self.positions) else 0
        return [p for p in range(first, len(self.tokens)) if p not in visual]

    def _queries(self, prompt_positions: Sequence[int] | None) -> list[int]:
        if prompt_positions is None:
            return self.prompt_positions()
        n = len(self.tokens)
        out = []
        for p in prompt_positions:
            q = int(p) + n if int(p) < 0 else int(p)
            if not 0 <= q < n:
                raise ValueError(f"prompt position {p} is outside the sequence 0..{n - 1}")
            out.append(q)
        return out

    def _layer_index(self, layer: int) -> int:
        try:
            return self.layers.index(int(layer))
        except ValueError:
            raise ValueError(
                f"block {layer}'s attention was not cached; held blocks: {list(self.layers)} "
                "(pass attention=[...] / layer=... for it)"
            ) from None

    def weights(
        self, layer: int, head: int | None = None, prompt_positions: Sequence[int] | None = None
    ) -> Float[np.ndarray, "queries n_visual"]:
        """Attention of each query position to each visual token (head ``head`` of block
        ``layer``, or the mean over heads), in visual-token order.

        Raises:
            ValueError: A block not held, a head or position out of range.
        """
        pat = self.pattern[self._layer_index(layer)]
        if head is not None:
            if not 0 <= int(head) < self.n_heads:
                raise ValueError(f"head must be in 0..{self.n_heads - 1}, got {head}")
            pat = pat[int(head)]
        else:
            pat = pat.mean(axis=0)
        queries = self._queries(prompt_positions)
        return pat[np.asarray(queries, dtype=np.int64)][:, self.positions]

    def to_grid(
        self,
        layer: int,
        head: int | None = None,
        prompt_positions: Sequence[int] | None = None,
        image_index: int = 0,
    ) -> Float[np.ndarray, "rows cols"]:
        """The attention (mean over the query positions) each patch of image ``image_index``
        gets, as a ``[rows, cols]`` array; cells without a visual token are NaN."""
        w = self.weights(layer, head, prompt_positions).mean(axis=0)
        out = np.full(tuple(self.grid), np.nan, dtype=np.float32)
        for i in range(len(self.positions)):
            r, c = int(self.rows[i]), int(self.cols[i])
            if int(self.image_index[i]) == image_index and r >= 0 and c >= 0:
                out[r, c] = w[i]
        return out

    def top_patches(
        self,
        layer: int,
        head: int | None = None,
        prompt_positions: Sequence[int] | None = None,
        n: int = 5,
    ) -> list[tuple[int, int, int, float]]:
        """The ``n`` visual tokens that get the most attention (mean over the query
        positions): ``(index, row, col, weight)``, most first."""
        w = self.weights(layer, head, prompt_positions).mean(axis=0)
        order = np.argsort(-w, kind="stable")[:n]
        return [(int(i), int(self.rows[i]), int(self.cols[i]), float(w[i])) for i in order]

    def save_png(self, path: str | os.PathLike, layer: int, **kwargs: Any) -> Any:
        """The image with the attention to its patches as a heatmap and the LatentLens word of
        each patch (see :func:`tl_latentlens.render.attention.attention_png`)."""
        # lazy: render sits above lens and imports it
        from tl_latentlens.render.attention import attention_png

        return attention_png(self, path, layer, **kwargs)

    def to_html(self, path: str | os.PathLike | None = None, **kwargs: Any) -> str:
        """circuitsvis view of the prompt tokens' attention over the visual tokens (see
        :func:`tl_latentlens.render.attention.attention_html`)."""
        # lazy: render sits above lens and imports it
        from tl_latentlens.render.attention import attention_html

        return attention_html(self, path=path, **kwargs)


def patch_attention(
    acts: ImageActivations, layers: Sequence[int], tokenizer: Any, image: Any = None
) -> PatchAttention:
    """A :class:`PatchAttention` from a capture that cached ``attention_hooks(layers)``.

    Raises:
        ValueError: A pattern missing from ``acts.extra``.
    """
    layers = sorted({int(x) for x in layers})
    names = [hk.attention_pattern_hook(layer) for layer in layers]
    missing = [n for n in names if n not in acts.extra]
    if missing:
        raise ValueError(f"the capture holds no attention pattern for {missing}")
    pattern = np.stack([acts.extra[n][0].numpy() for n in names]).astype(np.float32)
    layout = acts.layout
    ids = acts.input_ids.tolist()
    tokens = [str(t) for t in tokenizer.convert_ids_to_tokens(ids)]
    tokens = [
        tokenizer.convert_tokens_to_string([t]) if t else t for t in tokens
    ]  # "Ġcat" -> " cat"
    for i, pos in enumerate(layout.positions.tolist()):
        tokens[pos] = f"img[{int(layout.rows[i])},{int(layout.cols[i])}]"
    index = layout.image_index
    return PatchAttention(
        layers=tuple(layers),
        pattern=pattern,
        tokens=tuple(tokens),
        positions=layout.positions.numpy().astype(np.int64),
        rows=layout.rows.numpy().astype(np.int64),
        cols=layout.cols.numpy().astype(np.int64),
        image_index=(
            index.numpy().astype(np.int64)
            if index is not None
            else np.zeros(layout.n_visual, dtype=np.int64)
        ),
        grid=tuple(int(x) for x in layout.grid),
        image=image,
    )
