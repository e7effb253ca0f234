"""Throw-away diagnostic (issue 12, round 4 'Next 1'): per-layer LatentLens on validation
composites with plain cosine vs cosine after centring (each bank hook's mean stored vector
subtracted from the bank and from the visual tokens searched against it), with the visual
tokens' own mean subtracted (qcentred), or both (bothcentred).

Usage (numbers in s_centring.json; TABLE_BANK from connector_study --build-bank)::

    python centring_diagnostic.py CONNECTOR_DIR OUT plain|centred|qcentred|bothcentred TABLE_BANK
"""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from tl_latentlens import hooks as hk
from tl_latentlens.apps.connector_study import summarise
from tl_latentlens.bank import Bank
from tl_latentlens.default.loader import load_connector_vlm
from tl_latentlens.evaluate import EvalConfig, MaskJudge, run_study
from tl_latentlens.evaluate.default_set import heldout_composites
from tl_latentlens.evaluate.hubness import hubness
from tl_latentlens.lens import LatentLens

torch.set_grad_enabled(False)
conn, out, mode = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
src = Path(sys.argv[4])
vlm = load_connector_vlm(conn)
means = {}
if mode == "centred":
    dst = src.with_name(src.name + "_centred")
    if not dst.exists():
        tmp = dst.with_name(dst.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        for hdir in (tmp / "hooks").iterdir():
            v = np.load(hdir / "vectors.npy").astype(np.float64)
            mu = v.mean(0)
            c = (v - mu).astype(np.float16)
            np.save(hdir / "vectors.npy", c)
            np.save(
                hdir / "norms.npy", np.linalg.norm(c.astype(np.float32), axis=1).astype(np.float32)
            )
            np.save(hdir / "mean.npy", mu.astype(np.float32))
        tmp.rename(dst)
    bank = Bank.open(dst, vlm, verify="size")
    for hdir in (dst / "hooks").iterdir():
        means[hdir.name] = torch.from_numpy(np.load(hdir / "mean.npy"))
else:
    bank = Bank.open(src, vlm)
if mode in ("qcentred", "bothcentred"):
    # the visual tokens' own mean per layer, from composites of *test* objects (not the
    # validation images judged here)
    from tl_latentlens.capture import capture_image

    vis_hooks = [hk.hook_for_layer(hk.layer_of(h), vlm.n_layers) for h in bank.hooks]
    acc = {h: [] for h in vis_hooks}
    for im in heldout_composites(40, part="test"):
        acts = capture_image(vlm, im.image, None, vis_hooks)
        for h in vis_hooks:
            acc[h].append(acts.residuals[h])
    qmeans = {hk.layer_of(h): torch.cat(v).mean(0) for h, v in acc.items()}
    if mode == "bothcentred":
        dst = src.with_name(src.name + "_centred")
        bank = Bank.open(dst, vlm, verify="size")
    means = {}
real = LatentLens._explain


def centred_explain(self, residuals, *a, **kw):
    if mode in ("qcentred", "bothcentred"):
        residuals = {h: r - qmeans[hk.layer_of(h)].to(r.dtype) for h, r in residuals.items()}
    elif means:
        shifted = {}
        for h, r in residuals.items():
            key = next(k for k in means if hk.layer_of(k) == hk.layer_of(h))
            shifted[h] = r - means[key].to(r.dtype)
        residuals = shifted
    return real(self, residuals, *a, **kw)


LatentLens._explain = centred_explain
images = heldout_composites(40, part="validation")
cfg = EvalConfig(
    layers=(0, 2, 8, 16, 24),
    k=5,
    patches_per_layer=150,
    method="exact",
    count_kinds=("concrete",),
    plots=False,
    save_explanations=False,
    per_layer=True,
)
res = run_study(LatentLens(vlm, bank), images, MaskJudge(), cfg, out, resume=True)
hub = hubness(out / "judgements.jsonl")
s = summarise(res.table, hub)
(out / "summary.json").write_text(json.dumps(s, indent=1))
print(mode, conn, "mean", s["mean_strict"])
for v in s["layers"]:
    print(v["layer"], v["latent"]["strict"], v["latent"]["related"], v["hub_top5_share"], v["hubs"])
