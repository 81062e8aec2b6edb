use std::collections::BTreeMap;
use std::net::SocketAddr;

use kubesbc_crds::config::Transport;
use kubesbc_crds::policy::AuthFailureBlock;
use prometheus::Registry;

use super::*;
use crate::store::MemoryStore;
use crate::transport::Peer;

const SECRET: &str = "shared-secret-0123456789";
const REALM: &str = "sbc.example.com";
const START: Duration = Duration::from_secs(1_700_000_000);
const UA: &str = "127.0.0.1:5090";

fn config() -> AuthConfig {
    AuthConfig {
        realm: Some(REALM.into()),
        methods: BTreeMap::from([
            ("INVITE".into(), Challenge::Proxy),
            ("REGISTER".into(), Challenge::Www),
        ]),
        trusted_sources: vec!["10.9.0.0/16".into()],
        nonce_secret: SECRET.into(),
        nonce_secret_file: None,
        nonce_lifetime_secs: 300,
        algorithms: vec![DigestAlgorithm::Sha256, DigestAlgorithm::Md5],
        subscriber_prefix: "subscriber:".into(),
        credentials_key: DEFAULT_CREDENTIALS_KEY.into(),
        failure_block: Some(AuthFailureBlock {
            max_failures: 3,
            window_secs: 60,
            block_secs: 120,
        }),
        check_identity: true,
    }
}

/// A memory store holding alice's credentials (password "secret") at `key`.
async fn provisioned_at(key: &str) -> Arc<dyn Store> {
    let s: Arc<dyn Store> = Arc::new(MemoryStore::new(10_000));
    let ha1 = |alg| {
        Bytes::copy_from_slice(digest::h(alg, &[b"alice", REALM.as_bytes(), b"secret"]).as_bytes())
    };
    let fields = vec![
        ("username".into(), Bytes::from_static(b"alice")),
        ("domain".into(), Bytes::from_static(REALM.as_bytes())),
        ("ha1".into(), ha1(DigestAlgorithm::Md5)),
        ("ha1sha256".into(), ha1(DigestAlgorithm::Sha256)),
    ];
    s.hash_set(key, fields, None).await.unwrap();
    s
}

async fn provisioned() -> Arc<dyn Store> {
    provisioned_at("subscriber:alice").await
}

/// A stage on `store` with `cfg`, its metrics on a registry of its own.
fn stage_with(store: &Arc<dyn Store>, cfg: AuthConfig) -> (AuthStage, Registry) {
    let registry = Registry::new();
    let metrics = AuthMetrics::new(&registry).unwrap();
    let st = AuthStage::new(cfg, store.clone(), "t:", Clock::at(START)).with_metrics(metrics);
    (st, registry)
}

fn stage(store: &Arc<dyn Store>) -> AuthStage {
    stage_with(store, config()).0
}

/// The value of one sample in the registry's text exposition (0 when absent).
fn sample(registry: &Registry, series: &str) -> u64 {
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

fn auth_total(registry: &Registry, method: &str, result: &str) -> u64 {
    sample(
        registry,
        &format!("sbc_auth_total{{method=\"{method}\",result=\"{result}\"}}"),
    )
}

fn cx_from(method: Method, from: &str) -> RequestContext {
    RequestContext {
        peer: Peer {
            transport: Transport::Udp,
            addr: from.parse::<SocketAddr>().unwrap(),
            flow: None,
        },
        method,
        in_dialog: false,
    }
}

fn ruri(method: &str) -> &'static str {
    if method == "REGISTER" {
        "sip:sbc.example.com"
    } else {
        "sip:bob@sbc.example.com"
    }
}

fn request(method: &str, extra: &str) -> Message {
    let ruri = ruri(method);
    // A REGISTER is for the registering user's own address of record.
    let to = if method == "REGISTER" { "alice" } else { "bob" };
    let text = format!(
        "{method} {ruri} SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bK1\r\n\
From: <sip:alice@sbc.example.com>;tag=a\r\n\
To: <sip:{to}@sbc.example.com>\r\n\
Call-ID: c1\r\n\
CSeq: 1 {method}\r\n\
{extra}Content-Length: 0\r\n\r\n"
    );
    Message::parse(Bytes::from(text), 65535).unwrap()
}

