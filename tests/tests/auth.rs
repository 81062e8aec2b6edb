//! The auth stage seen from a UA (sbc only): digest challenges (401 with WWW-Authenticate for
//! REGISTER, 407 with Proxy-Authenticate for INVITE), 200 after MD5 and SHA-256 answers,
//! `stale=true` for an expired nonce, replayed nonce counts refused, a challenge from one
//! replica answered at another through one real redis-server, credentials read from the
//! seeds' `subscriber:<user>` hashes, `403 Blocked` after repeated failures, trunks exempt by
//! source address, and credentials never reaching the backend. Outcomes are also read back
//! from `/metrics`.

use std::net::{Ipv4Addr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use kubesbc_e2e::sip::{RequestBuilder, SipClient, SipResponse, token};
use kubesbc_e2e::{
    DispatcherDest, LOOPBACK, Proxy, ProxyOptions, RedisServer, TempDir, http, md5_hex,
    require_tool, sbc_only,
};

const REALM: &str = "e2e.kubesbc.test";
const T: Duration = Duration::from_secs(3);
const INVITE_URI: &str = "sip:bob@127.0.0.1";

/// A backend on a raw UDP socket: answers every request with 200 and keeps the requests
/// other than OPTIONS, exactly as they arrived. Its thread stops on drop.
struct RawBackend {
    port: u16,
    received: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RawBackend {
    fn start() -> RawBackend {
        let socket = UdpSocket::bind((LOOPBACK, 0)).expect("bind backend");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("read timeout");
        let port = socket.local_addr().expect("backend address").port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (received.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            while !s.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let Some(reply) = ok_reply(&text, port) else {
                    continue;
                };
                // Recorded before answering, so a test that got the 200 finds the request.
                if !text.starts_with("OPTIONS ") {
                    r.lock().unwrap_or_else(|e| e.into_inner()).push(text);
                }
                let _ = socket.send_to(reply.as_bytes(), from);
            }
        });
        RawBackend {
            port,
            received,
            stop,
            thread: Some(thread),
        }
    }

    /// The requests received with `method`.
    fn requests(&self, method: &str) -> Vec<String> {
        let prefix = format!("{method} ");
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|r| r.starts_with(&prefix))
            .cloned()
            .collect()
    }

    /// Asserts that no request carried credentials.
    fn assert_no_credentials(&self) {
        for r in self
            .received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let lower = r.to_ascii_lowercase();
            assert!(
                !lower.contains("\r\nauthorization:")
                    && !lower.contains("\r\nproxy-authorization:"),
                "credentials reached the backend:\n{r}"
            );
        }
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A 200 to `request` (its Via, From, To with a tag, Call-ID and CSeq); None for a response
/// or an ACK.
fn ok_reply(request: &str, port: u16) -> Option<String> {
    let head = request.split("\r\n\r\n").next()?;
    let mut lines = head.split("\r\n");
    let first = lines.next()?;
    if first.starts_with("SIP/2.0") || first.starts_with("ACK ") {
        return None;
    }
    let mut out = String::from("SIP/2.0 200 OK\r\n");
    for line in lines {
        let name = line
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match name.as_str() {
            "via" | "v" | "from" | "f" | "call-id" | "i" | "cseq" => {}
            "to" | "t" if !line.contains("tag=") => {
                out.push_str(line);
                out.push_str(";tag=backend\r\n");
                continue;
            }
            "to" | "t" => {}
            _ => continue,
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str(&format!(
        "Contact: <sip:backend@127.0.0.1:{port}>\r\nContent-Length: 0\r\n\r\n"
    ));
    Some(out)
}

/// The sbc config: auth on, `extra` lines appended, Redis as the store when given.
fn auth_config(redis: Option<&RedisServer>, extra: &str) -> String {
    let store = redis.map_or(String::new(), |r| {
        format!("store: {{url: \"{}\", keyPrefix: \"e2e:\"}}\n", r.url())
    });
    format!(
        "{store}listeners: [{{transport: udp, address: \"127.0.0.1:1\"}}]\n\
auth:\n  realm: {REALM}\n  nonceSecret: e2e-shared-secret-0123456789\n  \
failureBlock: {{maxFailures: 2, windowSecs: 60, blockSecs: 60}}\n{extra}"
    )
}

fn start(label: &str, config: &str, backend: &RawBackend) -> (TempDir, Proxy) {
    let dir = TempDir::new(label);
    let cfg = dir.write("sbc.yaml", config);
    let proxy = Proxy::start(
        &dir,
        &ProxyOptions {
            destinations: vec![DispatcherDest::local(backend.port, false)],
            extra_sbc_args: vec!["--config".into(), cfg.display().to_string()],
            ..ProxyOptions::default()
        },
    );
    (dir, proxy)
}

/// A backend and one sbc on the memory store with `extra` auth lines; None when the tests
/// run against Kamailio.
fn memory_setup(label: &str, extra: &str) -> Option<(RawBackend, TempDir, Proxy)> {
    if !sbc_only() {
        return None;
    }
    let backend = RawBackend::start();
    let (dir, proxy) = start(label, &auth_config(None, extra), &backend);
    Some((backend, dir, proxy))
}

/// The value of the sample `series` (full name with labels) in the proxy's /metrics; 0 when
/// it is not exported (yet).
fn metric(proxy: &Proxy, series: &str) -> f64 {
    let body = http::get(proxy.admin(), "/metrics", T)
        .expect("metrics")
        .body;
    body.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

fn auth_total(proxy: &Proxy, method: &str, result: &str) -> f64 {
    metric(
        proxy,
        &format!("sbc_auth_total{{method=\"{method}\",result=\"{result}\"}}"),
    )
}

fn challenges<'a>(r: &'a SipResponse, header: &str) -> Vec<&'a str> {
    r.headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(header))
        .map(|(_, v)| v.as_str())
        .collect()
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Alice's credentials in the seeds' layout (`subscriber:alice`, MD5 and SHA-256 HA1),
/// provisioned by the user's tooling: no cluster prefix.
fn provision_alice(redis: &RedisServer) {
    let ha1 = md5_hex(&format!("alice:{REALM}:wonderland"));
    let ha1sha256 = sha256_hex(&format!("alice:{REALM}:wonderland"));
    let stored = redis.command(&[
        "HSET",
        "subscriber:alice",
        "username",
        "alice",
        "domain",
        REALM,
        "ha1",
        &ha1,
        "ha1sha256",
        &ha1sha256,
    ]);
    assert!(stored.is_some_and(|r| r.starts_with(':')), "HSET failed");
}

/// A UA's side of digest auth for one method.
#[derive(Clone, Copy)]
struct Ua<'a> {
    method: &'a str,
    uri: &'a str,
    /// `MD5` or `SHA-256`.
    alg: &'a str,
    user: &'a str,
    password: &'a str,
}

