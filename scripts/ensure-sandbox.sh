#!/usr/bin/env bash
# Makes sure generated tests can run in the sandbox (jupyter_ds/testgen/sandbox.py):
# Debian's bubblewrap (bwrap) and, when run as root, the unprivileged user the tests run
# as (jupyter-ds-sandbox, no home, no login shell). Silent when both are already there.
# Not root and bwrap missing: prints the command to run and goes on (the sandbox then
# falls back to resource limits only, and says so in GET health and every test result).
set -euo pipefail
SANDBOX_USER="${JUPYTER_DS_SANDBOX_USER:-jupyter-ds-sandbox}"
if ! command -v bwrap >/dev/null 2>&1; then
    APT_CMD="apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends bubblewrap"
    if [ "$(id -u)" != 0 ]; then
        echo "[setup] bubblewrap (bwrap) isolates generated tests; install it as root:" >&2
        echo "    $APT_CMD" >&2
        echo "[setup] until then tests run with resource limits only (no network isolation)" >&2
    else
        echo "[setup] installing Debian's bubblewrap for the test sandbox"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends bubblewrap >/dev/null
        command -v bwrap >/dev/null
    fi
fi
if [ "$(id -u)" = 0 ] && [ -n "$SANDBOX_USER" ] && ! getent passwd "$SANDBOX_USER" >/dev/null; then
    echo "[setup] creating the unprivileged user $SANDBOX_USER for the test sandbox"
    useradd --system --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin --comment "jupyter-ds test sandbox" "$SANDBOX_USER"
fi
