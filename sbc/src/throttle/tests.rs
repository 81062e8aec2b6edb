use std::collections::BTreeMap;
use std::net::SocketAddr;

use kubesbc_crds::config::Transport;
use kubesbc_crds::policy::ThrottleResponse;

use super::*;
use crate::store::MemoryStore;
use crate::store::testing::Counting;
use crate::transport::Peer;

/// A whole second plus 100 ms: windows are aligned to wall-clock seconds.
const START: Duration = Duration::from_millis(1_700_000_000_100);

fn limit(rps: Option<u32>, burst: Option<u32>, cps: Option<u32>, cc: Option<u32>) -> TenantLimit {
    TenantLimit {
        requests_per_second: rps,
        burst,
        calls_per_second: cps,
        concurrent_calls: cc,
    }
}

fn config(tenants: &[(&str, TenantLimit)], default: Option<TenantLimit>) -> ThrottleConfig {
    ThrottleConfig {
        name: "ns/tt".into(),
        header: "X-Tenant-ID".into(),
        tenants: tenants
            .iter()
            .map(|(n, l)| ((*n).to_owned(), l.clone()))
            .collect::<BTreeMap<_, _>>(),
        default,
        methods: vec!["INVITE".into()],
        response: ThrottleResponse {
            code: 429,
            retry_after_secs: 7,
        },
        missing_tenant: MissingTenant::Default,
        dialog_timeout_secs: 60,
    }
}

fn stage(cfg: ThrottleConfig) -> (ThrottleStage, Arc<dyn Store>) {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new(10_000));
    (
        ThrottleStage::new(&[cfg], store.clone(), "p:", Clock::at(START)),
        store,
    )
}

fn cx(method: Method, in_dialog: bool) -> RequestContext {
    RequestContext {
        peer: Peer {
            transport: Transport::Udp,
            addr: "127.0.0.1:5090".parse::<SocketAddr>().unwrap(),
            flow: None,
        },
        method,
        in_dialog,
    }
}

fn req(method: &str, call_id: &str, tenant: Option<&str>) -> Message {
    let t = tenant.map_or(String::new(), |t| format!("X-Tenant-ID: {t}\r\n"));
    let text = format!(
        "{method} sip:bob@example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bK{call_id}\r\n\
From: <sip:alice@example.com>;tag=a\r\n\
To: <sip:bob@example.com>\r\n\
Call-ID: {call_id}\r\n\
CSeq: 1 {method}\r\n\
{t}Content-Length: 0\r\n\r\n"
    );
    Message::parse(Bytes::from(text), 65535).unwrap()
}

async fn invite(st: &ThrottleStage, call_id: &str, tenant: Option<&str>) -> Verdict {
    let mut adm = Admission::default();
    st.check(
        &req("INVITE", call_id, tenant),
        &cx(Method::Invite, false),
        &mut adm,
    )
    .await
}

/// Lets the background releases and give-backs run.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

fn is_429(v: &Verdict) -> bool {
    matches!(v, Verdict::Reply(r) if r.code == 429
        && r.reason == "Too Many Requests"
        && r.headers == vec![("Retry-After", b"7".to_vec())])
}

#[tokio::test(start_paused = true)]
async fn calls_per_second_admits_n_per_second() {
    let (st, _) = stage(config(&[("acme", limit(None, None, Some(3), None))], None));
    let mut ok = 0;
    for i in 0..5 {
        let v = invite(&st, &format!("c{i}"), Some("acme")).await;
        if v == Verdict::Continue {
            ok += 1;
        } else {
            assert!(is_429(&v), "{v:?}");
        }
    }
    assert_eq!(ok, 3);
    settle().await;
    tokio::time::advance(Duration::from_secs(1)).await;
    let mut ok = 0;
    for i in 0..5 {
        ok += usize::from(invite(&st, &format!("d{i}"), Some("acme")).await == Verdict::Continue);
    }
    assert_eq!(ok, 3, "a new second admits the rate again");
}

