"""Cold start of the embedded default VLM and of a one-image ``tl-latentlens explain``.

Measured side by side in one run, in one process each (so nothing is warm in memory but the
OS page cache):

* loading the language model from the packaged GGUF (``cache=False``) and from the weights
  cache (``cache=True``, filled on the first run), then ``load_default_vlm`` whole;
* when the demo bank is built (``tl-latentlens demo``): the one-image ``tl-latentlens explain``
  command (wall clock, median of ``--runs``), what each of its parts costs in a cold process
  (imports, model load, bank open, lens set-up, forward pass, search, baselines, render), the
  command importing only its own sub-command's module against every sub-command's (as the
  CLI did before), and each start-up saving against its absence:
  the console entry's heap freeze before exit vs calling ``main`` plainly; a bank open with
  its file digests remembered vs hashed again (an empty digest memo); the default LM's kept
  weight digests vs hashing them; resident hooks allocated by torch vs ``np.empty`` (numpy
  asks for transparent huge pages).

    python benchmarks/bench_cold_start.py [--runs 3] [--image photo.png]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_precision import cpu_line

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


# One start-up saving with and without, in a fresh process: prints {"with": s, "without": s}.
PARTS = r"""
import json, sys, time
import numpy as np, torch
from tl_latentlens import _io
from tl_latentlens.bank import Bank
from tl_latentlens.bank.format import vectors
from tl_latentlens.bank import bank as bank_mod
from tl_latentlens.default.loader import load_default_vlm
what, bank_dir, memo = sys.argv[1], sys.argv[2], sys.argv[3]
out = {}
if what == "fingerprint":
    load_default_vlm().fingerprint()  # keeps the digests on a first run
    vlm = load_default_vlm()
    t = time.perf_counter(); vlm.fingerprint(); out["with"] = time.perf_counter() - t
    t = time.perf_counter(); vlm.fingerprint(refresh=True); out["without"] = time.perf_counter() - t
elif what == "digests":
    def open_all():
        bank = Bank.open(bank_dir)
        for h in bank.hooks:
            bank.hook_vectors(h)
    open_all()  # the user's memo now knows every file
    t = time.perf_counter(); open_all(); out["with"] = time.perf_counter() - t
    bank_mod.digest_memo = lambda: _io.DigestMemo(memo)  # empty: every file hashed again
    t = time.perf_counter(); open_all(); out["without"] = time.perf_counter() - t
else:  # resident hooks: torch's allocator (with) or np.empty (without), in separate processes
    if what == "resident-np":
        vectors.torch.empty = lambda shape, dtype: torch.from_numpy(np.empty(shape, np.float32))
    bank = Bank.open(bank_dir)
    t = time.perf_counter()
    for h in bank.hooks:
        bank.hook_vectors(h).resident()
    out["s"] = time.perf_counter() - t
print(json.dumps(out))
"""


# The parts of a one-image explain in one cold process, as ``tl-latentlens explain`` runs them.
PHASES = r"""
import time
t0 = time.perf_counter()
import json, sys
from PIL import Image
from tl_latentlens.apps import explain as app
t = {"imports": time.perf_counter() - t0}
bank_dir, image, out = sys.argv[1], sys.argv[2], sys.argv[3]
def lap(name, t0):
    t[name] = time.perf_counter() - t0
    return time.perf_counter()
s = time.perf_counter()
vlm = app.load_vlm("default"); s = lap("model load", s)
bank = app.Bank.open(bank_dir, vlm=vlm); s = lap("bank open", s)
lens = app.LatentLens(vlm, bank); s = lap("lens set-up", s)
res = lens.explain(Image.open(image).convert("RGB"), k=5); s = lap("explain", s)
res.save(out + "/x.json"); res.to_html(out + "/x.html"); res.save_png(out + "/x.png")
lap("render", s)
t.update({k: res.timings[k] for k in ("forward", "search", "baselines")})
print(json.dumps(t))
"""

# Imports of a sub-command's parser: only its module (now) or every sub-command's (before).
IMPORTS = r"""
import sys, time
t0 = time.perf_counter()
from tl_latentlens.apps import cli
if sys.argv[1] == "all":
    cli.build_parser()
else:
    cli.build_parser(["explain"])
