"""The demo's first run (bank included), before and after its two start-up savings.

Each variant runs ``tl-latentlens demo`` whole in a fresh process with a fresh cache directory
(the fetched Debian data linked in, as ``scripts/setup.sh`` leaves it; the language model is
dequantised from its GGUF again), one after the other in one run:

* ``before``: the bank's forward passes in float32 and calibration streaming each hook from
  storage (``calibrate_hook(resident_bytes=0)``), as the demo did until these savings;
* ``after``: the demo's defaults (bfloat16 forward passes on a CPU, hooks resident while
  calibrated).

It prints the demo's own timings per variant and the ratio. About 25 min on 2 CPU cores.

    python benchmarks/bench_demo_first_run.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import functools, json, sys
from pathlib import Path
from tl_latentlens.apps.demo import DemoConfig, run_demo
from tl_latentlens.bank import calibrate
variant, out, quick = sys.argv[1], Path(sys.argv[2]), sys.argv[3] == "1"
dtype = None
if variant == "before":
    dtype = "float32"
    calibrate.calibrate_hook = functools.partial(calibrate.calibrate_hook, resident_bytes=0)
res = run_demo(DemoConfig(out=out, quick=quick, bank_dtype=dtype))
print(json.dumps(res["timings"]))
"""


def run(variant: str, quick: bool) -> tuple[float, dict]:
    from tl_latentlens.default.assets import cache_dir

    with tempfile.TemporaryDirectory(prefix=f"first-run-{variant}-") as tmp:
        cache = Path(tmp) / "cache"
        cache.mkdir()
        (cache / "debs").symlink_to(cache_dir() / "debs")  # what setup.sh fetched
        env = {**os.environ, "TL_LATENTLENS_CACHE": str(cache)}
        t = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", CHILD, variant, str(Path(tmp) / "out"), "1" if quick else "0"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        wall = time.perf_counter() - t
    return wall, json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the CI-sized demo (1,500 sentences)")
    args = p.parse_args()
    rows = {variant: run(variant, args.quick) for variant in ("before", "after")}
    for variant, (wall, timings) in rows.items():
        parts = ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
        print(f"{variant:>6}: {wall / 60:5.1f} min wall ({parts})")
    (b, tb), (a, ta) = rows["before"], rows["after"]
    print(f"first run: {b / a:.2f}x faster; bank {tb['bank_s'] / ta['bank_s']:.2f}x")


if __name__ == "__main__":
    main()
