#!/usr/bin/env bash
# Set up everything tetriszmq needs in ./.venv; safe to run again (it only adds what is missing).
# Usage: scripts/setup.sh [--test]   (--test adds the test tools and Debian's chromium)
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
"$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || {
  echo "setup: tetriszmq needs Python 3.11 (set PYTHON=/path/to/python3.11)" >&2; exit 1; }
[ -x .venv/bin/python ] || "$python" -m venv .venv

extras="[tetris,sweep]"
if [ "${1:-}" = "--test" ]; then
  extras="[tetris,sweep,test]"
  if ! command -v chromium >/dev/null 2>&1; then
    echo "setup: installing Debian's chromium for the page tests" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
  if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    echo "setup: installing Debian's postgresql for the shared-study sweep test" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
fi
# torch's CPU wheel first: pyproject's torch range alone would pull a multi-GB CUDA build.
.venv/bin/pip install --quiet --disable-pip-version-check torch==2.13.0 -e ".${extras}" 2>&1 \
  | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import tetriszmq, torch, zmq, stable_baselines3, tetris_gymnasium, numba, optuna, psycopg" 
