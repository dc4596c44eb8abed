#!/usr/bin/env python3
"""`make bench` and `make bench-quick`: the broadcast benchmark pipeline.

Builds in release, runs the codec benches (`make bench-codec`, full run only), then for
each server setting starts the server as a subprocess and runs `ringcast-loadgen
broadcast` once per (clients, payload) with `--server-pid`, stops the server with
SIGTERM, and aggregates everything into results/<UTC timestamp>/:

    report.json  report.csv  report.md                                (ringcast-loadgen report)
    offered.svg  latency.svg  throughput.svg  cpu.svg  frame-size.svg (its figures)
    <server>-<setting>/c<clients>-p<payload>/result.{json,csv,md} latency.svg stdout.txt
    offered/<server>-<setting>/r<offered>/...   (the offered-load sweep)
    idle-<server>-<setting>/...           (10k idle clients: server RSS per connection)
    servers/<server>-<setting>.log        (each server's stderr/stdout)
    commands.txt                          (every command, in order)

A full run rewrites results/README.md with the latest tables and plots, the machine,
the commit and the exact commands, then commits that summary: results/README.md, the run
folder and results/codec.md ("bench: results <timestamp>"), and nothing else. BENCH_COMMIT=0
skips the commit; quick runs never commit (their folders are git-ignored).

    benches/bench.py            # full sweep, about 13 minutes on the 2-core dev box
    benches/bench.py --quick    # reduced sweep, under 3 minutes; leaves results/README.md alone
    benches/bench.py --help     # every knob (clients, payloads, splits, servers, durations)

Sweep (full): clients {1k, 10k} × payload {64 B, 1 KiB, 16 KiB, 64 KiB} against ringcast
with split off and frame sizes {1 KiB, 4 KiB, 16 KiB}, and against the tokio-tungstenite
and fastwebsockets baselines in benches/peers/. The publish rate of each (clients,
payload) is chosen by the load generator (`--rate auto`: the lower of 200,000
deliveries/s — 100,000 from 10k clients on, see delivery_target() — and 400 MB/s) and is
the same for every server, so ratios compare like with like. Then the offered-load sweep:
1k clients × 1 KiB against ringcast (split off) and each baseline at rising publish rates,
from well below to well past what the two cores can deliver, for the throughput against
offered load plot. A server that loses messages or drops clients is recorded (loss,
errors), not fatal: only the load generator's own exit status reports it.

Python 3 standard library only.
"""

import argparse
import datetime
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RINGCAST = "target/release/ringcast"
LOADGEN = "target/release/ringcast-loadgen"
PEERS = {
    "tokio-tungstenite": "benches/peers/tokio-tungstenite",
    "fastwebsockets": "benches/peers/fastwebsockets",
}
LOG = []  # every command run, for commands.txt and the README


def log_command(cmd, note=""):
    text = " ".join(shlex.quote(str(c)) for c in cmd)
    LOG.append(text + (f"    # {note}" if note else ""))
    print(f"+ {text}", file=sys.stderr, flush=True)


def run(cmd, **kw):
    log_command(cmd)
    return subprocess.run(cmd, cwd=ROOT, check=True, **kw)


def size_label(n):
    if n % 1024 == 0 and n >= 1024:
        return f"{n // 1024} KiB"
    return f"{n} B"


def clients_label(n):
    return f"{n // 1000}k" if n % 1000 == 0 and n >= 1000 else str(n)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, proc, timeout=30):
    start = time.time()
    while time.time() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server did not listen on {port} within {timeout}s")


