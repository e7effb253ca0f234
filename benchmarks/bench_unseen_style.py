"""The routes' recall promise on an image style their calibration never saw, with and without the
self-audit (issue 28).

A bank of the default corpus (the embedded default VLM, SmolLM2-135M) at a few hooks is
calibrated as the default bank is (``tl_latentlens.apps.demo.calibrate_default_bank``: training
stamps, held-out validation composites, photos, clip art of half of openclipart's top-level
categories, held-out text), then searched with the visual tokens of images nobody calibrated
for:

* ``clip art (unseen)``: openclipart drawings of the *other* categories, centred on white
  (:func:`tl_latentlens.apps.demo.clipart_images` ``part="unseen"``);
* ``clip art, negative``: the same drawings with their colours inverted (white on black): a
  style unlike every calibration set.

Per hook it reports the tie-aware recall@10 against exact search and the search time of
``auto`` with the audit (the default), ``auto`` with the audit off (share 0: what ``auto`` did
before it audited itself) and exact search, in calls of ``--rows`` query rows (explain's CPU
block): every query is a visual token of every layer, searched against every hook (cross-layer,
as :class:`~tl_latentlens.lens.LatentLens` searches). The routed hooks' audits (failed / calls)
are counted too. Routes are used by ``auto`` only where calibration proved them; a hook whose
routes were not proven is searched exactly by all three.

Usage::

    python benchmarks/bench_unseen_style.py --sentences 12000 --layers 4 14
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_bank_common import machine
from PIL import ImageOps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sentences", type=int, default=12000, help="default-corpus sentences")
    p.add_argument("--layers", type=int, nargs="+", default=[4, 14], help="bank layers")
    p.add_argument("--stamps", type=int, default=120, help="calibration stamps")
    p.add_argument("--images", type=int, default=40, help="query images per style")
    p.add_argument("--rows", type=int, default=490, help="query rows per search call")
    p.add_argument("--out", default=None, help="keep the bank here (default: a temp folder)")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per call (the fastest counts)")
    p.add_argument(
        "--recalibrate", action="store_true", help="calibrate a kept bank that has routes again"
    )
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.set_grad_enabled(False)

    from tl_latentlens import hooks as hk
    from tl_latentlens.apps.demo import clipart_images, default_calibration_sets
    from tl_latentlens.bank import Bank, build_bank, calibrate_bank
    from tl_latentlens.bank.search import dispatch
    from tl_latentlens.bank.search.calibrate import visual_tokens
    from tl_latentlens.bank.search.recall import tie_aware_recall
    from tl_latentlens.default.bank_corpus import default_corpus
    from tl_latentlens.default.loader import load_default_vlm

    print(machine())
    vlm = load_default_vlm()
    hooks = [hk.hook_for_layer(layer, vlm.n_layers) for layer in args.layers]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp) / "bank"
        t0 = time.perf_counter()
        if not (out / "manifest.json").is_file():
            build_bank(vlm, default_corpus(args.sentences), out, hooks, max_per_token=20,
                       dtype="float32", progress=False)  # fmt: skip
        t_build = time.perf_counter() - t0
        t0 = time.perf_counter()
        if args.recalibrate or not Bank.open(out).hook_info(hooks[0]).get("routes"):
            stamps, unlike, text = default_calibration_sets(args.sentences, args.stamps)
            calibrate_bank(
                Bank.open(out, vlm), vlm, stamps, prove_on=unlike, held_out_text=text,
                max_samples=8000, progress=False,
            )  # fmt: skip
        t_cal = time.perf_counter() - t0
        bank = Bank.open(out, vlm)
        print(f"bank: {args.sentences} sentences, hooks {hooks}, "
              f"{[bank.n_vectors(h) for h in hooks]} vectors; build {t_build:.0f} s, "
              f"calibration {t_cal:.0f} s (0: calibrated before)")  # fmt: skip
        for h in hooks:
            r = bank.hook_info(h)["routes"]
            sets = ", ".join(f"{k} {v['recall_at_10']:.4f}" for k, v in r["proving_sets"].items())
            print(f"  {h}: probe {r['params']['probe']}, proven {r['proven']}: {sets}")

        drawings = clipart_images(args.images, part="unseen")
        styles = {
            "clip art (unseen)": drawings,
            "clip art, negative": [ImageOps.invert(im) for im in drawings],
        }
        print("| style | hook | recall@10 auto + audit | recall@10 auto, no audit | "
              "audits failed / calls | queries audited / call | CPU ms/call auto + audit "
              "(audit) | CPU ms/call auto, no audit | CPU ms/call exact |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|")
        share, least = dispatch.AUDIT_SHARE, dispatch.AUDIT_MIN
        for style, images in styles.items():
            q = visual_tokens(vlm, images, hooks, progress=False)
            q = q / np.linalg.norm(q, axis=1, keepdims=True)
            calls = [q[s : s + args.rows] for s in range(0, q.shape[0], args.rows)]
            for h in hooks:
                bank._fits_resident(h)  # decoded once, as a bank in use keeps it
                bank.searcher(h).vectors.resident()
                runs = (("exact", "exact", True), ("audit", "auto", True), ("plain", "auto", False))
                hits = {name: [] for name, _, _ in runs}
                cpu = {name: 0.0 for name, _, _ in runs}
                for c in calls:
                    best = {name: float("inf") for name, _, _ in runs}
                    for _ in range(args.repeat):  # interleaved: a busy machine slows all alike
                        for name, method, audit in runs:
                            dispatch.AUDIT_SHARE, dispatch.AUDIT_MIN = (
                                (share, least) if audit else (0, 0)
                            )
                            t0 = time.process_time()
                            bank._search_rows(c, h, 10, method)
                            best[name] = min(best[name], time.process_time() - t0)
                        dispatch.AUDIT_SHARE, dispatch.AUDIT_MIN = share, least
                    for name, _, _ in runs:
                        cpu[name] += best[name]
                    for name, method, audit in runs:  # the results (deterministic per call)
                        dispatch.AUDIT_SHARE, dispatch.AUDIT_MIN = (
                            (share, least) if audit else (0, 0)
                        )
                        hits[name].append(bank._search_rows(c, h, 10, method))
                    dispatch.AUDIT_SHARE, dispatch.AUDIT_MIN = share, least
                res = {name: (hits[name], 1000 * cpu[name] / len(calls)) for name, _, _ in runs}
                truth = np.concatenate([x.sims for x in res["exact"][0]])
                rec = {
                    n: tie_aware_recall(np.concatenate([x.sims for x in res[n][0]]), truth)
                    for n in ("audit", "plain")
                }
                audited = [x for x in res["audit"][0] if x.n_audited]
                failed = sum(x.audit_failed for x in audited)
                n_aud = np.mean([x.n_audited for x in audited]) if audited else 0.0
                t_aud = 1000 * np.mean([x.audit_seconds for x in audited]) if audited else 0.0
                print(f"| {style} | {h} | {rec['audit']:.4f} | {rec['plain']:.4f} | "
                      f"{failed} / {len(audited)} | {n_aud:.0f} of {args.rows} | "
                      f"{res['audit'][1]:.1f} ({t_aud:.1f} wall) | {res['plain'][1]:.1f} | "
                      f"{res['exact'][1]:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