#[tokio::test(start_paused = true)]
async fn requests_per_second_allow_a_burst_then_the_rate() {
    // 2 per second, burst 4: a 2 s sliding window of 4.
    let (st, store) = stage(config(
        &[("acme", limit(Some(2), Some(4), None, None))],
        None,
    ));
    let mut ok = 0;
    for i in 0..10 {
        ok += usize::from(invite(&st, &format!("a{i}"), Some("acme")).await == Verdict::Continue);
    }
    assert_eq!(ok, 4, "the burst");
    settle().await;
    // Refused requests were given back: only the 4 admitted count.
    let listed = store.list_prefix("p:thr:{ns/tt}:rps:", 10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].1, Bytes::from_static(b"4"));
    // Half-way into the next window half of the previous one still counts: 2 more fit.
    tokio::time::advance(Duration::from_millis(2900)).await;
    let mut ok = 0;
    for i in 0..5 {
        ok += usize::from(invite(&st, &format!("b{i}"), Some("acme")).await == Verdict::Continue);
    }
    assert_eq!(ok, 2);
    // Other methods are not counted (methods: [INVITE]).
    let mut adm = Admission::default();
    let v = st
        .check(
            &req("OPTIONS", "o1", Some("acme")),
            &cx(Method::Options, false),
            &mut adm,
        )
        .await;
    assert_eq!(v, Verdict::Continue);
}

#[tokio::test(start_paused = true)]
async fn concurrent_calls_are_released_by_failure_and_bye_once() {
    let (st, _) = stage(config(&[("acme", limit(None, None, None, Some(2)))], None));
    assert_eq!(invite(&st, "c1", Some("acme")).await, Verdict::Continue);
    assert_eq!(invite(&st, "c2", Some("acme")).await, Verdict::Continue);
    assert!(is_429(&invite(&st, "c3", Some("acme")).await));
    settle().await;

    // c1 fails (486): its slot is free again.
    st.on_final(
        &req("INVITE", "c1", Some("acme")),
        &cx(Method::Invite, false),
        486,
    );
    settle().await;
    assert_eq!(invite(&st, "c3", Some("acme")).await, Verdict::Continue);
    // c2 answered (200) is not released; its BYE (without the tenant header) is.
    st.on_final(
        &req("INVITE", "c2", Some("acme")),
        &cx(Method::Invite, false),
        200,
    );
    settle().await;
    assert!(is_429(&invite(&st, "c4", Some("acme")).await));
    settle().await;
    st.on_dialog_end(&req("BYE", "c2", None), &cx(Method::Bye, true));
    settle().await;
    assert_eq!(invite(&st, "c4", Some("acme")).await, Verdict::Continue);
    // A second BYE for c2 frees nothing more.
    st.on_dialog_end(&req("BYE", "c2", None), &cx(Method::Bye, true));
    settle().await;
    assert!(is_429(&invite(&st, "c5", Some("acme")).await));
    // A refused call's own final response (the 429) releases nothing either.
    st.on_final(
        &req("INVITE", "c5", Some("acme")),
        &cx(Method::Invite, false),
        429,
    );
    settle().await;
    assert!(is_429(&invite(&st, "c6", Some("acme")).await));
}

#[tokio::test(start_paused = true)]
async fn lost_bye_frees_capacity_after_the_dialog_timeout() {
    // dialogTimeoutSecs 60: buckets of 15 s, each kept 60 s after it ends.
    let (st, _) = stage(config(&[("acme", limit(None, None, None, Some(1)))], None));
    assert_eq!(invite(&st, "lost", Some("acme")).await, Verdict::Continue);
    // The tenant keeps trying every 10 s: still full while the call may be alive.
    for i in 0..6 {
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(
            is_429(&invite(&st, &format!("r{i}"), Some("acme")).await),
            "{i}"
        );
        settle().await;
    }
    tokio::time::advance(Duration::from_secs(16)).await;
    assert_eq!(invite(&st, "next", Some("acme")).await, Verdict::Continue);
}

#[tokio::test(start_paused = true)]
async fn tenants_do_not_share_limits_and_unknown_ones_get_the_default() {
    let (st, _) = stage(config(
        &[
            ("acme", limit(None, None, Some(1), None)),
            ("globex", limit(None, None, Some(1), None)),
        ],
        Some(limit(None, None, Some(2), None)),
    ));
    assert_eq!(invite(&st, "a1", Some("acme")).await, Verdict::Continue);
    assert!(is_429(&invite(&st, "a2", Some("acme")).await));
    assert_eq!(invite(&st, "g1", Some("globex")).await, Verdict::Continue);
    // Unknown tenants: the default limits, each on its own.
    for t in ["initech", "umbrella"] {
        assert_eq!(invite(&st, "u1", Some(t)).await, Verdict::Continue);
        assert_eq!(invite(&st, "u2", Some(t)).await, Verdict::Continue);
        assert!(is_429(&invite(&st, "u3", Some(t)).await));
    }
    // In-dialog INVITEs are not new calls.
    let mut adm = Admission::default();
    let v = st
        .check(
            &req("INVITE", "a1", Some("acme")),
            &cx(Method::Invite, true),
            &mut adm,
        )
        .await;
    assert_eq!(v, Verdict::Continue);
}

