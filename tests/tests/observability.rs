//! Observability with real parts: HEP decoded by sngrep (its HEP/EEP listener) and the SIP in
//! it by tshark, CDRs and registration events in a real Redis stream and at a local HTTP
//! receiver, collectors that are dead or slow costing the calls nothing, the Grafana
//! dashboard's metrics on a running sbc, and `sbc ctl stats/dialogs/registrations`.
//!
//! sbc only. Needs sipp, redis-server, sngrep and tshark (scripts/install-deps.sh); under
//! `CI=true` a missing one fails.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kubesbc_e2e::proxy::run_sbc;
use kubesbc_e2e::sip::{RequestBuilder, SipClient};
use kubesbc_e2e::{
    RedisServer, TempDir, Testbed, UacOptions, e2e_tools, free_port, loopback, require_tool,
    sbc_only, send_signal, wait_for,
};

const LISTENER: &str = "listeners:\n  - transport: udp\n    address: 127.0.0.1:9\n";

/// A local HTTP receiver: answers every POST with 200 and keeps the bodies.
struct Receiver {
    addr: SocketAddr,
    bodies: Arc<Mutex<Vec<String>>>,
}

impl Receiver {
    fn start() -> Receiver {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind receiver");
        let addr = l.local_addr().unwrap();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let b = bodies.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut s) = conn else { continue };
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                if let Some(body) = read_request(&mut s) {
                    b.lock().unwrap().push(body);
                    let _ = s.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                }
            }
        });
        Receiver { addr, bodies }
    }

    /// Every record received, one JSON text per element of the POSTed arrays.
    fn records(&self) -> Vec<serde_json::Value> {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .flat_map(|b| {
                serde_json::from_str::<Vec<serde_json::Value>>(b).expect("a JSON array of records")
            })
            .collect()
    }
}

fn read_request(s: &mut std::net::TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return Some(String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned());
            }
        }
        if buf.len() > 8 << 20 {
            return None;
        }
    }
}

/// The records of a Redis stream, parsed from `XRANGE key - +`.
fn stream_records(redis: &RedisServer, key: &str) -> Vec<serde_json::Value> {
    let raw = redis
        .command(&["XRANGE", key, "-", "+"])
        .unwrap_or_default();
    raw.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("stream field holds JSON"))
        .collect()
}

fn records_config(redis: &RedisServer, webhook: SocketAddr) -> String {
    format!(
        "{LISTENER}observability:\n  node: e2e-node\n  records:\n    redis:\n      url: \"{}\"\n      maxLen: 1000\n    webhook:\n      url: \"http://{webhook}/records\"\n      flushMs: 100\n",
        redis.url()
    )
}

fn ctl(dir: &TempDir, admin: SocketAddr, args: &[&str]) -> String {
    let mut all = vec!["ctl", "--admin"];
    let a = admin.to_string();
    all.push(&a);
    all.extend_from_slice(args);
    let out = run_sbc(dir, &all, Duration::from_secs(10));
    assert_eq!(out.code, Some(0), "sbc {all:?}: {}", out.stderr);
    out.stdout
}

