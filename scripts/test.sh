#!/usr/bin/env bash
# Set up (venv, test tools, chromium), lint with ruff, then run the test suite.
# Arguments go to pytest: `scripts/test.sh -m 'not slow'` is the quick feedback loop.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
.venv/bin/python -m ruff check .
exec .venv/bin/python -m pytest "$@"
