#!/usr/bin/env bash
# The test suite (what CI runs). Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# pytest's working folders in one temporary folder that goes when the run ends: nothing is left behind
BASETEMP="$(mktemp -d -t zimage-tests-XXXXXX)"
trap 'rm -rf "$BASETEMP"' EXIT
"$ZIMAGE_PY" -m pytest -q -p no:cacheprovider --basetemp "$BASETEMP" "$@"
