# Shared by the install_*_test_deps.sh scripts (sourced, not run): checks that apt-get can be used and
# sets SUDO. The sourcing script defines warn(), which prints why its tests will skip and exits 0.

command -v apt-get >/dev/null 2>&1 || warn "apt-get not found"

SUDO=""
if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        warn "not root and no password-less sudo"
    fi
fi
export DEBIAN_FRONTEND=noninteractive
