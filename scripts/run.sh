#!/usr/bin/env bash
# The main job: a headless text-to-image run that writes a PNG (see scripts/txt2img.py --help).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
exec "$ZIMAGE_PY" "$(dirname "${BASH_SOURCE[0]}")/txt2img.py" "$@"
