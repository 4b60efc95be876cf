#!/usr/bin/env bash
# Set up, then train on configs/default.toml; extra arguments go to `tetriszmq train`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/tetriszmq train --config configs/default.toml "$@"
