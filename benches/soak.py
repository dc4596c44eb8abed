#!/usr/bin/env python3
"""`make soak`: a long run of `ringcast serve` (broadcast mode) under everything at once, with
pass criteria about stability.

For each I/O backend asked for (default: io_uring, then epoll) it starts the release server,
records its baseline (RSS, open descriptors), and runs together, for SOAK_SECONDS (default 600):

  * 10,000 healthy subscribers and one publisher at a steady rate
    (`ringcast-loadgen broadcast`: loss, duplicates and reordering counted per client);
  * connection churn, 600 connections per second by default, each upgraded, held up to
    100 ms and closed: 45% with a reset (SO_LINGER 0), 45% with a close handshake, 10% with
    a bare FIN (`ringcast-loadgen churn`: every close checked);
  * 100 slow consumers (1% of the subscribers) that upgrade and never read, and a trickle of
    misbehaving clients: bad frames, invalid UTF-8, oversized frames and heads, partial and
    unfinished messages, slowloris, silent and garbage clients (`ringcast-loadgen abuse`:
    the answer each must get is checked).

Every second it records the server's RSS, open descriptors (/proc/PID/fd), CPU, the /metrics
gauges (connections, websockets, queued bytes, buffered input) and counters, the CPU of the
load generators and the machine's load, into results/<UTC stamp>-soak-<backend>/:

    samples.csv  samples.json  summary.json  report.md  soak.svg
    server.log   commands.txt  subscribers/ (the loadgen's result.*)  churn.json  abuse.json
    *.stdout.txt (each load generator's output)

Pass criteria, printed and checked (exit status 1 if any fails):

  1. RSS over the last half of the load within ±5% of its median;
  2. open descriptors back to the baseline once every client is gone;
  3. connection gauges back to zero (connections other than the /metrics request itself,
     websockets, queued bytes, buffered input);
  4. zero loss, duplicates and reordering for the healthy subscribers (and all connected);
  5. no panic and no ERROR line in the server log;
and that the run did what it says: churn ≥ 500 connections/s with every close as expected,
every misbehaving client answered as it should, the slow-consumer policy engaged.

    benches/soak.py                      # both backends, 10 minutes each
    benches/soak.py --io epoll --seconds 120
    SOAK_SECONDS=60 make soak

Python 3 standard library only. The criteria are about stability, not speed: the machine may
be shared (its load is recorded in the report).
"""

import argparse
import datetime
import json
import os
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RINGCAST = os.path.join(ROOT, "target/release/ringcast")
LOADGEN = os.path.join(ROOT, "target/release/ringcast-loadgen")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def log_command(commands, cmd, note=""):
    text = " ".join(shlex.quote(str(c)) for c in cmd)
    commands.append(text + (f"    # {note}" if note else ""))
    print(f"+ {text}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, proc, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server did not listen on {port} within {timeout}s")


# ------------------------------------------------------------------------------------ /proc


def proc_cpu_s(pid):
    """utime + stime of a process in seconds, None if it is gone."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def proc_fds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def machine_cpu():
    """(busy, total) jiffies of the whole machine."""
    values = [int(v) for v in open("/proc/stat").readline().split()[1:9]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def loadavg1():
    return float(open("/proc/loadavg").read().split()[0])


def machine():
    info = {}
    try:
        m = re.search(r"^model name\s*:\s*(.+)$", open("/proc/cpuinfo").read(), re.M)
        info["cpu"] = m.group(1).strip() if m else "unknown"
    except OSError:
        info["cpu"] = "unknown"
    info["cores"] = os.cpu_count()
    info["kernel"] = " ".join(os.uname()[i] for i in (0, 2, 4))
    try:
        mem = re.search(r"MemTotal:\s*(\d+)", open("/proc/meminfo").read())
        info["memory"] = f"{int(mem.group(1)) / 1024 / 1024:.1f} GiB"
    except (OSError, AttributeError):
        info["memory"] = "unknown"
    return info


def git(*args):
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


# ------------------------------------------------------------------------------------ /metrics


def fetch_metrics(port, timeout=3.0):
    """GET /metrics over a fresh connection, read to the end; {name{labels}: value}."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n")
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
    text = b"".join(chunks).decode("utf-8", "replace")
    head, _, body = text.partition("\r\n\r\n")
    if not head.startswith("HTTP/1.1 200"):
        raise RuntimeError(f"/metrics answered {head.splitlines()[:1]}")
    values = {}
    for line in body.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            values[name] = float(value)
        except ValueError:
            pass
    return values


