#!/usr/bin/env bash
# One command: set up (idempotent) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# two workers (pytest-xdist), one thread each: see tests/conftest.py. Pass -n 0 to run in one process.
exec .venv/bin/python -m pytest -n 2 --dist loadscope "$@"
