//! The border seen from the wire (docs/topology.md), with a sipp caller outside (127.0.0.1)
//! and a sipp callee inside (127.0.0.5, `relay.inside.networks: [127.0.0.5/32]`); the sbc is
//! the "pod" 127.0.0.3, its outside address `sbc.example.com`, its shared inside address
//! `sbc.voice.svc.cluster.local`. sbc only: the border comes from the configuration file.
//! With `relay.topology` the caller sees none of those inside names (docs/topology.md).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use kubesbc_e2e::sip::{RequestBuilder, SipClient};
use kubesbc_e2e::sipp::LoggedMessage;
use kubesbc_e2e::{
    MessageLog, Proxy, Sipp, SippTransport, TempDir, UacOptions, e2e_tools, free_port, sbc_only,
    scenario,
};

const POD: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const BACKEND: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 5);
const OUTSIDE: &str = "sbc.example.com";
const INSIDE: &str = "sbc.voice.svc.cluster.local";

struct Scene {
    // Dropped first: the proxy, then the backend.
    _proxy: Proxy,
    backend: Sipp,
    /// Where callers send: the pod's address.
    sip: SocketAddr,
}

/// The sbc with `extra` appended to its `relay` section, in front of a backend running
/// `uas_scenario`.
fn start(dir: &TempDir, uas_scenario: &str, extra: &str) -> Scene {
    let backend = Sipp::uas_on(
        dir,
        "backend",
        &scenario(uas_scenario),
        BACKEND,
        free_port(),
        SippTransport::Udp,
    );
    let port = free_port();
    let proxy = replica(dir, POD, port, &backend, extra);
    Scene {
        _proxy: proxy,
        backend,
        sip: SocketAddr::from((POD, port)),
    }
}

/// One sbc pod at `pod:port`, its outside address `OUTSIDE:port`, in front of `backend`.
fn replica(dir: &TempDir, pod: Ipv4Addr, port: u16, backend: &Sipp, extra: &str) -> Proxy {
    let dest = format!("sip:{BACKEND}:{}", backend.port());
    let config = format!(
        r#"
listeners:
  - {{transport: udp, address: "{pod}:{port}", advertise: "{OUTSIDE}:{port}"}}
dispatcher:
  sets:
    - id: 1
      destinations: [{{uri: "{dest}"}}]
      probing: {{intervalMs: 500, timeoutMs: 400}}
relay:
  inside: {{address: "{INSIDE}:{port}", networks: ["{BACKEND}/32"]}}
{extra}"#
    );
    let proxy = Proxy::start_sbc_config(dir, &config, port);
    proxy.wait_destination(&dest, true, Duration::from_secs(10));
    proxy
}

fn one_call(dir: &TempDir, s: &Scene, name: &str, file: &str) -> (i32, MessageLog) {
    let opts = UacOptions::new(1, 1).with_hold_ms(200).with_timeout_s(20);
    let mut uac = Sipp::uac(
        dir,
        name,
        &scenario(file),
        free_port(),
        s.sip,
        SippTransport::Udp,
        &opts,
    );
    let exit = uac.wait(Duration::from_secs(40));
    (exit, uac.messages())
}

/// The backend's INVITE names the pod in Via and both sides in Record-Route (inside on
/// top); its BYE, sent along that route set, reaches the caller, who answers 200.
#[test]
fn the_backend_sees_the_pod_in_via_and_the_inside_address_and_its_bye_reaches_the_caller() {
    if !e2e_tools() || !sbc_only() {
        return;
    }
    let dir = TempDir::new("topology-inside");
    let s = start(&dir, "ws_uas_bye.xml", "");
    let port = s.sip.port();
    let (exit, _) = one_call(&dir, &s, "caller", "uac_callee_bye.xml");
    let log = s.backend.messages();
    let invite = log
        .received_requests("INVITE")
        .next()
        .expect("the INVITE reached the backend")
        .clone();
    let vias = invite.header_values("Via");
    assert!(
        vias[0].starts_with(&format!("SIP/2.0/UDP {POD}:{port};branch=")),
        "the top Via names the pod: {vias:?}"
    );
    let rr = invite.header_values("Record-Route").join(", ");
    assert_eq!(
        rr,
        format!("<sip:{INSIDE}:{port};lr>, <sip:{OUTSIDE}:{port};lr>"),
        "the route set has the inside entry on top of the outside one"
    );
    assert_eq!(exit, 0, "the caller got the backend's BYE and answered it");
    assert!(
        log.messages.iter().any(|m| m.received
            && m.status() == Some(200)
            && m.header_values("CSeq").iter().any(|c| c.ends_with("BYE"))),
        "the backend got no 200 for its BYE"
    );
    drop(s);
}