/// What a UA does: one method, one algorithm, one user and password.
#[derive(Clone, Copy)]
struct Ua<'a> {
    method: &'a str,
    alg: DigestAlgorithm,
    user: &'a str,
    password: &'a str,
}

const ALICE_REGISTER: Ua<'static> = Ua {
    method: "REGISTER",
    alg: DigestAlgorithm::Md5,
    user: "alice",
    password: "secret",
};

const ALICE_INVITE: Ua<'static> = Ua {
    method: "INVITE",
    ..ALICE_REGISTER
};

impl Ua<'_> {
    fn kind(&self) -> Method {
        Method::from_bytes(self.method.as_bytes())
    }

    fn cx(&self) -> RequestContext {
        cx_from(self.kind(), UA)
    }

    fn header(&self) -> &'static str {
        if self.method == "REGISTER" {
            "Authorization"
        } else {
            "Proxy-Authorization"
        }
    }

    /// Sends the request without credentials and returns the nonce of its challenge.
    async fn nonce(&self, st: &AuthStage) -> String {
        let (v, _) = run(st, &request(self.method, ""), &self.cx()).await;
        nonce_of(&v, digest::algorithm_name(self.alg))
    }

    /// The credentials header line for `nonce` and `nc`.
    fn credentials(&self, nonce: &str, nc: &str) -> String {
        let ruri = ruri(self.method);
        let alg = self.alg;
        let ha1 = digest::h(
            alg,
            &[
                self.user.as_bytes(),
                REALM.as_bytes(),
                self.password.as_bytes(),
            ],
        );
        let r = digest::response(
            alg,
            false,
            ha1.as_bytes(),
            nonce.as_bytes(),
            nc.as_bytes(),
            b"cn0",
            self.method.as_bytes(),
            ruri.as_bytes(),
        );
        format!(
            "{}: Digest username=\"{}\", realm=\"{REALM}\", nonce=\"{nonce}\", \
uri=\"{ruri}\", response=\"{r:?}\", algorithm={}, qop=auth, nc={nc}, cnonce=\"cn0\"\r\n",
            self.header(),
            self.user,
            digest::algorithm_name(alg)
        )
    }

    /// Sends the request with credentials for `nonce` and `nc`.
    async fn answer(&self, st: &AuthStage, nonce: &str, nc: &str) -> (Verdict, Admission) {
        self.send(st, &self.credentials(nonce, nc)).await
    }

    /// Sends the request with `extra` header lines.
    async fn send(&self, st: &AuthStage, extra: &str) -> (Verdict, Admission) {
        run(st, &request(self.method, extra), &self.cx()).await
    }
}

/// The first challenge header's nonce for `alg` in a refusal.
fn nonce_of(v: &Verdict, alg: &str) -> String {
    let Verdict::Reply(r) = v else {
        panic!("not a challenge: {v:?}")
    };
    let h = r
        .headers
        .iter()
        .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
        .find(|v| v.contains(&format!("algorithm={alg},")))
        .expect("challenge for the algorithm");
    let start = h.find("nonce=\"").unwrap() + 7;
    h[start..start + digest::NONCE_LEN].to_string()
}

async fn run(st: &AuthStage, req: &Message, cx: &RequestContext) -> (Verdict, Admission) {
    let mut adm = Admission::default();
    let v = st.check(req, cx, &mut adm).await;
    (v, adm)
}

fn status(v: &Verdict) -> (u16, String) {
    match v {
        Verdict::Reply(r) => (r.code, r.reason.to_string()),
        other => panic!("expected a reply, got {other:?}"),
    }
}

/// A challenge (401 or 407) without `stale=true`.
fn fresh_challenge(v: &Verdict) -> u16 {
    let Verdict::Reply(r) = v else {
        panic!("expected a challenge, got {v:?}")
    };
    assert!(!r.headers.is_empty(), "{r:?}");
    assert!(
        r.headers.iter().all(|(_, v)| !v.ends_with(b"stale=true")),
        "{r:?}"
    );
    r.code
}

