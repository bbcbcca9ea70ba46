#!/usr/bin/env bash
# Sets up the Python environment the ComfyUI test suite starts a real ComfyUI with (.venv-comfyui),
# from that ComfyUI's own requirements.txt plus this pack's requirements.txt (as ComfyUI-Manager
# installs them). Usage: scripts/setup_comfyui_env.sh COMFYUI_DIR. Prints the environment's python.
#
# A subset of ComfyUI's requirements, on purpose: torch is the CPU build these machines carry
# (2.13.0; a plain 'torch' would pull a multi-GB CUDA build), torchvision is left out (no Z-Image path
# uses it; the extra nodes that import it fail to load and ComfyUI carries on), and torchaudio, which
# has no build for torch 2.13, is 2.11.1 installed without its pinned torch: ComfyUI imports it at
# start-up (comfy/sd.py loads an audio VAE module) and never calls it for Z-Image.
set -euo pipefail
COMFY="${1:?usage: setup_comfyui_env.sh COMFYUI_DIR}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ZIMAGE_COMFYUI_VENV:-$ROOT/.venv-comfyui}"
STAMP="$VENV/.zimage-ready"
WANT="$(cat "$COMFY/requirements.txt" "$ROOT/requirements.txt" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-16)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  echo "$VENV/bin/python"
  exit 0
fi
{
  python3 -m venv "$VENV"
  PY="$VENV/bin/python"
  "$PY" -m pip install -q "torch==${ZIMAGE_TORCH_VERSION:-2.13.0}"
  grep -v -E '^\s*(torch|torchvision|torchaudio)\s*$' "$COMFY/requirements.txt" > "$VENV/comfyui-requirements.txt"
  "$PY" -m pip install -q -r "$VENV/comfyui-requirements.txt" -r "$ROOT/requirements.txt" "pytest>=7"  # pytest: tests/in_comfyui run in it
  "$PY" -m pip install -q --no-deps "torchaudio==2.11.1"
  "$PY" -c "import torch, torchaudio, aiohttp, comfy_kitchen, diffusers, pytest"
} >&2
echo "$WANT" > "$STAMP"
echo "$VENV/bin/python"
