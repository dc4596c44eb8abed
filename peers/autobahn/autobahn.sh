#!/usr/bin/env bash
# autobahn.sh — Autobahn|Testsuite (RFC 6455 conformance fuzzer) against a server or client on loopback.
#
#   autobahn.sh install                 # one-time: py2.7 venv with wstest, py3 venv with kosoku+websockets
#   autobahn.sh server ws://127.0.0.1:PORT[/path]   # fuzzingclient: test a running ECHO SERVER
#   autobahn.sh client -- CMD [ARGS...] # fuzzingserver: test a CLIENT. Starts the fuzzer on
#                                       #   ws://127.0.0.1:$PORT, runs CMD with $AUTOBAHN_URL and
#                                       #   $AUTOBAHN_AGENT set; CMD must do getCaseCount, runCase
#                                       #   1..N (echo everything), updateReports (see py_autobahn_client.py)
#   autobahn.sh summarize DIR           # re-print the summary of DIR/index.json
#   autobahn.sh selftest                # both modes against the Python `websockets` reference peers
#
# Env knobs:
#   ENGINE=wstest|kosoku   wstest = the real Autobahn|Testsuite 25.10.1 (Python 2.7, default);
#                          kosoku = PyPI `kosoku` (Rust runner executing Autobahn's own case files, py3)
#   CASES='1.*,2.*'        comma list of case globs (default '*': all 517 cases, incl. 9.* perf and
#                          12.*/13.* permessage-deflate; against a slow peer the full run takes ~15 min)
#   EXCLUDE='12.*,13.*'    comma list of globs to skip        AGENT=name (default testee)
#   OUTDIR=dir             reports (default ./autobahn-reports/{servers,clients}) — index.html is browsable
#   PORT=9001              client mode: fuzzer port            AB_TIMEOUT=1800 (s) bound on one run
#   STRICT=1               also count NON-STRICT as failure    ALLOW_UNIMPLEMENTED=0: count UNIMPLEMENTED
#   STRICT_CLOSE=0         don't count behaviorClose failures   (defaults: STRICT=0 ALLOW_UNIMPLEMENTED=1
#                                                                STRICT_CLOSE=1)
#   PEERS_DIR=$HOME/.cache/ringcast-peers (venvs)      KOSOKU_PARALLEL=1: kosoku server-mode cases in parallel
# Exit status: 0 iff no case failed. Last line: 'autobahn: N passed, N failed'.
# Traffic goes only to 127.0.0.1. Every wait is bounded; processes started here are stopped by PID.
#
# Vendored from shared/tools/autobahn.sh (with its helpers py_autobahn_client.py, py_echo_server.py)
# so CI needs only this repository. Local changes: PEERS_DIR also honours RINGCAST_PEERS_DIR (same venv
# as peers/setup.sh), and `install` installs peers/requirements.txt (pinned websockets) plus kosoku.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PEERS_DIR=${PEERS_DIR:-${RINGCAST_PEERS_DIR:-$HOME/.cache/ringcast-peers}}
ENGINE=${ENGINE:-wstest}
CASES=${CASES:-*}
EXCLUDE=${EXCLUDE:-}
AGENT=${AGENT:-testee}
PORT=${PORT:-9001}
AB_TIMEOUT=${AB_TIMEOUT:-1800}
WSTEST=${WSTEST:-$PEERS_DIR/venv-ab/bin/wstest}
PY3=${PY3:-$PEERS_DIR/venv-py3/bin/python}
KOSOKU=${KOSOKU:-$PEERS_DIR/venv-py3/bin/kosoku}

die() { echo "autobahn.sh: $*" >&2; exit 2; }

find_py27() {
  for c in "${PY27:-}" "${PYENV_ROOT:-$HOME/.pyenv}"/versions/2.7.18/bin/python2.7 "$(command -v python2.7 || true)"; do
    [ -n "$c" ] && [ -x "$c" ] && "$c" -c 'import sys; assert sys.version_info[:2]==(2,7)' 2>/dev/null && { echo "$c"; return 0; }
  done
  return 1
}

