#!/usr/bin/env bash
# Set up, then run every test: Python (engine, parallel, Jupyter, store, browser) and the panel's unit tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
if [ -f labextension/package.json ]; then
    echo "==> labextension unit tests"
    (cd labextension && { [ -d node_modules ] || npm ci --no-audit --no-fund; } && npm test --silent)
fi
echo "==> pytest"
python -m pytest -q --durations=15 "$@"