#[tokio::test(start_paused = true)]
async fn register_gets_401_and_invite_407_with_both_algorithms() {
    let s = provisioned().await;
    let (st, reg) = stage_with(&s, config());
    let (v, _) = ALICE_REGISTER.send(&st, "").await;
    let Verdict::Reply(r) = &v else { panic!() };
    assert_eq!((r.code, r.reason.as_ref()), (401, "Unauthorized"));
    let names: Vec<&str> = r.headers.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, ["WWW-Authenticate", "WWW-Authenticate"]);
    let first = String::from_utf8(r.headers[0].1.clone()).unwrap();
    assert!(
        first.starts_with("Digest realm=\"sbc.example.com\", nonce=\"")
            && first.ends_with("\", algorithm=SHA-256, qop=\"auth\""),
        "{first}"
    );
    assert!(nonce_of(&v, "MD5").len() == digest::NONCE_LEN);

    let (v, _) = ALICE_INVITE.send(&st, "").await;
    let Verdict::Reply(r) = &v else { panic!() };
    assert_eq!(r.code, 407);
    assert!(r.headers.iter().all(|(n, _)| *n == "Proxy-Authenticate"));
    assert_eq!(auth_total(&reg, "REGISTER", "challenged"), 1);
    assert_eq!(auth_total(&reg, "INVITE", "challenged"), 1);
    // A challenge costs no store round trip.
    assert_eq!(
        sample(&reg, "sbc_auth_store_round_trips_total{op=\"verify\"}"),
        0
    );
}

#[tokio::test(start_paused = true)]
async fn correct_answers_pass_and_credentials_are_stripped() {
    let s = provisioned().await;
    let (st, reg) = stage_with(&s, config());
    for (ua, hname) in [
        (ALICE_REGISTER, HeaderName::Authorization),
        (ALICE_INVITE, HeaderName::ProxyAuthorization),
    ] {
        for alg in [DigestAlgorithm::Md5, DigestAlgorithm::Sha256] {
            let ua = Ua { alg, ..ua };
            let nonce = ua.nonce(&st).await;
            let (v, adm) = ua.answer(&st, &nonce, "00000001").await;
            assert_eq!(v, Verdict::Continue, "{} {alg:?}", ua.method);
            assert_eq!(adm.strip, vec![hname]);
            // The next request on the same nonce with the next nc passes as well.
            assert_eq!(
                ua.answer(&st, &nonce, "00000002").await.0,
                Verdict::Continue
            );
        }
    }
    assert_eq!(auth_total(&reg, "REGISTER", "accepted"), 4);
    assert_eq!(auth_total(&reg, "INVITE", "accepted"), 4);
    // One store round trip per verified request, none for the 4 challenges.
    assert_eq!(
        sample(&reg, "sbc_auth_store_round_trips_total{op=\"verify\"}"),
        8
    );
}

#[tokio::test(start_paused = true)]
async fn the_highest_nonce_count_wins_and_replays_count_as_failures() {
    let s = provisioned().await;
    let (st, reg) = stage_with(&s, config());
    let ua = ALICE_REGISTER;
    let nonce = ua.nonce(&st).await;
    assert_eq!(
        ua.answer(&st, &nonce, "00000001").await.0,
        Verdict::Continue
    );
    // The same nc again: a fresh challenge (not stale), credentials kept off the strip list.
    let (v, adm) = ua.answer(&st, &nonce, "00000001").await;
    assert_eq!(fresh_challenge(&v), 401);
    assert!(adm.strip.is_empty());
    // Counts may skip ahead; a lower one afterwards is refused.
    assert_eq!(
        ua.answer(&st, &nonce, "0000000a").await.0,
        Verdict::Continue
    );
    assert_eq!(
        fresh_challenge(&ua.answer(&st, &nonce, "00000009").await.0),
        401
    );
    // A second replica sharing the store refuses it too: that is the third failure...
    let other = stage(&s);
    assert_eq!(
        fresh_challenge(&ua.answer(&other, &nonce, "00000002").await.0),
        401
    );
    assert_eq!(auth_total(&reg, "REGISTER", "replayed"), 2);
    assert_eq!(
        s.get("t:authfail:{127.0.0.1}").await.unwrap().as_deref(),
        Some(&b"3"[..])
    );
    // ... and the fourth blocks the source, as wrong passwords do.
    assert_eq!(
        status(&ua.answer(&st, &nonce, "00000003").await.0),
        (403, "Blocked".into())
    );
    // nc 0 (counting starts at 1) and non-hex counts are malformed, not counted.
    let fresh = ua.nonce(&other).await;
    for nc in ["00000000", "0000000g", "1"] {
        assert_eq!(fresh_challenge(&ua.answer(&st, &fresh, nc).await.0), 401);
    }
    assert_eq!(auth_total(&reg, "REGISTER", "malformed"), 3);
}