impl Ua<'_> {
    fn hash(&self, s: &str) -> String {
        if self.alg == "MD5" {
            md5_hex(s)
        } else {
            sha256_hex(s)
        }
    }

    /// The challenge and credentials header names.
    fn headers(&self) -> (&'static str, &'static str) {
        if self.method == "REGISTER" {
            ("WWW-Authenticate", "Authorization")
        } else {
            ("Proxy-Authenticate", "Proxy-Authorization")
        }
    }

    /// The request as this user sends it: From (and, for REGISTER, To) name the digest user,
    /// as the identity check requires.
    fn request(&self, client: &SipClient) -> RequestBuilder {
        let req = if self.method == "INVITE" {
            RequestBuilder::invite(self.uri, client)
        } else {
            RequestBuilder::new(self.method, self.uri, client)
        };
        let aor = format!("<sip:{}@{REALM}>", self.user);
        let req = req.set("From", &format!("{aor};tag=f{}", token()));
        if self.method == "REGISTER" {
            req.set("To", &aor)
        } else {
            req
        }
    }

    /// Sends the request without credentials; returns the response and the nonce offered
    /// for our algorithm.
    fn challenge(&self, client: &mut SipClient) -> (SipResponse, String) {
        let req = self.request(client);
        let r = client
            .request(&req.build(), T)
            .expect("answer without credentials");
        if self.method == "INVITE" && r.code >= 300 {
            client.send(&req.ack(&r).build());
        }
        let nonce = challenges(&r, self.headers().0)
            .into_iter()
            .find(|c| c.contains(&format!("algorithm={},", self.alg)))
            .and_then(|c| c.split("nonce=\"").nth(1)?.split('"').next())
            .unwrap_or_default()
            .to_owned();
        (r, nonce)
    }

    /// The credentials for `nonce` and `nc` (qop=auth).
    fn credentials(&self, nonce: &str, nc: &str) -> String {
        let (user, uri) = (self.user, self.uri);
        let ha1 = self.hash(&format!("{user}:{REALM}:{}", self.password));
        let ha2 = self.hash(&format!("{}:{uri}", self.method));
        let resp = self.hash(&format!("{ha1}:{nonce}:{nc}:e2ecn:auth:{ha2}"));
        format!(
            "Digest username=\"{user}\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"{uri}\", \
response=\"{resp}\", algorithm={}, qop=auth, nc={nc}, cnonce=\"e2ecn\"",
            self.alg
        )
    }

    /// Sends the request with credentials for `nonce` and `nc`; returns the final answer.
    fn answer(&self, client: &mut SipClient, nonce: &str, nc: &str) -> SipResponse {
        let req = self
            .request(client)
            .set("CSeq", &format!("2 {}", self.method))
            .set(self.headers().1, &self.credentials(nonce, nc));
        let r = client
            .request(&req.build(), T)
            .expect("answer to credentials");
        if self.method == "INVITE" && r.code >= 300 {
            client.send(&req.ack(&r).build());
        }
        r
    }

    /// Asserts `r` is a fresh challenge (401/407, no `stale=true`).
    fn assert_challenged(&self, r: &SipResponse, why: &str) {
        let code = if self.method == "REGISTER" { 401 } else { 407 };
        assert_eq!(r.code, code, "{why}: {}", r.status_line);
        let ch = challenges(r, self.headers().0);
        assert!(
            !ch.is_empty() && ch.iter().all(|c| !c.contains("stale=true")),
            "{why}: {r:?}"
        );
    }
}

