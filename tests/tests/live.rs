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

#[test]
fn service_reference_without_a_reachable_api_keeps_static_destinations_serving() {
    if !e2e_tools() || !sbc_only() {
        return;
    }
    let dir = TempDir::new("live-no-api");
    let p1 = free_port();
    let b1 = uas(&dir, "b1", p1);
    // A kubeconfig whose API server is a closed loopback port.
    let closed = free_port();
    let kubeconfig = dir.write(
        "kubeconfig",
        &format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: x\n  cluster:\n    server: http://127.0.0.1:{closed}\ncontexts:\n- name: x\n  context:\n    cluster: x\n    user: x\ncurrent-context: x\nusers:\n- name: x\n  user: {{}}\n"
        ),
    );
    let sip_port = free_port();
    let cfg = dir.write("sbc.yaml", &config(sip_port, &[p1], true, "round-robin"));
    let proxy = start(
        &dir,
        &cfg,
        &["--kubeconfig".into(), kubeconfig.display().to_string()],
    );
    let log = wait_for(Duration::from_secs(10), || {
        let log = proxy.log_tail();
        log.contains("EndpointSlice watch failed").then_some(log)
    })
    .unwrap_or_else(|| panic!("no watch error logged:\n{}", proxy.log_tail()));
    assert!(
        log.contains("voip/asterisk"),
        "the error names the Service:\n{log}"
    );
    let calls = 20;
    let mut caller = uac(&dir, &proxy, calls);
    caller.wait(Duration::from_secs(30));
    let stats = caller.stats();
    assert_eq!(
        (stats.successful, stats.failed),
        (u64::from(calls), 0),
        "{}",
        proxy.log_tail()
    );
    assert_eq!(
        invites(&b1),
        calls as usize,
        "the static destination took the calls"
    );
    let metrics = kubesbc_e2e::http::get(proxy.admin(), "/metrics", Duration::from_secs(2))
        .map(|r| r.body)
        .unwrap_or_default();
    assert!(
        metrics
            .contains("sbc_discovery_watch_errors_total{source=\"endpointslices/voip/asterisk\"}"),
        "{metrics}"
    );
}

#[test]
fn configmap_watched_through_the_api_applies_new_versions_under_load() {
    if !e2e_tools() || !sbc_only() {
        return;
    }
    let dir = TempDir::new("live-configmap");
    let (p1, p2) = (free_port(), free_port());
    let (b1, b2) = (uas(&dir, "b1", p1), uas(&dir, "b2", p2));
    let api = FakeKubeApi::start();
    let sip_port = free_port();
    api.set_configmap(
        "edge-config",
        &config(sip_port, &[p1], false, "round-robin"),
    );
    let kubeconfig = api.kubeconfig(&dir);
    let admin = loopback(free_port());
    let args: Vec<String> = vec![
        "--configmap".into(),
        "voip/edge-config".into(),
        "--kubeconfig".into(),
        kubeconfig.display().to_string(),
        "--admin".into(),
        admin.to_string(),
    ];
    let proxy = Proxy::start_sbc(&dir, &args, sip_port, admin);
    assert!(
        proxy
            .log_tail()
            .contains("configuration source: ConfigMap key sbc.yaml, watched"),
        "{}",
        proxy.log_tail()
    );
    assert!(
        wait_for(Duration::from_secs(10), || (api.watches() > 0)
            .then_some(()))
        .is_some(),
        "the sbc watches its ConfigMap"
    );
    let calls = 200;
    let mut caller = uac(&dir, &proxy, calls);
    std::thread::sleep(Duration::from_millis(1000));
    api.set_configmap(
        "edge-config",
        &config(sip_port, &[p1, p2], false, "round-robin"),
    );
    wait_listed(&proxy, &format!("sip:127.0.0.1:{p2}"), true);
    // A version without a valid algorithm is refused; both backends keep serving.
    api.set_configmap("edge-config", &config(sip_port, &[p2], false, "roundrobin"));
    let refused = wait_for(Duration::from_secs(5), || {
        let log = proxy.log_tail();
        log.contains("configuration refused").then_some(log)
    })
    .unwrap_or_else(|| panic!("no refusal logged:\n{}", proxy.log_tail()));
    assert!(
        refused.contains("dispatcher.sets[0].algorithm"),
        "{refused}"
    );
    let b1_at_refusal = invites(&b1);
    caller.wait(Duration::from_secs(30));
    let stats = caller.stats();
    assert_eq!(
        (stats.successful, stats.failed),
        (u64::from(calls), 0),
        "{}",
        proxy.log_tail()
    );
    assert!(
        invites(&b2) > 0,
        "the backend added through the ConfigMap took calls"
    );
    assert!(
        invites(&b1) > b1_at_refusal,
        "the refused version changed nothing"
    );
}

/// Seconds since the Unix epoch of a sipp message-log stamp, `2026-11-24 07:01:13.986007`
/// (sipp writes local time: run with `TZ=UTC`).
fn sipp_stamp(line: &str) -> Option<f64> {
    let mut it = line.split_whitespace();
    let (date, time) = (it.next()?, it.next()?);
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (hh, mm) = (
        t.next()?.parse::<f64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
    );
    let ss = t.next()?.parse::<f64>().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86_400.0 + hh * 3600.0 + mm * 60.0 + ss)
}

