use std::net::SocketAddr;

use super::*;
use crate::config::Transport;
use crate::store::MemoryStore;
use crate::store::keys::MAX_USER;
use crate::transport::Peer;
use kubesbc_crds::policy::{AccessAction, AccessRule, HeaderValue};

fn rule(action: AccessAction) -> AccessRule {
    AccessRule {
        action,
        sources: vec![],
        user_agents: vec![],
        from_domains: vec![],
        required_headers: vec![],
        methods: vec![],
        response_code: 403,
    }
}

fn list(rules: Vec<AccessRule>) -> AccessListConfig {
    AccessListConfig {
        name: "ns/acl".into(),
        rules,
        default_action: AccessAction::Allow,
        flood: None,
        register_flood: None,
        trusted: vec![],
        drop_scanners: false,
        ban_response_code: None,
    }
}

struct Req {
    method: &'static str,
    uri: String,
    headers: Vec<String>,
}

fn req(method: &'static str) -> Req {
    Req {
        method,
        uri: "sip:bob@127.0.0.1:5060".into(),
        headers: vec![],
    }
}

impl Req {
    fn uri(mut self, u: &str) -> Req {
        self.uri = u.into();
        self
    }
    fn h(mut self, line: &str) -> Req {
        self.headers.push(line.into());
        self
    }
    fn build(&self) -> Message {
        let mut s = format!(
            "{m} {u} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-1\r\nMax-Forwards: 70\r\nCall-ID: c1\r\nCSeq: 1 {m}\r\n",
            m = self.method,
            u = self.uri
        );
        let has = |n: &str| {
            self.headers
                .iter()
                .any(|h| h.to_ascii_lowercase().starts_with(&format!("{n}:")))
        };
        if !has("from") {
            s.push_str("From: <sip:alice@example.com>;tag=a\r\n");
        }
        if !has("to") {
            s.push_str("To: <sip:bob@example.com>\r\n");
        }
        for h in &self.headers {
            s.push_str(h);
            s.push_str("\r\n");
        }
        s.push_str("Content-Length: 0\r\n\r\n");
        Message::parse(Bytes::from(s), 65535).unwrap()
    }
}

fn cx(ip: &str, method: Method) -> RequestContext {
    RequestContext {
        peer: Peer {
            transport: Transport::Udp,
            addr: SocketAddr::new(ip.parse().unwrap(), 5070),
            flow: None,
        },
        method,
        in_dialog: false,
    }
}

fn guard(lists: Vec<AccessListConfig>) -> Guard {
    Guard::new(&lists, Arc::new(MemoryStore::new(10_000)))
}

async fn verdict(g: &Guard, r: &Req, ip: &str) -> Verdict {
    let m = r.build();
    let method = m.method().unwrap();
    g.decide(&m, &cx(ip, method)).await
}

fn refused(code: u16, reason: &str) -> Verdict {
    Verdict::Reply(Refusal::new(code, reason.to_owned()))
}

#[test]
fn cidrs_v4_v6_and_mapped() {
    let c = Cidr::parse("10.1.0.0/16").unwrap();
    assert!(c.contains("10.1.200.3".parse().unwrap()));
    assert!(!c.contains("10.2.0.1".parse().unwrap()));
    assert!(!c.contains("2001:db8::1".parse().unwrap()));
    let c6 = Cidr::parse("2001:db8::/32").unwrap();
    assert!(c6.contains("2001:db8:ffff::1".parse().unwrap()));
    assert!(!c6.contains("2001:db9::1".parse().unwrap()));
    let all = Cidr::parse("0.0.0.0/0").unwrap();
    assert!(all.contains("192.0.2.1".parse().unwrap()));
    let host = Cidr::parse("192.0.2.7").unwrap();
    assert!(host.contains("192.0.2.7".parse().unwrap()));
    assert!(!host.contains("192.0.2.8".parse().unwrap()));
    // An IPv4-mapped peer address matches the IPv4 network.
    let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
    assert!(c.contains(mapped.to_canonical()));
    assert!(Cidr::parse("10.0.0.0/33").is_none());
    assert!(Cidr::parse("nope").is_none());
}

