#!/usr/bin/env python3
"""The message-history benchmark (issue 14): results/<UTC time>-history/.

Back to back, each on a fresh `ringcast serve` (release build) and the same 10,000
subscribers at the same publish rate:

  fanout-off     history off (--history-size 0), raw subscribers   `loadgen broadcast`
  fanout-on      history on (the default), subscribers with offsets `loadgen reconnect --fraction 0`
  (both twice, alternating: off, on, off, on — the CPU ratio is the mean of the pairs)
  reconnect      history on, 10% of the subscribers dropping every --every for --away and
                 resuming with since/epoch                          `loadgen reconnect --fraction 0.1`
  cluster        two nodes (--workers 1 each) on one redis-server, history in Redis; the
                 clients start on node A and resume on node B, then A, in turn

Each run's result.json/md/csv and latency.svg go into its own folder; README.md holds the
machine, the commit, every command and the table; summary.json the figures quoted.

    python3 benches/history.py                 # about 4 minutes on the 2-core dev box
    python3 benches/history.py --clients 2000 --duration 5   # a quick look

Python 3 standard library only.
"""

import argparse
import datetime
import json
import os
import shlex
import socket
import subprocess
import sys
import time

from benchlib import free_port, wait_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RINGCAST = os.path.join(ROOT, "target/release/ringcast")
LOADGEN = os.path.join(ROOT, "target/release/ringcast-loadgen")
COMMANDS = []


def run(cmd, **kw):
    COMMANDS.append(" ".join(shlex.quote(c) for c in cmd))
    return subprocess.run(cmd, cwd=ROOT, **kw)


def cpu_s(pid):
    """utime + stime of a process, seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Proc:
    def __init__(self, cmd, log):
        COMMANDS.append(" ".join(shlex.quote(c) for c in cmd))
        self.log = open(log, "w")
        self.p = subprocess.Popen(cmd, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)

    def stop(self):
        self.p.terminate()
        try:
            self.p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        self.log.close()


def serve(out, name, port, extra):
    cmd = [RINGCAST, "serve", "--bind", "127.0.0.1", "--port", str(port)] + extra
    proc = Proc(cmd, os.path.join(out, f"{name}.server.log"))
    wait_port(port, timeout=15)
    return proc


def loadgen(out, name, scenario, url, args, server_pid, extra=()):
    folder = os.path.join(out, name)
    cmd = [LOADGEN, scenario, url, "--clients", str(args.clients), "--payload", str(args.payload),
           "--rate", str(args.rate), "--warmup", f"{args.warmup}s", "--duration", f"{args.duration}s",
           "--drain", "20s", "--progress", "plain", "--server-pid", str(server_pid),
           "--server-name", "ringcast", "--server-setting", name, "--out", folder, *extra]
    with open(os.path.join(out, f"{name}.stdout.txt"), "w") as stdout:
        done = run(cmd, stdout=stdout, stderr=subprocess.STDOUT)
    with open(os.path.join(folder, "result.json")) as f:
        result = json.load(f)
    result["exit_status"] = done.returncode
    return result


def scrape(port):
    """The history and backbone counters of a node's /metrics."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        text = b""
        while chunk := conn.recv(65536):
            text += chunk
    wanted = ("ringcast_history_", "ringcast_cluster_")
    return {line.split()[0]: float(line.split()[1]) for line in text.decode().splitlines()
            if line.startswith(wanted) and len(line.split()) == 2}


