"""What calibrating routes costs on the demo bank, policy 3 against policy 2's settings.

Real data: the demo bank (SmolLM2-135M residuals of the default corpus, 12,000 sentences, built
and cached on first use as the demo does) and the visual tokens of the embedded default VLM on
the demo's calibration images (:func:`tl_latentlens.apps.demo.default_calibration_sets`: 240
training stamps, a fifth held out, validation composites, photos, held-out text). The bank's
files are linked into a temporary bank, so the cached bank is not touched. For each hook the
same queries are calibrated twice, one after the other in this run:

* policy 2's settings: every probe tried, every held-out query measured
  (``GAIN = 1``: no probe ever gains too little; ``max_queries`` unbounded);
* policy 3 (the default): probes stop when one lowers the best expected cost by < 5 %,
  at most 4,000 queries per held-out set.

Both share the sample lookups across probes (policy 3's other change), so the printed ratio
understates the speed-up over the old code by that part (about 10 s of 96 s per hook).

Usage::

    python benchmarks/bench_calibration.py                      # hooks 0 (pre), 14, 29
    python benchmarks/bench_calibration.py --hooks blocks.1.hook_resid_post
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from bench_bank_common import machine


def _linked_bank(src: Path, dst: Path) -> None:
    """A bank at ``dst`` whose files are links to ``src``'s. Calibration replaces route files
    atomically (a new file renamed over the link), so ``src`` is never written."""
    for path in src.rglob("*"):
        rel = path.relative_to(src)
        if path.is_dir():
            continue
        out = dst / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        if rel.name == "manifest.json":
            shutil.copyfile(path, out)  # rewritten by calibration
        else:
            os.symlink(path, out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--hooks",
        nargs="+",
        default=[
            "blocks.0.hook_resid_pre",
            "blocks.14.hook_resid_post",
            "blocks.29.hook_resid_post",
        ],
    )
    args = p.parse_args()
    torch.set_grad_enabled(False)
    import tl_latentlens.bank.search.calibrate as cal
    from tl_latentlens.apps.demo import default_calibration_sets
    from tl_latentlens.bank import Bank
    from tl_latentlens.default.loader import load_default_vlm
    from tl_latentlens.lens.default_bank import default_bank

    print(machine())
    vlm = load_default_vlm()
    bank = default_bank(vlm, max_sentences=12000)
    stamps, unlike, text = default_calibration_sets(12000)
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for label, gain, max_queries in (
            ("policy 2 settings", 1.0, 10**9),
            ("policy 3", cal.GAIN, cal.MAX_QUERIES),
        ):
            root = Path(tmp) / label.replace(" ", "_")
            _linked_bank(bank.root, root)
            cal.GAIN = gain
            t0 = time.perf_counter()
            got = cal.calibrate_bank(
                Bank.open(root, vlm), vlm, stamps, prove_on=unlike, held_out_text=text,
                max_samples=8000, hooks=args.hooks, max_queries=max_queries, progress=False,
            )  # fmt: skip
            wall = time.perf_counter() - t0
            rows.append((label, wall, got))
            opened = Bank.open(root)
            for hook, c in got.items():
                print(f"{label:18s} {hook:26s} {c.seconds:6.1f} s  probes {sorted(c.frontier)} "
                      f"-> {c.params.probe}, cost {c.cost[c.params.probe]:.0f} of "
                      f"{opened.n_vectors(hook)}, recall {min(c.recall.values()):.4f}, "
                      f"proven {c.proven}")  # fmt: skip
        (_, w2, old), (_, w3, new) = rows
        per_hook = [old[h].seconds / new[h].seconds for h in args.hooks]
        print(f"wall (captures included): policy 2 settings {w2:.0f} s, policy 3 {w3:.0f} s")
        print("calibrate_hook time ratio (policy 2 settings / policy 3): "
              + ", ".join(f"{h} {r:.2f}x" for h, r in zip(args.hooks, per_hook)))  # fmt: skip


if __name__ == "__main__":
    main()
