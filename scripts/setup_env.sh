#!/usr/bin/env bash
# Creates .venv (once) with the pack and its test tools. Sourced by run.sh and test.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ZIMAGE_VENV:-$ROOT/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
if ! "$PY" -c "import torch" 2>/dev/null; then
  # The CPU build of torch first: a plain 'torch' requirement would pull a multi-GB CUDA build.
  # On a machine with a GPU, install the torch build you want before running this.
  if ! "$PY" -m pip install -q "torch==${ZIMAGE_TORCH_VERSION:-2.13.0}"; then
    echo "Could not install torch ${ZIMAGE_TORCH_VERSION:-2.13.0}: install the torch build for your machine into $VENV first" \
         "(or set ZIMAGE_TORCH_VERSION), then run this again." >&2
    exit 1
  fi
fi
if ! "$PY" -c "import zimage_pack, diffusers, transformers, pytest, comfy_kitchen, gguf, websocket, aiohttp, sqlalchemy, ray" 2>/dev/null; then
  "$PY" -m pip install -q -e "$ROOT[test]"
fi
export ZIMAGE_PY="$PY"
