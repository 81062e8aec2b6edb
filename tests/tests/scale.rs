//! Horizontal scale with real sbc processes: replicas are "pods" on 127.0.0.2, .3 and .4 (one
//! port, one outside name `sbc.example.com`, one inside name), PBXs are on 127.0.0.5 and .6.
//!
//! - The call load through a real redis-server: two sipp callees with the call-load algorithm
//!   and `maxload: 1` each; an answered call counts on both replicas until its BYE,
//!   whichever replica relays the BYE.
//! - Stateless in-dialog routing: a dialog set up through one replica goes on through the
//!   others in both directions, also after the first is SIGKILLed.
//! - A rollout: 200 calls while each replica in turn is sent SIGTERM, drains, exits and
//!   comes back; the test sends new calls only to ready replicas, as a Service would.
//!
//! sbc only; needs sipp and redis-server (under `CI=true` their absence fails).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use kubesbc_e2e::sip::{RequestBuilder, SipClient, SipResponse, header, response_to};
use kubesbc_e2e::uas::Pbx;
use kubesbc_e2e::{
    Proxy, RedisServer, Sipp, SippTransport, TempDir, e2e_tools, free_port, require_tool, sbc_only,
    scenario, send_signal,
};

const POD_C: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const POD_A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const POD_B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);
const PBX_1: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 5);
const PBX_2: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);
const OUTSIDE: &str = "sbc.example.com";
const INSIDE: &str = "sbc.voice.svc.cluster.local";

/// The configuration of a replica at `pod:port` whose set 1 is `set` (YAML of the set's
/// fields, indented for the set), with `extra` sections.
fn config(pod: Ipv4Addr, port: u16, set: &str, extra: &str) -> String {
    format!(
        r#"
listeners:
  - {{transport: udp, address: "{pod}:{port}", advertise: "{OUTSIDE}:{port}"}}
dispatcher:
  sets:
    - id: 1
      probing: {{intervalMs: 500, timeoutMs: 400}}
{set}
relay:
  inside: {{address: "{INSIDE}:{port}", networks: ["{PBX_1}/32", "{PBX_2}/32"]}}
{extra}"#
    )
}

/// Starts the sbc of the configuration file in `dir` (fresh admin port) and waits until
/// every URI of `pbx` is up.
fn start_replica(dir: &TempDir, port: u16, pbx: &[String]) -> Proxy {
    let proxy = Proxy::start_sbc_file(dir, &dir.path().join("sbc.yaml"), port);
    for u in pbx {
        proxy.wait_destination(u, true, Duration::from_secs(10));
    }
    proxy
}

/// One replica at `pod:port` over `redis`, in front of `pbx` (call load, maxload 1 each).
fn replica(dir: &TempDir, pod: Ipv4Addr, port: u16, pbx: &[String], redis: &RedisServer) -> Proxy {
    let dests: Vec<String> = pbx
        .iter()
        .map(|u| format!("{{uri: \"{u}\", maxload: 1}}"))
        .collect();
    let set = format!(
        "      algorithm: call-load\n      destinations: [{}]",
        dests.join(", ")
    );
    dir.write("sbc.yaml", &config(pod, port, &set, &redis.store_config()));
    start_replica(dir, port, pbx)
}