def total(metrics, family):
    """The sum of every sample of a metric family (all labels)."""
    return sum(v for k, v in metrics.items() if k == family or k.startswith(family + "{"))


# ------------------------------------------------------------------------------------ sampling


FIELDS = [
    "t", "rss_bytes", "fds", "server_cpu_pct", "connections", "websockets", "queued_bytes",
    "buffered_input_bytes", "dropped_messages", "slow_consumer_disconnects", "protocol_errors",
    "handshakes_accepted", "handshakes_refused", "messages_sent", "loadgen_cpu_pct",
    "machine_busy_pct", "other_cpu_pct", "loadavg1",
]


class Sampler(threading.Thread):
    """Every second: the server's /proc entries and /metrics, the load generators' CPU,
    the machine's load."""

    def __init__(self, server_pid, port):
        super().__init__(daemon=True)
        self.server_pid = server_pid
        self.port = port
        self.loadgen_pids = []
        self.samples = []
        self.metric_failures = 0
        self.stop_event = threading.Event()
        self.t0 = time.monotonic()
        self.lock = threading.Lock()

    def add_loadgen(self, pid):
        with self.lock:
            self.loadgen_pids.append(pid)

    def loadgen_cpu(self):
        with self.lock:
            pids = list(self.loadgen_pids)
        cpu = 0.0
        for pid in pids:
            # The load generators' worker processes are their children.
            for child in children(pid) + [pid]:
                cpu += proc_cpu_s(child) or 0.0
        return cpu

    def run(self):
        prev = None
        next_at = time.monotonic()
        while not self.stop_event.is_set():
            now = time.monotonic()
            server_cpu = proc_cpu_s(self.server_pid)
            loadgen_cpu = self.loadgen_cpu()
            busy, all_jiffies = machine_cpu()
            row = {"t": round(now - self.t0, 2), "rss_bytes": proc_rss(self.server_pid), "fds": proc_fds(self.server_pid)}
            try:
                m = fetch_metrics(self.port)
                row.update(
                    connections=total(m, "ringcast_connections") - 1,  # less this request's own
                    websockets=total(m, "ringcast_websockets"),
                    queued_bytes=total(m, "ringcast_queued_bytes"),
                    buffered_input_bytes=total(m, "ringcast_buffered_input_bytes"),
                    dropped_messages=total(m, "ringcast_slow_consumer_dropped_messages_total"),
                    slow_consumer_disconnects=total(m, "ringcast_slow_consumer_disconnects_total"),
                    protocol_errors=total(m, "ringcast_protocol_errors_total"),
                    handshakes_accepted=m.get('ringcast_handshakes_total{result="accepted"}'),
                    handshakes_refused=m.get('ringcast_handshakes_total{result="refused"}'),
                    messages_sent=total(m, "ringcast_messages_sent_total"),
                )
            except (OSError, RuntimeError):
                self.metric_failures += 1
            row["loadavg1"] = loadavg1()
            if prev is not None and server_cpu is not None:
                dt = now - prev["now"]
                machine_total = (all_jiffies - prev["all"]) or 1
                row["server_cpu_pct"] = round(100 * (server_cpu - prev["server"]) / dt, 1)
                # A load generator that exits takes its CPU time out of the sum: clamp, or
                # "everything else" below reads thousands of per cent for that second.
                row["loadgen_cpu_pct"] = round(max(0.0, 100 * (loadgen_cpu - prev["loadgen"]) / dt), 1)
                cores = os.cpu_count() or 1
                row["machine_busy_pct"] = round(100 * cores * (busy - prev["busy"]) / machine_total, 1)
                row["other_cpu_pct"] = round(
                    max(0.0, row["machine_busy_pct"] - row["server_cpu_pct"] - row["loadgen_cpu_pct"]), 1
                )
            if server_cpu is not None:
                prev = {"now": now, "server": server_cpu, "loadgen": loadgen_cpu, "busy": busy, "all": all_jiffies}
            self.samples.append(row)
            next_at += 1.0
            self.stop_event.wait(max(0.0, next_at - time.monotonic()))

    def stop(self):
        self.stop_event.set()
        self.join(timeout=10)


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


