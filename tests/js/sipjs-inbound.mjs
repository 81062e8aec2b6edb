// sip.js in Node (the `ws` package stands in for the browser's WebSocket): registers through
// the sbc and waits for what the backend sends it, printing what a user of the library sees:
//   EVENT connected | EVENT registered | EVENT message-in <body> | EVENT failed <what>
// It answers the first incoming MESSAGE 200 and then exits 0, closing its connection.
// Usage: node sipjs-inbound.mjs <ws-url> <domain> <user>
// Exits 1 after 25 s without a MESSAGE.
import WebSocket from 'ws';
import { UserAgent, Registerer, RegistererState } from 'sip.js';

globalThis.WebSocket = WebSocket;
const [url, domain, user] = process.argv.slice(2);
if (!url || !domain || !user) {
  console.error('usage: node sipjs-inbound.mjs <ws-url> <domain> <user>');
  process.exit(2);
}
const event = (line) => console.log(`EVENT ${line}`);
const fail = (what) => { event(`failed ${what}`); setTimeout(() => process.exit(1), 100); };
setTimeout(() => { event('timeout'); process.exit(1); }, 25000);

const ua = new UserAgent({
  uri: UserAgent.makeURI(`sip:${user}@${domain}`),
  transportOptions: { server: url, traceSip: !!process.env.SIPJS_TRACE },
  logLevel: process.env.SIPJS_TRACE ? 'debug' : 'error',
  delegate: {
    onMessage: (message) => {
      message.accept();
      event(`message-in ${message.request.body}`);
      setTimeout(() => process.exit(0), 200);
    },
  },
});

async function main() {
  await ua.start();
  event('connected');
  const registerer = new Registerer(ua, { expires: 600 });
  registerer.stateChange.addListener((state) => {
    if (state === RegistererState.Registered) event('registered');
  });
  await registerer.register({
    requestDelegate: { onReject: (r) => fail(`register ${r.message.statusCode}`) },
  });
}
main().catch((e) => fail(`exception ${e && e.message}`));
