// sip.js in Node (the `ws` package stands in for the browser's WebSocket): registers through
// the sbc, sends one MESSAGE, places a call (a fixed SDP stands in for WebRTC, media is not
// exercised here) and hangs it up, printing what a user of the library sees:
//   EVENT registered | EVENT message-ok <status> | EVENT call-established
//   | EVENT bye-ok <status> | EVENT call-ended (terminated and BYE answered) | EVENT failed <what>
// With `remote-bye` as a fourth argument it does not hang up: it waits for the far end's
//   BYE (EVENT bye-in) and prints EVENT call-ended when the session is over.
// Usage: node sipjs-client.mjs <ws-url> <domain> <user> [remote-bye]
// Exits 0 when every step succeeded, 1 otherwise (and after 25 s whatever happened).
import WebSocket from 'ws';
import { UserAgent, Registerer, RegistererState, Messager, Inviter, SessionState } from 'sip.js';

globalThis.WebSocket = WebSocket;
const [url, domain, user, mode] = process.argv.slice(2);
const remoteBye = mode === 'remote-bye';
if (!url || !domain || !user) {
  console.error('usage: node sipjs-client.mjs <ws-url> <domain> <user>');
  process.exit(2);
}
const event = (line) => console.log(`EVENT ${line}`);
const fail = (what) => { event(`failed ${what}`); setTimeout(() => process.exit(1), 100); };
setTimeout(() => { event('timeout'); process.exit(1); }, 25000);

// A session description handler without WebRTC: offers a fixed audio SDP, accepts any answer.
class FixedSdp {
  constructor() { this.remote = undefined; }
  close() {}
  getDescription() {
    const body = 'v=0\r\no=sipjs 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n' +
      't=0 0\r\nm=audio 9 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n';
    return Promise.resolve({ body, contentType: 'application/sdp' });
  }
  hasDescription(contentType) { return contentType === 'application/sdp'; }
  setDescription(sdp) { this.remote = sdp; return Promise.resolve(); }
  sendDtmf() { return false; }
  rollbackDescription() { return Promise.resolve(); }
}

const ua = new UserAgent({
  uri: UserAgent.makeURI(`sip:${user}@${domain}`),
  transportOptions: { server: url, traceSip: !!process.env.SIPJS_TRACE },
  sessionDescriptionHandlerFactory: () => new FixedSdp(),
  logLevel: process.env.SIPJS_TRACE ? 'debug' : 'error',
});

// The call has ended for the user once the session is terminated and its BYE answered.
let terminated = false;
let byeAnswered = false;
function ended() {
  if (!terminated || !byeAnswered) return;
  event('call-ended');
  setTimeout(() => process.exit(0), 100);
}

async function call() {
  const target = UserAgent.makeURI(`sip:uas@${domain}`);
  const inviter = new Inviter(ua, target);
  inviter.delegate = {
    onBye: (bye) => { event('bye-in'); byeAnswered = true; bye.accept(); ended(); },
  };
  inviter.stateChange.addListener(async (state) => {
    if (state === SessionState.Established) {
      event('call-established');
      if (remoteBye) return;
      await inviter.bye({
        requestDelegate: {
          onAccept: (r) => { event(`bye-ok ${r.message.statusCode}`); byeAnswered = true; ended(); },
          onReject: (r) => fail(`bye ${r.message.statusCode}`),
        },
      });
    } else if (state === SessionState.Terminated) {
      terminated = true;
      ended();
    }
  });
  await inviter.invite({
    requestDelegate: { onReject: (r) => fail(`invite ${r.message.statusCode}`) },
  });
}

async function main() {
  await ua.start();
  event('connected');
  const registerer = new Registerer(ua, { expires: 600 });
  let registered = false;
  registerer.stateChange.addListener(async (state) => {
    if (state !== RegistererState.Registered || registered) return;
    registered = true;
    event('registered');
    const messager = new Messager(ua, UserAgent.makeURI(`sip:echo@${domain}`), `hello from ${user}`);
    await messager.message({
      requestDelegate: {
        onAccept: async (r) => { event(`message-ok ${r.message.statusCode}`); await call(); },
        onReject: (r) => fail(`message ${r.message.statusCode}`),
      },
    });
  });
  await registerer.register({
    requestDelegate: { onReject: (r) => fail(`register ${r.message.statusCode}`) },
  });
}
main().catch((e) => fail(`exception ${e && e.message}`));
