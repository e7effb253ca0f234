"""Dtype-independent digests of model weights, per part (embedding, each block).

The same checkpoint loaded in float32, bfloat16 or float16 holds different bytes, so the digest
hashes every parameter after rounding it to a canonical grid, twice:

* ``"bf16"``: rounded to bfloat16. Equal for a float32 load and a bfloat16 load of the same
  weights (bfloat16 rounding of a bfloat16 value is the identity);
* ``"fp16"``: rounded to float16, then to bfloat16. Equal for a float32 load and a float16 load.

Two loads match when one of the two digests agrees, which covers every pair of dtypes when the
weights were published in bfloat16 or float16 (the usual case) and float32 against either of
them when they were published in float32. (A bfloat16 and a float16 rounding of float32-only
weights are different numbers; they are refused.) Shapes enter the hash; names do not (the
order does), so a model loaded from a hub id and from a local copy agree.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

__all__ = ["SCHEME", "VARIANTS", "digest_parts", "parts_key"]

#: Description recorded next to the digests.
SCHEME = (
    "sha256[:16] over each part's parameters (name order; shape + values rounded to bfloat16 "
    "('bf16') or to float16 then bfloat16 ('fp16')); a part matches when either digest agrees"
)
VARIANTS = ("bf16", "fp16")
_CHUNK = 1 << 22  # elements converted at once


def _canonical(chunk: torch.Tensor) -> dict[str, torch.Tensor]:
    return {
        "bf16": chunk.to(torch.bfloat16),
        "fp16": chunk.to(torch.float16).to(torch.bfloat16),
    }


def digest_parts(parts: Mapping[str, Sequence[tuple[str, torch.Tensor]]]) -> dict[str, dict]:
    """``{part: {"bf16": hex16, "fp16": hex16}}`` of named parameters grouped by part.

    Example:
        >>> digest_parts({"embed": [("weight", torch.ones(2, 2))]})["embed"]["bf16"]
        '…'
    """
    out: dict[str, dict[str, str]] = {}
    with torch.no_grad():
        for part, params in parts.items():
            hashes = {v: hashlib.sha256() for v in VARIANTS}
            for _name, tensor in sorted(params, key=lambda item: item[0]):
                flat = tensor.detach().reshape(-1)
                shape = ("x".join(map(str, tensor.shape)) + ";").encode()
                for h in hashes.values():
                    h.update(shape)
                for start in range(0, flat.shape[0], _CHUNK):
                    chunk = flat[start : start + _CHUNK].to("cpu")
                    if not chunk.is_floating_point():
                        chunk = chunk.to(torch.float32)
                    for v, c in _canonical(chunk).items():
                        hashes[v].update(c.contiguous().view(torch.int16).numpy())
            out[part] = {v: h.hexdigest()[:16] for v, h in hashes.items()}
    return out


def parts_key(parts: Mapping[str, Iterable[tuple[str, torch.Tensor]]]) -> tuple[Any, ...]:
    """A cheap key that changes when a parameter is replaced, moved, cast or modified in place
    (through autograd-visible ops; writes through ``.data`` are invisible to it)."""
    return tuple(
        (part, name, id(t), t.data_ptr(), t._version, t.dtype, str(t.device), tuple(t.shape))
        for part, params in parts.items()
        for name, t in params
    )