class Setting:
    """One server process configuration (and, for the compression sweep, what the
    clients offer: `deflate` None outside it, else False/True)."""

    def __init__(self, server, split=None, deflate=None):
        self.server = server
        self.split = split
        self.deflate = deflate

    @property
    def label(self):
        if self.server != "ringcast":
            return ""
        if self.deflate is not None:
            return f"json, deflate {'on' if self.deflate else 'off'}"
        return "split off" if self.split is None else f"split {size_label(self.split)}"

    @property
    def slug(self):
        if self.server != "ringcast":
            return self.server
        return f"ringcast-split-{'off' if self.split is None else self.split}"

    def command(self, port):
        if self.server == "ringcast":
            cmd = [RINGCAST, "serve", "--port", str(port), "--bind", "127.0.0.1"]
            if self.split is not None:
                cmd += ["--split-frame-size", str(self.split)]
            return cmd
        binary = f"{PEERS[self.server]}/target/release/peer-{self.server}"
        return [binary, "--port", str(port), "--mode", "broadcast", "--bind", "127.0.0.1"]


class Server:
    def __init__(self, setting, log_path):
        self.setting = setting
        self.port = free_port()
        cmd = setting.command(self.port)
        log_command(cmd, "server")
        self.log = open(log_path, "w")
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        wait_for_port(self.port, self.proc)

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


SOURCE_COUNTER = [1]


def next_source():
    """A fresh loopback source address per load generator run, so that TIME_WAIT
    sockets left by one run never take the ephemeral ports of the next."""
    SOURCE_COUNTER[0] = SOURCE_COUNTER[0] % 250 + 1
    return f"127.0.{SOURCE_COUNTER[0]}.1"


def delivery_target(clients):
    """Deliveries/s the publish rate aims at (`--max-deliveries`), measured on the 2-core box:
    at 1k clients a delivery costs the server ~3 µs and the load generator ~2.5 µs of CPU,
    and 200,000/s leaves about 40% of the two cores idle; at 10k clients each costs ~6 µs,
    200,000/s kept both cores 97-99% busy (p50 ~100 ms for every server: queueing, not
    the server), and 100,000/s leaves about 40% idle again."""
    return 200_000 if clients < 5000 else 100_000


def loadgen(args, setting, server, out_dir, scenario, clients, payload=None, extra=(), rate=None):
    """One load generator run; `rate` (messages/s) overrides the automatic rate."""
    os.makedirs(out_dir, exist_ok=True)
    cmd = [LOADGEN, scenario, f"ws://127.0.0.1:{server.port}/", "--clients", str(clients)]
    if payload is not None and rate is not None:
        cmd += ["--payload", str(payload), "--rate", f"{rate:g}"]
    elif payload is not None:
        cmd += ["--payload", str(payload), "--max-deliveries", str(delivery_target(clients)), "--max-mbps", "400"]
    cmd += ["--connect-rate", str(args.connect_rate), "--source-addrs", next_source()]
    cmd += ["--server-pid", str(server.proc.pid), "--server-name", setting.server]
    if setting.label:
        cmd += ["--server-setting", setting.label]
    if setting.deflate is not None:
        cmd += ["--payload-kind", "json"] + (["--deflate"] if setting.deflate else [])
    cmd += ["--progress", "none", "--out", os.path.relpath(out_dir, ROOT)]
    cmd += list(extra)
    log_command(cmd)
    started = time.time()
    with open(os.path.join(out_dir, "stdout.txt"), "w") as out:
        try:
            proc = subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, timeout=args.run_timeout)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    elapsed = time.time() - started
    result = os.path.join(out_dir, "result.json")
    ok = os.path.exists(result)
    tail = ""
    if not ok:
        with open(os.path.join(out_dir, "stdout.txt")) as f:
            tail = f.read()[-400:].strip().replace("\n", " / ")
    print(f"  {setting.slug} {scenario} c={clients} p={payload}: exit {code} in {elapsed:.1f}s"
          + ("" if ok else f" — no result: {tail}"), file=sys.stderr, flush=True)
    return result if ok else None, code, elapsed


def machine():
    info = {}
    try:
        cpuinfo = open("/proc/cpuinfo").read()
        m = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
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
    try:
        info["nofile_hard"] = subprocess.run(["bash", "-c", "ulimit -Hn"], capture_output=True, text=True).stdout.strip()
        info["port_range"] = open("/proc/sys/net/ipv4/ip_local_port_range").read().split()
    except OSError:
        pass
    return info


def loadavg():
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "?"


