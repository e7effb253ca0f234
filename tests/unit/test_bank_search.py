"""Search engine: exact search (chunks, resident, device path), codecs, dedup, routes + re-rank.

Routes are tested on a few thousand vectors with in-distribution queries *and* a shifted
(out-of-distribution) query distribution, the case graph indexes over text vectors fail.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from bank_fixtures import hook_from_rows as _hook

from tl_latentlens.bank.build.dedup import group_identical, occurrence_table
from tl_latentlens.bank.format import codec
from tl_latentlens.bank.format.vectors import HookVectors
from tl_latentlens.bank.search.calibrate import calibrate_hook, unit_rows
from tl_latentlens.bank.search.dispatch import HookSearcher, routes_pay
from tl_latentlens.bank.search.exact import exact_rows, exact_top_k
from tl_latentlens.bank.search.recall import tie_aware_recall
from tl_latentlens.bank.search.routes import RouteParams, Routes


def _brute(hv: HookVectors, q: np.ndarray, k: int):
    v = hv.decode(np.arange(hv.n), unit=True)
    full = q @ v.T
    order = np.lexsort((np.arange(hv.n)[None, :].repeat(len(q), 0), -full), axis=1)[:, :k]
    return np.take_along_axis(full, order, 1), order


@pytest.fixture(scope="module")
def clusters():
    """Clustered 'text' vectors with a shared offset (as residual streams have) and queries:
    in-distribution (near stored vectors) and shifted (another offset: out of distribution)."""
    rng = np.random.default_rng(0)
    n, d = 4000, 48
    centres = rng.standard_normal((40, d)).astype(np.float32) * 2
    offset = rng.standard_normal(d).astype(np.float32) * 3
    lab = rng.integers(0, 40, n)
    x = (offset + centres[lab] + rng.standard_normal((n, d))).astype(np.float32)
    shift = rng.standard_normal(d).astype(np.float32) * 4

    def visual(m, seed):
        r = np.random.default_rng(seed)
        return (shift + centres[r.integers(0, 40, m)] + r.standard_normal((m, d)) * 0.7).astype(
            np.float32
        )

    return x, visual


@pytest.mark.parametrize("dtype", ["float16", "float32", "int8"])
def test_exact_search_equals_brute_force(tmp_path, dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3000, 32)).astype(np.float32)
    hv = _hook(tmp_path / "h", x, dtype)
    q = unit_rows(rng.standard_normal((50, 32)))
    want_s, want_r = _brute(hv, q, 10)
    for chunk in (700, 5000):  # several chunks (one ragged) and one
        sims, rows = exact_top_k(hv, q, 10, chunk_rows=chunk)
        np.testing.assert_array_equal(rows, want_r)
        np.testing.assert_allclose(sims, want_s, rtol=1e-5, atol=1e-6)
    hv.resident()
    sims, rows = exact_top_k(hv, q, 10)
    np.testing.assert_array_equal(rows, want_r)


def test_device_path_equals_cpu_path(tmp_path):
    """The device code path (torch, explicit device + a device cache) returns the CPU path's
    (numpy) neighbours; on a machine with CUDA the same test runs on the GPU."""
    rng = np.random.default_rng(2)
    hv = _hook(tmp_path / "h", rng.standard_normal((2500, 32)).astype(np.float32), "float16")
    q = unit_rows(rng.standard_normal((40, 32)))
    cpu_s, cpu_r = exact_top_k(hv, q, 10)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        cache: dict = {}
        s, r = exact_top_k(hv, q, 10, device=dev, device_cache=cache)
        np.testing.assert_array_equal(r, cpu_r)
        np.testing.assert_allclose(s, cpu_s, rtol=1e-5, atol=1e-5)
    searcher = HookSearcher(hv)
    assert searcher.choose("auto", "cuda") == "exact"


def test_int8_codec_roundtrip_and_recall(tmp_path, clusters):
    x, _ = clusters
    hv = _hook(tmp_path / "i8", x, "int8")
    assert hv.stored.dtype == np.int8
    dec = hv.decode(np.arange(hv.n), unit=False)
    raw = x.astype(np.float16).astype(np.float32)  # int8 is fitted on the float16 raw rows
    err = np.abs(dec - raw).max(axis=0)
    assert (err <= hv.params[1] * 0.5001 + 1e-6).all()  # at most half a quantisation step
    ref = _hook(tmp_path / "f32", x, "float32")
    q = unit_rows(x[:300] + np.random.default_rng(3).standard_normal((300, x.shape[1])))
    truth, _ = exact_top_k(ref, q, 10)
    _, rows = exact_top_k(hv, q, 10)
    approx = np.take_along_axis(q @ ref.decode(np.arange(ref.n)).T, rows, 1)
    assert tie_aware_recall(approx, truth) >= 0.97


def test_half_decode_is_exact():
    h = np.array([[0.0, -0.0, 1e-7, -3e-6, 6.1e-5, 65504.0, -1.5]], dtype=np.float16)
    np.testing.assert_array_equal(codec.decode(h, "float16"), h.astype(np.float32))


def test_identical_rows_are_grouped():
    rows = np.array([[1, 2], [3, 4], [1, 2], [5, 6], [3, 4], [1, 2]], np.float16)
    first, vec = group_identical(rows)
    np.testing.assert_array_equal(first, [0, 1, 3])
    np.testing.assert_array_equal(vec, [0, 1, 0, 2, 1, 0])
    off, ent = occurrence_table(vec, 3)
    np.testing.assert_array_equal(off, [0, 3, 5, 6])
    np.testing.assert_array_equal(ent, [0, 2, 5, 1, 4, 3])
    # -0.0 and 0.0 differ in bytes and stay apart (they are stored as given)
    first, _ = group_identical(np.array([[0.0], [-0.0]], np.float16))
    assert first.tolist() == [0, 1]


def test_hash_collisions_never_merge_rows(monkeypatch):
    from tl_latentlens.bank.build import dedup

    monkeypatch.setattr(dedup, "_row_hashes", lambda block, mult: np.zeros(len(block), np.uint64))
    rows = np.array([[1, 2], [3, 4], [1, 2], [3, 4], [7, 8]], np.float32)
    first, vec = dedup.group_identical(rows)
    np.testing.assert_array_equal(first, [0, 1, 4])
    np.testing.assert_array_equal(vec, [0, 1, 0, 1, 2])


def test_finalize_stores_distinct_vectors_with_occurrences(tmp_path):
    rng = np.random.default_rng(4)
    base = rng.standard_normal((5, 16)).astype(np.float32)
    x = base[[0, 1, 0, 2, 3, 1, 4, 0]]
    hv = _hook(tmp_path / "h", x, "float16")
    assert hv.n == 5
    assert hv.occurrences(0).tolist() == [0, 2, 7]
    assert hv.occurrences(1).tolist() == [1, 5]
    np.testing.assert_allclose(hv.decode(np.arange(5), unit=False), base, atol=1e-2)


def test_exact_rerank_of_candidates(tmp_path):
    rng = np.random.default_rng(5)
    hv = _hook(tmp_path / "h", rng.standard_normal((1000, 16)).astype(np.float32), "float32")
    q = unit_rows(rng.standard_normal((3, 16)))
    cands = np.full((3, 1000), -1)
    cands[0] = np.arange(1000)
    cands[1, :4] = [5, 7, 9, 7]  # a repeat: lists of two samples can share rows
    cands[2, 0] = 4
    sims, rows = exact_rows(hv, q, cands, 5)
    want_s, want_r = exact_top_k(hv, q[:1], 5)
    np.testing.assert_array_equal(rows[0], want_r[0])
    assert set(rows[1][:3]) == {5, 7, 9} and rows[1][3] == -1 and np.isinf(sims[1][3])
    assert rows[2].tolist() == [4, -1, -1, -1, -1]
    full = q[1] @ hv.decode(np.array([5, 7, 9])).T
    np.testing.assert_allclose(sims[1][:3], np.sort(full)[::-1], rtol=1e-6)


def test_routes_equal_exact_search_on_a_small_bank(tmp_path, clusters):
    """With lists as long as the bank, routed search *is* exact search."""
    x, visual = clusters
    small = x[:600]
    hv = _hook(tmp_path / "h", small, "float16")
    cal = calibrate_hook(
        tmp_path / "h", "float16", visual(300, 1), {"visual": visual(100, 2)},
        text_samples=100, list_len=600, probes=(2,), progress=False,
    )  # fmt: skip
    routes = Routes(tmp_path / "h", hv.d)
    q = unit_rows(np.concatenate([visual(50, 3), small[:50]]))
    hits = HookSearcher(hv, routes, cal.params).search(q, 10, "routes")
    want_s, want_r = exact_top_k(hv, q, 10)
    np.testing.assert_array_equal(hits.rows, want_r)
    # auto (routes proven) scans instead: every list holds the whole bank, so routes cannot pay
    auto = HookSearcher(hv, routes, cal.params, {"visual": 1.0}).search(q, 10)
    assert auto.method == "exact" and auto.n_exact_fallback == 0
    np.testing.assert_array_equal(auto.rows, want_r)


def test_routes_pay_compares_candidates_with_a_scan():
    assert routes_pay(10_000, 49, 500_000)
    assert not routes_pay(60_000, 49, 70_000)
    assert not routes_pay(5_000, 1, 70_000)  # one query: gathering rows costs more than a scan
    assert routes_pay(2_000, 1, 70_000)


def test_routes_recall_on_shifted_and_in_distribution_queries(tmp_path, clusters):
    x, visual = clusters
    hv = _hook(tmp_path / "h", x, "float16")
    cal = calibrate_hook(
        tmp_path / "h", "float16", visual(1500, 10), {"visual": visual(300, 11)},
        text_samples=1000, list_len=64, probes=(4, 8, 16), progress=False,
    )  # fmt: skip
    assert cal.proven, cal.to_dict()
    assert set(cal.recall) == {"visual", "text"}
    routes = Routes(tmp_path / "h", hv.d)
    searcher = HookSearcher(hv, routes, cal.params, cal.recall)
    for q in (unit_rows(visual(300, 12)), unit_rows(x[::20] + 0.05)):
        hits = searcher.search(q, 10, "routes")
        truth, _ = exact_top_k(hv, q, 10)
        assert tie_aware_recall(hits.sims, truth) >= 0.98
    assert searcher.choose("auto", None) == "routes"


def test_far_queries_fall_back_to_exact_search(tmp_path, clusters):
    x, visual = clusters
    hv = _hook(tmp_path / "h", x, "float16")
    calibrate_hook(
        tmp_path / "h", "float16", visual(500, 20), {"visual": visual(100, 21)},
        text_samples=200, list_len=32, probes=(4,), progress=False,
    )  # fmt: skip
    routes = Routes(tmp_path / "h", hv.d)
    params = RouteParams(probe=4, list_len=32, min_sample_similarity=0.999)
    q = unit_rows(np.random.default_rng(22).standard_normal((20, x.shape[1])))
    hits = HookSearcher(hv, routes, params).search(q, 10, "routes")
    assert hits.n_exact_fallback == 20
    _, want = exact_top_k(hv, q, 10)
    np.testing.assert_array_equal(hits.rows, want)


def test_tie_aware_recall_counts_ties():
    exact = np.array([[0.9, 0.8, 0.8]])
    assert tie_aware_recall(np.array([[0.9, 0.8, 0.8]]), exact) == 1.0
    assert tie_aware_recall(np.array([[0.9, 0.8, 0.7]]), exact) == pytest.approx(2 / 3)


def test_expected_cost_prefers_fewer_fallbacks_until_candidates_cost_more():
    from tl_latentlens.bank.search.calibrate import expected_cost

    n = 46_000
    # a bigger probe that sends far fewer image queries to exact search is cheaper
    assert expected_cost(8, 200, n, {"photos": 0.05, "text": 1.0}) < expected_cost(
        2, 200, n, {"photos": 0.3, "text": 1.0}
    )
    # with the same fallbacks, the smaller probe is cheaper; text-only sets still count
    assert expected_cost(2, 200, n, {"photos": 0.1}) < expected_cost(8, 200, n, {"photos": 0.1})
    assert expected_cost(2, 200, n, {"text": 1.0}) == n
    # a routed query never costs more than scanning the hook
    assert expected_cost(64, 2000, n, {"photos": 0.0}) == n


def test_candidate_union_equals_numpy_unique():
    from tl_latentlens.bank.search.exact import candidate_union

    rng = np.random.default_rng(0)
    cands = rng.integers(-1, 50, size=(7, 30))
    cands[0] = -1  # a query with no candidate at all
    assert np.array_equal(candidate_union(cands, 50), np.unique(cands[cands >= 0]))
    assert candidate_union(np.full((2, 3), -1), 50).size == 0


def test_calibration_stops_when_a_bigger_probe_gains_too_little(tmp_path, clusters, monkeypatch):
    """Probes are tried in ascending order while each one lowers the best expected cost by more
    than ``GAIN``; held-out sets bigger than ``max_queries`` are subsampled."""
    import tl_latentlens.bank.search.calibrate as cal_mod

    x, visual = clusters
    real = cal_mod.expected_cost
    costs = {2: 8000.0, 4: 7990.0, 8: 4000.0, 16: 2000.0, 32: 1000.0}  # > candidates alone
    monkeypatch.setattr(
        cal_mod,
        "expected_cost",
        lambda probe, list_len, n, fallback: (
            costs[probe] if fallback else real(probe, list_len, n, fallback)
        ),
    )
    probes = tuple(costs)

    def run(folder):
        _hook(tmp_path / folder, x, "float16")
        return calibrate_hook(
            tmp_path / folder, "float16", visual(300, 1), {"shifted": visual(900, 2)},
            list_len=16, probes=probes, max_queries=200, progress=False,
        )  # fmt: skip

    cal = run("flat")  # 4 lowered the best cost by 1 %: 8 and up are not tried
    assert cal.proven and sorted(cal.frontier) == [2, 4] and cal.params.probe == 4
    costs.update({4: 4000.0, 8: 2000.0, 16: 1000.0, 32: 900.0})  # each gains > 5 %: all tried
    truths = []
    real_truth = cal_mod._exact_sims
    monkeypatch.setattr(
        cal_mod, "_exact_sims", lambda hv, q, k: truths.append(len(q)) or real_truth(hv, q, k)
    )
    cal = run("steep")
    assert sorted(cal.frontier) == [2, 4, 8, 16, 32] and cal.params.probe == 32
    assert cal.n_samples == 300 and truths == [200, 500]  # 900 shifted -> 200; the text set


@pytest.mark.parametrize("n", [70, 1000, 1037, 4096])
@pytest.mark.parametrize("k", [1, 5, 10])
def test_block_top_k_equals_a_full_sort(n, k):
    """The grouped top-k returns the k largest of each row, the lower columns among equal
    values, with ties inside and between groups (a row of one value: every group ties at the
    k-th group maximum), and a ragged tail."""
    from tl_latentlens.bank.search.exact import block_top_k

    rng = np.random.default_rng(n + k)
    sims = torch.from_numpy(np.round(rng.standard_normal((40, n)), 1).astype(np.float32))
    sims[3] = 0.5  # a row of ties everywhere
    sims[4, -3:] = 9.0  # the largest values in the ragged tail
    v, i = block_top_k(sims, k)
    order = np.lexsort((np.arange(n)[None, :].repeat(40, 0), -sims.numpy()), axis=1)[:, :k]
    want = np.take_along_axis(sims.numpy(), order, 1)
    got_v, got_i = top_k_sorted_np(v.numpy(), i.numpy())
    np.testing.assert_array_equal(got_v, want)
    np.testing.assert_array_equal(got_i, order)  # equal values: the lower columns
    np.testing.assert_array_equal(np.take_along_axis(sims.numpy(), got_i, 1), got_v)


def top_k_sorted_np(v: np.ndarray, i: np.ndarray):
    """Sort (value desc, column asc) per row."""
    order = np.lexsort((i, -v), axis=1)
    return np.take_along_axis(v, order, 1), np.take_along_axis(i, order, 1)
