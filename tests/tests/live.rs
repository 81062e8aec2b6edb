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
    CallRun, Proxy, Sipp, SippTransport, TempDir, UacOptions, e2e_tools, free_port, loopback,
    sbc_only, scenario, start_calls, wait_for,
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

/// `N` sipp backends `b1`..`bN` on fresh ports: their ports and guards.
fn backends<const N: usize>(dir: &TempDir) -> ([u16; N], [Sipp; N]) {
    let ports: [u16; N] = std::array::from_fn(|_| free_port());
    let sipps = std::array::from_fn(|i| uas(dir, &format!("b{}", i + 1), ports[i]));
    (ports, sipps)
}

/// The temp dir of an sbc-only live test; `None` (after a loud skip) without sipp or when the
/// proxy is Kamailio.
fn live_test(label: &str) -> Option<TempDir> {
    (e2e_tools() && sbc_only()).then(|| TempDir::new(label))
}

/// A caller placing `calls` calls at 50 per second through `proxy`.
fn uac(dir: &TempDir, proxy: &Proxy, calls: u32) -> (Sipp, UacOptions) {
    let opts = UacOptions::new(calls, 50).with_timeout_s(60);
    let caller = start_calls(
        dir,
        "uac",
        "uac.xml",
        proxy.sip_addr(),
        SippTransport::Udp,
        &opts,
    );
    (caller, opts)
}

/// Waits for `caller` and asserts that every one of its `calls` succeeded, across whatever
/// changed during the run.
fn assert_no_call_failed(caller: (Sipp, UacOptions), proxy: &Proxy) {
    let (caller, opts) = caller;
    let run = CallRun::finish(caller, &opts);
    assert_eq!(
        (run.stats.successful, run.stats.failed),
        (u64::from(opts.calls), 0),
        "every call succeeds across the changes (sipp exit {}); log:\n{}",
        run.exit,
        proxy.log_tail()
    );
}

/// An EndpointSlice of Service voip/asterisk with one endpoint on 127.0.0.1:`port`, ready or
/// terminating.
fn slice(name: &str, port: u16, ready: bool) -> Slice {
    Slice::new("asterisk", name, port, &[("127.0.0.1", ready, !ready)])
}

/// Asserts that the sbc opened a watch on the fake API (`what` it watches).
fn assert_watching(api: &FakeKubeApi, what: &str) {
    assert!(
        wait_for(Duration::from_secs(10), || (api.watches() > 0)
            .then_some(()))
        .is_some(),
        "the sbc watches {what}"
    );
}

