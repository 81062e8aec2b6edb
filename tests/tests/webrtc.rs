//! Browser SIP stacks we did not write, JsSIP and sip.js (in Node, with the `ws` package as
//! their WebSocket), register over `ws://` and `wss://` through the sbc to a UDP registrar
//! (sipp), send a MESSAGE, and (sip.js) place and hang up a call to a sipp UAS. A fixed SDP
//! stands in for WebRTC here: media anchoring is the media tests' job.

use std::net::SocketAddr;
use std::time::Duration;

use kubesbc_e2e::node::{self, ClientRun, run_client};
use kubesbc_e2e::pki::{self, Pki, s};
use kubesbc_e2e::{
    DispatcherDest, MessageLog, Proxy, ProxyOptions, Sipp, SippTransport, TempDir, e2e_tools,
    free_port, loopback, sbc_only, start_backend,
};

const DOMAIN: &str = "example.com";

/// The scene: the sipp backend (registrar, MESSAGE sink, UAS) behind an sbc with ws and wss
/// listeners.
struct Scene {
    pki: Pki,
    backend: Sipp,
    proxy: Proxy,
    ws: SocketAddr,
    wss: SocketAddr,
}

fn tools() -> bool {
    e2e_tools() && sbc_only() && pki::tools() && node::tools()
}

fn scene(dir: &TempDir) -> Scene {
    let pki = Pki::new(dir);
    let backend = start_backend(dir, "backend", "ws_backend.xml", SippTransport::Udp);
    let (ws_port, wss_port) = (free_port(), free_port());
    let dest = DispatcherDest::local(backend.port(), false);
    let proxy = Proxy::start(
        dir,
        &ProxyOptions {
            destinations: vec![dest.clone()],
            extra_sbc_args: vec![
                "--listen".into(),
                format!("ws:127.0.0.1:{ws_port}"),
                "--listen".into(),
                format!("wss:127.0.0.1:{wss_port}"),
                "--tls-cert".into(),
                s(&pki.server_cert),
                "--tls-key".into(),
                s(&pki.server_key),
            ],
            ..ProxyOptions::default()
        },
    );
    proxy.wait_destination(&dest.uri, true, Duration::from_secs(10));
    Scene {
        pki,
        backend,
        proxy,
        ws: loopback(ws_port),
        wss: loopback(wss_port),
    }
}

impl Scene {
    fn url(&self, secure: bool) -> String {
        if secure {
            format!("wss://{}", self.wss)
        } else {
            format!("ws://{}", self.ws)
        }
    }

    fn run(&self, dir: &TempDir, script: &str, user: &str, secure: bool) -> ClientRun {
        let url = self.url(secure);
        let ca = secure.then_some(self.pki.ca.as_path());
        run_client(
            dir,
            user,
            script,
            &[&url, DOMAIN, user],
            ca,
            Duration::from_secs(40),
        )
    }
}

/// The backend got `method` from `user` relayed by the sbc: the sbc's Via on top, the
/// client's WebSocket Via below it with the source address and port the sbc saw (`received`
/// and `rport`, forced: neither JsSIP nor sip.js asks for it).
fn assert_relayed(log: &MessageLog, method: &str, user: &str, secure: bool) {
    let want = if secure {
        "SIP/2.0/WSS "
    } else {
        "SIP/2.0/WS "
    };
    let got: Vec<_> = log
        .received_requests(method)
        .filter(|m| {
            m.header_values("From")
                .iter()
                .any(|f| f.contains(&format!("sip:{user}@{DOMAIN}")))
        })
        .collect();
    assert!(
        !got.is_empty(),
        "the backend got no {method} from {user}: {:?}",
        log.messages
            .iter()
            .map(|m| &m.start_line)
            .collect::<Vec<_>>()
    );
    for m in got {
        let vias = m.header_values("Via");
        assert!(
            vias.first()
                .is_some_and(|v| v.starts_with("SIP/2.0/UDP 127.0.0.1:")),
            "the sbc's Via is not on top: {vias:?}"
        );
        let client = vias
            .iter()
            .find(|v| v.starts_with(want))
            .unwrap_or_else(|| panic!("no {want} Via of the client: {vias:?}"));
        assert!(
            client.contains(";received=127.0.0.1") && client.contains(";rport="),
            "the client's Via lacks the source the sbc saw: {client}"
        );
    }
}

fn jssip(secure: bool, label: &str) {
    if !tools() {
        return;
    }
    let dir = TempDir::new(label);
    let sc = scene(&dir);
    let user = if secure { "alice-wss" } else { "alice-ws" };
    let run = sc.run(&dir, "jssip-client.cjs", user, secure);
    run.assert_events(&["connected", "registered", "message-ok 200"]);
    let log = sc.backend.messages();
    assert_relayed(&log, "REGISTER", user, secure);
    assert_relayed(&log, "MESSAGE", user, secure);
    drop(sc.proxy);
}

/// JsSIP over `ws://`: registered, and its MESSAGE answered 200 by the backend.
#[test]
fn jssip_registers_and_sends_a_message_over_ws() {
    jssip(false, "jssip-ws");
}

/// JsSIP over `wss://` (the test CA trusted through NODE_EXTRA_CA_CERTS): registered, and
/// its MESSAGE answered 200.
#[test]
fn jssip_registers_and_sends_a_message_over_wss() {
    jssip(true, "jssip-wss");
}

fn sipjs(secure: bool, label: &str) {
    if !tools() {
        return;
    }
    let dir = TempDir::new(label);
    let sc = scene(&dir);
    let user = if secure { "bob-wss" } else { "bob-ws" };
    let run = sc.run(&dir, "sipjs-client.mjs", user, secure);
    run.assert_events(&[
        "connected",
        "registered",
        "message-ok 200",
        "call-established",
        "bye-ok 200",
        "call-ended",
    ]);
    let log = sc.backend.messages();
    for method in ["REGISTER", "MESSAGE", "INVITE", "BYE"] {
        assert_relayed(&log, method, user, secure);
    }
    assert!(
        log.received_requests("ACK").next().is_some(),
        "the ACK of the 200 did not reach the UAS"
    );
    drop(sc.proxy);
}

/// sip.js over `ws://`: registered, MESSAGE answered 200, a call established (INVITE, 200,
/// ACK) and ended by its BYE (200), every request relayed to the UDP backend.
#[test]
fn sipjs_registers_messages_and_calls_over_ws() {
    sipjs(false, "sipjs-ws");
}

/// sip.js over `wss://`: the same as over ws.
#[test]
fn sipjs_registers_messages_and_calls_over_wss() {
    sipjs(true, "sipjs-wss");
}