#[test]
fn constant_time_compare() {
    assert!(rules::constant_time_eq(b"s3cret", b"s3cret"));
    assert!(!rules::constant_time_eq(b"s3cre", b"s3cret"));
    assert!(!rules::constant_time_eq(b"s3cretX", b"s3cret"));
    assert!(!rules::constant_time_eq(b"S3cret", b"s3cret"));
    assert!(!rules::constant_time_eq(b"", b"s3cret"));
}

#[tokio::test]
async fn scanners_are_refused_case_insensitively_or_dropped() {
    let mut r = rule(AccessAction::Deny);
    r.user_agents = [
        "friendly-scanner",
        "sipvicious",
        "sipcli",
        "VaxSIPUserAgent",
    ]
    .map(String::from)
    .to_vec();
    let g = guard(vec![list(vec![r.clone()])]);
    for ua in [
        "friendly-scanner",
        "SIPVicious 0.3",
        "sipcli/v1.8",
        "vaxsipuseragent/3.1",
    ] {
        let v = verdict(
            &g,
            &req("OPTIONS").h(&format!("User-Agent: {ua}")),
            "192.0.2.1",
        )
        .await;
        assert_eq!(v, refused(403, "Forbidden (scanner)"), "{ua}");
    }
    let ok = verdict(&g, &req("INVITE").h("User-Agent: Linphone/5"), "192.0.2.1").await;
    assert_eq!(ok, Verdict::Continue);
    assert_eq!(
        verdict(&g, &req("INVITE"), "192.0.2.1").await,
        Verdict::Continue
    );

    let mut l = list(vec![r]);
    l.drop_scanners = true;
    let g = guard(vec![l]);
    let v = verdict(
        &g,
        &req("OPTIONS").h("User-Agent: friendly-scanner"),
        "192.0.2.1",
    )
    .await;
    assert_eq!(v, Verdict::Drop);
}

#[tokio::test]
async fn source_cidrs_allow_then_default_deny() {
    let mut allow = rule(AccessAction::Allow);
    allow.sources = vec!["10.0.0.0/8".into(), "2001:db8::/32".into()];
    let mut l = list(vec![allow]);
    l.default_action = AccessAction::Deny;
    let g = guard(vec![l]);
    assert_eq!(
        verdict(&g, &req("INVITE"), "10.9.8.7").await,
        Verdict::Continue
    );
    assert_eq!(
        verdict(&g, &req("INVITE"), "2001:db8::5").await,
        Verdict::Continue
    );
    assert_eq!(
        verdict(&g, &req("INVITE"), "192.0.2.1").await,
        refused(403, "Forbidden (access list)")
    );
    assert_eq!(
        verdict(&g, &req("INVITE"), "2001:db9::5").await,
        refused(403, "Forbidden (access list)")
    );

    let mut deny = rule(AccessAction::Deny);
    deny.sources = vec!["192.0.2.0/24".into()];
    deny.response_code = 603;
    let g = guard(vec![list(vec![deny])]);
    assert_eq!(
        verdict(&g, &req("INVITE"), "192.0.2.200").await,
        refused(603, "Decline (source address)")
    );
    assert_eq!(
        verdict(&g, &req("INVITE"), "192.0.3.1").await,
        Verdict::Continue
    );
}

#[tokio::test]
async fn from_domains_and_method_scope() {
    let mut r = rule(AccessAction::Deny);
    r.from_domains = vec!["evil.example".into()];
    r.methods = vec!["INVITE".into()];
    let g = guard(vec![list(vec![r])]);
    let evil = |m| req(m).h("From: \"x\" <sip:a@EVIL.example>;tag=1");
    assert_eq!(
        verdict(&g, &evil("INVITE"), "192.0.2.1").await,
        refused(403, "Forbidden (from domain)")
    );
    // Out of the rule's methods: not refused.
    assert_eq!(
        verdict(&g, &evil("MESSAGE"), "192.0.2.1").await,
        Verdict::Continue
    );
    assert_eq!(
        verdict(&g, &req("INVITE"), "192.0.2.1").await,
        Verdict::Continue
    );
}

