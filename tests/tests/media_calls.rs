//! Media anchoring in the call path: an sbc with a `media` section between a raw SIP caller
//! and a small UAS in the test, against a real rtpengine (userspace, `--table=-1`, loopback).
//! The SDP each side sees is rtpengine's, RTP goes through rtpengine both ways, rtpengine's
//! `query` knows the call while it runs and not after BYE, CANCEL or a refusal; a malformed
//! offer gets 400; rtpengine killed mid-call: the next call gets 503 with Retry-After and the
//! running call's BYE still ends it.

use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kubesbc_e2e::proxy::{Proxy, run_sbc};
use kubesbc_e2e::rtpengine::Rtpengine;
use kubesbc_e2e::sip::{RequestBuilder, SipClient, SipResponse};
use kubesbc_e2e::{LOOPBACK, TempDir, free_port, loopback, require_tool, sbc_only, wait_for};
use sbc::media::client::{NgClient, Timing};
use sbc::media::pool::Pool;
use sbc::media::profile::Profiles;
use sbc::media::{Anchor, FailurePolicy};

const WAIT: Duration = Duration::from_secs(5);

/// What the test's UAS does with an INVITE.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// 200 with an SDP answer.
    Answer,
    /// 180, then waits for the CANCEL (487).
    Ring,
    /// 486 Busy Here.
    Busy,
}

/// A UAS on loopback UDP: answers OPTIONS, INVITE (per [`Mode`]), CANCEL, BYE; keeps every
/// request it got.
struct Uas {
    addr: SocketAddr,
    rtp: UdpSocket,
    got: Arc<Mutex<Vec<String>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn header<'a>(msg: &'a str, name: &str) -> Vec<&'a str> {
    let head = msg.split("\r\n\r\n").next().unwrap_or("");
    head.split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .collect()
}

