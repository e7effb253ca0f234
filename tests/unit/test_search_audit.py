"""Self-checking approximate search: every routed call audits a share of its queries exactly.

A hook whose routes are good keeps them and reports the audited recall; routes made wrong on
purpose (each sample's list swapped with another's, as a calibration on unrelated images would
route) are caught by the audit and the call is answered exactly, with a warning; the audit's
draw is fixed by the queries (or a seed).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil

import numpy as np
import pytest
import torch
from bank_fixtures import hook_from_rows as _hook

from tiny_models import WORDS, random_image
from tl_latentlens.bank import Bank, build_bank
from tl_latentlens.bank.search import dispatch
from tl_latentlens.bank.search.calibrate import calibrate_bank, calibrate_hook, unit_rows
from tl_latentlens.bank.search.dispatch import (
    AUDIT_MIN,
    RECALL_BAR,
    HookSearcher,
    audit_seed,
    audit_size,
)
from tl_latentlens.bank.search.exact import exact_top_k
from tl_latentlens.bank.search.recall import tie_aware_recall
from tl_latentlens.bank.search.routes import Routes
from tl_latentlens.lens import Explanation, LatentLens
from tl_latentlens.render._markup import search_methods_html

HOOKS = ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.2.hook_resid_post"]


@pytest.fixture(scope="module")
def bank_dir(tiny_vlm, tmp_path_factory):
    rng = np.random.default_rng(0)
    sents = [" ".join(rng.choice(WORDS, rng.integers(3, 10))) for _ in range(200)]
    path = tmp_path_factory.mktemp("bank") / "bank"
    build_bank(tiny_vlm, sents, path, HOOKS, max_per_token=None, progress=False)
    return path


@pytest.fixture(scope="module")
def routed(tmp_path_factory):
    """A calibrated hook of 12,000 clustered vectors and a query maker (visual-like queries
    shifted off the stored ones), with proven routes that pay under ``auto``."""
    rng = np.random.default_rng(0)
    n, d = 12_000, 48
    centres = rng.standard_normal((60, d)).astype(np.float32) * 2
    offset = rng.standard_normal(d).astype(np.float32) * 3
    x = (offset + centres[rng.integers(0, 60, n)] + rng.standard_normal((n, d))).astype(np.float32)
    shift = rng.standard_normal(d).astype(np.float32) * 4

    def visual(m: int, seed: int) -> np.ndarray:
        r = np.random.default_rng(seed)
        q = shift + centres[r.integers(0, 60, m)] + r.standard_normal((m, d)) * 0.7
        return unit_rows(q.astype(np.float32))

    folder = tmp_path_factory.mktemp("audit") / "h"
    hv = _hook(folder, x, "float32")
    cal = calibrate_hook(
        folder, "float32", visual(3000, 1), {"visual": visual(400, 2)},
        list_len=64, probes=(4, 8), progress=False,
    )  # fmt: skip
    assert cal.proven, cal.to_dict()
    return hv, folder, cal, visual


def _searcher(routed, name="blocks.7.hook_resid_post") -> HookSearcher:
    hv, folder, cal, _ = routed
    return HookSearcher(hv, Routes(folder, hv.d), cal.params, cal.recall, name=name)


def _break(searcher: HookSearcher) -> None:
    """Wrong routes on purpose: every sample's list is another, far sample's list."""
    assert searcher.routes is not None
    lists = np.asarray(searcher.routes.lists)
    searcher.routes.lists = np.roll(lists, lists.shape[0] // 2, axis=0)


def test_audit_size_is_a_share_with_a_floor_capped_by_the_routed_queries():
    assert audit_size(100, 100) == AUDIT_MIN == 8
    assert audit_size(1960, 1960) == math.ceil(0.03 * 1960) == 59
    assert audit_size(1960, 20) == 20  # never more than the call routed
    assert audit_size(5, 3) == 3 and audit_size(10, 0) == 0


def test_good_routes_are_kept_and_report_their_audited_recall(routed):
    hv, _, _, visual = routed
    searcher = _searcher(routed)
    q = visual(490, 3)  # one image's tokens at ten layers
    hits = searcher.search(q, 10)
    assert hits.method == "routes" and not hits.audit_failed
    assert hits.n_audited == audit_size(490, 490 - hits.n_exact_fallback) == 15
    truth, _ = exact_top_k(hv, q, 10)
    real = tie_aware_recall(hits.sims, truth)
    assert real >= RECALL_BAR and hits.audit_recall >= RECALL_BAR
    assert 0 < hits.audit_seconds <= hits.seconds
    # the routed answer, not exact search: the audit changed nothing
    plain = searcher.search(q, 10, audit=False)
    np.testing.assert_array_equal(plain.rows, hits.rows)
    assert plain.audit_recall is None and plain.n_audited == 0


def test_wrong_routes_are_caught_and_the_call_is_answered_exactly(routed, caplog):
    hv, _, _, visual = routed
    searcher = _searcher(routed, name="blocks.14.hook_resid_post")
    _break(searcher)
    q = visual(490, 4)
    truth_s, truth_r = exact_top_k(hv, q, 5)
    raw = searcher.search(q, 5, "routes", audit=False)
    assert tie_aware_recall(raw.sims, truth_s) < 0.5  # the routes are wrong indeed
    with caplog.at_level(logging.WARNING, logger=dispatch.__name__):
        hits = searcher.search(q, 5)
    assert hits.audit_failed and hits.audit_recall < RECALL_BAR and hits.n_audited == 15
    assert hits.method == "exact" and hits.n_exact_fallback == 0
    np.testing.assert_array_equal(hits.rows, truth_r)
    np.testing.assert_array_equal(hits.sims, truth_s)
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1
    text = warned[0].getMessage()
    assert "blocks.14.hook_resid_post" in text and "recalibrate" in text
    assert "calibrate_bank(" in text and "prove_on" in text
    # asked for routes explicitly: audited and reported, but kept
    forced = searcher.search(q, 5, "routes")
    assert forced.method == "routes" and forced.audit_failed
    np.testing.assert_array_equal(forced.rows, raw.rows)


def test_the_audit_draw_is_fixed_by_the_queries_or_a_seed(routed, monkeypatch):
    _, _, _, visual = routed
    searcher = _searcher(routed)
    _break(searcher)  # recall varies between queries: different draws give different recalls
    seen: list[bytes] = []
    real = searcher._exact

    def spy(queries, *args):
        seen.append(np.asarray(queries).tobytes())
        return real(queries, *args)

    monkeypatch.setattr(searcher, "_exact", spy)
    q = visual(300, 5)
    a = searcher.search(q, 10, "routes")
    b = searcher.search(q.copy(), 10, "routes")
    assert seen[0] == seen[1] and a.audit_recall == b.audit_recall
    c = searcher.search(q, 10, "routes", seed=1)
    d = searcher.search(q, 10, "routes", seed=1)
    searcher.search(q, 10, "routes", seed=2)
    assert seen[2] == seen[3] != seen[4] and c.audit_recall == d.audit_recall
    assert seen[0] != seen[2]
    # each hook of a call draws its own share
    assert audit_seed(q, "blocks.0.hook_resid_pre") != audit_seed(q, "blocks.1.hook_resid_post")
    assert audit_seed(q, "x", seed=7) == audit_seed(visual(3, 9), "x", seed=7)


def _calibrated_bank(bank_dir, tmp_path, monkeypatch) -> Bank:
    """The tiny test bank with routes at its last hook, routed under ``auto`` (routes pay at
    any size here: the tiny bank is far below the size where they would)."""
    path = tmp_path / "bank"
    shutil.copytree(bank_dir, path)
    rng = np.random.default_rng(0)
    samples = rng.standard_normal((400, 64)).astype(np.float32)
    calibrate_bank(path, samples=samples, hooks=[HOOKS[-1]], list_len=16, probes=(2,),
                   progress=False)  # fmt: skip
    monkeypatch.setattr(dispatch, "routes_pay", lambda *a: True)
    bank = Bank.open(path)
    searcher = bank.searcher(HOOKS[-1])
    searcher.calibrated_recall = {"proven here": 1.0}  # auto routes whatever calibration found
    # every query routed (none unlike every sample), so the audit has a full share to draw
    searcher.route_params = dataclasses.replace(searcher.route_params, min_sample_similarity=-1.0)
    return bank


def test_bank_search_reports_the_audit_and_answers_a_failed_hook_exactly(
    bank_dir, tmp_path, monkeypatch, caplog
):
    bank = _calibrated_bank(bank_dir, tmp_path, monkeypatch)
    q = torch.randn(40, 64, generator=torch.Generator().manual_seed(1))
    exact = bank.search(q, hook=HOOKS, k=5, method="exact")
    report = bank.search(q, hook=HOOKS, k=5)
    assert report.methods[HOOKS[0]] == "exact" and HOOKS[0] not in report.audited
    assert report.audited[HOOKS[-1]] == audit_size(40, 40) == 8
    assert 0.0 <= report.audit_recall[HOOKS[-1]] <= 1.0
    assert report.methods[HOOKS[-1]] == ("exact" if report.audit_failed[HOOKS[-1]] else "routes")
    # one result type: a sequence of neighbour lists with the per-hook facts
    assert len(report) == 40 and report[0] == report.neighbours[0] == list(report)[0]
    _break(bank.searcher(HOOKS[-1]))
    with caplog.at_level(logging.WARNING, logger=dispatch.__name__):
        bad = bank.search(q, hook=HOOKS, k=5)
    assert bad.audit_failed[HOOKS[-1]] and bad.methods[HOOKS[-1]] == "exact"
    assert bad.audit_recall[HOOKS[-1]] < RECALL_BAR
    key = [[(n.hook, n.sentence_id, n.position, n.similarity) for n in row] for row in bad]
    want = [[(n.hook, n.sentence_id, n.position, n.similarity) for n in row] for row in exact]
    assert key == want
    assert any(HOOKS[-1] in r.getMessage() for r in caplog.records)


def test_explanation_and_its_page_carry_the_audit(bank_dir, tiny_vlm, tmp_path, monkeypatch):
    bank = _calibrated_bank(bank_dir, tmp_path, monkeypatch)
    lens = LatentLens(tiny_vlm, bank)
    result = lens.explain(random_image(3), k=3, baselines=False)
    recall, n = result.search_audit[HOOKS[-1]]
    assert n >= AUDIT_MIN and 0.0 <= recall <= 1.0
    line = search_methods_html(result)
    assert f"audited recall {recall:.3f} on {n} queries" in line
    again = Explanation.load(result.save(tmp_path / "r.json"))
    assert again.search_audit == result.search_audit
    _break(bank.searcher(HOOKS[-1]))
    failed = lens.explain(random_image(3), k=3, baselines=False)
    assert failed.search[HOOKS[-1]] == "exact"
    exact = lens.explain(random_image(3), k=3, baselines=False, method="exact")
    assert [p.latent for p in failed.patches] == [p.latent for p in exact.patches]
    assert "routes failed the audit" in search_methods_html(failed)
