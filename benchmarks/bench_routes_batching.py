"""Routed cross-layer search on the demo bank: what the shared sample lookup and the re-rank
group size buy, side by side, on real visual queries.

Queries: the visual tokens of held-out composites from the embedded default VLM at every
layer the bank has (one image = 49 tokens x 10 layers = 490 queries), searched against every
bank hook (cross-layer, as ``explain`` does). All variants run on the same queries in one
process, interleaved, 1 thread, CPU time (steady on a shared machine); the best of the rounds
is printed with its ratio to exact search and its recall@10 against it. Also printed: what
calibration measured per probe on the held-out sets (expected cost, share sent to exact search),
which is how each hook's probe was chosen.

Usage::

    python benchmarks/bench_routes_batching.py              # the demo bank (12,000 sentences)
    python benchmarks/bench_routes_batching.py --images 4 --rounds 5
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from bench_bank_common import machine


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sentences", type=int, default=12000, help="demo bank corpus size")
    p.add_argument("--images", type=int, default=1, help="composites whose tokens are queries")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    torch.set_grad_enabled(False)
    torch.set_num_threads(1)
    import tl_latentlens.bank.search.dispatch as search_mod
    from tl_latentlens.apps.demo import calibrate_default_bank
    from tl_latentlens.bank.search.exact import exact_top_k
    from tl_latentlens.bank.search.recall import tie_aware_recall
    from tl_latentlens.capture import capture_image
    from tl_latentlens.default.loader import load_default_vlm
    from tl_latentlens.evaluate.default_set import heldout_composites
    from tl_latentlens.lens import LatentLens
    from tl_latentlens.lens.default_bank import default_bank

    print(machine(), "- measured with 1 thread, CPU time")
    vlm = load_default_vlm()
    bank = default_bank(vlm, max_sentences=args.sentences, calibrate=calibrate_default_bank)
    hooks = LatentLens(vlm, bank).default_hooks()
    queries = []
    for im in heldout_composites(args.images):
        acts = capture_image(vlm, im.image, hooks=hooks)
        queries += [acts.residuals[h].float().numpy() for h in hooks]
    q = np.concatenate(queries)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    print(f"{q.shape[0]} visual queries x {len(bank.hooks)} bank hooks ({bank.root.name})")
    for h in bank.hooks:
        bank.searcher(h).vectors.resident()

    def exact():
        return [exact_top_k(bank.searcher(h).vectors, q, 10) for h in bank.hooks]

    def routed(shared: bool, group: int):
        def run():
            search_mod.RERANK_GROUP = group
            lookups = bank._shared_lookups(q, bank.hooks, "auto", None) if shared else None
            return [bank.searcher(h).search(q, 10, "auto", lookups=lookups) for h in bank.hooks]

        return run

    default_group = search_mod.RERANK_GROUP
    variants = {"exact (resident)": exact}
    variants["routes, one lookup per hook"] = routed(False, default_group)
    variants["routes, one shared lookup"] = routed(True, default_group)
    for g in (8, 16, 32, 64, 128):
        variants[f"routes, shared lookup, groups of {g}"] = routed(True, g)
    times: dict[str, list[float]] = {name: [] for name in variants}
    results = {}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            t0 = time.process_time()
            results[name] = fn()
            times[name].append(time.process_time() - t0)
    search_mod.RERANK_GROUP = default_group
    truth = [s for s, _ in results["exact (resident)"]]
    base = min(times["exact (resident)"])
    print(
        f"{'variant':40s} {'CPU ms':>8s} {'vs exact':>9s} {'min recall@10':>14s} {'to exact':>9s}"
    )
    for name in variants:
        best = min(times[name])
        if name.startswith("exact"):
            rec, fallback = 1.0, q.shape[0] * len(bank.hooks)
        else:
            rec = min(tie_aware_recall(h.sims, t) for h, t in zip(results[name], truth))
            fallback = sum(
                h.n_exact_fallback if h.method == "routes" else q.shape[0] for h in results[name]
            )
        print(f"{name:40s} {best * 1e3:8.0f} {base / best:8.1f}x {rec:14.4f} {fallback:9d}")
    print("\ncalibration per hook (held-out sets): probe -> expected cost / share to exact search")
    for h in bank.hooks:
        r = bank.hook_info(h).get("routes") or {}
        costs = r.get("expected_cost", {})
        shares = r.get("fallback_frontier", {})
        row = "  ".join(
            f"{p}: {costs[p]:.0f} / {np.mean([v for k, v in shares.get(p, {}).items() if 'text' not in k] or [0]):.3f}"
            for p in sorted(costs, key=int)
        )
        print(f"  {h:28s} chosen {r.get('params', {}).get('probe')}  {row}")


if __name__ == "__main__":
    main()
