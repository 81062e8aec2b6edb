//! Flows (RFC 5626 tokens, RFC 3327 Path): a stream client's REGISTER carries a Path with its
//! flow token, a dialog it starts gets a Record-Route entry with it, and requests from the
//! backend naming the token go over the client's connection, or get 430 when it is closed.

use super::*;

/// A client on a TCP connection (flow 3).
const CLIENT: &str = "10.0.0.9:40100";

fn client() -> Peer {
    Peer {
        flow: Some(3),
        ..peer(CLIENT, Transport::Tcp)
    }
}

fn tcp(s: &str) -> String {
    s.replace("SIP/2.0/UDP 10.0.0.9:5090", "SIP/2.0/TCP 10.0.0.9:40100")
}

fn headers<'a>(s: &'a Sent, name: &str) -> Vec<&'a str> {
    s.data
        .split("\r\n")
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
        .collect()
}

/// The URI inside `<...>`.
fn uri(name_addr: &str) -> &str {
    name_addr.trim_start_matches('<').trim_end_matches('>')
}

/// A MESSAGE from backend A to the registered contact, routed by `route`.
fn message_from_backend(route: &str) -> String {
    format!(
        "MESSAGE sip:alice@10.0.0.9:40100;transport=tcp SIP/2.0\r\nVia: SIP/2.0/UDP {A};branch=z9hG4bKm1\r\nRoute: {route}\r\nMax-Forwards: 70\r\nFrom: <sip:pbx@127.0.0.1>;tag=p1\r\nTo: <sip:alice@127.0.0.1>\r\nCall-ID: msg-1\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n"
    )
}

fn registered_path(h: &mut Harness) -> String {
    let fwd = h.request_from(&tcp(REGISTER), client()).only_to(A).clone();
    let path = fwd.header("Path").expect("a Path").to_owned();
    assert!(
        path.starts_with("<sip:kf") && path.ends_with("@127.0.0.1:5060;lr;ob>"),
        "{path}"
    );
    assert_eq!(fwd.header("Supported"), Some("path"));
    assert_eq!(headers(&fwd, "Record-Route").len(), 1, "REGISTER keeps one");
    path
}

#[test]
fn a_stream_clients_register_carries_path_and_a_udp_one_does_not() {
    let mut h = Harness::new();
    registered_path(&mut h);
    let fwd = h.request(REGISTER).only_to(A).clone();
    assert_eq!(fwd.header("Path"), None, "UDP clients need no flow");
}

#[test]
fn a_request_routed_by_the_path_goes_over_the_clients_connection() {
    let mut h = Harness::new();
    let path = registered_path(&mut h);
    let o = h.request_from(&message_from_backend(&path), udp(A));
    let to_client = o.only_to(CLIENT).clone();
    assert_eq!(to_client.to, client(), "over connection 3");
    assert!(to_client.line().starts_with("MESSAGE "));
    assert_eq!(
        to_client.header("Route"),
        None,
        "our Path entry is consumed"
    );
    let ok = h.answer(&to_client, 200, "OK", Some("c1"));
    assert_eq!(ok.only_to(A).line(), "SIP/2.0 200 OK");
}

#[test]
fn a_closed_flow_answers_430() {
    let mut h = Harness::new();
    let path = registered_path(&mut h);
    h.open = Box::new(|p| p.flow != Some(3));
    let o = h.request_from(&message_from_backend(&path), udp(A));
    assert_eq!(o.lines(), vec!["SIP/2.0 430 Flow Failed"]);
    assert_eq!(o.sent[0].to(), A);
}

#[test]
fn a_forged_flow_token_reaches_no_connection() {
    let mut h = Harness::new();
    let path = registered_path(&mut h);
    // Another connection id under the same MAC.
    let i = path.find("kf").unwrap() + 2 + 17;
    let mut forged = path.clone().into_bytes();
    forged[i] = if forged[i] == b'0' { b'1' } else { b'0' };
    let forged = String::from_utf8(forged).unwrap();
    let o = h.request_from(&message_from_backend(&forged), udp(A));
    assert!(o.to(CLIENT).is_empty(), "{:#?}", o.sent);
    assert!(o.sent.iter().all(|s| s.to.flow.is_none()));
}

