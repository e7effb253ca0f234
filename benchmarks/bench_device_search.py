"""Exact search of one hook on a device: kept there, streamed there, against the CPU.

A synthetic hook of residual-like rows (clustered, with a shared offset; ``--n`` x 576, the
bank's float16 codec unless ``--codec``) is searched for 49 and 490 unit queries (k=10) by
:func:`tl_latentlens.bank.search.exact.exact_top_k`:

* ``cpu resident``: numpy's BLAS over the decoded copy in RAM (the CPU path, the reference);
* ``device kept``: the hook kept on the device (float16 stays float16); first call (upload
  included) and the best of later calls;
* ``device streamed``: the hook staged in pinned memory and copied on a side stream, double
  buffered (:func:`~tl_latentlens.bank.search.exact.stream_rows`);
* ``device pageable``: what streaming did before, for comparison: each chunk decoded to float32
  in numpy and copied synchronously from pageable memory.

Every device answer is checked against the CPU's: identical rows (ties included) except where
the CPU's own similarities are within float32 rounding of one another, similarities to 1e-5.
On a machine without CUDA the same code runs on the CPU's torch path at ``--n 20000``.

Usage::

    python benchmarks/bench_device_search.py                 # 500k rows on CUDA
    python benchmarks/bench_device_search.py --n 20000 --codec int8_pca
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_bank_common import machine

from tl_latentlens.bank.build.finalize import finalize_hook
from tl_latentlens.bank.format import codec as cd
from tl_latentlens.bank.format.vectors import HookVectors
from tl_latentlens.bank.search.exact import block_top_k, exact_top_k, top_k_sorted

K = 10
D = 576


def synthetic_hook(folder: Path, n: int, codec: str, seed: int = 0) -> HookVectors:
    """``n`` clustered residual-like rows written and finalized as a bank hook."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((256, D)).astype(np.float32) * 2
    offset = rng.standard_normal(D).astype(np.float32) * 4
    folder.mkdir(parents=True, exist_ok=True)
    parts = []
    for start in range(0, n, 65536):
        m = min(65536, n - start)
        x = offset + centres[rng.integers(0, 256, m)] + rng.standard_normal((m, D), np.float32)
        parts.append(cd.encode(torch.from_numpy(x), cd.raw_codec(codec))[0])
    np.save(folder / "vectors.npy", np.concatenate(parts))
    finalize_hook(folder, codec)
    return HookVectors.from_folder(folder, codec)


def queries(m: int, seed: int = 1) -> np.ndarray:
    q = np.random.default_rng(seed).standard_normal((m, D)).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def pageable_search(hv: HookVectors, q: np.ndarray, dev: torch.device, chunk_rows: int = 32768):
    """The earlier streaming path: float32 chunks decoded in numpy, copied synchronously."""
    qt = torch.from_numpy(hv.to_search(q)).to(dev)
    best_s = torch.empty((len(q), 0), device=dev)
    best_r = torch.empty((len(q), 0), dtype=torch.long, device=dev)
    for start, block in hv.search_chunks(chunk_rows):
        v, i = block_top_k(qt @ torch.from_numpy(block).to(dev).T, K)
        best_s, best_r = torch.cat([best_s, v], 1), torch.cat([best_r, i + start], 1)
    s, r = top_k_sorted(best_s, best_r, K)
    return s.cpu().numpy(), r.cpu().numpy()


def timed(fn, reps: int) -> tuple[float, float, object]:
    """``(first call s, best later call s, result)``."""
    t0 = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t0
    best = first
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return first, best, out


def same_answer(cpu, dev_out, atol: float = 1e-5) -> str:
    """``"same"``, or how the device answer differs from the CPU's (``cpu``: k+1 places)."""
    (cs, cr), (gs, gr) = cpu, dev_out
    if not np.allclose(gs, cs[:, :K], rtol=0, atol=atol):
        return f"similarities differ by {np.abs(gs - cs[:, :K]).max():.2e}"
    gaps = np.abs(np.diff(cs, axis=1)) <= 2 * atol
    near = gaps[:, :K].copy()
    near[:, 1:] |= gaps[:, : K - 1]
    bad = (cr[:, :K] != gr) & ~near
    return "same" if not bad.any() else f"{int(bad.sum())} rows differ away from near ties"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cuda = torch.cuda.is_available()
    ap.add_argument("--n", type=int, default=500_000 if cuda else 20_000)
    ap.add_argument("--codec", default="float16")
    ap.add_argument("--reps", type=int, default=3 if cuda else 1)
    args = ap.parse_args()
    dev = torch.device("cuda" if cuda else "cpu")
    print(machine(), "| device:", torch.cuda.get_device_name(dev) if cuda else "cpu (torch path)")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        hv = synthetic_hook(Path(tmp) / "h", args.n, args.codec)
        print(
            f"hook: {hv.n} distinct x {hv.width} ({args.codec}), built in "
            f"{time.perf_counter() - t0:.1f} s; kept on the device: {hv.nbytes_device()} bytes"
        )
        for m in (49, 490):
            q = queries(m)
            hv.resident()
            _, t_cpu, _ = timed(lambda q=q: exact_top_k(hv, q, K), args.reps)
            cpu = exact_top_k(hv, q, K + 1)
            hv.drop_resident()
            cache: dict = {}
            rows = [("cpu resident", None, t_cpu, "reference")]
            runs = {
                "device kept": lambda q=q, c=cache: exact_top_k(
                    hv, q, K, device=dev, device_cache=c
                ),
                "device streamed": lambda q=q: (
                    exact_top_k(hv, q, K, device=dev, device_cache=None)
                    if cuda
                    else _cpu_streamed(hv, q)
                ),
                "device pageable": lambda q=q: pageable_search(hv, q, dev),
            }
            for name, fn in runs.items():
                first, best, out = timed(fn, args.reps)
                rows.append((name, first, best, same_answer(cpu, out)))
            print(f"\n{m} queries, k={K}")
            for name, first, best, check in rows:
                first_s = "" if first is None else f"first {first * 1e3:8.1f} ms"
                print(f"  {name:16s} {first_s:17s} best {best * 1e3:8.1f} ms   {check}")


def _cpu_streamed(hv: HookVectors, q: np.ndarray):
    """The streaming torch path on the CPU (where there is no CUDA device to stream to)."""
    from tl_latentlens.bank.search import exact

    return exact._torch_top_k(hv, hv.to_search(q), K, torch.device("cpu"), 32768, None)


if __name__ == "__main__":
    main()
