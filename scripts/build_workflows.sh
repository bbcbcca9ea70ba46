#!/usr/bin/env bash
# Rewrites example_workflows/ (UI and API) from workflows/build.py. It runs inside ComfyUI (the node
# classes give each widget's order): the ComfyUI found as for the tests, in its own environment.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup_env.sh
COMFY="$("$ZIMAGE_PY" tests/comfyui_harness.py)"
[ -n "$COMFY" ] || { echo "no ComfyUI found: set COMFYUI_DIR to a ComfyUI checkout" >&2; exit 2; }
PY="${ZIMAGE_COMFYUI_PYTHON:-$(bash scripts/setup_comfyui_env.sh "$COMFY")}"
"$PY" -c "import runpy, sys; runpy.run_path('workflows/comfy_runtime.py')['import_comfyui'](sys.argv[1]); from zimage_pack.workflows import build; build.main()" "$COMFY"