print(time.perf_counter() - t0)
"""


def run(what: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, what], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def part(what: str, bank: Path, memo: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PARTS, what, str(bank), str(memo)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _child(code: str, argv: list[str], raw: bool = False):
    out = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True
    )
    last = out.stdout.strip().splitlines()[-1]
    return last if raw else json.loads(last)


def cli_wall(argv: list[str], entry: str, runs: int) -> float:
    """Median wall seconds of ``tl-latentlens`` with ``argv`` through ``run`` (the console
    entry: heap frozen before exit) or plain ``main``."""
    code = "import sys; from tl_latentlens.apps import cli; " + (
        "cli.run()" if entry == "run" else "raise SystemExit(cli.main())"
    )
    walls = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", code, *argv], check=True, capture_output=True)
        walls.append(time.perf_counter() - t)
    return statistics.median(walls)


def explain_section(runs: int, image: str | None) -> None:
    from tl_latentlens.default.loader import load_default_vlm
    from tl_latentlens.evaluate.default_set import voc_image
    from tl_latentlens.lens.default_bank import default_bank_dir

    bank = default_bank_dir(load_default_vlm())
    if not (bank / "manifest.json").is_file():
        print("(no demo bank yet: run `tl-latentlens demo` once for the explain figures)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        if image is None:
            image = str(Path(tmp) / "photo.png")
            voc_image().image.save(image)
        argv = ["explain", "--model", "default", "--bank", str(bank), "--images", image]
        argv += ["--out", str(Path(tmp) / "out")]
        cli_wall(argv, "run", 1)  # warm the page cache and the digest memo
        fast, plain = cli_wall(argv, "run", runs), cli_wall(argv, "main", runs)
        print(f"one-image `tl-latentlens explain` (median of {runs}): {fast:5.1f} s")
        print(
            f"  exit: heap frozen {fast:5.1f} s vs plain main {plain:5.1f} s ({plain - fast:+.1f} s)"
        )
        phases = _child(PHASES, [str(bank), image, tmp])
        total = phases["imports"] + sum(
            phases[k] for k in ("model load", "bank open", "lens set-up", "explain", "render")
        )
        print(f"  parts in one cold process ({total:.1f} s, interpreter start and exit aside):")
        for name in ("imports", "model load", "bank open", "lens set-up"):
            print(f"    {name:<12} {phases[name]:5.2f} s")
        print(
            f"    explain      {phases['explain']:5.2f} s (forward {phases['forward']:.2f}, search "
            f"{phases['search']:.2f}, baselines {phases['baselines']:.2f})"
        )
        print(f"    render       {phases['render']:5.2f} s (JSON, HTML, patch PNG)")
        one = statistics.median(float(_child(IMPORTS, ["explain"], raw=True)) for _ in range(runs))
        every = statistics.median(float(_child(IMPORTS, ["all"], raw=True)) for _ in range(runs))
        print(
            f"  CLI imports: explain's module only {one:5.2f} s vs every sub-command "
            f"{every:5.2f} s ({every - one:+.2f} s)"
        )
        memo = Path(tmp) / "empty-memo.json"
        fp, dg = part("fingerprint", bank, memo), part("digests", bank, memo)
        torch_alloc = part("resident-torch", bank, memo)["s"]
        numpy_alloc = part("resident-np", bank, memo)["s"]
    rows = [
        ("LM weight digests: kept vs hashed", fp["with"], fp["without"]),
        ("bank open + every hook: digests remembered vs hashed", dg["with"], dg["without"]),
        ("resident hooks: torch.empty vs np.empty", torch_alloc, numpy_alloc),
    ]
    for name, with_, without in rows:
        print(f"  {name}: {with_:6.2f} s vs {without:6.2f} s ({without / max(with_, 1e-9):.1f}x)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3, help="CLI runs per variant (median)")
    p.add_argument("--image", help="image for the explain runs (default: a packaged photo)")
    p.add_argument("--skip-gguf", action="store_true", help="skip the GGUF load (~40 s)")
    args = p.parse_args()
    print(cpu_line())
    run("cache")  # fill the cache (first run) and warm the page cache for both paths
    if not args.skip_gguf:
        gguf, cache = run("gguf"), run("cache")
        print(f"LM from GGUF (dequantise):   {gguf['load_s']:6.1f} s")
        print(f"LM from the weights cache:   {cache['load_s']:6.1f} s")
        print(f"speed-up:                    {gguf['load_s'] / cache['load_s']:6.1f}x")
    vlm = run("vlm")
    print(
        f"load_default_vlm (cached):   {vlm['load_s']:6.1f} s  (+ {vlm['import_s']:.1f} s import)"
    )
    explain_section(args.runs, args.image)
    print(cpu_line())


if __name__ == "__main__":
    main()
