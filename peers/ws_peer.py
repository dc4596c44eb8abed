#!/usr/bin/env python3
"""Scriptable WebSocket peer on Python `websockets` (asyncio API, >= 14).

Commands are JSON lines on stdin, events are JSON lines on stdout (one object per
line, flushed). The protocol is shared with ws_peer.js and documented in
peers/README.md. Diagnostics go to stderr. Exits on stdin EOF or {"cmd":"exit"}.

Run with the venv made by peers/setup.sh:
  ${RINGCAST_PEERS_DIR:-$HOME/.cache/ringcast-peers}/venv-py3/bin/python peers/ws_peer.py
"""

import asyncio
import base64
import hashlib
import json
import os
import ssl
import sys
import time
import traceback

# websockets >= 16 caps a message at 4096 fragments; tests may send more.
os.environ.setdefault("WEBSOCKETS_MAX_FRAGMENTS", str(1 << 20))

import websockets  # noqa: E402
from websockets.asyncio.client import ClientConnection, connect  # noqa: E402
from websockets.asyncio.server import ServerConnection, broadcast, serve  # noqa: E402
from websockets.exceptions import ConnectionClosed, InvalidStatus  # noqa: E402
from websockets.frames import Frame, Opcode  # noqa: E402

DEFAULT_MAX_SIZE = 64 * 1024 * 1024
PEER_NAME = "python"

conns = {}  # id -> Conn
servers = {}  # name -> Srv
chains = {}  # sequencing key -> last task
server_counter = 0


def emit(event, **fields):
    line = json.dumps({"event": event, **fields}, separators=(",", ":"))
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def log(msg):
    sys.stderr.write(f"ws_peer.py: {msg}\n")
    sys.stderr.flush()


def b64e(data):
    return base64.b64encode(data).decode("ascii")


def b64d(s):
    return base64.b64decode(s or "")


def headers_obj(headers):
    """websockets Headers -> {lowercase name: value}, repeated values joined by ', '."""
    out = {}
    for k, v in headers.raw_items():
        k = k.lower()
        out[k] = f"{out[k]}, {v}" if k in out else v
    return out


def headers_list(h):
    if h is None:
        return []
    if isinstance(h, dict):
        return [(str(k), str(v)) for k, v in h.items()]
    return [(str(k), str(v)) for k, v in h]


class CmdError(Exception):
    def __init__(self, message, **extra):
        super().__init__(message)
        self.extra = extra


class Conn:
    def __init__(self, cid, role, opts, server=None):
        self.id = cid
        self.role = role
        self.server = server
        self.ws = None
        self.state = "connecting"
        self.collect = bool(opts.get("collect", False))
        self.quiet = bool(opts.get("quiet", False))
        self.digest = bool(opts.get("digest", False))
        self.msgs = []
        self.received = 0
        self.paused = False
        self.resume_ev = asyncio.Event()
        self.resume_ev.set()
        self.close_code = None
        self.close_reason = None
        self.closed_ev = asyncio.Event()

    def attach(self, ws):
        self.ws = ws
        self.state = "open"
        early = getattr(ws, "peer_early", [])
        ws.peer_conn = self
        for kind, data in early:
            self.on_control(kind, data)

    def on_control(self, kind, data):
        if not self.quiet:
            emit(kind, id=self.id, data_b64=b64e(data))

    def on_message(self, msg):
        self.received += 1
        if self.collect:
            self.msgs.append(msg)
            return
        if isinstance(msg, str):
            if self.digest:
                raw = msg.encode()
                emit("text", id=self.id, len=len(raw), sha256=hashlib.sha256(raw).hexdigest())
            else:
                emit("text", id=self.id, data=msg)
        else:
            if self.digest:
                emit("binary", id=self.id, len=len(msg), sha256=hashlib.sha256(msg).hexdigest())
            else:
                emit("binary", id=self.id, data_b64=b64e(msg))

    def mark_closed(self):
        if self.state == "closed":
            return
        self.state = "closed"
        ws = self.ws
        self.close_code = ws.close_code if ws is not None and ws.close_code is not None else 1006
        self.close_reason = (ws.close_reason if ws is not None else None) or ""
        self.closed_ev.set()
        if not self.quiet:
            emit("close", id=self.id, code=self.close_code, reason=self.close_reason)
        if self.server is not None:
            self.server.conns.pop(self.id, None)

    def status(self):
        st = {
            "role": self.role,
            "state": self.state,
            "paused": self.paused,
            "collected": len(self.msgs),
            "received": self.received,
            "close_code": self.close_code,
            "close_reason": self.close_reason,
        }
        if self.server is not None:
            st["server"] = self.server.name
        return st