def git(*args):
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="reduced sweep (make bench-quick)")
    p.add_argument("--clients", help="comma-separated client counts (default: 1000,10000; quick: 1000)")
    p.add_argument("--payloads", help="comma-separated payload bytes (default: 64,1024,16384,65536; quick: 64,16384)")
    p.add_argument("--splits", help="ringcast split settings, 'off' or bytes (default: off,1024,4096,16384; quick: off,4096)")
    p.add_argument("--baselines", help="comma-separated baseline peers (default: both; quick: tokio-tungstenite)")
    p.add_argument("--warmup", default="1s")
    p.add_argument("--duration", help="measured time per run (default 8s; quick 3s)")
    p.add_argument("--drain", default="10s")
    p.add_argument("--connect-rate", type=int, default=5000)
    p.add_argument("--idle-clients", type=int, help="idle clients per server for RSS per connection (default 10000; quick: skipped)")
    p.add_argument("--sweep-rates", help="offered deliveries/s of the offered-load sweep, or 'none' "
                   "(default: 100000,200000,400000,600000,800000,1200000; quick: 100000,200000,400000)")
    p.add_argument("--sweep-clients", type=int, default=1000, help="clients of the offered-load sweep")
    p.add_argument("--sweep-payload", type=int, default=1024, help="payload bytes of the offered-load sweep")
    p.add_argument("--sweep-duration", help="measured time per sweep run (default 3s; quick 2s)")
    p.add_argument("--deflate-clients", help="client counts of the compression sweep, or 'none' "
                   "(default: 1000,10000; quick: 1000)")
    p.add_argument("--deflate-payloads", default="1024,16384", help="JSON payload bytes of the compression sweep")
    p.add_argument("--no-build", action="store_true", help="use the binaries already built")
    p.add_argument("--no-codec", action="store_true", help="skip `make bench-codec` (always skipped by --quick)")
    p.add_argument("--readme", choices=["auto", "yes", "no"], default="auto",
                   help="rewrite results/README.md (auto: full runs only)")
    p.add_argument("--run-timeout", type=int, default=180, help="seconds before one loadgen run is abandoned")
    args = p.parse_args()

    quick = args.quick
    clients = [int(c) for c in (args.clients or ("1000" if quick else "1000,10000")).split(",")]
    payloads = [int(x) for x in (args.payloads or ("64,16384" if quick else "64,1024,16384,65536")).split(",")]
    splits = [None if s == "off" else int(s) for s in (args.splits or ("off,4096" if quick else "off,1024,4096,16384")).split(",")]
    baselines = [b for b in (args.baselines or ("tokio-tungstenite" if quick else "tokio-tungstenite,fastwebsockets")).split(",") if b]
    duration = args.duration or ("3s" if quick else "8s")
    idle_clients = args.idle_clients if args.idle_clients is not None else (0 if quick else 10000)
    sweep_text = args.sweep_rates or ("100000,200000,400000" if quick else "100000,200000,400000,600000,800000,1200000")
    sweep_rates = [] if sweep_text == "none" else [int(r) for r in sweep_text.split(",")]
    sweep_duration = args.sweep_duration or ("2s" if quick else "3s")
    deflate_text = args.deflate_clients or ("1000" if quick else "1000,10000")
    deflate_clients = [] if deflate_text == "none" else [int(c) for c in deflate_text.split(",")]
    deflate_payloads = [int(x) for x in args.deflate_payloads.split(",")]
    for b in baselines:
        if b not in PEERS:
            sys.exit(f"unknown baseline {b}; known: {', '.join(PEERS)}")

    t_start = time.time()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H%M%SZ") + ("-quick" if quick else "")
    run_dir = os.path.join(ROOT, "results", stamp)
    os.makedirs(os.path.join(run_dir, "servers"), exist_ok=True)
    load_at_start = loadavg()
    timings = {}

    if not args.no_build:
        t = time.time()
        run(["cargo", "build", "--release", "-p", "ringcast-service", "-p", "ringcast-loadgen"])
        for b in baselines:
            run(["cargo", "build", "--release", "--locked", "--manifest-path", f"{PEERS[b]}/Cargo.toml"])
        timings["build"] = time.time() - t
    codec_ran = False
    if not quick and not args.no_codec:
        t = time.time()
        run(["make", "bench-codec"])
        codec_ran = True
        timings["codec benches"] = time.time() - t

    settings = [Setting("ringcast", s) for s in splits] + [Setting(b) for b in baselines]
    results, idle_results, sweep_results, deflate_results, failures = [], [], [], [], []
    t_sweep = time.time()
    extra = ["--warmup", args.warmup, "--duration", duration, "--drain", args.drain]
    # Every server runs for the whole sweep (idle ones cost nothing), and each (clients,
    # payload) runs against every server in turn: whatever else the machine does during
    # the sweep then falls on all servers alike instead of on whichever came last.
    servers = {}

    def running_server(setting, run_label):
        """The setting's server, restarted (and the crash noted) if it exited before `run_label`."""
        server = servers[setting.slug]
        if not server.alive():
            failures.append(f"{setting.slug}: server exited ({server.proc.returncode}) before {run_label}; restarted")
            server.stop()
            log = f"{setting.slug}-restart-{run_label.replace(' ', '-').replace('/', '')}.log"
            server = servers[setting.slug] = Server(setting, os.path.join(run_dir, "servers", log))
        return server

    try:
        for setting in settings:
            servers[setting.slug] = Server(setting, os.path.join(run_dir, "servers", f"{setting.slug}.log"))
        if idle_clients:
            # First, on the fresh servers: memory per idle connection.
            for setting in settings:
                out = os.path.join(run_dir, f"idle-{setting.slug}")
                r, code, _ = loadgen(args, setting, servers[setting.slug], out, "idle", idle_clients,
                                     extra=["--duration", "1s"])
                if r:
                    idle_results.append(r)
        for c in clients:
            for payload in payloads:
                print(f"== {clients_label(c)} clients × {size_label(payload)}", file=sys.stderr, flush=True)
                for setting in settings:
                    server = running_server(setting, f"c{c} p{payload}")
                    out = os.path.join(run_dir, setting.slug, f"c{c}-p{payload}")
                    r, code, _ = loadgen(args, setting, server, out, "broadcast", c, payload, extra)
                    if r:
                        results.append(r)
                    else:
                        failures.append(f"{setting.slug} c={c} p={payload}: no result (exit {code})")
        # The offered-load sweep: ringcast unsplit and each baseline, rate by rate.
        sweep_settings = [s for s in settings if s.server != "ringcast" or s.split is None]
        sweep_extra = ["--warmup", args.warmup, "--duration", sweep_duration, "--drain", "5s"]
        for offered in sweep_rates:
            print(f"== offered load {offered:,} deliveries/s ({clients_label(args.sweep_clients)} × "
                  f"{size_label(args.sweep_payload)})", file=sys.stderr, flush=True)
            for setting in sweep_settings:
                server = running_server(setting, f"offered {offered}/s")
                out = os.path.join(run_dir, "offered", setting.slug, f"r{offered}")
                r, code, _ = loadgen(args, setting, server, out, "broadcast", args.sweep_clients, args.sweep_payload,
                                     sweep_extra, rate=offered / args.sweep_clients)
                if r:
                    sweep_results.append(r)
                else:
                    failures.append(f"{setting.slug} offered {offered}/s: no result (exit {code})")
        # The compression sweep: JSON feed updates to the same ringcast server (split off,
        # permessage-deflate on, as the service defaults), clients without and with
        # permessage-deflate in turn, at the same rate.
        if deflate_clients and Setting("ringcast").slug not in servers:
            plain = Setting("ringcast")
            servers[plain.slug] = Server(plain, os.path.join(run_dir, "servers", f"{plain.slug}.log"))
        for c in deflate_clients:
            for payload in deflate_payloads:
                print(f"== permessage-deflate: {clients_label(c)} clients × {size_label(payload)} JSON",
                      file=sys.stderr, flush=True)
                for deflate in (False, True):
                    setting = Setting("ringcast", None, deflate)
                    server = running_server(Setting("ringcast"), f"deflate c{c} p{payload}")
                    out = os.path.join(run_dir, "deflate", f"c{c}-p{payload}-{'on' if deflate else 'off'}")
                    r, code, _ = loadgen(args, setting, server, out, "broadcast", c, payload, extra)
                    if r:
                        deflate_results.append(r)
                    else:
                        failures.append(f"deflate {'on' if deflate else 'off'} c={c} p={payload}: no result (exit {code})")
    finally:
        for slug, server in servers.items():
            code = server.stop()
            if code not in (0, -signal.SIGTERM, None):
                failures.append(f"{slug}: exit status {code} after SIGTERM")
    # The report lists runs setting by setting.
    order = {s.slug: i for i, s in enumerate(settings)}
    results.sort(key=lambda r: order[os.path.basename(os.path.dirname(os.path.dirname(r)))])
    timings["sweep"] = time.time() - t_sweep

    if not results:
        sys.exit("no run produced a result")
    title = "Broadcast benchmark" + (" (quick)" if quick else "")
    run([LOADGEN, "report", "--out", os.path.relpath(run_dir, ROOT), "--title", title]
        + [os.path.relpath(r, ROOT) for r in results]
        + [a for r in sweep_results for a in ("--offered-load", os.path.relpath(r, ROOT))])
    if deflate_results:
        run([LOADGEN, "report", "--out", os.path.relpath(os.path.join(run_dir, "deflate"), ROOT),
             "--title", "permessage-deflate: JSON feed updates, clients without and with compression"]
            + [os.path.relpath(r, ROOT) for r in deflate_results])
    timings["total"] = time.time() - t_start

    meta = {
        "stamp": stamp,
        "quick": quick,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": (git("rev-parse", "--short", "HEAD") or "unknown")
        + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else ""),
        "machine": machine(),
        "loadavg_start": load_at_start,
        "loadavg_end": loadavg(),
        "rustc": subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip(),
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "sweep": {"clients": clients, "payloads": payloads, "splits": [s or "off" for s in splits],
                  "baselines": baselines, "warmup": args.warmup, "duration": duration, "drain": args.drain,
                  "idle_clients": idle_clients, "offered_load": {"rates": sweep_rates, "clients": args.sweep_clients,
                                                                 "payload": args.sweep_payload,
                                                                 "duration": sweep_duration},
                  "deflate": {"clients": deflate_clients, "payloads": deflate_payloads}},
        "failures": failures,
        "invocation": "make bench-quick" if quick else "make bench",
        "argv": sys.argv[1:],
    }
    with open(os.path.join(run_dir, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
    with open(os.path.join(run_dir, "commands.txt"), "w") as f:
        f.write("\n".join(LOG) + "\n")
    idle = [json.load(open(r)) for r in idle_results]
    deflate_runs = [json.load(open(r)) for r in deflate_results]
    summary = summary_markdown(meta, idle, run_dir, codec_ran, deflate_runs)
    with open(os.path.join(run_dir, "README.md"), "w") as f:
        f.write(summary.replace("](" + stamp + "/", "](./"))
    write_readme = args.readme == "yes" or (args.readme == "auto" and not quick)
    if write_readme:
        with open(os.path.join(ROOT, "results", "README.md"), "w") as f:
            f.write(summary)
    print(f"\nresults: {os.path.relpath(run_dir, ROOT)}/ ({len(results)} runs, {timings['total'] / 60:.1f} min)"
          + ("; results/README.md rewritten" if write_readme else ""), file=sys.stderr)
    for line in failures:
        print(f"  note: {line}", file=sys.stderr)
    if write_readme and os.environ.get("BENCH_COMMIT", "1") != "0" and os.path.isdir(os.path.join(ROOT, ".git")):
        paths = [os.path.relpath(run_dir, ROOT), "results/README.md", "results/codec.md"]
        run(["git", "add", "--", *paths])
        run(["git", "commit", "-m", f"bench: results {stamp}", "--", *paths])


def offered_load_text(sweep):
    if not sweep["rates"]:
        return "not run"
    return (f"{clients_label(sweep['clients'])} clients × {size_label(sweep['payload'])} at "
            + ", ".join(f"{r:,}" for r in sweep["rates"]) + " deliveries/s offered; ringcast split off and the "
            f"baselines; measured {sweep['duration']}, drain ≤ 5s per run")


def deflate_markdown(runs, stamp):
    """The compression sweep: server CPU per delivery and bytes on the wire, off against on."""
    pairs = {}
    for r in runs:
        pairs.setdefault((r["clients"], r["payload"]), {})["on" if r.get("deflate") else "off"] = r
    lines = ["## permessage-deflate", "",
             "JSON feed updates (text quote updates, compressible as such feeds are) to the same ringcast "
             "server, whose permessage-deflate is on (the service's default): first clients that do not offer "
             "it, then clients that do, at the same publish rate. Each broadcast is compressed once for all "
             "subscribers. Server CPU is per delivery, from `/proc`; wire bytes are the payload bytes per "
             "delivery as received (compressed ones as compressed). Both runs of a row are one before/after "
             f"pair of this run ([deflate/report.md]({stamp}/deflate/report.md)).", "",
             "| clients × payload | deliveries/s off | on | server CPU µs/delivery off | on | on ÷ off "
             "| wire bytes/delivery off | on | p99 ms off | on | compressing clients |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for (clients, payload), pair in sorted(pairs.items()):
        off, on = pair.get("off"), pair.get("on")
        if not off or not on:
            continue
        cpu = lambda r: (r.get("server_metrics") or {}).get("cpu_s_per_million")
        c_off, c_on = cpu(off), cpu(on)
        ratio = f"{c_on / c_off:.2f}×" if c_off and c_on else "–"
        fmt = lambda v: f"{v:.2f}" if v is not None else "–"
        p99 = lambda r: (r.get("latency") or {}).get("p99")
        lines.append(f"| {clients_label(clients)} × {size_label(payload)} | {off['deliveries_per_s']:,.0f} | "
                     f"{on['deliveries_per_s']:,.0f} | {fmt(c_off)} | {fmt(c_on)} | {ratio} | "
                     f"{off.get('wire_bytes_per_delivery', 0):,.0f} | {on.get('wire_bytes_per_delivery', 0):,.0f} | "
                     f"{fmt(p99(off))} | {fmt(p99(on))} | {on.get('deflate_connections', 0):,} |")
    lines.append("")
    return lines


def summary_markdown(meta, idle, run_dir, codec_ran, deflate_runs=()):
    stamp = meta["stamp"]
    m = meta["machine"]
    with open(os.path.join(run_dir, "report.md")) as f:
        report = f.read()
    # Relative links from results/ into the run folder.
    report = re.sub(r"\]\(([\w.-]+\.svg)\)", lambda m: f"]({stamp}/{m.group(1)})", report)
    report = re.sub(r"^# .*\n", "", report, count=1)
    sweep = meta["sweep"]
    t = meta["timings_s"]
    lines = [
        "# Benchmark results",
        "",
        f"Latest `{meta['invocation']}`: run folder [`{stamp}/`]({stamp}/) "
        f"([report.md]({stamp}/report.md), [report.csv]({stamp}/report.csv), [report.json]({stamp}/report.json), "
        f"[commands.txt]({stamp}/commands.txt)). Generated by `benches/bench.py`; do not edit by hand.",
        "",
        "| | |",
        "| --- | --- |",
        f"| date | {meta['date']} |",
        f"| commit | `{meta['commit']}` |",
        f"| machine | {m.get('cpu')}, {m.get('cores')} cores, {m.get('memory')} RAM, {m.get('kernel')} |",
        f"| limits | open files (hard) {m.get('nofile_hard', '?')}, ephemeral ports {'–'.join(m.get('port_range', ['?']))} |",
        f"| load average | {meta['loadavg_start']} at start, {meta['loadavg_end']} at the end (the load generator runs on the same 2 cores as the server) |",
        f"| toolchain | {meta['rustc']}, release profile |",
        f"| sweep | clients {', '.join(clients_label(c) for c in sweep['clients'])} × payload "
        f"{', '.join(size_label(p) for p in sweep['payloads'])}; ringcast split {', '.join(size_label(s) if s != 'off' else 'off' for s in sweep['splits'])}; "
        f"baselines {', '.join(sweep['baselines']) or 'none'}; warm-up {sweep['warmup']}, measured {sweep['duration']}, drain ≤ {sweep['drain']} per run |",
        f"| offered-load sweep | {offered_load_text(sweep['offered_load'])} |",
        f"| time | {t.get('total', 0) / 60:.1f} min in all: " + ", ".join(f"{k} {v:.0f} s" for k, v in t.items() if k != "total") + " |",
        "",
        "Each run: a fresh `ringcast-loadgen broadcast` process connects the clients (5,000/s), one publisher "
        "sends binary messages (u64 sequence number + CLOCK_MONOTONIC send time + filler) at a fixed rate, open loop, "
        "and every client receives them; latency runs from each message's *scheduled* send time to its arrival, so "
        "stalls are not hidden (coordinated omission). The rate per (clients, payload) is the lower of "
        "200,000 deliveries/s (100,000 at 10k clients, where each delivery costs twice the CPU) and 400 MB/s, "
        "the same for every server; it keeps about 40% of the two cores idle. Throughput ratios are therefore "
        "about 1: every server keeps up with the offered load, and the comparison is in latency and CPU. "
        "Server CPU and RSS come from `/proc/PID`. "
        "The load generator shares the machine with the server: CPU per delivery is the figure that stays "
        "meaningful when the load generator, not the server, is the bottleneck. The offered-load sweep is where "
        "throughput does differ: it raises the rate past what the machine can deliver, and the first figure shows "
        "where each server stops keeping up (that knee includes the load generator's share of the two cores).",
        "",
        report.rstrip(),
        "",
    ]
    if idle:
        lines += ["## Memory per idle connection", "",
                  f"`ringcast-loadgen idle` with {clients_label(idle[0]['clients'])} clients on each freshly started server.", "",
                  "| server | setting | connected | RSS before, MB | RSS connected, MB | RSS per connection, KiB |",
                  "| --- | --- | ---: | ---: | ---: | ---: |"]
        for r in idle:
            sm = r.get("server_metrics") or {}
            per = sm.get("rss_per_connection")
            per_text = f"{per / 1024:.1f}" if per is not None else "–"
            lines.append(f"| {r['server']} | {r['setting'] or '–'} | {r['connect']['connected']} | "
                         f"{sm.get('rss_before_mb', 0):.1f} | {sm.get('rss_connected_mb', 0):.1f} | {per_text} |")
        lines.append("")
    if deflate_runs:
        lines += deflate_markdown(deflate_runs, stamp)
    if meta["failures"]:
        lines += ["## Pipeline notes", ""] + [f"- {f}" for f in meta["failures"]] + [""]
    lines += [
        "## Codec",
        "",
        ("The criterion codec benches ran as part of this run: " if codec_ran else
         "The codec benches did not run in this invocation; latest: ") + "[codec.md](codec.md).",
        "",
        "## Commands",
        "",
        "Reproduce with `make bench` (about 13 minutes) or `make bench-quick` (under 3 minutes, writes a "
        "`-quick` folder and leaves this file alone). `make bench` then commits this file, results/codec.md and "
        "the run folder. The exact commands of this run, in order (also in "
        f"[commands.txt]({stamp}/commands.txt)):",
        "",
        "```sh",
    ]
    shown, skipped = [], 0
    for c in LOG:
        if "ringcast-loadgen broadcast" in c and len([s for s in shown if "loadgen broadcast" in s]) >= 2:
            skipped += 1
            continue
        if skipped and "ringcast-loadgen report" in c:
            shown.append(f"# … {skipped} more ringcast-loadgen broadcast runs like the two above: see commands.txt")
        shown.append(c)
    lines += shown
    lines += ["```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
