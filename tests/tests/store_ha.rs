//! The shared store beyond one Redis server, with real parts: a Sentinel set (master,
//! replica, three sentinels) whose master is SIGKILLed under a sipp call load, and a
//! three-master Redis Cluster. In both, a throttle's limits hold (429 over the limit), calls
//! keep being answered, and the fallback metrics show when the sbc decided locally.
//!
//! sbc only. Needs `redis-server`, `redis-sentinel` and `redis-cli` (Debian's packages);
//! under `CI=true` their absence fails.

use std::net::Ipv4Addr;
use std::time::Duration;

use kubesbc_e2e::sip::{RequestBuilder, SipClient, SipResponse};
use kubesbc_e2e::{
    CallRun, ClusterSet, Proxy, SentinelSet, SippTransport, TempDir, Testbed, UacOptions,
    require_tool, sbc_only, sleep_into_next_second, start_calls_from, wait_for,
};

const T: Duration = Duration::from_secs(3);

/// The tag every key of the throttle carries (its name in braces).
const THROTTLE_KEYS: &str = "e2e:thr:{e2e/ha}:*";

/// An sbc config: the store as `store` says, a throttle admitting 3 calls per second of
/// tenant acme and counting every other call (sipp's, without a tenant) as concurrent calls.
fn config(store: &str) -> String {
    format!(
        r#"
listeners: [{{transport: udp, address: "127.0.0.1:1"}}]
store:
{store}  keyPrefix: "e2e:"
  timeoutMs: 100
throttles:
  - name: e2e/ha
    response: {{code: 429, retryAfterSecs: 3}}
    default: {{concurrentCalls: 10000}}
    tenants:
      acme: {{callsPerSecond: 3}}
"#
    )
}

/// An INVITE of `tenant` and its final answer (retransmitted 200s of earlier calls, never
/// ACKed here, are skipped by Call-ID).
fn invite(ua: &mut SipClient, tenant: &str) -> SipResponse {
    let inv = RequestBuilder::invite("sip:bob@127.0.0.1", ua).set("X-Tenant-ID", tenant);
    let call_id = inv.get("Call-ID").unwrap_or_default().to_owned();
    ua.send(&inv.build());
    let r = loop {
        let r = ua.recv_final(T).expect("final answer to INVITE");
        if r.header("Call-ID") == Some(call_id.as_str()) {
            break r;
        }
    };
    if r.code >= 300 {
        ua.send(&inv.ack(&r).build());
    }
    r
}

/// `n` INVITEs of acme within one wall-clock second, through `uas` in turn: the codes.
fn acme_calls(uas: &mut [&mut SipClient], n: usize) -> Vec<u16> {
    sleep_into_next_second();
    (0..n)
        .map(|i| {
            let k = uas.len();
            let r = invite(uas[i % k], "acme");
            if r.code != 200 {
                assert_eq!(r.status_line, "SIP/2.0 429 Too Many Requests");
                assert_eq!(r.header("Retry-After"), Some("3"));
            }
            r.code
        })
        .collect()
}

/// Asserts that of `codes`, exactly `admitted` are 200 and the rest 429.
fn assert_limit(codes: &[u16], admitted: usize, when: &str) {
    let ok = codes.iter().filter(|c| **c == 200).count();
    let refused = codes.iter().filter(|c| **c == 429).count();
    assert_eq!(
        (ok, refused),
        (admitted, codes.len() - admitted),
        "{when}: {codes:?}"
    );
}

fn metric(p: &Proxy, series: &str) -> f64 {
    p.metric(series).unwrap_or(0.0)
}

fn sipp_load(dir: &TempDir, proxy: &Proxy, opts: &UacOptions) -> kubesbc_e2e::Sipp {
    start_calls_from(
        dir,
        "uac",
        "uac.xml",
        Ipv4Addr::new(127, 0, 0, 2),
        proxy.sip_addr(),
        SippTransport::Udp,
        opts,
    )
}