class _Hook:
    """Reports received Ping/Pong frames (websockets handles them internally).

    Overrides Connection.process_event, an internal hook of websockets' asyncio
    implementation (stable from 14 to 17); connect()/serve() take the subclass
    through their documented `create_connection` argument.
    """

    def process_event(self, event):
        if isinstance(event, Frame) and event.opcode in (Opcode.PING, Opcode.PONG):
            kind = "ping" if event.opcode is Opcode.PING else "pong"
            conn = getattr(self, "peer_conn", None)
            if conn is None:
                self.__dict__.setdefault("peer_early", []).append((kind, bytes(event.data)))
            else:
                conn.on_control(kind, bytes(event.data))
        super().process_event(event)


class HookedClient(_Hook, ClientConnection):
    pass


class HookedServer(_Hook, ServerConnection):
    pass


async def reader(conn, echo=False):
    ws = conn.ws
    try:
        while True:
            if conn.paused:
                await conn.resume_ev.wait()
            msg = await ws.recv()
            conn.on_message(msg)
            if echo:
                await ws.send(msg)
    except ConnectionClosed:
        pass
    except Exception as e:  # pragma: no cover - diagnostics
        emit("error", id=conn.id, message=f"reader: {type(e).__name__}: {e}")
    finally:
        try:
            await asyncio.wait_for(ws.wait_closed(), 15)
        except Exception:
            ws.transport.abort()
        conn.mark_closed()


def client_ssl(cmd):
    if not cmd["url"].startswith("wss:"):
        return None
    ctx = ssl.create_default_context(cafile=cmd.get("ca_file"))
    if cmd.get("insecure"):
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def get_conn(cid, want_open=True):
    conn = conns.get(cid)
    if conn is None:
        raise CmdError(f"unknown connection id {cid!r}")
    if want_open and conn.state != "open":
        raise CmdError(f"connection {cid!r} is {conn.state}")
    return conn


def select(cmd, want_open=True):
    """Connections addressed by a command: `id`, or every id starting with `prefix`."""
    if cmd.get("id") is not None:
        return [get_conn(cmd["id"], want_open)]
    prefix = cmd.get("prefix")
    if prefix is None:
        raise CmdError("command needs `id` or `prefix`")
    out = [c for k, c in sorted(conns.items()) if k.startswith(prefix)]
    if want_open:
        out = [c for c in out if c.state == "open"]
    return out


async def open_client(cid, url, cmd):
    old = conns.get(cid)
    if old is not None and old.state != "closed":
        raise CmdError(f"connection id {cid!r} already in use", id=cid)
    conn = Conn(cid, "client", cmd)
    conns[cid] = conn
    max_size = cmd.get("max_size", DEFAULT_MAX_SIZE)
    kwargs = dict(
        additional_headers=headers_list(cmd.get("headers")),
        subprotocols=cmd.get("subprotocols") or None,
        max_size=max_size,
        compression="deflate" if cmd.get("compression") else None,
        open_timeout=float(cmd.get("open_timeout", 10)),
        ping_interval=None,
        close_timeout=5,
        proxy=None,
        create_connection=HookedClient,
    )
    if cmd.get("origin") is not None:
        kwargs["origin"] = cmd["origin"]
    if "user_agent" in cmd:
        kwargs["user_agent_header"] = cmd["user_agent"]
    ctx = client_ssl({**cmd, "url": url})
    if ctx is not None:
        kwargs["ssl"] = ctx
    try:
        ws = await connect(url, **kwargs)
    except InvalidStatus as e:
        conn.state = "closed"
        del conns[cid]
        resp = e.response
        raise CmdError(
            f"handshake refused: HTTP {resp.status_code}",
            id=cid,
            status=resp.status_code,
            headers=headers_obj(resp.headers),
            body=(resp.body or b"").decode("utf-8", "replace"),
        )
    except (Exception, asyncio.TimeoutError) as e:
        conn.state = "closed"
        del conns[cid]
        raise CmdError(f"{type(e).__name__}: {e}", id=cid)
    conn.attach(ws)
    if not conn.quiet:
        h = headers_obj(ws.response.headers)
        emit(
            "open",
            id=cid,
            subprotocol=ws.subprotocol,
            extensions=h.get("sec-websocket-extensions"),
            headers=h,
        )
    asyncio.get_running_loop().create_task(reader(conn))
    return conn