const HIDE: &str = "  topology: {hide: true, callIdPrefix: \"CF-\"}\n";

/// What of the inside a message the caller received names, in its start line or headers
/// (the SDP body is the media's business, not topology hiding's). The pod's own address
/// counts only where the sbc writes itself: the caller addressed its To and Request-URI to
/// it (in a cluster, a load balancer's address).
fn leaks(m: &LoggedMessage, port: u16) -> Vec<String> {
    let inside = [BACKEND.to_string(), INSIDE.to_owned(), "CF-".to_owned()];
    let pod = format!("{POD}:{port}");
    let sbc_written = ["Via", "v", "Record-Route", "Contact", "m"];
    std::iter::once(("", m.start_line.as_str()))
        .chain(m.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())))
        .filter(|(n, v)| {
            inside.iter().any(|i| v.contains(i.as_str()))
                || (sbc_written.iter().any(|h| n.eq_ignore_ascii_case(h)) && v.contains(&pod))
        })
        .map(|(n, v)| format!("{n}: {v}"))
        .collect()
}

fn assert_nothing_leaks(log: &MessageLog, port: u16) {
    let received: Vec<&LoggedMessage> = log.messages.iter().filter(|m| m.received).collect();
    assert!(!received.is_empty(), "the caller received nothing");
    for m in received {
        let l = leaks(m, port);
        assert!(l.is_empty(), "{} shows the inside: {l:?}", m.start_line);
    }
}

/// One call with topology hidden, checked to complete and to show the caller nothing of
/// the inside.
struct Hidden {
    // Dropped first: the processes, then their directory. Bind `_dir` when destructuring:
    // `..` would drop (and delete) the directory at once.
    scene: Scene,
    log: MessageLog,
    port: u16,
    _dir: TempDir,
}

fn hidden_call(name: &str, uas: &str, uac: &str, failed: &str) -> Hidden {
    let dir = TempDir::new(name);
    let scene = start(&dir, uas, HIDE);
    let port = scene.sip.port();
    let (exit, log) = one_call(&dir, &scene, "caller", uac);
    assert_eq!(exit, 0, "{failed}");
    assert_nothing_leaks(&log, port);
    Hidden {
        scene,
        log,
        port,
        _dir: dir,
    }
}

/// The caller hangs up. Its ACK and BYE go to the hidden Contact along the hidden route
/// set, and reach the backend at its real Contact with the prefixed Call-ID.
#[test]
fn with_topology_hidden_the_caller_sees_only_the_sbc_and_its_bye_reaches_the_backend() {
    if !e2e_tools() || !sbc_only() {
        return;
    }
    let Hidden {
        scene: s,
        log,
        port,
        _dir,
    } = hidden_call(
        "topology-hide",
        "uas.xml",
        "uac.xml",
        "the call did not complete",
    );
    let ok = log
        .messages
        .iter()
        .find(|m| m.received && m.status() == Some(200))
        .expect("a 200");
    let rr = ok.header_values("Record-Route");
    assert_eq!(rr.len(), 1, "one hop, the sbc: {rr:?}");
    assert!(
        rr[0].starts_with(&format!("<sip:{OUTSIDE}:{port};lr;kth=")),
        "{rr:?}"
    );
    let contact = ok.header_values("Contact");
    assert!(
        contact[0].starts_with(&format!("<sip:{OUTSIDE}:{port};kth=")),
        "{contact:?}"
    );
    let sent = log.sent_requests("INVITE").next().expect("INVITE sent");
    let caller_id = sent.call_id().expect("Call-ID").to_owned();
    assert_eq!(ok.call_id(), Some(caller_id.as_str()));

    let backend = s.backend.messages();
    let invite = backend
        .received_requests("INVITE")
        .next()
        .expect("INVITE at the backend");
    assert_eq!(invite.call_id(), Some(format!("CF-{caller_id}").as_str()));
    let bye = backend
        .received_requests("BYE")
        .next()
        .expect("the caller's BYE reached the backend");
    assert!(
        bye.start_line.starts_with("BYE sip:") && bye.start_line.contains(&BACKEND.to_string()),
        "the BYE's Request-URI is the backend's own Contact again: {}",
        bye.start_line
    );
    assert_eq!(bye.call_id(), Some(format!("CF-{caller_id}").as_str()));
    drop(s);
}

