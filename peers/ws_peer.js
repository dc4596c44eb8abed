#!/usr/bin/env node
// Scriptable WebSocket peer on Node `ws` (npm).
//
// Commands are JSON lines on stdin, events are JSON lines on stdout (one object per
// line). The protocol is shared with ws_peer.py and documented in peers/README.md.
// Diagnostics go to stderr. Exits on stdin EOF or {"cmd":"exit"}.
//
// Run after `npm ci` in peers/ (peers/setup.sh does it):  node peers/ws_peer.js
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const http = require('http');
const https = require('https');
const readline = require('readline');
const WebSocket = require('ws');
const { WebSocketServer } = WebSocket;

const DEFAULT_MAX_SIZE = 64 * 1024 * 1024;
const WS_VERSION = require('ws/package.json').version;

const conns = new Map(); // id -> Conn
const servers = new Map(); // name -> Srv
const chains = new Map(); // sequencing key -> promise
let serverCounter = 0;

function emit(event, fields) {
  // stdout to a pipe is synchronous on Linux, so lines are never reordered or lost.
  process.stdout.write(JSON.stringify({ event, ...fields }) + '\n');
}

function log(msg) {
  process.stderr.write(`ws_peer.js: ${msg}\n`);
}

const b64e = (buf) => Buffer.from(buf).toString('base64');
const b64d = (s) => Buffer.from(s || '', 'base64');
const sha256 = (buf) => crypto.createHash('sha256').update(buf).digest('hex');

class CmdError extends Error {
  constructor(message, extra) {
    super(message);
    this.extra = extra || {};
  }
}

function headersObj(h) {
  const out = {};
  for (const [k, v] of Object.entries(h || {})) out[k.toLowerCase()] = Array.isArray(v) ? v.join(', ') : String(v);
  return out;
}

function headersPairs(h) {
  if (h == null) return [];
  if (Array.isArray(h)) return h.map(([k, v]) => [String(k), String(v)]);
  return Object.entries(h).map(([k, v]) => [String(k), String(v)]);
}

function headersForRequest(h) {
  const out = {};
  for (const [k, v] of headersPairs(h)) {
    if (k in out) out[k] = [].concat(out[k], v);
    else out[k] = v;
  }
  return out;
}

class Conn {
  constructor(id, role, opts, server) {
    this.id = id;
    this.role = role;
    this.server = server || null;
    this.ws = null;
    this.state = 'connecting';
    this.collect = !!opts.collect;
    this.quiet = !!opts.quiet;
    this.digest = !!opts.digest;
    this.msgs = [];
    this.received = 0;
    this.paused = false;
    this.closeCode = null;
    this.closeReason = null;
  }

  attach(ws, echo) {
    this.ws = ws;
    this.state = 'open';
    ws.on('message', (data, isBinary) => {
      const msg = isBinary ? { binary: true, buf: toBuf(data) } : { binary: false, text: toBuf(data).toString('utf8') };
      this.onMessage(msg);
      if (echo && ws.readyState === WebSocket.OPEN) ws.send(isBinary ? msg.buf : msg.text, { binary: isBinary });
    });
    ws.on('ping', (data) => { if (!this.quiet) emit('ping', { id: this.id, data_b64: b64e(data) }); });
    ws.on('pong', (data) => { if (!this.quiet) emit('pong', { id: this.id, data_b64: b64e(data) }); });
    ws.on('error', (err) => { emit('error', { id: this.id, message: `${err.code || 'error'}: ${err.message}` }); });
    ws.on('close', (code, reason) => this.markClosed(code, reason.toString('utf8')));
  }

  onMessage(msg) {
    this.received += 1;
    if (this.collect) {
      this.msgs.push(msg);
      return;
    }
    if (msg.binary) {
      if (this.digest) emit('binary', { id: this.id, len: msg.buf.length, sha256: sha256(msg.buf) });
      else emit('binary', { id: this.id, data_b64: b64e(msg.buf) });
    } else if (this.digest) {
      const raw = Buffer.from(msg.text, 'utf8');
      emit('text', { id: this.id, len: raw.length, sha256: sha256(raw) });
    } else {
      emit('text', { id: this.id, data: msg.text });
    }
  }

  markClosed(code, reason) {
    if (this.state === 'closed') return;
    this.state = 'closed';
    this.closeCode = code;
    this.closeReason = reason || '';
    if (!this.quiet) emit('close', { id: this.id, code: this.closeCode, reason: this.closeReason });
    if (this.server) this.server.conns.delete(this.id);
  }

