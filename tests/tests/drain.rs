//! SIGTERM drains (sbc only: Kamailio just stops): readiness goes false, a new INVITE gets 503
//! with Retry-After, the open call's transaction finishes, then the process exits. Also runs the
//! sbc from a `--config` file.

use std::time::Duration;

use kubesbc_e2e::sip::{RequestBuilder, SipClient, invite_once};
use kubesbc_e2e::{
    Proxy, SippTransport, TempDir, free_port, http, loopback, require_tool, sbc_only,
    start_backend, wait_for,
};

#[test]
fn sigterm_refuses_new_invites_with_503_and_exits_after_open_transactions() {
    if !sbc_only() || !require_tool("sipp") {
        return;
    }
    let dir = TempDir::new("drain");
    let ringing_backend = start_backend(&dir, "ring", "uas_ring.xml", SippTransport::Udp);
    let backend = ringing_backend.port();
    let (port, admin) = (free_port(), loopback(free_port()));
    let config = dir.write(
        "sbc.yaml",
        &format!(
            r#"listeners:
  - transport: udp
    address: "127.0.0.1:{port}"
  - transport: tcp
    address: "127.0.0.1:{port}"
dispatcher:
  sets:
    - id: 1
      algorithm: round-robin
      destinations:
        - uri: "sip:127.0.0.1:{backend}"
      probing:
        intervalMs: 500
admin:
  address: "{admin}"
drain:
  gracePeriodSecs: 20
  retryAfterSecs: 7
"#
        ),
    );
    let mut sbc = Proxy::start_sbc(
        &dir,
        &["--config".into(), config.display().to_string()],
        port,
        admin,
    );
    let ready = wait_for(Duration::from_secs(10), || {
        http::get(admin, "/readyz", Duration::from_millis(500)).filter(|r| r.status == 200)
    });
    assert!(ready.is_some(), "/readyz never 200 with a live destination");

    // A call rings at the backend: its INVITE transaction stays open.
    let target = sbc.sip_addr();
    let mut caller = SipClient::udp(target);
    let ringing = RequestBuilder::invite(&format!("sip:service@{target}"), &caller);
    caller.send(&ringing.build());
    let r180 = wait_for(Duration::from_secs(5), || {
        caller
            .recv(Duration::from_millis(200))
            .filter(|r| r.code == 180)
    });
    assert!(r180.is_some(), "no 180 for the first call");

    sbc.terminate();
    let not_ready = wait_for(Duration::from_secs(3), || {
        http::get(admin, "/readyz", Duration::from_millis(500)).filter(|r| r.status != 200)
    });
    assert!(not_ready.is_some(), "/readyz still 200 while draining");
    assert!(
        sbc.try_exit().is_none(),
        "the sbc exited with a call still ringing"
    );

    // A new call while draining is refused, with Retry-After from the config.
    let resp = invite_once(target, Duration::from_secs(5))
        .expect("a final response to an INVITE during drain");
    assert_eq!(resp.code, 503, "{}", resp.status_line);
    assert_eq!(resp.header("Retry-After"), Some("7"), "{resp:?}");

    // The ringing call is cancelled and ends normally: 200 for the CANCEL, 487 for the INVITE.
    caller.send(&ringing.cancel().build());
    let mut codes = Vec::new();
    let done = wait_for(Duration::from_secs(5), || {
        let r = caller.recv(Duration::from_millis(200))?;
        codes.push(r.code);
        (r.code == 487).then_some(r)
    });
    let r487 = done.unwrap_or_else(|| panic!("no 487 during drain; got {codes:?}"));
    caller.send(&ringing.ack(&r487).build());
    assert!(codes.contains(&200), "no 200 for the CANCEL: {codes:?}");

    let status = sbc
        .wait_exit(Duration::from_secs(15))
        .expect("the sbc did not exit after its last transaction ended");
    assert!(status.success(), "exit status after drain: {status}");
}
