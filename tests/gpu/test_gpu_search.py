"""GPU tier: exact search on CUDA gives the CPU's neighbours, ties included.

Every bank codec, the hook kept on the device and streamed to it, 49 and 490 queries, through
:func:`exact_top_k` and through :class:`Bank`. Two kinds of data:

* rows and queries whose products are exact in float32 whatever the order of summation
  (entries 0 and +-1/2 against small integers, many repeated rows): every tie is a true tie on
  both devices, and the rows must be identical, the similarities equal;
* random residual-like rows: the rows must be identical wherever the CPU's similarities are not
  within float32 rounding of one another (there, the two devices' rounding decides), and the
  similarities equal to 1e-5.

Runs only where CUDA exists (``pytest -m gpu``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from bank_fixtures import hook_from_rows

from tiny_models import WORDS
from tl_latentlens.bank import Bank, build_bank
from tl_latentlens.bank.format.vectors import HookVectors
from tl_latentlens.bank.search import exact
from tl_latentlens.bank.search.calibrate import unit_rows
from tl_latentlens.bank.search.exact import exact_top_k

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CODECS = ["float16", "float32", "int8", "int8_rotated", "int8_pca"]
ATOL = 1e-5


def _tied_hook(n: int, d: int = 64, codec: str = "float16", seed: int = 0):
    """Distinct rows each repeated ~30 times (given as they are, no dedup), each four entries
    of +-1 (norm 2: unit entries +-1/2, exact), and integer queries (sums of four products:
    exact; varied enough that few distinct rows share a query's best scores)."""
    rng = np.random.default_rng(seed)
    patterns = np.zeros((max(1, n // 30), d), np.float32)
    for p in patterns:
        p[rng.choice(d, 4, replace=False)] = rng.choice([-1.0, 1.0], 4)
    x = patterns[rng.integers(0, len(patterns), n)]
    hv = HookVectors(x.astype(codec), np.full(n, 2.0, np.float32), codec)
    return hv, rng.integers(-50, 51, (490, d)).astype(np.float32)


def _on_cuda(hv, q, k, kept: bool, chunk_rows: int = 7000):
    cache: dict | None = {} if kept else None
    out = exact_top_k(hv, q, k, device="cuda", device_cache=cache, chunk_rows=chunk_rows)
    if kept:
        assert cache and cache["rows"].is_cuda and cache["rows"].dtype == hv.device_dtype
    return out


def _assert_same_answer(cpu, gpu, k: int) -> None:
    """``cpu`` holds ``k + 1`` places (to see a tie at the k-th place), ``gpu`` ``k``."""
    (cs, cr), (gs, gr) = cpu, gpu
    np.testing.assert_allclose(gs, cs[:, :k], rtol=0, atol=ATOL)
    gaps = np.abs(np.diff(cs, axis=1)) <= 2 * ATOL  # [m, k]: place j near place j + 1
    near = np.zeros((cs.shape[0], k), bool)
    near[:, :] |= gaps[:, :k]
    near[:, 1:] |= gaps[:, : k - 1]
    differ = cr[:, :k] != gr
    assert not (differ & ~near).any(), (
        f"rows differ away from near ties: {np.argwhere(differ & ~near)[:5]}"
    )


@pytest.mark.parametrize("codec", ["float16", "float32"])
@pytest.mark.parametrize("kept", [True, False], ids=["kept", "streamed"])
def test_true_ties_give_the_cpu_rows_exactly(codec, kept):
    # more rows than one device view and several streamed chunks
    hv, q = _tied_hook(exact.DEVICE_BLOCK + 4321, codec=codec)
    for m in (49, 490):
        for k in (1, 10, 100):
            want_s, want_r = exact_top_k(hv, q[:m], k)
            # the k-th place ties with rows left out (the premise of the test)
            assert (want_s[:, -1] == exact_top_k(hv, q[:m], k + 1)[0][:, -1]).mean() > 0.5
            s, r = _on_cuda(hv, q[:m], k, kept, chunk_rows=30_000)
            np.testing.assert_array_equal(r, want_r)
            np.testing.assert_array_equal(s, want_s)


@pytest.fixture(scope="module")
def residual_rows():
    rng = np.random.default_rng(3)
    n, d = 60_000, 64
    centres = rng.standard_normal((50, d)).astype(np.float32) * 2
    offset = rng.standard_normal(d).astype(np.float32) * 3
    x = (offset + centres[rng.integers(0, 50, n)] + rng.standard_normal((n, d))).astype(np.float32)
    q = unit_rows(
        np.concatenate(
            [x[:245] + rng.standard_normal((245, d)), rng.standard_normal((245, d)) * 3 + offset]
        )
    )
    return x, q


@pytest.mark.parametrize("codec", CODECS)
def test_every_codec_kept_and_streamed_equals_the_cpu(tmp_path, residual_rows, codec):
    x, q = residual_rows
    hv = hook_from_rows(tmp_path / "h", x, codec)
    for m in (49, 490):
        cpu = exact_top_k(hv, q[:m], 11)
        for kept in (True, False):
            _assert_same_answer(cpu, _on_cuda(hv, q[:m], 10, kept), 10)
    assert not hv.is_resident  # neither path made a decoded copy in RAM


def test_tf32_set_elsewhere_does_not_change_the_answer(tmp_path, residual_rows):
    x, q = residual_rows
    hv = hook_from_rows(tmp_path / "h", x, "float16")
    cpu = exact_top_k(hv, q, 11)
    matmul = torch.backends.cuda.matmul
    before = matmul.fp32_precision
    matmul.fp32_precision = "tf32"
    try:
        _assert_same_answer(cpu, _on_cuda(hv, q, 10, kept=True), 10)
        assert matmul.fp32_precision == "tf32"
    finally:
        matmul.fp32_precision = before


def test_streaming_stages_in_pinned_memory():
    lane = exact._CopyLane(torch.device("cuda"))
    assert lane.host_buffer((4, 8), torch.float16).is_pinned()


HOOKS = ["blocks.0.hook_resid_post", "blocks.2.hook_resid_post"]


@pytest.fixture(scope="module")
def bank_dir(tiny_vlm, tmp_path_factory):
    rng = np.random.default_rng(0)
    sents = [" ".join(rng.choice(WORDS, rng.integers(3, 10))) for _ in range(60)]
    path = tmp_path_factory.mktemp("bank") / "bank"
    build_bank(tiny_vlm, sents, path, HOOKS, max_per_token=None, progress=False)
    return path


def _places(neighbours):
    return [[(n.hook, n.sentence_id, n.position) for n in per] for per in neighbours]


def test_bank_search_on_cuda_equals_the_cpu(bank_dir):
    bank = Bank.open(bank_dir)
    q = unit_rows(np.random.default_rng(1).standard_normal((49, bank.d_model)))
    want = bank.search(q, HOOKS, 8, method="exact")
    bank.close()
    bank.resident_bytes = 0  # no RAM copies on either side
    got = bank.search(q, HOOKS, 8, method="exact", device="cuda")
    again = bank.search(q, HOOKS, 8, method="exact", device="cuda:0")
    for h in HOOKS:
        searcher = bank.searcher(h)
        assert list(searcher._device_cache) == [f"cuda:{torch.cuda.current_device()}"]
        kept = next(iter(searcher._device_cache.values()))
        assert kept["rows"].dtype == torch.float16  # the bank's float16, not widened
        assert not bank.hook_vectors(h).is_resident
    bank.close()
    bank.device_resident_bytes = 0  # every hook streamed
    streamed = bank.search(q, HOOKS, 8, method="exact", device="cuda")
    assert not any(bank.searcher(h)._device_cache.get("cuda:0") for h in HOOKS)
    for answer in (got, again, streamed):
        assert _places(answer) == _places(want)
        sims = np.array([[n.similarity for n in per] for per in answer])
        np.testing.assert_allclose(sims, [[n.similarity for n in per] for per in want], atol=ATOL)
