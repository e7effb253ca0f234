"""Bank test fixtures shared by the unit tests: hook folders written from plain arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tl_latentlens.bank.build.finalize import finalize_hook
from tl_latentlens.bank.format import codec
from tl_latentlens.bank.format.vectors import HookVectors


def hook_from_rows(folder: Path, x: np.ndarray, dtype: str) -> HookVectors:
    """Write raw float16/float32 rows as the encoding pass does, finalize them with the codec
    ``dtype`` and open the hook folder."""
    folder.mkdir(parents=True, exist_ok=True)
    raw, _, _ = codec.encode(torch.from_numpy(x), codec.raw_codec(dtype))
    np.save(folder / "vectors.npy", raw)
    finalize_hook(folder, dtype)
    return HookVectors.from_folder(folder, dtype)