#[tokio::test(start_paused = true)]
async fn a_challenge_from_one_replica_is_accepted_by_another() {
    let s = provisioned().await;
    let (a, b) = (stage(&s), stage(&s));
    let ua = Ua {
        alg: DigestAlgorithm::Sha256,
        ..ALICE_INVITE
    };
    let nonce = ua.nonce(&a).await;
    assert_eq!(ua.answer(&b, &nonce, "00000001").await.0, Verdict::Continue);
    // A replica with another secret does not accept it, and says why in its metrics.
    let mut cfg = config();
    cfg.nonce_secret = "another-secret-abcdef".into();
    let (foreign, reg) = stage_with(&s, cfg);
    assert_eq!(
        fresh_challenge(&ua.answer(&foreign, &nonce, "00000002").await.0),
        407
    );
    assert_eq!(auth_total(&reg, "INVITE", "bad_nonce"), 1);
}

#[tokio::test(start_paused = true)]
async fn expired_nonce_gets_stale_true() {
    let s = provisioned().await;
    let (st, reg) = stage_with(&s, config());
    let nonce = ALICE_REGISTER.nonce(&st).await;
    tokio::time::advance(Duration::from_secs(301)).await;
    let wrong = Ua {
        password: "wrong",
        ..ALICE_REGISTER
    };
    for ua in [ALICE_REGISTER, wrong] {
        let (v, _) = ua.answer(&st, &nonce, "00000001").await;
        let Verdict::Reply(r) = &v else { panic!() };
        assert_eq!(r.code, 401);
        assert!(
            r.headers.iter().all(|(_, v)| v.ends_with(b", stale=true")),
            "{r:?}"
        );
    }
    // Even a wrong password on a stale nonce does not count as a failure.
    assert!(s.get("t:authfail:{127.0.0.1}").await.unwrap().is_none());
    assert_eq!(auth_total(&reg, "REGISTER", "stale"), 2);
}

#[tokio::test(start_paused = true)]
async fn repeated_failures_block_the_source_not_the_user() {
    let s = provisioned().await;
    let (st, reg) = stage_with(&s, config());
    let wrong = Ua {
        password: "wrong",
        ..ALICE_REGISTER
    };
    for i in 1..=4 {
        let nonce = wrong.nonce(&st).await;
        let (code, reason) = status(&wrong.answer(&st, &nonce, "00000001").await.0);
        if i <= 3 {
            assert_eq!(code, 401, "failure {i}");
        } else {
            assert_eq!((code, reason.as_str()), (403, "Blocked"));
        }
    }
    assert!(s.get("t:srcblock:{127.0.0.1}").await.unwrap().is_some());
    assert!(
        s.get("t:regblock:{alice}").await.unwrap().is_none(),
        "wrong passwords in alice's name never block alice"
    );
    // While blocked, even the right password is refused from that source...
    let nonce = ALICE_REGISTER.nonce(&st).await;
    assert_eq!(
        status(&ALICE_REGISTER.answer(&st, &nonce, "00000001").await.0),
        (403, "Blocked".into())
    );
    // ... while alice's own phone, elsewhere, registers as usual.
    let creds = ALICE_REGISTER.credentials(&nonce, "00000002");
    let elsewhere = cx_from(Method::Register, "192.0.2.77:5060");
    assert_eq!(
        run(&st, &request("REGISTER", &creds), &elsewhere).await.0,
        Verdict::Continue
    );
    tokio::time::advance(Duration::from_secs(121)).await;
    let nonce = ALICE_REGISTER.nonce(&st).await;
    assert_eq!(
        ALICE_REGISTER.answer(&st, &nonce, "00000001").await.0,
        Verdict::Continue
    );
    assert_eq!(auth_total(&reg, "REGISTER", "rejected"), 4);
    assert_eq!(auth_total(&reg, "REGISTER", "blocked"), 1);
    assert_eq!(sample(&reg, "sbc_auth_users_blocked_total"), 1);
    // Each failure cost one more round trip; the blocked attempt none.
    assert_eq!(
        sample(
            &reg,
            "sbc_auth_store_round_trips_total{op=\"count_failure\"}"
        ),
        4
    );
}

