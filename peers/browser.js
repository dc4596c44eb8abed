#!/usr/bin/env node
// Headless Chromium page runner (playwright-core + Debian's /usr/bin/chromium).
//
//   node peers/browser.js (--url URL | --html-file FILE | --html STRING) [options]
//     --timeout-ms N                 wait at most N ms for window.__done (default 15000)
//     --ignore-certificate-errors    trust any TLS certificate (wss:// with a test CA)
//     --chromium-arg ARG             extra Chromium flag (repeatable)
//     --done-when EXPR               JS expression polled instead of `window.__done === true`
//     --result EXPR                  JS expression whose value is reported (default window.__result)
//     --screenshot FILE              save a full-page PNG of the page once it is done (or timed out)
//     --viewport WxH                 window size in CSS pixels (default 1280x720)
//
// HTML given by --html/--html-file is served from a one-page HTTP server on
// http://127.0.0.1:<random port>/ (any path), so the page has a real http origin
// (the WebSocket Origin header is then "http://127.0.0.1:<port>").
// The page signals completion by setting `window.__done = true`; its `window.__result`
// is printed as ONE JSON line on stdout:
//   {"ok":true,"result":<window.__result>,"console":["log: ..."],"page_errors":[...],"url":"...","ms":N}
// On timeout or failure: {"ok":false,"error":"...","result":<__result so far or null>,...}, exit 1.
// Browser binary: $RINGCAST_CHROMIUM or /usr/bin/chromium. Never downloads a browser.
'use strict';

process.env.PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD = '1';
const fs = require('fs');
const http = require('http');
const os = require('os');
const path = require('path');

function usage(msg) {
  process.stderr.write(`browser.js: ${msg}\nusage: node browser.js (--url URL | --html-file FILE | --html STRING) [--timeout-ms N] [--ignore-certificate-errors] [--chromium-arg ARG]... [--done-when EXPR] [--result EXPR] [--screenshot FILE] [--viewport WxH]\n`);
  process.exit(2);
}

function parseArgs(argv) {
  const o = { timeoutMs: 15000, ignoreCert: false, extra: [], doneWhen: 'window.__done === true',
              result: 'window.__result === undefined ? null : window.__result', screenshot: null, viewport: null };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => {
      if (i + 1 >= argv.length) usage(`${a} needs a value`);
      return argv[++i];
    };
    if (a === '--url') o.url = val();
    else if (a === '--html') o.html = val();
    else if (a === '--html-file') o.html = fs.readFileSync(val(), 'utf8');
    else if (a === '--timeout-ms') o.timeoutMs = Number(val());
    else if (a === '--ignore-certificate-errors') o.ignoreCert = true;
    else if (a === '--chromium-arg') o.extra.push(val());
    else if (a === '--done-when') o.doneWhen = val();
    else if (a === '--result') o.result = val();
    else if (a === '--screenshot') o.screenshot = val();
    else if (a === '--viewport') {
      const m = /^(\d+)x(\d+)$/.exec(val());
      if (!m) usage('--viewport takes WIDTHxHEIGHT, e.g. 1400x1000');
      o.viewport = { width: Number(m[1]), height: Number(m[2]) };
    }
    else usage(`unknown argument ${a}`);
  }
  if ((o.url == null) === (o.html == null)) usage('give exactly one of --url, --html, --html-file');
  if (!(o.timeoutMs > 0)) usage('--timeout-ms must be positive');
  return o;
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  const t0 = Date.now();
  const out = { ok: false, result: null, console: [], page_errors: [], url: o.url || null, ms: 0 };
  const finish = (code) => {
    out.ms = Date.now() - t0;
    process.stdout.write(JSON.stringify(out) + '\n', () => process.exit(code));
  };
  // Hard bound: even if Chromium hangs, answer within timeout + 20 s.
  const hard = setTimeout(() => { out.error = 'browser.js hard timeout'; finish(1); }, o.timeoutMs + 20000);
  hard.unref();

  const executablePath = process.env.RINGCAST_CHROMIUM || '/usr/bin/chromium';
  if (!fs.existsSync(executablePath)) {
    out.error = `chromium not found at ${executablePath}: apt-get install -y chromium (see peers/setup.sh)`;
    return finish(1);
  }
  let chromium;
  try {
    ({ chromium } = require('playwright-core'));
  } catch (e) {
    out.error = `playwright-core not installed: run peers/setup.sh (${e.message})`;
    return finish(1);
  }

  let server = null;
  if (o.html != null) {
    server = http.createServer((req, res) => {
      if (req.url === '/favicon.ico') { res.writeHead(204); res.end(); return; }
      res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-store' });
      res.end(o.html);
    });
    await new Promise((r) => server.listen(0, '127.0.0.1', r));
    out.url = `http://127.0.0.1:${server.address().port}/`;
  }

  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ringcast-chromium-'));
  const args = [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ...(o.ignoreCert ? ['--ignore-certificate-errors'] : []),
    ...o.extra,
  ];
  let context = null;
  let code = 1;
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath,
      headless: true,
      args,
      ignoreHTTPSErrors: o.ignoreCert,
      timeout: 30000,
      ...(o.viewport ? { viewport: o.viewport } : {}),
    });
    const page = context.pages()[0] || (await context.newPage());
    page.on('console', (m) => out.console.push(`${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => out.page_errors.push(String(e && e.stack ? e.stack : e)));
    await page.goto(out.url, { waitUntil: 'load', timeout: o.timeoutMs });
    try {
      await page.waitForFunction(o.doneWhen, null, { timeout: Math.max(1, o.timeoutMs - (Date.now() - t0)), polling: 20 });
      out.ok = true;
      code = 0;
    } catch (e) {
      out.error = e.name === 'TimeoutError'
        ? `timeout: ${o.doneWhen} was not true within ${o.timeoutMs} ms`
        : `${e.name}: ${e.message}`;
    }
    out.result = await page.evaluate(o.result);
    if (o.screenshot) {
      await page.screenshot({ path: o.screenshot, fullPage: true });
      out.screenshot = o.screenshot;
    }
  } catch (e) {
    out.error = `${e.name}: ${e.message}`;
  } finally {
    if (context) await context.close().catch(() => {});
    if (server) server.close();
    fs.rmSync(userDataDir, { recursive: true, force: true });
  }
  finish(code);
}

main().catch((e) => {
  process.stdout.write(JSON.stringify({ ok: false, error: String(e && e.stack ? e.stack : e), result: null }) + '\n');
  process.exit(1);
});
