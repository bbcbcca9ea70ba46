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
  "$PY" -m pip install -q "torch==${ZIMAGE_TORCH_VERSION:-2.13.0}" || "$PY" -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
fi
if ! "$PY" -c "import zimage_pack, diffusers, transformers, pytest" 2>/dev/null; then
  "$PY" -m pip install -q -e "$ROOT[test]"
fi
export ZIMAGE_PY="$PY"
