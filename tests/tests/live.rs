//! The sbc follows changes live while sipp places calls at a steady rate: backends come and go
//! through EndpointSlice events of a fake Kubernetes API, and through rewrites of the config
//! file. New backends start taking calls, removed ones stop taking new calls, an invalid
//! config is refused and the old one keeps serving, and no call fails.
//!
//! sbc only (Kamailio has no EndpointSlice discovery).

use std::path::Path;
use std::time::{Duration, Instant};

use kubesbc_e2e::kubeapi::{FakeKubeApi, Slice};
use kubesbc_e2e::{
    Proxy, Sipp, SippTransport, TempDir, UacOptions, e2e_tools, free_port, loopback, sbc_only,
    scenario, wait_for,
};

/// A config with set 1 over static `ports` and, when `service`, Service voip/asterisk.
fn config(sip_port: u16, ports: &[u16], service: bool, algorithm: &str) -> String {
    let mut y = format!(
        "listeners:\n- transport: udp\n  address: 127.0.0.1:{sip_port}\ndispatcher:\n  sets:\n  - id: 1\n    algorithm: {algorithm}\n    probing:\n      enabled: false\n    destinations:\n"
    );
    if ports.is_empty() {
        y = y.replace("    destinations:\n", "    destinations: []\n");
    }
    for p in ports {
        y.push_str(&format!("    - uri: sip:127.0.0.1:{p}\n"));
    }
    if service {
        y.push_str(
            "    service:\n      namespace: voip\n      name: asterisk\n      port: sip\n      transport: udp\n",
        );
    }
    y
}

fn uas(dir: &TempDir, name: &str, port: u16) -> Sipp {
    Sipp::uas(dir, name, &scenario("uas.xml"), port, SippTransport::Udp)
}

fn uac(dir: &TempDir, proxy: &Proxy, calls: u32) -> Sipp {
    Sipp::uac(
        dir,
        "uac",
        &scenario("uac.xml"),
        free_port(),
        proxy.sip_addr(),
        SippTransport::Udp,
        &UacOptions {
            rate: 50,
            calls,
            hold_ms: 100,
            timeout_s: 60,
        },
    )
}

fn invites(s: &Sipp) -> usize {
    s.messages().calls_received("INVITE").len()
}

/// Waits until the dispatcher listing has (or lacks) `uri`; returns when it changed.
fn wait_listed(proxy: &Proxy, uri: &str, present: bool) -> Instant {
    let ok = wait_for(Duration::from_secs(10), || {
        (proxy.destination_flags(uri).is_some() == present).then(Instant::now)
    });
    ok.unwrap_or_else(|| {
        panic!(
            "{uri} {} the listing within 10 s:\n{}\nlog:\n{}",
            if present { "not in" } else { "still in" },
            proxy.dispatcher_listing(),
            proxy.log_tail()
        )
    })
}

/// Waits `settle` for requests already sent, then the INVITE count of `s`.
fn settled_invites(s: &Sipp, settle: Duration) -> usize {
    std::thread::sleep(settle);
    invites(s)
}

fn start(dir: &TempDir, config: &Path, extra: &[String]) -> Proxy {
    let sip_port = port_of(config);
    let admin = loopback(free_port());
    let mut args: Vec<String> = vec![
        "--config".into(),
        config.display().to_string(),
        "--admin".into(),
        admin.to_string(),
    ];
    args.extend(extra.iter().cloned());
    Proxy::start_sbc(dir, &args, sip_port, admin)
}

fn port_of(config: &Path) -> u16 {
    let text = std::fs::read_to_string(config).unwrap_or_default();
    text.lines()
        .find_map(|l| l.trim().strip_prefix("address: 127.0.0.1:"))
        .and_then(|p| p.parse().ok())
        .expect("the config has a listener")
}

/// Replaces `path` the way a ConfigMap volume does: a new file renamed over the old one.
fn rewrite(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, path).expect("rename config");
}

fn udp(port: u16) -> String {
    format!("sip:127.0.0.1:{port};transport=udp")
}

