"""Cold start of the embedded default VLM: GGUF dequantisation vs the cached safetensors weights.

Measured side by side in one run, in one process each (so nothing is warm in memory but the
OS page cache): loading the language model from the packaged GGUF (``cache=False``) and from the
weights cache (``cache=True``, filled on the first run), then ``load_default_vlm`` whole, and
a one-image ``explain`` with the demo bank if it is already built.

    python benchmarks/bench_cold_start.py
"""

from __future__ import annotations

import json
import subprocess
import sys

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
from tl_latentlens.default import lm
from tl_latentlens.default.loader import load_default_vlm
t_import = time.perf_counter() - t0
what = sys.argv[1]
t0 = time.perf_counter()
if what == "gguf":
    lm.load_hf_lm(cache=False)
elif what == "cache":
    lm.load_hf_lm(cache=True)
else:
    load_default_vlm()
print(json.dumps({"what": what, "import_s": t_import, "load_s": time.perf_counter() - t0}))
"""


def run(what: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, what], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    run("cache")  # fill the cache (first run) and warm the page cache for both paths
    gguf, cache, vlm = run("gguf"), run("cache"), run("vlm")
    print(f"LM from GGUF (dequantise):   {gguf['load_s']:6.1f} s")
    print(f"LM from the weights cache:   {cache['load_s']:6.1f} s")
    print(f"speed-up:                    {gguf['load_s'] / cache['load_s']:6.1f}x")
    print(
        f"load_default_vlm (cached):   {vlm['load_s']:6.1f} s  (+ {vlm['import_s']:.1f} s import)"
    )


if __name__ == "__main__":
    main()
