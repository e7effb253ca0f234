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

Then the *bank's* codecs, as a build writes them (``finalize_hook``: distinct rows, codec
parameter files, norms) and as the bank searches them (``exact_top_k``; for ``int8_rotated``
and ``int8_pca`` in their search spaces): ``float16``, legacy ``int8``, ``int8_rotated`` and
``int8_pca`` (``--pca`` principal directions, one bank per value), with the same recall against
exact float32 search over the same distinct vectors, disk bytes per stored vector (every file
of the hook folder: vectors, norms, occurrence table, codec parameters) and the finalize time.

Usage::

    python benchmarks/search_data.py
    python benchmarks/bench_int8_codecs.py --hook blocks.4.hook_resid_pre --n 200000
    python benchmarks/bench_int8_codecs.py --n 500000 --skip-inline
    python benchmarks/bench_int8_codecs.py --n 500000 --skip-inline \\
        --codecs float16,int8_rotated,int8_pca --pca 64,96,128

Measured (2 shared cores, 1 thread; ``--n 500000 --skip-inline --queries 1000 --codecs
float16,int8_rotated,int8_pca --pca 64,96,128``; 457,730 distinct vectors of 500k entries; the
photos set has 392 queries)::

    blocks.4      heldout composites photos  text   B/vector  finalize  search (3,392 q)
    float16        1.0000   1.0000   1.0000  1.0000   1168.4     2.2s    24.4s
    int8_rotated   0.9856   0.9791   0.9855  0.9918    603.3    12.4s    20.1s
    int8_pca P=64  0.9908   0.9841   0.9893  0.9974    731.6    15.5s    22.7s
    int8_pca P=96  0.9907   0.9870   0.9918  0.9973    795.8    16.4s    23.2s
    int8_pca P=128 0.9905   0.9889   0.9929  0.9980    859.9    18.5s    24.8s
    blocks.2 (--pca 64,96): int8_rotated 0.9849 0.9803 0.9837 0.9922;
      P=64 0.9890 0.9854 0.9901 0.9969; P=96 0.9901 0.9880 0.9926 0.9977
    blocks.0 (23,434 distinct): int8_rotated 0.9853 0.9865 0.9898 0.9906;
      P=64 0.9916 0.9892 0.9911 0.9983; P=96 0.9875 0.9874 0.9895 0.9987
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_bank_common import dir_size, machine
from search_data import HOOKS, default_out

from tl_latentlens.bank.build.finalize import finalize_hook, remove_raw
from tl_latentlens.bank.format import codec
from tl_latentlens.bank.format.vectors import HookVectors
from tl_latentlens.bank.search.exact import exact_top_k
from tl_latentlens.bank.search.recall import tie_aware_recall

BANK_CODECS = ("float16", "int8", "int8_rotated", "int8_pca")


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
    p.add_argument("--skip-inline", action="store_true", help="only the bank's codecs")
    p.add_argument(
        "--codecs",
        default=",".join(BANK_CODECS),
        help="bank codecs to measure, comma-separated (float16, the reference, always runs)",
    )
    p.add_argument(
        "--pca",
        default=str(codec.PCA_COMPONENTS),
        help="int8_pca principal directions, comma-separated (one bank each)",
    )
    args = p.parse_args()
    bad = set(args.codecs.split(",")) - set(BANK_CODECS)
    if bad:
        p.error(f"unknown --codecs {sorted(bad)}; known: {', '.join(BANK_CODECS)}")
    variants = [("float16", "float16", None)]
    for name in args.codecs.split(","):
        if name == "int8_pca":
            variants += [(f"int8_pca P={k}", name, int(k)) for k in args.pca.split(",")]
        elif name != "float16":
            variants.append((name, name, None))
    torch.set_grad_enabled(False)
    print(machine())
    data = default_out()
    text = np.load(data / "text" / f"{args.hook}.npy", mmap_mode="r")
    sets = {
        name: unit(np.load(data / "visual" / name / f"{args.hook}.npy"))[: args.queries]
        for name in ("heldout", "composites", "photos")
    }
    sets["text"] = unit(text[text.shape[0] - args.queries :])  # never stored
    print(f"hook {args.hook}: {args.n:,} stored vectors; {args.queries} queries per set")
    if not args.skip_inline:
        raw = np.asarray(text[: args.n], dtype=np.float32)
        inline(raw, unit(raw), sets)
        del raw
    bank_codecs(text, args.n, sets, data, variants)


