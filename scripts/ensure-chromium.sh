#!/usr/bin/env bash
# Makes sure Debian's Chromium is installed for the browser tests (tests/browser/).
# Playwright drives it through its executable path; no browser is ever downloaded.
# Does nothing when it is already there; installs it with apt as root; otherwise prints
# the command to run and fails.
set -euo pipefail
CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
if [ -x "$CHROMIUM" ]; then
    exit 0
fi
APT_CMD="apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium"
if [ "$(id -u)" != 0 ]; then
    echo "[setup] Chromium ($CHROMIUM) is needed for the browser tests; install it as root:" >&2
    echo "    $APT_CMD" >&2
    exit 1
fi
echo "[setup] installing Debian's chromium for the browser tests"
apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
test -x "$CHROMIUM"