#[tokio::test]
async fn required_header_with_secret() {
    let mut r = rule(AccessAction::Deny);
    r.required_headers = vec![HeaderValue {
        name: "X-Company-Signature".into(),
        value: Some("s3cret".into()),
        value_file: None,
    }];
    r.methods = vec!["INVITE".into()];
    let g = guard(vec![list(vec![r])]);
    let want = refused(403, "Forbidden - Invalid Signature");
    assert_eq!(verdict(&g, &req("INVITE"), "192.0.2.1").await, want);
    assert_eq!(
        verdict(
            &g,
            &req("INVITE").h("X-Company-Signature: wrong"),
            "192.0.2.1"
        )
        .await,
        want
    );
    assert_eq!(
        verdict(
            &g,
            &req("INVITE").h("x-company-signature: s3cret"),
            "192.0.2.1"
        )
        .await,
        Verdict::Continue
    );
    assert_eq!(
        verdict(&g, &req("OPTIONS"), "192.0.2.1").await,
        Verdict::Continue
    );
}

#[tokio::test]
async fn every_list_must_allow() {
    let mut a = rule(AccessAction::Allow);
    a.sources = vec!["192.0.2.0/24".into()];
    let first = list(vec![a]);
    let mut d = rule(AccessAction::Deny);
    d.user_agents = vec!["sipvicious".into()];
    let second = list(vec![d]);
    let g = guard(vec![first, second]);
    assert_eq!(
        verdict(&g, &req("INVITE").h("User-Agent: sipvicious"), "192.0.2.1").await,
        refused(403, "Forbidden (scanner)")
    );
}

#[tokio::test]
async fn multicast_link_local_and_mdns_targets() {
    let g = guard(vec![]);
    for (uri, reason) in [
        ("sip:bob@224.0.0.1", "Forbidden (multicast target)"),
        (
            "sip:bob@239.255.255.250:5060",
            "Forbidden (multicast target)",
        ),
        ("sip:bob@255.255.255.255", "Forbidden (multicast target)"),
        ("sip:bob@[ff02::1]", "Forbidden (multicast target)"),
        ("sip:bob@169.254.1.1", "Forbidden (link-local target)"),
        ("sip:bob@[fe80::1]:5060", "Forbidden (link-local target)"),
        ("sip:bob@printer.local", "Forbidden (mDNS .local target)"),
        ("sip:bob@printer.LOCAL.", "Forbidden (mDNS .local target)"),
    ] {
        assert_eq!(
            verdict(&g, &req("INVITE").uri(uri), "192.0.2.1").await,
            refused(403, reason),
            "{uri}"
        );
    }
    let routed = req("INVITE").h("Route: <sip:127.0.0.1;lr>, <sip:[ff05::2];lr>");
    assert_eq!(
        verdict(&g, &routed, "192.0.2.1").await,
        refused(403, "Forbidden (multicast target)")
    );
    for ok in [
        "sip:bob@example.com",
        "sip:bob@localhost",
        "sip:bob@192.0.2.9",
    ] {
        assert_eq!(
            verdict(&g, &req("INVITE").uri(ok), "192.0.2.1").await,
            Verdict::Continue,
            "{ok}"
        );
    }
}

/// The sbc's own inside Service name (`*.svc.cluster.local`) in a Route is its Record-Route
/// coming back, not an mDNS target; another `.local` Route still is.
#[tokio::test]
async fn the_sbcs_own_cluster_local_name_in_a_route_is_not_an_mdns_target() {
    let g = guard(vec![]).with_own_hosts(vec!["sbc.voice.svc.cluster.local".into()]);
    let ours =
        req("BYE").h("Route: <sip:sbc.voice.svc.cluster.local:5060;lr>, <sip:203.0.113.9;lr>");
    assert_eq!(verdict(&g, &ours, "192.0.2.1").await, Verdict::Continue);
    let other = req("BYE").h("Route: <sip:other.voice.svc.cluster.local:5060;lr>");
    assert_eq!(
        verdict(&g, &other, "192.0.2.1").await,
        refused(403, "Forbidden (mDNS .local target)")
    );
}

fn flood_list(requests: u32) -> AccessListConfig {
    let mut l = list(vec![]);
    l.flood = Some(FloodLimit {
        requests,
        window_secs: 2,
        ban_secs: 60,
    });
    l
}

