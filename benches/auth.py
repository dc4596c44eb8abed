#!/usr/bin/env python3
"""Auth and presence cost: pub/sub mode with token auth and presence off, then on, back to
back in one run, for connect rate and fan-out CPU per delivery at 10,000 clients.

    python3 benches/auth.py [--quick] [--repeat 3] [--clients 10000]

Settings compared (each on a fresh `ringcast serve --mode pubsub`, one worker pinned to
CPU 0; the load generator pinned to CPU 1):
- off: no `[auth]`, no presence (anyone may subscribe and publish);
- on: HS256 connection tokens (`?token=`), a `bench:*` rule with `subscribe =
  "authenticated"` and `presence = true` (every subscriber is a presence entry);
- on-rs256 (information): the same with an RS256 public key.

Per setting and repeat (the settings alternate, so a noisy neighbour hits them alike):
1. connect: `ringcast-loadgen idle` opens every client as fast as the server takes them
   (`--connect-rate 0`, 256 in flight), each sending `{"op":"subscribe","topic":"bench:1"}`
   and waiting for the answer, holds 1 s and closes. Connections per second, the server's
   CPU per client (connect, token check, subscribe, presence entry, disconnect: /proc
   utime+stime around the run), and its RSS per connection.
2. fan-out: `ringcast-loadgen broadcast` with the same clients subscribed, one topic
   publisher (the publish path with `?topic=bench:1` and the publish token) sending 64-byte
   binary messages at 10/s (100,000 deliveries/s), 1 s warm-up + 5 s; server CPU seconds
   per million deliveries, p99, loss.

Results go to results/<UTC time>-auth/: README.md (machine, commit, commands, tables,
on ÷ off ratios of the medians) and results.json with every load generator report.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import free_port, per_repeat_ratios, wait_port

ROOT = Path(__file__).resolve().parent.parent
LOADGEN = ROOT / "target/release/ringcast-loadgen"
SERVER = ROOT / "target/release/ringcast"
SECRET = "bench-secret-0123456789abcdefghij"
PUBLISH_TOKEN = "bench-publisher"
SUBSCRIBE = '{"op":"subscribe","topic":"bench:1"}'
CLK_TCK = os.sysconf("SC_CLK_TCK")

RULE = '[[channels]]\npattern = "bench:*"\nsubscribe = "authenticated"\npresence = true\n'
SETTINGS = {
    "off": "",
    "on": f'[auth]\nhmac_secret = "{SECRET}"\n{RULE}',
    "on-rs256": '[auth]\npublic_key = "{public_key}"\n' + RULE,
}


def cpu_s(pid):
    """The process's user and kernel CPU seconds so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def token(setting, keys):
    cmd = [str(SERVER), "token", "--sub", "bench-user", "--ttl", "2h"]
    if setting == "on-rs256":
        cmd += ["--key", str(keys / "rsa.key")]
    else:
        cmd += ["--secret", SECRET]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


class Server:
    def __init__(self, setting, workdir, keys, log):
        self.port = free_port()
        config = workdir / f"{setting}.toml"
        config.write_text(SETTINGS[setting].replace("{public_key}", str(keys / "rsa.pub")))
        cmd = ["taskset", "-c", "0", str(SERVER), "serve", "--port", str(self.port), "--bind", "127.0.0.1",
               "--workers", "1", "--mode", "pubsub", "--status-page", "false", "--io", "io_uring",
               "--publish-token", PUBLISH_TOKEN, "--config", str(config)]
        self.command = " ".join(cmd[3:])
        self.proc = subprocess.Popen(cmd, env=dict(os.environ, RUST_LOG="warn"), stdout=log, stderr=log)
        wait_port(self.port)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def loadgen(args, out):
    cmd = ["taskset", "-c", "1", str(LOADGEN)] + args + ["--json", str(out), "--progress", "none"]
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return json.loads(out.read_text()) if out.exists() else {}


