#!/usr/bin/env python3
"""Subscribers' latency while 1,000 clients try to exhaust the server's input memory.

    python3 benches/input_budget.py [--attackers 1000] [--repeat 5] [--quick]

Against `ringcast serve` (pub/sub mode, its defaults: 1 MiB message limit, 256 MiB
`--max-buffered-input`), 500 subscribers of one topic receive 1 KiB messages at 100
messages/s (`ringcast-loadgen broadcast --subscribe`), once alone and once while ATTACKERS
clients each upgrade and send all but the last byte of a 1 MiB binary message, so that
together they ask the server to hold about 1 GB. The attackers subscribe to nothing: in
broadcast mode every upgraded connection is a subscriber, so the ~240 attackers the budget
leaves open would add half again as many deliveries, and the comparison would measure a
larger fan-out rather than the attack on memory. The two settings alternate within each
repeat (same machine state); the report gives the subscribers' p99 in each, their ratio
(the issue's bound is 1.2), loss, the server's peak RSS, and how many attackers the budget
closed (1009).

Server pinned to CPU 0, load generator and attackers on CPU 1. Results go to
results/<UTC time>-input-budget/ (README.md, results.json, every load generator JSON).
Python 3 standard library only.
"""

import argparse
import base64
import datetime
import json
import os
import platform
import selectors
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchlib import free_port, per_repeat_ratios, rss_kib, wait_port

ROOT = Path(__file__).resolve().parent.parent
LOADGEN = ROOT / "target/release/ringcast-loadgen"
RINGCAST = ROOT / "target/release/ringcast"
MESSAGE = 1 << 20  # the service's default message limit
PUBLISH_TOKEN = "bench-publisher"
TOPIC = "feed"


def metric(port, name):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    for line in data.decode(errors="replace").splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


