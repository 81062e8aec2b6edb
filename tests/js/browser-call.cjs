// A real browser places a WebRTC call: Debian's chromium (headless, fake microphone) driven by
// playwright-core loads a page served here on loopback, whose JsSIP registers over WebSocket
// through the sbc and calls <target>. It prints what the page saw, one line per event:
//   EVENT registered | EVENT confirmed | EVENT media | EVENT ended <local|remote> <cause>
//   | EVENT failed <cause> | EVENT timeout
// and, last, `RESULT <json>`: the events, the RTCPeerConnection's stats when media was seen
// (inbound/outbound RTP packets and bytes, codec, DTLS state, the selected ICE pair) and
// anything the page threw.
// Usage: node browser-call.cjs <ws-url> <domain> <user> <target> <browser|backend>
//   browser: the page hangs up once media flowed; backend: it waits for the backend's BYE.
// Exits 0 when the call was confirmed, media flowed both ways and it ended as asked.
'use strict';
const fs = require('fs');
const http = require('http');
const path = require('path');
const { chromium } = require('playwright-core');

const [url, domain, user, target, hangup] = process.argv.slice(2);
if (!url || !domain || !user || !target || !['browser', 'backend'].includes(hangup)) {
  console.error('usage: node browser-call.cjs <ws-url> <domain> <user> <target> <browser|backend>');
  process.exit(2);
}

// Packets each way the page waits for before it calls media flowing (50 ms of 20 ms
// packets would do; one second leaves no doubt that it is a stream, not a stray packet).
const MIN_PACKETS = 50;

// JsSIP 3.13 ships CommonJS only (no dist bundle), so the page gets a small bundle made here:
// every module reachable from jssip/lib/JsSIP.js, wrapped in a function, with a require()
// that maps resolved paths. Bare names resolve to their npm packages (the `events` package,
// not Node's built-in), using a package's `browser` entry when it names one file.
function bundle() {
  const modules = new Map();
  const resolve = (name, from) => {
    if (name.startsWith('.')) return require.resolve(path.resolve(path.dirname(from), name));
    const pkgDir = path.dirname(require.resolve(`${name}/package.json`, { paths: [path.dirname(from)] }));
    const pkg = JSON.parse(fs.readFileSync(path.join(pkgDir, 'package.json'), 'utf8'));
    const entry = typeof pkg.browser === 'string' ? pkg.browser : (pkg.main || 'index.js');
    return require.resolve(path.resolve(pkgDir, entry));
  };
  const add = (file) => {
    if (modules.has(file)) return;
    const src = fs.readFileSync(file, 'utf8');
    const deps = {};
    modules.set(file, { src, deps });
    if (file.endsWith('.json')) return;
    for (const m of src.matchAll(/require\(\s*['"]([^'"]+)['"]\s*\)/g)) {
      deps[m[1]] = resolve(m[1], file);
      add(deps[m[1]]);
    }
  };
  const entry = require.resolve('jssip');
  add(entry);
  const parts = [];
  for (const [file, { src, deps }] of modules) {
    const body = file.endsWith('.json') ? `module.exports = ${src};` : src;
    parts.push(`${JSON.stringify(file)}: [${JSON.stringify(deps)}, function (require, module, exports) {\n${body}\n}]`);
  }
  return `(function () {
const defs = {${parts.join(',\n')}};
const cache = {};
function load(file) {
  if (cache[file]) return cache[file].exports;
  const module = { exports: {} };
  cache[file] = module;
  const [deps, fn] = defs[file];
  fn((name) => load(deps[name]), module, module.exports);
  return module.exports;
}
window.JsSIP = load(${JSON.stringify(entry)});
})();`;
}

