#!/usr/bin/env bash
# Makes sure promtool is available for the alert-rule tests (tests/test_metrics.py runs
# `promtool check rules` and `promtool test rules` on deploy/prometheus/). Silent when it
# is already there (on PATH or in the venv).
#
# promtool comes from Debian's `prometheus` package, but only the promtool binary is
# taken: the package is downloaded with `apt-get download` and unpacked into the venv's
# bin/, so no Prometheus server gets installed, enabled or started. Best effort: where it
# cannot be had (not Debian, no apt lists and not root), it says so and the tests that
# need it skip with that reason (the schema check of the rules always runs).
set -euo pipefail
VENV="${VENV:-.venv}"
if command -v promtool >/dev/null 2>&1 || [ -x "$VENV/bin/promtool" ]; then
    exit 0
fi
note() { echo "[setup] promtool: $*; the promtool checks of the alert rules will be skipped" >&2; }
if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-deb >/dev/null 2>&1; then
    note "apt-get/dpkg-deb not found (install Prometheus' promtool on PATH by hand)"
    exit 0
fi
mkdir -p "$VENV/bin"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"  # apt's _apt sandbox user downloads into it
download() { (cd "$work" && apt-get download -qq prometheus >/dev/null 2>&1); }
if ! download; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq >/dev/null 2>&1 || true
    fi
    if ! download; then
        note "could not download Debian's prometheus package (as root: apt-get update)"
        exit 0
    fi
fi
echo "[setup] installing promtool (from Debian's prometheus package) into $VENV/bin"
dpkg-deb -x "$work"/prometheus_*.deb "$work/root"
install -m 755 "$work/root/usr/bin/promtool" "$VENV/bin/promtool"
"$VENV/bin/promtool" --version >/dev/null