/// The backend hangs up: its BYE reaches the caller with the caller's Call-ID and nothing
/// of the inside, and the caller's 200 reaches the backend.
#[test]
fn with_topology_hidden_the_backends_bye_reaches_the_caller_as_the_sbcs() {
    if !e2e_tools() || !sbc_only() {
        return;
    }
    let Hidden {
        scene: s,
        log,
        _dir,
        ..
    } = hidden_call(
        "topology-hide-bye",
        "ws_uas_bye.xml",
        "uac_callee_bye.xml",
        "the caller did not get the backend's BYE in its dialog",
    );
    let bye = log
        .received_requests("BYE")
        .next()
        .expect("BYE at the caller");
    let vias = bye.header_values("Via");
    assert_eq!(
        vias.len(),
        1,
        "the backend's Via is sealed in the sbc's: {vias:?}"
    );
    let backend = s.backend.messages();
    assert!(
        backend.messages.iter().any(|m| m.received
            && m.status() == Some(200)
            && m.header_values("CSeq").iter().any(|c| c.ends_with("BYE"))),
        "the backend got no 200 for its BYE"
    );
    drop(s);
}

/// A hidden value that does not verify is refused with 403, never decoded into a target.
#[test]
fn a_forged_topology_parameter_gets_403() {
    if !e2e_tools() || !sbc_only() {
        return;
    }
    let dir = TempDir::new("topology-forged");
    let s = start(&dir, "uas.xml", HIDE);
    let port = s.sip.port();
    let mut client = SipClient::udp(s.sip);
    // Some hex, a "tag" that no key made: a phone guessing at an inside host.
    let forged = format!("sip:{OUTSIDE}:{port};kth=31302e392e302e3130303a353036300011223344556677");
    let bye = RequestBuilder::new("BYE", &forged, &client)
        .set("To", "<sip:b@example.com>;tag=x1")
        .build();
    let r = client
        .request(&bye, Duration::from_secs(5))
        .expect("an answer");
    assert_eq!(
        r.status_line,
        "SIP/2.0 403 Forbidden (bad topology parameter)"
    );
    // The same in a Route of an in-dialog request.
    let route = format!("<sip:{OUTSIDE}:{port};lr;kth=61aabbccddeeff0011223344>");
    let bye = RequestBuilder::new("BYE", "sip:b@198.51.100.9", &client)
        .set("To", "<sip:b@example.com>;tag=x2")
        .set("Route", &route)
        .build();
    let r = client
        .request(&bye, Duration::from_secs(5))
        .expect("an answer");
    assert_eq!(r.code, 403, "{}", r.status_line);
    assert!(
        s.backend
            .messages()
            .received_requests("BYE")
            .next()
            .is_none(),
        "a forged request reached the backend"
    );
    drop(s);
}

/// The caller gives up on a ringing call: its CANCEL (the Call-ID it knows) reaches the
/// backend's ringing INVITE, and the 487 and its ACK complete through the border.
#[test]
fn with_topology_hidden_a_cancel_reaches_the_ringing_backend() {
    if !e2e_tools() || !sbc_only() {
        return;
    }
    let Hidden {
        scene: s,
        log,
        _dir,
        ..
    } = hidden_call(
        "topology-cancel",
        "uas_ring.xml",
        "uac_cancel.xml",
        "the caller did not get its 200 and 487",
    );
    let backend = s.backend.messages();
    let cancel = backend
        .received_requests("CANCEL")
        .next()
        .expect("the CANCEL reached the backend");
    let caller_id = log
        .sent_requests("INVITE")
        .next()
        .and_then(|m| m.call_id())
        .expect("Call-ID")
        .to_owned();
    assert_eq!(cancel.call_id(), Some(format!("CF-{caller_id}").as_str()));
    assert!(
        backend.received_requests("ACK").next().is_some(),
        "the 487's ACK did not reach the backend"
    );
    drop(s);
}

