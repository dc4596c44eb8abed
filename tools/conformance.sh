#!/usr/bin/env bash
# Autobahn|Testsuite (RFC 6455 conformance) against ringcast: the server's echo example on
# both I/O backends, then the client. Compression cases (12.*, 13.*) are excluded: ringcast
# negotiates no extensions. Every run must end with 0 failed.
#
#   tools/conformance.sh            (after `cargo build --release --example echo --example autobahn_client`)
#
# The engine is the real Autobahn wstest (Python 2.7) when `tools/setup.sh test` could install it,
# else kosoku, which runs Autobahn's own case files on Python 3; ENGINE=wstest|kosoku forces one.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export EXCLUDE=${EXCLUDE:-12.*,13.*}
PEERS_DIR=${RINGCAST_PEERS_DIR:-$HOME/.cache/ringcast-peers}
if [ -z "${ENGINE:-}" ]; then
  if "$PEERS_DIR/venv-ab/bin/wstest" --autobahnversion >/dev/null 2>&1; then
    ENGINE=wstest
  else
    ENGINE=kosoku
    echo "NOTE: the real Autobahn wstest (Python 2.7) is unavailable: using ENGINE=kosoku as the fallback"
  fi
fi
export ENGINE
echo "autobahn engine: ENGINE=$ENGINE"
AUTOBAHN=peers/autobahn/autobahn.sh
ECHO=target/release/examples/echo
CLIENT=target/release/examples/autobahn_client
OUT=${OUT:-$PWD/target/autobahn}
[ -x "$ECHO" ] && [ -x "$CLIENT" ] || { echo "build first: cargo build --release --example echo --example autobahn_client" >&2; exit 2; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

server_run() {  # $1 = io_uring | epoll
  local port pid rc=0
  port=$(free_port)
  RINGCAST_IO=$1 "$ECHO" --port "$port" --workers 2 >"$OUT/echo-$1.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  echo "== autobahn server mode, backend $1 ($(head -1 "$OUT/echo-$1.log"))"
  OUTDIR="$OUT/server-$1" "$AUTOBAHN" server "ws://127.0.0.1:$port/" | tail -4 || rc=$?
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
  return "$rc"
}

mkdir -p "$OUT"
status=0
server_run io_uring || status=1
server_run epoll || status=1
echo "== autobahn client mode"
OUTDIR="$OUT/client" "$AUTOBAHN" client -- "$CLIENT" | tail -4 || status=1
exit "$status"
