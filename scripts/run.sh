#!/usr/bin/env bash
# Set up, then train on configs/default.toml with the live viewer; prints the URL to open.
# Extra arguments go to `tetriszmq train` (e.g. --set train.max_minutes=10).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/tetriszmq-viewer &
viewer=$!
trap 'kill "$viewer" 2>/dev/null; wait "$viewer" 2>/dev/null || true' EXIT
.venv/bin/tetriszmq train --config configs/default.toml "$@"
