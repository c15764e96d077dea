#!/usr/bin/env bash
# System packages the tests need beyond the venv, all from Debian:
#   chromium, chromium-driver  the end-to-end app test (tests/test_app_browser.py)
#   nginx                      the TLS/auth reverse proxy the client tests put in front of Triton
#   prometheus                 promtool (rule unit tests, config checks) and the Prometheus server
#                              the monitoring tests start against a real tritonserver
#   openssl                    the CA and certificates the TLS tests generate for nginx
#   curl                       the wire-protocol examples of docs/API.md, run as they are written
# Called by `make setup` and the dev container.
#
# Idempotent: does nothing when every binary is there. Installs with apt-get as root, or through
# passwordless sudo; otherwise says what to run and exits 0, so `make setup` still works for a
# contributor without root (the tests that need a missing binary then skip).
# Only Debian's packages: nothing is downloaded from anywhere else.
#
# The tests start their own nginx and Prometheus (own config, prefix, data dir, loopback ports), so
# the packages' system daemons are never needed. Debian starts them on install where an init system
# allows it (nginx on port 80, Prometheus on 9090 with a data dir in /var/lib); a policy-rc.d that
# refuses every start is put in place for the install, the way Debian's docker images do.
set -euo pipefail

PACKAGES=(chromium chromium-driver nginx prometheus openssl curl)
BINARIES=(chromium chromedriver nginx prometheus promtool openssl curl)

missing() {
    local b out=()
    for b in "${BINARIES[@]}"; do
        # nginx lives in /usr/sbin, which is not on a non-root PATH
        command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || out+=("$b")
    done
    echo "${out[*]}"
}

if [ -z "$(missing)" ]; then
    echo "install_test_deps: ${BINARIES[*]} already installed"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_test_deps: no apt-get here; install $(missing) yourself" \
         "(the tests that need them skip without them)" >&2
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

POLICY=/usr/sbin/policy-rc.d
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\n# install_test_deps.sh: no service starts during the install\nexit 101\n' \
        | "${SUDO[@]}" tee "$POLICY" >/dev/null
    "${SUDO[@]}" chmod 755 "$POLICY"
    trap '"${SUDO[@]}" rm -f "$POLICY"' EXIT
fi

export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}"

still=$(missing)
if [ -n "$still" ]; then
    echo "install_test_deps: still missing after the install: $still" >&2
    exit 1
fi
echo "install_test_deps: installed $(chromium --version 2>/dev/null | head -1)," \
     "$(/usr/sbin/nginx -v 2>&1), $(prometheus --version 2>&1 | head -1)"