const REGISTER: Ua<'static> = Ua {
    method: "REGISTER",
    uri: "sip:e2e.kubesbc.test",
    alg: "MD5",
    user: "alice",
    password: "wonderland",
};

const INVITE: Ua<'static> = Ua {
    method: "INVITE",
    uri: INVITE_URI,
    ..REGISTER
};

#[test]
fn register_gets_401_invite_407_and_failures_end_in_403_blocked() {
    let Some((backend, _dir, proxy)) = memory_setup("auth-challenge", "") else {
        return;
    };
    let mut ua = SipClient::udp(proxy.sip_addr());

    let (r, _) = REGISTER.challenge(&mut ua);
    assert_eq!(r.status_line, "SIP/2.0 401 Unauthorized");
    let ch = challenges(&r, "WWW-Authenticate");
    assert_eq!(ch.len(), 2, "{r:?}");
    assert!(ch[0].starts_with(&format!("Digest realm=\"{REALM}\", nonce=\"")));
    assert!(ch[0].contains("algorithm=SHA-256") && ch[0].contains("qop=\"auth\""));
    assert!(ch[1].contains("algorithm=MD5"));

    let (r, _) = INVITE.challenge(&mut ua);
    assert_eq!(r.status_line, "SIP/2.0 407 Proxy Authentication Required");
    assert_eq!(challenges(&r, "Proxy-Authenticate").len(), 2);

    // An unknown user twice: challenged again; the third failure blocks the user.
    let mallory = Ua {
        user: "mallory",
        ..REGISTER
    };
    for i in 0..3 {
        let (_, nonce) = mallory.challenge(&mut ua);
        let r = mallory.answer(&mut ua, &nonce, "00000001");
        if i < 2 {
            mallory.assert_challenged(&r, "unknown user");
        } else {
            assert_eq!(r.status_line, "SIP/2.0 403 Blocked");
        }
    }

    // Nothing reached the backend, and the metrics tell what happened.
    std::thread::sleep(Duration::from_millis(300));
    assert!(backend.requests("INVITE").is_empty() && backend.requests("REGISTER").is_empty());
    assert_eq!(auth_total(&proxy, "REGISTER", "challenged"), 4.0);
    assert_eq!(auth_total(&proxy, "INVITE", "challenged"), 1.0);
    assert_eq!(auth_total(&proxy, "REGISTER", "unknown_user"), 3.0);
    assert_eq!(metric(&proxy, "sbc_auth_users_blocked_total"), 1.0);
}

