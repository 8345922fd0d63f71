#!/usr/bin/env bash
# Sets up ./.venv if needed, converts the bundled tiny fairseq checkpoints and runs the converted models.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py
