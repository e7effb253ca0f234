"""HNSW (hnswlib) vs exact search on synthetic clustered vectors; disk and RAM per million.

Targets: recall@10 >= 0.95 and >= 20x query speed-up over the exact chunked matmul.

The vectors (``--n`` x ``--d``, default 500k x 576) are Gaussian clusters of Zipf-distributed
sizes around a shared offset (residual streams have a large common component), generated chunk
by chunk from a seed and written as a bank hook would be (float16 ``.npy`` + norms), so RAM
stays bounded. Queries are held-out points of the same distribution. Also reported: float8
(e4m3 + per-vector scale) and float16 storage recall@10 against exact search over the float32
originals, and index build time.

Usage::

    python benchmarks/bench_bank_search.py                 # 500k x 576 (several minutes)
    python benchmarks/bench_bank_search.py --n 100000
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_bank_common import machine, rss_mb

from tl_latentlens.bank import codec
from tl_latentlens.bank import index as ix

CHUNK = 50_000


class Synth:
    """Deterministic chunked generator of clustered vectors."""

    def __init__(self, d: int, clusters: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.d, self.seed = d, seed
        self.offset = rng.standard_normal(d).astype(np.float32) * 1.5
        self.centers = rng.standard_normal((clusters, d)).astype(np.float32)
        p = 1.0 / np.arange(1, clusters + 1) ** 0.8
        self.p = p / p.sum()

    def chunk(self, i: int, n: int) -> np.ndarray:
        rng = np.random.default_rng((self.seed, i))
        c = rng.choice(self.centers.shape[0], n, p=self.p)
        scale = rng.uniform(0.5, 1.5, (n, 1)).astype(np.float32)  # residual norms vary
        x = self.offset + self.centers[c] + 0.7 * rng.standard_normal((n, self.d), dtype=np.float32)
        return x * scale


def exact_float32(synth: Synth, n: int, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k over the float32 originals, regenerated chunk by chunk."""
    best_v = np.full((queries.shape[0], 0), -np.inf, np.float32)
    best_i = np.zeros((queries.shape[0], 0), np.int64)
    for ci, start in enumerate(range(0, n, CHUNK)):
        x = synth.chunk(ci, min(CHUNK, n - start))
        sims = queries @ (x / np.linalg.norm(x, axis=1, keepdims=True)).T
        part = np.argpartition(-sims, k, axis=1)[:, :k]
        best_v = np.concatenate([best_v, np.take_along_axis(sims, part, 1)], 1)
        best_i = np.concatenate([best_i, part + start], 1)
        keep = np.argsort(-best_v, axis=1)[:, :k]
        best_v, best_i = np.take_along_axis(best_v, keep, 1), np.take_along_axis(best_i, keep, 1)
    return best_i


