#!/usr/bin/env bash
# Set up .venv with torch (the CPU build on disk), lmjupyter and its test/Jupyter extras.
# Safe to run again: it only installs what is missing. Used by scripts/lab.sh and .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "==> creating .venv"
    "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip

# torch first, pinned, so that no resolver pulls a multi-GB CUDA build for the range we declare.
if ! python -c "import torch" 2>/dev/null; then
    echo "==> installing torch 2.13.0 (CPU)"
    python -m pip install -q torch==2.13.0
fi

# System tools for the browser tests and benchmarks (Debian packages), when we are allowed to.
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v wrk >/dev/null || missing+=(wrk)
if [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "==> apt-get install ${missing[*]}"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

echo "==> installing lmjupyter with its jupyter and test extras (builds the JupyterLab panel with npm)"
python -m pip install -q -e ".[jupyter,test]"
extensions=$(jupyter server extension list 2>&1 || true)   # (grep -q would cut the pipe under pipefail)
grep -q "lmjupyter.*enabled" <<<"$extensions" || echo "warning: the lmjupyter server extension is not enabled" >&2
echo "==> ready: . .venv/bin/activate"