async def cmd_connect(cmd):
    await open_client(cmd["id"], cmd["url"], cmd)


async def cmd_crowd(cmd):
    prefix, count, url = cmd["prefix"], int(cmd["count"]), cmd["url"]
    opts = {**cmd, "collect": cmd.get("collect", True), "quiet": cmd.get("quiet", True)}
    sem = asyncio.Semaphore(int(cmd.get("concurrency", 64)))
    errors = []
    t0 = time.monotonic()

    async def one(i):
        async with sem:
            try:
                await open_client(f"{prefix}{i}", url, opts)
                return True
            except CmdError as e:
                errors.append({"id": f"{prefix}{i}", "message": str(e), "status": e.extra.get("status")})
                return False

    results = await asyncio.gather(*(one(i) for i in range(count)))
    opened = sum(results)
    errors.sort(key=lambda e: e["id"])
    emit(
        "crowd_open",
        prefix=prefix,
        count=count,
        opened=opened,
        failed=count - opened,
        errors=errors[:10],
        ms=round((time.monotonic() - t0) * 1000),
    )


def payload(cmd):
    if "text" in cmd:
        return cmd["text"]
    if "data_b64" in cmd:
        return b64d(cmd["data_b64"])
    if "fragments" in cmd:
        return [str(f) for f in cmd["fragments"]]
    if "fragments_b64" in cmd:
        return [b64d(f) for f in cmd["fragments_b64"]]
    raise CmdError("send needs one of text, data_b64, fragments, fragments_b64")


async def cmd_send(cmd):
    msg = payload(cmd)
    for conn in select(cmd):
        for _ in range(int(cmd.get("count", 1))):
            try:
                await conn.ws.send(iter(msg) if isinstance(msg, list) else msg)
            except ConnectionClosed as e:
                raise CmdError(f"send on {conn.id}: connection closed ({e})", id=conn.id)


async def cmd_ping(cmd):
    conn = get_conn(cmd["id"])
    try:
        await conn.ws.ping(b64d(cmd.get("data_b64")))
    except ConnectionClosed as e:
        raise CmdError(f"ping: connection closed ({e})", id=conn.id)


async def cmd_pong(cmd):
    conn = get_conn(cmd["id"])
    try:
        await conn.ws.pong(b64d(cmd.get("data_b64")))
    except ConnectionClosed as e:
        raise CmdError(f"pong: connection closed ({e})", id=conn.id)


async def _close(ws, code, reason):
    try:
        if code is None:
            # Close frame without a status code (peer sees 1005): websockets'
            # public close() always sends a code, so use the protocol object.
            async with ws.send_context():
                ws.protocol.send_close()
        else:
            await ws.close(int(code), reason)
    except ConnectionClosed:
        pass
    except Exception as e:
        emit("error", id=getattr(getattr(ws, "peer_conn", None), "id", None), message=f"close: {e}")


async def cmd_close(cmd):
    code = cmd.get("code", 1000)
    reason = cmd.get("reason", "")
    loop = asyncio.get_running_loop()
    for conn in select(cmd):
        loop.create_task(_close(conn.ws, code, reason))
    await asyncio.sleep(0)


async def cmd_abort(cmd):
    for conn in select(cmd):
        conn.ws.transport.abort()


async def cmd_pause(cmd):
    for conn in select(cmd):
        conn.paused = True
        conn.resume_ev.clear()
        conn.ws.transport.pause_reading()


async def cmd_resume(cmd):
    for conn in select(cmd, want_open=False):
        if conn.state == "open":
            conn.ws.transport.resume_reading()
        conn.paused = False
        conn.resume_ev.set()


