//! A backend dies in the middle of a run: calls keep succeeding through the other one, the
//! dispatcher listing shows it down, and it comes back when restarted.
//!
//! Runs against the sbc, or against Kamailio with `KUBESBC_E2E_PROXY=kamailio`.

use std::time::Duration;

use kubesbc_e2e::{
    DispatcherDest, Proxy, ProxyOptions, Sipp, SippTransport, TempDir, UacOptions, e2e_tools,
    free_port, scenario,
};

#[test]
fn backend_stopped_mid_run_calls_fail_over_and_it_comes_back() {
    if !e2e_tools() {
        return;
    }
    let dir = TempDir::new("failover");
    let (p1, p2) = (free_port(), free_port());
    let _uas1 = Sipp::uas(&dir, "uas1", &scenario("uas.xml"), p1, SippTransport::Udp);
    let mut uas2 = Sipp::uas(&dir, "uas2", &scenario("uas.xml"), p2, SippTransport::Udp);
    let (d1, d2) = (
        DispatcherDest::local(p1, false),
        DispatcherDest::local(p2, false),
    );
    let probe = Duration::from_millis(500);
    let proxy = Proxy::start(
        &dir,
        &ProxyOptions {
            destinations: vec![d1.clone(), d2.clone()],
            probe_interval_ms: probe.as_millis() as u64,
            reply_timeout_ms: 1000,
            ..ProxyOptions::default()
        },
    );
    proxy.wait_destination(&d1.uri, true, Duration::from_secs(10));
    proxy.wait_destination(&d2.uri, true, Duration::from_secs(10));

    let calls = 40;
    let mut uac = Sipp::uac(
        &dir,
        "uac",
        &scenario("uac.xml"),
        free_port(),
        proxy.sip_addr(),
        SippTransport::Udp,
        &UacOptions {
            rate: 10,
            calls,
            hold_ms: 20,
            timeout_s: 60,
        },
    );
    // Let a dozen calls through both backends, then kill backend 2 without a word.
    std::thread::sleep(Duration::from_millis(1500));
    uas2.kill();
    let log2 = uas2.messages();
    let before_kill = log2.calls_received("INVITE");
    assert!(
        !before_kill.is_empty(),
        "backend 2 took calls before it died"
    );
    // Calls backend 2 had answered but whose BYE it never got can only fail.
    let stranded: Vec<_> = before_kill
        .difference(&log2.calls_received("BYE"))
        .cloned()
        .collect();

    // The listing shows it down within a few probe intervals.
    proxy.wait_destination(&d2.uri, false, probe * 4 + Duration::from_secs(5));

    // Exit code 1 when a stranded call failed; the counts below decide.
    uac.wait(Duration::from_secs(90));
    let stats = uac.stats();
    eprintln!(
        "first run: {stats:?}; stranded at backend 2: {}",
        stranded.len()
    );
    assert!(
        stats.failed <= stranded.len() as u64,
        "calls failed after backend 2 died: {stats:?}, stranded in dialog at the kill: {stranded:?}"
    );
    assert_eq!(
        stats.successful + stats.failed,
        u64::from(calls),
        "{stats:?}"
    );

    // Backend 2 comes back on the same port: the probe brings it up, and it takes calls again.
    let uas2b = Sipp::uas(
        &dir,
        "uas2-again",
        &scenario("uas.xml"),
        p2,
        SippTransport::Udp,
    );
    proxy.wait_destination(&d2.uri, true, probe * 4 + Duration::from_secs(5));
    let calls = 10;
    let mut uac2 = Sipp::uac(
        &dir,
        "uac2",
        &scenario("uac.xml"),
        free_port(),
        proxy.sip_addr(),
        SippTransport::Udp,
        &UacOptions {
            rate: 10,
            calls,
            hold_ms: 20,
            timeout_s: 30,
        },
    );
    assert_eq!(uac2.wait(Duration::from_secs(45)), 0, "{:?}", uac2.stats());
    assert_eq!(uac2.stats().successful, u64::from(calls));
    let back = uas2b.messages().calls_received("INVITE").len();
    assert!(
        back >= 3,
        "the restarted backend took {back} of {calls} calls (round robin: about half)"
    );
}
