"""Interventions, attention to the patches and the vision side on the embedded default VLM.

1. Mean-ablates the visual tokens' residual entering block 4 (every visual token replaced by
   their mean, so what tells the patches apart is gone from there on) and prints how the
   LatentLens neighbours moved per layer (``Explanation.diff``).
2. Shows where the last prompt token looks: the patches that block 8's attention (mean over
   heads) gives most weight, each with its LatentLens word at layer 8.
3. Checks that the projector's output (``vision_projector.hook_out``) is layer 0.

Writes ``diff.html``, ``attention.png`` and ``attention.html`` to ``--out``.

Run:
    .venv/bin/python demos/interventions.py --out /tmp/interventions
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from PIL import Image

from tl_latentlens import LatentLens
from tl_latentlens.default.assets import skimage_data_dir
from tl_latentlens.models.base import VISION_PROJECTOR_OUT

PROMPT = "<image>\nWhat animal is in the picture?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("interventions_demo"))
    ap.add_argument("--image", type=Path, default=None, help="default: scikit-image's cat")
    ap.add_argument("--sentences", type=int, default=1500, help="default-bank corpus size")
    ap.add_argument("--block", type=int, default=4, help="ablate the residual entering it")
    ap.add_argument("--attention-layer", type=int, default=8)
    args = ap.parse_args()
    torch.manual_seed(0)
    lens = LatentLens.default(sentences=args.sentences)
    vlm = lens.vlm
    image = Image.open(args.image or skimage_data_dir() / "chelsea.png").convert("RGB")
    positions = vlm.prepare(image, PROMPT).layout.positions

    def mean_ablate_visual(resid, hook):
        out = resid.clone()
        out[:, positions] = resid[:, positions].mean(dim=1, keepdim=True)
        return out

    t0 = time.perf_counter()
    plain = lens.explain(image, PROMPT, k=5, attention=[args.attention_layer])
    ablated = lens.explain(image, PROMPT, k=5, fwd_hooks=[(args.block, mean_ablate_visual)])
    print(
        f"two explains in {time.perf_counter() - t0:.1f} s; intervention: {ablated.interventions}"
    )
    diff = plain.diff(ablated)
    cols = ["layer", "overlap", "rbo", "jaccard", "similarity_change", "top1_changed", "entered"]
    print(diff.summary()[cols].to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    args.out.mkdir(parents=True, exist_ok=True)
    diff.to_html(args.out / "diff.html")

    layer = args.attention_layer
    att = plain.attention
    last = len(att.tokens) - 1
    print(
        f"\nblock {layer}, mean over heads: the last prompt token {att.tokens[last]!r} attends to"
    )
    words = {p.index: p.top_word for p in plain.at(plain.hook(layer))}
    for index, row, col, weight in att.top_patches(layer, prompt_positions=[last], n=5):
        print(
            f"  patch ({row},{col})  {weight:6.2%}  LatentLens word at layer {layer}: {words[index]!r}"
        )
    total = att.weights(layer, prompt_positions=[last]).sum()
    print(f"  all {len(att.positions)} patches together: {total:.2%} of its attention")
    att.save_png(args.out / "attention.png", layer, prompt_positions=[last], explanation=plain)
    att.to_html(args.out / "attention.html", layer=layer, explanation=plain)

    _, cache = vlm.run_with_cache(
        vlm.prepare(image, PROMPT), ["blocks.0.hook_resid_pre"], vision=True
    )
    same = torch.equal(
        cache[VISION_PROJECTOR_OUT][0], cache["blocks.0.hook_resid_pre"][0, positions]
    )
    print(f"\nvision_projector.hook_out == layer-0 visual residuals: {same}")
    print(f"wrote {args.out}/diff.html, attention.png, attention.html")


if __name__ == "__main__":
    main()
