#!/usr/bin/env bash
# Build the documentation site into site/, offline and in strict mode (a broken reference fails).
# The CLI reference, the recipe numbers and the API index are generated during the build
# (scripts/mkdocs_hooks.py). Extra arguments go to `mkdocs build` (e.g. --site-dir /tmp/site).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export NO_MKDOCS_2_WARNING=1  # the theme's banner about MkDocs 2; the build is unaffected
exec "$PY" -m mkdocs build --strict "$@"
