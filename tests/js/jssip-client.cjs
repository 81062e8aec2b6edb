// JsSIP in Node (the `ws` package stands in for the browser's WebSocket): registers through
// the sbc, sends one MESSAGE, and prints what a user of the library sees, one line per event:
//   EVENT registered | EVENT registration-failed <cause> | EVENT message-ok <status>
//   | EVENT message-failed <cause>
// Usage: node jssip-client.cjs <ws-url> <domain> <user>
// Exits 0 when every step succeeded, 1 otherwise (and after 20 s whatever happened).
'use strict';
const WebSocket = require('ws');
// JsSIP's WebSocketInterface calls `new WebSocket(url, 'sip')`, as in a browser.
globalThis.WebSocket = WebSocket;
const JsSIP = require('jssip');

const [url, domain, user] = process.argv.slice(2);
if (!url || !domain || !user) {
  console.error('usage: node jssip-client.cjs <ws-url> <domain> <user>');
  process.exit(2);
}
const event = (line) => console.log(`EVENT ${line}`);
const done = (code) => {
  setTimeout(() => process.exit(code), 100);
};
setTimeout(() => { event('timeout'); process.exit(1); }, 20000);

if (process.env.JSSIP_DEBUG) JsSIP.debug.enable('JsSIP:*');
const socket = new JsSIP.WebSocketInterface(url);
const ua = new JsSIP.UA({
  sockets: [socket],
  uri: `sip:${user}@${domain}`,
  registrar_server: `sip:${domain}`,
  register: true,
  register_expires: 600,
  connection_recovery_min_interval: 30,
  session_timers: false,
});
ua.on('connected', () => event('connected'));
ua.on('disconnected', () => event('disconnected'));
ua.on('registrationFailed', (e) => { event(`registration-failed ${e.cause}`); done(1); });
ua.on('registered', () => {
  event('registered');
  ua.sendMessage(`sip:echo@${domain}`, `hello from ${user}`, {
    eventHandlers: {
      succeeded: (e) => { event(`message-ok ${e.response.status_code}`); done(0); },
      failed: (e) => { event(`message-failed ${e.cause}`); done(1); },
    },
  });
});
ua.start();