#[test]
fn a_dialog_of_a_stream_client_gets_two_record_routes_and_the_backends_bye_follows_the_flow() {
    let mut h = Harness::new();
    let fwd = h.request_from(&tcp(INVITE), client()).only_to(A).clone();
    let rr = headers(&fwd, "Record-Route");
    assert_eq!(rr.len(), 2, "{rr:?}");
    assert_eq!(
        rr[0], "<sip:127.0.0.1:5060;lr>",
        "the backend's side on top"
    );
    assert!(
        rr[1].starts_with("<sip:kf") && rr[1].ends_with("@127.0.0.1:5060;transport=tcp;lr>"),
        "the client's side with its token: {}",
        rr[1]
    );
    h.answer(&fwd, 200, "OK", Some("t1"));
    // The UAS's route set is the Record-Route in order.
    let bye = format!(
        "BYE sip:alice@10.0.0.9:40100;transport=tcp SIP/2.0\r\nVia: SIP/2.0/UDP {A};branch=z9hG4bKbb\r\nRoute: {}, {}\r\nMax-Forwards: 70\r\nFrom: <sip:bob@127.0.0.1>;tag=t1\r\nTo: <sip:alice@10.0.0.9>;tag=f1\r\nCall-ID: call-1\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n",
        rr[0], rr[1]
    );
    let o = h.request_from(&bye, udp(A));
    assert_eq!(o.only_to(CLIENT).to, client());
    assert_eq!(o.only_to(CLIENT).header("Route"), None);
    // The client's own BYE names its flow too (route set reversed): it goes to the backend.
    let bye = format!(
        "BYE sip:bob@{A} SIP/2.0\r\nVia: SIP/2.0/TCP 10.0.0.9:40100;branch=z9hG4bKcb\r\nRoute: <{}>, <{}>\r\nMax-Forwards: 70\r\nFrom: <sip:alice@10.0.0.9>;tag=f1\r\nTo: <sip:bob@127.0.0.1>;tag=t1\r\nCall-ID: call-1\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
        uri(rr[1]),
        uri(rr[0])
    );
    let o = h.request_from(&bye, client());
    assert!(o.only_to(A).line().starts_with("BYE "));
}

#[test]
fn a_udp_dialog_keeps_one_record_route() {
    let mut h = Harness::new();
    let fwd = h.request(INVITE).only_to(A).clone();
    assert_eq!(
        headers(&fwd, "Record-Route"),
        vec!["<sip:127.0.0.1:5060;lr>"]
    );
}

#[test]
fn an_invite_from_the_backend_over_the_path_is_record_routed_with_the_clients_token_on_top() {
    let mut h = Harness::new();
    let path = registered_path(&mut h);
    let invite = message_from_backend(&path)
        .replace("MESSAGE sip:", "INVITE sip:")
        .replace("1 MESSAGE", "1 INVITE")
        .replace("bKm1", "bKi1");
    let o = h.request_from(&invite, udp(A));
    assert_eq!(o.only_to(A).line(), "SIP/2.0 100 Trying");
    let fwd = o.only_to(CLIENT);
    let rr = headers(fwd, "Record-Route");
    assert_eq!(rr.len(), 2, "{rr:?}");
    assert!(
        rr[0].starts_with("<sip:kf") && rr[0].ends_with(";transport=tcp;lr>"),
        "the client's side, facing it, on top: {}",
        rr[0]
    );
    assert_eq!(rr[1], "<sip:127.0.0.1:5060;lr>");
}

/// The Path another replica (at `owner`) would have written for the client, with keys
/// every replica shares.
fn path_held_by(h: &mut Harness, owner: &str) -> String {
    h.local.flow_key = crate::flow::FlowKey::shared(&["the-key-every-replica-reads"]).unwrap();
    let token = h
        .local
        .flow_key
        .token(&client(), Some(owner.parse().unwrap()))
        .unwrap();
    format!(
        "<sip:{}@127.0.0.1:5060;lr;ob>",
        String::from_utf8(token).unwrap()
    )
}

#[test]
fn a_request_for_a_connection_another_replica_holds_is_forwarded_there_with_its_route() {
    let mut h = Harness::new();
    let path = path_held_by(&mut h, "127.0.0.9:5060");
    // The same connection id is open here too, for someone else: it must not get it.
    h.open = Box::new(|_| true);
    let o = h.request_from(&message_from_backend(&path), udp(A));
    assert!(o.to(CLIENT).is_empty(), "{:#?}", o.sent);
    let fwd = o.only_to("127.0.0.9:5060").clone();
    assert_eq!(fwd.to.transport, Transport::Udp);
    assert!(fwd.line().starts_with("MESSAGE sip:alice@10.0.0.9:40100"));
    assert_eq!(
        fwd.header("Route"),
        Some(path.as_str()),
        "the owner needs the token"
    );
    assert_eq!(fwd.header("Max-Forwards"), Some("69"));
    // The owner's answer comes back through this replica's transaction.
    let ok = h.answer(&fwd, 200, "OK", Some("c1"));
    assert_eq!(ok.only_to(A).line(), "SIP/2.0 200 OK");
}

#[test]
fn a_token_naming_this_replica_whose_connection_closed_answers_430() {
    let mut h = Harness::new();
    let path = path_held_by(&mut h, "127.0.0.1:5060");
    h.open = Box::new(|p| p.flow != Some(3));
    let o = h.request_from(&message_from_backend(&path), udp(A));
    assert_eq!(o.lines(), vec!["SIP/2.0 430 Flow Failed"]);
}