#[test]
fn sentinel_failover_under_load_keeps_limits_and_moves_to_the_new_master() {
    if !sbc_only()
        || !require_tool("sipp")
        || !require_tool("redis-server")
        || !require_tool("redis-sentinel")
    {
        return;
    }
    let dir = TempDir::new("store-sentinel");
    let mut set = SentinelSet::start(&dir);
    let store = format!(
        "  url: \"{}\"\n  mode: sentinel\n  sentinel: {{masterName: {}}}\n",
        set.url(),
        kubesbc_e2e::redis_ha::MASTER_NAME
    );
    let bed = Testbed::builder(&dir)
        .backend("uas", "uas.xml")
        .config(&config(&store))
        .start();
    let p = &bed.proxy;
    let mut ua = SipClient::udp(p.sip_addr());

    // Through the master Sentinel names: the limit holds and the counters are on it.
    assert_limit(&acme_calls(&mut [&mut ua], 6), 3, "on the master");
    let keys = set
        .master
        .command(&["KEYS", THROTTLE_KEYS])
        .unwrap_or_default();
    assert!(
        !keys.starts_with("*0"),
        "no throttle keys on the master: {keys}"
    );
    assert_eq!(metric(p, "sbc_store_backend_up"), 1.0);
    let fallbacks_before = metric(p, "sbc_store_fallbacks_total");

    // Calls under load; the master is SIGKILLed in the middle of them.
    let opts = UacOptions::new(120, 20);
    let uac = sipp_load(&dir, p, &opts);
    std::thread::sleep(Duration::from_secs(1));
    let old_port = set.master.port();
    set.master.stop();
    let down = wait_for(Duration::from_secs(3), || {
        (metric(p, "sbc_store_backend_up") == 0.0).then_some(())
    });
    assert!(down.is_some(), "the sbc did not notice the master's death");
    // The sentinels wait 3 s before calling the master down: the window is still open, and
    // the throttle decides on local state, still refusing over the limit.
    assert_limit(&acme_calls(&mut [&mut ua], 6), 3, "while falling back");
    assert_eq!(
        metric(p, "sbc_store_backend_up"),
        0.0,
        "the window closed before the check"
    );

    // Sentinel promotes the replica; the sbc follows it.
    let promoted = wait_for(Duration::from_secs(40), || {
        let port = set.master_port()?;
        (port != old_port).then_some(port)
    });
    assert_eq!(
        promoted,
        Some(set.replica.port()),
        "no failover; sentinel log: {}",
        set.sentinels[0].log_tail()
    );
    let back = wait_for(Duration::from_secs(15), || {
        (metric(p, "sbc_store_backend_up") == 1.0).then_some(())
    });
    assert!(
        back.is_some(),
        "the sbc did not go back to the store after the failover"
    );
    CallRun::finish(uac, &opts).assert_all_succeeded(120);
    let fallbacks = metric(p, "sbc_store_fallbacks_total") - fallbacks_before;
    assert!(
        fallbacks > 0.0,
        "no decision was taken locally: {fallbacks}"
    );

    // On the new master: the limit holds, its counters are written there, nothing falls back.
    let fallbacks_after = metric(p, "sbc_store_fallbacks_total");
    assert_limit(&acme_calls(&mut [&mut ua], 6), 3, "on the promoted master");
    let keys = set
        .replica
        .command(&["KEYS", "e2e:thr:{e2e/ha}:cps:t=acme:*"])
        .unwrap_or_default();
    assert!(
        !keys.starts_with("*0"),
        "no counters on the new master: {keys}"
    );
    assert_eq!(metric(p, "sbc_store_fallbacks_total"), fallbacks_after);
    assert_eq!(metric(p, "sbc_store_backend_up"), 1.0);
}

#[test]
fn cluster_of_three_masters_one_round_trip_per_decision_and_fallback_when_a_master_dies() {
    if !sbc_only()
        || !require_tool("sipp")
        || !require_tool("redis-server")
        || !require_tool("redis-cli")
    {
        return;
    }
    let dir = TempDir::new("store-cluster");
    let mut set = ClusterSet::start(&dir);
    let store = format!("  url: \"{}\"\n  mode: cluster\n", set.url());
    let cfg = config(&store);
    let a = Testbed::builder(&dir)
        .backend("uas", "uas.xml")
        .config(&cfg)
        .start();
    // Replica B relays to A's backend.
    let dir_b = TempDir::new("store-cluster-b");
    let b = Testbed::builder(&dir_b)
        .destination(&a.dests[0])
        .config(&cfg)
        .start();
    let (pa, pb) = (&a.proxy, &b.proxy);

    // A call run: every call answered; one round trip per decision (a split by slot would
    // count one per slot).
    let decisions = || metric(pa, "sbc_store_round_trips_total{op=\"batch\"}");
    let before = decisions();
    let opts = UacOptions::new(40, 20);
    CallRun::finish(sipp_load(&dir, pa, &opts), &opts).assert_all_succeeded(40);
    let trips = decisions() - before;
    assert!(
        (1.0..=40.0).contains(&trips),
        "batch round trips for 40 calls: {trips}"
    );

    // Two replicas share the counters: 3 of 10 calls in one second, in total.
    let mut ua_a = SipClient::udp(pa.sip_addr());
    let mut ua_b = SipClient::udp(pb.sip_addr());
    assert_limit(
        &acme_calls(&mut [&mut ua_a, &mut ua_b], 10),
        3,
        "across replicas",
    );
    for p in [pa, pb] {
        assert_eq!(metric(p, "sbc_store_backend_up"), 1.0);
        assert_eq!(
            metric(p, "sbc_store_fallbacks_total"),
            0.0,
            "a decision fell back"
        );
    }

    // Every key of the throttle is on one slot, and so on one master.
    let keys = set.keys(THROTTLE_KEYS);
    assert!(!keys.is_empty(), "no throttle keys in the cluster");
    let slots: std::collections::BTreeSet<Option<u16>> = keys.iter().map(|k| set.slot(k)).collect();
    assert_eq!(slots.len(), 1, "throttle keys on several slots: {keys:?}");
    let home = set.node_of(&keys[0]).map(|n| n.port());
    assert!(home.is_some(), "no node serves {}", keys[0]);

    // The master holding the throttle's slot dies under load: calls keep being answered,
    // decided locally, and the limit still holds on each replica.
    let before = metric(pa, "sbc_store_fallbacks_total");
    let uac = sipp_load(&dir, pa, &opts);
    std::thread::sleep(Duration::from_millis(500));
    if let Some(n) = set.nodes.iter_mut().find(|n| Some(n.port()) == home) {
        n.stop();
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_limit(
        &acme_calls(&mut [&mut ua_a], 6),
        3,
        "while the master is down",
    );
    CallRun::finish(uac, &opts).assert_all_succeeded(40);
    let fell_back = metric(pa, "sbc_store_fallbacks_total") - before;
    assert!(
        fell_back > 0.0,
        "no decision was taken locally: {fell_back}"
    );
}
