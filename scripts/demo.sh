#!/usr/bin/env bash
# One command: set up (idempotent) and run the demo on the sample shipped in the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/cifarkit demo --out "${1:-demo_out}"
