#!/usr/bin/env bash
# The main job: JupyterLab with the lmjupyter extension, the quickstart notebook and a default
# model the project builds itself (a tiny Llama, random weights, saved with save_pretrained).
# `lmjupyter lab` is `jupyter lab` on uvloop (lmjupyter/lab.py says why).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
if [ ! -f models/tiny-llama/config.json ]; then
    echo "==> building the default model into models/tiny-llama"
    python -m lmjupyter.models.tiny models/tiny-llama --family llama
fi
extra=()
[ "$(id -u)" = 0 ] && extra+=(--allow-root)   # Jupyter refuses to run as root without it
exec lmjupyter lab --ip 127.0.0.1 --ServerApp.root_dir="$PWD" "${extra[@]}" notebooks/quickstart.ipynb "$@"
