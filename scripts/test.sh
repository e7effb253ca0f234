#!/usr/bin/env bash
# The test command: set up from scratch if needed, then run every test tier.
#   bash scripts/test.sh              # unit + integration (real packaged weights/data) + browser
#   bash scripts/test.sh -m "not integration and not browser"   # unit tests only (seconds)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
cd "$root"
exec .venv/bin/python -m pytest "$@"
