#!/usr/bin/env bash
# Autobahn|Testsuite (RFC 6455 and RFC 7692 conformance) against ringcast: all 517 cases,
# the permessage-deflate ones (12.*, 13.*) included, for the server's echo example on both
# I/O backends and for the client. Unimplemented counts as failed (ALLOW_UNIMPLEMENTED=0);
# every run must end with 0 failed.
#
# The three runs go side by side: the fuzzer is single-threaded Python and the compression
# cases take it minutes, so in turn they would take three times as long on two cores.
#
#   tools/conformance.sh            (after `cargo build --release --example echo --example autobahn_client`)
#   CASES='12.*' tools/conformance.sh   (a subset)
#
# The engine is the real Autobahn wstest (Python 2.7) when `tools/setup.sh test` could install it,
# else kosoku, which runs Autobahn's own case files on Python 3; ENGINE=wstest|kosoku forces one.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export EXCLUDE=${EXCLUDE:-}
export ALLOW_UNIMPLEMENTED=${ALLOW_UNIMPLEMENTED:-0}
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

client_run() {
  echo "== autobahn client mode"
  PORT=$(free_port) OUTDIR="$OUT/client" "$AUTOBAHN" client -- "$CLIENT" | tail -4
}

mkdir -p "$OUT"
started=$SECONDS
server_run io_uring >"$OUT/run-io_uring.txt" 2>&1 & uring=$!
server_run epoll >"$OUT/run-epoll.txt" 2>&1 & epoll=$!
client_run >"$OUT/run-client.txt" 2>&1 & client=$!
status=0
for job in "$uring:io_uring" "$epoll:epoll" "$client:client"; do
  wait "${job%%:*}" || status=1
  cat "$OUT/run-${job#*:}.txt"
done
echo "autobahn: three runs in $((SECONDS - started)) s (CASES=${CASES:-*} EXCLUDE=${EXCLUDE:-none} ALLOW_UNIMPLEMENTED=$ALLOW_UNIMPLEMENTED)"
exit "$status"