#[tokio::test(start_paused = true)]
async fn unknown_user_and_wrong_uri_fail() {
    let s = provisioned().await;
    let (st, reg) = stage_with(&s, config());
    let nonce = ALICE_INVITE.nonce(&st).await;
    let mallory = Ua {
        user: "mallory",
        ..ALICE_INVITE
    };
    assert_eq!(
        fresh_challenge(&mallory.answer(&st, &nonce, "00000001").await.0),
        407
    );
    let creds = ALICE_INVITE
        .credentials(&nonce, "00000002")
        .replace("uri=\"sip:bob@", "uri=\"sip:carol@");
    assert_eq!(
        fresh_challenge(&ALICE_INVITE.send(&st, &creds).await.0),
        407
    );
    assert_eq!(
        s.get("t:authfail:{127.0.0.1}").await.unwrap().as_deref(),
        Some(&b"2"[..]),
        "both failures count against the source"
    );
    assert_eq!(auth_total(&reg, "INVITE", "unknown_user"), 1);
    assert_eq!(auth_total(&reg, "INVITE", "rejected"), 1);
    // Credentials in the wrong header (Authorization on an INVITE) are not ours.
    let creds = ALICE_REGISTER
        .credentials(&nonce, "00000003")
        .replace("sip:sbc.example.com", "sip:bob@sbc.example.com");
    assert_eq!(
        fresh_challenge(&ALICE_INVITE.send(&st, &creds).await.0),
        407
    );
    assert_eq!(auth_total(&reg, "INVITE", "challenged"), 2);
}

#[tokio::test(start_paused = true)]
async fn credentials_are_read_at_the_configured_key_without_the_cluster_prefix() {
    // Under the stage's own prefix they are not found: the seeds' layout has none.
    let s = provisioned_at("t:subscriber:alice").await;
    let (st, reg) = stage_with(&s, config());
    let nonce = ALICE_REGISTER.nonce(&st).await;
    assert_eq!(
        fresh_challenge(&ALICE_REGISTER.answer(&st, &nonce, "00000001").await.0),
        401
    );
    assert_eq!(auth_total(&reg, "REGISTER", "unknown_user"), 1);
    // A template with the domain.
    let s = provisioned_at("creds:sbc.example.com:alice").await;
    let mut cfg = config();
    cfg.credentials_key = "creds:{domain}:{user}".into();
    let st = stage_with(&s, cfg).0;
    let nonce = ALICE_REGISTER.nonce(&st).await;
    assert_eq!(
        ALICE_REGISTER.answer(&st, &nonce, "00000001").await.0,
        Verdict::Continue
    );
    // The older subscriberPrefix still works.
    let s = provisioned_at("users:alice").await;
    let mut cfg = config();
    cfg.subscriber_prefix = "users:".into();
    let st = stage_with(&s, cfg).0;
    let nonce = ALICE_INVITE.nonce(&st).await;
    assert_eq!(
        ALICE_INVITE.answer(&st, &nonce, "00000001").await.0,
        Verdict::Continue
    );
}

#[tokio::test(start_paused = true)]
async fn trusted_sources_other_methods_and_dialogs_pass() {
    let s = provisioned().await;
    let (st, reg) = stage_with(&s, config());
    let (v, adm) = run(
        &st,
        &request("INVITE", ""),
        &cx_from(Method::Invite, "10.9.3.4:5060"),
    )
    .await;
    assert_eq!(v, Verdict::Continue);
    assert!(adm.strip.is_empty());
    assert_eq!(auth_total(&reg, "INVITE", "exempt"), 1);
    let (v, _) = run(&st, &request("OPTIONS", ""), &cx_from(Method::Options, UA)).await;
    assert_eq!(v, Verdict::Continue);
    let mut c = ALICE_INVITE.cx();
    c.in_dialog = true;
    assert_eq!(
        run(&st, &request("INVITE", ""), &c).await.0,
        Verdict::Continue
    );
}

