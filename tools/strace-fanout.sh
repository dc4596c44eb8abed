#!/usr/bin/env bash
# The io_uring backend's system calls during steady fan-out, counted with strace:
# `ringcast serve` (broadcast mode, one worker by default) with SUBSCRIBERS clients and a
# publisher at RATE messages/s; strace follows the server for TRACE_SECONDS once the
# load is steady. Passes when
#   - the server makes no write system call on a socket (sendmsg, sendto, sendmmsg,
#     write, writev): every delivery goes through io_uring, and
#   - it enters the ring at most 2 times per published message per shard.
#
#   tools/strace-fanout.sh                      # 1,000 subscribers, 50 msg/s, 2 s
#   SUBSCRIBERS=2000 RATE=100 WORKERS=2 tools/strace-fanout.sh
#   RINGCAST_IO=epoll tools/strace-fanout.sh    # the same count for the epoll backend (fails: it writes)
#
# Needs strace (apt-get install strace) and ptrace permission (root, or
# kernel.yama.ptrace_scope=0). Writes its counts to $OUT (default target/strace-fanout).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SUBSCRIBERS=${SUBSCRIBERS:-1000}
RATE=${RATE:-50}
TRACE_SECONDS=${TRACE_SECONDS:-2}
WORKERS=${WORKERS:-1}
OUT=${OUT:-target/strace-fanout}
command -v strace >/dev/null || { echo "strace is not installed: apt-get install -y strace" >&2; exit 2; }
cargo build --release -q -p ringcast-service -p ringcast-loadgen
mkdir -p "$OUT"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
RUST_LOG=warn target/release/ringcast serve --port "$port" --bind 127.0.0.1 --workers "$WORKERS" --mode broadcast \
    --status-page false >"$OUT/server.log" 2>&1 &
server=$!
cleanup() { kill "$server" "${loadgen:-}" 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done

# Long enough to connect everyone, warm up and then be traced.
duration=$((TRACE_SECONDS + 8))
target/release/ringcast-loadgen broadcast "ws://127.0.0.1:$port/" --clients "$SUBSCRIBERS" --payload 64 \
    --rate "$RATE" --warmup 3s --duration "${duration}s" --progress none --json "$OUT/loadgen.json" \
    >"$OUT/loadgen.log" 2>&1 &
loadgen=$!

published() {
    curl -s "http://127.0.0.1:$port/metrics" | awk '/^ringcast_messages_received_total/ { sum += $2 } END { print sum + 0 }'
}
# Wait until every subscriber is connected and messages flow.
for _ in $(seq 300); do
    ws=$(curl -s "http://127.0.0.1:$port/metrics" | awk '/^ringcast_websockets/ { print $2 }')
    [ "${ws:-0}" -ge "$SUBSCRIBERS" ] && break
    sleep 0.1
done
sleep 3

before=$(published)
timeout -s INT "$TRACE_SECONDS" strace -f -qq -p "$server" -o "$OUT/strace.txt" \
    -e trace=io_uring_enter,sendmsg,sendto,sendmmsg,write,writev || true
after=$(published)
messages=$((after - before))

# Socket writes: a write or writev on a descriptor that is a socket (eventfd writes that
# wake a shard are not socket writes), and every send*. Descriptors are looked up now,
# while the traced connections are still open.
socket_writes=0
while read -r fd; do
    case $(readlink "/proc/$server/fd/$fd" 2>/dev/null) in
        socket:*) socket_writes=$((socket_writes + 1)) ;;
    esac
done < <(grep -oE '(^|[0-9] +)(write|writev)\(([0-9]+)' "$OUT/strace.txt" | grep -oE '[0-9]+$' || true)
wait "$loadgen" || true
sends=$(grep -cE '(^|[0-9] +)(sendmsg|sendto|sendmmsg)\(' "$OUT/strace.txt" || true)
enters=$(grep -cE '(^|[0-9] +)io_uring_enter\(' "$OUT/strace.txt" || true)
socket_writes=$((socket_writes + sends))
limit=$((2 * messages * WORKERS))
{
    echo "subscribers=$SUBSCRIBERS rate=$RATE workers=$WORKERS traced=${TRACE_SECONDS}s backend=${RINGCAST_IO:-auto}"
    echo "published messages while traced: $messages"
    echo "io_uring_enter calls: $enters (limit 2 per message per shard: $limit)"
    echo "socket write system calls: $socket_writes"
} | tee "$OUT/summary.txt"
if [ ! -s "$OUT/strace.txt" ]; then
    echo "FAIL: strace recorded nothing (no ptrace permission?)" >&2
    exit 1
fi
if [ "$messages" -le 0 ]; then
    echo "FAIL: no message was published while traced (see $OUT/loadgen.log)" >&2
    exit 1
fi
if [ "$socket_writes" -ne 0 ] || [ "$enters" -gt "$limit" ]; then
    echo "FAIL" >&2
    exit 1
fi
echo "PASS"
