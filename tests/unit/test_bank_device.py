"""Exact search on a device, run on the CPU: the torch code path every device runs (kept or
streamed hook), ties ordered by the lower row, one cache per physical device, float16 kept in
float16, and the device residency decision with faked free device memory.

The tie tests use rows and queries whose products are exact in float32 whatever the order of
summation (entries 0 and +-1/2 against small integers), so every tie is a true tie on every
device and the expected rows follow from the arithmetic alone.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np
import pytest
import torch
from bank_fixtures import hook_from_rows

from tiny_models import WORDS
from tl_latentlens.bank import Bank, build_bank
from tl_latentlens.bank import bank as bank_module
from tl_latentlens.bank.format.vectors import HookVectors
from tl_latentlens.bank.search import dispatch as search
from tl_latentlens.bank.search import exact
from tl_latentlens.bank.search.calibrate import unit_rows
from tl_latentlens.bank.search.dispatch import HookSearcher
from tl_latentlens.bank.search.exact import exact_top_k, stream_rows, top_k_sorted

CODECS = ["float16", "float32", "int8", "int8_rotated", "int8_pca"]


def _tied_hook(n: int = 5000, d: int = 16, codec: str = "float16", seed: int = 0):
    """A hook of few distinct patterns repeated many times (no dedup: the rows are given
    as they are), every row four entries of +-1 (norm 2, unit entries +-1/2, exact)."""
    rng = np.random.default_rng(seed)
    patterns = np.zeros((40, d), np.float32)
    for p in patterns:
        p[rng.choice(d, 4, replace=False)] = rng.choice([-1.0, 1.0], 4)
    x = patterns[rng.integers(0, len(patterns), n)]
    norms = np.linalg.norm(x, axis=1).astype(np.float32)
    assert (norms == 2.0).all()
    hv = HookVectors(x.astype(codec), norms, codec)
    queries = rng.integers(-2, 3, (30, d)).astype(np.float32)
    return hv, x * 0.5, queries


def _expected(unit: np.ndarray, q: np.ndarray, k: int):
    full = q @ unit.T  # exact: small integers times +-1/2
    rows = np.arange(unit.shape[0])[None, :].repeat(q.shape[0], 0)
    order = np.lexsort((rows, -full), axis=-1)[:, :k]
    return np.take_along_axis(full, order, 1), order


def _streamed(hv, q, k, chunk_rows):
    """The streaming torch path on the CPU (what a device runs for a hook it does not keep)."""
    return exact._torch_top_k(
        hv, hv.to_search(q), min(k, hv.n), torch.device("cpu"), chunk_rows, None
    )


@pytest.mark.parametrize("codec", ["float16", "float32"])
def test_ties_at_the_kth_place_take_the_lowest_rows_on_every_path(codec):
    hv, unit, q = _tied_hook(codec=codec)
    for k in (1, 10, 40):
        want_s, want_r = _expected(unit, q, k)
        # the k-th place ties with rows left out (the premise of the test)
        assert ((unit @ q.T).T == want_s[:, -1:]).sum(1).min() > 1
        runs = {
            "numpy streamed": exact_top_k(hv, q, k, chunk_rows=700),
            "torch kept": exact_top_k(hv, q, k, device="cpu", device_cache={}),
            "torch streamed": _streamed(hv, q, k, 700),
            "torch streamed, one chunk": _streamed(hv, q, k, 10_000),
        }
        hv.resident()
        runs["numpy resident"] = exact_top_k(hv, q, k)
        hv.drop_resident()
        for name, (s, r) in runs.items():
            np.testing.assert_array_equal(r, want_r, err_msg=name)
            np.testing.assert_array_equal(s, want_s, err_msg=name)


def test_ties_do_not_depend_on_the_order_topk_returns_them(monkeypatch):
    """``torch.topk`` on CUDA returns equal values in no set order: the search must not rely
    on it. A topk that prefers the *highest* index among ties changes nothing."""
    real = torch.topk
    TopK = namedtuple("TopK", "values indices")

    def highest_first(x, k, dim=-1, largest=True, sorted=True):
        v, i = real(torch.flip(x, [dim]), k, dim=dim, largest=largest, sorted=sorted)
        return TopK(v, x.shape[dim] - 1 - i)

    hv, unit, q = _tied_hook()
    want_s, want_r = _expected(unit, q, 10)
    monkeypatch.setattr(torch, "topk", highest_first)
    for s, r in (exact_top_k(hv, q, 10, device="cpu", device_cache={}), _streamed(hv, q, 10, 700)):
        np.testing.assert_array_equal(r, want_r)
        np.testing.assert_array_equal(s, want_s)


def test_signed_zeros_tie_by_row():
    sims = torch.tensor([[0.0, -0.0, 1.0, -0.0, 0.0]])
    rows = torch.tensor([[4, 0, 9, 3, 1]])
    s, r = top_k_sorted(sims, rows, 5)
    assert r.tolist() == [[9, 0, 1, 3, 4]]
    assert not torch.signbit(s).any()


@pytest.fixture(scope="module")
def residuals():
    rng = np.random.default_rng(5)
    offset = rng.standard_normal(32).astype(np.float32) * 3
    x = (offset + rng.standard_normal((2600, 32))).astype(np.float32)
    q = unit_rows(
        np.concatenate([x[:10] + rng.standard_normal((10, 32)), rng.standard_normal((20, 32))])
    )
    return x, q


@pytest.mark.parametrize("codec", CODECS)
def test_streamed_and_kept_device_paths_equal_the_cpu_path(tmp_path, residuals, codec):
    x, q = residuals
    hv = hook_from_rows(tmp_path / "h", x, codec)
    want_s, want_r = exact_top_k(hv, q, 10)
    cache: dict = {}
    kept = exact_top_k(hv, q, 10, device="cpu", device_cache=cache)
    assert not hv.is_resident  # the device copy is made without a decoded copy in RAM
    assert "rows" in cache
    for chunk in (300, 700, 5000):  # several chunks (odd and even counts, a ragged last) and one
        for s, r in (_streamed(hv, q, 10, chunk), kept):
            np.testing.assert_array_equal(r, want_r)
            np.testing.assert_allclose(s, want_s, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("codec", CODECS)
def test_streamed_rows_are_the_resident_rows_bit_for_bit(tmp_path, residuals, codec):
    x, _ = residuals
    hv = hook_from_rows(tmp_path / "h", x, codec)
    resident = hv.resident().copy()
    hv.drop_resident()
    inv = torch.from_numpy(hv.inv_norms)
    seen = 0
    for start, block in stream_rows(hv, "cpu", 700):
        assert block.dtype == hv.device_dtype and start == seen
        rows = block.float() * inv[start : start + len(block), None] if hv.device_scaled else block
        np.testing.assert_array_equal(rows.numpy(), resident[start : start + len(block)])
        seen += len(block)
    assert seen == hv.n


def test_float16_stays_float16_on_the_device(tmp_path, residuals):
    x, q = residuals
    hv = hook_from_rows(tmp_path / "h", x, "float16")
    cache: dict = {}
    exact_top_k(hv, q, 5, device="cpu", device_cache=cache)
    assert cache["rows"].dtype == torch.float16 and cache["rows"].shape == (hv.n, hv.d)
    assert cache["scale"].dtype == torch.float32
    assert sum(t.nbytes for t in cache.values()) == hv.nbytes_device() == hv.n * (hv.d * 2 + 4)
    hv32 = hook_from_rows(tmp_path / "h32", x, "float32")
    cache32: dict = {}
    exact_top_k(hv32, q, 5, device="cpu", device_cache=cache32)
    assert set(cache32) == {"rows"} and cache32["rows"].dtype == torch.float32
    assert hv32.nbytes_device() == hv32.nbytes_decoded()


def test_out_of_memory_on_the_device_streams_instead(tmp_path, residuals, monkeypatch):
    x, q = residuals
    hv = hook_from_rows(tmp_path / "h", x, "float16")
    want = exact_top_k(hv, q, 10)
    real_empty = torch.empty
    refused = []

    def refuse_whole_hook(*shape, **kw):
        if not refused and shape and shape[0] == (hv.n, hv.width):
            refused.append(shape)  # the kept copy; the streaming buffers after it may be made
            raise torch.OutOfMemoryError("no room")
        return real_empty(*shape, **kw)

    monkeypatch.setattr(exact.torch, "empty", refuse_whole_hook)
    cache: dict = {}
    s, r = exact_top_k(hv, q, 10, device="cpu", device_cache=cache)
    assert refused and cache == {}
    np.testing.assert_array_equal(r, want[1])


def _fake_gpu(monkeypatch, free: int | None) -> dict:
    """Make "cuda" and "cuda:0" one faked device that runs on the CPU, with ``free`` bytes
    free (a dict: change ``["free"]`` to change it)."""
    state = {"free": free}

    def key(device):
        name = str(device)
        assert name in ("cuda", "cuda:0"), name
        return "cpu"

    monkeypatch.setattr(search, "device_key", key)
    monkeypatch.setattr(bank_module, "device_key", key)
    monkeypatch.setattr(bank_module, "free_device_bytes", lambda device: state["free"])
    return state


def test_cuda_and_cuda0_share_one_cache(tmp_path, residuals, monkeypatch):
    x, q = residuals
    _fake_gpu(monkeypatch, None)
    hv = hook_from_rows(tmp_path / "h", x, "float16")
    want_s, want_r = exact_top_k(hv, q, 10)
    searcher = HookSearcher(hv)
    first = searcher.search(q, 10, "exact", device="cuda", device_resident=True)
    rows = searcher._device_cache["cpu"]["rows"]
    second = searcher.search(q, 10, "exact", device="cuda:0", device_resident=True)
    assert list(searcher._device_cache) == ["cpu"]
    assert searcher._device_cache["cpu"]["rows"] is rows  # uploaded once
    assert searcher.device_nbytes("cpu") == hv.nbytes_device()
    assert not hv.is_resident
    for hits in (first, second):
        np.testing.assert_array_equal(hits.rows, want_r)
        np.testing.assert_allclose(hits.sims, want_s, rtol=1e-6, atol=1e-6)
    searcher.release()
    assert searcher.device_nbytes("cpu") == 0


HOOKS = ["blocks.0.hook_resid_post", "blocks.2.hook_resid_post"]


@pytest.fixture(scope="module")
def bank_dir(tiny_vlm, tmp_path_factory):
    rng = np.random.default_rng(0)
    sents = [" ".join(rng.choice(WORDS, rng.integers(3, 10))) for _ in range(40)]
    path = tmp_path_factory.mktemp("bank") / "bank"
    build_bank(tiny_vlm, sents, path, HOOKS, max_per_token=None, progress=False)
    return path


def _queries(bank: Bank, n: int = 12) -> np.ndarray:
    return unit_rows(np.random.default_rng(1).standard_normal((n, bank.d_model)))


def _kept(bank: Bank) -> list[str]:
    return [h for h in bank.hooks if bank.searcher(h).device_nbytes("cpu")]


def test_device_residency_follows_a_share_of_free_device_memory(bank_dir, monkeypatch):
    bank = Bank.open(bank_dir)
    need = [bank.hook_vectors(h).nbytes_device() for h in HOOKS]
    monkeypatch.setattr(bank_module, "DEVICE_RESERVE_BYTES", 0)
    # half of the free memory holds the first hook, not both; the RAM budget plays no part
    state = _fake_gpu(monkeypatch, 2 * need[0] + need[1])
    bank.resident_bytes = 0
    q = _queries(bank)
    want = bank.search(q, HOOKS, 5, method="exact").neighbours
    got = bank.search(q, HOOKS, 5, method="exact", device="cuda").neighbours
    assert _kept(bank) == [HOOKS[0]]
    assert not any(bank.hook_vectors(h).is_resident for h in HOOKS)  # no RAM copy for it
    assert [[(n.hook, n.sentence_id, n.position) for n in per] for per in got] == [
        [(n.hook, n.sentence_id, n.position) for n in per] for per in want
    ]
    # the budget was taken at first use: more free memory later does not raise it
    state["free"] = 100 * sum(need)
    bank.search(q, HOOKS, 5, method="exact", device="cuda:0")
    assert _kept(bank) == [HOOKS[0]]
    bank.close()
    assert _kept(bank) == []


def test_device_residency_needs_the_hook_free_on_the_device(bank_dir, monkeypatch):
    bank = Bank.open(bank_dir)
    need = bank.hook_vectors(HOOKS[0]).nbytes_device()
    monkeypatch.setattr(bank_module, "DEVICE_RESERVE_BYTES", 10)
    state = _fake_gpu(monkeypatch, need + 9)
    bank.device_resident_bytes = 100 * need  # an explicit budget is still bounded by free memory
    assert not bank._fits_resident(HOOKS[0], "cuda")
    state["free"] = need + 10
    assert bank._fits_resident(HOOKS[0], "cuda")
    bank.device_resident_bytes = need - 1  # and by itself
    assert not bank._fits_resident(HOOKS[0], "cuda")
    # the CPU keeps following the RAM budget
    bank.resident_bytes = 0
    assert not bank._fits_resident(HOOKS[0], "cpu") and not bank._fits_resident(HOOKS[0])


def test_a_device_without_free_memory_figures_follows_the_budget(bank_dir, monkeypatch):
    bank = Bank.open(bank_dir)
    need = bank.hook_vectors(HOOKS[0]).nbytes_device()
    _fake_gpu(monkeypatch, None)
    bank.resident_bytes = need  # the default device budget where free memory is unknown
    assert bank._fits_resident(HOOKS[0], "cuda")
    bank.resident_bytes = need - 1
    bank._device_budgets.clear()
    assert not bank._fits_resident(HOOKS[0], "cuda")
    bank.device_resident_bytes = need
    assert bank._fits_resident(HOOKS[0], "cuda")
