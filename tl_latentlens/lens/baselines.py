"""The paper's two baselines, read off the same residuals as LatentLens.

* LogitLens: TransformerLens's own readout (``logit_readout``: the real final norm + unembedding).
* EmbeddingLens: nearest rows of the input embedding matrix by cosine similarity.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int

from tl_latentlens.devices import fast_dtype
from tl_latentlens.lens.results import TokenCandidate
from tl_latentlens.models.base import VLM
from tl_latentlens.types import Residuals

__all__ = ["EmbeddingLens", "LogitLens", "decode_tokens"]


def decode_tokens(tokenizer: Any, ids: list[int], cache: dict[int, str] | None = None) -> list[str]:
    """Human-readable string of each token id (``decode([id])``, so BPE markers are resolved).

    ``cache`` (a dict owned by the caller, for one tokenizer) memoises the strings: a
    tokenizer's ``decode`` is slow per call and the baselines of one image decode thousands
    of ids.
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

    The normalised matrix is computed once per lens object. On a CPU that runs bfloat16
    products faster than float32 (:func:`tl_latentlens.devices.fast_dtype`) the scan runs in
    bfloat16 and the best :data:`BF16_CANDIDATES` rows per query are re-scored in float32; a
    query keeps that result
    only when its k-th re-scored similarity beats every other row's bfloat16 similarity by more
    than the largest error bfloat16 rounding can make (:func:`bf16_error`), which proves the
    top-k equal to a float32 scan's. Any other query is scanned again in float32
    (``benchmarks/bench_explain.py`` compares both scans).

    Example:
        >>> EmbeddingLens(vlm)(acts.residuals["blocks.0.hook_resid_pre"], k=5)
    """

    def __init__(self, vlm: VLM, chunk_size: int = 512) -> None:
        self.vlm = vlm
        self.chunk_size = chunk_size
        self._unit: torch.Tensor | None = None
        self._unit_bf16: torch.Tensor | None = None
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
        k = min(k, emb.shape[0])
        results: list[tuple[TokenCandidate, ...]] = []
        tok = self.vlm.tokenizer
        for start in range(0, q.shape[0], self.chunk_size):
            values, indices = self.top_k(q[start : start + self.chunk_size], k)
            for row_ids, row_vals in zip(indices.cpu().tolist(), values.cpu().tolist()):
                results.append(
                    tuple(
                        TokenCandidate(token=s, token_id=i, score=v)
                        for s, i, v in zip(
                            decode_tokens(tok, row_ids, self._strings), row_ids, row_vals
                        )
                    )
                )
        return results

    def top_k(
        self, unit_queries: Float[torch.Tensor, "n d"], k: int
    ) -> tuple[Float[torch.Tensor, "n k"], Int[torch.Tensor, "n k"]]:
        """Float32 cosines and ids of the ``k`` nearest embedding rows of unit queries
        (bfloat16 scan with a proof where this CPU runs bfloat16 faster, see the class)."""
        emb = self.unit_embeddings
        m = min(k + BF16_CANDIDATES, emb.shape[0])
        if not (_bf16_is_fast(emb.device) and m < emb.shape[0]):
            return torch.topk(unit_queries @ emb.T, k=k, dim=-1)
        if self._unit_bf16 is None:
            self._unit_bf16 = emb.to(torch.bfloat16)
        rough = unit_queries.to(torch.bfloat16) @ self._unit_bf16.T  # bfloat16 out
        cand_vals, cand_ids = torch.topk(rough, k=m, dim=-1)
        cand_vals = cand_vals.float()
        exact = torch.einsum("nd,nmd->nm", unit_queries, emb[cand_ids])
        values, pos = torch.topk(exact, k=k, dim=-1)
        indices = torch.gather(cand_ids, 1, pos)
        # every row outside the candidates has a bfloat16 similarity <= the last candidate's
        unproved = ~(values[:, -1] > cand_vals[:, -1] + bf16_error(emb.shape[1]))
        if bool(unproved.any()):
            rows = unproved.nonzero().squeeze(1)
            redo = torch.topk(unit_queries[rows] @ emb.T, k=k, dim=-1)
            values[rows], indices[rows] = redo.values, redo.indices
        return values, indices


#: Candidates per query re-scored in float32 after the bfloat16 scan (beyond k): the smallest
#: count tried with which every visual token of one image proved its top-5 (fewer leave some
#: queries to a float32 rescan; figures in benchmarks/README.md).
BF16_CANDIDATES = 96


def bf16_error(d: int) -> float:
    """Largest difference between the bfloat16 and the float32 cosine of two unit vectors of
    width ``d``: rounding each operand moves each component by <= 2^-8 of itself (2^-9 for
    round-to-nearest; the bound allows truncation), so the product moves by
    <= (2 * 2^-8 + 2^-16) |q| |e|; float32 accumulation adds <= d * 2^-24 (with margin) and
    rounding the result (|s| <= 1.02) to bfloat16 another 2^-8 * 1.02."""
    return 2.0**-7 + 2.0**-16 + 1.01 * d * 2.0**-24 + 1.02 * 2.0**-8


def _bf16_is_fast(device: torch.device) -> bool:
    """Whether bfloat16 matrix products beat float32 on this CPU, as measured once per machine
    (:func:`tl_latentlens.devices.fast_dtype`: CPUs without bfloat16 instructions emulate it,
    far slower). GPUs scan in float32 (fast enough, no proof needed)."""
    return device.type == "cpu" and fast_dtype("cpu").dtype == torch.bfloat16