#[test]
fn an_expired_nonce_is_challenged_with_stale_true() {
    let Some((_backend, _dir, proxy)) = memory_setup("auth-stale", "  nonceLifetimeSecs: 5\n")
    else {
        return;
    };
    let mut ua = SipClient::udp(proxy.sip_addr());
    let (_, nonce) = INVITE.challenge(&mut ua);
    // Nonces carry their issue time in whole seconds: past 5 s they are stale.
    std::thread::sleep(Duration::from_millis(6100));
    let r = INVITE.answer(&mut ua, &nonce, "00000001");
    assert_eq!(r.code, 407, "{}", r.status_line);
    let ch = challenges(&r, "Proxy-Authenticate");
    assert!(
        ch.len() == 2 && ch.iter().all(|c| c.ends_with("stale=true")),
        "{r:?}"
    );
    assert_eq!(auth_total(&proxy, "INVITE", "stale"), 1.0);
}

#[test]
fn trunks_are_exempt_by_source_address() {
    let trunk = "  trustedSources: [\"127.0.0.1/32\"]\n";
    let Some((backend, _dir, proxy)) = memory_setup("auth-trusted", trunk) else {
        return;
    };
    let mut trunk = SipClient::udp(proxy.sip_addr());
    let r = trunk
        .request(&RequestBuilder::invite(INVITE_URI, &trunk).build(), T)
        .expect("answer to the trunk");
    assert_eq!(r.code, 200, "{}", r.status_line);
    assert_eq!(backend.requests("INVITE").len(), 1);
    // Another loopback address is not the trunk: challenged.
    let mut other = SipClient::udp_from(Ipv4Addr::new(127, 0, 0, 2), proxy.sip_addr());
    let (r, _) = INVITE.challenge(&mut other);
    INVITE.assert_challenged(&r, "untrusted source");
    assert_eq!(auth_total(&proxy, "INVITE", "exempt"), 1.0);
    assert_eq!(auth_total(&proxy, "INVITE", "challenged"), 1.0);
}

#[test]
fn replicas_share_nonces_and_counts_through_redis_and_read_the_seeds_credentials() {
    if !sbc_only() || !require_tool("redis-server") {
        return;
    }
    let redis_dir = TempDir::new("auth-redis");
    let redis = RedisServer::start(&redis_dir);
    provision_alice(&redis);
    let backend = RawBackend::start();
    let config = auth_config(Some(&redis), "");
    let (_da, a) = start("auth-replica-a", &config, &backend);
    let (_db, b) = start("auth-replica-b", &config, &backend);
    let mut ua_a = SipClient::udp(a.sip_addr());
    let mut ua_b = SipClient::udp(b.sip_addr());

    // REGISTER challenged by A, answered at B with SHA-256: 200 from the backend.
    let register = Ua {
        alg: "SHA-256",
        ..REGISTER
    };
    let (_, nonce) = register.challenge(&mut ua_a);
    let r = register.answer(&mut ua_b, &nonce, "00000001");
    assert_eq!(r.status_line, "SIP/2.0 200 OK");

    // INVITE challenged by B, answered at A with MD5; then the nonce counts.
    let (_, nonce) = INVITE.challenge(&mut ua_b);
    assert_eq!(INVITE.answer(&mut ua_a, &nonce, "00000001").code, 200);
    let r = INVITE.answer(&mut ua_b, &nonce, "00000001");
    INVITE.assert_challenged(&r, "the same nc at the other replica");
    assert_eq!(INVITE.answer(&mut ua_b, &nonce, "00000002").code, 200);
    let r = INVITE.answer(&mut ua_a, &nonce, "00000001");
    INVITE.assert_challenged(&r, "a lower nc after a higher one");

    // Only the accepted requests reached the backend, without their credentials.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(backend.requests("REGISTER").len(), 1);
    assert_eq!(backend.requests("INVITE").len(), 2);
    backend.assert_no_credentials();

    assert_eq!(auth_total(&b, "REGISTER", "accepted"), 1.0);
    assert_eq!(auth_total(&a, "INVITE", "accepted"), 1.0);
    assert_eq!(auth_total(&b, "INVITE", "accepted"), 1.0);
    assert_eq!(auth_total(&a, "INVITE", "replayed"), 1.0);
    assert_eq!(auth_total(&b, "INVITE", "replayed"), 1.0);
    // One store round trip per verification (B verified three requests), none for the
    // challenges; a replay adds one to count the failure.
    let trips =
        |p: &Proxy, op: &str| metric(p, &format!("sbc_store_round_trips_total{{op=\"{op}\"}}"));
    assert_eq!(trips(&b, "batch"), 3.0);
    assert_eq!(
        metric(&b, "sbc_auth_store_round_trips_total{op=\"verify\"}"),
        3.0
    );
    assert_eq!(trips(&b, "flood_hit"), 1.0);
    for op in ["get", "hash_get_all", "incr_window", "set_ex"] {
        assert_eq!(trips(&b, op), 0.0, "{op}");
    }
    // The nonce counts live under the cluster's prefix, with a TTL.
    let keys = redis.command(&["KEYS", "e2e:authnc:*"]).unwrap_or_default();
    assert!(keys.starts_with("*2"), "{keys}");
    let nc_key = keys.lines().nth(2).unwrap_or_default().to_owned();
    let ttl = redis.command(&["TTL", &nc_key]).unwrap_or_default();
    let ttl: i64 = ttl.trim().trim_start_matches(':').parse().unwrap_or(-1);
    assert!(ttl > 0 && ttl <= 330, "TTL of {nc_key}: {ttl}");
}

