use std::collections::BTreeMap;
use std::net::SocketAddr;

use kubesbc_crds::config::Transport;
use kubesbc_crds::policy::AuthFailureBlock;

use super::*;
use crate::sip::Method;
use crate::store::MemoryStore;
use crate::transport::Peer;

const SECRET: &str = "shared-secret-0123456789";
const REALM: &str = "sbc.example.com";
const START: Duration = Duration::from_secs(1_700_000_000);

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
        failure_block: Some(AuthFailureBlock {
            max_failures: 3,
            window_secs: 60,
            block_secs: 120,
        }),
    }
}

async fn provisioned() -> Arc<dyn Store> {
    let s: Arc<dyn Store> = Arc::new(MemoryStore::new(10_000));
    let md5 = digest::h(
        DigestAlgorithm::Md5,
        &[b"alice", REALM.as_bytes(), b"secret"],
    );
    let sha = digest::h(
        DigestAlgorithm::Sha256,
        &[b"alice", REALM.as_bytes(), b"secret"],
    );
    s.hash_set(
        "subscriber:alice",
        vec![
            ("username".into(), Bytes::from_static(b"alice")),
            ("domain".into(), Bytes::from_static(REALM.as_bytes())),
            ("ha1".into(), Bytes::copy_from_slice(md5.as_bytes())),
            ("ha1sha256".into(), Bytes::copy_from_slice(sha.as_bytes())),
        ],
        None,
    )
    .await
    .unwrap();
    s
}

fn stage(store: &Arc<dyn Store>) -> AuthStage {
    AuthStage::new(config(), store.clone(), "t:", Clock::at(START))
}