# ------------------------------------------------------------------------------------ one soak


def settle_gauges(port, pid, baseline_fds, timeout):
    """Waits until every connection is gone and the descriptors are back to the baseline;
    returns the last reading."""
    deadline = time.time() + timeout
    last = {}
    while True:
        try:
            m = fetch_metrics(port)
            # The descriptor count is read after this request's connection has closed.
            time.sleep(0.2)
            last = {
                "connections": total(m, "ringcast_connections") - 1,
                "websockets": total(m, "ringcast_websockets"),
                "queued_bytes": total(m, "ringcast_queued_bytes"),
                "buffered_input_bytes": total(m, "ringcast_buffered_input_bytes"),
                "fds": proc_fds(pid),
                "rss_bytes": proc_rss(pid),
            }
        except (OSError, RuntimeError) as e:
            last = {"error": str(e)}
        done = (
            last.get("connections") == 0
            and last.get("websockets") == 0
            and last.get("queued_bytes") == 0
            and last.get("buffered_input_bytes") == 0
            and last.get("fds") == baseline_fds
        )
        if done or time.time() >= deadline:
            last["waited_s"] = round(timeout - max(0.0, deadline - time.time()), 1)
            return last
        time.sleep(0.5)


def soak(args, backend, stamp):
    out = os.path.join(ROOT, args.out_root, f"{stamp}-soak-{backend}")
    os.makedirs(out, exist_ok=True)
    commands = []
    port = free_port()
    seconds = args.seconds
    server_cmd = [
        RINGCAST, "serve", "--port", str(port), "--bind", "127.0.0.1", "--io", backend,
        "--handshake-timeout", f"{args.handshake_timeout}s", "--send-queue-limit", str(args.send_queue_limit),
        "--send-buffer", str(args.send_buffer),
    ]
    log_command(commands, server_cmd, "server")
    server_log = open(os.path.join(out, "server.log"), "w")
    env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "info"), NO_COLOR="1")
    server = subprocess.Popen(server_cmd, cwd=ROOT, stdout=server_log, stderr=subprocess.STDOUT, env=env)
    wait_for_port(port, server)
    time.sleep(1.0)
    baseline = {"fds": proc_fds(server.pid), "rss_bytes": proc_rss(server.pid)}
    print(f"soak[{backend}]: server pid {server.pid} on port {port}; baseline {baseline}", file=sys.stderr, flush=True)
    sampler = Sampler(server.pid, port)
    sampler.start()
    started = time.monotonic()
    url = f"ws://127.0.0.1:{port}/"
    procs = {}

    def start(name, cmd):
        log_command(commands, cmd, name)
        f = open(os.path.join(out, f"{name}.stdout.txt"), "w")
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
        sampler.add_loadgen(p.pid)
        procs[name] = (p, f)
        return p

    # The subscribers connect at --connect-rate; the publisher starts once they are all in.
    connect_s = args.subscribers / args.connect_rate + 5
    broadcast_duration = max(10, int(seconds - connect_s - 2))
    start("subscribers", [
        LOADGEN, "broadcast", url, "--clients", str(args.subscribers), "--payload", str(args.payload),
        "--rate", f"{args.rate:g}", "--warmup", "2s", "--duration", f"{broadcast_duration}s", "--drain", "60s",
        "--connect-rate", str(args.connect_rate), "--source-addrs", "127.0.3.1-127.0.3.2",
        "--server-pid", str(server.pid), "--server-name", "ringcast", "--server-setting", f"soak {backend}",
        "--progress", "plain", "--out", os.path.join(out, "subscribers"),
    ])
    # Wait (bounded) for the subscribers before the rest joins in.
    deadline = time.monotonic() + connect_s + 30
    while time.monotonic() < deadline:
        ws = sampler.samples[-1].get("websockets") if sampler.samples else None
        if ws is not None and ws >= args.subscribers:
            break
        if procs["subscribers"][0].poll() is not None:
            break
        time.sleep(0.5)
    load_s = max(10, int(seconds - (time.monotonic() - started) - 3))
    start("churn", [
        LOADGEN, "churn", url, "--rate", f"{args.churn_rate:g}", "--duration", f"{load_s}s",
        "--hold", "100ms", "--reset-share", "0.45", "--fin-share", "0.10",
        "--source-addrs", "127.0.4.1-127.0.4.8", "--progress-every", "30", "--json", os.path.join(out, "churn.json"),
    ])
    start("abuse", [
        LOADGEN, "abuse", url, "--slow-consumers", str(args.slow_consumers), "--rate", f"{args.abuse_rate:g}",
        "--duration", f"{load_s}s", "--handshake-timeout", f"{args.handshake_timeout}s",
        "--source-addrs", "127.0.5.1-127.0.5.2", "--json", os.path.join(out, "abuse.json"),
    ])
    load_started = time.monotonic() - started
    # Every load generator ends by itself; bound the wait anyway.
    limit = time.monotonic() + seconds + 180
    exits = {}
    for name, (p, f) in procs.items():
        try:
            exits[name] = p.wait(timeout=max(1, limit - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            exits[name] = f"killed after {seconds + 180} s"
        f.close()
    load_ended = time.monotonic() - started
    print(f"soak[{backend}]: load generators done: {exits}", file=sys.stderr, flush=True)
    settled = settle_gauges(port, server.pid, baseline["fds"], timeout=60)
    sampler.stop()
    # Stop the server and collect its exit status.
    server.send_signal(signal.SIGTERM)
    try:
        server_exit = server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server_exit = "killed: no exit within 30 s of SIGTERM"
    server_log.close()

    meta = {
        "backend": backend,
        "stamp": stamp,
        "commit": (git("rev-parse", "--short", "HEAD") or "unknown")
        + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else ""),
        "machine": machine(),
        "settings": {
            "seconds": seconds, "subscribers": args.subscribers, "rate": args.rate, "payload": args.payload,
            "churn_rate": args.churn_rate, "slow_consumers": args.slow_consumers, "abuse_rate": args.abuse_rate,
            "handshake_timeout_s": args.handshake_timeout, "send_queue_limit": args.send_queue_limit,
            "send_buffer": args.send_buffer,
        },
        "load_started_s": round(load_started, 1),
        "load_ended_s": round(load_ended, 1),
        "baseline": baseline,
        "settled": settled,
        "exits": {k: v for k, v in exits.items()},
        "server_exit": server_exit,
        "metric_failures": sampler.metric_failures,
        "commands": commands,
    }
    return evaluate(out, meta, sampler.samples)


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def evaluate(out, meta, samples):
    subscribers = read_json(os.path.join(out, "subscribers", "result.json"))
    churn = read_json(os.path.join(out, "churn.json"))
    abuse = read_json(os.path.join(out, "abuse.json"))
    s = meta["settings"]
    checks = []

    def check(name, ok, detail):
        checks.append({"criterion": name, "passed": bool(ok), "detail": detail})

    # 1. RSS over the last half of the load: while the healthy subscribers are all there.
    # The load generators' teardown (10,000 subscribers leaving within a second) frees
    # memory, which is not instability: the window ends at the last sample that still had
    # every subscriber connected (the first 5-minute soaks failed on those teardown seconds).
    full = [r["t"] for r in samples if (r.get("websockets") or 0) >= s["subscribers"]]
    load_end = max(full) if full else meta["load_ended_s"]
    half = meta["load_started_s"] + (load_end - meta["load_started_s"]) / 2
    last_half = [r["rss_bytes"] for r in samples if half <= r["t"] <= load_end and r.get("rss_bytes")]
    if len(last_half) >= 5:
        median = statistics.median(last_half)
        deviation = max(abs(v - median) for v in last_half) / median
        check("RSS over the last half within ±5% of its median", deviation <= 0.05,
              f"median {median / 1e6:.1f} MB, range {min(last_half) / 1e6:.1f}–{max(last_half) / 1e6:.1f} MB, "
              f"largest deviation {100 * deviation:.2f}% over {len(last_half)} samples")
    else:
        check("RSS over the last half within ±5% of its median", False, f"only {len(last_half)} samples")
    settled = meta["settled"]
    # 2. Descriptors back to the baseline.
    check("open descriptors back to the baseline", settled.get("fds") == meta["baseline"]["fds"],
          f"baseline {meta['baseline']['fds']}, at the end {settled.get('fds')} "
          f"(peak {max((r['fds'] or 0) for r in samples)})")
    # 3. Gauges back to zero.
    gauges = {k: settled.get(k) for k in ("connections", "websockets", "queued_bytes", "buffered_input_bytes")}
    check("connection gauges back to zero", all(v == 0 for v in gauges.values()),
          ", ".join(f"{k} {v if v is None else int(v)}" for k, v in gauges.items())
          + f" (after {settled.get('waited_s')} s)")
    # 4. Healthy subscribers.
    if subscribers:
        ok = (subscribers["lost"] == 0 and subscribers["duplicates"] == 0 and subscribers["reordered"] == 0
              and subscribers["connect"]["connected"] == s["subscribers"] and subscribers["passed"])
        check("healthy subscribers: no loss, duplicate or reordering", ok,
              f"{subscribers['connect']['connected']} connected, {subscribers['sent']} messages sent, "
              f"{subscribers['delivered']} of {subscribers['expected']} delivered, lost {subscribers['lost']}, "
              f"duplicates {subscribers['duplicates']}, reordered {subscribers['reordered']}; "
              f"loadgen verdict {subscribers['verdict']}")
    else:
        check("healthy subscribers: no loss, duplicate or reordering", False, "no subscribers/result.json")
    # 5. The server log.
    bad = []
    try:
        for line in open(os.path.join(out, "server.log"), errors="replace"):
            if "panicked" in line or re.search(r"\bERROR\b", line):
                bad.append(line.strip())
    except OSError as e:
        bad.append(f"cannot read the log: {e}")
    check("no panic or ERROR line in the server log", not bad,
          f"{len(bad)} such lines" + (f", first: {bad[0][:200]}" if bad else ""))
    # The run did what it says.
    if churn:
        check("churn ≥ 500 connections/s, every close as expected",
              churn["connects_per_s"] >= 500 and churn["passed"],
              f"{churn['connects_per_s']:.0f} upgrades/s and {churn['closes_per_s']:.0f} closes/s over "
              f"{churn['duration_s']:.0f} s ({churn['connected']} connections: "
              + ", ".join(f"{v} {k}" for k, v in churn["ok"].items())
              + f"); {churn['failure_count']} failures" + ("" if churn["passed"] else f": {churn['verdict'][:300]}"))
    else:
        check("churn ≥ 500 connections/s, every close as expected", False, "no churn.json")
    if abuse:
        kinds = ", ".join(f"{k} {v['ok']}/{v['launched']}" for k, v in sorted(abuse["kinds"].items()))
        check("every misbehaving client answered as it should", abuse["passed"],
              f"{abuse['launched']} clients: {kinds}" + ("" if abuse["passed"] else f"; {abuse['verdict'][:300]}"))
    else:
        check("every misbehaving client answered as it should", False, "no abuse.json")
    drops = max((r.get("dropped_messages") or 0) for r in samples) if samples else 0
    queued_last = [r["queued_bytes"] for r in samples if half <= r["t"] <= load_end and r.get("queued_bytes") is not None]
    connected_slow = abuse["slow_connected"] if abuse else 0
    check("slow consumers: the policy engaged and their queues stayed bounded",
          drops > 0 and connected_slow == s["slow_consumers"],
          f"{connected_slow} of {s['slow_consumers']} slow consumers connected, {int(drops)} messages dropped for them; "
          + (f"queued bytes over the last half {min(queued_last) / 1e6:.1f}–{max(queued_last) / 1e6:.1f} MB "
             f"(limit {s['send_queue_limit'] / 2**20:g} MiB per client)" if queued_last else "no queued-bytes samples"))
    check("server exited 0 after SIGTERM", meta["server_exit"] == 0, f"exit status {meta['server_exit']}")

    passed = all(c["passed"] for c in checks)
    summary = {**meta, "passed": passed, "checks": checks, "machine_load": machine_load(samples, meta)}
    write_outputs(out, summary, samples, churn)
    print(f"\nsoak[{meta['backend']}]: {'PASS' if passed else 'FAIL'}  ({os.path.relpath(out, ROOT)})")
    for c in checks:
        print(f"  [{'ok' if c['passed'] else 'FAIL'}] {c['criterion']}: {c['detail']}")
    return passed


def machine_load(samples, meta):
    during = [r for r in samples if meta["load_started_s"] <= r["t"] <= meta["load_ended_s"]]

    def stats(key):
        values = [r[key] for r in during if r.get(key) is not None]
        if not values:
            return None
        return {"median": round(statistics.median(values), 1), "max": round(max(values), 1)}

    return {k: stats(k) for k in ("loadavg1", "machine_busy_pct", "server_cpu_pct", "loadgen_cpu_pct", "other_cpu_pct")}


# ------------------------------------------------------------------------------------ outputs


def write_outputs(out, summary, samples, churn):
    with open(os.path.join(out, "samples.csv"), "w") as f:
        f.write(",".join(FIELDS) + "\n")
        for r in samples:
            f.write(",".join("" if r.get(k) is None else f"{r[k]:g}" if isinstance(r[k], float) else str(r[k]) for k in FIELDS) + "\n")
    with open(os.path.join(out, "samples.json"), "w") as f:
        json.dump({"fields": FIELDS, "samples": samples}, f)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(out, "commands.txt"), "w") as f:
        f.write("\n".join(summary["commands"]) + "\n")
    churn_series = churn["connects_timeline"] if churn else []
    with open(os.path.join(out, "soak.svg"), "w") as f:
        f.write(svg(summary, samples, churn_series))
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(markdown(summary))