#[tokio::test(start_paused = true)]
async fn missing_tenant_policies() {
    let lim = Some(limit(None, None, Some(1), None));
    let mut cfg = config(&[], lim.clone());
    let (st, _) = stage(cfg.clone());
    // default: all header-less requests share the default limits.
    assert_eq!(invite(&st, "n1", None).await, Verdict::Continue);
    assert!(is_429(&invite(&st, "n2", None).await));
    // An unusable value counts as missing.
    assert!(is_429(&invite(&st, "n3", Some("a b/c")).await));

    cfg.missing_tenant = MissingTenant::Allow;
    let (st, _) = stage(cfg.clone());
    for i in 0..5 {
        assert_eq!(invite(&st, &format!("n{i}"), None).await, Verdict::Continue);
    }

    cfg.missing_tenant = MissingTenant::Reject;
    let (st, _) = stage(cfg);
    assert_eq!(
        invite(&st, "n1", None).await,
        Verdict::Reply(Refusal::new(403, "Tenant Required"))
    );
    assert_eq!(invite(&st, "t1", Some("anyone")).await, Verdict::Continue);
}

#[tokio::test(start_paused = true)]
async fn replicas_sharing_a_store_share_the_limit() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new(10_000));
    let cfg = config(&[("acme", limit(None, None, Some(4), Some(10)))], None);
    let a = ThrottleStage::new(
        std::slice::from_ref(&cfg),
        store.clone(),
        "p:",
        Clock::at(START),
    );
    let b = ThrottleStage::new(&[cfg], store.clone(), "p:", Clock::at(START));
    let mut ok = 0;
    for i in 0..6 {
        let st = if i % 2 == 0 { &a } else { &b };
        ok += usize::from(invite(st, &format!("x{i}"), Some("acme")).await == Verdict::Continue);
    }
    assert_eq!(ok, 4);
    // A call admitted at A is released by a BYE that B relays.
    settle().await;
    b.on_dialog_end(&req("BYE", "x0", None), &cx(Method::Bye, true));
    settle().await;
    let open = store.list_prefix("p:thr:{ns/tt}:cc:", 10).await.unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].1, Bytes::from_static(b"3"));
}

#[tokio::test(start_paused = true)]
async fn one_store_round_trip_per_invite_and_per_bye() {
    let store = Arc::new(Counting::default());
    let mut second = config(&[], None);
    second.name = "ns/second".into();
    second.default = Some(limit(None, None, Some(10), Some(5)));
    let st = ThrottleStage::new(
        &[
            config(
                &[("acme", limit(Some(10), Some(20), Some(10), Some(1)))],
                None,
            ),
            second,
        ],
        store.clone(),
        "p:",
        Clock::at(START),
    );
    // Two throttles, every limit: still one round trip for the decision.
    assert_eq!(invite(&st, "c1", Some("acme")).await, Verdict::Continue);
    settle().await;
    assert_eq!(store.take(), 1);
    // A refusal: the decision, then one give-back of all its counts.
    assert!(is_429(&invite(&st, "c2", Some("acme")).await));
    settle().await;
    assert_eq!(store.take(), 2);
    // Its counts were given back: c1's BYE frees the only slot for c3.
    st.on_dialog_end(&req("BYE", "c1", None), &cx(Method::Bye, true));
    settle().await;
    // One release per throttle counting calls, both in one round trip.
    assert_eq!(store.take(), 1);
    assert_eq!(invite(&st, "c3", Some("acme")).await, Verdict::Continue);
    settle().await;
    assert_eq!(store.take(), 1);
    // Calls ending together share a round trip: the BYEs relayed while one is in flight
    // go in the next.
    assert_eq!(invite(&st, "c4", None).await, Verdict::Continue);
    settle().await;
    store.take();
    st.on_dialog_end(&req("BYE", "c3", None), &cx(Method::Bye, true));
    st.on_dialog_end(&req("BYE", "c4", None), &cx(Method::Bye, true));
    settle().await;
    assert_eq!(store.take(), 1);
    let open = store
        .mem
        .list_prefix("p:thr:{ns/second}:cc:", 10)
        .await
        .unwrap();
    assert!(
        open.iter().all(|(_, v)| v.as_ref() == b"0"),
        "every slot given back: {open:?}"
    );
}