#[tokio::test(start_paused = true)]
async fn realm_defaults_to_the_from_domain() {
    let s = provisioned().await;
    let mut cfg = config();
    cfg.realm = None;
    let st = stage_with(&s, cfg).0;
    let (v, _) = ALICE_REGISTER.send(&st, "").await;
    let Verdict::Reply(r) = v else { panic!() };
    assert!(
        r.headers[0]
            .1
            .starts_with(b"Digest realm=\"sbc.example.com\"")
    );
}

#[tokio::test(start_paused = true)]
async fn the_from_user_must_be_the_authenticated_user() {
    let s = provisioned().await;
    let (st, _) = stage_with(&s, config());
    let nonce = ALICE_INVITE.nonce(&st).await;
    let creds = ALICE_INVITE.credentials(&nonce, "00000001");
    // Alice authenticates but calls as bob.
    let text = String::from_utf8(request("INVITE", &creds).bytes().to_vec())
        .unwrap()
        .replace("From: <sip:alice@", "From: \"Bob\" <sip:bob@");
    let spoofed = Message::parse(Bytes::from(text), 65535).unwrap();
    assert_eq!(
        status(&run(&st, &spoofed, &ALICE_INVITE.cx()).await.0),
        (
            403,
            "Forbidden (From user is not the authenticated user)".into()
        )
    );
    // A REGISTER for another user's address of record.
    let nonce = ALICE_REGISTER.nonce(&st).await;
    let creds = ALICE_REGISTER.credentials(&nonce, "00000001");
    let text = String::from_utf8(request("REGISTER", &creds).bytes().to_vec())
        .unwrap()
        .replace("To: <sip:alice@", "To: <sip:bob@");
    let other_aor = Message::parse(Bytes::from(text), 65535).unwrap();
    assert_eq!(
        status(&run(&st, &other_aor, &ALICE_REGISTER.cx()).await.0),
        (
            403,
            "Forbidden (To user is not the authenticated user)".into()
        )
    );
    // checkIdentity: false lets a trunk authenticate for every extension.
    let mut cfg = config();
    cfg.check_identity = false;
    let (lenient, _) = stage_with(&s, cfg);
    let nonce = ALICE_INVITE.nonce(&lenient).await;
    let creds = ALICE_INVITE.credentials(&nonce, "00000001");
    let text = String::from_utf8(request("INVITE", &creds).bytes().to_vec())
        .unwrap()
        .replace("From: <sip:alice@", "From: <sip:bob@");
    let as_bob = Message::parse(Bytes::from(text), 65535).unwrap();
    assert_eq!(
        run(&lenient, &as_bob, &ALICE_INVITE.cx()).await.0,
        Verdict::Continue
    );
}

#[tokio::test(start_paused = true)]
async fn register_floods_are_counted_per_authenticated_user() {
    let s = provisioned().await;
    let (st, _) = stage_with(&s, config());
    let st = st.with_register_flood(Some(kubesbc_crds::policy::FloodLimit {
        requests: 2,
        window_secs: 10,
        ban_secs: 60,
    }));
    // Unauthenticated REGISTERs naming alice (anyone can send them) are not counted.
    for _ in 0..5 {
        let (v, _) = ALICE_REGISTER.send(&st, "").await;
        assert_eq!(fresh_challenge(&v), 401);
    }
    assert!(s.get("t:regblock:{alice}").await.unwrap().is_none());
    // Her own authenticated REGISTERs are: the third in the window blocks her.
    let nonce = ALICE_REGISTER.nonce(&st).await;
    for (i, nc) in ["00000001", "00000002", "00000003"].iter().enumerate() {
        let v = ALICE_REGISTER.answer(&st, &nonce, nc).await.0;
        if i < 2 {
            assert_eq!(v, Verdict::Continue, "REGISTER {i}");
        } else {
            assert_eq!(status(&v), (403, "Blocked".into()));
        }
    }
    assert!(s.get("t:regblock:{alice}").await.unwrap().is_some());
}
