//! Replicas sharing the call load through a real redis-server: two sbc "pods" (127.0.0.3 and
//! 127.0.0.4, one port, one outside name) in front of two sipp callees (127.0.0.5 and
//! 127.0.0.6) with the call-load algorithm and `maxload: 1` each. An answered call counts on
//! both replicas until its BYE, whichever replica relays the BYE. sbc only; needs sipp and
//! redis-server (under `CI=true` their absence fails).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use kubesbc_e2e::sip::{RequestBuilder, SipClient, SipResponse};
use kubesbc_e2e::{
    Proxy, RedisServer, Sipp, SippTransport, TempDir, e2e_tools, free_port, loopback, require_tool,
    sbc_only, scenario,
};

const POD_A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const POD_B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);
const PBX_1: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 5);
const PBX_2: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);
const OUTSIDE: &str = "sbc.example.com";
const INSIDE: &str = "sbc.voice.svc.cluster.local";

/// One replica at `pod:port` over `redis`, in front of `pbx` (both in set 1).
fn replica(dir: &TempDir, pod: Ipv4Addr, port: u16, pbx: &[String], redis: &RedisServer) -> Proxy {
    let dests: Vec<String> = pbx
        .iter()
        .map(|u| format!("{{uri: \"{u}\", maxload: 1}}"))
        .collect();
    let config = format!(
        r#"
listeners:
  - {{transport: udp, address: "{pod}:{port}", advertise: "{OUTSIDE}:{port}"}}
dispatcher:
  sets:
    - id: 1
      algorithm: call-load
      destinations: [{}]
      probing: {{intervalMs: 500, timeoutMs: 400}}
relay:
  inside: {{address: "{INSIDE}:{port}", networks: ["{PBX_1}/32", "{PBX_2}/32"]}}
{}"#,
        dests.join(", "),
        redis.store_config()
    );
    let file = dir.write("sbc.yaml", &config);
    let admin = loopback(free_port());
    let args = [
        "--config".to_owned(),
        file.display().to_string(),
        "--admin".to_owned(),
        admin.to_string(),
    ];
    let proxy = Proxy::start_sbc(dir, &args, port, admin);
    for u in pbx {
        proxy.wait_destination(u, true, Duration::from_secs(10));
    }
    proxy
}

/// An answered call, ready for its BYE.
struct Call {
    invite: RequestBuilder,
    ok: SipResponse,
}

impl Call {
    /// The in-dialog request `method` with CSeq `cseq`, from `client`, along the route set.
    fn in_dialog(&self, method: &str, cseq: &str, client: &SipClient) -> RequestBuilder {
        let target = self
            .ok
            .header("Contact")
            .expect("Contact")
            .trim_start_matches('<')
            .split('>')
            .next()
            .expect("a URI")
            .to_owned();
        // The caller's route set is the Record-Route reversed.
        let rr = self.ok.header("Record-Route").expect("Record-Route");
        let mut route: Vec<&str> = rr.split(", ").collect();
        route.reverse();
        let mut r = RequestBuilder::new(method, &target, client)
            .set("Route", &route.join(", "))
            .set("To", self.ok.header("To").expect("To"))
            .set("CSeq", cseq)
            .remove("Contact");
        for h in ["Call-ID", "From"] {
            r = r.set(h, self.invite.get(h).expect("header"));
        }
        r
    }

    /// Which PBX answered (the host of its Contact).
    fn pbx(&self) -> String {
        let c = self.ok.header("Contact").expect("Contact");
        if c.contains(&PBX_1.to_string()) {
            "pbx-1".into()
        } else if c.contains(&PBX_2.to_string()) {
            "pbx-2".into()
        } else {
            panic!("answered by neither PBX: {c}")
        }
    }
}

/// An INVITE through `via`; the final answer, and the call when it is a 2xx (ACKed).
fn call(via: SocketAddr, port: u16) -> (u16, Option<Call>, SipClient) {
    let mut caller = SipClient::udp(via);
    let invite = RequestBuilder::invite(&format!("sip:service@{OUTSIDE}:{port}"), &caller);
    caller.send(&invite.build());
    let ok = caller
        .recv_final(Duration::from_secs(10))
        .expect("a final answer");
    if ok.code != 200 {
        return (ok.code, None, caller);
    }
    let c = Call { invite, ok };
    caller.send(&c.in_dialog("ACK", "1 ACK", &caller).build());
    (200, Some(c), caller)
}

/// Longer than the sbc's refresh of the shared counts (500 ms), with margin.
const SETTLE: Duration = Duration::from_millis(1500);

#[test]
fn an_answered_call_counts_on_every_replica_until_its_bye_through_another() {
    if !e2e_tools() || !sbc_only() || !require_tool("redis-server") {
        return;
    }
    let dir = TempDir::new("scale-load");
    let redis = RedisServer::start(&dir);
    let pbx1 = Sipp::uas_on(
        &dir,
        "pbx-1",
        &scenario("uas.xml"),
        PBX_1,
        free_port(),
        SippTransport::Udp,
    );
    let pbx2 = Sipp::uas_on(
        &dir,
        "pbx-2",
        &scenario("uas.xml"),
        PBX_2,
        free_port(),
        SippTransport::Udp,
    );
    let uris = [
        format!("sip:{PBX_1}:{}", pbx1.port()),
        format!("sip:{PBX_2}:{}", pbx2.port()),
    ];
    let port = free_port();
    let dir_b = TempDir::new("scale-load-b");
    let _a = replica(&dir, POD_A, port, &uris, &redis);
    let _b = replica(&dir_b, POD_B, port, &uris, &redis);
    let (a, b) = (
        SocketAddr::from((POD_A, port)),
        SocketAddr::from((POD_B, port)),
    );

    // Both idle: the first call takes one PBX (both replicas break the tie alike).
    let (code, first, _c1) = call(a, port);
    assert_eq!(code, 200);
    let first = first.expect("answered");
    let busy = first.pbx();
    std::thread::sleep(SETTLE);
    // Replica B knows that PBX has a call: its call goes to the other one.
    let (code, second, _c2) = call(b, port);
    assert_eq!(code, 200);
    assert_ne!(
        second.expect("answered").pbx(),
        busy,
        "replica B saw replica A's call"
    );
    std::thread::sleep(SETTLE);
    // Both at their maxload, on either replica.
    for via in [a, b] {
        let (code, _, _) = call(via, port);
        assert_eq!(code, 503, "every PBX is at its maxload (through {via})");
    }
    // The first call's BYE goes through replica B: its capacity comes back on A too.
    let mut bye_client = SipClient::udp(b);
    bye_client.send(&first.in_dialog("BYE", "2 BYE", &bye_client).build());
    std::thread::sleep(SETTLE);
    let (code, again, _c3) = call(a, port);
    assert_eq!(code, 200, "the BYE through B freed {busy} for A");
    assert_eq!(again.expect("answered").pbx(), busy);
    assert!(
        redis
            .command(&["KEYS", "e2e:load:*"])
            .is_some_and(|k| !k.starts_with("*0")),
        "the call load is kept in Redis"
    );
}
