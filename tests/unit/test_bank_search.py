"""hnswlib index vs exact chunked search on a few thousand random vectors."""

from __future__ import annotations

import numpy as np
import pytest

from tl_latentlens.bank import codec
from tl_latentlens.bank import index as ix


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    n, d = 4000, 32
    x = rng.standard_normal((n, d)).astype(np.float32)
    q = rng.standard_normal((200, d)).astype(np.float32)
    return x, q / np.linalg.norm(q, axis=1, keepdims=True)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float8_e4m3"])
def test_exact_search_is_exact(data, dtype, monkeypatch):
    monkeypatch.setattr(ix, "CHUNK_ROWS", 700)  # several chunks, one ragged
    x, q = data
    stored, scales, norms = codec.encode(__import__("torch").from_numpy(x), dtype)
    sims, rows = ix.exact_search(stored, scales, norms, dtype, q, k=10)
    v = codec.decode(stored, scales, dtype)
    full = q @ (v / np.linalg.norm(v, axis=1, keepdims=True)).T
    want = np.argsort(-full, axis=1)[:, :10]
    np.testing.assert_array_equal(rows, want)
    np.testing.assert_allclose(sims, np.take_along_axis(full, want, 1), rtol=1e-5, atol=1e-5)


def test_hnsw_recall_at_10(data, tmp_path):
    x, q = data
    stored, scales, norms = codec.encode(__import__("torch").from_numpy(x), "float16")
    path = tmp_path / "index.hnsw"
    ix.build_hnsw(  # one thread: a deterministic graph
        stored, None, "float16", path, M=16, ef_construction=200, seed=42, threads=1, progress=False
    )
    index = ix.load_hnsw(path, x.shape[1], x.shape[0], threads=2)
    _, approx = ix.hnsw_search(index, q, k=10, ef_search=64, threads=2)
    _, exact = ix.exact_search(stored, None, norms, "float16", q, k=10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
    assert recall >= 0.95, recall
    # and the similarities hnswlib reports are the cosine similarities
    sims, labels = ix.hnsw_search(index, q[:5], k=3, ef_search=64, threads=1)
    v = codec.decode(stored[labels.ravel()], None, "float16")
    cos = (np.repeat(q[:5], 3, axis=0) * v).sum(1) / np.linalg.norm(v, axis=1)
    np.testing.assert_allclose(sims.ravel(), cos, rtol=1e-4, atol=1e-5)


def test_float16_overflow_is_refused():
    import torch

    from tl_latentlens.bank import BankError

    with pytest.raises(BankError, match="float32"):
        codec.encode(torch.tensor([[1e5, 0.0]]), "float16")
    stored, scales, norms = codec.encode(torch.tensor([[1e5, 0.0]]), "float8_e4m3")
    assert np.isclose(codec.decode(stored, scales, "float8_e4m3")[0, 0], 1e5, rtol=0.07)