def markdown(summary):
    s = summary["settings"]
    m = summary["machine"]
    load = summary["machine_load"]
    lines = [
        f"# Soak: `ringcast serve --io {summary['backend']}`, {s['seconds']} s — "
        f"{'PASS' if summary['passed'] else 'FAIL'}",
        "",
        f"Run {summary['stamp']} on commit `{summary['commit']}`; {m.get('cpu')}, {m.get('cores')} cores, "
        f"{m.get('memory')}, {m.get('kernel')}.",
        "",
        "What ran at once against one server (broadcast mode, "
        f"`--handshake-timeout {s['handshake_timeout_s']}s`, `--send-queue-limit {s['send_queue_limit']}`, `--send-buffer {s['send_buffer']}`, "
        "slow-consumer policy `drop`):",
        "",
        f"- {s['subscribers']:,} healthy subscribers and one WebSocket publisher sending {s['payload']}-byte "
        f"messages at {s['rate']:g}/s ({s['subscribers'] * s['rate']:,.0f} deliveries/s), "
        "loss, duplicates and reordering counted per client;",
        f"- churn at {s['churn_rate']:g} connections/s (upgrade, hold ≤ 100 ms, then 45% reset, "
        "45% close handshake, 10% bare FIN; every close checked);",
        f"- {s['slow_consumers']} slow consumers that never read; {s['abuse_rate']:g} misbehaving clients/s "
        "(bad frames, invalid UTF-8, oversized frames and heads, partial and unfinished messages, slowloris, "
        "silent, garbage), each answer checked.",
        "",
        "## Criteria",
        "",
        "| | criterion | measured |",
        "| --- | --- | --- |",
    ]
    for c in summary["checks"]:
        lines.append(f"| {'✅' if c['passed'] else '❌'} | {c['criterion']} | {c['detail'].replace('|', '/')} |")
    lines += [
        "",
        "![RSS, descriptors, connections, queued bytes, CPU and churn per second](soak.svg)",
        "",
        "## Machine load during the run",
        "",
        "The machine was shared with other work; the criteria are about stability, not speed.",
        "",
        "| | median | max |",
        "| --- | --- | --- |",
    ]
    names = {
        "loadavg1": "load average (1 min)",
        "machine_busy_pct": "machine busy, % of one core",
        "server_cpu_pct": "server CPU, % of one core",
        "loadgen_cpu_pct": "load generators' CPU, % of one core",
        "other_cpu_pct": "everything else, % of one core",
    }
    for key, name in names.items():
        v = load.get(key)
        if v:
            lines.append(f"| {name} | {v['median']:g} | {v['max']:g} |")
    lines += [
        "",
        f"Baseline after start: {summary['baseline']['fds']} descriptors, "
        f"{(summary['baseline']['rss_bytes'] or 0) / 1e6:.1f} MB RSS. After every client left: "
        f"{summary['settled'].get('fds')} descriptors, {(summary['settled'].get('rss_bytes') or 0) / 1e6:.1f} MB RSS. "
        f"Load from {summary['load_started_s']} s to {summary['load_ended_s']} s of the run; "
        f"load generators' exit statuses {summary['exits']}; /metrics reads that failed: {summary['metric_failures']}.",
        "",
        "Files: `samples.csv` / `samples.json` (one row per second), `summary.json`, `server.log`, "
        "`subscribers/` (the broadcast run's own report), `churn.json`, `abuse.json`, `*.stdout.txt`, `commands.txt`.",
        "",
        "## Commands",
        "",
        "```sh",
        *summary["commands"],
        "```",
        "",
    ]
    return "\n".join(lines)