  status() {
    const st = {
      role: this.role,
      state: this.state,
      paused: this.paused,
      collected: this.msgs.length,
      received: this.received,
      close_code: this.closeCode,
      close_reason: this.closeReason,
    };
    if (this.server) st.server = this.server.name;
    return st;
  }
}

function toBuf(data) {
  if (Buffer.isBuffer(data)) return data;
  if (Array.isArray(data)) return Buffer.concat(data);
  return Buffer.from(data);
}

function getConn(id, wantOpen = true) {
  const c = conns.get(id);
  if (!c) throw new CmdError(`unknown connection id ${JSON.stringify(id)}`);
  if (wantOpen && c.state !== 'open') throw new CmdError(`connection ${JSON.stringify(id)} is ${c.state}`);
  return c;
}

function sortedConns(prefix) {
  return [...conns.keys()].sort().filter((k) => k.startsWith(prefix)).map((k) => conns.get(k));
}

function select(cmd, wantOpen = true) {
  if (cmd.id != null) return [getConn(cmd.id, wantOpen)];
  if (cmd.prefix == null) throw new CmdError('command needs `id` or `prefix`');
  const out = sortedConns(cmd.prefix);
  return wantOpen ? out.filter((c) => c.state === 'open') : out;
}

function openClient(id, url, cmd) {
  const old = conns.get(id);
  if (old && old.state !== 'closed') return Promise.reject(new CmdError(`connection id ${JSON.stringify(id)} already in use`, { id }));
  const conn = new Conn(id, 'client', cmd);
  conns.set(id, conn);
  const maxSize = cmd.max_size === undefined ? DEFAULT_MAX_SIZE : cmd.max_size === null ? 0 : cmd.max_size;
  const opts = {
    headers: headersForRequest(cmd.headers),
    maxPayload: maxSize,
    perMessageDeflate: !!cmd.compression,
    handshakeTimeout: Math.round((cmd.open_timeout ?? 10) * 1000),
    followRedirects: false,
  };
  if (cmd.origin != null) opts.origin = cmd.origin;
  if (cmd.user_agent != null) opts.headers['User-Agent'] = cmd.user_agent;
  if (cmd.ca_file) opts.ca = fs.readFileSync(cmd.ca_file);
  if (cmd.insecure) opts.rejectUnauthorized = false;
  return new Promise((resolve, reject) => {
    let settled = false;
    let respHeaders = {};
    const fail = (err) => {
      if (settled) return;
      settled = true;
      conn.state = 'closed';
      conns.delete(id);
      reject(err);
    };
    let ws;
    try {
      ws = new WebSocket(url, cmd.subprotocols && cmd.subprotocols.length ? cmd.subprotocols : undefined, opts);
    } catch (e) {
      fail(new CmdError(`${e.name}: ${e.message}`, { id }));
      return;
    }
    ws.on('upgrade', (res) => { respHeaders = headersObj(res.headers); });
    ws.on('unexpected-response', (req, res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      const done = () => {
        fail(new CmdError(`handshake refused: HTTP ${res.statusCode}`, {
          id, status: res.statusCode, headers: headersObj(res.headers), body: Buffer.concat(chunks).toString('utf8'),
        }));
        req.destroy();
      };
      res.on('end', done);
      res.on('error', done);
      setTimeout(done, 2000).unref();
    });
    ws.on('error', (err) => fail(new CmdError(`${err.code || 'Error'}: ${err.message}`, { id })));
    ws.on('close', (code) => fail(new CmdError(`closed during handshake (${code})`, { id })));
    ws.once('open', () => {
      if (settled) return;
      settled = true;
      ws.removeAllListeners('error');
      ws.removeAllListeners('close');
      conn.attach(ws, false);
      if (!conn.quiet) {
        emit('open', {
          id, subprotocol: ws.protocol || null, extensions: respHeaders['sec-websocket-extensions'] ?? null, headers: respHeaders,
        });
      }
      resolve(conn);
    });
  });
}

async function cmdConnect(cmd) {
  await openClient(cmd.id, cmd.url, cmd);
}

async function cmdCrowd(cmd) {
  const { prefix, url } = cmd;
  const count = cmd.count | 0;
  const opts = { ...cmd, collect: cmd.collect ?? true, quiet: cmd.quiet ?? true };
  const limit = cmd.concurrency ?? 64;
  const errors = [];
  const t0 = Date.now();
  let next = 0;
  let opened = 0;
  const worker = async () => {
    while (next < count) {
      const i = next++;
      try {
        await openClient(`${prefix}${i}`, url, opts);
        opened += 1;
      } catch (e) {
        errors.push({ id: `${prefix}${i}`, message: e.message, status: (e.extra && e.extra.status) ?? null });
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, count) }, worker));
  errors.sort((a, b) => (a.id < b.id ? -1 : 1));
  emit('crowd_open', { prefix, count, opened, failed: count - opened, errors: errors.slice(0, 10), ms: Date.now() - t0 });
}