class Attack:
    """ATTACKERS sockets, each upgraded and then sending a 1 MiB binary frame short of its
    last byte, as fast as the server takes it."""

    def __init__(self, port, attackers, source):
        self.port, self.attackers, self.source = port, attackers, source
        self.socks, self.stop = [], threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def start(self):
        self.thread.start()

    def run(self):
        header = bytes([0x82, 0x80 | 127]) + struct.pack(">Q", MESSAGE) + b"\x01\x02\x03\x04"
        chunk = b"\x00" * 65536
        for i in range(self.attackers):
            if self.stop.is_set():
                return
            try:
                s = socket.create_connection(("127.0.0.1", self.port), timeout=5,
                                             source_address=(self.source, 0))
                key = base64.b64encode(os.urandom(16)).decode()
                s.sendall(f"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
                response = s.recv(4096)
                if b" 101 " not in response.split(b"\r\n", 1)[0]:
                    s.close()
                    continue
                s.sendall(header)
                s.setblocking(False)
                self.socks.append(s)
            except OSError:
                continue
        # Up to 64 KiB to whichever attacker can take it, until every one has sent all but
        # one byte. The thread sleeps in epoll while every socket is full: a remote attacker
        # costs this machine nothing but the bytes it delivers, and a thread spinning over
        # full sockets would take the subscribers' load generator's core instead.
        left = dict.fromkeys(self.socks, MESSAGE - 1)
        with selectors.DefaultSelector() as selector:
            for s in self.socks:
                selector.register(s, selectors.EVENT_WRITE)
            while left and not self.stop.is_set():
                for key, _ in selector.select(timeout=0.1):
                    s = key.fileobj
                    try:
                        n = s.send(chunk[: min(left[s], len(chunk))])
                        left[s] -= n
                        self.sent += n
                    except BlockingIOError:
                        continue
                    except OSError:
                        left[s] = 0  # closed by the server (the budget)
                    if left[s] <= 0:
                        selector.unregister(s)
                        del left[s]

    def close(self):
        self.stop.set()
        self.thread.join(timeout=30)
        for s in self.socks:
            try:
                s.close()
            except OSError:
                pass


def run_once(setting, attackers, outdir, repeat, args, log):
    port = free_port()
    cmd = ["taskset", "-c", "0", str(RINGCAST), "serve", "--port", str(port), "--bind", "127.0.0.1",
           "--workers", "1", "--mode", "pubsub", "--publish-token", PUBLISH_TOKEN, "--status-page", "false",
           "--history-size", "0"]
    server = subprocess.Popen(cmd, env=dict(os.environ, RUST_LOG="warn"), stdout=log, stderr=log)
    wait_port(port)
    os.sched_setaffinity(0, {1})
    attack = None
    if setting == "attacked":
        attack = Attack(port, attackers, "127.0.0.2")
        attack.start()
        time.sleep(args.ramp)  # the attack is under way before the measurement starts
    peak = [rss_kib(server.pid)]
    sampling = threading.Event()

    def sample():
        while not sampling.is_set():
            peak[0] = max(peak[0], rss_kib(server.pid))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out = outdir / f"{setting}-{repeat}.json"
    subprocess.run(["taskset", "-c", "1", str(LOADGEN), "broadcast", f"ws://127.0.0.1:{port}/",
                    "--clients", str(args.subscribers), "--payload", "1KiB", "--rate", str(args.rate),
                    "--subscribe", json.dumps({"op": "subscribe", "topic": TOPIC}),
                    "--publish-path", f"/publish?topic={TOPIC}&token={PUBLISH_TOKEN}",
                    "--warmup", "1s", "--duration", args.duration, "--drain", "5s",
                    "--server-pid", str(server.pid), "--json", str(out), "--progress", "none"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    closes = metric(port, "ringcast_input_budget_closes_total")
    held = metric(port, "ringcast_buffered_input_bytes")
    sampling.set()
    sampler.join()
    if attack:
        attack.close()
    server.terminate()
    try:
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.kill()
    result = json.loads(out.read_text()) if out.exists() else {}
    row = {"setting": setting, "repeat": repeat, "p99_ms": result.get("latency", {}).get("p99"),
           "p50_ms": result.get("latency", {}).get("p50"), "lost": result.get("lost"),
           "delivered": result.get("delivered"), "peak_rss_mib": round(peak[0] / 1024, 1),
           "budget_closes": closes, "buffered_input_at_end_mib": None if held is None else round(held / 2**20, 1),
           "attack_bytes_sent_mib": round(attack.sent / 2**20) if attack else 0}
    print(json.dumps(row), flush=True)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attackers", type=int, default=1000)
    parser.add_argument("--subscribers", type=int, default=500)
    parser.add_argument("--rate", type=int, default=100)
    parser.add_argument("--duration", default="10s")
    parser.add_argument("--ramp", type=float, default=5.0, help="seconds of attack before measuring")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.repeat, args.duration, args.attackers, args.ramp = 1, "3s", 300, 2.0
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "ringcast-service", "-p", "ringcast-loadgen"],
                   cwd=ROOT, check=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
    outdir = ROOT / "results" / (f"{stamp}-input-budget" + ("-quick" if args.quick else ""))
    outdir.mkdir(parents=True)
    log = open(outdir / "servers.log", "w")
    rows = []
    for repeat in range(args.repeat):
        for setting in ("alone", "attacked"):
            rows.append(run_once(setting, args.attackers, outdir, repeat, args, log))

    def med(setting, key):
        values = [r[key] for r in rows if r["setting"] == setting and r[key] is not None]
        return statistics.median(values) if values else None

    ratios = per_repeat_ratios(rows, "p99_ms", "attacked", "alone")
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()
    model = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                  if l.startswith("model name")), platform.processor())
    lines = [
        f"# Subscribers under an input-memory attack ({stamp})", "",
        f"Machine: {model}, {os.cpu_count()} cores; kernel {platform.release()}. Commit: {head}.",
        f"Command: `python3 benches/input_budget.py {' '.join(sys.argv[1:])}`".rstrip() + "", "",
        f"`ringcast serve --mode pubsub --workers 1` (defaults: 1 MiB messages, 256 MiB input budget) on CPU 0; "
        f"{args.subscribers} subscribers of one topic × 1 KiB at {args.rate} messages/s for {args.duration} on "
        f"CPU 1, alone and while {args.attackers} clients (subscribed to nothing) each hold a 1 MiB message short "
        f"of its last byte (about {args.attackers} MiB asked for). Settings alternate within each repeat; medians "
        f"of {args.repeat}.", "",
        "| setting | p50 | p99 | lost | server peak RSS | closed by the budget (1009) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for setting in ("alone", "attacked"):
        closes = med(setting, "budget_closes")
        lines.append(f"| {setting} | {med(setting, 'p50_ms')} ms | {med(setting, 'p99_ms')} ms | "
                     f"{sum(r['lost'] or 0 for r in rows if r['setting'] == setting)} | "
                     f"{med(setting, 'peak_rss_mib')} MiB | {closes:.0f} |" if closes is not None else
                     f"| {setting} | {med(setting, 'p50_ms')} ms | {med(setting, 'p99_ms')} ms | ? | ? | ? |")
    if ratios:
        lines += ["", f"p99 attacked ÷ alone, per repeat: {', '.join(f'{r:.2f}' for r in ratios)}; "
                      f"median **{statistics.median(ratios):.2f}** (bound: 1.2)."]
    lines += ["", "Every run: results.json; load generator JSON per run in this folder."]
    (outdir / "README.md").write_text("\n".join(lines) + "\n")
    (outdir / "results.json").write_text(json.dumps({"rows": rows, "p99_ratios": ratios}, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