cmd_install() {
  mkdir -p "$PEERS_DIR"
  if [ ! -x "$PEERS_DIR/venv-py3/bin/python" ]; then python3 -m venv "$PEERS_DIR/venv-py3"; fi
  if [ -f "$HERE/../requirements.txt" ]; then
    "$PEERS_DIR/venv-py3/bin/pip" install -q --disable-pip-version-check -r "$HERE/../requirements.txt" kosoku
  else
    "$PEERS_DIR/venv-py3/bin/pip" install -q websockets kosoku
  fi
  if P27=$(find_py27); then
    if [ ! -x "$WSTEST" ]; then
      # virtualenv < 20.22 is the last that can create Python 2.7 environments
      [ -x "$PEERS_DIR/venv-tools/bin/virtualenv" ] || { python3 -m venv "$PEERS_DIR/venv-tools";
        "$PEERS_DIR/venv-tools/bin/pip" install -q 'virtualenv<20.22'; }
      "$PEERS_DIR/venv-tools/bin/virtualenv" -q -p "$P27" "$PEERS_DIR/venv-ab"
      # pins its own deps (Twisted 19.10, autobahn 0.10.9, cryptography 3.3.2 ...); builds wsaccel with gcc
      "$PEERS_DIR/venv-ab/bin/pip" install -q autobahntestsuite==25.10.1
    fi
    "$WSTEST" --autobahnversion | tail -2
  else
    echo "no Python 2.7 found: wstest unavailable, use ENGINE=kosoku" >&2
  fi
  "$KOSOKU" -h >/dev/null && echo "kosoku OK"
}

summarize() {  # $1 = report dir containing index.json
  STRICT=${STRICT:-0} ALLOW_UNIMPLEMENTED=${ALLOW_UNIMPLEMENTED:-1} STRICT_CLOSE=${STRICT_CLOSE:-1} \
  python3 - "$1" <<'EOF'
import json, os, sys, collections
d = json.load(open(os.path.join(sys.argv[1], "index.json")))
ok = {"OK", "INFORMATIONAL"}
if os.environ["STRICT"] != "1": ok.add("NON-STRICT")
if os.environ["ALLOW_UNIMPLEMENTED"] == "1": ok.add("UNIMPLEMENTED")
okc = {"OK", "INFORMATIONAL"}
def key(c): return [int(x) for x in c.split(".")]
tp = tf = 0
for agent, cases in d.items():
    beh = collections.Counter(v["behavior"] for v in cases.values())
    bc = collections.Counter(v["behaviorClose"] for v in cases.values())
    fails = []
    for cid in sorted(cases, key=key):
        v = cases[cid]
        bad = v["behavior"] not in ok or (os.environ["STRICT_CLOSE"] == "1" and v["behaviorClose"] not in okc)
        if bad: fails.append((cid, v))
    print(f"agent {agent}: {len(cases)} cases; behavior {dict(beh)}; behaviorClose {dict(bc)}")
    groups = collections.defaultdict(list)
    for cid, v in fails: groups[cid.split(".")[0]].append(cid)
    for cid, v in fails[:60]:
        print(f"  FAIL {cid}: behavior={v['behavior']} behaviorClose={v['behaviorClose']} "
              f"remoteCloseCode={v.get('remoteCloseCode')} report={v.get('reportfile')}")
    if len(fails) > 60: print(f"  ... {len(fails) - 60} more; by section: " + ", ".join(f"{k}.*: {len(g)}" for k, g in sorted(groups.items(), key=lambda x: int(x[0]))))
    tp += len(cases) - len(fails); tf += len(fails)
print(f"reports: {os.path.abspath(sys.argv[1])}/index.html")
print(f"autobahn: {tp} passed, {tf} failed")
sys.exit(1 if tf or not d else 0)
EOF
}

json_list() { python3 -c 'import json,sys; print(json.dumps([s.strip() for s in sys.argv[1].split(",") if s.strip()]))' "$1"; }
kosoku_sel() { local IFS=,; set -f; for c in $CASES; do [ -n "$c" ] && printf -- '-i\n%s\n' "$c"; done
               for c in $EXCLUDE; do [ -n "$c" ] && printf -- '-x\n%s\n' "$c"; done; return 0; }