#[test]
fn hep_decoded_by_sngrep_is_sip_in_tshark_with_call_id_addresses_and_direction() {
    if !e2e_tools() || !sbc_only() || !require_tool("sngrep") || !require_tool("tshark") {
        return;
    }
    let dir = TempDir::new("obs-hep");
    let port = free_port();
    let pcap = dir.path().join("hep.pcap");
    // sngrep is the collector: it decodes HEP and writes the SIP it carried, with the
    // addresses HEP gave, as a pcap file.
    let mut sngrep = Command::new("sngrep")
        .args(["-N", "-q", "-L", &format!("udp:127.0.0.1:{port}"), "-O"])
        .arg(&pcap)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sngrep");
    let bound = wait_for(Duration::from_secs(5), || {
        UdpSocket::bind(loopback(port)).is_err().then_some(())
    });
    assert!(bound.is_some(), "sngrep did not bind udp:{port}");
    let cfg = format!(
        "{LISTENER}observability:\n  node: e2e-hep\n  hep:\n    collectors: [\"udp:127.0.0.1:{port}\"]\n    captureId: 77\n"
    );
    let bed = Testbed::builder(&dir)
        .backend("uas", "uas.xml")
        .config(&cfg)
        .start();
    let opts = UacOptions::new(1, 1);
    let caller = bed.start_calls(&dir, "uac", "uac.xml", &opts);
    let caller_port = caller.port();
    let run = kubesbc_e2e::CallRun::finish(caller, &opts);
    run.assert_all_succeeded(1);
    let call_id = bed.invites()[0].iter().next().cloned().expect("a call");
    let sent = || bed.proxy.metric("sbc_hep_packets_total").unwrap_or(0.0);
    assert!(wait_for(Duration::from_secs(5), || (sent() >= 8.0).then_some(())).is_some());
    std::thread::sleep(Duration::from_millis(500));
    send_signal(i64::from(sngrep.id()), "INT");
    let _ = wait_child(&mut sngrep, Duration::from_secs(5));

    let (sbc, backend) = (bed.proxy.sip_addr().port(), bed.backend(0).port());
    // Ephemeral ports can be ones tshark gives to another protocol (22222 is RTPproxy's):
    // decode every port of the call as SIP.
    let decode_as: Vec<String> = [caller_port, sbc, backend]
        .iter()
        .flat_map(|p| ["-d".to_string(), format!("udp.port=={p},sip")])
        .collect();
    let out = Command::new("tshark")
        .arg("-r")
        .arg(&pcap)
        .args(&decode_as)
        .args(["-Y", "sip", "-T", "fields", "-E", "separator=|"])
        .args([
            "-e",
            "ip.src",
            "-e",
            "udp.srcport",
            "-e",
            "ip.dst",
            "-e",
            "udp.dstport",
        ])
        .args([
            "-e",
            "sip.Call-ID",
            "-e",
            "sip.CSeq.method",
            "-e",
            "sip.Status-Code",
        ])
        .output()
        .expect("run tshark");
    let text = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split('|').collect()).collect();
    let has = |src: u16, dst: u16, method: &str, code: &str| {
        rows.iter().any(|r| {
            r.len() == 7
                && r[0] == "127.0.0.1"
                && r[2] == "127.0.0.1"
                && r[1] == src.to_string()
                && r[3] == dst.to_string()
                && r[4] == call_id
                && r[5] == method
                && r[6] == code
        })
    };
    // Both sides of the border, in both directions.
    assert!(has(caller_port, sbc, "INVITE", ""), "INVITE in: {text}");
    assert!(has(sbc, backend, "INVITE", ""), "INVITE out: {text}");
    assert!(has(backend, sbc, "INVITE", "200"), "200 in: {text}");
    assert!(has(sbc, caller_port, "INVITE", "200"), "200 out: {text}");
    assert!(has(caller_port, sbc, "BYE", ""), "BYE in: {text}");
    assert!(
        has(sbc, caller_port, "BYE", "200"),
        "200 to BYE out: {text}"
    );
}

fn wait_child(c: &mut Child, t: Duration) -> Option<std::process::ExitStatus> {
    let r = wait_for(t, || c.try_wait().ok().flatten());
    if r.is_none() {
        let _ = c.kill();
        let _ = c.wait();
    }
    r
}

