#!/usr/bin/env python3
"""End-to-end check of a peer server against the contract in README.md.

    python3 -m venv /tmp/wsvenv && /tmp/wsvenv/bin/pip install websockets
    /tmp/wsvenv/bin/python verify.py tokio-tungstenite/target/release/peer-tokio-tungstenite
    /tmp/wsvenv/bin/python verify.py fastwebsockets/target/release/peer-fastwebsockets --many 10000

Starts the binary twice (echo, then broadcast) on a free loopback port and exits
non-zero on the first failed check. Loopback only; every loop is bounded.
"""

import argparse
import asyncio
import os
import resource
import socket
import subprocess
import sys
import time

from websockets.asyncio.client import connect

BIG = 16 << 20  # contract: messages of at least 16 MiB
TIMEOUT = 30


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, binary, mode):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--mode", mode, "--bind", "127.0.0.1"],
            stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        want = f"listening on 127.0.0.1:{self.port} mode={mode}"
        check(line == want, f"ready line {line!r} == {want!r}")
        self.url = f"ws://127.0.0.1:{self.port}"

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        self.proc.terminate()
        self.proc.wait(5)


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        sys.exit(1)


def ws(url):
    return connect(url, max_size=None, ping_interval=None, open_timeout=TIMEOUT)


async def ping_ok(c):
    await asyncio.wait_for(await c.ping(b"hi"), 5)
    return True


def messages(n):
    """n messages alternating text/binary, each carrying its sequence number."""
    return [f"text {i}" if i % 2 == 0 else f"bin {i}".encode() + bytes(i) for i in range(n)]


async def echo_checks(url):
    async with ws(url + "/any/path?q=1") as c:
        check(c.response.headers.get("Sec-WebSocket-Extensions") is None, "echo: no compression negotiated")
        for m in ["hello", b"\x00\x01\x02binary", "", b""]:
            await c.send(m)
            got = await asyncio.wait_for(c.recv(), 5)
            check(got == m and type(got) is type(m), f"echo: {type(m).__name__} {m[:16]!r} echoed")
        big = os.urandom(BIG)
        await c.send(big)
        check(await asyncio.wait_for(c.recv(), TIMEOUT) == big, "echo: 16 MiB binary echoed")
        await c.send(["frag", "mented ", "text"])
        check(await asyncio.wait_for(c.recv(), 5) == "fragmented text", "echo: fragmented message reassembled")
        check(await ping_ok(c), "echo: ping answered")
        await c.close()
        check(c.close_code == 1000, f"echo: close handshake completed (code {c.close_code})")
    async with ws(url + "/publish") as c:
        await c.send("pub path echoes too")
        check(await asyncio.wait_for(c.recv(), 5) == "pub path echoes too", "echo: /publish path echoes too")


async def broadcast_checks(url, n_subs=50, n_msgs=100):
    paths = ["/", "/sub", "/publish/not", "/x?publish"]
    subs = [await ws(url + paths[i % len(paths)]).__aenter__() for i in range(n_subs)]
    pub = await ws(url + "/publish?room=1&x=y").__aenter__()
    other_pub = await ws(url + "/publish").__aenter__()
    check(await ping_ok(subs[0]) and await ping_ok(pub), "broadcast: pings answered (subscriber and publisher)")
    await asyncio.sleep(0.2)  # let the server register every subscriber

    await subs[1].send("subscriber chatter must be ignored")
    sent = messages(n_msgs)
    for m in sent:
        await pub.send(m)

    async def collect(c, n):
        return [await asyncio.wait_for(c.recv(), TIMEOUT) for _ in range(n)]

    results = await asyncio.gather(*(collect(s, n_msgs) for s in subs))
    good = sum(r == sent and all(type(a) is type(b) for a, b in zip(r, sent)) for r in results)
    check(good == n_subs, f"broadcast: {good}/{n_subs} subscribers got all {n_msgs} msgs in order, opcodes kept")

    async def nothing_more(c):
        try:
            await asyncio.wait_for(c.recv(), 0.3)
            return False
        except TimeoutError:
            return True

    quiet = await asyncio.gather(nothing_more(pub), nothing_more(other_pub), nothing_more(subs[0]))
    check(all(quiet), "broadcast: publishers get nothing, subscriber chatter not forwarded")

    big = os.urandom(BIG)
    await pub.send(big)
    got = await asyncio.gather(*(asyncio.wait_for(s.recv(), TIMEOUT) for s in subs[:5]))
    check(all(g == big for g in got), "broadcast: 16 MiB message delivered")

    await subs[0].close()
    check(subs[0].close_code == 1000, f"broadcast: subscriber close handshake ({subs[0].close_code})")
    await pub.close()
    check(pub.close_code == 1000, f"broadcast: publisher close handshake ({pub.close_code})")
    for c in subs[1:] + [other_pub]:
        await c.close()


async def slow_subscriber_check(url, server):
    """A subscriber that never reads must not take the server down."""
    host, port = url.removeprefix("ws://").split(":")
    r, w = await asyncio.open_connection(host, int(port))
    w.write(b"GET /slow HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    await w.drain()
    check(b" 101 " in await r.readuntil(b"\r\n\r\n"), "slow: raw subscriber upgraded")
    async with ws(url + "/publish") as pub, ws(url + "/fast") as fast:
        await asyncio.sleep(0.2)
        chunk = os.urandom(256 << 10)
        for i in range(400):  # 100 MiB toward a reader that never reads
            await pub.send(chunk)
        got = [await asyncio.wait_for(fast.recv(), TIMEOUT) for _ in range(400)]
        check(len(got) == 400 and server.alive(), "slow: 100 MiB published past a stalled subscriber; fast one got all, server alive")
    w.close()
    await asyncio.sleep(0.5)
    async with ws(url + "/after") as c:
        check(await ping_ok(c), "slow: server still serves new connections after the stalled one left")


async def many_check(url, n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sem = asyncio.Semaphore(200)
    t0 = time.monotonic()

    async def one(i):
        async with sem:
            return await ws(f"{url}/s{i}").__aenter__()

    conns = await asyncio.gather(*(one(i) for i in range(n)))
    check(len(conns) == n, f"many: {n} concurrent subscribers connected in {time.monotonic() - t0:.1f}s")
    async with ws(url + "/publish") as pub:
        await asyncio.sleep(0.5)
        await pub.send("to everyone")
        got = await asyncio.gather(*(asyncio.wait_for(c.recv(), TIMEOUT) for c in conns))
        check(all(g == "to everyone" for g in got), f"many: one publish reached all {n} subscribers")
    await asyncio.gather(*(c.close() for c in conns))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("--many", type=int, default=0, help="also hold this many connections at once")
    a = ap.parse_args()

    s = Server(a.binary, "echo")
    try:
        asyncio.run(echo_checks(s.url))
    finally:
        s.stop()

    s = Server(a.binary, "broadcast")
    try:
        asyncio.run(broadcast_checks(s.url))
        asyncio.run(slow_subscriber_check(s.url, s))
        if a.many:
            asyncio.run(many_check(s.url, a.many))
        check(s.alive(), "server still running at the end")
    finally:
        s.stop()
    print("all checks passed")


if __name__ == "__main__":
    main()
