"""Vector storage codecs: float32, float16, and float8 (e4m3) with a per-vector scale.

Every codec decodes to float32. ``float8_e4m3`` is implemented (and measured by the benchmarks)
but :class:`~tl_latentlens.bank.BankConfig` does not offer it: it loses too much recall. The norm of each *stored* (decoded) vector is kept beside it, so
cosine similarities computed from the stored values are exact for what is stored.
"""

from __future__ import annotations

import numpy as np
import torch

from tl_latentlens.bank.errors import BankError
from tl_latentlens.types import Residuals

__all__ = ["decode", "encode", "numpy_dtype", "has_scales"]

_FP8_MAX = 448.0  # largest finite float8_e4m3fn


def numpy_dtype(dtype: str) -> np.dtype:
    """On-disk numpy dtype of a storage dtype name."""
    return np.dtype({"float32": "<f4", "float16": "<f2", "float8_e4m3": "u1"}[dtype])


def has_scales(dtype: str) -> bool:
    """Whether the codec stores a float32 scale per vector."""
    return dtype == "float8_e4m3"


def encode(x: Residuals, dtype: str) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Encode float32 vectors ``[n, d]`` for storage.

    Returns:
        ``(stored, scales or None, norms)``; ``norms`` (float32 ``[n]``) are those of the decoded
        vectors.

    Raises:
        BankError: A value overflows the storage dtype (float16) or is not finite.

    Example:
        >>> stored, scales, norms = encode(torch.randn(4, 8), "float8_e4m3")
        >>> stored.dtype, scales.shape
        (dtype('uint8'), (4,))
    """
    x = x.detach().to(torch.float32).cpu()
    if not torch.isfinite(x).all():
        raise BankError("the model produced non-finite residuals; cannot store them")
    scales = None
    if dtype == "float32":
        stored = x.numpy().astype("<f4", copy=False)
    elif dtype == "float16":
        half = x.to(torch.float16)
        if not torch.isfinite(half).all():
            raise BankError(
                f"residual values up to {x.abs().max().item():.4g} overflow float16 "
                "(max 65504); build the bank with dtype='float32'"
            )
        stored = half.numpy()
    elif dtype == "float8_e4m3":
        amax = x.abs().amax(dim=1)
        scale = torch.where(amax > 0, amax / _FP8_MAX, torch.ones_like(amax))
        q = (x / scale[:, None]).clamp(-_FP8_MAX, _FP8_MAX).to(torch.float8_e4m3fn)
        stored = q.view(torch.uint8).numpy()
        scales = scale.numpy().astype("<f4")
    else:
        raise ValueError(f"unknown storage dtype {dtype!r}")
    norms = np.linalg.norm(decode(stored, scales, dtype), axis=1).astype("<f4")
    return np.ascontiguousarray(stored), scales, norms


def decode(stored: np.ndarray, scales: np.ndarray | None, dtype: str) -> np.ndarray:
    """Stored rows -> float32 ``[n, d]`` (a new array)."""
    if dtype == "float8_e4m3":
        u8 = torch.from_numpy(np.array(stored, dtype=np.uint8))
        out = u8.view(torch.float8_e4m3fn).to(torch.float32).numpy()
        return out * np.asarray(scales, dtype=np.float32)[:, None]
    return np.array(stored, dtype=np.float32)