#[test]
fn calls_give_cdrs_in_a_redis_stream_and_at_a_webhook_and_ctl_shows_the_call_up() {
    if !e2e_tools() || !sbc_only() || !require_tool("redis-server") {
        return;
    }
    let dir = TempDir::new("obs-cdr");
    let redis = RedisServer::start(&dir);
    let hook = Receiver::start();
    let bed = Testbed::builder(&dir)
        .backend("uas", "uas.xml")
        .config(&records_config(&redis, hook.addr))
        .start();
    let admin = bed.proxy.admin();

    // One call held up while ctl looks at it.
    let held = UacOptions::new(1, 1).with_hold_ms(4000);
    let caller = bed.start_calls(&dir, "held", "uac.xml", &held);
    let up = wait_for(Duration::from_secs(5), || {
        (bed.proxy.metric("sbc_dialogs_active") == Some(1.0)).then_some(())
    });
    assert!(up.is_some(), "sbc_dialogs_active never reached 1");
    let dialogs = ctl(&dir, admin, &["dialogs"]);
    assert!(dialogs.starts_with("DIALOGS: 1\n"), "{dialogs}");
    assert!(dialogs.contains("STATE: confirmed"), "{dialogs}");
    let backend_uri = &bed.dests[0].uri;
    assert!(
        dialogs.contains(&format!("BACKEND: {backend_uri}")),
        "{dialogs}"
    );
    let stats = ctl(&dir, admin, &["stats", "dialogs"]);
    assert!(stats.contains("dialogs:active = 1\n"), "{stats}");
    let all = ctl(&dir, admin, &["stats"]);
    assert!(
        all.contains("requests:received_total{method=\"INVITE\"} = 1"),
        "{all}"
    );
    let run = kubesbc_e2e::CallRun::finish(caller, &held);
    run.assert_all_succeeded(1);

    // Three more, quickly.
    let opts = UacOptions::new(3, 10);
    bed.run_calls(&dir, "uac", "uac.xml", &opts)
        .assert_all_succeeded(3);
    let calls: std::collections::BTreeSet<String> = bed.invites()[0].iter().cloned().collect();
    assert_eq!(calls.len(), 4);

    let in_redis = wait_for(Duration::from_secs(5), || {
        let r = stream_records(&redis, "kubesbc:cdr");
        (r.len() >= 4).then_some(r)
    })
    .expect("4 CDRs in the Redis stream kubesbc:cdr");
    let at_hook = wait_for(Duration::from_secs(5), || {
        let r = hook.records();
        (r.len() >= 4).then_some(r)
    })
    .expect("4 CDRs at the webhook");
    for records in [&in_redis, &at_hook] {
        assert_eq!(records.len(), 4, "{records:?}");
        for r in records.iter() {
            assert_eq!(r["kind"], "cdr");
            assert_eq!(r["type"], "call");
            assert_eq!(r["disposition"], "answered");
            assert_eq!(r["code"], 200);
            assert_eq!(r["backend"], backend_uri.as_str());
            assert_eq!(r["set"], 1);
            assert_eq!(r["replica"], "e2e-node");
            assert_eq!(r["failover_attempts"], 0);
            assert_eq!(r["ended_by"], "caller");
            assert!(calls.contains(r["call_id"].as_str().unwrap()), "{r}");
            assert!(r["answer"].as_f64().unwrap() >= r["start"].as_f64().unwrap());
        }
    }
    let held_cdr = in_redis
        .iter()
        .find(|r| r["duration_secs"].as_f64().unwrap() >= 3.5)
        .expect("the held call lasted about 4 s");
    assert!(held_cdr["duration_secs"].as_f64().unwrap() < 10.0);
    let series = format!(
        "sbc_calls_total{{destination=\"{backend_uri}\",disposition=\"answered\",set=\"1\"}}"
    );
    assert_eq!(bed.proxy.metric(&series), Some(4.0));
    assert_eq!(bed.proxy.metric("sbc_dialogs_active"), Some(0.0));
    assert!(
        bed.proxy.log_tail().contains("kubesbc::cdr"),
        "JSON log lines"
    );
}

#[test]
fn registrations_reach_redis_and_the_webhook_and_ctl_lists_them() {
    if !e2e_tools() || !sbc_only() || !require_tool("redis-server") {
        return;
    }
    let dir = TempDir::new("obs-reg");
    let redis = RedisServer::start(&dir);
    let hook = Receiver::start();
    let bed = Testbed::builder(&dir)
        .backend("registrar", "uas_register.xml")
        .config(&records_config(&redis, hook.addr))
        .start();
    let mut client = SipClient::udp(bed.proxy.sip_addr());
    let contact = format!("<sip:alice@{}>", client.local_addr());
    let req = RequestBuilder::new("REGISTER", "sip:example.com", &client)
        .set("From", "<sip:alice@example.com>;tag=r1")
        .set("To", "<sip:alice@example.com>")
        .set("Contact", &contact)
        .set("Expires", "600");
    let resp = client
        .request(&req.build(), Duration::from_secs(5))
        .expect("an answer to REGISTER");
    assert_eq!(resp.code, 200);

    let events = wait_for(Duration::from_secs(5), || {
        let r = stream_records(&redis, "kubesbc:registrations");
        (!r.is_empty()).then_some(r)
    })
    .expect("an event in kubesbc:registrations");
    let hooked = wait_for(Duration::from_secs(5), || {
        let r = hook.records();
        (!r.is_empty()).then_some(r)
    })
    .expect("an event at the webhook");
    for e in [&events[0], &hooked[0]] {
        assert_eq!(e["kind"], "registration");
        assert_eq!(e["user"], "sip:alice@example.com");
        assert_eq!(e["contact"], format!("sip:alice@{}", client.local_addr()));
        assert_eq!(e["expires"], 300, "the registrar's grant");
        assert_eq!(e["result"], "ok");
        assert_eq!(e["transport"], "udp");
        assert_eq!(e["source"], client.local_addr().to_string());
    }
    assert_eq!(
        bed.proxy.metric("sbc_registrations_total{result=\"ok\"}"),
        Some(1.0)
    );
    let listed = ctl(&dir, bed.proxy.admin(), &["registrations"]);
    assert!(
        listed.starts_with("AORS: 1\nAOR: sip:alice@example.com\n"),
        "{listed}"
    );
    assert!(
        listed.contains(&format!("CONTACT: sip:alice@{}", client.local_addr())),
        "{listed}"
    );
}

