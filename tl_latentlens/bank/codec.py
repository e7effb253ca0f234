"""Vector storage codecs: ``float32``, ``float16`` and ``int8`` (centred, per-dimension scale).

Every codec decodes to float32. A build always encodes the model's residuals as *raw* rows
(float32 or float16, :func:`encode`); ``int8`` is applied afterwards per hook
(:func:`fit_int8` over all rows of the hook, then :func:`encode_int8`), because its offset and
scales are statistics of the whole hook. The norm of each *stored* (decoded) vector is kept
beside it, so cosine similarities computed from the stored values are exact for what is stored.
"""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Float

from tl_latentlens.bank.errors import BankError
from tl_latentlens.types import Residuals

__all__ = [
    "CODECS",
    "decode",
    "encode",
    "encode_int8",
    "fit_int8",
    "numpy_dtype",
    "raw_codec",
]

#: Storage codecs: name -> bytes per component.
CODECS = {"float32": 4, "float16": 2, "int8": 1}

Params = Float[np.ndarray, "2 d"]  # int8: row 0 = offset (per-dimension centre), row 1 = scale


def numpy_dtype(codec: str) -> np.dtype:
    """On-disk numpy dtype of a codec."""
    try:
        return np.dtype({"float32": "<f4", "float16": "<f2", "int8": "i1"}[codec])
    except KeyError:
        raise ValueError(f"unknown codec {codec!r}; known: {sorted(CODECS)}") from None


def raw_codec(codec: str) -> str:
    """The codec the build's encoding pass writes for a bank stored as ``codec``."""
    return "float32" if codec == "float32" else "float16"


def encode(x: Residuals, codec: str) -> tuple[np.ndarray, None, np.ndarray]:
    """Encode float32 vectors ``[n, d]`` as raw rows (``float32`` or ``float16``).

    Returns:
        ``(stored, None, norms)``; ``norms`` (float32 ``[n]``) are those of the decoded rows.

    Raises:
        BankError: A value overflows float16 or is not finite.

    Example:
        >>> stored, _, norms = encode(torch.randn(4, 8), "float16")
        >>> stored.dtype
        dtype('float16')
    """
    x = x.detach().to(torch.float32).cpu()
    if not torch.isfinite(x).all():
        raise BankError("the model produced non-finite residuals; cannot store them")
    if codec == "float32":
        stored = x.numpy().astype("<f4", copy=False)
    elif codec == "float16":
        half = x.to(torch.float16)
        if not torch.isfinite(half).all():
            raise BankError(
                f"residual values up to {x.abs().max().item():.4g} overflow float16 "
                "(max 65504); build the bank with dtype='float32'"
            )
        stored = half.numpy()
    else:
        raise ValueError(f"encode() writes raw rows (float32/float16), not {codec!r}")
    stored = np.ascontiguousarray(stored)
    norms = np.linalg.norm(decode(stored, codec), axis=1).astype("<f4")
    return stored, None, norms


def fit_int8(chunks: object) -> Params:
    """Per-dimension offset (midrange) and scale of float32 chunks ``[n_i, d]`` for ``int8``.

    The offset is the midpoint of each dimension's range and the scale maps the range onto
    [-127, 127], so nothing is clipped.
    """
    lo = hi = None
    for block in chunks:  # type: ignore[attr-defined]
        b_lo, b_hi = block.min(axis=0), block.max(axis=0)
        lo = b_lo if lo is None else np.minimum(lo, b_lo)
        hi = b_hi if hi is None else np.maximum(hi, b_hi)
    if lo is None:
        raise BankError("cannot fit an int8 codec to zero vectors")
    offset = ((lo.astype(np.float64) + hi) / 2).astype(np.float32)
    scale = ((hi.astype(np.float64) - lo) / 254).astype(np.float32)
    scale[scale == 0] = 1.0
    return np.stack([offset, scale]).astype("<f4")


def encode_int8(x: np.ndarray, params: Params) -> np.ndarray:
    """float32 ``[n, d]`` -> int8 with :func:`fit_int8` parameters (rounded, clipped)."""
    q = np.rint((x - params[0]) / params[1])
    return np.clip(q, -127, 127).astype(np.int8)


def decode(
    stored: np.ndarray, codec: str, params: Params | None = None, out: np.ndarray | None = None
) -> np.ndarray:
    """Stored rows -> float32 ``[n, d]`` (a new array unless ``out`` is given).

    Example:
        >>> decode(np.ones((1, 4), np.float16), "float16")
        array([[1., 1., 1., 1.]], dtype=float32)
    """
    if codec == "float16":
        # torch widens float16 with SIMD (numpy's conversion is ~4x slower on our CPUs).
        res = torch.from_numpy(np.array(stored, dtype=np.float16)).to(torch.float32).numpy()
    elif codec == "float32":
        res = np.array(stored, dtype=np.float32)  # a copy: callers scale it in place
    elif codec == "int8":
        if params is None:
            raise ValueError("the int8 codec needs its offset/scale parameters")
        res = np.asarray(stored, dtype=np.float32) * params[1] + params[0]
    else:
        raise ValueError(f"unknown codec {codec!r}; known: {sorted(CODECS)}")
    if out is not None:
        out[...] = res
        return out
    return res
