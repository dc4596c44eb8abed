#!/usr/bin/env bash
# tools/setup.sh — installs what `make test` or `make bench` needs, idempotently; both targets
# run it first, so a fresh clone needs nothing else.
#
#   tools/setup.sh test    # Debian packages (chromium, redis-server, openssl), the Python venv
#                          # (websockets, kosoku), the npm peers (ws, playwright-core) and
#                          # Autobahn|Testsuite (wstest when pyenv's Python 2.7 is there)
#   tools/setup.sh bench   # cargo and python3; the baseline servers of benches/peers are built
#                          # by benches/bench.py itself (cargo, --locked)
#
# Each step first checks whether its result is already there (a binary, or a stamp holding a hash
# of the step's inputs), so a second run takes a few seconds. When something is missing and cannot
# be installed (not root, no apt-get, a registry unreachable) it prints the exact command to run and
# exits 1, before any test runs (`make test` compiles the lints meanwhile, then stops).
#
# Environment: RINGCAST_PEERS_DIR (default ~/.cache/ringcast-peers) holds the venvs and stamps;
# FORCE=1 redoes every install step.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
KIND=${1:-test}
PEERS_DIR=${RINGCAST_PEERS_DIR:-$HOME/.cache/ringcast-peers}
FORCE=${FORCE:-0}
export DEBIAN_FRONTEND=noninteractive PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
T0=$SECONDS

say() { echo "setup: $*"; }
# fail WHAT COMMAND: stop with the one command that fixes it.
fail() {
  echo "setup: error: $1" >&2
  echo "setup: run this, then the make target again:" >&2
  echo "    $2" >&2
  exit 1
}

need_tool() {  # need_tool BINARY HOW-TO-INSTALL
  command -v "$1" >/dev/null 2>&1 || fail "$1 not found" "$2"
}

# --- Debian packages ------------------------------------------------------------------------------
# apt_need PACKAGE CHECK...: PACKAGE is installed when the check command succeeds.
APT_MISSING=()
apt_need() {
  local package=$1
  shift
  "$@" >/dev/null 2>&1 || APT_MISSING+=("$package")
}

apt_install() {
  [ ${#APT_MISSING[@]} -eq 0 ] && return 0
  local cmd="apt-get update && apt-get install -y ${APT_MISSING[*]}"
  if [ "$(id -u)" != 0 ]; then
    fail "missing Debian packages: ${APT_MISSING[*]} (installing them needs root)" "sudo sh -c '$cmd'"
  fi
  command -v apt-get >/dev/null 2>&1 || fail "missing: ${APT_MISSING[*]}, and there is no apt-get" "$cmd"
  local t0=$SECONDS try
  say "installing Debian packages: ${APT_MISSING[*]}"
  for try in 1 2; do
    if apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${APT_MISSING[@]}" >/dev/null; then
      say "Debian packages installed in $((SECONDS - t0)) s"
      return 0
    fi
    echo "setup: apt-get failed (try $try)" >&2
    sleep 3
  done
  fail "apt-get could not install ${APT_MISSING[*]}" "$cmd"
}

# --- the Rust toolchain ---------------------------------------------------------------------------
rust_tools() {
  need_tool cargo "install Rust (rustup), then: rustup component add rustfmt clippy"
  cargo fmt --version >/dev/null 2>&1 || fail "rustfmt is missing" "rustup component add rustfmt"
  cargo clippy --version >/dev/null 2>&1 || fail "clippy is missing" "rustup component add clippy"
  if ! cargo nextest --version >/dev/null 2>&1; then
    say "installing cargo-nextest (crates.io)"
    cargo install --locked cargo-nextest >/dev/null 2>&1 || fail "cargo-nextest is missing" "cargo install --locked cargo-nextest"
  fi
}

# --- Autobahn|Testsuite ---------------------------------------------------------------------------
# wstest (the real suite) needs Python 2.7, which only pyenv provides here; without it the
# conformance run uses kosoku (tools/conformance.sh picks the engine). The stamp covers both.
autobahn() {
  local stamp_file=$PEERS_DIR/.autobahn-stamp
  local py27=no
  for c in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/2.7.18/bin/python2.7 "$(command -v python2.7 || true)"; do
    [ -n "$c" ] && [ -x "$c" ] && py27=yes && break
  done
  local stamp
  stamp="$(cat peers/requirements.txt peers/autobahn/autobahn.sh | sha256sum | cut -d' ' -f1) py27=$py27"
  if [ "$FORCE" != 1 ] && [ "$(cat "$stamp_file" 2>/dev/null)" = "$stamp" ] && [ -x "$PEERS_DIR/venv-py3/bin/kosoku" ] \
     && { [ "$py27" = no ] || [ -x "$PEERS_DIR/venv-ab/bin/wstest" ]; }; then
    say "autobahn up to date ($([ "$py27" = yes ] && echo wstest || echo "kosoku only: no Python 2.7"))"
    return 0
  fi
  local t0=$SECONDS
  say "installing Autobahn|Testsuite"
  peers/autobahn/autobahn.sh install >"$PEERS_DIR/autobahn-install.log" 2>&1 \
    || { tail -20 "$PEERS_DIR/autobahn-install.log" >&2; fail "autobahn.sh install failed (log above)" "peers/autobahn/autobahn.sh install"; }
  if [ "$py27" = yes ] && ! "$PEERS_DIR/venv-ab/bin/wstest" --autobahnversion >/dev/null 2>&1; then
    # A broken wstest would otherwise be picked over kosoku; start it afresh next time.
    rm -rf "$PEERS_DIR/venv-ab"
    tail -20 "$PEERS_DIR/autobahn-install.log" >&2
    fail "wstest was installed but does not run (log above)" "FORCE=1 tools/setup.sh test"
  fi
  echo "$stamp" >"$stamp_file"
  say "autobahn installed in $((SECONDS - t0)) s"
}

case "$KIND" in
  test)
    rust_tools
    need_tool python3 "apt-get install -y python3 python3-venv"
    need_tool node "apt-get install -y nodejs npm   (Node.js >= 20)"
    need_tool npm "apt-get install -y npm"
    apt_need python3-venv python3 -c 'import ensurepip, venv'
    apt_need chromium test -x "${RINGCAST_CHROMIUM:-/usr/bin/chromium}"
    apt_need redis-server command -v redis-server
    apt_need openssl command -v openssl
    apt_install
    mkdir -p "$PEERS_DIR"
    bash peers/setup.sh | sed 's/^peers\/setup.sh: /setup: peers: /' \
      || fail "peers/setup.sh failed (output above)" "bash peers/setup.sh"
    autobahn
    ;;
  bench)
    need_tool cargo "install Rust (rustup)"
    need_tool python3 "apt-get install -y python3"
    python3 -c 'import sys; assert sys.version_info >= (3, 8)' || fail "benches/bench.py needs Python >= 3.8" "apt-get install -y python3"
    need_tool git "apt-get install -y git"
    ;;
  *)
    echo "usage: tools/setup.sh test|bench" >&2
    exit 2
    ;;
esac
say "$KIND prerequisites ready ($((SECONDS - T0)) s)"