#[test]
fn dead_or_slow_collectors_change_nothing_for_calls_and_the_losses_are_counted() {
    if !e2e_tools() || !sbc_only() {
        return;
    }
    let dir = TempDir::new("obs-dead");
    // A webhook that accepts connections and never answers; Redis and the TCP HEP collector
    // where nothing listens.
    let slow = TcpListener::bind("127.0.0.1:0").unwrap();
    let slow_addr = slow.local_addr().unwrap();
    let (dead_redis, dead_hep_tcp, dead_hep_udp) = (free_port(), free_port(), free_port());
    let cfg = format!(
        "{LISTENER}observability:\n  hep:\n    collectors: [\"udp:127.0.0.1:{dead_hep_udp}\", \"tcp:127.0.0.1:{dead_hep_tcp}\"]\n  records:\n    redis:\n      url: \"redis://127.0.0.1:{dead_redis}/0\"\n      queueSize: 4\n    webhook:\n      url: \"http://{slow_addr}/in\"\n      flushMs: 50\n      timeoutMs: 200\n      attempts: 2\n      queueSize: 4\n      batchSize: 2\n"
    );
    let bed = Testbed::builder(&dir)
        .backend("uas", "uas.xml")
        .config(&cfg)
        .start();
    let opts = UacOptions::new(40, 20);
    bed.run_calls(&dir, "uac", "uac.xml", &opts)
        .assert_all_succeeded(40);
    let lost = |stage: &str| {
        bed.proxy
            .metric(&format!("sbc_observe_dropped_total{{stage=\"{stage}\"}}"))
            .unwrap_or(0.0)
    };
    let counted = wait_for(Duration::from_secs(10), || {
        (lost("webhook") >= 30.0 && lost("redis") >= 30.0).then_some(())
    });
    assert!(
        counted.is_some(),
        "webhook lost {}, redis lost {} of 40 CDRs",
        lost("webhook"),
        lost("redis")
    );
    drop(slow);
}

/// Metric names in a PromQL expression: identifiers followed by `{`, `[`, `)` or space that
/// are not functions, keywords or label names.
fn promql_metrics(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let b = expr.as_bytes();
    let mut i = 0;
    let mut in_braces = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'{' => in_braces += 1,
            b'}' => in_braces -= 1,
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += 1;
                }
            }
            _ if in_braces == 0 && (c.is_ascii_alphabetic() || c == b'_') => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':')
                {
                    i += 1;
                }
                let word = &expr[start..i];
                let rest = expr[i..].trim_start();
                let is_call = rest.starts_with('(');
                let after_by = expr[..start].trim_end().ends_with('(')
                    && (expr[..start].trim_end().ends_with("by (")
                        || expr[..start].trim_end().ends_with("by(")
                        || expr[..start].trim_end().ends_with("without (")
                        || expr[..start].trim_end().ends_with("without("));
                if (word.starts_with("sbc_") || word.starts_with("process_"))
                    && !is_call
                    && !after_by
                {
                    names.push(word.to_owned());
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    names
}

#[test]
fn every_metric_the_dashboard_queries_is_served_by_a_running_sbc() {
    if !e2e_tools() || !sbc_only() || !require_tool("redis-server") {
        return;
    }
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../charts/kubesbc/dashboards/kubesbc.json");
    let text = std::fs::read_to_string(&path).expect("dashboard JSON");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let mut exprs = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        for t in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().expect("expr").to_owned());
        }
    }
    assert!(exprs.len() >= 8, "{exprs:?}");
    let mut names: Vec<String> = exprs.iter().flat_map(|e| promql_metrics(e)).collect();
    names.sort();
    names.dedup();
    assert!(names.len() >= 10, "{names:?}");

    let dir = TempDir::new("obs-dash");
    let redis = RedisServer::start(&dir);
    let cfg = format!(
        "{LISTENER}{}accessLists:\n  - name: e2e/pike\n    flood:\n      requests: 1000\n      windowSecs: 2\n      banSecs: 60\nobservability:\n  records: {{}}\n",
        redis.store_config()
    );
    let bed = Testbed::builder(&dir)
        .backend("uas", "uas.xml")
        .config(&cfg)
        .start();
    bed.run_calls(&dir, "uac", "uac.xml", &UacOptions::new(1, 1))
        .assert_all_succeeded(1);
    let metrics = bed.proxy.metrics();
    let served = |name: &str| {
        metrics.lines().any(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
    };
    let missing: Vec<&String> = names.iter().filter(|n| !served(n)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics /metrics lacks: {missing:?}"
    );
}

#[test]
fn promql_metric_extraction() {
    assert_eq!(
        promql_metrics(
            "sum by (uri) (rate(sbc_calls_total{disposition=\"answered\"}[5m])) / histogram_quantile(0.99, sum by (le) (rate(sbc_call_setup_seconds_bucket[5m])))"
        ),
        vec!["sbc_calls_total", "sbc_call_setup_seconds_bucket"]
    );
}
