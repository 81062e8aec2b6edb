//! Browser SIP stacks we did not write, JsSIP and sip.js (in Node, with the `ws` package as
//! their WebSocket), register over `ws://` and `wss://` through the sbc to a UDP registrar
//! (sipp), send a MESSAGE, and (sip.js) place and hang up a call to a sipp UAS. A fixed SDP
//! stands in for WebRTC here: media anchoring is the media tests' job.

use std::net::SocketAddr;
use std::time::Duration;

use kubesbc_e2e::node::{self, ClientRun, run_client, spawn_client};
use kubesbc_e2e::pki::{self, Pki, s};
use kubesbc_e2e::sip::{RequestBuilder, SipClient};
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
    scene_with(dir, "ws_backend.xml")
}

fn scene_with(dir: &TempDir, backend_scenario: &str) -> Scene {
    let pki = Pki::new(dir);
    let backend = start_backend(dir, "backend", backend_scenario, SippTransport::Udp);
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

/// The backend's side of a flow: the `Path` the sbc put on `user`'s REGISTER and the
/// Contact it registered.
fn registered_flow(log: &MessageLog, user: &str) -> (String, String) {
    let reg = log
        .received_requests("REGISTER")
        .find(|m| {
            m.header_values("From")
                .iter()
                .any(|f| f.contains(&format!("sip:{user}@")))
        })
        .unwrap_or_else(|| panic!("the backend got no REGISTER from {user}"));
    let path = reg.header_values("Path");
    assert_eq!(path.len(), 1, "one Path on the REGISTER: {path:?}");
    assert!(
        reg.header_values("Supported")
            .iter()
            .any(|v| v.split(',').any(|t| t.trim() == "path")),
        "no Supported: path"
    );
    let contact = reg.header_values("Contact");
    let contact = contact.first().expect("a Contact");
    let uri = contact
        .split_once('<')
        .and_then(|(_, r)| r.split_once('>'))
        .map_or(*contact, |(u, _)| u);
    (path[0].to_owned(), uri.to_owned())
}

/// A MESSAGE from the backend's side (a UDP socket of the test, standing in for the PBX) to
/// a registered contact, routed by its Path as a registrar with Path support (RFC 3327) does.
fn message_via_path(sbc: SocketAddr, path: &str, contact: &str, body: &str) -> Option<u16> {
    let mut pbx = SipClient::udp(sbc);
    let mut req = RequestBuilder::new("MESSAGE", contact, &pbx)
        .set("Route", path)
        .set("Content-Type", "text/plain");
    req.body = body.to_owned();
    pbx.request(&req.build(), Duration::from_secs(5))
        .map(|r| r.code)
}

fn sipjs_path(secure: bool, label: &str) {
    if !tools() {
        return;
    }
    let dir = TempDir::new(label);
    let sc = scene(&dir);
    let user = if secure { "carol-wss" } else { "carol-ws" };
    let ca = secure.then_some(sc.pki.ca.as_path());
    let client = spawn_client(
        &dir,
        user,
        "sipjs-inbound.mjs",
        &[&sc.url(secure), DOMAIN, user],
        ca,
    );
    client.wait_event("registered", Duration::from_secs(20));
    let (path, contact) = registered_flow(&sc.backend.messages(), user);
    assert!(path.contains(";lr") && path.contains(";ob"), "{path}");
    let sbc = sc.proxy.sip_addr();
    assert_eq!(
        message_via_path(sbc, &path, &contact, "hello browser"),
        Some(200),
        "the MESSAGE over the Path was not answered by sip.js"
    );
    let run = client.wait(Duration::from_secs(10));
    run.assert_events(&["registered", "message-in hello browser"]);
    let started = std::time::Instant::now();
    assert_eq!(
        message_via_path(sbc, &path, &contact, "anyone there?"),
        Some(430),
        "after the client left"
    );
    assert!(started.elapsed() < Duration::from_secs(2), "430 at once");
}

/// sip.js registers over `ws://`: the REGISTER reaches the backend with a Path naming its
/// connection (`Supported: path`); a MESSAGE the backend sends to the registered contact
/// through that Path reaches sip.js over its WebSocket (200 back at the backend); once the
/// client has gone, the same MESSAGE gets 430 Flow Failed at once, not a timeout.
#[test]
fn a_backend_reaches_a_sipjs_client_over_its_flow_and_gets_430_once_it_left() {
    sipjs_path(false, "sipjs-path");
}

/// The same over `wss://`.
#[test]
fn a_backend_reaches_a_sipjs_client_over_its_wss_flow_and_gets_430_once_it_left() {
    sipjs_path(true, "sipjs-path-wss");
}

/// sip.js calls a sipp UAS over `ws://` and the UAS hangs up: the INVITE reached the UAS
/// with two Record-Route entries (the sbc's UDP side on top, its WebSocket side with the flow
/// token below), the UAS's BYE followed them back over the client's WebSocket, and sip.js
/// saw the far end's BYE and the call end (the UAS got its 200).
#[test]
fn a_sipjs_call_hung_up_by_the_uas_ends_at_the_client() {
    if !tools() {
        return;
    }
    let dir = TempDir::new("sipjs-uas-bye");
    let sc = scene_with(&dir, "ws_uas_bye.xml");
    let user = "dave-ws";
    let url = sc.url(false);
    let run = run_client(
        &dir,
        user,
        "sipjs-client.mjs",
        &[&url, DOMAIN, user, "remote-bye"],
        None,
        Duration::from_secs(40),
    );
    run.assert_events(&["registered", "call-established", "bye-in", "call-ended"]);
    let log = sc.backend.messages();
    let invite = log
        .received_requests("INVITE")
        .next()
        .expect("the INVITE reached the UAS");
    let rr = invite.header_values("Record-Route");
    let rr: Vec<&str> = rr
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    assert_eq!(rr.len(), 2, "two Record-Route entries: {rr:?}");
    assert!(
        rr[0].starts_with("<sip:127.0.0.1:") && !rr[0].contains("transport="),
        "{rr:?}"
    );
    assert!(
        rr[1].starts_with("<sip:kf") && rr[1].contains(";transport=ws;lr>"),
        "{rr:?}"
    );
    assert!(
        log.messages.iter().any(|m| m.received
            && m.start_line.starts_with("SIP/2.0 200")
            && m.header_values("CSeq").iter().any(|c| c.contains("BYE"))),
        "the UAS's BYE got no 200"
    );
}
