#!/usr/bin/env bash
# Autobahn|Testsuite (RFC 6455 and RFC 7692 conformance) against ringcast: all 517 cases,
# the permessage-deflate ones (12.*, 13.*) included, for the server's echo example on both
# I/O backends and for the client. Unimplemented counts as failed (ALLOW_UNIMPLEMENTED=0);
# every run must end with 0 failed.
#
# Each of the three testees' cases is cut into shards (SHARDS, a ';'-separated list of
# CASES lists), and up to JOBS shards run at once: the fuzzer is single-threaded Python
# that spends much of each compression case waiting, so one wstest per testee would take
# about 10 minutes for 12.* and 13.* alone. Every shard must end with 0 failed, and each
# testee must have run all of its cases (517 with the default CASES).
#
#   tools/conformance.sh            (after `cargo build --release --example echo --example autobahn_client`)
#   CASES='12.*' tools/conformance.sh   (a subset)
#
# Autobahn judges framing and negotiation, not the compression ratio, so the testees split the
# levels: the io_uring server compresses at the default level (6), the epoll server and the
# client at level 1, which halves what their deflate costs in this CPU-bound run (about 60 of
# each testee's ~560 CPU-s on the 2-core box) and puts both kinds of zlib-rs output through
# the suite.
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

SHARDS=${SHARDS:-'13.5.*;13.6.*,13.7.*;13.3.*,13.4.*;13.1.*,13.2.*;12.4.*,12.5.*;1.*,2.*,3.*,4.*,5.*,6.*,7.*,10.*;9.*;12.2.*;12.1.*;12.3.2,12.3.3,12.3.4,12.3.5,12.3.6,12.3.7,12.3.8,12.3.9;12.3.1*'}
JOBS=${JOBS:-8}
[ -n "${CASES:-}" ] && SHARDS=$CASES   # a subset asked for: one shard per testee

# One shard: $1 = io_uring | epoll | client, $2 = shard number, $3 = its CASES.
run_shard() {
  local testee=$1 n=$2 cases=$3 log="$OUT/run-$1-$2.txt" rc=0
  if [ "$testee" = client ]; then
    CASES=$cases PORT=$(free_port) OUTDIR="$OUT/client-$n" "$AUTOBAHN" client -- "$CLIENT" --deflate-level 1 \
      >"$log" 2>&1 || rc=$?
  else
    CASES=$cases OUTDIR="$OUT/server-$testee-$n" "$AUTOBAHN" server "ws://127.0.0.1:$(cat "$OUT/port-$testee")/" \
      >"$log" 2>&1 || rc=$?
  fi
  echo "$testee shard $n ($cases): $(tail -1 "$log") [exit $rc]"
  return "$rc"
}

mkdir -p "$OUT"
rm -rf "$OUT"/server-* "$OUT"/client-* "$OUT"/run-*.txt
started=$SECONDS
pids=()
declare -A level=([io_uring]=6 [epoll]=1)
for backend in io_uring epoll; do
  port=$(free_port)
  echo "$port" >"$OUT/port-$backend"
  RINGCAST_IO=$backend "$ECHO" --port "$port" --workers 2 --deflate-level "${level[$backend]}" \
    >"$OUT/echo-$backend.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  echo "== echo server, backend $backend, deflate level ${level[$backend]}: $(head -1 "$OUT/echo-$backend.log")"
done
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT

IFS=';' read -ra shards <<<"$SHARDS"
status=0
running=0
# The slowest shards (12.3, 12.1, 9.*: measured) come last in SHARDS and start first, so
# the run's tail is short.
for ((i = ${#shards[@]} - 1; i >= 0; i--)); do
  for testee in io_uring epoll client; do
    run_shard "$testee" "$i" "${shards[$i]}" &
    running=$((running + 1))
    if [ "$running" -ge "$JOBS" ]; then
      wait -n || status=1
      running=$((running - 1))
    fi
  done
done
while [ "$running" -gt 0 ]; do
  wait -n || status=1
  running=$((running - 1))
done

# Every testee ran every case, and nothing failed.
for testee in io_uring epoll client; do
  total=$(cat "$OUT"/run-"$testee"-*.txt | sed -n 's/^autobahn: \([0-9]*\) passed, \([0-9]*\) failed$/\1 \2/p' |
    awk '{ p += $1; f += $2 } END { printf "%d passed, %d failed", p, f }')
  echo "autobahn $testee: $total"
  case "$total" in *" 0 failed") ;; *) status=1 ;; esac
  if [ -z "${CASES:-}" ] && [ "${total%% *}" != 517 ]; then
    echo "autobahn $testee: expected all 517 cases to pass" >&2
    status=1
  fi
done
echo "autobahn: all shards in $((SECONDS - started)) s (JOBS=$JOBS EXCLUDE=${EXCLUDE:-none} ALLOW_UNIMPLEMENTED=$ALLOW_UNIMPLEMENTED)"
exit "$status"
