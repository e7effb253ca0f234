"""The ``gpu`` test tier: the CPU and CUDA paths give the same answers where CUDA exists.

Every test under ``tests/gpu`` is marked ``gpu`` and skipped without a CUDA device, so the
tier costs nothing on a CPU machine (``pytest -m gpu tests/gpu`` runs it; ``scripts/gpu_check.sh``
runs it on a lent GPU machine). Measured figures (errors, similarities, tie counts) go to the
JSON-lines file named by ``$TL_GPU_RECORD`` through the ``gpu_record`` fixture, so a failing
bound still reports the number it failed on.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from gpu_helpers import DEVICE, MISSING

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    """Mark everything in this folder ``gpu`` and skip it without CUDA (one rule for every
    module here, whatever its own ``pytestmark`` says)."""
    skip = pytest.mark.skip(reason=f"gpu tier: needs a CUDA device (TL_GPU_TIER_DEVICE={DEVICE})")
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.gpu)
            if MISSING:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def gpu_record():
    """``record(test, **figures)``: append one JSON line to ``$TL_GPU_RECORD`` (if set)."""
    path = os.environ.get("TL_GPU_RECORD")

    def record(test: str, **figures) -> None:
        line = json.dumps({"test": test, **figures}, default=float)
        print(line)
        if path:
            with open(path, "a") as f:
                f.write(line + "\n")

    return record


def _default_or_skip(device: str, dtype: torch.dtype = torch.float32):
    from tl_latentlens.models.load import load_vlm
    from tl_latentlens.packaged_data import MissingDataError

    try:
        return load_vlm("default", device=device, dtype=dtype)
    except MissingDataError as err:  # the GGUF/weights did not travel (gpu_check.sh's part A)
        pytest.skip(f"the default VLM's packaged files are missing: {err}")


@pytest.fixture(scope="session")
def default_cpu():
    return _default_or_skip("cpu")


@pytest.fixture(scope="session")
def default_cuda():
    return _default_or_skip(DEVICE)


@pytest.fixture(scope="session")
def default_cuda_bf16():
    return _default_or_skip(DEVICE, torch.bfloat16)