#[test]
fn endpoint_slice_events_move_new_calls_and_no_call_fails() {
    if !e2e_tools() || !sbc_only() {
        return;
    }
    let dir = TempDir::new("live-discovery");
    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    let (b1, b2, b3) = (
        uas(&dir, "b1", p1),
        uas(&dir, "b2", p2),
        uas(&dir, "b3", p3),
    );
    let api = FakeKubeApi::start();
    api.apply(Slice::new(
        "asterisk",
        "asterisk-1",
        p1,
        &[("127.0.0.1", true, false)],
    ));
    let sip_port = free_port();
    let cfg = dir.write("sbc.yaml", &config(sip_port, &[], true, "round-robin"));
    let kubeconfig = api.kubeconfig(&dir);
    let proxy = start(
        &dir,
        &cfg,
        &["--kubeconfig".into(), kubeconfig.display().to_string()],
    );
    wait_listed(&proxy, &udp(p1), true);
    assert!(
        wait_for(Duration::from_secs(10), || (api.watches() > 0)
            .then_some(()))
        .is_some(),
        "the sbc watches the EndpointSlices"
    );

    let calls = 500;
    let mut caller = uac(&dir, &proxy, calls);
    std::thread::sleep(Duration::from_millis(1500));

    // A second backend appears: it starts taking calls.
    api.apply(Slice::new(
        "asterisk",
        "asterisk-2",
        p2,
        &[("127.0.0.1", true, false)],
    ));
    wait_listed(&proxy, &udp(p2), true);
    std::thread::sleep(Duration::from_millis(1500));

    // Backend 1 terminates: no new calls for it; its calls in progress finish.
    api.apply(Slice::new(
        "asterisk",
        "asterisk-1",
        p1,
        &[("127.0.0.1", false, true)],
    ));
    wait_listed(&proxy, &udp(p1), false);
    let b1_after_removal = settled_invites(&b1, Duration::from_millis(500));
    std::thread::sleep(Duration::from_millis(1000));

    // In one burst: backend 3 appears, backend 2's slice is deleted.
    api.apply(Slice::new(
        "asterisk",
        "asterisk-3",
        p3,
        &[("127.0.0.1", true, false)],
    ));
    api.delete("asterisk-2");
    wait_listed(&proxy, &udp(p2), false);
    wait_listed(&proxy, &udp(p3), true);
    let b2_after_removal = settled_invites(&b2, Duration::from_millis(500));

    let code = caller.wait(Duration::from_secs(60));
    let stats = caller.stats();
    assert_eq!(
        (stats.successful, stats.failed),
        (u64::from(calls), 0),
        "every call succeeds across the changes (sipp exit {code}); log:\n{}",
        proxy.log_tail()
    );
    let (n1, n2, n3) = (invites(&b1), invites(&b2), invites(&b3));
    eprintln!(
        "INVITEs: b1 {n1} (at removal {b1_after_removal}), b2 {n2} (at removal {b2_after_removal}), b3 {n3}"
    );
    assert!(b1_after_removal > 0, "backend 1 took calls before it left");
    assert!(b2_after_removal > 0, "backend 2 took calls once added");
    assert!(n3 > 0, "backend 3 took calls once added");
    assert_eq!(
        n1, b1_after_removal,
        "no new call for terminating backend 1"
    );
    assert_eq!(n2, b2_after_removal, "no new call for deleted backend 2");
    let metrics = kubesbc_e2e::http::get(proxy.admin(), "/metrics", Duration::from_secs(2))
        .map(|r| r.body)
        .unwrap_or_default();
    assert!(
        metrics.contains("sbc_dispatcher_set_generation{set=\"1\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sbc_dispatcher_set_destinations{set=\"1\",state=\"active\"} 1"),
        "{metrics}"
    );
}

#[test]
fn config_file_rewritten_under_load_applies_and_an_invalid_one_is_refused() {
    if !e2e_tools() || !sbc_only() {
        return;
    }
    let dir = TempDir::new("live-config");
    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    let (b1, b2, b3) = (
        uas(&dir, "b1", p1),
        uas(&dir, "b2", p2),
        uas(&dir, "b3", p3),
    );
    let sip_port = free_port();
    let cfg = dir.write(
        "sbc.yaml",
        &config(sip_port, &[p1, p2], false, "round-robin"),
    );
    let proxy = start(&dir, &cfg, &[]);
    let log = std::fs::read_to_string(dir.path().join("sbc.log")).unwrap_or_default();
    assert!(
        log.contains("dispatcher sources: static destinations only"),
        "the sbc says which sources it uses:\n{log}"
    );
    assert!(log.contains("configuration source: file, watched"), "{log}");

    let calls = 400;
    let mut caller = uac(&dir, &proxy, calls);
    std::thread::sleep(Duration::from_millis(1500));

    // A third backend is added to the file: it starts taking calls.
    rewrite(&cfg, &config(sip_port, &[p1, p2, p3], false, "round-robin"));
    wait_listed(&proxy, &format!("sip:127.0.0.1:{p3}"), true);
    std::thread::sleep(Duration::from_millis(1000));

    // An invalid version (unknown algorithm, backend 1 removed) is refused: nothing changes.
    rewrite(&cfg, &config(sip_port, &[p2, p3], false, "roundrobin"));
    let refused = wait_for(Duration::from_secs(5), || {
        let log = proxy.log_tail();
        log.contains("configuration refused").then_some(log)
    })
    .unwrap_or_else(|| panic!("no refusal logged:\n{}", proxy.log_tail()));
    assert!(
        refused.contains("dispatcher.sets[0].algorithm"),
        "the refusal names the field:\n{refused}"
    );
    let b1_at_refusal = invites(&b1);
    assert!(
        proxy
            .destination_flags(&format!("sip:127.0.0.1:{p1}"))
            .is_some()
    );

    let code = caller.wait(Duration::from_secs(60));
    let stats = caller.stats();
    assert_eq!(
        (stats.successful, stats.failed),
        (u64::from(calls), 0),
        "every call succeeds across the rewrites (sipp exit {code}); log:\n{}",
        proxy.log_tail()
    );
    let (n1, n2, n3) = (invites(&b1), invites(&b2), invites(&b3));
    eprintln!("INVITEs: b1 {n1} (at refusal {b1_at_refusal}), b2 {n2}, b3 {n3}");
    assert!(n3 > 0, "the backend added by the rewrite took calls");
    assert!(
        n1 > b1_at_refusal,
        "backend 1 (dropped only by the refused version) kept taking calls"
    );
    let metrics = kubesbc_e2e::http::get(proxy.admin(), "/metrics", Duration::from_secs(2))
        .map(|r| r.body)
        .unwrap_or_default();
    assert!(
        metrics.contains("sbc_config_reloads_total{result=\"accepted\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sbc_config_reloads_total{result=\"refused\"} 1"),
        "{metrics}"
    );
}