fn cx(method: Method, from: &str) -> RequestContext {
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

const RURI_INVITE: &str = "sip:bob@sbc.example.com";
const RURI_REGISTER: &str = "sip:sbc.example.com";

fn request(method: &str, extra: &str) -> Message {
    let ruri = if method == "REGISTER" {
        RURI_REGISTER
    } else {
        RURI_INVITE
    };
    let text = format!(
        "{method} {ruri} SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bK1\r\n\
From: <sip:alice@sbc.example.com>;tag=a\r\n\
To: <sip:bob@sbc.example.com>\r\n\
Call-ID: c1\r\n\
CSeq: 1 {method}\r\n\
{extra}Content-Length: 0\r\n\r\n"
    );
    Message::parse(Bytes::from(text), 65535).unwrap()
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

/// What a UA sends back: the credentials header for a password.
#[allow(clippy::too_many_arguments)]
fn answer(
    method: &str,
    header: &str,
    alg: DigestAlgorithm,
    user: &str,
    password: &str,
    nonce: &str,
    nc: &str,
) -> String {
    let ruri = if method == "REGISTER" {
        RURI_REGISTER
    } else {
        RURI_INVITE
    };
    let ha1 = digest::h(
        alg,
        &[user.as_bytes(), REALM.as_bytes(), password.as_bytes()],
    );
    let r = digest::response(
        alg,
        false,
        ha1.as_bytes(),
        nonce.as_bytes(),
        nc.as_bytes(),
        b"cn0",
        method.as_bytes(),
        ruri.as_bytes(),
    );
    format!(
        "{header}: Digest username=\"{user}\", realm=\"{REALM}\", nonce=\"{nonce}\", \
uri=\"{ruri}\", response=\"{r:?}\", algorithm={}, qop=auth, nc={nc}, cnonce=\"cn0\"\r\n",
        digest::algorithm_name(alg)
    )
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

#[tokio::test(start_paused = true)]
async fn register_gets_401_and_invite_407_with_both_algorithms() {
    let s = provisioned().await;
    let st = stage(&s);
    let (v, _) = run(
        &st,
        &request("REGISTER", ""),
        &cx(Method::Register, "127.0.0.1:5090"),
    )
    .await;
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

    let (v, _) = run(
        &st,
        &request("INVITE", ""),
        &cx(Method::Invite, "127.0.0.1:5090"),
    )
    .await;
    let Verdict::Reply(r) = &v else { panic!() };
    assert_eq!(r.code, 407);
    assert!(r.headers.iter().all(|(n, _)| *n == "Proxy-Authenticate"));
}

#[tokio::test(start_paused = true)]
async fn correct_answers_pass_and_credentials_are_stripped() {
    let s = provisioned().await;
    let st = stage(&s);
    for (method, m, header, hname) in [
        (
            "REGISTER",
            Method::Register,
            "Authorization",
            HeaderName::Authorization,
        ),
        (
            "INVITE",
            Method::Invite,
            "Proxy-Authorization",
            HeaderName::ProxyAuthorization,
        ),
    ] {
        for alg in [DigestAlgorithm::Md5, DigestAlgorithm::Sha256] {
            let c = cx(m, "127.0.0.1:5090");
            let (ch, _) = run(&st, &request(method, ""), &c).await;
            let nonce = nonce_of(&ch, digest::algorithm_name(alg));
            let creds = answer(method, header, alg, "alice", "secret", &nonce, "00000001");
            let (v, adm) = run(&st, &request(method, &creds), &c).await;
            assert_eq!(v, Verdict::Continue, "{method} {alg:?}");
            assert_eq!(adm.strip, vec![hname]);
            // The next request on the same nonce with the next nc passes as well.
            let creds = answer(method, header, alg, "alice", "secret", &nonce, "00000002");
            assert_eq!(
                run(&st, &request(method, &creds), &c).await.0,
                Verdict::Continue
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn replayed_nonce_count_is_challenged_again() {
    let s = provisioned().await;
    let st = stage(&s);
    let c = cx(Method::Register, "127.0.0.1:5090");
    let nonce = nonce_of(&run(&st, &request("REGISTER", ""), &c).await.0, "MD5");
    let creds = answer(
        "REGISTER",
        "Authorization",
        DigestAlgorithm::Md5,
        "alice",
        "secret",
        &nonce,
        "00000001",
    );
    assert_eq!(
        run(&st, &request("REGISTER", &creds), &c).await.0,
        Verdict::Continue
    );
    let (v, adm) = run(&st, &request("REGISTER", &creds), &c).await;
    assert_eq!(status(&v).0, 401);
    assert!(adm.strip.is_empty());
    // A second replica sharing the store refuses the replay too.
    let other = AuthStage::new(config(), s.clone(), "t:", Clock::at(START));
    assert_eq!(
        status(&run(&other, &request("REGISTER", &creds), &c).await.0).0,
        401
    );
}

#[tokio::test(start_paused = true)]
async fn a_challenge_from_one_replica_is_accepted_by_another() {
    let s = provisioned().await;
    let a = stage(&s);
    let b = AuthStage::new(config(), s.clone(), "t:", Clock::at(START));
    let c = cx(Method::Invite, "127.0.0.1:5090");
    let nonce = nonce_of(&run(&a, &request("INVITE", ""), &c).await.0, "SHA-256");
    let creds = answer(
        "INVITE",
        "Proxy-Authorization",
        DigestAlgorithm::Sha256,
        "alice",
        "secret",
        &nonce,
        "00000001",
    );
    assert_eq!(
        run(&b, &request("INVITE", &creds), &c).await.0,
        Verdict::Continue
    );
    // A replica with another secret does not accept it.
    let mut cfg = config();
    cfg.nonce_secret = "another-secret-abcdef".into();
    let foreign = AuthStage::new(cfg, s.clone(), "t:", Clock::at(START));
    let creds2 = creds.replace("nc=00000001", "nc=00000002");
    assert_eq!(
        status(&run(&foreign, &request("INVITE", &creds2), &c).await.0).0,
        407
    );
}

#[tokio::test(start_paused = true)]
async fn expired_nonce_gets_stale_true() {
    let s = provisioned().await;
    let st = stage(&s);
    let c = cx(Method::Register, "127.0.0.1:5090");
    let nonce = nonce_of(&run(&st, &request("REGISTER", ""), &c).await.0, "MD5");
    tokio::time::advance(Duration::from_secs(301)).await;
    let creds = answer(
        "REGISTER",
        "Authorization",
        DigestAlgorithm::Md5,
        "alice",
        "secret",
        &nonce,
        "00000001",
    );
    let (v, _) = run(&st, &request("REGISTER", &creds), &c).await;
    let Verdict::Reply(r) = &v else { panic!() };
    assert_eq!(r.code, 401);
    assert!(
        r.headers.iter().all(|(_, v)| v.ends_with(b", stale=true")),
        "{r:?}"
    );
    // Even a wrong password on a stale nonce does not count as a failure.
    assert!(s.get("t:authfail:alice").await.unwrap().is_none());
}

#[tokio::test(start_paused = true)]
async fn repeated_failures_block_the_user() {
    let s = provisioned().await;
    let st = stage(&s);
    let c = cx(Method::Register, "127.0.0.1:5090");
    for i in 1..=4 {
        let nonce = nonce_of(&run(&st, &request("REGISTER", ""), &c).await.0, "MD5");
        let creds = answer(
            "REGISTER",
            "Authorization",
            DigestAlgorithm::Md5,
            "alice",
            "wrong",
            &nonce,
            "00000001",
        );
        let (code, reason) = status(&run(&st, &request("REGISTER", &creds), &c).await.0);
        if i <= 3 {
            assert_eq!(code, 401, "failure {i}");
        } else {
            assert_eq!((code, reason.as_str()), (403, "Blocked"));
        }
    }
    assert_eq!(
        s.get("t:regblock:alice").await.unwrap(),
        Some(Bytes::from_static(b"1"))
    );
    // While blocked, even the right password is refused; after the block it works again.
    let nonce = nonce_of(&run(&st, &request("REGISTER", ""), &c).await.0, "MD5");
    let good = |nc: &str| {
        answer(
            "REGISTER",
            "Authorization",
            DigestAlgorithm::Md5,
            "alice",
            "secret",
            &nonce,
            nc,
        )
    };
    assert_eq!(
        status(
            &run(&st, &request("REGISTER", &good("00000001")), &c)
                .await
                .0
        ),
        (403, "Blocked".into())
    );
    tokio::time::advance(Duration::from_secs(121)).await;
    assert_eq!(
        run(&st, &request("REGISTER", &good("00000002")), &c)
            .await
            .0,
        Verdict::Continue
    );
}

#[tokio::test(start_paused = true)]
async fn unknown_user_and_wrong_uri_fail() {
    let s = provisioned().await;
    let st = stage(&s);
    let c = cx(Method::Invite, "127.0.0.1:5090");
    let nonce = nonce_of(&run(&st, &request("INVITE", ""), &c).await.0, "MD5");
    let creds = answer(
        "INVITE",
        "Proxy-Authorization",
        DigestAlgorithm::Md5,
        "mallory",
        "secret",
        &nonce,
        "00000001",
    );
    assert_eq!(
        status(&run(&st, &request("INVITE", &creds), &c).await.0).0,
        407
    );
    let creds = answer(
        "INVITE",
        "Proxy-Authorization",
        DigestAlgorithm::Md5,
        "alice",
        "secret",
        &nonce,
        "00000002",
    )
    .replace("uri=\"sip:bob@", "uri=\"sip:carol@");
    assert_eq!(
        status(&run(&st, &request("INVITE", &creds), &c).await.0).0,
        407
    );
    assert_eq!(
        s.get("t:authfail:alice").await.unwrap(),
        Some(Bytes::from_static(b"1"))
    );
    // Credentials in the wrong header (Authorization on an INVITE) are not ours.
    let creds = answer(
        "INVITE",
        "Authorization",
        DigestAlgorithm::Md5,
        "alice",
        "secret",
        &nonce,
        "00000003",
    );
    assert_eq!(
        status(&run(&st, &request("INVITE", &creds), &c).await.0).0,
        407
    );
}

#[tokio::test(start_paused = true)]
async fn trusted_sources_other_methods_and_dialogs_pass() {
    let s = provisioned().await;
    let st = stage(&s);
    let (v, adm) = run(
        &st,
        &request("INVITE", ""),
        &cx(Method::Invite, "10.9.3.4:5060"),
    )
    .await;
    assert_eq!(v, Verdict::Continue);
    assert!(adm.strip.is_empty());
    let (v, _) = run(
        &st,
        &request("OPTIONS", ""),
        &cx(Method::Options, "127.0.0.1:5090"),
    )
    .await;
    assert_eq!(v, Verdict::Continue);
    let mut c = cx(Method::Invite, "127.0.0.1:5090");
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
    let st = AuthStage::new(cfg, s.clone(), "t:", Clock::at(START));
    let (v, _) = run(
        &st,
        &request("REGISTER", ""),
        &cx(Method::Register, "127.0.0.1:1"),
    )
    .await;
    let Verdict::Reply(r) = v else { panic!() };
    assert!(
        r.headers[0]
            .1
            .starts_with(b"Digest realm=\"sbc.example.com\"")
    );
}