// The page: register, call, poll getStats until RTP flowed both ways, then hang up or wait.
// It keeps only loopback ICE candidates in its SDP: this machine's other addresses are no
// place for test traffic, and rtpengine listens on loopback only.
const page = `<!doctype html><meta charset="utf-8"><title>kubesbc browser call</title>
<script src="/jssip.js"></script>
<script>
const cfg = ${JSON.stringify({ url, domain, user, target, hangup, MIN_PACKETS })};
const report = (name, detail) => window.kubesbcReport(name, detail === undefined ? null : detail);
async function stats(pc) {
  const r = await pc.getStats();
  const out = { inbound: { packets: 0, bytes: 0 }, outbound: { packets: 0, bytes: 0 } };
  let pairId = null;
  r.forEach((s) => {
    if (s.type === 'inbound-rtp' && s.kind === 'audio') {
      out.inbound.packets += s.packetsReceived || 0;
      out.inbound.bytes += s.bytesReceived || 0;
      if (s.codecId && r.get(s.codecId)) out.inboundCodec = r.get(s.codecId).mimeType;
    }
    if (s.type === 'outbound-rtp' && s.kind === 'audio') {
      out.outbound.packets += s.packetsSent || 0;
      out.outbound.bytes += s.bytesSent || 0;
      if (s.codecId && r.get(s.codecId)) out.outboundCodec = r.get(s.codecId).mimeType;
    }
    if (s.type === 'transport') {
      out.dtlsState = s.dtlsState;
      out.srtpCipher = s.srtpCipher;
      pairId = s.selectedCandidatePairId;
    }
  });
  const pair = pairId && r.get(pairId);
  if (pair) {
    const l = r.get(pair.localCandidateId), m = r.get(pair.remoteCandidateId);
    out.pair = { local: l && l.address + ':' + l.port, remote: m && m.address + ':' + m.port, state: pair.state };
  }
  return out;
}
function loopbackOnly(sdp) {
  return sdp.split('\\r\\n').filter((l) => !l.startsWith('a=candidate:') || / 127\\.\\d+\\.\\d+\\.\\d+ /.test(l)).join('\\r\\n');
}
const ua = new JsSIP.UA({
  sockets: [new JsSIP.WebSocketInterface(cfg.url)],
  uri: 'sip:' + cfg.user + '@' + cfg.domain,
  registrar_server: 'sip:' + cfg.domain,
  register: true,
  register_expires: 600,
  session_timers: false,
});
ua.on('registrationFailed', (e) => report('failed', 'registration ' + e.cause));
ua.on('registered', () => {
  report('registered');
  const session = ua.call(cfg.target, {
    mediaConstraints: { audio: true, video: false },
    pcConfig: { iceServers: [] },
  });
  session.on('sdp', (e) => { if (e.originator === 'local') e.sdp = loopbackOnly(e.sdp); });
  session.on('failed', (e) => report('failed', e.cause));
  session.on('ended', (e) => report('ended', e.originator + ' ' + e.cause));
  session.on('confirmed', async () => {
    report('confirmed');
    const deadline = Date.now() + 10000;
    let last = null;
    while (Date.now() < deadline) {
      last = await stats(session.connection);
      if (last.inbound.packets >= cfg.MIN_PACKETS && last.outbound.packets >= cfg.MIN_PACKETS) {
        report('media', last);
        if (cfg.hangup === 'browser') session.terminate();
        return;
      }
      await new Promise((ok) => setTimeout(ok, 250));
    }
    report('no-media', last);
    session.terminate();
  });
});
ua.start();
</script>`;

const events = [];
let mediaStats = null;
let noMediaStats = null;
const pageErrors = [];
let finished = false;
let resolveEnd;
const ended = new Promise((ok) => { resolveEnd = ok; });
const event = (line) => { events.push(line); console.log(`EVENT ${line}`); };

async function main() {
  const js = bundle();
  const server = http.createServer((req, res) => {
    if (req.url === '/') {
      res.writeHead(200, { 'content-type': 'text/html' });
      res.end(page);
    } else if (req.url === '/jssip.js') {
      res.writeHead(200, { 'content-type': 'text/javascript' });
      res.end(js);
    } else {
      res.writeHead(404);
      res.end();
    }
  });
  await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
  const origin = `http://127.0.0.1:${server.address().port}`;
  // Playwright gives the browser a fresh profile directory of its own (removed on close).
  // The background-networking flags keep chromium from dialling out (refused here);
  // loopback is not a WebRTC network unless allowed; mDNS names instead of host addresses
  // would hide them from rtpengine.
  const browser = await chromium.launch({
    executablePath: process.env.KUBESBC_CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream',
      '--allow-loopback-in-peer-connection',
      '--disable-features=WebRtcHideLocalIpsWithMdns',
    ],
  });
  try {
    const context = await browser.newContext();
    await context.grantPermissions(['microphone'], { origin });
    const tab = await context.newPage();
    tab.on('pageerror', (e) => { pageErrors.push(String(e)); console.log(`PAGE-ERROR ${e}`); });
    tab.on('console', (m) => { if (process.env.BROWSER_DEBUG) console.log(`CONSOLE ${m.text()}`); });
    await tab.exposeFunction('kubesbcReport', (name, detail) => {
      if (name === 'media') mediaStats = detail;
      if (name === 'no-media') noMediaStats = detail;
      if (name === 'ended' || name === 'failed') {
        event(`${name} ${detail}`);
        resolveEnd();
      } else {
        event(name);
      }
      if (name === 'media' || name === 'no-media') console.log(`STATS ${JSON.stringify(detail)}`);
    });
    await tab.goto(origin + '/');
    await Promise.race([ended, new Promise((ok) => setTimeout(ok, 30000))]);
    if (!events.some((e) => e.startsWith('ended') || e.startsWith('failed'))) event('timeout');
    // Let the BYE's 200 (or the ACK) leave before the browser goes away.
    await new Promise((ok) => setTimeout(ok, 300));
  } finally {
    await browser.close();
    server.close();
  }
  const wantEnd = hangup === 'browser' ? 'ended local' : 'ended remote';
  const ok = events.includes('confirmed') && mediaStats !== null
    && events.some((e) => e.startsWith(wantEnd)) && pageErrors.length === 0;
  finished = true;
  console.log(`RESULT ${JSON.stringify({ ok, events, stats: mediaStats || noMediaStats, pageErrors })}`);
  process.exit(ok ? 0 : 1);
}

setTimeout(() => {
  if (!finished) {
    event('timeout');
    console.log(`RESULT ${JSON.stringify({ ok: false, events, stats: mediaStats || noMediaStats, pageErrors })}`);
    process.exit(1);
  }
}, 45000);
main().catch((e) => {
  console.log(`ERROR ${e && e.stack || e}`);
  console.log(`RESULT ${JSON.stringify({ ok: false, events, stats: mediaStats || noMediaStats, pageErrors: pageErrors.concat(String(e)) })}`);
  process.exit(1);
});
