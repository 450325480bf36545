#!/usr/bin/env bash
# Set up .venv with torch (the CPU build on disk), lmjupyter and its test/Jupyter extras.
# Safe to run again: it only installs what is missing, and once a setup has finished it does
# nothing (in a second) until what it installs from changes: pyproject.toml, the JupyterLab
# panel's sources and this script (their hash is kept in .venv/.setup-stamp; SETUP_FORCE=1
# runs every step anyway). Used by scripts/lab.sh and .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
STAMP=.venv/.setup-stamp

# What a finished setup was made from: if none of it changed, the .venv is what this script would make.
fingerprint() {
    {
        "$PYTHON" --version 2>&1
        find pyproject.toml scripts/setup.sh labextension/package.json labextension/package-lock.json \
             labextension/tsconfig.json labextension/src labextension/style -type f 2>/dev/null | LC_ALL=C sort \
            | xargs sha256sum
    } | sha256sum | cut -d' ' -f1
}
wanted=$(fingerprint)
if [ -z "${SETUP_FORCE:-}" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$wanted" ] \
        && .venv/bin/python -c "import importlib.util as u, sys; sys.exit(not (u.find_spec('torch') and u.find_spec('lmjupyter')))" 2>/dev/null; then
    echo "==> .venv is up to date (nothing setup.sh installs from has changed; SETUP_FORCE=1 to redo it)"
    exit 0
fi
rm -f "$STAMP"
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
echo "$wanted" > "$STAMP"
echo "==> ready: . .venv/bin/activate"
