"""Which 1-byte codec could replace float16? Recall@10 of int8 variants on real residuals.

Side by side on the same vectors (SmolLM2-135M WordNet-corpus residuals of one hook, unit rows)
and the same queries (visual tokens of held-out stamps, composites, photos from the embedded
default VLM; held-out text tokens): tie-aware recall@10 of exact search over the *decoded*
vectors against exact float32 search, for

* ``per-dim midrange`` -- the bank's ``int8`` codec (per-dimension offset/scale of raw rows);
* ``per-row absmax`` -- unit rows, one scale per row;
* ``rotation + per-row`` -- unit rows times a random orthogonal matrix (spreads the residual
  stream's outlier dimensions over all dimensions), one scale per row;
* ``centred + rotation + per-row`` -- the same after subtracting the hook's mean unit row.

A codec may replace float16 only where every query set reaches recall@10 >= 0.98.

Usage::

    python benchmarks/search_data.py
    python benchmarks/bench_int8_codecs.py --hook blocks.4.hook_resid_pre --n 200000
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from bench_bank_common import machine
from search_data import HOOKS, default_out

from tl_latentlens.bank.recall import tie_aware_recall


def unit(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def top10(q: np.ndarray, x: np.ndarray) -> np.ndarray:
    sims = torch.from_numpy(np.ascontiguousarray(q)) @ torch.from_numpy(np.ascontiguousarray(x)).T
    return torch.topk(sims, 10, dim=1).indices.numpy()


def per_dim_midrange(raw: np.ndarray) -> np.ndarray:
    lo, hi = raw.min(0), raw.max(0)
    off, scale = (hi + lo) / 2, np.maximum((hi - lo) / 254, 1e-12)
    return unit(np.clip(np.rint((raw - off) / scale), -127, 127) * scale + off)


def per_row(x: np.ndarray, rotation: np.ndarray | None = None, centre: bool = False) -> np.ndarray:
    mean = x.mean(0) if centre else np.zeros(x.shape[1], np.float32)
    y = x - mean
    if rotation is not None:
        y = y @ rotation
    scale = np.maximum(np.abs(y).max(1, keepdims=True) / 127, 1e-12)
    y = np.rint(y / scale) * scale
    if rotation is not None:
        y = y @ rotation.T
    return unit(y + mean)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hook", default=HOOKS[-1])
    p.add_argument("--n", type=int, default=200_000, help="stored vectors")
    p.add_argument("--queries", type=int, default=300, help="queries per set")
    args = p.parse_args()
    torch.set_grad_enabled(False)
    print(machine())
    data = default_out()
    text = np.load(data / "text" / f"{args.hook}.npy", mmap_mode="r")
    raw = np.asarray(text[: args.n], dtype=np.float32)
    x = unit(raw)
    sets = {
        name: unit(np.load(data / "visual" / name / f"{args.hook}.npy"))[: args.queries]
        for name in ("heldout", "composites", "photos")
    }
    sets["text"] = unit(text[text.shape[0] - args.queries :])  # never stored
    rotation = np.linalg.qr(np.random.default_rng(0).standard_normal((x.shape[1],) * 2))[0]
    rotation = rotation.astype(np.float32)
    codecs = {
        "per-dim midrange (bank int8)": per_dim_midrange(raw),
        "per-row absmax": per_row(x),
        "rotation + per-row": per_row(x, rotation),
        "centred + rotation + per-row": per_row(x, rotation, centre=True),
    }
    print(f"hook {args.hook}: {x.shape[0]:,} stored vectors; {args.queries} queries per set")
    print("tie-aware recall@10 against exact float32 search")
    print(f"{'codec':32s} " + " ".join(f"{n:>11s}" for n in sets))
    truth = {}
    for name, q in sets.items():
        sims = torch.from_numpy(q) @ torch.from_numpy(x).T
        truth[name] = torch.topk(sims, 10, dim=1).values.numpy()
    for label, decoded in codecs.items():
        recalls = []
        for name, q in sets.items():
            rows = top10(q, decoded)
            got = np.einsum("qd,qkd->qk", q, x[rows])  # float32 similarity of what was found
            recalls.append(tie_aware_recall(got, truth[name]))
        print(f"{label:32s} " + " ".join(f"{r:11.4f}" for r in recalls))


if __name__ == "__main__":
    main()
