#!/usr/bin/env bash
# Debian's chromium and chromium-driver, for the labelling app's browser tests
# (tests/integration/test_label_browser.py). Idempotent: does nothing when both are installed.
# Never fails the build: without apt-get or root it prints a warning, and those tests skip.
set -u

CHROMIUM=/usr/bin/chromium
DRIVER=/usr/bin/chromedriver

if [ -x "$CHROMIUM" ] && [ -x "$DRIVER" ]; then
    exit 0
fi

warn() {
    echo "warning: $1; the browser tests will be skipped (install chromium and chromium-driver to run them)" >&2
    exit 0
}

# shellcheck source=scripts/apt_setup.sh
. "$(dirname "$0")/apt_setup.sh"

echo "installing chromium and chromium-driver for the browser tests (a minute or two)..."
$SUDO apt-get update -qq >/dev/null || warn "apt-get update failed"
$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null || warn "apt-get install chromium chromium-driver failed"

if [ -x "$CHROMIUM" ] && [ -x "$DRIVER" ]; then
    echo "chromium and chromedriver are installed"
else
    warn "chromium or chromedriver is still missing after apt-get"
fi
exit 0