def svg(summary, samples, churn_series):
    """Six stacked panels over time, drawn by hand (no plotting library)."""
    t0 = summary["load_started_s"]
    churn_points = [(t0 + i + 0.5, v) for i, v in enumerate(churn_series)]
    panels = [
        ("server RSS (MB)", [(r["t"], r["rss_bytes"] / 1e6) for r in samples if r.get("rss_bytes")]),
        ("open descriptors", [(r["t"], r["fds"]) for r in samples if r.get("fds") is not None]),
        ("WebSockets (gauge)", [(r["t"], r["websockets"]) for r in samples if r.get("websockets") is not None]),
        ("queued bytes (MB)", [(r["t"], r["queued_bytes"] / 1e6) for r in samples if r.get("queued_bytes") is not None]),
        ("server CPU (% of a core)", [(r["t"], r["server_cpu_pct"]) for r in samples if r.get("server_cpu_pct") is not None]),
        ("churn: upgrades per second", churn_points),
    ]
    width, panel_h, left, right, top, gap = 900, 130, 80, 20, 40, 45
    height = top + len(panels) * (panel_h + gap) + 10
    t_max = max([r["t"] for r in samples] + [1])
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="15">soak, ringcast serve --io '
        f'{summary["backend"]}: {"PASS" if summary["passed"] else "FAIL"}</text>',
    ]
    plot_w = width - left - right
    for i, (title, points) in enumerate(panels):
        y0 = top + i * (panel_h + gap)
        out.append(f'<text x="{left}" y="{y0 - 6}" font-size="12">{title}</text>')
        out.append(f'<rect x="{left}" y="{y0}" width="{plot_w}" height="{panel_h}" fill="none" stroke="#999"/>')
        # The load window.
        x_a = left + plot_w * summary["load_started_s"] / t_max
        x_b = left + plot_w * summary["load_ended_s"] / t_max
        out.append(f'<rect x="{x_a:.1f}" y="{y0}" width="{max(0.0, x_b - x_a):.1f}" height="{panel_h}" fill="#f0f4ff"/>')
        values = [v for _, v in points]
        lo = min(values + [0])
        hi = max(values + [1e-9])
        if hi == lo:
            hi = lo + 1
        for frac in (0, 0.5, 1):
            v = lo + (hi - lo) * frac
            y = y0 + panel_h * (1 - frac)
            out.append(f'<line x1="{left - 4}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#eee"/>')
            out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{fmt(v)}</text>')
        if points:
            path = " ".join(
                f"{'M' if j == 0 else 'L'}{left + plot_w * t / t_max:.1f},{y0 + panel_h * (1 - (v - lo) / (hi - lo)):.1f}"
                for j, (t, v) in enumerate(points)
            )
            out.append(f'<path d="{path}" fill="none" stroke="#1f5fbf" stroke-width="1.2"/>')
        for frac in (0, 0.25, 0.5, 0.75, 1):
            x = left + plot_w * frac
            out.append(f'<text x="{x:.1f}" y="{y0 + panel_h + 14}" text-anchor="middle">{t_max * frac:.0f} s</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def fmt(v):
    if abs(v) >= 1e6:
        return f"{v / 1e6:.1f}M"
    if abs(v) >= 1e4:
        return f"{v / 1e3:.0f}k"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.1f}"