fn body(msg: &str) -> &str {
    msg.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

fn response(req: &str, code: u16, reason: &str, sdp: Option<&str>, me: SocketAddr) -> Vec<u8> {
    let mut s = format!("SIP/2.0 {code} {reason}\r\n");
    for v in header(req, "Via") {
        s.push_str(&format!("Via: {v}\r\n"));
    }
    for v in header(req, "Record-Route") {
        s.push_str(&format!("Record-Route: {v}\r\n"));
    }
    let to = header(req, "To")[0];
    let to = if to.contains("tag=") || code == 100 {
        to.to_owned()
    } else {
        format!("{to};tag=uas")
    };
    s.push_str(&format!(
        "From: {}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {}\r\nContact: <sip:uas@{me}>\r\n",
        header(req, "From")[0],
        header(req, "Call-ID")[0],
        header(req, "CSeq")[0]
    ));
    match sdp {
        Some(b) => s.push_str(&format!(
            "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        )),
        None => s.push_str("Content-Length: 0\r\n\r\n"),
    }
    s.into_bytes()
}

fn sdp(origin: &str, port: u16) -> String {
    format!(
        "v=0\r\no=- 4711 1 IN IP4 {origin}\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
    )
}

impl Uas {
    fn start(mode: Mode) -> Uas {
        let sock = UdpSocket::bind((LOOPBACK, 0)).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let rtp = UdpSocket::bind((LOOPBACK, 0)).unwrap();
        let addr = sock.local_addr().unwrap();
        let answer = sdp("192.0.2.2", rtp.local_addr().unwrap().port());
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (g, st) = (got.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            let mut ringing: Option<String> = None;
            while !st.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok((n, src)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let req = String::from_utf8_lossy(&buf[..n]).into_owned();
                if req.starts_with("SIP/2.0") {
                    continue;
                }
                let method = req.split(' ').next().unwrap_or("").to_owned();
                if method != "OPTIONS" {
                    g.lock().unwrap().push(req.clone());
                }
                let send = |b: Vec<u8>| {
                    let _ = sock.send_to(&b, src);
                };
                match method.as_str() {
                    "INVITE" => match mode {
                        Mode::Answer => send(response(&req, 200, "OK", Some(&answer), addr)),
                        Mode::Busy => send(response(&req, 486, "Busy Here", None, addr)),
                        Mode::Ring => {
                            send(response(&req, 180, "Ringing", None, addr));
                            ringing = Some(req);
                        }
                    },
                    "CANCEL" => {
                        send(response(&req, 200, "OK", None, addr));
                        if let Some(inv) = ringing.take() {
                            send(response(&inv, 487, "Request Terminated", None, addr));
                        }
                    }
                    "ACK" => {}
                    _ => send(response(&req, 200, "OK", None, addr)),
                }
            }
        });
        Uas {
            addr,
            rtp,
            got,
            stop,
            thread: Some(thread),
        }
    }

    fn requests(&self, method: &str) -> Vec<String> {
        let g = self.got.lock().unwrap();
        g.iter()
            .filter(|r| r.starts_with(&format!("{method} ")))
            .cloned()
            .collect()
    }

    fn wait_request(&self, method: &str) -> String {
        wait_for(WAIT, || self.requests(method).pop())
            .unwrap_or_else(|| panic!("the backend got no {method}"))
    }
}

impl Drop for Uas {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn media_port(sdp: &str) -> u16 {
    let m = sdp
        .lines()
        .find(|l| l.starts_with("m="))
        .unwrap_or_else(|| panic!("no m= line in {sdp:?}"));
    m.split(' ').nth(1).unwrap().parse().unwrap()
}

fn config(sip: u16, admin: u16, backend: SocketAddr, ng: &str, webrtc: bool) -> String {
    let ws = sip + 1;
    format!(
        "listeners:\n  - {{transport: udp, address: \"127.0.0.1:{sip}\"}}\n\
         \x20 - {{transport: ws, address: \"127.0.0.1:{ws}\"}}\n\
         admin:\n  address: \"127.0.0.1:{admin}\"\n\
         dispatcher:\n  sets:\n    - id: 1\n      destinations: [{{uri: \"sip:{backend}\", webrtc: {webrtc}}}]\n\
         media:\n  rtpengine: [\"{ng}\"]\n  pingIntervalMs: 200\n  timeoutMs: 300\n  retransmitMs: 100\n  retryAfterSecs: 7\n"
    )
}

/// A free port whose next one is free too (the ws listener's).
fn port_pair() -> u16 {
    loop {
        let p = free_port();
        if p < u16::MAX
            && UdpSocket::bind((LOOPBACK, p + 1)).is_ok()
            && std::net::TcpListener::bind((LOOPBACK, p + 1)).is_ok()
        {
            return p;
        }
    }
}

struct Bed {
    _dir: TempDir,
    rtpengine: Rtpengine,
    sbc: Proxy,
    uas: Uas,
    rt: tokio::runtime::Runtime,
    anchor: Anchor,
}

impl Bed {
    fn start(mode: Mode) -> Option<Bed> {
        Bed::start_with(mode, false)
    }

    /// With the backend flagged `webrtc` when `webrtc_backend`.
    fn start_with(mode: Mode, webrtc_backend: bool) -> Option<Bed> {
        if !sbc_only() || !require_tool("rtpengine") {
            return None;
        }
        let dir = TempDir::new("media-calls");
        let rtpengine = Rtpengine::start(&dir);
        let uas = Uas::start(mode);
        let (sip, admin) = (port_pair(), free_port());
        let cfg = dir.write(
            "sbc.yaml",
            &config(sip, admin, uas.addr, &rtpengine.ng_name(), webrtc_backend),
        );
        let args = vec!["--config".to_owned(), cfg.to_str().unwrap().to_owned()];
        let sbc = Proxy::start_sbc(&dir, &args, sip, loopback(admin));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let anchor = rt.block_on(async {
            let timing = Timing {
                timeout: Duration::from_millis(500),
                retransmit: Duration::from_millis(100),
            };
            let client = NgClient::bind("127.0.0.1:0".parse().unwrap(), timing)
                .await
                .unwrap();
            let pool = Pool::new(&[rtpengine.ng_name()], client).await;
            pool.ping_all().await;
            Anchor::from_parts(pool, Profiles::default(), FailurePolicy::default())
        });
        Some(Bed {
            _dir: dir,
            rtpengine,
            sbc,
            uas,
            rt,
            anchor,
        })
    }

    /// Whether rtpengine knows the call.
    fn known(&self, call_id: &str) -> bool {
        let id = Bytes::from(call_id.to_owned());
        self.rt.block_on(self.anchor.query(&id)).is_ok()
    }

    fn invite(&self, c: &SipClient, rtp_port: u16) -> RequestBuilder {
        let mut inv = RequestBuilder::invite(&format!("sip:bob@{}", self.uas.addr), c);
        inv.body = sdp("192.0.2.1", rtp_port);
        inv
    }
}

/// The in-dialog request `method` after `ok` (Route from its Record-Route, to its Contact).
fn in_dialog(inv: &RequestBuilder, ok: &SipResponse, method: &str, cseq: u32) -> RequestBuilder {
    let contact = ok.header("Contact").unwrap().trim_matches(['<', '>']);
    let mut r = inv
        .clone()
        .remove("Content-Type")
        .set("To", ok.header("To").unwrap())
        .set("CSeq", &format!("{cseq} {method}"));
    for (n, v) in ok.headers.iter().rev() {
        if n.eq_ignore_ascii_case("Record-Route") {
            r = r.set("Route", v);
        }
    }
    r.method = method.to_owned();
    r.uri = contact.to_owned();
    r.body.clear();
    let branch = format!("z9hG4bK{}", kubesbc_e2e::sip::token());
    let via = r
        .get("Via")
        .unwrap()
        .replace("z9hG4bK", &format!("{branch}x"));
    r.set("Via", &via)
}

fn rtp_packet(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 0x00];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    p.extend(std::iter::repeat_n(0xd5, 160));
    p
}

/// Sends RTP from `from` to `to` until 5 packets arrived at `at`.
fn rtp_flows(from: &UdpSocket, to: SocketAddr, at: &UdpSocket) {
    at.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let (mut got, mut seq) = (0, 0u16);
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + WAIT;
    while got < 5 && Instant::now() < deadline {
        seq += 1;
        from.send_to(&rtp_packet(seq), to).unwrap();
        while let Ok((len, _)) = at.recv_from(&mut buf) {
            assert_eq!(len, 172, "RTP arrives unchanged in size");
            got += 1;
        }
    }
    assert!(got >= 5, "{got} RTP packets arrived of {seq} sent to {to}");
}

#[test]
fn a_call_through_the_sbc_is_anchored_rtp_flows_both_ways_and_bye_deletes_it() {
    let Some(bed) = Bed::start(Mode::Answer) else {
        return;
    };
    let caller_rtp = UdpSocket::bind((LOOPBACK, 0)).unwrap();
    let mut c = SipClient::udp(bed.sbc.sip_addr());
    let inv = bed.invite(&c, caller_rtp.local_addr().unwrap().port());
    let call_id = inv.get("Call-ID").unwrap().to_owned();
    let ok = c.request(&inv.build(), WAIT).expect("a final response");
    assert_eq!(ok.code, 200, "{ok:?}\n{}", bed.sbc.log_tail());
    // The caller sees rtpengine's port and address, not the backend's.
    let ports = bed.rtpengine.ports();
    let to_caller = media_port(&ok.body);
    assert!(ports.contains(&to_caller), "{}", ok.body);
    assert!(!ok.body.contains("192.0.2.2"), "{}", ok.body);
    assert_eq!(
        ok.header("Content-Length").unwrap(),
        ok.body.len().to_string()
    );
    // The backend got rtpengine's offer, Content-Length fixed.
    let got = bed.uas.wait_request("INVITE");
    let offer = body(&got);
    let to_backend = media_port(offer);
    assert!(ports.contains(&to_backend), "{offer}");
    assert!(!offer.contains("192.0.2.1"), "{offer}");
    assert_eq!(header(&got, "Content-Length")[0], offer.len().to_string());
    assert!(offer.contains("RTP/AVP"), "{offer}");
    c.send(&in_dialog(&inv, &ok, "ACK", 1).build());
    bed.uas.wait_request("ACK");
    // RTP: caller -> rtpengine -> backend, and back.
    let rtpe = |p| SocketAddr::from((LOOPBACK, p));
    rtp_flows(&caller_rtp, rtpe(to_caller), &bed.uas.rtp);
    rtp_flows(&bed.uas.rtp, rtpe(to_backend), &caller_rtp);
    assert!(bed.known(&call_id), "rtpengine's query knows the call");
    let bye = c
        .request(&in_dialog(&inv, &ok, "BYE", 2).build(), WAIT)
        .expect("BYE answered");
    assert_eq!(bye.code, 200);
    assert!(
        wait_for(WAIT, || (!bed.known(&call_id)).then_some(())).is_some(),
        "the call is still in rtpengine after BYE"
    );
    let m = bed.sbc.metrics();
    assert!(
        m.contains("sbc_media_commands_total{command=\"offer\",outcome=\"ok\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("sbc_media_commands_total{command=\"answer\",outcome=\"ok\"} 1"),
        "{m}"
    );
}

#[test]
fn a_late_offer_is_offered_from_the_200_and_answered_from_the_ack() {
    let Some(bed) = Bed::start(Mode::Answer) else {
        return;
    };
    let mut c = SipClient::udp(bed.sbc.sip_addr());
    let mut inv = bed.invite(&c, 4000).remove("Content-Type");
    inv.body.clear();
    let call_id = inv.get("Call-ID").unwrap().to_owned();
    let ok = c.request(&inv.build(), WAIT).expect("a final response");
    assert_eq!(ok.code, 200, "{ok:?}");
    // The backend got no SDP; its offer in the 200 reaches the caller as rtpengine's.
    assert_eq!(body(&bed.uas.wait_request("INVITE")), "");
    assert!(
        bed.rtpengine.ports().contains(&media_port(&ok.body)),
        "{}",
        ok.body
    );
    let mut ack = in_dialog(&inv, &ok, "ACK", 1).set("Content-Type", "application/sdp");
    ack.body = sdp("192.0.2.1", 4000);
    c.send(&ack.build());
    let got = bed.uas.wait_request("ACK");
    assert!(ports_in(&bed, &got), "{got}");
    assert!(!body(&got).contains("192.0.2.1"), "{got}");
    assert!(bed.known(&call_id));
    let bye = c.request(&in_dialog(&inv, &ok, "BYE", 2).build(), WAIT);
    assert_eq!(bye.map(|r| r.code), Some(200));
    assert!(wait_for(WAIT, || (!bed.known(&call_id)).then_some(())).is_some());
}

/// A browser's offer as Chrome writes it (ICE, DTLS fingerprint, rtcp-mux, opus).
/// What the WebRTC profile puts in an SDP (rtpengine's, towards a WebRTC leg).
const WEBRTC_SDP: [&str; 4] = [
    "UDP/TLS/RTP/SAVPF",
    "a=ice-ufrag:",
    "a=fingerprint:",
    "a=rtcp-mux",
];

fn browser_sdp(port: u16) -> String {
    format!(
        "v=0\r\no=- 8421931840 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
         a=msid-semantic: WMS\r\nm=audio {port} UDP/TLS/RTP/SAVPF 111 0\r\nc=IN IP4 127.0.0.1\r\n\
         a=rtcp:9 IN IP4 0.0.0.0\r\n\
         a=candidate:1 1 udp 2122260223 127.0.0.1 {port} typ host generation 0\r\n\
         a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=ice-options:trickle\r\n\
         a=fingerprint:sha-256 12:34:56:78:9A:BC:DE:F0:12:34:56:78:9A:BC:DE:F0:12:34:56:78:9A:BC:DE:F0:12:34:56:78:9A:BC:DE:F0\r\n\
         a=setup:actpass\r\na=mid:0\r\na=sendrecv\r\na=rtcp-mux\r\n\
         a=rtpmap:111 opus/48000/2\r\na=rtpmap:0 PCMU/8000\r\n"
    )
}

#[test]
fn a_browser_over_ws_gets_the_webrtc_profile_and_the_backend_plain_rtp() {
    let Some(bed) = Bed::start(Mode::Answer) else {
        return;
    };
    let ws_addr = loopback(bed.sbc.sip_addr().port() + 1);
    let mut ws = kubesbc_e2e::ws::WsClient::connect(ws_addr);
    let any = SipClient::udp(bed.sbc.sip_addr());
    let t = kubesbc_e2e::sip::token();
    let mut inv = bed
        .invite(&any, 4000)
        .set(
            "Via",
            &format!("SIP/2.0/WS df7jal23ls0d.invalid;branch=z9hG4bK{t}"),
        )
        .set("Contact", "<sip:e2e@df7jal23ls0d.invalid;transport=ws>");
    inv.body = browser_sdp(50000);
    let ok = ws
        .sip_request(&inv.build(), WAIT)
        .expect("a final response");
    assert_eq!(ok.code, 200, "{ok:?}\n{}", bed.sbc.log_tail());
    for want in WEBRTC_SDP {
        assert!(
            ok.body.contains(want),
            "no {want} towards the browser:\n{}",
            ok.body
        );
    }
    let offer = bed.uas.wait_request("INVITE");
    let offer = body(&offer);
    assert!(offer.contains("RTP/AVP"), "{offer}");
    for gone in ["SAVPF", "a=ice-", "a=candidate", "a=fingerprint"] {
        assert!(
            !offer.contains(gone),
            "{gone} towards the plain backend:\n{offer}"
        );
    }
}

/// A destination flagged `webrtc` (a WebRTC gateway speaking plain SIP over UDP) gets the
/// WebRTC profile although its transport is UDP; the UDP caller gets plain RTP back.
#[test]
fn a_destination_flagged_webrtc_gets_the_webrtc_profile_over_udp() {
    let Some(bed) = Bed::start_with(Mode::Answer, true) else {
        return;
    };
    let mut caller = SipClient::udp(bed.sbc.sip_addr());
    let inv = bed.invite(&caller, 4000);
    let ok = caller
        .request(&inv.build(), WAIT)
        .expect("a final response");
    assert_eq!(ok.code, 200, "{ok:?}\n{}", bed.sbc.log_tail());
    let offer = bed.uas.wait_request("INVITE");
    let offer = body(&offer);
    for want in WEBRTC_SDP {
        assert!(
            offer.contains(want),
            "no {want} towards the flagged backend:\n{offer}"
        );
    }
    assert!(ok.body.contains("RTP/AVP"), "{}", ok.body);
    assert!(
        !ok.body.contains("SAVPF"),
        "plain towards the UDP caller:\n{}",
        ok.body
    );
}

#[test]
fn a_cancelled_call_and_a_refused_call_leave_nothing_in_rtpengine() {
    let Some(bed) = Bed::start(Mode::Ring) else {
        return;
    };
    let mut c = SipClient::udp(bed.sbc.sip_addr());
    let inv = bed.invite(&c, 4000);
    let call_id = inv.get("Call-ID").unwrap().to_owned();
    c.send(&inv.build());
    let ringing = wait_for(WAIT, || {
        c.recv(Duration::from_millis(200)).filter(|r| r.code == 180)
    });
    assert!(ringing.is_some(), "no 180\n{}", bed.sbc.log_tail());
    assert!(bed.known(&call_id), "the ringing call is in rtpengine");
    let cancel = c
        .request(&inv.cancel().build(), WAIT)
        .expect("CANCEL answered");
    assert_eq!(cancel.code, 200);
    let fin = c.recv_final(WAIT).expect("the INVITE's final response");
    assert_eq!(fin.code, 487);
    c.send(&inv.ack(&fin).build());
    assert!(
        wait_for(WAIT, || (!bed.known(&call_id)).then_some(())).is_some(),
        "the cancelled call is still in rtpengine"
    );
    drop(bed);

    let Some(bed) = Bed::start(Mode::Busy) else {
        return;
    };
    let mut c = SipClient::udp(bed.sbc.sip_addr());
    let inv = bed.invite(&c, 4000);
    let call_id = inv.get("Call-ID").unwrap().to_owned();
    let fin = c.request(&inv.build(), WAIT).expect("a final response");
    assert_eq!(fin.code, 486);
    c.send(&inv.ack(&fin).build());
    // The backend was offered rtpengine's SDP, and the refusal deleted the call.
    assert!(ports_in(&bed, &bed.uas.wait_request("INVITE")));
    assert!(
        wait_for(WAIT, || (!bed.known(&call_id)).then_some(())).is_some(),
        "the refused call is still in rtpengine"
    );
}

fn ports_in(bed: &Bed, msg: &str) -> bool {
    bed.rtpengine.ports().contains(&media_port(body(msg)))
}

#[test]
fn a_malformed_offer_gets_400_and_never_reaches_the_backend_or_rtpengine() {
    let Some(bed) = Bed::start(Mode::Answer) else {
        return;
    };
    let mut c = SipClient::udp(bed.sbc.sip_addr());
    let mut inv = bed.invite(&c, 4000);
    inv.body = "v=0\r\ns=-\r\n".to_owned();
    let call_id = inv.get("Call-ID").unwrap().to_owned();
    let r = c.request(&inv.build(), WAIT).expect("a final response");
    assert_eq!(r.code, 400, "{r:?}");
    assert!(r.reason.starts_with("Malformed SDP"), "{}", r.reason);
    c.send(&inv.ack(&r).build());
    assert!(bed.uas.requests("INVITE").is_empty());
    assert!(!bed.known(&call_id));
    // A body that is not SDP passes untouched.
    let mut inv = bed.invite(&c, 4000).set("Content-Type", "text/plain");
    inv.body = "hello".to_owned();
    let ok = c.request(&inv.build(), WAIT).expect("a final response");
    assert_eq!(ok.code, 200);
    assert!(body(&bed.uas.wait_request("INVITE")).ends_with("hello"));
}

#[test]
fn rtpengine_killed_mid_call_the_next_call_gets_503_and_the_running_call_ends_cleanly() {
    let Some(mut bed) = Bed::start(Mode::Answer) else {
        return;
    };
    let mut c = SipClient::udp(bed.sbc.sip_addr());
    let inv = bed.invite(&c, 4000);
    let ok = c.request(&inv.build(), WAIT).expect("a final response");
    assert_eq!(ok.code, 200);
    c.send(&in_dialog(&inv, &ok, "ACK", 1).build());
    bed.rtpengine.kill();
    // The pings notice within a few intervals; until then an offer times out (also 503).
    std::thread::sleep(Duration::from_millis(1000));
    let mut c2 = SipClient::udp(bed.sbc.sip_addr());
    let next = bed.invite(&c2, 4002);
    let r = c2.request(&next.build(), WAIT).expect("a final response");
    assert_eq!(r.code, 503, "{r:?}");
    assert_eq!(r.header("Retry-After"), Some("7"));
    c2.send(&next.ack(&r).build());
    assert_eq!(
        bed.uas.requests("INVITE").len(),
        1,
        "the next call was not relayed"
    );
    let bye = c
        .request(&in_dialog(&inv, &ok, "BYE", 2).build(), WAIT)
        .expect("BYE answered");
    assert_eq!(bye.code, 200);
    bed.sbc.wait_logged("no rtpengine available", WAIT);
    let m = bed.sbc.metrics();
    assert!(
        m.contains("sbc_media_unavailable_total{action=\"reject\"} 1"),
        "{m}"
    );
}

#[test]
fn sbc_accepts_a_media_section_at_startup_and_in_check() {
    if !sbc_only() {
        return;
    }
    let dir = TempDir::new("media-accepted");
    let text = config(
        free_port(),
        free_port(),
        loopback(5060),
        "127.0.0.1:2223",
        false,
    );
    let cfg = dir.write("sbc.yaml", &text);
    let out = run_sbc(&dir, &["check", cfg.to_str().unwrap()], WAIT);
    assert_eq!(out.code, Some(0), "stderr:\n{}", out.stderr);
    // A bad field in the section is named precisely.
    let bad = text.replace("timeoutMs: 300", "timeoutMs: 0");
    let cfg = dir.write("bad.yaml", &bad);
    let out = run_sbc(&dir, &["check", cfg.to_str().unwrap()], WAIT);
    assert_eq!(out.code, Some(2));
    assert!(
        out.stderr
            .contains("media.timeoutMs: 0 is out of range 10..=60000"),
        "{}",
        out.stderr
    );
}