def inline(raw: np.ndarray, x: np.ndarray, sets: dict[str, np.ndarray]) -> None:
    """The codec formulas applied in RAM to all rows (duplicates included)."""
    rotation = np.linalg.qr(np.random.default_rng(0).standard_normal((x.shape[1],) * 2))[0]
    rotation = rotation.astype(np.float32)
    codecs = {
        "per-dim midrange (bank int8)": per_dim_midrange(raw),
        "per-row absmax": per_row(x),
        "rotation + per-row": per_row(x, rotation),
        "centred + rotation + per-row": per_row(x, rotation, centre=True),
    }
    print("\n== inline formulas: tie-aware recall@10 against exact float32 search ==")
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


def bank_codecs(
    text: np.ndarray,
    n: int,
    sets: dict[str, np.ndarray],
    data: Path,
    variants: list[tuple[str, str, int | None]],
) -> None:
    """The bank's own codecs: written by ``finalize_hook``, searched by ``exact_top_k``;
    ``variants`` lists ``(label, codec, int8_pca directions)``, float16 (the reference) first."""
    print("\n== the bank's codecs (finalize_hook + exact_top_k over the distinct vectors) ==")
    with tempfile.TemporaryDirectory(dir=data) as tmp:
        hooks: dict[str, HookVectors] = {}
        seconds: dict[str, float] = {}
        folders: dict[str, Path] = {}
        for i, (label, name, n_components) in enumerate(variants):
            folder = folders[label] = Path(tmp) / str(i)
            folder.mkdir()
            raw = np.lib.format.open_memmap(
                folder / "vectors.npy", mode="w+", dtype="<f2", shape=(n, text.shape[1])
            )
            for s in range(0, n, 65536):  # the encoding pass writes float16 raw rows
                raw[s : min(s + 65536, n)] = text[s : min(s + 65536, n)]
            raw.flush()
            del raw
            t0 = time.perf_counter()
            finalize_hook(folder, name, n_components)
            seconds[label] = time.perf_counter() - t0
            remove_raw(folder)
            hooks[label] = HookVectors.from_folder(folder, name)
        # exact float32 search over the same distinct vectors (the float16 raw rows, widened)
        ref = hooks["float16"].decode(np.arange(hooks["float16"].n), unit=True)
        n_vec = ref.shape[0]
        truth = {name: torch.topk(torch.from_numpy(q) @ torch.from_numpy(ref).T, 10, dim=1)
                 for name, q in sets.items()}  # fmt: skip
        print(f"{n:,} entries -> {n_vec:,} distinct stored vectors; tie-aware recall@10 "
              "against exact float32 search; disk bytes per stored vector (whole hook folder: "
              "vectors, norms, occurrence table, codec parameters); finalize seconds")  # fmt: skip
        print(f"{'bank codec':16s} " + " ".join(f"{m:>11s}" for m in sets)
              + f" {'B/vector':>9s} {'B/entry':>8s} {'finalize':>9s} {'search':>7s}")  # fmt: skip
        for label, hv in hooks.items():
            assert hv.n == n_vec
            recalls, t_search = [], 0.0
            for name, q in sets.items():
                t0 = time.perf_counter()
                _, rows = exact_top_k(hv, q, 10)
                t_search += time.perf_counter() - t0
                got = np.einsum("qd,qkd->qk", q, ref[rows])
                recalls.append(tie_aware_recall(got, truth[name].values.numpy()))
            size = dir_size(folders[label])
            print(f"{label:16s} " + " ".join(f"{r:11.4f}" for r in recalls)
                  + f" {size / n_vec:9.1f} {size / n:8.1f} {seconds[label]:8.1f}s"
                  + f" {t_search:6.1f}s")  # fmt: skip
        print("official latentlens format (float16 + metadata, measured earlier): "
              "1,205 bytes per vector")  # fmt: skip


if __name__ == "__main__":
    main()