# ------------------------------------------------------------------------------------ main


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=int, default=int(os.environ.get("SOAK_SECONDS", "600")),
                   help="length of each soak (default $SOAK_SECONDS or 600)")
    p.add_argument("--io", default=os.environ.get("SOAK_IO", "io_uring,epoll"),
                   help="comma-separated backends, one soak each (default $SOAK_IO or io_uring,epoll)")
    p.add_argument("--subscribers", type=int, default=10000)
    p.add_argument("--rate", type=float, default=10.0, help="messages per second from the publisher")
    p.add_argument("--payload", type=int, default=1024, help="message bytes")
    p.add_argument("--connect-rate", type=int, default=2000, help="subscriber connections per second at the start")
    p.add_argument("--churn-rate", type=float, default=600.0, help="churn connections per second")
    p.add_argument("--slow-consumers", type=int, default=100)
    p.add_argument("--abuse-rate", type=float, default=4.0, help="misbehaving clients per second")
    p.add_argument("--handshake-timeout", type=int, default=5, help="the server's --handshake-timeout, seconds")
    p.add_argument("--send-queue-limit", type=int, default=1 << 20, help="the server's --send-queue-limit, bytes")
    # Without a cap, each never-reading consumer first fills a kernel send buffer that
    # autotunes to a few MiB: at 10 KiB/s that took it ~390 s to reach its bound, past the
    # half of a 10-minute run, so the RSS of the last half still climbed (results/
    # 2026-12-01T155313Z-soak-io_uring). Capped, the slow consumers reach their bound
    # within ~2 minutes and the last half measures the steady state.
    p.add_argument("--send-buffer", type=int, default=128 << 10, help="the server's --send-buffer (SO_SNDBUF), bytes")
    p.add_argument("--out-root", default="results")
    p.add_argument("--no-build", action="store_true", help="use the binaries already built")
    args = p.parse_args()
    backends = [b.strip() for b in args.io.split(",") if b.strip()]
    for b in backends:
        if b not in ("io_uring", "epoll", "auto"):
            p.error(f"--io {b}: io_uring, epoll or auto")
    if not args.no_build:
        cmd = ["cargo", "build", "--release", "--locked", "-p", "ringcast-service", "-p", "ringcast-loadgen"]
        print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True)
    results = {}
    for backend in backends:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
        results[backend] = soak(args, backend, stamp)
    print()
    for backend, ok in results.items():
        print(f"soak {backend}: {'PASS' if ok else 'FAIL'}")
    sys.exit(0 if all(results.values()) else 1)


if __name__ == "__main__":
    main()