def cpu_per_million(result):
    return result["server_metrics"]["cpu_s_per_million"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=10.0, help="messages/s from the publisher")
    parser.add_argument("--payload", type=int, default=64)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=12.0)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--every", default="3s")
    parser.add_argument("--away", default="1s")
    parser.add_argument("--pairs", type=int, default=2, help="off/on pairs for the CPU ratio")
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--no-cluster", action="store_true")
    parser.add_argument("--no-reconnect", action="store_true", help="skip the single-node reconnect run")
    args = parser.parse_args()

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
    out = os.path.join(ROOT, "results", f"{stamp}-history")
    os.makedirs(out)
    if not args.no_build:
        run(["cargo", "build", "--release", "-p", "ringcast-service", "-p", "ringcast-loadgen"], check=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    results = {}
    reconnect_args = ["--fraction", str(args.fraction), "--every", args.every, "--away", args.away]

    for i in range(args.pairs):
        for name, extra, scenario, lg_extra in [
            (f"fanout-off-{i}", ["--history-size", "0"], "broadcast", []),
            (f"fanout-on-{i}", [], "reconnect", ["--fraction", "0"]),
        ]:
            port = free_port()
            server = serve(out, name, port, ["--workers", "2"] + extra)
            try:
                results[name] = loadgen(out, name, scenario, f"ws://127.0.0.1:{port}/", args, server.p.pid, lg_extra)
            finally:
                server.stop()
            print(f"{name}: {cpu_per_million(results[name]):.3f} CPU s per million deliveries, "
                  f"verdict {results[name]['verdict']}", flush=True)

    if not args.no_reconnect:
        port = free_port()
        server = serve(out, "reconnect", port, ["--workers", "2"])
        try:
            results["reconnect"] = loadgen(out, "reconnect", "reconnect", f"ws://127.0.0.1:{port}/", args,
                                           server.p.pid, reconnect_args)
        finally:
            server.stop()
        print(f"reconnect: {results['reconnect']['verdict']}", flush=True)

    cluster_cpu = None
    if not args.no_cluster:
        redis_port = free_port()
        redis = Proc(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                     os.path.join(out, "cluster.redis.log"))
        wait_port(redis_port, timeout=15)
        url = f"redis://127.0.0.1:{redis_port}"
        port_a, port_b = free_port(), free_port()
        a = serve(out, "cluster-a", port_a, ["--workers", "1", "--cluster", url])
        b = serve(out, "cluster-b", port_b, ["--workers", "1", "--cluster", url])
        try:
            before = {"a": cpu_s(a.p.pid), "b": cpu_s(b.p.pid), "redis": cpu_s(redis.p.pid)}
            results["cluster"] = loadgen(out, "cluster", "reconnect", f"ws://127.0.0.1:{port_a}/", args, a.p.pid,
                                         reconnect_args + ["--reconnect-url", f"ws://127.0.0.1:{port_b}/",
                                                           "--reconnect-url", f"ws://127.0.0.1:{port_a}/"])
            after = {"a": cpu_s(a.p.pid), "b": cpu_s(b.p.pid), "redis": cpu_s(redis.p.pid)}
            for node, port in [("a", port_a), ("b", port_b)]:
                results["cluster"][f"metrics_{node}"] = scrape(port)
            cluster_cpu = {k: after[k] - before[k] for k in before}
        finally:
            a.stop()
            b.stop()
            redis.stop()
        print(f"cluster: {results['cluster']['verdict']}", flush=True)

    off = [cpu_per_million(results[f"fanout-off-{i}"]) for i in range(args.pairs)] or [1.0]
    on = [cpu_per_million(results[f"fanout-on-{i}"]) for i in range(args.pairs)] or [1.0]
    # Pairs run back to back share the machine's conditions; the median of the per-pair
    # ratios resists a pair that another process's burst disturbed.
    pair_ratios = sorted(b / a for a, b in zip(off, on))
    ratio = pair_ratios[len(pair_ratios) // 2] if len(pair_ratios) % 2 else \
        (pair_ratios[len(pair_ratios) // 2 - 1] + pair_ratios[len(pair_ratios) // 2]) / 2
    mean_ratio = (sum(on) / len(on)) / (sum(off) / len(off))
    summary = {
        "commit": commit + (" (with uncommitted changes)" if dirty else ""),
        "machine": next(iter(results.values()))["machine"],
        "clients": args.clients, "rate": args.rate, "payload": args.payload,
        "cpu_s_per_million_history_off": off, "cpu_s_per_million_history_on": on,
        "cpu_ratio_on_over_off": ratio,
        "cpu_ratio_per_pair": [b / a for a, b in zip(off, on)],
        "cpu_ratio_of_means": mean_ratio,
        "runs": {name: {k: r.get(k) for k in ["sent", "expected", "delivered", "lost", "duplicates", "passed", "verdict",
                                              "deliveries_per_s", "measured"]}
                 | {"p99_ms": r["latency"]["p99"], "cpu_s_per_million": cpu_per_million(r),
                    "other_cpu_pct": r["other_cpu_pct"],
                    "reconnect": {k: v for k, v in (r.get("reconnect") or {}).items() if k != "per_client"}}
                 for name, r in results.items()},
        "cluster_cpu_s_whole_run": cluster_cpu,
        "cluster_metrics": {k: results["cluster"].get(k) for k in ("metrics_a", "metrics_b")} if "cluster" in results else None,
    }
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    write_readme(out, args, summary, results)
    print(f"wrote {os.path.relpath(out, ROOT)}/README.md; CPU on/off {ratio:.3f}")


def write_readme(out, args, summary, results):
    def row(name, r):
        x = r.get("reconnect") or {}
        rec = x.get("recovery_ms") or {}
        return (f"| {name} | {r['delivered']:,} | {r['lost']} | {r['duplicates']} | "
                f"{x.get('reconnects', '–')} | {x.get('recoveries_complete', '–')} | {x.get('recovered_messages', '–')} | "
                f"{rec.get('p50', '–')} / {rec.get('p99', '–')} | {r['latency']['p99']:.1f} | "
                f"{cpu_per_million(r):.2f} | {r['other_cpu_pct']:.0f}% | {r['verdict']} |")

    lines = [
        "# Message history: fan-out cost, reconnect recovery, cluster",
        "",
        f"- machine: {summary['machine']}, shared with other work (see each run's `other_cpu_pct`)",
        f"- commit: {summary['commit']}",
        f"- {args.clients:,} subscribers, one publisher at {args.rate:g} msg/s of {args.payload} B; "
        f"warm-up {args.warmup:g} s, measured {args.duration:g} s; reconnecting: {args.fraction:.0%} of the clients, "
        f"each dropping its connection every {args.every} for {args.away} (staggered)",
        "- command: `python3 benches/history.py` (" + " ".join(sys.argv[1:]) + ")",
        "",
        "| run | delivered | lost | duplicated | reconnects | recovered in full | messages recovered | "
        "recovery ms p50 / p99 | delivery p99 ms | server CPU s / 10⁶ deliveries | other processes' CPU | verdict |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    lines += [row(name, r) for name, r in results.items()]
    lines += [
        "",
        f"**Fan-out CPU per delivery, history on ÷ off: {summary['cpu_ratio_on_over_off']:.3f}** (median of the "
        f"pairs' ratios {', '.join(f'{v:.3f}' for v in summary['cpu_ratio_per_pair'])}; ratio of the means "
        f"{summary['cpu_ratio_of_means']:.3f}. Off: {', '.join(f'{v:.3f}' for v in summary['cpu_s_per_million_history_off'])}; "
        f"on: {', '.join(f'{v:.3f}' for v in summary['cpu_s_per_million_history_on'])} CPU s per million deliveries in "
        "the measured window, runs alternating off/on, each on a fresh server.)",
        "",
        "*Other processes' CPU* is the rest of the machine's busy time during the window, in % of one core "
        "(other engineers' builds and tests on this shared 2-core box). A starved server batches more "
        "messages per write and spends less CPU per delivery, so only pairs run under similar conditions "
        "compare; that is why the pairs alternate and the median of their ratios is quoted.",
        "",
        "- *fanout-off*: `--history-size 0`, raw subscribers (`loadgen broadcast`). *fanout-on*: the default "
        "history (1,000 messages, 5 min, 64 MiB), subscribers with offsets (`loadgen reconnect --fraction 0`): "
        "each message gets an offset, is kept and goes out in its 16-byte envelope.",
        "- *reconnect*: history on, the reconnecting clients resume with `?since=<offset>&epoch=<epoch>`; "
        "recovery latency runs from the start of the reconnection (after the time away) to holding every "
        "message up to the position the server's answer named; replayed messages count for loss, not for "
        "delivery latency.",
    ]
    if summary["cluster_cpu_s_whole_run"]:
        c = summary["cluster_cpu_s_whole_run"]
        lines += [
            f"- *cluster*: two nodes (`--workers 1 --cluster redis://…`), history in Redis (offsets from its Lua "
            f"script); the clients start on node A, the reconnecting ones resume on B, then A, in turn. CPU over "
            f"the whole run (connects included): node A {c['a']:.1f} s, node B {c['b']:.1f} s, redis-server "
            f"{c['redis']:.1f} s; the table's CPU column is node A's measured window only.",
        ]
    lines += ["", "## Commands", "", "```sh"] + COMMANDS + ["```", ""]
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    main()
