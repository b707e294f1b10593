#!/usr/bin/env bash
# Debian's postgresql and nginx-light, for the labelling app's PostgreSQL and reverse-proxy tests
# (tests/integration/test_label_postgres.py, test_label_load.py, test_label_proxy.py). The tests start
# their own throwaway PostgreSQL cluster and nginx on loopback ports; nothing is left running.
# Idempotent: does nothing when both are installed. Never fails the build: without apt-get or root it
# prints a warning, the PostgreSQL tests skip and the proxy test uses its Python proxy.
set -u

have_postgres() { ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; }
have_nginx() { command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; }

if have_postgres && have_nginx; then
    exit 0
fi

warn() {
    echo "warning: $1; the PostgreSQL label tests will be skipped and the proxy test uses a Python proxy" >&2
    exit 0
}

# shellcheck source=scripts/apt_setup.sh
. "$(dirname "$0")/apt_setup.sh"

packages=""
have_postgres || packages="$packages postgresql"
have_nginx || packages="$packages nginx-light"

echo "installing$packages for the label server tests (a minute or so)..."
# The package lists are fresh when the browser script has just updated them.
if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mmin -60 2>/dev/null | head -1)" ]; then
    $SUDO apt-get update -qq >/dev/null || warn "apt-get update failed"
fi
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $packages >/dev/null || warn "apt-get install$packages failed"

if have_postgres && have_nginx; then
    echo "postgresql and nginx are installed"
else
    warn "postgresql or nginx is still missing after apt-get"
fi
exit 0
