#!/usr/bin/env bash
# The main job: set up from scratch if needed, then run the LatentLens demo on the embedded
# default VLM (real packaged weights and data, offline). Extra arguments go to the demo.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
cd "$root"
exec .venv/bin/tl-latentlens demo "$@"