wait_port() {  # bounded: 20 s
  for _ in $(seq 1 100); do (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.2; done
  return 1
}

cmd_server() {
  local url=${1:?usage: autobahn.sh server ws://127.0.0.1:PORT[/path]}
  case "$url" in ws://127.*|ws://localhost*|ws://\[::1\]*) ;; *) die "only loopback targets allowed: $url";; esac
  local out=${OUTDIR:-$PWD/autobahn-reports/servers}
  rm -rf "$out"; mkdir -p "$out"
  local rc=0
  if [ "$ENGINE" = kosoku ]; then
    local hp=${url#ws://}; hp=${hp%%/*}
    mapfile -t sel < <(kosoku_sel)
    timeout "$AB_TIMEOUT" "$KOSOKU" -m fuzzingclient -p "${KOSOKU_PARALLEL:-1}" "${sel[@]}" -o "$out" "$hp" > "$out/run.log" 2>&1 || rc=$?
  else
    [ -x "$WSTEST" ] || die "wstest not installed: run '$0 install' (or ENGINE=kosoku)"
    local spec="$out/fuzzingclient.json"
    cat > "$spec" <<EOF
{"options": {"failByDrop": false}, "outdir": "$out",
 "servers": [{"agent": "$AGENT", "url": "$url"}],
 "cases": $(json_list "$CASES"), "exclude-cases": $(json_list "$EXCLUDE"), "exclude-agent-cases": {}}
EOF
    (cd "$out" && timeout "$AB_TIMEOUT" "$WSTEST" -m fuzzingclient -s "$spec" > "$out/run.log" 2>&1) || rc=$?
  fi
  [ "$rc" = 124 ] && echo "autobahn.sh: run hit AB_TIMEOUT=${AB_TIMEOUT}s (see $out/run.log)" >&2
  [ -f "$out/index.json" ] || { tail -20 "$out/run.log" >&2; die "no index.json produced (rc=$rc)"; }
  summarize "$out"
}

cmd_client() {
  [ "${1:-}" = "--" ] && shift
  [ $# -ge 1 ] || die "usage: autobahn.sh client -- CMD [ARGS...]"
  local out=${OUTDIR:-$PWD/autobahn-reports/clients}
  rm -rf "$out"; mkdir -p "$out"
  (echo > "/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && die "port $PORT already in use"
  local spid
  if [ "$ENGINE" = kosoku ]; then
    mapfile -t sel < <(kosoku_sel)
    "$KOSOKU" -m fuzzingserver "${sel[@]}" -o "$out" "127.0.0.1:$PORT" > "$out/server.log" 2>&1 &
    spid=$!
  else
    [ -x "$WSTEST" ] || die "wstest not installed: run '$0 install' (or ENGINE=kosoku)"
    cat > "$out/fuzzingserver.json" <<EOF
{"url": "ws://127.0.0.1:$PORT", "outdir": "$out",
 "cases": $(json_list "$CASES"), "exclude-cases": $(json_list "$EXCLUDE"), "exclude-agent-cases": {}}
EOF
    (cd "$out" && exec "$WSTEST" -m fuzzingserver -s "$out/fuzzingserver.json" -u 0) > "$out/server.log" 2>&1 &
    spid=$!
  fi
  trap 'kill "$spid" 2>/dev/null || true' EXIT
  wait_port "$PORT" || { tail -20 "$out/server.log" >&2; die "fuzzingserver did not start"; }
  local rc=0
  AUTOBAHN_URL="ws://127.0.0.1:$PORT" AUTOBAHN_AGENT="$AGENT" timeout "$AB_TIMEOUT" "$@" || rc=$?
  [ "$rc" = 0 ] || echo "autobahn.sh: client command exited $rc" >&2
  for _ in $(seq 1 50); do [ -f "$out/index.json" ] && break; sleep 0.2; done  # report writing, bounded
  kill "$spid" 2>/dev/null || true; wait "$spid" 2>/dev/null || true; trap - EXIT
  [ -f "$out/index.json" ] || { tail -20 "$out/server.log" >&2; die "no index.json (did the client call updateReports?)"; }
  summarize "$out"
}

cmd_selftest() {
  local port=${SELFTEST_PORT:-9302} pid rc=0
  # python websockets 17.4 answers 1002 to 7.1.5 (fragment after close) in both roles: a known peer quirk
  EXCLUDE="${EXCLUDE:+$EXCLUDE,}7.1.5"
  ECHO_MAX_SECONDS=900 "$PY3" "$HERE/py_echo_server.py" "$port" > /dev/null 2>&1 &
  pid=$!
  trap 'kill "$pid" 2>/dev/null || true' EXIT
  wait_port "$port" || die "reference echo server did not start"
  echo "== server mode vs python websockets echo server (CASES=${CASES})"
  cmd_server "ws://127.0.0.1:$port/" || rc=1
  kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; trap - EXIT
  echo "== client mode vs python websockets client"
  AGENT=py-websockets cmd_client -- "$PY3" "$HERE/py_autobahn_client.py" || rc=1
  return $rc
}

case "${1:-}" in
  install) cmd_install ;;
  server) shift; cmd_server "$@" ;;
  client) shift; cmd_client "$@" ;;
  summarize) shift; summarize "${1:?dir}" ;;
  selftest) cmd_selftest ;;
  *) sed -n '2,30p' "$0"; exit 2 ;;
esac
