#!/usr/bin/env bash
# Install what tests/test_nginx.py and tests/test_browser.py need: Debian's nginx and Chromium,
# and the pinned playwright-core in tests/browser; and Debian's redis-server, which the tests
# start on free loopback ports (tests/redis_server.py) to check that rate limits hold across
# gunicorn workers; and Debian's postgresql, whose server binaries (initdb, postgres in
# /usr/lib/postgresql/<version>/bin) the tests use to run throwaway clusters (tests/postgres_server.py)
# to check usage accounting on PostgreSQL; and the pinned ollama-js in tests/js_clients for
# tests/test_more_clients.py. No packaged service or cluster is started or needed.
# Run as root; safe to run again (it only installs what is missing). Needs python3, node and npm
# already on the machine.
set -euo pipefail

cd "$(dirname "$0")/.."

PACKAGES=(nginx chromium redis-server postgresql)

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
    # The tests start their own nginx, redis-server and postgres on free loopback ports; the packaged
    # services are not wanted. A policy-rc.d that answers 101 tells the package scripts not to
    # start them (and keeps the install from failing when port 80, 6379 or 5432 is taken). Keep one
    # that is already there.
    cleanup=()
    trap 'rm -f "${cleanup[@]}"' EXIT
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        cleanup+=(/usr/sbin/policy-rc.d)
    fi
    # postgresql's package scripts would also create a "main" cluster in /var/lib/postgresql; the
    # tests initdb their own, so tell postgresql-common not to (createcluster.conf reads this
    # directory) while the packages install.
    no_cluster=/etc/postgresql-common/createcluster.d/zz-install-test-deps.conf
    if [[ " ${missing[*]} " == *" postgresql "* && ! -e $no_cluster ]]; then
        mkdir -p "$(dirname "$no_cluster")"
        echo "create_main_cluster = false" >"$no_cluster"
        cleanup+=("$no_cluster")
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
    # Likewise a packaged PostgreSQL cluster (one that was there before, or made despite the above):
    # it would hold port 5432 for nothing.
    if [[ " ${missing[*]} " == *" postgresql "* ]] && pg_lsclusters -h 2>/dev/null | awk '$4 == "online"' | grep -q .; then
        service postgresql stop 2>/dev/null || pg_lsclusters -h | awk '$4 == "online" {print $1, $2}' |
            while read -r version cluster; do pg_ctlcluster "$version" "$cluster" stop || true; done
    fi
fi

# The newest PostgreSQL server installed (tests/postgres_server.py picks the same one).
postgres_bin=$( (ls -d /usr/lib/postgresql/*/bin/postgres 2>/dev/null || true) | sort -V | tail -n 1)
[[ -n $postgres_bin ]] || { echo "install-test-deps: no /usr/lib/postgresql/<version>/bin/postgres after the install" >&2; exit 1; }
postgres_bin=$(dirname "$postgres_bin")

for binary in /usr/sbin/nginx /usr/bin/chromium /usr/bin/redis-server "$postgres_bin"/{initdb,pg_ctl,postgres}; do
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

# ollama-js, pinned in tests/js_clients, for tests/test_more_clients.py (run with node against the gateway).
js_clients_dir=tests/js_clients
ollama_js=$(node -p "require('./$js_clients_dir/package.json').dependencies['ollama']")
installed=$(node -p "try { require('./$js_clients_dir/node_modules/ollama/package.json').version } catch { '' }")
if [[ $installed != "$ollama_js" ]]; then
    npm ci --prefix "$js_clients_dir" --no-audit --no-fund
fi

echo "install-test-deps: nginx $(/usr/sbin/nginx -v 2>&1 | sed 's/.*\///'), $(/usr/bin/chromium --version 2>/dev/null)," \
     "redis-server $(/usr/bin/redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p')," \
     "postgres $("$postgres_bin"/postgres --version | awk '{print $3}'), playwright-core $wanted, ollama-js $ollama_js"
