"""Real search workload for the bank benchmarks: SmolLM2-135M text residuals + visual queries.

Writes (once, cached under ``--out``, default ``$TL_LATENTLENS_CACHE/bench_search``):

* ``text/<hook>.npy``     float16 ``[n, 576]``: residuals of WordNet-corpus tokens at each hook
                          (the embedded default's LM, ``stop_at_layer`` just past the last hook).
* ``visual/<set>/<hook>.npy`` float32: visual-token residuals of the embedded default VLM for
  ``train`` (training stamps: the routing samples), ``heldout`` (held-out stamps, centred and
  placed on random backgrounds), ``composites`` (held-out composites) and ``photos``
  (scikit-image photos + the VOC photo): images unlike the samples.

Usage::

    python benchmarks/search_data.py --tokens 520000
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

HOOKS = ["blocks.0.hook_resid_pre", "blocks.2.hook_resid_pre", "blocks.4.hook_resid_pre"]


def default_out() -> Path:
    base = os.environ.get("TL_LATENTLENS_CACHE") or Path.home() / ".cache" / "tl_latentlens"
    return Path(base) / "bench_search"


def capture_text_residuals(vlm, out: Path, n_tokens: int, hooks: list[str]) -> None:
    from tl_latentlens.capture import capture_text
    from tl_latentlens.default.corpus import wordnet_sentences

    sentences, total = [], 0
    for s in dict.fromkeys(wordnet_sentences(None)):
        sentences.append(s)
        total += len(s.split()) * 1.3 + 1
        if total > n_tokens * 1.05:
            break
    bufs: dict[str, list[np.ndarray]] = {h: [] for h in hooks}
    got, t0 = 0, time.perf_counter()
    for acts in capture_text(vlm, sentences, hooks, batch_size=32, max_tokens=64):
        for h in hooks:
            bufs[h].append(acts.residuals[h].numpy().astype(np.float16))
        got += int(acts.token_id.shape[0])
        if got >= n_tokens:
            break
    dt = time.perf_counter() - t0
    (out / "text").mkdir(parents=True, exist_ok=True)
    for h in hooks:
        np.save(out / "text" / f"{h}.npy", np.concatenate(bufs[h])[:n_tokens])
    logging.info("text: %d tokens in %.0f s (%.0f tok/s)", got, dt, got / dt)


def _visual_sets():
    from PIL import Image

    from tl_latentlens.default.assets import skimage_data_dir
    from tl_latentlens.default.data import load_stamps, single_stamp_image, split_stamps
    from tl_latentlens.evaluate.default_set import heldout_composites, voc_image

    train, held = split_stamps(load_stamps())
    rng = np.random.default_rng(0)
    sets = {
        "train": [single_stamp_image(s) for s in train]
        + [single_stamp_image(s, rng) for s in train[::3]],
        "heldout": [single_stamp_image(s) for s in held[:40]]
        + [single_stamp_image(s, rng) for s in held[40:80]],
        "composites": [im.image for im in heldout_composites(24)],
    }
    photos = []
    data = skimage_data_dir()
    for name in ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png",
                 "hubble_deep_field.jpg", "immunohistochemistry.png", "retina.jpg"]:  # fmt: skip
        if (data / name).is_file():
            photos.append(Image.open(data / name).convert("RGB"))
    photos.append(voc_image().image)
    sets["photos"] = photos
    return sets


def capture_visual_residuals(vlm, out: Path, hooks: list[str]) -> None:
    from tl_latentlens.capture import capture_image

    for name, images in _visual_sets().items():
        bufs: dict[str, list[np.ndarray]] = {h: [] for h in hooks}
        for im in images:
            acts = capture_image(vlm, im, hooks=hooks)
            for h in hooks:
                bufs[h].append(acts.residuals[h].numpy())
        (out / "visual" / name).mkdir(parents=True, exist_ok=True)
        for h in hooks:
            np.save(out / "visual" / name / f"{h}.npy", np.concatenate(bufs[h]))
        logging.info("visual %s: %d images", name, len(images))


def load(out: Path | None = None):
    """``(text: hook -> float16 array, visual: set -> hook -> float32 array)``."""
    out = out or default_out()
    text = {h: np.load(out / "text" / f"{h}.npy", mmap_mode="r") for h in HOOKS}
    visual = {
        d.name: {h: np.load(d / f"{h}.npy") for h in HOOKS}
        for d in sorted((out / "visual").iterdir())
    }
    return text, visual


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=520_000)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = args.out or default_out()
    out.mkdir(parents=True, exist_ok=True)
    torch.set_grad_enabled(False)
    from tl_latentlens.default.loader import load_default_vlm

    vlm = load_default_vlm()
    if not (out / "visual" / "photos").is_dir():
        capture_visual_residuals(vlm, out, HOOKS)
    if not (out / "text" / f"{HOOKS[-1]}.npy").is_file():
        capture_text_residuals(vlm, out, args.tokens, HOOKS)
    (out / "info.json").write_text(json.dumps({"hooks": HOOKS, "model": vlm.name}))


if __name__ == "__main__":
    main()
