#!/usr/bin/env bash
# Makes sure the real editors of the editor tests (tests/editors/) are installed: Debian's
# Neovim and, when it installs cleanly, Emacs (emacs-nox) with Debian's eglot (elpa-eglot).
# The tests drive them headless against `jupyter-ds lsp`.
#
# Silent when they are already there. As root, installs what is missing with apt (after an
# `apt-get update`); otherwise, or where apt is not there, prints the command to run and
# goes on: the tests of a missing editor skip and say why. Emacs is best effort: a failed
# install of it only skips the Emacs test.
set -euo pipefail
have_nvim() { command -v nvim >/dev/null 2>&1; }
have_eglot() {  # Debian's elpa-eglot, or an Emacs that has eglot built in (29+)
    command -v emacs >/dev/null 2>&1 || return 1
    dpkg-query -W -f='${Status}' elpa-eglot 2>/dev/null | grep -q "ok installed" \
        || emacs --batch --eval "(require 'eglot)" >/dev/null 2>&1
}
if have_nvim && have_eglot; then
    exit 0
fi
missing=()
have_nvim || missing+=(neovim)
have_eglot || missing+=(emacs-nox elpa-eglot)
APT_CMD="apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ${missing[*]}"
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "[setup] the editor tests (tests/editors) need ${missing[*]}; install them as root:" >&2
    echo "    $APT_CMD" >&2
    echo "[setup] until then those tests are skipped" >&2
    exit 0
fi
install() {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" \
        >/dev/null 2>&1
}
echo "[setup] installing Debian's ${missing[*]} for the editor tests"
apt-get update -qq >/dev/null 2>&1 || true
if ! have_nvim; then
    install neovim || echo "[setup] neovim did not install; the Neovim test will be skipped" >&2
fi
if ! have_eglot; then
    install emacs-nox elpa-eglot \
        || echo "[setup] emacs-nox/elpa-eglot did not install; the Emacs test will be skipped" >&2
fi
