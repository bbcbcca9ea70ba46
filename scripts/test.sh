#!/usr/bin/env bash
# The test suite (what CI runs). Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# pytest's working folders in one temporary folder that goes when the run ends: nothing is left behind
BASETEMP="$(mktemp -d -t zimage-tests-XXXXXX)"
trap 'rm -rf "$BASETEMP"' EXIT
# The ComfyUI suite runs in a real ComfyUI when one is found (COMFYUI_DIR, the ComfyUI this pack is
# installed in, or ../shared/comfyui), with a Python environment of its own made once (.venv-comfyui).
COMFY="$("$ZIMAGE_PY" tests/comfyui_harness.py)"
if [ -n "$COMFY" ] && [ -z "${ZIMAGE_COMFYUI_PYTHON:-}" ]; then
  echo "ComfyUI found at $COMFY: setting up its environment (.venv-comfyui; minutes the first time)" >&2
  if ZIMAGE_COMFYUI_PYTHON="$(bash scripts/setup_comfyui_env.sh "$COMFY" 2>"$BASETEMP/setup_comfyui.log")"; then
    export ZIMAGE_COMFYUI_PYTHON
  else
    tail -20 "$BASETEMP/setup_comfyui.log" >&2
    echo "could not set up ComfyUI's environment: the ComfyUI suite will not run" >&2
  fi
fi
"$ZIMAGE_PY" -m pytest -q -p no:cacheprovider --basetemp "$BASETEMP" "$@"
# The pack's ComfyUI side in process, in ComfyUI's own Python (tests/in_comfyui), when a ComfyUI is at hand.
if [ -n "${ZIMAGE_COMFYUI_PYTHON:-}" ] && [ "$#" -eq 0 ]; then
  "$ZIMAGE_COMFYUI_PYTHON" -m pytest -q -p no:cacheprovider --basetemp "$BASETEMP/in_comfyui" tests/in_comfyui
elif [ "${ZIMAGE_REQUIRE_COMFYUI:-}" = "1" ]; then
  echo "ZIMAGE_REQUIRE_COMFYUI=1 but the in-ComfyUI suite cannot run (no ComfyUI environment)" >&2
  exit 1
elif [ "$#" -eq 0 ]; then
  echo "tests/in_comfyui did not run: no ComfyUI found (set COMFYUI_DIR to a ComfyUI checkout to run them)"
fi
