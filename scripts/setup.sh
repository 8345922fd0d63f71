#!/usr/bin/env bash
# Creates ./.venv with the CPU build of torch and this project installed (editable), on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-.venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
# Pinned first: an unpinned torch would pull a multi-GB CUDA build.
"$venv/bin/pip" install --quiet torch==2.13.0
"$venv/bin/pip" install --quiet -e ".[test]"