/// Issue 15 item 4 from the wire: eleven REGISTERs someone sends with `To: alice` and no
/// credentials (nor the password) do not lock alice out, on either replica: the REGISTER
/// flood is counted per authenticated user, and before auth per source. And the
/// authenticated alice cannot call as someone else: 403 naming the mismatch.
#[test]
fn spoofed_registers_lock_nobody_out_and_the_from_user_must_be_the_digest_user() {
    if !sbc_only() || !require_tool("redis-server") {
        return;
    }
    let redis_dir = TempDir::new("auth-spoof-redis");
    let redis = RedisServer::start(&redis_dir);
    provision_alice(&redis);
    let backend = RawBackend::start();
    let flood = "accessLists:\n  - name: e2e/registrations\n    registerFlood: {requests: 5, windowSecs: 60, banSecs: 60}\n";
    let config = format!("{}{flood}", auth_config(Some(&redis), ""));
    let (_da, a) = start("auth-spoof-a", &config, &backend);
    let (_db, b) = start("auth-spoof-b", &config, &backend);

    // The attacker, from another address, without the password.
    let mut attacker = SipClient::udp_from(Ipv4Addr::new(127, 0, 0, 2), a.sip_addr());
    let mut last = None;
    for _ in 0..11 {
        let req = REGISTER.request(&attacker);
        last = attacker.request(&req.build(), T).map(|r| r.code);
    }
    assert!(
        matches!(last, Some(401 | 403)),
        "the attacker is challenged or blocked itself: {last:?}"
    );

    // Alice, from her own address, on either replica: registered.
    for (name, p) in [("A", &a), ("B", &b)] {
        let mut ua = SipClient::udp(p.sip_addr());
        let (r, nonce) = REGISTER.challenge(&mut ua);
        assert_eq!(r.code, 401, "replica {name}: {}", r.status_line);
        let r = REGISTER.answer(&mut ua, &nonce, "00000001");
        assert_eq!(
            r.code, 200,
            "replica {name}: alice locked out: {}",
            r.status_line
        );
    }

    // Alice authenticated, claiming to be bob in From.
    let mut ua = SipClient::udp(a.sip_addr());
    let (_, nonce) = INVITE.challenge(&mut ua);
    let req = INVITE
        .request(&ua)
        .set("From", &format!("<sip:bob@{REALM}>;tag=f{}", token()))
        .set("CSeq", "2 INVITE")
        .set(
            "Proxy-Authorization",
            &INVITE.credentials(&nonce, "00000001"),
        );
    let r = ua.request(&req.build(), T).expect("an answer");
    assert_eq!(r.code, 403, "{}", r.status_line);
    assert!(
        r.status_line.to_ascii_lowercase().contains("from"),
        "the reason names the From mismatch: {}",
        r.status_line
    );
    ua.send(&req.ack(&r).build());
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        backend.requests("INVITE").is_empty(),
        "the spoofed INVITE reached the PBX"
    );

    // The limit is live, and it is hers: her own sixth authenticated REGISTER in the window
    // is the one refused (the attacker's eleven did not count).
    let mut ua = SipClient::udp(b.sip_addr());
    let (_, nonce) = REGISTER.challenge(&mut ua);
    let codes: Vec<u16> = (2..=6)
        .map(|nc| REGISTER.answer(&mut ua, &nonce, &format!("{nc:08x}")).code)
        .collect();
    assert_eq!(codes[..3], [200, 200, 200], "{codes:?}");
    assert_eq!(
        codes.last(),
        Some(&403),
        "her sixth REGISTER is over the limit: {codes:?}"
    );
}
