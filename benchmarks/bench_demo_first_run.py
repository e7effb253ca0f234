"""The demo's first run (bank included) and its cached rerun, phase by phase.

Each run is ``tl-latentlens demo`` whole (``run_demo``) in a fresh process. The first run gets a
fresh cache directory (the fetched Debian data linked in, as ``scripts/setup.sh`` leaves it, so
fetching is the one setup step left out; the language model is dequantised from its GGUF
again); the cached run is a second process on the same cache and output folder (bank built,
explanations and study records kept). Per run it prints the wall clock, the CPU seconds (user +
system) and the demo's phases:

* ``setup``: interpreter start and imports, up to ``run_demo``;
* ``model``: loading the default VLM (GGUF dequantisation on a first run);
* ``bank``: building (first run) or opening the default bank, with the forward-pass dtype
  :func:`tl_latentlens.devices.fast_dtype` chose and why;
* ``explain``: the HTML reports, patch pictures and the mid-layer leap;
* ``controls``: the positive controls on held-out text and injected word embeddings (read
  back from the output folder on the cached run);
* ``study``: the per-layer table over the annotated images (exact search).

``--before`` also runs the first run as it was before the residuals-only capture path (every
forward pass through the final norm and the unembedding) for the ratio; it roughly doubles the
benchmark's time. On a machine shared with other work the CPU seconds are the steadier figure;
the load average is printed beside each run.

    python benchmarks/bench_demo_first_run.py [--quick] [--before]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_precision import cpu_line

CHILD = r"""
import time
t0 = time.perf_counter()
import contextlib, json, sys
from pathlib import Path
from tl_latentlens import capture
from tl_latentlens.apps.demo import DemoConfig, run_demo
variant, out, quick = sys.argv[1], Path(sys.argv[2]), sys.argv[3] == "1"
if variant == "before":  # every pass runs the final norm and the unembedding, as before
    capture.residuals_only = lambda bridge: contextlib.nullcontext()
t_setup = time.perf_counter() - t0
res = run_demo(DemoConfig(out=out, quick=quick))
print(json.dumps({"setup_s": t_setup, **res["timings"], "precision": res["precision"]}))
"""


def run(variant: str, cache: Path, out: Path, quick: bool) -> tuple[float, float, dict]:
    """``(wall s, CPU s, the demo's timings)`` of one demo process."""
    env = {**os.environ, "TL_LATENTLENS_CACHE": str(cache)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", CHILD, variant, str(out), "1" if quick else "0"],
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t
    if done.returncode:
        raise SystemExit(f"{variant} failed:\n{done.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, json.loads(done.stdout.strip().splitlines()[-1])


def fresh_cache(tmp: Path) -> Path:
    from tl_latentlens.default.assets import cache_dir

    cache = tmp / "cache"
    cache.mkdir()
    (cache / "debs").symlink_to(cache_dir() / "debs")  # what setup.sh fetched
    return cache


def show(name: str, wall: float, cpu: float, timings: dict) -> None:
    keys = ("setup_s", "model_load_s", "bank_s", "explain_s", "controls_s", "study_s")
    parts = ", ".join(f"{k.split('_')[0]} {timings[k]:.0f} s" for k in keys if k in timings)
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{name:>12}: {wall / 60:5.1f} min wall, {cpu / 60:5.1f} min CPU ({parts}; load {load})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the CI-sized demo (1,500 sentences)")
    p.add_argument("--before", action="store_true", help="also the first run before the saving")
    args = p.parse_args()
    print(cpu_line())
    rows = {}
    with tempfile.TemporaryDirectory(prefix="first-run-") as tmp:
        cache, out = fresh_cache(Path(tmp)), Path(tmp) / "out"
        rows["first run"] = run("after", cache, out, args.quick)
        rows["cached run"] = run("after", cache, out, args.quick)
    if args.before:
        with tempfile.TemporaryDirectory(prefix="first-run-before-") as tmp:
            rows["before"] = run("before", fresh_cache(Path(tmp)), Path(tmp) / "out", args.quick)
    for name, row in rows.items():
        show(name, *row)
    precision = rows["first run"][2]["precision"]
    print(f"bank forward passes: {precision['choice']} ({precision['reason']})")
    if args.before:
        (b, bc, tb), (a, ac, ta) = rows["before"], rows["first run"]
        print(
            f"first run before / after: wall {b / a:.2f}x, CPU {bc / ac:.2f}x, bank phase "
            f"{tb['bank_s'] / ta['bank_s']:.2f}x"
        )
    print(cpu_line())


if __name__ == "__main__":
    main()