#[tokio::test(start_paused = true)]
async fn flood_bans_the_source_until_the_ban_expires() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new(10_000));
    let g = Guard::new(&[flood_list(5)], store.clone());
    for _ in 0..5 {
        assert_eq!(
            verdict(&g, &req("OPTIONS"), "192.0.2.1").await,
            Verdict::Continue
        );
    }
    assert_eq!(
        verdict(&g, &req("OPTIONS"), "192.0.2.1").await,
        Verdict::Drop
    );
    // Banned: even a request in a new window gets nothing.
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(
        verdict(&g, &req("INVITE"), "192.0.2.1").await,
        Verdict::Drop
    );
    // Another source is not affected.
    assert_eq!(
        verdict(&g, &req("INVITE"), "192.0.2.2").await,
        Verdict::Continue
    );
    let bans = list_bans(store.as_ref()).await.unwrap();
    assert_eq!(
        bans,
        vec![BanEntry {
            ip: "192.0.2.1".into(),
            reason: "flood".into(),
            remaining_secs: 55
        }]
    );
    tokio::time::advance(Duration::from_secs(56)).await;
    assert_eq!(
        verdict(&g, &req("INVITE"), "192.0.2.1").await,
        Verdict::Continue
    );
    assert!(list_bans(store.as_ref()).await.unwrap().is_empty());
}

/// Two replicas' guards sharing one store, syncing as the sbc runs them.
fn replicas(limit: u32) -> (Guard, Guard, Arc<dyn Store>) {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new(10_000));
    let a = Guard::new(&[flood_list(limit)], store.clone()).start();
    let b = Guard::new(&[flood_list(limit)], store.clone()).start();
    (a, b, store)
}

#[tokio::test(start_paused = true)]
async fn a_ban_set_through_one_replica_is_enforced_by_another_that_knows_the_source() {
    let (a, b, _) = replicas(5);
    // B has seen the source already, so it decides it locally from now on.
    assert_eq!(
        verdict(&b, &req("OPTIONS"), "192.0.2.9").await,
        Verdict::Continue
    );
    tokio::time::sleep(flood::SYNC_INTERVAL * 2).await;
    for _ in 0..4 {
        assert_eq!(
            verdict(&a, &req("OPTIONS"), "192.0.2.9").await,
            Verdict::Continue
        );
    }
    assert_eq!(
        verdict(&a, &req("OPTIONS"), "192.0.2.9").await,
        Verdict::Drop
    );
    tokio::time::sleep(flood::SYNC_INTERVAL * 2).await;
    assert_eq!(
        verdict(&b, &req("OPTIONS"), "192.0.2.9").await,
        Verdict::Drop
    );
}

#[tokio::test(start_paused = true)]
async fn tallies_of_all_replicas_add_up_to_a_ban() {
    let (a, b, store) = replicas(10);
    // Six requests through each replica: under the limit for each, over it together.
    for g in [&a, &b] {
        for _ in 0..6 {
            assert_eq!(
                verdict(g, &req("OPTIONS"), "192.0.2.10").await,
                Verdict::Continue
            );
        }
    }
    // Each replica learns the total at its next sync (or asks, once its knowledge is old).
    tokio::time::sleep(flood::SYNC_INTERVAL * 3).await;
    for g in [&a, &b] {
        assert_eq!(
            verdict(g, &req("OPTIONS"), "192.0.2.10").await,
            Verdict::Drop
        );
    }
    let bans = list_bans(store.as_ref()).await.unwrap();
    assert_eq!(bans.len(), 1, "{bans:?}");
    assert_eq!(bans[0].ip, "192.0.2.10");
}