function payload(cmd) {
  if ('text' in cmd) return { binary: false, parts: [String(cmd.text)], frag: false };
  if ('data_b64' in cmd) return { binary: true, parts: [b64d(cmd.data_b64)], frag: false };
  if ('fragments' in cmd) return { binary: false, parts: cmd.fragments.map(String), frag: true };
  if ('fragments_b64' in cmd) return { binary: true, parts: cmd.fragments_b64.map(b64d), frag: true };
  throw new CmdError('send needs one of text, data_b64, fragments, fragments_b64');
}

function wsSend(ws, data, opts) {
  return new Promise((resolve, reject) => {
    ws.send(data, opts, (err) => (err ? reject(err) : resolve()));
  });
}

async function cmdSend(cmd) {
  const p = payload(cmd);
  const n = cmd.count ?? 1;
  for (const c of select(cmd)) {
    for (let k = 0; k < n; k++) {
      try {
        if (!p.frag) {
          await wsSend(c.ws, p.parts[0], { binary: p.binary });
        } else {
          for (let i = 0; i < p.parts.length; i++) {
            await wsSend(c.ws, p.parts[i], { binary: p.binary, fin: i === p.parts.length - 1 });
          }
        }
      } catch (e) {
        throw new CmdError(`send on ${c.id}: ${e.message}`, { id: c.id });
      }
    }
  }
}

async function cmdPing(cmd) {
  const c = getConn(cmd.id);
  await new Promise((resolve, reject) => c.ws.ping(b64d(cmd.data_b64), undefined, (e) => (e ? reject(new CmdError(`ping: ${e.message}`)) : resolve())));
}

async function cmdPong(cmd) {
  const c = getConn(cmd.id);
  await new Promise((resolve, reject) => c.ws.pong(b64d(cmd.data_b64), undefined, (e) => (e ? reject(new CmdError(`pong: ${e.message}`)) : resolve())));
}

async function cmdClose(cmd) {
  const code = cmd.code === undefined ? 1000 : cmd.code;
  for (const c of select(cmd)) {
    if (code === null) c.ws.close();
    else c.ws.close(code, cmd.reason ?? '');
  }
}

async function cmdAbort(cmd) {
  for (const c of select(cmd)) c.ws.terminate();
}

async function cmdPause(cmd) {
  for (const c of select(cmd)) {
    c.paused = true;
    c.ws.pause();
  }
}

async function cmdResume(cmd) {
  for (const c of select(cmd, false)) {
    c.paused = false;
    if (c.state === 'open') c.ws.resume();
  }
}