def msg_json(cid, m, digest):
    if isinstance(m, str):
        if digest:
            raw = m.encode()
            return {"id": cid, "type": "text", "len": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
        return {"id": cid, "type": "text", "data": m}
    if digest:
        return {"id": cid, "type": "binary", "len": len(m), "sha256": hashlib.sha256(m).hexdigest()}
    return {"id": cid, "type": "binary", "data_b64": b64e(m)}


async def cmd_drain(cmd):
    def matching():
        if cmd.get("id") is not None:
            c = conns.get(cmd["id"])
            return [c] if c is not None else []
        p = cmd.get("prefix", "")
        return [c for k, c in sorted(conns.items()) if k.startswith(p)]

    wait_count = cmd.get("wait_count")
    wait_total = cmd.get("wait_total")
    deadline = time.monotonic() + float(cmd.get("timeout", 10))
    timed_out = False
    satisfied = True
    while wait_count is not None or wait_total is not None:
        cs = matching()
        ok_count = wait_count is None or (cs and all(len(c.msgs) >= wait_count for c in cs))
        ok_total = wait_total is None or sum(len(c.msgs) for c in cs) >= wait_total
        if ok_count and ok_total:
            break
        if wait_count is not None and any(c.state == "closed" and len(c.msgs) < wait_count for c in cs):
            satisfied = False  # a closed connection can never reach wait_count
            break
        if wait_total is not None and cs and all(c.state == "closed" for c in cs):
            satisfied = False
            break
        if time.monotonic() >= deadline:
            timed_out = True
            satisfied = False
            break
        await asyncio.sleep(0.005)
    cs = matching()
    per_conn, closed, messages = {}, {}, []
    text = binary = nbytes = 0
    for c in cs:
        per_conn[c.id] = len(c.msgs)
        if c.state == "closed":
            closed[c.id] = c.close_code
        for m in c.msgs:
            if isinstance(m, str):
                text += 1
                nbytes += len(m.encode())
            else:
                binary += 1
                nbytes += len(m)
            if cmd.get("list"):
                messages.append(msg_json(c.id, m, cmd.get("digest", False)))
        if not cmd.get("keep"):
            c.msgs = []
    counts = list(per_conn.values())
    ev = dict(
        conns=len(cs),
        total=text + binary,
        text=text,
        binary=binary,
        bytes=nbytes,
        min=min(counts) if counts else 0,
        max=max(counts) if counts else 0,
        per_conn=per_conn,
        closed=closed,
        satisfied=satisfied,
        timed_out=timed_out,
    )
    if cmd.get("id") is not None:
        ev["id"] = cmd["id"]
    if cmd.get("prefix") is not None:
        ev["prefix"] = cmd["prefix"]
    if cmd.get("list"):
        ev["messages"] = messages
    emit("drained", **ev)


async def cmd_status(cmd):
    if cmd.get("id") is not None:
        cs = [conns[cmd["id"]]] if cmd["id"] in conns else []
    else:
        p = cmd.get("prefix", "")
        cs = [c for k, c in sorted(conns.items()) if k.startswith(p)]
    emit("status", conns={c.id: c.status() for c in cs})


class Srv:
    def __init__(self, name, cmd):
        self.name = name
        self.cmd = cmd
        self.mode = cmd.get("mode", "echo")
        self.conns = {}
        self.n = 0
        self.server = None


async def cmd_listen(cmd):
    global server_counter
    server_counter += 1
    name = cmd.get("name") or f"s{server_counter}"
    if name in servers:
        raise CmdError(f"server {name!r} already exists")
    mode = cmd.get("mode", "echo")
    if mode not in ("echo", "broadcast_from_publish", "manual"):
        raise CmdError(f"unknown mode {mode!r}")
    srv = Srv(name, cmd)
    supported = cmd.get("subprotocols") or []
    reject_status = cmd.get("reject_status")
    extra_headers = headers_list(cmd.get("response_headers"))

    def select_subprotocol(connection, offered):
        for p in supported:
            if p in offered:
                return p
        return None

    def process_request(connection, request):
        if reject_status is None:
            return None
        h = headers_obj(request.headers)
        emit(
            "rejected",
            server=name,
            path=request.path,
            origin=h.get("origin"),
            headers=h,
            status=int(reject_status),
        )
        return connection.respond(int(reject_status), cmd.get("reject_body", "rejected by ws_peer\n"))

    def process_response(connection, request, response):
        for k, v in extra_headers:
            response.headers[k] = v
        return None

    async def handler(ws):
        srv.n += 1
        cid = f"{name}.{srv.n}"
        conn = Conn(cid, "server", cmd, server=srv)
        conns[cid] = conn
        srv.conns[cid] = conn
        conn.attach(ws)
        if not conn.quiet:
            h = headers_obj(ws.request.headers)
            ra = ws.remote_address
            emit(
                "accepted",
                id=cid,
                server=name,
                path=ws.request.path,
                origin=h.get("origin"),
                headers=h,
                subprotocol=ws.subprotocol,
                remote=f"{ra[0]}:{ra[1]}" if ra else None,
            )
        await reader(conn, echo=(srv.mode == "echo"))

    ctx = None
    tls = cmd.get("tls")
    if tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(tls["cert_file"], tls["key_file"])
    try:
        srv.server = await serve(
            handler,
            cmd.get("host", "127.0.0.1"),
            int(cmd.get("port", 0)),
            ssl=ctx,
            select_subprotocol=select_subprotocol,
            compression="deflate" if cmd.get("compression") else None,
            process_request=process_request,
            process_response=process_response,
            server_header="ringcast-ws-peer-python",
            ping_interval=None,
            close_timeout=5,
            max_size=cmd.get("max_size", DEFAULT_MAX_SIZE),
            create_connection=HookedServer,
        )
    except OSError as e:
        raise CmdError(f"listen: {e}")
    servers[name] = srv
    port = srv.server.sockets[0].getsockname()[1]
    emit("listening", server=name, port=port)


def get_server(cmd):
    name = cmd.get("server")
    if name is None and len(servers) == 1:
        name = next(iter(servers))
    srv = servers.get(name)
    if srv is None:
        raise CmdError(f"unknown server {name!r}")
    return srv


async def cmd_publish(cmd):
    srv = get_server(cmd)
    msg = payload(cmd)
    if isinstance(msg, list):
        raise CmdError("publish takes text or data_b64")
    targets = [c.ws for c in srv.conns.values() if c.state == "open"]
    for _ in range(int(cmd.get("count", 1))):
        broadcast(targets, msg)
    return {"conns": len(targets)}


async def cmd_stop(cmd):
    srv = get_server(cmd)
    servers.pop(srv.name, None)
    srv.server.close()  # closes connections with 1001
    await srv.server.wait_closed()


async def cmd_sync(cmd):
    pass


async def cmd_exit(cmd):
    await shutdown()
    os._exit(0)


HANDLERS = {
    "connect": cmd_connect,
    "crowd": cmd_crowd,
    "send": cmd_send,
    "ping": cmd_ping,
    "pong": cmd_pong,
    "close": cmd_close,
    "abort": cmd_abort,
    "pause": cmd_pause,
    "resume": cmd_resume,
    "drain": cmd_drain,
    "status": cmd_status,
    "listen": cmd_listen,
    "publish": cmd_publish,
    "stop": cmd_stop,
    "sync": cmd_sync,
    "exit": cmd_exit,
}


def seq_key(cmd):
    if cmd.get("id") is not None:
        return "id:" + str(cmd["id"])
    if cmd.get("prefix") is not None:
        return "prefix:" + str(cmd["prefix"])
    if cmd.get("server") is not None:
        return "server:" + str(cmd["server"])
    return "global"


async def run_cmd(prev, cmd):
    if prev is not None:
        try:
            await prev
        except BaseException:
            pass
    name = cmd.get("cmd")
    req = cmd.get("req")
    try:
        h = HANDLERS.get(name)
        if h is None:
            raise CmdError(f"unknown command {name!r}")
        extra = await h(cmd) or {}
        if req is not None:
            emit("ok", req=req, cmd=name, **extra)
    except CmdError as e:
        ev = {"cmd": name, "message": str(e), **e.extra}
        if cmd.get("id") is not None:
            ev.setdefault("id", cmd["id"])
        if req is not None:
            ev["req"] = req
        emit("error", **ev)
    except Exception as e:
        log(traceback.format_exc())
        ev = {"cmd": name, "message": f"{type(e).__name__}: {e}"}
        if cmd.get("id") is not None:
            ev["id"] = cmd["id"]
        if req is not None:
            ev["req"] = req
        emit("error", **ev)


async def shutdown():
    for srv in list(servers.values()):
        srv.server.close(close_connections=False)
    for c in list(conns.values()):
        if c.ws is not None and c.state == "open":
            c.ws.transport.abort()
    sys.stdout.flush()


async def main():
    loop = asyncio.get_running_loop()
    reader_ = asyncio.StreamReader(limit=1 << 30)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader_), sys.stdin)
    emit(
        "ready",
        peer=PEER_NAME,
        library="websockets",
        version=websockets.__version__,
        pid=os.getpid(),
        capabilities={"ping_events": True, "pong_events": True, "empty_close": True, "pause": True},
    )
    while True:
        line = await reader_.readline()
        if not line:
            break
        line = line.strip()
        if not line:
            continue
        try:
            cmd = json.loads(line)
            if not isinstance(cmd, dict):
                raise ValueError("command must be a JSON object")
        except ValueError as e:
            emit("error", message=f"bad command line: {e}")
            continue
        key = seq_key(cmd)
        task = loop.create_task(run_cmd(chains.get(key), cmd))
        chains[key] = task
    await shutdown()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    os._exit(0)
