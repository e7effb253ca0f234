"""What one ``explain`` costs on the demo bank: forward pass, bank search, baselines.

One image, every bank layer, cross-layer search, k=5, baselines on (the demo's setting), on the
embedded default VLM and its default bank (built and cached on first use, as the demo does).
Each configuration runs 3 times after a warm-up; the best run is printed per part. Also printed:
the same with ``explain_many`` over 8 images (per image), and exact search streamed from disk
instead of resident in RAM.

Usage::

    python benchmarks/bench_explain.py                  # the demo bank (12,000 sentences)
    python benchmarks/bench_explain.py --sentences 1500 # the --quick demo's bank
"""

from __future__ import annotations

import argparse
import time

import torch
from bench_bank_common import fastest, machine
from bench_precision import cpu_line


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sentences", type=int, default=12000, help="demo bank corpus size")
    args = p.parse_args()
    torch.set_grad_enabled(False)
    from tl_latentlens.default.loader import load_default_vlm
    from tl_latentlens.evaluate.default_set import heldout_composites
    from tl_latentlens.lens import LatentLens
    from tl_latentlens.lens.default_bank import default_bank

    print(machine())
    print(cpu_line())
    t0 = time.perf_counter()
    vlm = load_default_vlm()
    print(f"load the default VLM: {time.perf_counter() - t0:.1f} s")
    bank = default_bank(vlm, max_sentences=args.sentences)
    print(bank, {h: bank.n_vectors(h) for h in bank.hooks})
    lens = LatentLens(vlm, bank)
    images = [im.image for im in heldout_composites(9)]
    lens.explain(images[0], k=5)  # warm-up: decodes the hooks into RAM once

    wall, res = fastest(lambda: lens.explain(images[1], k=5))
    parts = " · ".join(f"{k} {v * 1e3:.0f} ms" for k, v in res.timings.items())
    print(f"explain, 1 image x {len(res.hooks)} hooks, cross-layer, k=5, baselines: "
          f"{wall * 1e3:.0f} ms total ({parts}); search: {set(res.search.values())}")  # fmt: skip
    wall, res = fastest(lambda: lens.explain(images[1], k=5, baselines=False))
    print(f"  without baselines: {wall * 1e3:.0f} ms")
    auto_search = res.timings["search"]
    wall, res = fastest(lambda: lens.explain(images[1], k=5, method="exact"))
    parts = " · ".join(f"{k} {v * 1e3:.0f} ms" for k, v in res.timings.items())
    print(f"  exact search at every hook (a bank without routes, like the demo bank now): "
          f"{wall * 1e3:.0f} ms total ({parts}); search exact / auto "
          f"{res.timings['search'] / auto_search:.2f}x")  # fmt: skip
    # the same 8 images one by one and together, alternating, so load drifts hit both alike
    one_by_one, together = [], []
    for _ in range(3):
        t0 = time.perf_counter()
        for image in images[1:9]:
            lens.explain(image, k=5)
        one_by_one.append((time.perf_counter() - t0) / 8)
        t0 = time.perf_counter()
        lens.explain_many(images[1:9], k=5, batch_size=8, progress=False)
        together.append((time.perf_counter() - t0) / 8)
    a, b = min(one_by_one), min(together)
    print(f"8 images: explain one by one {a * 1e3:.0f} ms per image, explain_many (batch 8) "
          f"{b * 1e3:.0f} ms per image ({b / a:.2f}x)")  # fmt: skip
    # EmbeddingLens: the bfloat16 scan with its proof vs the float32 scan, on this image's
    # visual tokens at every hook (only where the CPU has bfloat16 instructions)
    from tl_latentlens.capture import capture_inputs
    from tl_latentlens.lens import baselines

    acts = capture_inputs(vlm, vlm.prepare(images[1]), list(bank.hooks))
    x = torch.cat([acts.residuals[h] for h in bank.hooks]).float()
    unit = torch.nn.functional.normalize(x, dim=-1)
    emb = lens.embedding_lens
    fast_wall, (fast_v, fast_i) = fastest(lambda: emb.top_k(unit, 5))
    real = baselines._bf16_is_fast
    baselines._bf16_is_fast = lambda device: False
    slow_wall, (slow_v, slow_i) = fastest(lambda: emb.top_k(unit, 5))
    baselines._bf16_is_fast = real
    same = int((fast_i == slow_i).all(dim=1).sum())
    print(f"EmbeddingLens top-5 of {x.shape[0]} visual tokens: bfloat16 scan + proof "
          f"{fast_wall * 1e3:.0f} ms vs float32 {slow_wall * 1e3:.0f} ms "
          f"({slow_wall / fast_wall:.1f}x; bfloat16 used: {real(unit.device)}); same ids for "
          f"{same}/{x.shape[0]}")  # fmt: skip
    print(cpu_line())
    bank.close()
    bank.resident_bytes = 0
    wall, res = fastest(lambda: lens.explain(images[1], k=5), 2)
    print(f"exact search streamed from storage (nothing resident): {wall * 1e3:.0f} ms total, "
          f"search {res.timings['search'] * 1e3:.0f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
