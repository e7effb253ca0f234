"""Two ideas for the bank's exact scan, measured: a grouped top-k (kept) and a bfloat16 product
with a proof (not kept).

Grouped top-k (:func:`tl_latentlens.bank.search.exact.block_top_k`, what ``exact_top_k`` runs on the
CPU): the top-5 of the float32 similarity block ``[490, n]`` against ``torch.topk`` on the same
block, and the same answer.

The EmbeddingLens scans the vocabulary in bfloat16 and proves its top-k equal to a float32
scan's (:mod:`tl_latentlens.lens.baselines`). This script measures the same idea on the bank:
for the visual tokens of one held-out composite at every bank layer (490 queries, the
cross-layer batch of one ``explain``) against three hooks of the demo bank, side by side in one
run:

* float32: the bank's exact search (:func:`tl_latentlens.bank.search.exact.exact_top_k`, resident);
* bfloat16: the product in bfloat16 against a bfloat16 copy, the top ``k + spare`` per query,
  their float32 re-score (:func:`~tl_latentlens.bank.search.exact.exact_rows`, from the resident
  float32 copy: the best case) and the proof (k-th re-scored similarity > every dropped row's
  bfloat16 similarity + the rounding bound) and the float32 scan of the queries it does not
  prove (what keeps the answer exact).

Usage::

    python benchmarks/bench_exact_scan.py
"""

from __future__ import annotations

import numpy as np
import torch
from bench_bank_common import fastest, machine

K = 5
SPARE = 64


def best_of(fn):
    """``(seconds, result)`` of the fastest of 3 runs after a warm-up."""
    return fastest(fn, 3, warm_up=True)


def main() -> None:
    torch.set_grad_enabled(False)
    from tl_latentlens import hooks as hk
    from tl_latentlens.capture import capture_image
    from tl_latentlens.default.loader import load_default_vlm
    from tl_latentlens.evaluate.default_set import heldout_composites
    from tl_latentlens.lens.baselines import bf16_error
    from tl_latentlens.lens.default_bank import default_bank

    print(machine())
    vlm = load_default_vlm()
    bank = default_bank(vlm, max_sentences=12000)
    model_hooks = [hk.hook_for_layer(hk.layer_of(h), vlm.n_layers) for h in bank.hooks]
    acts = capture_image(vlm, heldout_composites(2)[1].image, None, model_hooks)
    q = np.concatenate([acts.residuals[h].numpy() for h in model_hooks]).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    for name in ("blocks.0.hook_resid_post", "blocks.14.hook_resid_post", bank.hooks[-1]):
        print(measure(name, bank.hook_vectors(name), q, bf16_error(q.shape[1])))


def measure(name: str, hv, q: np.ndarray, bound: float) -> str:
    """One hook: the float32 scan against the bfloat16 scan's parts (module docstring)."""
    from tl_latentlens.bank.search.exact import block_top_k, exact_rows, exact_top_k

    sims32 = torch.from_numpy(q @ hv.resident().T)
    t_plain, (pv, _) = best_of(lambda: torch.topk(sims32, K, dim=1))
    t_group, (gv, _) = best_of(lambda: block_top_k(sims32, K))
    grouped = (f"{name:26s} top-{K} of [{len(q)}, {hv.n}]: torch.topk {t_plain * 1e3:.1f} ms, "
               f"grouped {t_group * 1e3:.1f} ms ({t_plain / t_group:.2f}x), same values "
               f"{bool(torch.equal(pv, torch.sort(gv, dim=1, descending=True).values))}\n")  # fmt: skip
    qb = torch.from_numpy(q).to(torch.bfloat16)
    rows_bf16 = torch.from_numpy(hv.resident()).to(torch.bfloat16)
    t32, (_, r32) = best_of(lambda: exact_top_k(hv, q, K))
    t_mm, sims = best_of(lambda: qb @ rows_bf16.T)
    t_top, (v, i) = best_of(lambda: torch.topk(sims, K + SPARE, dim=1))
    cand = i.numpy()

    def rescore():
        parts = [exact_rows(hv, q[g : g + 32], cand[g : g + 32], K) for g in range(0, len(q), 32)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    t_re, (s16, r16) = best_of(rescore)
    proved = s16[:, -1] > v[:, -1].float().numpy() + bound
    unproved = np.flatnonzero(~proved)
    t_again = best_of(lambda: exact_top_k(hv, q[unproved], K))[0] if unproved.size else 0.0
    same = (r16 == r32).all(axis=1)
    t16 = t_mm + t_top + t_re + t_again
    return grouped + (f"{name:26s} {hv.n} vectors: float32 scan {t32 * 1e3:.0f} ms | bfloat16 product "
            f"{t_mm * 1e3:.0f} + top-{K + SPARE} {t_top * 1e3:.0f} + re-score {t_re * 1e3:.0f} "
            f"+ float32 scan of the {unproved.size} unproved {t_again * 1e3:.0f} = "
            f"{t16 * 1e3:.0f} ms; float32 / bfloat16 {t32 / t16:.2f}x; same top-{K} where "
            f"proved {same[proved].mean():.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
