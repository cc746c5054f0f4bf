#!/usr/bin/env bash
# Install what tests/test_nginx.py and tests/test_browser.py need: Debian's nginx and Chromium,
# and the pinned playwright-core in tests/browser; and Debian's redis-server, which the tests
# start on free loopback ports (tests/redis_server.py) to check that rate limits hold across
# gunicorn workers. Run as root; safe to run again (it only installs what is missing). Needs
# python3, node and npm already on the machine.
set -euo pipefail

cd "$(dirname "$0")/.."

PACKAGES=(nginx chromium redis-server)

missing=()
for package in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$package")
    fi
done

if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "install-test-deps: run as root to install: ${missing[*]}" >&2
        exit 1
    fi
    # The tests start their own nginx and redis-server on free loopback ports; the packaged
    # services are not wanted. A policy-rc.d that answers 101 tells the package scripts not to
    # start them (and keeps the install from failing when port 80 or 6379 is taken). Keep one
    # that is already there.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}"

    # Should the package scripts have started nginx all the same (a policy-rc.d that allows it),
    # stop it: the tests need no system nginx, and it would hold port 80 for nothing.
    if [[ " ${missing[*]} " == *" nginx "* && -s /run/nginx.pid ]] && kill -0 "$(cat /run/nginx.pid)" 2>/dev/null; then
        service nginx stop 2>/dev/null || /usr/sbin/nginx -s quit 2>/dev/null || true
    fi
    # Likewise redis-server: the packaged one would hold port 6379 (and write /var/lib/redis)
    # for nothing.
    redis_pid=/run/redis/redis-server.pid
    if [[ " ${missing[*]} " == *" redis-server "* && -s $redis_pid ]] && kill -0 "$(cat "$redis_pid")" 2>/dev/null; then
        service redis-server stop 2>/dev/null || kill "$(cat "$redis_pid")" 2>/dev/null || true
    fi
fi

for binary in /usr/sbin/nginx /usr/bin/chromium /usr/bin/redis-server; do
    [[ -x $binary ]] || { echo "install-test-deps: $binary is missing after the install" >&2; exit 1; }
done

# playwright-core drives the system Chromium and downloads no browser of its own.
browser_dir=tests/browser
wanted=$(node -p "require('./$browser_dir/package.json').dependencies['playwright-core']")
installed=$(node -p "try { require('./$browser_dir/node_modules/playwright-core/package.json').version } catch { '' }")
if [[ $installed != "$wanted" ]]; then
    if [[ -f $browser_dir/package-lock.json ]]; then
        npm ci --prefix "$browser_dir" --no-audit --no-fund
    else
        npm install --prefix "$browser_dir" --no-audit --no-fund
    fi
fi

echo "install-test-deps: nginx $(/usr/sbin/nginx -v 2>&1 | sed 's/.*\///'), $(/usr/bin/chromium --version 2>/dev/null)," \
     "redis-server $(/usr/bin/redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p'), playwright-core $wanted"
