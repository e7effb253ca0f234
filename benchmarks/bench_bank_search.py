"""Bank search on the real workload: SmolLM2-135M text residuals, visual-token queries.

Everything is measured side by side in one run on this machine (ratios, not absolute claims):

* exact search: an all-in-RAM float32 matmul (what the official ``latentlens`` package does)
  vs the bank's exact search (resident decoded copy; streamed from float16 / int8_rotated /
  legacy int8 storage) and the storage codecs' recall@10 against exact float32 search;
* routes (query-sample routing + exact re-rank, the bank's approximate path): tie-aware
  recall@10 against exact float32 search for visual queries of held-out stamps, of images
  unlike the samples (composites, photos) and for held-out text tokens, speed-up over the
  all-in-RAM float32 matmul at batch 1 and 49, and a frontier over ``probe`` x ``list_len``;
* the old format (hnswlib over every stored float32 vector, M=16) on the same data;
* disk per million vectors and RSS while searching;
* ``--scale N``: a bank of N vectors (real residuals plus noise, so the covariance is real)
  stored as ``--scale-codec`` (default ``int8_rotated``), RSS and bytes per vector while
  searching, and the projected RAM of a paper-size 7B bank.

Data: ``benchmarks/search_data.py`` (run it first; cached). hnswlib is the build installed by
``scripts/setup.sh`` (``HNSWLIB_NO_NATIVE=1``: portable, 1.3-1.6x slower than native).

Usage::

    python benchmarks/search_data.py
    python benchmarks/bench_bank_search.py --hook blocks.4.hook_resid_pre
    python benchmarks/bench_bank_search.py --only-exact
    python benchmarks/bench_bank_search.py --scale 2000000 --only-scale
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_bank_common import machine
from search_data import HOOKS, default_out

from tl_latentlens.bank.build.finalize import finalize_hook, remove_raw
from tl_latentlens.bank.format import codec
from tl_latentlens.bank.format.vectors import HookVectors
from tl_latentlens.bank.search.calibrate import calibrate_hook, unit_rows
from tl_latentlens.bank.search.dispatch import HookSearcher
from tl_latentlens.bank.search.exact import exact_top_k
from tl_latentlens.bank.search.recall import tie_aware_recall
from tl_latentlens.bank.search.routes import RouteParams, Routes


def rss_mb(kind: str = "VmRSS") -> float:
    """Resident memory in MiB: ``VmRSS`` (all), ``RssAnon`` (the process's own memory) or
    ``RssFile`` (pages of memory-mapped files: page cache the kernel can drop at any time)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(kind + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def best_of(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def write_hook(folder: Path, rows: np.ndarray, dtype: str) -> HookVectors:
    folder.mkdir(parents=True, exist_ok=True)
    raw = np.lib.format.open_memmap(
        folder / "vectors.npy", mode="w+", dtype=np.dtype(codec.numpy_dtype(codec.raw_codec(dtype))),
        shape=rows.shape,
    )  # fmt: skip
    for s in range(0, rows.shape[0], 65536):
        raw[s : s + 65536] = rows[s : s + 65536]
    raw.flush()
    del raw
    finalize_hook(folder, dtype)
    remove_raw(folder)
    return HookVectors.from_folder(folder, dtype)


def disk_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


class Float32Matmul:
    """The official package's way: every vector normalised, float32, in RAM, one matmul."""

    def __init__(self, hv: HookVectors) -> None:
        self.x = torch.from_numpy(hv.decode(np.arange(hv.n), unit=True))

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        out = []
        for s in range(0, q.shape[0], 256):  # bounded [256, n] similarity blocks
            v, i = torch.topk(torch.from_numpy(q[s : s + 256]) @ self.x.T, k, dim=1)
            out.append((v.numpy(), i.numpy()))
        return np.concatenate([o[0] for o in out]), np.concatenate([o[1] for o in out])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hook", default=HOOKS[-1])
    p.add_argument("--n", type=int, default=500_000, help="stored vectors (the rest: queries)")
    p.add_argument("--data", type=Path, default=None)
    p.add_argument("--skip-old", action="store_true", help="skip the old hnswlib format")
    p.add_argument("--scale", type=int, default=0, help="also run a bank of this many vectors")
    p.add_argument("--samples", type=int, default=12_000, help="visual routing samples")
    p.add_argument("--only-scale", action="store_true", help="run only the --scale part")
    p.add_argument(
        "--only-exact", action="store_true", help="exact search, storage recall and disk only"
    )
    p.add_argument("--scale-codec", default="int8_rotated", choices=sorted(codec.CODECS))
    p.add_argument("--search-child", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.search_child is not None:
        search_child(args.search_child)
        return
    torch.set_grad_enabled(False)
    data = args.data or default_out()
    print(machine())
    print(f"threads: torch {torch.get_num_threads()}; hnswlib HNSWLIB_NO_NATIVE build")
    text = np.load(data / "text" / f"{args.hook}.npy", mmap_mode="r")
    n = min(args.n, text.shape[0] - 2000)
    vis = {d.name: np.load(d / f"{args.hook}.npy") for d in sorted((data / "visual").iterdir())}
    # cross-layer samples: visual tokens of every captured layer searched against this hook
    train = np.concatenate([np.load(data / "visual" / "train" / f"{h}.npy") for h in HOOKS])
    rng = np.random.default_rng(0)
    if train.shape[0] > args.samples:
        train = train[rng.choice(train.shape[0], args.samples, replace=False)]
    held = {
        "heldout-stamps": vis["heldout"],
        "composites": vis["composites"],
        "photos": vis["photos"],
        "text-heldout": np.asarray(text[n : n + 1000], dtype=np.float32),
    }
    # held-out text tokens for calibration (disjoint from the measured ones)
    held["calibration-text"] = np.asarray(text[n + 1000 : n + 2000], dtype=np.float32)
    print(f"hook {args.hook}: {n:,} stored text tokens; samples {train.shape[0]:,}; "
          + ", ".join(f"{k} {v.shape[0]}" for k, v in held.items()))  # fmt: skip
    with tempfile.TemporaryDirectory(dir=data) as tmp:
        if not args.only_scale:
            run(Path(tmp), np.asarray(text[:n]), train, held, args)
        if args.scale:
            scale_run(Path(tmp), text, train, held, args)


def run(tmp: Path, rows: np.ndarray, train, held, args) -> None:
    t0 = time.perf_counter()
    hv = write_hook(tmp / "f16", rows, "float16")
    t_fin = time.perf_counter() - t0
    print(f"\nfinalize (dedup + write) float16: {t_fin:.1f} s; {rows.shape[0]:,} rows -> "
          f"{hv.n:,} distinct vectors")  # fmt: skip
    hv8 = write_hook(tmp / "i8", rows, "int8")
    hvr = write_hook(tmp / "i8r", rows, "int8_rotated")
    ref = Float32Matmul(hv)
    queries = {name: unit_rows(q) for name, q in held.items() if name != "calibration-text"}
    truth = {name: ref.search(q, 10) for name, q in queries.items()}

    print("\n== exact search, 49 queries (one image), best of 3 ==")
    q49 = queries["heldout-stamps"][:49]
    t_ref = best_of(lambda: ref.search(q49, 10))
    t_stream16 = best_of(lambda: exact_top_k(hv, q49, 10), 2)
    t_stream8 = best_of(lambda: exact_top_k(hv8, q49, 10), 2)
    t_streamr = best_of(lambda: exact_top_k(hvr, q49, 10), 2)
    hv.resident()
    t_res = best_of(lambda: exact_top_k(hv, q49, 10))
    hvr.resident()
    t_resr = best_of(lambda: exact_top_k(hvr, q49, 10))
    hvr.drop_resident()
    print(f"official-style all-in-RAM float32 matmul: {t_ref * 1e3:8.1f} ms  (1.00x)")
    print(f"bank exact, resident float32 (distinct):  {t_res * 1e3:8.1f} ms  "
          f"({t_ref / t_res:.2f}x the official speed)")  # fmt: skip
    print(f"bank exact, streamed from float16:        {t_stream16 * 1e3:8.1f} ms  "
          f"({t_ref / t_stream16:.2f}x)")  # fmt: skip
    print(f"bank exact, streamed from int8_rotated:   {t_streamr * 1e3:8.1f} ms  "
          f"({t_ref / t_streamr:.2f}x)")  # fmt: skip
    print(f"bank exact, resident int8_rotated (float32 rotated rows, width d+1): "
          f"{t_resr * 1e3:8.1f} ms  ({t_ref / t_resr:.2f}x)")  # fmt: skip
    print(f"bank exact, streamed from legacy int8:    {t_stream8 * 1e3:8.1f} ms  "
          f"({t_ref / t_stream8:.2f}x)")  # fmt: skip
    for name, q in queries.items():
        q = q[:500]
        got = {label: ref_sims(ref, q, batched_rows(h, q))
               for label, h in (("float16", hv), ("int8_rotated", hvr), ("int8", hv8))}  # fmt: skip
        print(f"  storage recall@10 vs float32 exact, {name:15s}: "
              + "  ".join(f"{label} {tie_aware_recall(g, truth[name][0][:500]):.4f}"
                          for label, g in got.items()))  # fmt: skip
    hv.drop_resident()
    if args.only_exact:
        per = 1e6 / hv.n
        print("\n== disk per million stored vectors (vectors, norms, occurrences, codec) ==")
        for label in ("f16", "i8r", "i8"):
            print(f"{label:4s}: {disk_mb(tmp / label) * per:,.0f} MiB")
        return

    print("\n== routes (calibrated on training-stamp visual tokens of every layer) ==")
    t0 = time.perf_counter()
    cal = calibrate_hook(
        tmp / "f16", "float16", train,
        {"text": held["calibration-text"], "visual": held["heldout-stamps"][::2]},
        list_len=200, probes=(2, 4, 8, 16, 32), progress=False,
    )  # fmt: skip
    print(f"calibration {time.perf_counter() - t0:.0f} s (lists of {cal.n_samples:,} samples; "
          f"chosen probe {cal.params.probe}, exact-fallback threshold "
          f"{cal.params.min_sample_similarity:.3f}); proven: {cal.proven}")  # fmt: skip
    rss0 = rss_mb()
    routes = Routes(tmp / "f16", hv.d, threads=torch.get_num_threads())
    searcher = HookSearcher(hv, routes, cal.params, cal.recall)
    print(
        "frontier: probe x list_len -> tie-aware recall@10 per query set, ms per 49 queries, "
        "speed-up vs all-in-RAM float32 (batch 49 / batch 1), exact fallbacks"
    )
    for list_len, probe in ((100, 8), (200, 2), (200, 3), (200, 4), (200, 8), (200, 16)):
        params = RouteParams(probe, list_len, cal.params.min_sample_similarity)
        recalls, falls = [], []
        for name, q in queries.items():
            hits = searcher.search(q, 10, "routes", route_params=params, resident=True)
            recalls.append(tie_aware_recall(hits.sims, truth[name][0]))
            falls.append(hits.n_exact_fallback)
        t49 = best_of(
            lambda p=params: searcher.search(q49, 10, "routes", route_params=p, resident=True)
        )
        t1 = best_of(
            lambda p=params: [searcher.search(q49[i : i + 1], 10, "routes", route_params=p, resident=True)
                     for i in range(10)], 1,
        ) / 10  # fmt: skip
        t_ref1 = best_of(lambda: [ref.search(q49[i : i + 1], 10) for i in range(10)], 1) / 10
        print(f"  probe {probe:2d} L {list_len}: "
              + " ".join(f"{n.split('-')[0]} {r:.4f}" for n, r in zip(queries, recalls))
              + f" | {t49 * 1e3:6.1f} ms | {t_ref / t49:5.1f}x / {t_ref1 / t1:5.1f}x"
              + f" | fallback {sum(falls)}")  # fmt: skip
    print(f"RSS growth for routes + searching: {rss_mb() - rss0:.0f} MiB "
          f"(routes: {cal.n_samples:,} samples)")  # fmt: skip

    print("\n== disk per million stored vectors (index included) ==")
    per = 1e6 / hv.n
    print(f"float16 + routes: {disk_mb(tmp / 'f16') * per:,.0f} MiB  "
          f"(vectors+norms+occurrences {disk_mb(tmp / 'f16') * per - disk_mb(tmp / 'f16' / 'routes') * per:,.0f}; "
          f"routes are per bank, not per vector: {disk_mb(tmp / 'f16' / 'routes'):.0f} MiB)")  # fmt: skip
    print(f"int8_rotated:     {disk_mb(tmp / 'i8r') * per:,.0f} MiB")
    print(f"legacy int8:      {disk_mb(tmp / 'i8') * per:,.0f} MiB")
    print("official latentlens format (float16 + metadata, measured earlier): 1,205 MB")

    if not args.skip_old:
        old_format(tmp, hv, queries, truth, q49, t_ref)


def batched_rows(hv: HookVectors, q: np.ndarray) -> np.ndarray:
    return np.concatenate([exact_top_k(hv, q[s : s + 256], 10)[1] for s in range(0, len(q), 256)])


def ref_sims(ref: Float32Matmul, q: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """float32 similarities of the rows another search returned (for tie-aware recall)."""
    x = ref.x.numpy()
    return np.einsum("qd,qkd->qk", q, x[rows])


def old_format(tmp: Path, hv, queries, truth, q49, t_ref) -> None:
    import hnswlib

    print("\n== old format: hnswlib over every float32 vector (M=16, ef_construction=100) ==")
    x = hv.decode(np.arange(hv.n), unit=True)
    t0 = time.perf_counter()
    index = hnswlib.Index(space="ip", dim=x.shape[1])
    index.init_index(max_elements=x.shape[0], M=16, ef_construction=100, random_seed=42)
    index.add_items(x, np.arange(x.shape[0]), num_threads=torch.get_num_threads())
    print(f"build {time.perf_counter() - t0:.0f} s")
    path = tmp / "old.hnsw"
    index.save_index(str(path))
    print(f"index file {path.stat().st_size / 2**20 * 1e6 / hv.n:,.0f} MiB per million "
          "(plus the float16 vectors)")  # fmt: skip
    for ef in (64, 256, 1024):
        index.set_ef(ef)
        rec = []
        for name, q in queries.items():
            labels, dist = index.knn_query(q, k=10)
            rec.append(tie_aware_recall(1.0 - dist, truth[name][0]))
        t = best_of(lambda idx=index: idx.knn_query(q49, k=10))
        print(f"  ef {ef:4d}: " + " ".join(f"{n.split('-')[0]} {r:.4f}" for n, r in zip(queries, rec))
              + f" | {t * 1e3:6.1f} ms / 49 | {t_ref / t:5.1f}x")  # fmt: skip
    del index, x
    gc.collect()


def scale_run(tmp: Path, text, train, held, args) -> None:
    """A bank of ``--scale`` vectors: real residuals plus noise (real covariance)."""
    n = args.scale
    dtype = args.scale_codec
    print(f"\n== scale: {n:,} vectors (real residuals + 10 % noise), {dtype} storage ==")
    rng = np.random.default_rng(1)
    folder = tmp / "scale"
    folder.mkdir()
    raw = np.lib.format.open_memmap(
        folder / "vectors.npy", mode="w+", dtype="<f2", shape=(n, text.shape[1])
    )
    src = text.shape[0] - 2000
    for s in range(0, n, 100_000):
        m = min(100_000, n - s)
        base = np.asarray(text[rng.integers(0, src, m)], dtype=np.float32)
        raw[s : s + m] = base + rng.standard_normal(base.shape).astype(np.float32) * (
            0.1 * base.std(axis=0)
        )
    raw.flush()
    del raw
    t0 = time.perf_counter()
    finalize_hook(folder, dtype)
    remove_raw(folder)
    print(f"finalize {time.perf_counter() - t0:.0f} s; disk {disk_mb(folder):,.0f} MiB "
          f"({disk_mb(folder) * 2**20 / n:.0f} bytes per entry)")  # fmt: skip
    hv = HookVectors.from_folder(folder, dtype)
    cal = calibrate_hook(
        folder, dtype, train[: min(4000, len(train))],
        {"heldout-stamps": held["heldout-stamps"], "photos": held["photos"]},
        list_len=200, probes=(16, 32), progress=False,
    )  # fmt: skip
    # RAM to search, measured in a fresh process (this one's allocator holds what the build
    # and calibration freed, which would hide growth): its own memory after the imports, then
    # after opening the hook and its routes and searching every held-out visual query.
    qfile = folder / "queries.npy"
    np.save(qfile, unit_rows(np.concatenate([held["heldout-stamps"], held["photos"]])))
    (folder / "params.json").write_text(json.dumps({**cal.params.to_dict(), "codec": dtype}))
    out = subprocess.run(
        [sys.executable, __file__, "--search-child", str(folder)],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    child = json.loads(out.strip().splitlines()[-1])
    grown = child["anon_after"] - child["anon_before"]
    print(f"recall@10 {cal.recall}; a fresh process searching {child['queries']} visual "
          f"queries in batches of 49 ({child['fallback']} sent to exact search, which streams "
          f"the memory-mapped hook): its own memory (RssAnon) grew {grown:.0f} MiB = "
          f"{grown * 2**20 / hv.n:.1f} bytes per stored vector (peak while searching "
          f"{child['anon_peak'] - child['anon_before']:.0f} MiB); mapped file pages (RssFile, "
          f"page cache the kernel drops under pressure) {child['file_after']:.0f} MiB")  # fmt: skip
    d_ratio = 4096 / text.shape[1]
    routes_mb = disk_mb(folder / "routes")
    paper = 300_000 * 8
    peak = child["anon_peak"] - child["anon_before"]  # conservative: transient buffers too
    proj = max(peak - routes_mb, 0) * 2**20 / hv.n * paper * d_ratio + routes_mb * d_ratio * 8
    print(f"projected RAM to search a paper-size 7B bank (300k vectors x 8 layers, d=4096, "
          f"routes per layer): {proj / 2**30:.2f} GiB of the process's own memory at its peak "
          "(it grows with the routes and the candidate rows decoded, not with the bank; the "
          "bank's files are memory-mapped)")  # fmt: skip


def search_child(folder: Path) -> None:
    """The ``--scale`` run's search, in a fresh process: prints its memory as JSON."""
    torch.set_grad_enabled(False)
    before = rss_mb("RssAnon")
    saved = json.loads((folder / "params.json").read_text())
    hv = HookVectors.from_folder(folder, saved.pop("codec"))
    params = RouteParams(**saved)
    searcher = HookSearcher(hv, Routes(folder, hv.d), params, {"visual": 1.0})
    q = np.load(folder / "queries.npy")
    fallback, peak = 0, before
    for s in range(0, q.shape[0], 49):
        fallback += searcher.search(q[s : s + 49], 10, "routes").n_exact_fallback
        peak = max(peak, rss_mb("RssAnon"))
    print(json.dumps({
        "anon_before": before, "anon_after": rss_mb("RssAnon"), "anon_peak": peak,
        "file_after": rss_mb("RssFile"), "queries": int(q.shape[0]), "fallback": fallback,
    }))  # fmt: skip


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