/// Two replicas reading one key file (in a cluster, the Secret of `topologyKeySecretRef`):
/// a call set up through one is hung up through the other, which restores the hidden
/// Contact and route set the first one wrote.
#[test]
fn with_a_shared_key_any_replica_restores_what_another_hid() {
    if !e2e_tools() || !sbc_only() {
        return;
    }
    let dir = TempDir::new("topology-replicas");
    let keys = dir.write("topology.keys", "a-key-every-replica-shares-0123\n");
    let extra = format!(
        "  topology: {{hide: true, callIdPrefix: \"CF-\", keyFile: \"{}\"}}\n",
        keys.display()
    );
    let backend = Sipp::uas_on(
        &dir,
        "backend",
        &scenario("uas.xml"),
        BACKEND,
        free_port(),
        SippTransport::Udp,
    );
    let port = free_port();
    let dir_b = TempDir::new("topology-replica-b");
    let pod_b = Ipv4Addr::new(127, 0, 0, 4);
    let a = replica(&dir, POD, port, &backend, &extra);
    let b = replica(&dir_b, pod_b, port, &backend, &extra);

    let mut caller = SipClient::udp(SocketAddr::from((POD, port)));
    let invite = RequestBuilder::invite(&format!("sip:service@{OUTSIDE}:{port}"), &caller);
    caller.send(&invite.build());
    let ok = caller
        .recv_final(Duration::from_secs(10))
        .expect("a final answer through replica A");
    assert_eq!(ok.code, 200, "{}", ok.status_line);
    let contact = ok.header("Contact").expect("Contact").to_owned();
    let target = contact
        .trim_start_matches('<')
        .split('>')
        .next()
        .expect("a URI")
        .to_owned();
    assert!(
        target.contains(";kth="),
        "the backend's Contact is hidden: {contact}"
    );
    let route = ok.header("Record-Route").expect("Record-Route").to_owned();
    let to = ok.header("To").expect("To").to_owned();

    // The rest of the dialog through replica B.
    let mut via_b = SipClient::udp(SocketAddr::from((pod_b, port)));
    let in_dialog = |method: &str, cseq: &str, client: &SipClient| {
        let mut r = RequestBuilder::new(method, &target, client)
            .set("Route", &route)
            .set("To", &to)
            .set("CSeq", cseq)
            .remove("Contact");
        for h in ["Call-ID", "From"] {
            r = r.set(h, invite.get(h).expect("header"));
        }
        r
    };
    via_b.send(&in_dialog("ACK", "1 ACK", &via_b).build());
    via_b.send(&in_dialog("BYE", "2 BYE", &via_b).build());
    // What B restored reaches the backend. (The backend's 200 is not waited for: sipp sends
    // its responses to the address that opened the call, replica A, not to the Via.)
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = backend.messages();
        if log.received_requests("BYE").next().is_some() || std::time::Instant::now() > deadline {
            break log;
        }
        if let Some(r) = via_b.recv(Duration::from_millis(200)) {
            assert!(
                r.code < 300,
                "replica B refused the dialog: {}",
                r.status_line
            );
        }
    };
    for method in ["ACK", "BYE"] {
        let m = log
            .received_requests(method)
            .next()
            .unwrap_or_else(|| panic!("the {method} through replica B did not reach the backend"));
        assert!(
            m.start_line
                .contains(&format!("{BACKEND}:{}", backend.port())),
            "{method} went to the backend's own Contact: {}",
            m.start_line
        );
        assert!(
            m.header_values("Via")
                .first()
                .is_some_and(|v| v.contains(&format!("{pod_b}:{port}"))),
            "the {method} came through replica B: {:?}",
            m.header_values("Via")
        );
    }
    drop((a, b, backend));
}