#[tokio::test(start_paused = true)]
async fn requests_spread_over_windows_are_not_a_flood() {
    let g = guard(vec![flood_list(3)]);
    for _ in 0..10 {
        for _ in 0..3 {
            assert_eq!(
                verdict(&g, &req("OPTIONS"), "192.0.2.1").await,
                Verdict::Continue
            );
        }
        tokio::time::advance(Duration::from_secs(2)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn ban_answer_and_removal() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new(10_000));
    let mut l = flood_list(1);
    l.ban_response_code = Some(403);
    let g = Guard::new(&[l], store.clone()).start();
    assert_eq!(
        verdict(&g, &req("OPTIONS"), "2001:db8::7").await,
        Verdict::Continue
    );
    assert_eq!(
        verdict(&g, &req("OPTIONS"), "2001:db8::7").await,
        refused(403, "Forbidden (banned)")
    );
    assert!(
        remove_ban(store.as_ref(), "2001:db8::7".parse().unwrap())
            .await
            .unwrap()
    );
    assert!(
        !remove_ban(store.as_ref(), "2001:db8::7".parse().unwrap())
            .await
            .unwrap()
    );
    // Still banned here until the next sync tells this replica the ban is gone.
    assert_eq!(
        verdict(&g, &req("OPTIONS"), "2001:db8::7").await,
        refused(403, "Forbidden (banned)")
    );
    tokio::time::sleep(crate::guard::flood::SYNC_INTERVAL * 2).await;
    // The counter was reset with the ban: one more request fits.
    assert_eq!(
        verdict(&g, &req("OPTIONS"), "2001:db8::7").await,
        Verdict::Continue
    );
}

#[tokio::test(start_paused = true)]
async fn trusted_sources_are_never_banned() {
    let mut l = flood_list(2);
    l.trusted = vec!["10.0.0.0/8".into()];
    let g = guard(vec![l]).with_trusted(Arc::new(|a: std::net::SocketAddr| {
        a.ip() == IpAddr::from([192, 0, 2, 50])
    }));
    for _ in 0..20 {
        assert_eq!(
            verdict(&g, &req("OPTIONS"), "10.1.1.1").await,
            Verdict::Continue
        );
        assert_eq!(
            verdict(&g, &req("OPTIONS"), "192.0.2.50").await,
            Verdict::Continue
        );
    }
    for _ in 0..2 {
        assert_eq!(
            verdict(&g, &req("OPTIONS"), "192.0.2.51").await,
            Verdict::Continue
        );
    }
    assert_eq!(
        verdict(&g, &req("OPTIONS"), "192.0.2.51").await,
        Verdict::Drop
    );
}

#[tokio::test(start_paused = true)]
async fn register_flood_without_auth_blocks_the_source_not_the_user() {
    let mut l = list(vec![]);
    l.register_flood = Some(FloodLimit {
        requests: 3,
        window_secs: 10,
        ban_secs: 120,
    });
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new(10_000));
    let g = Guard::new(&[l], store.clone());
    let reg = |user: &str| {
        req("REGISTER")
            .uri("sip:example.com")
            .h(&format!("To: <sip:{user}@example.com>"))
    };
    // An attacker floods REGISTERs naming alice.
    for _ in 0..3 {
        assert_eq!(
            verdict(&g, &reg("alice"), "192.0.2.1").await,
            Verdict::Continue
        );
    }
    // The attacker's source is blocked, whatever user it names...
    for user in ["alice", "bob"] {
        assert_eq!(
            verdict(&g, &reg(user), "192.0.2.1").await,
            refused(403, "Blocked")
        );
    }
    // ... and alice herself, from her own address, is not.
    assert_eq!(
        verdict(&g, &reg("alice"), "192.0.2.9").await,
        Verdict::Continue
    );
    // Other methods of the source are not affected.
    assert_eq!(
        verdict(&g, &req("INVITE"), "192.0.2.1").await,
        Verdict::Continue
    );
    assert!(!is_blocked(store.as_ref(), "alice").await.unwrap());
    tokio::time::advance(Duration::from_secs(121)).await;
    assert_eq!(
        verdict(&g, &reg("alice"), "192.0.2.1").await,
        Verdict::Continue
    );
}

#[tokio::test(start_paused = true)]
async fn with_auth_on_register_the_guard_leaves_register_floods_to_auth() {
    let mut l = list(vec![]);
    l.register_flood = Some(FloodLimit {
        requests: 1,
        window_secs: 10,
        ban_secs: 120,
    });
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new(10_000));
    let g = Guard::new(&[l], store.clone()).with_register_auth(true);
    let reg = req("REGISTER")
        .uri("sip:example.com")
        .h("To: <sip:carol@example.com>");
    for _ in 0..5 {
        assert_eq!(verdict(&g, &reg, "192.0.2.1").await, Verdict::Continue);
    }
    // A user blocked for a flood of her own authenticated REGISTERs is the auth stage's
    // business (it checks the block once the credentials verify), not the guard's.
    block_user(store.as_ref(), "carol", Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(verdict(&g, &reg, "192.0.2.1").await, Verdict::Continue);
}

