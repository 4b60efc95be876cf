#!/usr/bin/env bash
# Set up (venv, test tools, chromium), lint with ruff, then run the test suite.
# Arguments go to pytest: `scripts/test.sh -m 'not slow'` is the quick feedback loop. Every run lists its 25
# slowest tests, so a log shows where the suite's time goes.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
.venv/bin/python -m ruff check .
# The contract client (tests/test_contract.py) is Node.js: its locked packages, when node is here.
if command -v npm >/dev/null 2>&1; then npm ci --prefix clients/node --no-audit --no-fund --loglevel=error; fi
exec .venv/bin/python -m pytest --durations=25 "$@"
