//! The border seen from the wire (docs/topology.md), with a sipp caller outside (127.0.0.1)
//! and a sipp callee inside (127.0.0.5, `relay.inside.networks: [127.0.0.5/32]`); the sbc is
//! the "pod" 127.0.0.3, its outside address `sbc.example.com`, its shared inside address
//! `sbc.voice.svc.cluster.local`. sbc only: the border comes from the configuration file.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use kubesbc_e2e::{
    MessageLog, Proxy, Sipp, SippTransport, TempDir, UacOptions, e2e_tools, free_port, loopback,
    sbc_only, scenario,
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
    let dest = format!("sip:{BACKEND}:{}", backend.port());
    let config = format!(
        r#"
listeners:
  - {{transport: udp, address: "{POD}:{port}", advertise: "{OUTSIDE}:{port}"}}
dispatcher:
  sets:
    - id: 1
      destinations: [{{uri: "{dest}"}}]
      probing: {{intervalMs: 500, timeoutMs: 400}}
relay:
  inside: {{address: "{INSIDE}:{port}", networks: ["{BACKEND}/32"]}}
{extra}"#
    );
    let file = dir.write("sbc.yaml", &config);
    let admin = loopback(free_port());
    let args = [
        "--config".to_owned(),
        file.display().to_string(),
        "--admin".to_owned(),
        admin.to_string(),
    ];
    let proxy = Proxy::start_sbc(dir, &args, port, admin);
    proxy.wait_destination(&dest, true, Duration::from_secs(10));
    Scene {
        _proxy: proxy,
        backend,
        sip: SocketAddr::from((POD, port)),
    }
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
