#!/usr/bin/env bash
# Sets up ./.venv if needed, then runs the test suite (pytest) against the bundled real-fairseq fixtures.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