/// Receive times of the INVITEs in a sipp message log.
fn invite_times(log: &Path) -> Vec<f64> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut out = Vec::new();
    for block in text.split("----------------------------------------------- ") {
        let mut lines = block.lines();
        let (Some(stamp), Some(kind)) = (lines.next(), lines.next()) else {
            continue;
        };
        if !kind.contains("received") {
            continue;
        }
        let first = lines.find(|l| !l.trim().is_empty()).unwrap_or_default();
        if first.starts_with("INVITE ")
            && let Some(t) = sipp_stamp(stamp)
        {
            out.push(t);
        }
    }
    out.sort_by(f64::total_cmp);
    out
}

fn now_epoch() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn env_u32(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The benchmark of `bench/discovery/run.sh`: time from an EndpointSlice event (or a config
/// file rewrite, `BENCH_MODE=file`) to the first INVITE the new backend receives, with
/// `BENCH_RATE` calls/s flowing and `BENCH_UPDATES` updates `BENCH_INTERVAL_MS` apart. Each
/// update adds a backend that was out of the set and removes another, so two serve at any
/// time. Prints p50/p99/max and the failed calls; asserts nothing about time.
#[test]
#[ignore = "benchmark: run through bench/discovery/run.sh"]
fn bench_update_to_first_call() {
    if !e2e_tools() || !sbc_only() {
        return;
    }
    let rate = env_u32("BENCH_RATE", 1000);
    let updates = env_u32("BENCH_UPDATES", 100) as usize;
    let interval = Duration::from_millis(u64::from(env_u32("BENCH_INTERVAL_MS", 1500)));
    let file_mode = std::env::var("BENCH_MODE").is_ok_and(|m| m == "file");
    let dir = TempDir::new("bench-discovery");
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let backends: Vec<Sipp> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| uas(&dir, &format!("b{i}"), *p))
        .collect();
    let api = FakeKubeApi::start();
    let slice = |i: usize| {
        Slice::new(
            "asterisk",
            &format!("asterisk-{i}"),
            ports[i],
            &[("127.0.0.1", true, false)],
        )
    };
    let sip_port = free_port();
    let cfg_for = |active: &[usize]| {
        let ps: Vec<u16> = active.iter().map(|i| ports[*i]).collect();
        config(sip_port, &ps, false, "round-robin")
    };
    let (cfg, extra) = if file_mode {
        (dir.write("sbc.yaml", &cfg_for(&[0, 1])), Vec::new())
    } else {
        api.apply(slice(0));
        api.apply(slice(1));
        let kc = api.kubeconfig(&dir);
        (
            dir.write("sbc.yaml", &config(sip_port, &[], true, "round-robin")),
            vec!["--kubeconfig".to_owned(), kc.display().to_string()],
        )
    };
    let mut extra = extra;
    extra.extend(["--workers".to_owned(), "2".to_owned()]);
    let proxy = start(&dir, &cfg, &extra);
    let uri = |i: usize| {
        if file_mode {
            format!("sip:127.0.0.1:{}", ports[i])
        } else {
            udp(ports[i])
        }
    };
    wait_listed(&proxy, &uri(0), true);
    wait_listed(&proxy, &uri(1), true);

    let total = u32::try_from(
        (u128::from(rate) * (interval.as_millis() * (updates as u128 + 2)) / 1000).max(1),
    )
    .unwrap_or(u32::MAX);
    let mut caller = Sipp::uac(
        &dir,
        "uac",
        &scenario("uac.xml"),
        free_port(),
        proxy.sip_addr(),
        SippTransport::Udp,
        &UacOptions {
            rate,
            calls: total,
            hold_ms: 100,
            // sipp's -timeout bounds the whole run.
            timeout_s: total / rate.max(1) + 60,
        },
    );
    std::thread::sleep(interval);
    let mut events: Vec<(usize, f64)> = Vec::with_capacity(updates);
    for u in 0..updates {
        let (add, remove) = ((u + 2) % 4, u % 4);
        let t0 = now_epoch();
        if file_mode {
            rewrite(&cfg, &cfg_for(&[(u + 1) % 4, add]));
        } else {
            api.apply(slice(add));
            api.delete(&format!("asterisk-{remove}"));
        }
        events.push((add, t0));
        std::thread::sleep(interval);
    }
    let code = caller.wait(Duration::from_secs(180));
    let stats = caller.stats();
    let times: Vec<Vec<f64>> = (0..4)
        .map(|i| invite_times(&dir.path().join(format!("b{i}.msg"))))
        .collect();
    drop(backends);
    let mut lat: Vec<f64> = Vec::new();
    let mut missed = 0;
    for (b, t0) in &events {
        match times[*b].iter().find(|t| **t > *t0) {
            Some(t) if *t - *t0 < interval.as_secs_f64() => lat.push(*t - *t0),
            _ => missed += 1,
        }
    }
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .map_or(f64::NAN, |v| v * 1000.0)
    };
    println!(
        "BENCH mode={} rate={rate} updates={updates} calls={} successful={} failed={} sipp_exit={code} \
         update_to_first_call_ms p50={:.1} p99={:.1} max={:.1} missed={missed}",
        if file_mode { "file" } else { "endpointslices" },
        stats.created,
        stats.successful,
        stats.failed,
        pct(0.5),
        pct(0.99),
        pct(1.0),
    );
}
