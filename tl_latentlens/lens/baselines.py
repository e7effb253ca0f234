"""The paper's two baselines, read off the same residuals as LatentLens.

* LogitLens: TransformerLens's own readout (``logit_readout``: the real final norm + unembedding).
* EmbeddingLens: nearest rows of the input embedding matrix by cosine similarity.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from tl_latentlens.lens.results import TokenCandidate
from tl_latentlens.models.base import VLM
from tl_latentlens.types import Residuals

__all__ = ["EmbeddingLens", "LogitLens", "decode_tokens"]


def decode_tokens(tokenizer: Any, ids: list[int], cache: dict[int, str] | None = None) -> list[str]:
    """Human-readable string of each token id (``decode([id])``, so BPE markers are resolved).

    ``cache`` (a dict owned by the caller, for one tokenizer) memoises the strings: a
    tokenizer's ``decode`` costs ~0.1 ms a call and the baselines of one image decode
    thousands of ids.
    """
    if cache is None:
        return [tokenizer.decode([int(i)]) for i in ids]
    out = []
    for i in ids:
        got = cache.get(int(i))
        if got is None:
            got = cache[int(i)] = tokenizer.decode([int(i)])
        out.append(got)
    return out


def _check(vectors: torch.Tensor, d_model: int, k: int) -> torch.Tensor:
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    vectors = torch.as_tensor(vectors)
    if vectors.ndim == 1:
        vectors = vectors[None]
    if vectors.ndim != 2 or vectors.shape[-1] != d_model:
        raise ValueError(
            f"expected vectors of shape [n, {d_model}] (d_model of the model), got "
            f"{tuple(vectors.shape)}"
        )
    return vectors


class LogitLens:
    """Top-k tokens of residual vectors read through the final norm and unembedding.

    Uses ``transformer_lens.tools.analysis.logit_readout`` (not re-implemented).

    Example:
        >>> LogitLens(vlm)(acts.residuals["blocks.4.hook_resid_post"], k=5)[0][0].token
    """

    def __init__(self, vlm: VLM) -> None:
        self.vlm = vlm
        self._strings: dict[int, str] = {}

    def __call__(self, vectors: Residuals, k: int = 5) -> list[tuple[TokenCandidate, ...]]:
        from transformer_lens.tools.analysis import logit_readout

        vectors = _check(vectors, self.vlm.d_model, k)
        out = logit_readout(self.vlm.bridge, vectors.to(self.vlm.device), apply_ln=True, top_k=k)
        ids = out.top_ids.cpu().tolist()
        vals = out.values.float().cpu().tolist()
        tok = self.vlm.tokenizer
        return [
            tuple(
                TokenCandidate(token=s, token_id=i, score=v)
                for s, i, v in zip(decode_tokens(tok, row_ids, self._strings), row_ids, row_vals)
            )
            for row_ids, row_vals in zip(ids, vals)
        ]


class EmbeddingLens:
    """Top-k nearest rows of the input embedding matrix (cosine).

    The normalised matrix is computed once per lens object.

    Example:
        >>> EmbeddingLens(vlm)(acts.residuals["blocks.0.hook_resid_pre"], k=5)
    """

    def __init__(self, vlm: VLM, chunk_size: int = 512) -> None:
        self.vlm = vlm
        self.chunk_size = chunk_size
        self._unit: torch.Tensor | None = None
        self._strings: dict[int, str] = {}

    @property
    def unit_embeddings(self) -> torch.Tensor:
        """``[d_vocab, d_model]`` L2-normalised embedding rows (float32)."""
        if self._unit is None:
            with torch.no_grad():
                self._unit = F.normalize(self.vlm.embedding_matrix().detach().float(), dim=-1)
        return self._unit

    def __call__(self, vectors: Residuals, k: int = 5) -> list[tuple[TokenCandidate, ...]]:
        vectors = _check(vectors, self.vlm.d_model, k)
        emb = self.unit_embeddings
        q = F.normalize(vectors.detach().float().to(emb.device), dim=-1)
        results: list[tuple[TokenCandidate, ...]] = []
        tok = self.vlm.tokenizer
        for start in range(0, q.shape[0], self.chunk_size):
            sims = q[start : start + self.chunk_size] @ emb.T
            top = torch.topk(sims, k=min(k, emb.shape[0]), dim=-1)
            for row_ids, row_vals in zip(top.indices.cpu().tolist(), top.values.cpu().tolist()):
                results.append(
                    tuple(
                        TokenCandidate(token=s, token_id=i, score=v)
                        for s, i, v in zip(
                            decode_tokens(tok, row_ids, self._strings), row_ids, row_vals
                        )
                    )
                )
        return results
