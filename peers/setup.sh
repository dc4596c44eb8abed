#!/usr/bin/env bash
# peers/setup.sh — install the independent WebSocket peers used by ringcast's end-to-end tests.
#
#   * Python `websockets` (+ `kosoku`, Autobahn's Python 3 runner) in a venv at
#     ${RINGCAST_PEERS_DIR:-$HOME/.cache/ringcast-peers}/venv-py3   (pip install -r requirements.txt kosoku)
#   * Node `ws` and `playwright-core` in peers/node_modules          (npm ci; never downloads a browser)
#   * checks that Chromium is at ${RINGCAST_CHROMIUM:-/usr/bin/chromium} (apt-get install -y chromium)
#
# Idempotent, and fast (< 2 s) when everything is already installed: each step is skipped
# while its stamp (a hash of its input file) is unchanged. FORCE=1 reinstalls.
# SETUP_SKIP_CHROMIUM=1 turns a missing Chromium into a warning (browser tests will then fail).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PEERS_DIR=${RINGCAST_PEERS_DIR:-$HOME/.cache/ringcast-peers}
VENV=$PEERS_DIR/venv-py3
CHROMIUM=${RINGCAST_CHROMIUM:-/usr/bin/chromium}
FORCE=${FORCE:-0}
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1

say() { echo "peers/setup.sh: $*"; }
die() { echo "peers/setup.sh: error: $*" >&2; exit 1; }
hash_of() { cat "$@" | sha256sum | cut -d' ' -f1; }

command -v python3 >/dev/null || die "python3 not found"
command -v node >/dev/null || die "node not found (Node.js >= 20 is needed)"
command -v npm >/dev/null || die "npm not found"

# --- Python venv ---------------------------------------------------------------------------------
py_stamp="$(hash_of "$HERE/requirements.txt") kosoku"
if [ "$FORCE" != 1 ] && [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.ringcast-stamp" 2>/dev/null)" = "$py_stamp" ]; then
  say "python venv up to date ($VENV)"
else
  t0=$SECONDS
  mkdir -p "$PEERS_DIR"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$HERE/requirements.txt" kosoku
  echo "$py_stamp" > "$VENV/.ringcast-stamp"
  say "python venv installed in $((SECONDS - t0)) s ($VENV)"
fi
"$VENV/bin/python" -c 'import websockets, sys; v = websockets.__version__; assert int(v.split(".")[0]) >= 14, v; print("peers/setup.sh: websockets", v)'

# --- Node packages -------------------------------------------------------------------------------
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 20 ] || die "Node.js $(node --version) is too old: playwright-core needs >= 20"
npm_stamp=$(hash_of "$HERE/package-lock.json")
if [ "$FORCE" != 1 ] && [ -f "$HERE/node_modules/ws/package.json" ] && [ -f "$HERE/node_modules/playwright-core/package.json" ] \
   && [ "$(cat "$HERE/node_modules/.ringcast-stamp" 2>/dev/null)" = "$npm_stamp" ]; then
  say "node_modules up to date"
else
  t0=$SECONDS
  (cd "$HERE" && npm ci --no-audit --no-fund --loglevel=error 2>&1 | grep -v 'Unknown user config' || true)
  [ -f "$HERE/node_modules/ws/package.json" ] || die "npm ci did not install ws"
  echo "$npm_stamp" > "$HERE/node_modules/.ringcast-stamp"
  say "node_modules installed in $((SECONDS - t0)) s"
fi
say "ws $(node -p 'require(process.argv[1]).version' "$HERE/node_modules/ws/package.json"), playwright-core $(node -p 'require(process.argv[1]).version' "$HERE/node_modules/playwright-core/package.json")"

# --- Chromium ------------------------------------------------------------------------------------
if [ -x "$CHROMIUM" ]; then
  say "chromium: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
else
  msg="Chromium not found at $CHROMIUM. Install it with:  apt-get update && apt-get install -y chromium   (Debian package; as root)"
  if [ "${SETUP_SKIP_CHROMIUM:-0}" = 1 ]; then
    echo "peers/setup.sh: warning: $msg" >&2
  else
    die "$msg"
  fi
fi
say "ok"
