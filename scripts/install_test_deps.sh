#!/usr/bin/env bash
# System packages the tests need beyond the venv: Debian's Chromium and its chromedriver, for the
# end-to-end app test (tests/test_app_browser.py). Called by `make setup` and the dev container.
#
# Idempotent: does nothing when both are installed. Installs with apt-get as root, or through
# passwordless sudo; otherwise says what to run and exits 0, so `make setup` still works for a
# contributor without root (the browser test then skips, or fails when WASTE_REQUIRE_BROWSER=1).
# Only Debian's packages: no browser or driver is downloaded from anywhere else.
set -euo pipefail

PACKAGES=(chromium chromium-driver)

have_browser() {
    command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1
}

if have_browser; then
    echo "install_test_deps: chromium and chromedriver already installed"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_test_deps: no apt-get here; install Chromium and chromedriver yourself" \
         "(the browser test skips without them)" >&2
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    echo "install_test_deps: not root; run: sudo apt-get update && sudo apt-get install -y ${PACKAGES[*]}" >&2
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}"
have_browser
echo "install_test_deps: installed $(chromium --version 2>/dev/null | head -1)"