/// Waits until the sbc logs that it refused a configuration, and asserts that the refusal
/// names the invalid field (`dispatcher.sets[0].algorithm`).
fn assert_refused_naming_the_algorithm(proxy: &Proxy) {
    let refused = proxy.wait_logged("configuration refused", Duration::from_secs(5));
    assert!(
        refused.contains("dispatcher.sets[0].algorithm"),
        "the refusal names the field:\n{refused}"
    );
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

/// Starts the sbc from `config` (a file whose listener is on `sip_port`) and `extra` arguments.
fn start(dir: &TempDir, sip_port: u16, config: &Path, extra: &[String]) -> Proxy {
    start_with(
        dir,
        sip_port,
        &["--config".into(), config.display().to_string()],
        extra,
    )
}

/// Starts the sbc with `source` (where its configuration comes from) and `extra` arguments,
/// and an admin endpoint on a fresh port.
fn start_with(dir: &TempDir, sip_port: u16, source: &[String], extra: &[String]) -> Proxy {
    let admin = loopback(free_port());
    let mut args = source.to_vec();
    args.extend(["--admin".into(), admin.to_string()]);
    args.extend(extra.iter().cloned());
    Proxy::start_sbc(dir, &args, sip_port, admin)
}

/// `--kubeconfig FILE`.
fn kubeconfig_arg(file: &Path) -> Vec<String> {
    vec!["--kubeconfig".into(), file.display().to_string()]
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
    let Some(dir) = live_test("live-discovery") else {
        return;
    };
    let ([p1, p2, p3], [b1, b2, b3]) = backends(&dir);
    let api = FakeKubeApi::start();
    api.apply(slice("asterisk-1", p1, true));
    let sip_port = free_port();
    let cfg = dir.write("sbc.yaml", &config(sip_port, &[], true, "round-robin"));
    let proxy = start(&dir, sip_port, &cfg, &kubeconfig_arg(&api.kubeconfig(&dir)));
    wait_listed(&proxy, &udp(p1), true);
    assert_watching(&api, "the EndpointSlices");

    let caller = uac(&dir, &proxy, 500);
    std::thread::sleep(Duration::from_millis(1500));

    // A second backend appears: it starts taking calls.
    api.apply(slice("asterisk-2", p2, true));
    wait_listed(&proxy, &udp(p2), true);
    std::thread::sleep(Duration::from_millis(1500));

    // Backend 1 terminates: no new calls for it; its calls in progress finish.
    api.apply(slice("asterisk-1", p1, false));
    wait_listed(&proxy, &udp(p1), false);
    let b1_after_removal = settled_invites(&b1, Duration::from_millis(500));
    std::thread::sleep(Duration::from_millis(1000));

    // In one burst: backend 3 appears, backend 2's slice is deleted.
    api.apply(slice("asterisk-3", p3, true));
    api.delete("asterisk-2");
    wait_listed(&proxy, &udp(p2), false);
    wait_listed(&proxy, &udp(p3), true);
    let b2_after_removal = settled_invites(&b2, Duration::from_millis(500));

    assert_no_call_failed(caller, &proxy);
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
    proxy.assert_metrics_contain(&[
        "sbc_dispatcher_set_generation{set=\"1\"}",
        "sbc_dispatcher_set_destinations{set=\"1\",state=\"active\"} 1",
    ]);
}

#[test]
fn config_file_rewritten_under_load_applies_and_an_invalid_one_is_refused() {
    let Some(dir) = live_test("live-config") else {
        return;
    };
    let ([p1, p2, p3], [b1, b2, b3]) = backends(&dir);
    let sip_port = free_port();
    let cfg = dir.write(
        "sbc.yaml",
        &config(sip_port, &[p1, p2], false, "round-robin"),
    );
    let proxy = start(&dir, sip_port, &cfg, &[]);
    let log = std::fs::read_to_string(dir.path().join("sbc.log")).unwrap_or_default();
    assert!(
        log.contains("dispatcher sources: static destinations only"),
        "the sbc says which sources it uses:\n{log}"
    );
    assert!(log.contains("configuration source: file, watched"), "{log}");

    let caller = uac(&dir, &proxy, 400);
    std::thread::sleep(Duration::from_millis(1500));

    // A third backend is added to the file: it starts taking calls.
    rewrite(&cfg, &config(sip_port, &[p1, p2, p3], false, "round-robin"));
    wait_listed(&proxy, &format!("sip:127.0.0.1:{p3}"), true);
    std::thread::sleep(Duration::from_millis(1000));

    // An invalid version (unknown algorithm, backend 1 removed) is refused: nothing changes.
    rewrite(&cfg, &config(sip_port, &[p2, p3], false, "roundrobin"));
    assert_refused_naming_the_algorithm(&proxy);
    let b1_at_refusal = invites(&b1);
    assert!(
        proxy
            .destination_flags(&format!("sip:127.0.0.1:{p1}"))
            .is_some()
    );

    assert_no_call_failed(caller, &proxy);
    let (n1, n2, n3) = (invites(&b1), invites(&b2), invites(&b3));
    eprintln!("INVITEs: b1 {n1} (at refusal {b1_at_refusal}), b2 {n2}, b3 {n3}");
    assert!(n3 > 0, "the backend added by the rewrite took calls");
    assert!(
        n1 > b1_at_refusal,
        "backend 1 (dropped only by the refused version) kept taking calls"
    );
    proxy.assert_metrics_contain(&[
        "sbc_config_reloads_total{result=\"accepted\"} 1",
        "sbc_config_reloads_total{result=\"refused\"} 1",
    ]);
}

#[test]
fn service_reference_without_a_reachable_api_keeps_static_destinations_serving() {
    let Some(dir) = live_test("live-no-api") else {
        return;
    };
    let ([p1], [b1]) = backends(&dir);
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
    let proxy = start(&dir, sip_port, &cfg, &kubeconfig_arg(&kubeconfig));
    let log = proxy.wait_logged("EndpointSlice watch failed", Duration::from_secs(10));
    assert!(
        log.contains("voip/asterisk"),
        "the error names the Service:\n{log}"
    );
    let calls = 20;
    assert_no_call_failed(uac(&dir, &proxy, calls), &proxy);
    assert_eq!(
        invites(&b1),
        calls as usize,
        "the static destination took the calls"
    );
    proxy.assert_metrics_contain(&[
        "sbc_discovery_watch_errors_total{source=\"endpointslices/voip/asterisk\"}",
    ]);
}

#[test]
fn configmap_watched_through_the_api_applies_new_versions_under_load() {
    let Some(dir) = live_test("live-configmap") else {
        return;
    };
    let ([p1, p2], [b1, b2]) = backends(&dir);
    let api = FakeKubeApi::start();
    let sip_port = free_port();
    api.set_configmap(
        "edge-config",
        &config(sip_port, &[p1], false, "round-robin"),
    );
    let proxy = start_with(
        &dir,
        sip_port,
        &["--configmap".into(), "voip/edge-config".into()],
        &kubeconfig_arg(&api.kubeconfig(&dir)),
    );
    assert!(
        proxy
            .log_tail()
            .contains("configuration source: ConfigMap key sbc.yaml, watched"),
        "{}",
        proxy.log_tail()
    );
    assert_watching(&api, "its ConfigMap");
    let caller = uac(&dir, &proxy, 200);
    std::thread::sleep(Duration::from_millis(1000));
    api.set_configmap(
        "edge-config",
        &config(sip_port, &[p1, p2], false, "round-robin"),
    );
    wait_listed(&proxy, &format!("sip:127.0.0.1:{p2}"), true);
    // A version without a valid algorithm is refused; both backends keep serving.
    api.set_configmap("edge-config", &config(sip_port, &[p2], false, "roundrobin"));
    assert_refused_naming_the_algorithm(&proxy);
    let b1_at_refusal = invites(&b1);
    assert_no_call_failed(caller, &proxy);
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
    let (ports, backends) = backends::<4>(&dir);
    let api = FakeKubeApi::start();
    let slice = |i: usize| slice(&format!("asterisk-{i}"), ports[i], true);
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
        (
            dir.write("sbc.yaml", &config(sip_port, &[], true, "round-robin")),
            kubeconfig_arg(&api.kubeconfig(&dir)),
        )
    };
    let mut extra = extra;
    extra.extend(["--workers".to_owned(), "2".to_owned()]);
    let proxy = start(&dir, sip_port, &cfg, &extra);
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
    let mut caller = start_calls(
        &dir,
        "uac",
        "uac.xml",
        proxy.sip_addr(),
        SippTransport::Udp,
        // sipp's -timeout bounds the whole run.
        &UacOptions::new(total, rate).with_timeout_s(total / rate.max(1) + 60),
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
        .map(|i| invite_times(&dir.path().join(format!("b{}.msg", i + 1))))
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