def median(values):
    values = sorted(v for v in values if v is not None)
    return values[len(values) // 2] if values else None


def run_once(setting, attempt, args, workdir, keys, outdir, source, log):
    server = Server(setting, workdir, keys, log)
    pid = server.proc.pid
    query = "" if setting == "off" else f"?token={token(setting, keys)}"
    url = f"ws://127.0.0.1:{server.port}/{query}"
    common = ["--clients", str(args.clients), "--subscribe", SUBSCRIBE, "--server-pid", str(pid),
              "--connect-rate", "0", "--max-pending", "256"]
    user_before, kernel_before = cpu_s(pid)
    connect = loadgen(["idle", url, "--duration", "1s", "--source-addrs", next(source)] + common,
                      outdir / f"connect-{setting}-{attempt}.json")
    time.sleep(1.0)  # the disconnects
    user_after, kernel_after = cpu_s(pid)
    connect_user, connect_kernel = user_after - user_before, kernel_after - kernel_before

    def per_client(cpu_seconds):
        return 1e6 * cpu_seconds / connected if connected else None

    fanout = loadgen(["broadcast", url, "--payload", "64", "--rate", str(args.rate), "--warmup", "1s",
                      "--duration", f"{args.seconds}s", "--drain", "5s", "--source-addrs", next(source),
                      "--publish-path", f"/publish?topic=bench:1&token={PUBLISH_TOKEN}"] + common,
                     outdir / f"fanout-{setting}-{attempt}.json")
    server.stop()
    connected = connect.get("connect", {}).get("connected") or 0
    row = {
        "setting": setting,
        "attempt": attempt,
        "server": server.command,
        "connected": connected,
        "connects_per_s": connect.get("connect", {}).get("per_s"),
        "connect_p99_ms": connect.get("connect", {}).get("time_ms", {}).get("p99"),
        "server_cpu_us_per_client": per_client(connect_user + connect_kernel),
        "server_user_us_per_client": per_client(connect_user),
        "server_kernel_us_per_client": per_client(connect_kernel),
        "rss_per_connection": connect.get("server_metrics", {}).get("rss_per_connection"),
        "deliveries_per_s": fanout.get("deliveries_per_s"),
        "cpu_s_per_million": fanout.get("server_metrics", {}).get("cpu_s_per_million"),
        "p99_ms": fanout.get("latency", {}).get("p99"),
        "lost": fanout.get("lost"),
        "fanout_passed": fanout.get("passed"),
        "connect_passed": connect.get("passed"),
    }
    print(f"{setting} #{attempt}: {row['connects_per_s'] or 0:,.0f} connects/s, "
          f"{row['server_cpu_us_per_client'] or 0:.1f} µs CPU per client, "
          f"{row['rss_per_connection'] or 0:.0f} B/conn; fan-out {row['deliveries_per_s'] or 0:,.0f}/s, "
          f"{row['cpu_s_per_million'] or 0:.2f} CPU s/M, p99 {row['p99_ms'] or 0:.1f} ms, lost {row['lost']}",
          flush=True)
    return row


KEYS = ["connects_per_s", "connect_p99_ms", "server_cpu_us_per_client", "server_user_us_per_client",
        "server_kernel_us_per_client", "rss_per_connection", "deliveries_per_s", "cpu_s_per_million", "p99_ms"]


def fmt(value, spec):
    return "—" if value is None else format(value, spec)


def write_report(outdir, meta, rows, summary):
    (outdir / "results.json").write_text(json.dumps({"meta": meta, "runs": rows, "medians": summary}, indent=1))
    off = summary.get("off", {})

    def ratio(setting, key):
        a, b = summary.get(setting, {}).get(key), off.get(key)
        return None if a is None or not b else a / b

    lines = [f"# Auth and presence: off vs on ({meta['time']})", "",
             f"Machine: {meta['machine']}; kernel {meta['kernel']}; load when started: {meta['load']}.",
             f"Commit: {meta['commit']}.", f"Command: `{meta['command']}`", "",
             "Server: `ringcast serve --mode pubsub --workers 1`, pinned to CPU 0; load generator pinned to CPU 1. "
             f"{meta['clients']:,} clients, each subscribing to `bench:1` (and waiting for the answer) right after "
             "its upgrade. The settings alternate within each repeat; medians of "
             f"{meta['repeat']} repeats (every run in results.json).", "",
             "- **off**: no `[auth]`, no presence.",
             "- **on**: HS256 token in `?token=`, rule `bench:*` with `subscribe = \"authenticated\"` and "
             "`presence = true` (10,000 presence entries).",
             "- **on-rs256**: the same with an RS256 public key (for information).", "",
             "Config files (`--config`):", ""] + [
                 line for setting, text in meta["configs"].items()
                 for line in [f"- {setting}:", "", "  ```toml", *["  " + l for l in (text or "# (empty)").splitlines()], "  ```", ""]
             ] + [
             "## Connect (token check, subscribe, presence entry)", "",
             "| setting | connects/s | connect p99 | server CPU µs per client (connect + subscribe + close) "
             "| of which user space | of which kernel | server RSS per connection |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for setting, m in summary.items():
        lines.append(f"| {setting} | {fmt(m['connects_per_s'], ',.0f')} | {fmt(m['connect_p99_ms'], '.1f')} ms | "
                     f"{fmt(m['server_cpu_us_per_client'], '.1f')} | {fmt(m['server_user_us_per_client'], '.1f')} | "
                     f"{fmt(m['server_kernel_us_per_client'], '.1f')} | {fmt(m['rss_per_connection'], '.0f')} B |")
    lines += ["", "## Fan-out (one topic, 64 B, "
              f"{meta['rate']} messages/s × {meta['clients']:,} subscribers)", "",
              "| setting | deliveries/s | server CPU s per million deliveries | p99 | lost (all runs) |",
              "| --- | ---: | ---: | ---: | ---: |"]
    for setting, m in summary.items():
        lines.append(f"| {setting} | {fmt(m['deliveries_per_s'], ',.0f')} | {fmt(m['cpu_s_per_million'], '.2f')} | "
                     f"{fmt(m['p99_ms'], '.1f')} ms | {m['lost_total']} |")
    lines += ["", "## on ÷ off (medians)", "",
              "| setting | connects/s | server CPU per client | RSS per connection | CPU per delivery |",
              "| --- | ---: | ---: | ---: | ---: |"]
    for setting in summary:
        if setting == "off":
            continue
        lines.append(f"| {setting} | {fmt(ratio(setting, 'connects_per_s'), '.3f')} | "
                     f"{fmt(ratio(setting, 'server_cpu_us_per_client'), '.3f')} | "
                     f"{fmt(ratio(setting, 'rss_per_connection'), '.3f')} | "
                     f"{fmt(ratio(setting, 'cpu_s_per_million'), '.3f')} |")
    lines += ["", "Per repeat (each setting against the `off` run of the same repeat):", ""]
    for setting in summary:
        if setting == "off":
            continue
        for key, name in (("server_cpu_us_per_client", "server CPU per client"), ("connects_per_s", "connects/s")):
            pairs = per_repeat_ratios(rows, key, setting, "off", repeat="attempt")
            lines.append(f"- {setting} ÷ off, {name}: {', '.join(f'{r:.2f}' for r in pairs)} "
                         f"(median {fmt(median(pairs), '.3f')})")
    lines += ["", "Connects/s on this box is bounded by the load generator's core as much as by the server's, "
              "so the server's CPU per client is the figure that isolates the cost of the token check and "
              "the presence entry. Its kernel part (accept, the handshake's reads and writes, close) is the "
              "same work with auth on or off and carries most of the run-to-run spread; the user-space part "
              "is where the token check, the session and the presence entry show."]
    (outdir / "README.md").write_text("\n".join(lines) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--rate", type=int, default=10, help="messages/s from the publisher")
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--settings", default="off,on,on-rs256")
    parser.add_argument("--quick", action="store_true", help="2,000 clients, one repeat, 3 s")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.clients, args.repeat, args.seconds = 2000, 1, 3

    subprocess.run(["cargo", "build", "--release", "-q", "-p", "ringcast-service", "-p", "ringcast-loadgen"],
                   cwd=ROOT, check=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
    outdir = args.out or ROOT / "results" / f"{stamp}-auth"
    outdir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="ringcast-auth-bench-"))
    keys = workdir
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                    "-out", str(keys / "rsa.key")], check=True, capture_output=True)
    subprocess.run(["openssl", "pkey", "-in", str(keys / "rsa.key"), "-pubout", "-out", str(keys / "rsa.pub")],
                   check=True)
    log = open(outdir / "servers.log", "w")
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    model = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                  if l.startswith("model name")), platform.processor())
    meta = {"time": stamp, "machine": f"{model}, {os.cpu_count()} cores", "kernel": platform.release(),
            "commit": head + (" (with uncommitted changes)" if dirty else ""),
            "load": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
            "command": " ".join(["python3", "benches/auth.py"] + sys.argv[1:]),
            "clients": args.clients, "repeat": args.repeat, "rate": args.rate}
    settings = args.settings.split(",")
    sources = (f"127.0.{1 + n // 250}.{1 + n % 250}" for n in range(10_000))
    rows = []
    for attempt in range(args.repeat):
        order = settings if attempt % 2 == 0 else list(reversed(settings))
        for setting in order:
            rows.append(run_once(setting, attempt, args, workdir, keys, outdir, sources, log))
    summary = {}
    for setting in settings:
        runs = [r for r in rows if r["setting"] == setting]
        summary[setting] = {key: median([r[key] for r in runs]) for key in KEYS}
        summary[setting]["lost_total"] = sum(r["lost"] or 0 for r in runs)
    meta["configs"] = {s: SETTINGS[s].replace("{public_key}", "rsa.pub") for s in settings}
    write_report(outdir, meta, rows, summary)
    print(f"wrote {outdir}/README.md")


if __name__ == "__main__":
    main()