def recall(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([len(set(x) & set(y)) / len(y) for x, y in zip(a, b)]))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=500_000)
    ap.add_argument("--d", type=int, default=576)
    ap.add_argument("--clusters", type=int, default=3000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--M", type=int, default=16)
    ap.add_argument("--ef-construction", type=int, default=200)
    ap.add_argument(
        "--ef-search", default="32,64,128", help="comma-separated; 64 is the bank default"
    )
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dir", default=None, help="work directory (default: a temp dir)")
    args = ap.parse_args()
    n, d, k = args.n, args.d, args.k
    work = Path(args.dir or tempfile.mkdtemp(prefix="bench-bank-search-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}")
    print(
        f"data: {n} clustered vectors, d={d}, {args.clusters} clusters; {args.queries} held-out queries; k={k}"
    )
    try:
        synth = Synth(d, args.clusters, args.seed)
        t0 = time.perf_counter()
        f16 = np.lib.format.open_memmap(work / "vectors.npy", "w+", "<f2", (n, d))
        f8 = np.lib.format.open_memmap(work / "vectors8.npy", "w+", "u1", (n, d))
        norms16, norms8, scales8 = (np.zeros(n, np.float32) for _ in range(3))
        for ci, start in enumerate(range(0, n, CHUNK)):
            x = torch.from_numpy(synth.chunk(ci, min(CHUNK, n - start)))
            sl = slice(start, start + x.shape[0])
            f16[sl], _, norms16[sl] = codec.encode(x, "float16")
            f8[sl], scales8[sl], norms8[sl] = codec.encode(x, "float8_e4m3")
        f16.flush(), f8.flush()
        del f16, f8
        np.save(work / "norms.npy", norms16)
        print(f"generate + encode: {time.perf_counter() - t0:.1f}s")
        vec16 = np.load(work / "vectors.npy", mmap_mode="r")
        vec8 = np.load(work / "vectors8.npy", mmap_mode="r")
        q = Synth(d, args.clusters, args.seed).chunk(10**6, args.queries)  # held-out draw
        q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)

        # exact search (the bank's exact=True path), batch and single-query latency
        t0 = time.perf_counter()
        _, exact16 = ix.exact_search(vec16, None, norms16, "float16", q, k)
        t_exact_batch = time.perf_counter() - t0
        singles = min(5, args.queries)
        t0 = time.perf_counter()
        for i in range(singles):
            ix.exact_search(vec16, None, norms16, "float16", q[i : i + 1], k)
        t_exact_one = (time.perf_counter() - t0) / singles
        _, exact8 = ix.exact_search(vec8, scales8, norms8, "float8_e4m3", q, k)
        truth32 = exact_float32(synth, n, q, k)

        # index build
        t0 = time.perf_counter()
        ix.build_hnsw(
            vec16, None, "float16", work / "index.hnsw", M=args.M, ef_construction=args.ef_construction,
            seed=42, threads=args.threads, desc="hnsw build",
        )  # fmt: skip
        t_build = time.perf_counter() - t0
        gc.collect()
        before = rss_mb()
        index = ix.load_hnsw(work / "index.hnsw", d, n, args.threads)
        ram_index = rss_mb() - before

        print(f"\nindex build (M={args.M}, ef_construction={args.ef_construction}, {args.threads} threads): "
              f"{t_build:.1f}s = {n / t_build:,.0f} vectors/s")  # fmt: skip
        print(
            f"exact search: {args.queries}-query batch {t_exact_batch:.2f}s; single query {t_exact_one * 1e3:.1f} ms"
        )
        for ef in [int(e) for e in args.ef_search.split(",")]:
            t0 = time.perf_counter()
            _, approx = ix.hnsw_search(index, q, k, ef, args.threads)
            t_batch = time.perf_counter() - t0
            t0 = time.perf_counter()
            for i in range(args.queries):
                ix.hnsw_search(index, q[i : i + 1], k, ef, 1)
            t_one = (time.perf_counter() - t0) / args.queries
            print(f"hnsw ef_search={ef:4d}: recall@{k} {recall(approx, exact16):.4f} (vs exact float16), "
                  f"{recall(approx, truth32):.4f} (vs exact float32); single query {t_one * 1e3:.3f} ms -> "
                  f"SPEED-UP {t_exact_one / t_one:,.0f}x; batch {t_batch * 1e3:.1f} ms -> "
                  f"{t_exact_batch / t_batch:,.0f}x")  # fmt: skip
        print(f"storage recall@{k} (exact search): float16 vs float32 {recall(exact16, truth32):.4f}; "
              f"float8_e4m3 vs float16 {recall(exact8, exact16):.4f}; float8_e4m3 vs float32 {recall(exact8, truth32):.4f}")  # fmt: skip

        per_m = 1e6 / n
        size = {
            name: (work / name).stat().st_size
            for name in ("vectors.npy", "vectors8.npy", "index.hnsw")
        }
        norms_b = 4 * n
        f16_disk = size["vectors.npy"] + norms_b + size["index.hnsw"]
        f8_disk = size["vectors8.npy"] + 2 * norms_b + size["index.hnsw"]
        pt32 = 4 * d * n + 1024  # torch.save of a float32 [n, d] tensor (vectors only)
        mib = 2**20
        print(
            f"\nper million stored vectors per hook (d={d}); entries table adds 12 B/vector, shared by all hooks:"
        )
        print(f"  float16 bank: disk {f16_disk * per_m / mib:,.0f} MiB (vectors {size['vectors.npy'] * per_m / mib:,.0f} + norms "
              f"{norms_b * per_m / mib:,.0f} + hnsw index {size['index.hnsw'] * per_m / mib:,.0f}); "
              f"RAM to search: hnsw {ram_index * per_m:,.0f} MiB (index held in memory; vectors stay memory-mapped), "
              f"exact ~{ix.CHUNK_ROWS * d * 8 / mib:,.0f} MiB working set")  # fmt: skip
        print(
            f"  float8 bank:  disk {f8_disk * per_m / mib:,.0f} MiB (vectors {size['vectors8.npy'] * per_m / mib:,.0f} + norms/scales + same index)"
        )
        print(f"  float32 .pt (torch.save, vectors only): disk {pt32 * per_m / mib:,.0f} MiB, RAM {pt32 * per_m / mib:,.0f} MiB "
              "(whole tensor loaded)")  # fmt: skip
        print(f"  RATIO disk float16 bank / float32 .pt: {f16_disk / pt32:.2f}x (vectors alone {size['vectors.npy'] / pt32:.2f}x); "
              f"RAM hnsw / float32 .pt: {ram_index * mib / pt32:.2f}x")  # fmt: skip
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