function msgJson(id, m, digest) {
  if (m.binary) {
    return digest ? { id, type: 'binary', len: m.buf.length, sha256: sha256(m.buf) } : { id, type: 'binary', data_b64: b64e(m.buf) };
  }
  if (digest) {
    const raw = Buffer.from(m.text, 'utf8');
    return { id, type: 'text', len: raw.length, sha256: sha256(raw) };
  }
  return { id, type: 'text', data: m.text };
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function cmdDrain(cmd) {
  const matching = () => {
    if (cmd.id != null) return conns.has(cmd.id) ? [conns.get(cmd.id)] : [];
    return sortedConns(cmd.prefix ?? '');
  };
  const waitCount = cmd.wait_count ?? null;
  const waitTotal = cmd.wait_total ?? null;
  const deadline = Date.now() + (cmd.timeout ?? 10) * 1000;
  let timedOut = false;
  let satisfied = true;
  while (waitCount !== null || waitTotal !== null) {
    const cs = matching();
    const okCount = waitCount === null || (cs.length > 0 && cs.every((c) => c.msgs.length >= waitCount));
    const okTotal = waitTotal === null || cs.reduce((a, c) => a + c.msgs.length, 0) >= waitTotal;
    if (okCount && okTotal) break;
    if (waitCount !== null && cs.some((c) => c.state === 'closed' && c.msgs.length < waitCount)) { satisfied = false; break; }
    if (waitTotal !== null && cs.length > 0 && cs.every((c) => c.state === 'closed')) { satisfied = false; break; }
    if (Date.now() >= deadline) { timedOut = true; satisfied = false; break; }
    await sleep(5);
  }
  const cs = matching();
  const perConn = {};
  const closed = {};
  const messages = [];
  let text = 0;
  let binary = 0;
  let bytes = 0;
  for (const c of cs) {
    perConn[c.id] = c.msgs.length;
    if (c.state === 'closed') closed[c.id] = c.closeCode;
    for (const m of c.msgs) {
      if (m.binary) { binary += 1; bytes += m.buf.length; } else { text += 1; bytes += Buffer.byteLength(m.text, 'utf8'); }
      if (cmd.list) messages.push(msgJson(c.id, m, !!cmd.digest));
    }
    if (!cmd.keep) c.msgs = [];
  }
  const counts = Object.values(perConn);
  const ev = {
    conns: cs.length,
    total: text + binary,
    text,
    binary,
    bytes,
    min: counts.length ? Math.min(...counts) : 0,
    max: counts.length ? Math.max(...counts) : 0,
    per_conn: perConn,
    closed,
    satisfied,
    timed_out: timedOut,
  };
  if (cmd.id != null) ev.id = cmd.id;
  if (cmd.prefix != null) ev.prefix = cmd.prefix;
  if (cmd.list) ev.messages = messages;
  emit('drained', ev);
}

async function cmdStatus(cmd) {
  const cs = cmd.id != null ? (conns.has(cmd.id) ? [conns.get(cmd.id)] : []) : sortedConns(cmd.prefix ?? '');
  const out = {};
  for (const c of cs) out[c.id] = c.status();
  emit('status', { conns: out });
}

class Srv {
  constructor(name, cmd) {
    this.name = name;
    this.cmd = cmd;
    this.mode = cmd.mode ?? 'echo';
    this.conns = new Map();
    this.n = 0;
    this.http = null;
    this.wss = null;
  }
}

async function cmdListen(cmd) {
  serverCounter += 1;
  const name = cmd.name || `s${serverCounter}`;
  if (servers.has(name)) throw new CmdError(`server ${JSON.stringify(name)} already exists`);
  const mode = cmd.mode ?? 'echo';
  if (!['echo', 'broadcast_from_publish', 'manual'].includes(mode)) throw new CmdError(`unknown mode ${JSON.stringify(mode)}`);
  const srv = new Srv(name, cmd);
  const supported = cmd.subprotocols || [];
  const extraHeaders = headersPairs(cmd.response_headers);
  const maxSize = cmd.max_size === undefined ? DEFAULT_MAX_SIZE : cmd.max_size === null ? 0 : cmd.max_size;
  const wss = new WebSocketServer({
    noServer: true,
    maxPayload: maxSize,
    perMessageDeflate: !!cmd.compression,
    clientTracking: false,
    handleProtocols: (offered) => supported.find((p) => offered.has(p)) ?? false,
  });
  wss.on('headers', (headers) => {
    headers.push('Server: ringcast-ws-peer-node');
    for (const [k, v] of extraHeaders) headers.push(`${k}: ${v}`);
  });
  wss.on('error', (e) => emit('error', { server: name, message: `server: ${e.message}` }));
  const onRequest = (req, res) => {
    res.writeHead(426, { 'Content-Type': 'text/plain', Upgrade: 'websocket' });
    res.end('WebSocket upgrade required\n');
  };
  const httpServer = cmd.tls
    ? https.createServer({ cert: fs.readFileSync(cmd.tls.cert_file), key: fs.readFileSync(cmd.tls.key_file) }, onRequest)
    : http.createServer(onRequest);
  httpServer.on('upgrade', (req, socket, head) => {
    socket.on('error', () => {});
    const h = headersObj(req.headers);
    if (cmd.reject_status != null) {
      const status = cmd.reject_status | 0;
      const body = Buffer.from(cmd.reject_body ?? 'rejected by ws_peer\n', 'utf8');
      emit('rejected', { server: name, path: req.url, origin: h.origin ?? null, headers: h, status });
      socket.write(`HTTP/1.1 ${status} ${http.STATUS_CODES[status] || 'Status'}\r\n`
        + `Server: ringcast-ws-peer-node\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ${body.length}\r\n`
        + 'Connection: close\r\n\r\n');
      socket.end(body);
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws) => {
      srv.n += 1;
      const id = `${name}.${srv.n}`;
      const conn = new Conn(id, 'server', cmd, srv);
      conns.set(id, conn);
      srv.conns.set(id, conn);
      if (!conn.quiet) {
        emit('accepted', {
          id,
          server: name,
          path: req.url,
          origin: h.origin ?? null,
          headers: h,
          subprotocol: ws.protocol || null,
          remote: `${req.socket.remoteAddress}:${req.socket.remotePort}`,
        });
      }
      conn.attach(ws, srv.mode === 'echo');
    });
  });
  await new Promise((resolve, reject) => {
    httpServer.once('error', (e) => reject(new CmdError(`listen: ${e.message}`)));
    httpServer.listen(cmd.port ?? 0, cmd.host ?? '127.0.0.1', resolve);
  });
  httpServer.on('error', (e) => emit('error', { server: name, message: `server: ${e.message}` }));
  srv.http = httpServer;
  srv.wss = wss;
  servers.set(name, srv);
  emit('listening', { server: name, port: httpServer.address().port });
}