/// A replica at `pod:port` in front of the test PBX `pbx`, no store.
fn plain_replica(dir: &TempDir, pod: Ipv4Addr, port: u16, pbx: &Pbx) -> Proxy {
    let set = format!("      destinations: [{{uri: \"{}\"}}]", pbx.uri());
    dir.write("sbc.yaml", &config(pod, port, &set, ""));
    start_replica(dir, port, &[pbx.uri()])
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

/// The Request-URI of a Contact value (`<sip:...>;params` → `sip:...`).
fn contact_uri(contact: &str) -> String {
    contact
        .trim_start_matches('<')
        .split('>')
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// A request of the PBX's in the dialog its INVITE `inv` (as the PBX got it) set up, `ok`
/// being the 200 the caller got (its To carries the PBX's tag). Along the Record-Route set,
/// as a UAS takes it.
fn pbx_request(pbx: &Pbx, method: &str, cseq: u32, inv: &str, ok: &SipResponse) -> Vec<u8> {
    let target = contact_uri(header(inv, "Contact").expect("the caller's Contact"));
    let routes = kubesbc_e2e::sip::header_values(inv, "Record-Route").join(", ");
    let addr = pbx.addr();
    format!(
        "{method} {target} SIP/2.0\r\nVia: SIP/2.0/UDP {addr};branch=z9hG4bKpbx{}\r\n\
         Route: {routes}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\n\
         CSeq: {cseq} {method}\r\nContact: <sip:pbx@{addr}>\r\nContent-Length: 0\r\n\r\n",
        kubesbc_e2e::sip::token(),
        ok.header("To").expect("To"),
        header(inv, "From").expect("From"),
        header(inv, "Call-ID").expect("Call-ID"),
    )
    .into_bytes()
}

/// The caller answers an in-dialog request of the PBX's with 200. Its top Via names the
/// outside address (`OUTSIDE`, which would be the load balancer): the answer goes to `to`,
/// the replica that sent the request, as a load balancer keeping UDP flows would send it.
fn answer(caller: &mut SipClient, req: &str, to: SocketAddr) {
    assert!(
        header(req, "Via").is_some_and(|v| v.contains(&format!("{OUTSIDE}:"))),
        "the outside sees the outside address in Via: {req}"
    );
    let contact = format!("<sip:e2e@{}>", caller.local_addr());
    let resp = response_to(req, 200, "OK", "unused", Some(&contact));
    caller.send_to(resp.as_bytes(), to);
}

/// Whether the message's top Via names replica `pod`.
fn came_through(msg: &str, pod: Ipv4Addr) -> bool {
    header(msg, "Via").is_some_and(|v| v.contains(&format!("{pod}:")))
}

fn is<'a>(method: &'static str, call_id: &'a str) -> impl Fn(&str) -> bool + 'a {
    move |m: &str| m.starts_with(&format!("{method} ")) && header(m, "Call-ID") == Some(call_id)
}

#[test]
fn a_dialog_goes_on_through_any_replica_both_ways_after_its_first_replica_is_killed() {
    if !e2e_tools() || !sbc_only() {
        return;
    }
    let wait = Duration::from_secs(5);
    let pbx = Pbx::start(PBX_1);
    let port = free_port();
    let dirs = [
        TempDir::new("scale-any-a"),
        TempDir::new("scale-any-b"),
        TempDir::new("scale-any-c"),
    ];
    let mut a = plain_replica(&dirs[0], POD_A, port, &pbx);
    let _b = plain_replica(&dirs[1], POD_B, port, &pbx);
    let _c = plain_replica(&dirs[2], POD_C, port, &pbx);
    let [via_a, via_b, via_c] = [POD_A, POD_B, POD_C].map(|p| SocketAddr::from((p, port)));

    // Call 1: INVITE through A, ACK through B.
    let (code, call1, mut caller) = call(via_a, port);
    assert_eq!(code, 200);
    let call1 = call1.expect("answered");
    let call_id = call1.invite.get("Call-ID").expect("Call-ID").to_owned();
    let inv = pbx
        .next(wait, is("INVITE", &call_id))
        .expect("the INVITE reached the PBX");
    assert!(came_through(&inv, POD_A), "{inv}");
    let ack = pbx
        .next(wait, is("ACK", &call_id))
        .expect("the ACK reached the PBX");
    assert!(came_through(&ack, POD_A), "call() ACKs through A: {ack}");
    caller.send_to(&call1.in_dialog("ACK", "1 ACK", &caller).build(), via_b);
    let ack = pbx
        .next(wait, is("ACK", &call_id))
        .expect("the ACK through B reached the PBX");
    assert!(came_through(&ack, POD_B), "{ack}");

    // A dies mid-call.
    send_signal(i64::from(a.pid().expect("pid")), "KILL");
    assert!(a.wait_exit(wait).is_some(), "replica A did not die");

    // The PBX's re-INVITE through C reaches the caller; the caller's 200 reaches the PBX.
    pbx.send_to(&pbx_request(&pbx, "INVITE", 5, &inv, &call1.ok), via_c);
    let reinvite = caller
        .recv_request(wait)
        .expect("the PBX's re-INVITE through C reached the caller");
    assert!(reinvite.starts_with("INVITE sip:e2e@"), "{reinvite}");
    answer(&mut caller, &reinvite, via_c);
    let ok = pbx
        .next(wait, |m| {
            m.starts_with("SIP/2.0 200") && header(m, "CSeq") == Some("5 INVITE")
        })
        .expect("the caller's 200 to the re-INVITE reached the PBX");
    assert_eq!(header(&ok, "Call-ID"), Some(call_id.as_str()));

    // The caller's BYE through C.
    caller.send_to(&call1.in_dialog("BYE", "2 BYE", &caller).build(), via_c);
    let bye = pbx
        .next(wait, is("BYE", &call_id))
        .expect("the BYE reached the PBX");
    assert!(came_through(&bye, POD_C), "{bye}");
    let done = caller
        .recv_final_of(&call_id, "2 BYE", wait)
        .expect("the BYE's 200 came back");
    assert_eq!(done.code, 200);

    // Call 2 through B, and the PBX hangs up through C.
    let (code, call2, mut caller) = call(via_b, port);
    assert_eq!(code, 200);
    let call2 = call2.expect("answered");
    let call_id = call2.invite.get("Call-ID").expect("Call-ID").to_owned();
    let inv = pbx
        .next(wait, is("INVITE", &call_id))
        .expect("the INVITE reached the PBX");
    pbx.send_to(&pbx_request(&pbx, "BYE", 6, &inv, &call2.ok), via_c);
    let bye = caller
        .recv_request(wait)
        .expect("the PBX's BYE through C reached the caller");
    assert!(bye.starts_with("BYE sip:e2e@"), "{bye}");
    answer(&mut caller, &bye, via_c);
    let ok = pbx
        .next(wait, |m| {
            m.starts_with("SIP/2.0 200") && header(m, "CSeq") == Some("6 BYE")
        })
        .expect("the caller's 200 to the BYE reached the PBX");
    assert_eq!(header(&ok, "Call-ID"), Some(call_id.as_str()));
}

/// One open call of the rollout: the caller's INVITE and the 200 it got.
struct Open {
    call: Call,
    call_id: String,
}

/// Places a call through `via`, ACKs it through `ack_via`; panics naming the call when it
/// is not answered.
fn place(
    caller: &mut SipClient,
    port: u16,
    via: SocketAddr,
    ack_via: SocketAddr,
    n: usize,
) -> Open {
    let invite = RequestBuilder::invite(&format!("sip:service@{OUTSIDE}:{port}"), caller);
    let call_id = invite.get("Call-ID").expect("Call-ID").to_owned();
    caller.send_to(&invite.build(), via);
    let ok = caller
        .recv_final_of(&call_id, "1 INVITE", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("call {n} through {via}: no final answer"));
    assert_eq!(ok.code, 200, "call {n} through {via}: {}", ok.status_line);
    let call = Call { invite, ok };
    caller.send_to(&call.in_dialog("ACK", "1 ACK", caller).build(), ack_via);
    Open { call, call_id }
}

/// Hangs up `open` through `via`; panics when the BYE is not answered 200.
fn hang_up(caller: &mut SipClient, open: &Open, via: SocketAddr) {
    caller.send_to(&open.call.in_dialog("BYE", "2 BYE", caller).build(), via);
    let done = caller
        .recv_final_of(&open.call_id, "2 BYE", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("the BYE of {} through {via}: no answer", open.call_id));
    assert_eq!(done.code, 200, "BYE through {via}: {}", done.status_line);
}

#[test]
fn two_hundred_calls_while_every_replica_is_rolled_lose_none() {
    if !e2e_tools() || !sbc_only() {
        return;
    }
    const CALLS: usize = 200;
    /// Calls open at once: each spans several steps of the roll.
    const OPEN: usize = 25;
    let pbx = Pbx::start(PBX_1);
    let port = free_port();
    let pods = [POD_A, POD_B, POD_C];
    let dirs = [
        TempDir::new("scale-roll-a"),
        TempDir::new("scale-roll-b"),
        TempDir::new("scale-roll-c"),
    ];
    let mut replicas: Vec<Option<Proxy>> = (0..3)
        .map(|i| Some(plain_replica(&dirs[i], pods[i], port, &pbx)))
        .collect();
    let addr = |i: usize| SocketAddr::from((pods[i], port));
    // Which replicas a Service would send to: not one that got SIGTERM (readiness flips).
    let mut ready = [true; 3];
    // Replica `r` is sent SIGTERM once `at` calls were placed and the previous one is back;
    // it comes back once it has drained and exited. Calls go on until all three are back.
    let rolls = [(40, 0), (100, 1), (160, 2)];
    let mut next_roll = 0;
    let mut rolling: Option<usize> = None;
    let mut caller = SipClient::udp(addr(0));
    let mut open: std::collections::VecDeque<Open> = std::collections::VecDeque::new();
    let mut restarted = 0;
    let mut n = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while n < CALLS || rolling.is_some() || next_roll < rolls.len() {
        assert!(
            std::time::Instant::now() < deadline,
            "the roll did not finish: {restarted} replicas back after {n} calls"
        );
        if rolling.is_none()
            && let Some(&(at, r)) = rolls.get(next_roll)
            && n >= at
        {
            replicas[r].as_ref().expect("running").terminate();
            ready[r] = false;
            rolling = Some(r);
            next_roll += 1;
        }
        if let Some(r) = rolling
            && replicas[r].as_mut().expect("running").try_exit().is_some()
        {
            // It drained and exited: start it again (a new pod with the same address).
            replicas[r] = Some(start_replica(&dirs[r], port, &[pbx.uri()]));
            ready[r] = true;
            rolling = None;
            restarted += 1;
        }
        let up: Vec<usize> = (0..3).filter(|&i| ready[i]).collect();
        let pick = |k: usize| addr(up[k % up.len()]);
        open.push_back(place(&mut caller, port, pick(n), pick(n + 1), n));
        if open.len() > OPEN {
            let oldest = open.pop_front().expect("an open call");
            hang_up(&mut caller, &oldest, pick(n + 2));
        }
        n += 1;
        std::thread::sleep(Duration::from_millis(40));
    }
    assert_eq!(restarted, 3, "every replica was rolled");
    let up: Vec<usize> = (0..3).filter(|&i| ready[i]).collect();
    for (k, o) in open.drain(..).enumerate() {
        hang_up(&mut caller, &o, addr(up[k % up.len()]));
    }
    // Calls, not messages: under load the sbc may retransmit a BYE over UDP.
    let byes: std::collections::BTreeSet<String> = pbx
        .drain()
        .iter()
        .filter(|m| m.starts_with("BYE "))
        .filter_map(|m| header(m, "Call-ID").map(str::to_owned))
        .collect();
    assert_eq!(byes.len(), n, "every call's BYE reached the PBX");
}

/// With keys every replica shares (`relay.topology.keyFile`, in a cluster the Secret of
/// `topologyKeySecretRef`), a request for a stream client's connection that reaches a replica
/// not holding it is forwarded to the one that does: the PBX's BYE for a TCP caller of
/// replica A, sent to replica B, reaches the caller over its connection to A, and the
/// caller's 200 finds its way back to the PBX through B.
#[test]
fn a_request_for_a_connection_held_by_another_replica_is_forwarded_to_it() {
    if !e2e_tools() || !sbc_only() {
        return;
    }
    let wait = Duration::from_secs(5);
    let pbx = Pbx::start(PBX_1);
    let port = free_port();
    let dirs = [TempDir::new("scale-flow-a"), TempDir::new("scale-flow-b")];
    let keys = dirs[0].write("flow.keys", "a-key-every-replica-shares-0123\n");
    let mut proxies = Vec::new();
    for (dir, pod) in dirs.iter().zip([POD_A, POD_B]) {
        let cfg = format!(
            r#"
listeners:
  - {{transport: udp, address: "{pod}:{port}", advertise: "{OUTSIDE}:{port}"}}
  - {{transport: tcp, address: "{pod}:{port}", advertise: "{OUTSIDE}:{port}"}}
dispatcher:
  sets:
    - id: 1
      probing: {{intervalMs: 500, timeoutMs: 400}}
      destinations: [{{uri: "{}"}}]
relay:
  inside: {{address: "{INSIDE}:{port}", networks: ["{POD_A}/32", "{POD_B}/32", "{PBX_1}/32"]}}
  topology: {{hide: false, callIdPrefix: "", keyFile: "{}"}}
"#,
            pbx.uri(),
            keys.display()
        );
        dir.write("sbc.yaml", &cfg);
        proxies.push(start_replica(dir, port, &[pbx.uri()]));
    }
    let (via_a, via_b) = (
        SocketAddr::from((POD_A, port)),
        SocketAddr::from((POD_B, port)),
    );

    // A TCP caller's call through A.
    let mut caller = SipClient::tcp(via_a);
    let invite = RequestBuilder::invite(&format!("sip:service@{OUTSIDE}:{port}"), &caller);
    let call_id = invite.get("Call-ID").expect("Call-ID").to_owned();
    caller.send(&invite.build());
    let ok = caller
        .recv_final_of(&call_id, "1 INVITE", wait)
        .expect("the call is answered");
    assert_eq!(ok.code, 200, "{}", ok.status_line);
    let call = Call { invite, ok };
    caller.send(&call.in_dialog("ACK", "1 ACK", &caller).build());
    let inv = pbx
        .next(wait, is("INVITE", &call_id))
        .expect("the INVITE reached the PBX");
    let rr = kubesbc_e2e::sip::header_values(&inv, "Record-Route").join(", ");
    assert!(
        rr.contains("@sbc.example.com") && rr.contains("transport=tcp"),
        "the caller's side carries its flow token: {rr}"
    );

    // The PBX hangs up through B, which does not hold the caller's connection.
    pbx.send_to(&pbx_request(&pbx, "BYE", 7, &inv, &call.ok), via_b);
    let bye = caller
        .recv_request(wait)
        .expect("the BYE through B reached the caller over its connection to A");
    assert!(bye.starts_with("BYE "), "{bye}");
    let contact = format!("<sip:e2e@{}>", caller.local_addr());
    caller.send(response_to(&bye, 200, "OK", "unused", Some(&contact)).as_bytes());
    let ok = pbx
        .next(wait, |m| {
            m.starts_with("SIP/2.0 200") && header(m, "CSeq") == Some("7 BYE")
        })
        .expect("the caller's 200 reached the PBX");
    assert!(
        header(&ok, "Via").is_some_and(|v| v.contains(&pbx.addr().to_string())),
        "{ok}"
    );
}
