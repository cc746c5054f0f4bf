#!/usr/bin/env bash
# Set up and run the gateway: venv, pinned dependencies, ReDoc bundle, a .env with a random
# API key on first run, then gunicorn with gevent workers (gunicorn.conf.py).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
if ! cmp -s requirements.txt .venv/.installed-requirements; then
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet -r requirements.txt
  cp requirements.txt .venv/.installed-requirements
fi
if command -v npm >/dev/null; then
  scripts/fetch-redoc.sh || echo "warning: could not fetch ReDoc's bundle; /redoc will link to /docs instead" >&2
fi
if [ ! -f .env ]; then
  key=$(.venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(32))')
  sed "s|^API_KEY=.*|API_KEY=$key|" .env.example > .env
  chmod 600 .env
  echo "Created $(pwd)/.env with a random API_KEY (send it as X-API-Key). Edit that file to configure the gateway."
fi
exec .venv/bin/gunicorn -c gunicorn.conf.py wsgi:app
