"""Pass 1 pieces of the bank: prefix hashes, the per-token reservoir, the batch plan."""

from __future__ import annotations

import numpy as np
import pytest

from tl_latentlens.bank.build.plan import make_plan
from tl_latentlens.bank.build.select import PrefixReservoir, Selection, prefix_hashes, splitmix64


def test_splitmix64_is_a_bijection_on_a_sample():
    x = np.arange(100_000, dtype=np.uint64)
    assert np.unique(splitmix64(x)).shape[0] == x.shape[0]


def test_prefix_hashes_equal_iff_prefixes_equal():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 5, size=(300, 6))
    h = prefix_hashes(ids)
    by_hash: dict[int, tuple] = {}
    for r in range(ids.shape[0]):
        for i in range(ids.shape[1]):
            prefix = tuple(ids[r, : i + 1])
            assert by_hash.setdefault(int(h[r, i]), prefix) == prefix
    n_distinct = len({tuple(ids[r, : i + 1]) for r in range(300) for i in range(6)})
    assert len(by_hash) == n_distinct


def _offer_all(res, items):
    """items: list of (sentence, position, token, hash)."""
    arr = np.array(items, dtype=np.uint64)
    res.offer(
        arr[:, 0].astype(np.int64),
        arr[:, 1].astype(np.int64),
        arr[:, 2].astype(np.int64),
        arr[:, 3],
    )


def test_reservoir_cap_dedup_and_order_independence():
    rng = np.random.default_rng(1)
    hashes = splitmix64(np.arange(500, dtype=np.uint64) + np.uint64(7))
    items = [(i, 1, i % 4, int(hashes[i])) for i in range(500)]  # 4 token types, 125 prefixes each
    a = PrefixReservoir(max_per_token=10, seed=3)
    _offer_all(a, items)
    s, p, t = a.result()
    assert np.bincount(t).tolist() == [10, 10, 10, 10]
    # repeats of already seen prefixes (later sentences) never change the sample
    b = PrefixReservoir(max_per_token=10, seed=3)
    dups = [(500 + k, 1, it[2], it[3]) for k, it in enumerate(items[:250])]
    _offer_all(b, items[:250])
    _offer_all(b, dups)
    _offer_all(b, items[250:])
    assert np.array_equal(b.result()[0], s)
    # same sample of prefixes in any order (sentence ids differ, so compare hashes)
    c = PrefixReservoir(max_per_token=10, seed=3)
    perm = rng.permutation(500)
    _offer_all(c, [(int(k), 1, items[k][2], items[k][3]) for k in perm])
    assert sorted(c.result()[0].tolist()) == sorted(s.tolist())
    # another seed, another sample
    d = PrefixReservoir(max_per_token=10, seed=4)
    _offer_all(d, items)
    assert not np.array_equal(d.result()[0], s)


def test_reservoir_is_uniform():
    hashes = splitmix64(np.arange(40, dtype=np.uint64))
    items = [(i, 0, 0, int(hashes[i])) for i in range(40)]
    counts = np.zeros(40)
    n_seeds = 1500
    for seed in range(n_seeds):
        r = PrefixReservoir(max_per_token=8, seed=seed)
        _offer_all(r, items)
        counts[r.result()[0]] += 1
    freq = counts / n_seeds  # each prefix should be chosen with probability 8/40
    assert np.abs(freq - 0.2).max() < 0.06


def test_reservoir_without_cap_keeps_every_distinct_prefix():
    r = PrefixReservoir(max_per_token=None, seed=0)
    _offer_all(r, [(0, 1, 5, 11), (0, 2, 6, 12), (1, 1, 5, 11), (1, 2, 7, 13)])
    s, p, t = r.result()
    assert list(zip(s.tolist(), p.tolist(), t.tolist())) == [(0, 1, 5), (0, 2, 6), (1, 2, 7)]


def test_plan_batches_longest_first_and_covers_every_entry():
    sentence = np.array([0, 0, 3, 3, 3, 5, 9, 9], dtype=np.int64)
    position = np.array([1, 2, 1, 4, 6, 1, 2, 3], dtype=np.int32)
    token = np.arange(8, dtype=np.int32)
    sel = Selection(sentence, position, token, 10, 20, 0, "x")
    plan = make_plan(sel, batch_size=2)
    assert plan.corpus_index.tolist() == [0, 3, 5, 9]
    assert plan.n_batches == 2
    assert plan.batch(0)["sentence_id"].tolist() == [1, 1, 1, 3, 3]  # lengths 7 and 4
    assert plan.batch(1)["sentence_id"].tolist() == [0, 0, 2]
    assert sorted(plan.entries["token_id"].tolist()) == list(range(8))
    for e in plan.entries:
        assert position[e["token_id"]] == e["position"]
        assert sentence[e["token_id"]] == plan.corpus_index[e["sentence_id"]]


@pytest.mark.parametrize("batch_size", [1, 3, 100])
def test_plan_batch_offsets(batch_size):
    sentence = np.repeat(np.arange(10), 2)
    sel = Selection(
        sentence, np.tile([1, 2], 10).astype(np.int32), np.zeros(20, np.int32), 10, 20, 0, "x"
    )
    plan = make_plan(sel, batch_size)
    assert plan.batch_offsets[0] == 0 and plan.batch_offsets[-1] == 20
    assert plan.n_batches == -(-10 // batch_size)