#[test]
fn keys_are_bounded_and_formatted() {
    let k = IpKey::new(
        BAN_PREFIX,
        "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"
            .parse()
            .unwrap(),
    );
    assert!(k.as_str().starts_with("ban:{ffff:") && k.as_str().ends_with('}'));
    assert_eq!(
        IpKey::new(FLOOD_PREFIX, "192.0.2.1".parse().unwrap()).as_str(),
        "flood:{192.0.2.1}"
    );
    let long = "a".repeat(1000);
    assert_eq!(user_key(&long).len(), REGBLOCK_PREFIX.len() + MAX_USER + 2);
}

#[tokio::test]
async fn metrics_count_refusals() {
    let registry = Registry::new();
    let mut r = rule(AccessAction::Deny);
    r.user_agents = vec!["sipvicious".into()];
    let g = guard(vec![list(vec![r])]).with_metrics(GuardMetrics::new(&registry).unwrap());
    verdict(&g, &req("OPTIONS").h("User-Agent: sipvicious"), "192.0.2.1").await;
    verdict(&g, &req("OPTIONS").uri("sip:x@224.0.0.1"), "192.0.2.1").await;
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    assert!(
        text.contains("sbc_guard_refused_total{reason=\"rule\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("sbc_guard_refused_total{reason=\"target\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn known_scanners_are_dropped_with_no_access_list_and_counted_per_rule() {
    let registry = Registry::new();
    let g = guard(vec![]).with_metrics(GuardMetrics::new(&registry).unwrap());
    for ua in [
        "friendly-scanner",
        "SIPVicious 0.3",
        "sipcli/v1.8",
        "VaxSIPUserAgent/3.5",
    ] {
        let r = req("REGISTER").h(&format!("User-Agent: {ua}"));
        assert_eq!(verdict(&g, &r, "192.0.2.1").await, Verdict::Drop, "{ua}");
    }
    let phone = req("REGISTER").h("User-Agent: Linphone/5.2 (belle-sip)");
    assert_eq!(verdict(&g, &phone, "192.0.2.1").await, Verdict::Continue);
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    for (rule, n) in [
        ("friendly-scanner", 1),
        ("sipvicious", 1),
        ("sipcli", 1),
        ("vaxsipuseragent", 1),
    ] {
        assert!(
            text.contains(&format!("sbc_guard_scanners_total{{rule=\"{rule}\"}} {n}")),
            "{rule}: {text}"
        );
    }
    assert!(
        text.contains("sbc_guard_scanners_total{rule=\"iwar\"} 0"),
        "{text}"
    );
}

#[tokio::test]
async fn scanner_defence_rejects_when_asked_exempts_trusted_and_switches_off() {
    use kubesbc_crds::config::{ScannerAction, ScannerDefence};
    let scanner = req("OPTIONS").h("User-Agent: friendly-scanner");
    let reject = guard(vec![]).with_scanners(&ScannerDefence {
        enabled: true,
        action: ScannerAction::Reject,
    });
    assert_eq!(
        verdict(&reject, &scanner, "192.0.2.1").await,
        refused(403, "Forbidden (scanner)")
    );
    let mut l = list(vec![]);
    l.trusted = vec!["10.0.0.0/8".into()];
    let trusting = guard(vec![l]);
    assert_eq!(
        verdict(&trusting, &scanner, "10.1.2.3").await,
        Verdict::Continue
    );
    assert_eq!(
        verdict(&trusting, &scanner, "192.0.2.1").await,
        Verdict::Drop
    );
    let off = guard(vec![]).with_scanners(&ScannerDefence {
        enabled: false,
        action: ScannerAction::Drop,
    });
    assert_eq!(
        verdict(&off, &scanner, "192.0.2.1").await,
        Verdict::Continue
    );
}

#[tokio::test]
async fn proxy_require_gets_420_with_unsupported() {
    let g = guard(vec![]);
    let r = req("OPTIONS").h("Proxy-Require: sec-agree");
    assert_eq!(
        verdict(&g, &r, "192.0.2.1").await,
        Verdict::Reply(Refusal::new(420, "Bad Extension").with_header("Unsupported", "sec-agree"))
    );
    let r = req("OPTIONS").h("Require: 100rel");
    assert_eq!(verdict(&g, &r, "192.0.2.1").await, Verdict::Continue);
}
