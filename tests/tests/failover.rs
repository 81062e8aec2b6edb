//! A backend dies in the middle of a run: calls keep succeeding through the other one, the
//! dispatcher listing shows it down, and it comes back when restarted.
//!
//! Runs against the sbc, or against Kamailio with `KUBESBC_E2E_PROXY=kamailio`.

use std::time::Duration;

use kubesbc_e2e::{
    Sipp, SippTransport, TempDir, Testbed, UacOptions, e2e_tools, received_invites, scenario,
};

#[test]
fn backend_stopped_mid_run_calls_fail_over_and_it_comes_back() {
    if !e2e_tools() {
        return;
    }
    let dir = TempDir::new("failover");
    let probe = Duration::from_millis(500);
    let mut bed = Testbed::builder(&dir)
        .backend("uas1", "uas.xml")
        .backend("uas2", "uas.xml")
        .probe_interval(probe)
        .start();
    let d2 = bed.dests[1].uri.clone();

    let calls = 40;
    // Calls stranded in dialog with the dead backend take sipp's own timers to fail.
    let opts = UacOptions::new(calls, 10)
        .with_hold_ms(20)
        .with_timeout_s(60);
    let mut uac = bed.start_calls(&dir, "uac", "uac.xml", &opts);
    // Let a dozen calls through both backends, then kill backend 2 without a word.
    std::thread::sleep(Duration::from_millis(1500));
    bed.backends[1].kill();
    let killed = std::time::Instant::now();
    let log2 = bed.backend(1).messages();
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

    // The listing shows it down within a few probe intervals; the sbc within one probe
    // interval and the probe's timeout (the reply timeout, 1 s), plus a little polling.
    bed.proxy
        .wait_destination(&d2, false, probe * 4 + Duration::from_secs(5));
    let took = killed.elapsed();
    eprintln!("backend 2 seen down {took:?} after the kill");
    if bed.proxy.kind() == kubesbc_e2e::ProxyKind::Sbc {
        assert!(
            took <= probe + Duration::from_millis(1000) + Duration::from_millis(700),
            "the sbc took {took:?} to take backend 2 out"
        );
    }

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
    let port2 = bed.backend(1).port();
    let uas2b = Sipp::uas(
        &dir,
        "uas2-again",
        &scenario("uas.xml"),
        port2,
        SippTransport::Udp,
    );
    bed.proxy
        .wait_destination(&d2, true, probe * 4 + Duration::from_secs(5));
    let calls = 10;
    let opts = UacOptions::new(calls, 10).with_hold_ms(20);
    bed.run_calls(&dir, "uac2", "uac.xml", &opts)
        .assert_all_succeeded(calls);
    let back = received_invites(&uas2b).len();
    assert!(
        back >= 3,
        "the restarted backend took {back} of {calls} calls (round robin: about half)"
    );
}

/// The defect issue 14 found with `examples/dispatcherset-static.yaml`: a static destination
/// whose host does not resolve stopped the sbc at start. Now the sbc starts, lists that
/// destination down (`udp:unresolved`), and calls reach the set's other destination. sbc only.
#[test]
fn a_static_host_that_does_not_resolve_is_down_and_the_sbc_serves_the_others() {
    if !e2e_tools() || !kubesbc_e2e::sbc_only() {
        return;
    }
    let dir = TempDir::new("unresolved");
    let pbx = kubesbc_e2e::uas::Pbx::start(std::net::Ipv4Addr::new(127, 0, 0, 5));
    let port = kubesbc_e2e::free_port();
    // Set 2 as the example's carriers set, with a host name (the reserved `.invalid` TLD,
    // which never resolves) in place of its documentation address, weighted above the PBX.
    let config = format!(
        r#"
listeners:
  - {{transport: udp, address: "127.0.0.1:{port}"}}
dispatcher:
  defaultSet: 2
  sets:
    - id: 2
      algorithm: 9
      destinations:
        - {{uri: "sip:carrier-a.invalid:5060;transport=udp", weight: 70, priority: 10}}
        - {{uri: "{}", weight: 30}}
      probing: {{intervalMs: 500, timeoutMs: 400}}
"#,
        pbx.uri()
    );
    let proxy = kubesbc_e2e::Proxy::start_sbc_config(&dir, &config, port);
    proxy.wait_destination(&pbx.uri(), true, Duration::from_secs(10));
    let listing = proxy.dispatcher_listing();
    let flags = kubesbc_e2e::proxy::destination_flags(&listing, "carrier-a.invalid")
        .unwrap_or_else(|| panic!("the unresolved destination is listed: {listing}"));
    assert!(flags.starts_with('I'), "down while unresolved: {listing}");
    assert!(listing.contains("udp:unresolved"), "{listing}");
    let sbc = kubesbc_e2e::loopback(port);
    for _ in 0..5 {
        let r = kubesbc_e2e::sip::invite_once(sbc, Duration::from_secs(3));
        assert_eq!(r.map(|r| r.code), Some(200), "{}", proxy.log_tail());
    }
}
