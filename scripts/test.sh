#!/usr/bin/env bash
# Set up and run every test: venv with the pinned test dependencies, the system packages the
# proxy, browser, rate-limit and usage tests use (nginx, Chromium, Redis, PostgreSQL, playwright-core;
# installed as root),
# then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
if ! cat requirements.txt requirements-dev.txt | cmp -s - .venv/.installed-dev; then
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet -r requirements-dev.txt
  cat requirements.txt requirements-dev.txt > .venv/.installed-dev
fi
scripts/install-test-deps.sh
scripts/fetch-redoc.sh
exec .venv/bin/python -m pytest "$@"