function getServer(cmd) {
  let name = cmd.server;
  if (name == null && servers.size === 1) name = [...servers.keys()][0];
  const srv = servers.get(name);
  if (!srv) throw new CmdError(`unknown server ${JSON.stringify(name)}`);
  return srv;
}

async function cmdPublish(cmd) {
  const srv = getServer(cmd);
  const p = payload(cmd);
  if (p.frag) throw new CmdError('publish takes text or data_b64');
  const targets = [...srv.conns.values()].filter((c) => c.state === 'open' && c.ws.readyState === WebSocket.OPEN);
  const n = cmd.count ?? 1;
  for (let k = 0; k < n; k++) {
    for (const c of targets) c.ws.send(p.parts[0], { binary: p.binary });
  }
  return { conns: targets.length };
}

async function cmdStop(cmd) {
  const srv = getServer(cmd);
  servers.delete(srv.name);
  await new Promise((resolve) => {
    srv.http.close(() => resolve());
    for (const c of srv.conns.values()) if (c.state === 'open') c.ws.close(1001, '');
  });
}

async function cmdSync() {}

async function cmdExit() {
  shutdown();
}

const HANDLERS = {
  connect: cmdConnect,
  crowd: cmdCrowd,
  send: cmdSend,
  ping: cmdPing,
  pong: cmdPong,
  close: cmdClose,
  abort: cmdAbort,
  pause: cmdPause,
  resume: cmdResume,
  drain: cmdDrain,
  status: cmdStatus,
  listen: cmdListen,
  publish: cmdPublish,
  stop: cmdStop,
  sync: cmdSync,
  exit: cmdExit,
};

function seqKey(cmd) {
  if (cmd.id != null) return `id:${cmd.id}`;
  if (cmd.prefix != null) return `prefix:${cmd.prefix}`;
  if (cmd.server != null) return `server:${cmd.server}`;
  return 'global';
}

async function runCmd(cmd) {
  const name = cmd.cmd;
  const req = cmd.req;
  try {
    const h = HANDLERS[name];
    if (!h) throw new CmdError(`unknown command ${JSON.stringify(name)}`);
    const extra = (await h(cmd)) || {};
    if (req != null) emit('ok', { req, cmd: name, ...extra });
  } catch (e) {
    if (!(e instanceof CmdError)) log(e && e.stack ? e.stack : String(e));
    const ev = { cmd: name, message: e instanceof CmdError ? e.message : `${e.name}: ${e.message}`, ...(e.extra || {}) };
    if (cmd.id != null && ev.id == null) ev.id = cmd.id;
    if (req != null) ev.req = req;
    emit('error', ev);
  }
}

function shutdown() {
  for (const srv of servers.values()) srv.http.close();
  for (const c of conns.values()) if (c.ws && c.state === 'open') c.ws.terminate();
  process.exit(0);
}

function main() {
  emit('ready', {
    peer: 'node',
    library: 'ws',
    version: WS_VERSION,
    pid: process.pid,
    capabilities: { ping_events: true, pong_events: true, empty_close: true, pause: true },
  });
  const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  rl.on('line', (line) => {
    line = line.trim();
    if (!line) return;
    let cmd;
    try {
      cmd = JSON.parse(line);
      if (cmd === null || typeof cmd !== 'object' || Array.isArray(cmd)) throw new Error('command must be a JSON object');
    } catch (e) {
      emit('error', { message: `bad command line: ${e.message}` });
      return;
    }
    const key = seqKey(cmd);
    const prev = chains.get(key) || Promise.resolve();
    const next = prev.then(() => runCmd(cmd));
    chains.set(key, next);
  });
  rl.on('close', shutdown);
}

main();
