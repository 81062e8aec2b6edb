//! The media library (`sbc::media`) against a real rtpengine (Debian's `rtpengine-daemon` in
//! userspace on loopback): ping, offer/answer rewriting, RTP through rtpengine both ways,
//! query, delete, the WebRTC profile, engine selection with engines down, an engine killed
//! mid-dialog, and refusals before anything reaches rtpengine.
//!
//! The call path (the sbc with a `media` section) is tested in `media_calls.rs`.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kubesbc_crds::config::Transport;
use kubesbc_crds::policy::MediaConfig;
use kubesbc_e2e::rtpengine::Rtpengine;
use kubesbc_e2e::{LOOPBACK, TempDir, free_port, loopback, require_tool};
use sbc::media::client::{NgClient, NgError, Timing};
use sbc::media::exchange::{Step, Tags};
use sbc::media::ng::{Outcome, Request};
use sbc::media::pool::Pool;
use sbc::media::profile::{Leg, Profiles};
use sbc::media::{Anchor, Answer, DialogIds, FailurePolicy, MediaError, Processed};

const PLAIN: Leg = Leg {
    transport: Transport::Udp,
    webrtc: false,
};
const BROWSER: Leg = Leg {
    transport: Transport::Wss,
    webrtc: false,
};

fn timing(ms: u64) -> Timing {
    Timing {
        timeout: Duration::from_millis(ms),
        retransmit: Duration::from_millis(ms / 4),
    }
}

/// An anchor over `names` with the default profiles, pinged once (no interval task: the tests
/// decide when health changes).
async fn anchor(names: &[String], timeout_ms: u64) -> Anchor {
    let client = NgClient::bind("127.0.0.1:0".parse().unwrap(), timing(timeout_ms))
        .await
        .unwrap();
    let pool = Pool::new(names, client).await;
    pool.ping_all().await;
    Anchor::from_parts(
        pool,
        Profiles::default(),
        FailurePolicy::Reject {
            retry_after_secs: 9,
        },
    )
}

fn plain_sdp(origin: &str, port: u16) -> Bytes {
    Bytes::from(format!(
        "v=0\r\no=- 4711 1 IN IP4 {origin}\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0 8\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=sendrecv\r\n"
    ))
}

/// A browser's offer as Chrome writes it (ICE, DTLS fingerprint, rtcp-mux, opus).
fn browser_sdp(port: u16) -> Bytes {
    Bytes::from(format!(
        "v=0\r\no=- 8421931840 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
         a=msid-semantic: WMS\r\nm=audio {port} UDP/TLS/RTP/SAVPF 111 0\r\nc=IN IP4 127.0.0.1\r\n\
         a=rtcp:9 IN IP4 0.0.0.0\r\n\
         a=candidate:1 1 udp 2122260223 127.0.0.1 {port} typ host generation 0\r\n\
         a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=ice-options:trickle\r\n\
         a=fingerprint:sha-256 12:34:56:78:9A:BC:DE:F0:12:34:56:78:9A:BC:DE:F0:12:34:56:78:9A:BC:DE:F0:12:34:56:78:9A:BC:DE:F0\r\n\
         a=setup:actpass\r\na=mid:0\r\na=sendrecv\r\na=rtcp-mux\r\n\
         a=rtpmap:111 opus/48000/2\r\na=rtpmap:0 PCMU/8000\r\n"
    ))
}

fn ids(call_id: &str, to_tag: Option<&str>) -> DialogIds {
    DialogIds {
        call_id: Bytes::from(call_id.to_owned()),
        from_tag: Bytes::from_static(b"caller-tag"),
        to_tag: to_tag.map(|t| Bytes::from(t.to_owned())),
    }
}

fn text(b: &[u8]) -> &str {
    std::str::from_utf8(b).expect("SDP is text")
}

/// The port of the first `m=` line.
fn media_port(sdp: &str) -> u16 {
    let m = sdp
        .lines()
        .find(|l| l.starts_with("m="))
        .unwrap_or_else(|| panic!("no m= line in {sdp}"));
    m.split(' ').nth(1).unwrap().parse().unwrap()
}

fn line<'a>(sdp: &'a str, prefix: &str) -> &'a str {
    sdp.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} line in {sdp}"))
}

fn rtp_packet(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 0x00];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    p.extend(std::iter::repeat_n(0xd5, 160));
    p
}

/// Sends RTP from `from` to `to` until `n` packets arrived at `at` (each resent a few times
/// at most: rtpengine may drop the first while it learns the endpoint); returns the source
/// address they arrived from.
fn rtp_flows(from: &UdpSocket, to: SocketAddr, at: &UdpSocket, n: u16) -> SocketAddr {
    at.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut got = 0;
    let mut source = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seq = 0u16;
    let mut buf = [0u8; 2048];
    while got < n && Instant::now() < deadline {
        seq += 1;
        let pkt = rtp_packet(seq);
        from.send_to(&pkt, to).unwrap();
        while let Ok((len, src)) = at.recv_from(&mut buf) {
            assert_eq!(len, pkt.len(), "RTP arrives unchanged in size");
            assert_eq!(buf[12..len], pkt[12..], "RTP payload arrives unchanged");
            got += 1;
            source = Some(src);
            if got == n {
                break;
            }
        }
    }
    assert_eq!(got, n, "{got} of {n} RTP packets arrived ({seq} sent)");
    source.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_marks_a_live_rtpengine_up() {
    if !require_tool("rtpengine") {
        return;
    }
    let dir = TempDir::new("media-ping");
    let rtp = Rtpengine::start(&dir);
    let client = NgClient::bind("127.0.0.1:0".parse().unwrap(), timing(1000))
        .await
        .unwrap();
    let r = client
        .request(rtp.ng_addr(), &Request::ping())
        .await
        .unwrap();
    assert_eq!(r.outcome, Outcome::Ok);
    let pool = Pool::new(&[rtp.ng_name()], client).await;
    assert!(!pool.engines()[0].is_up(), "down until the first ping");
    pool.ping_all().await;
    assert!(pool.engines()[0].is_up());
    assert_eq!(pool.select(b"any").unwrap().name(), rtp.ng_name());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anchor_from_config_pings_on_its_interval_and_sees_an_engine_die() {
    if !require_tool("rtpengine") {
        return;
    }
    let dir = TempDir::new("media-interval");
    let mut rtp = Rtpengine::start(&dir);
    let cfg = MediaConfig {
        rtpengine: vec![rtp.ng_name()],
        timeout_ms: 300,
        retransmit_ms: 100,
        ping_interval_ms: 200,
        ..MediaConfig::default()
    };
    cfg.validate("media").unwrap();
    let a = Anchor::start(&cfg).await.unwrap();
    assert!(a.pool().engines()[0].is_up(), "up after the first round");
    assert_eq!(
        a.policy(),
        FailurePolicy::Reject {
            retry_after_secs: 5
        }
    );
    rtp.kill();
    let t0 = Instant::now();
    while a.pool().engines()[0].is_up() {
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "the pinger never noticed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(a.pool().engines()[0].pings_failed() >= 1);
    assert!(matches!(
        a.pool().select(b"x"),
        Err(sbc::media::pool::NoneReachable { configured: 1 })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_whose_engine_died_unnoticed_is_placed_on_the_next_engine() {
    if !require_tool("rtpengine") {
        return;
    }
    let dir = TempDir::new("media-retry");
    let mut first = Rtpengine::start(&dir);
    let second = Rtpengine::start(&dir);
    let a = anchor(&[first.ng_name(), second.ng_name()], 400).await;
    // A Call-ID that hashes to the first engine.
    let call = (0..)
        .map(|i| format!("media-retry-{i}@127.0.0.1"))
        .find(|c| a.pool().select(c.as_bytes()).unwrap().name() == first.ng_name())
        .unwrap();
    first.kill();
    let offer = a
        .offer(
            &ids(&call, None),
            Tags::AsIs,
            plain_sdp("192.0.2.1", free_port()),
            PLAIN,
        )
        .await
        .unwrap();
    assert!(
        second.ports().contains(&media_port(text(&offer))),
        "the offer was anchored by the second engine:\n{}",
        text(&offer)
    );
    assert!(!a.pool().engines()[0].is_up());
    // The rest of the dialog follows: the call now hashes to the second engine.
    a.answer(
        &ids(&call, Some("b")),
        Tags::AsIs,
        plain_sdp("192.0.2.2", free_port()),
        PLAIN,
    )
    .await
    .unwrap();
    a.delete(&ids(&call, Some("b"))).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offer_answer_rewrite_sdp_and_rtp_flows_through_rtpengine_then_delete() {
    if !require_tool("rtpengine") {
        return;
    }
    let dir = TempDir::new("media-call");
    let rtp = Rtpengine::start(&dir);
    let a = anchor(&[rtp.ng_name()], 1000).await;
    let caller = UdpSocket::bind((LOOPBACK, free_port())).unwrap();
    let callee = UdpSocket::bind((LOOPBACK, free_port())).unwrap();
    let cport = caller.local_addr().unwrap().port();
    let bport = callee.local_addr().unwrap().port();
    let call = "media-call-1@127.0.0.1";

    // Offer: the callee is told rtpengine's address and port, and rtpengine's origin.
    let offer = a
        .offer(
            &ids(call, None),
            Tags::AsIs,
            plain_sdp("192.0.2.1", cport),
            PLAIN,
        )
        .await
        .unwrap();
    let offer = text(&offer).to_owned();
    let to_callee = media_port(&offer);
    assert!(
        rtp.ports().contains(&to_callee),
        "offer port {to_callee} not rtpengine's:\n{offer}"
    );
    assert_eq!(
        line(&offer, "o="),
        "o=- 4711 1 IN IP4 127.0.0.1",
        "origin replaced:\n{offer}"
    );
    assert_eq!(line(&offer, "c="), "c=IN IP4 127.0.0.1");
    assert!(line(&offer, "m=").contains("RTP/AVP"));
    assert!(
        !offer.contains("a=candidate"),
        "ICE removed on the plain side:\n{offer}"
    );

    // Answer: the caller is told another rtpengine port.
    let answer = a
        .answer(
            &ids(call, Some("callee-tag")),
            Tags::AsIs,
            plain_sdp("192.0.2.2", bport),
            PLAIN,
        )
        .await
        .unwrap();
    let answer = text(&answer).to_owned();
    let to_caller = media_port(&answer);
    assert!(
        rtp.ports().contains(&to_caller),
        "answer port {to_caller}:\n{answer}"
    );
    assert_ne!(to_caller, to_callee);
    assert_eq!(line(&answer, "o="), "o=- 4711 1 IN IP4 127.0.0.1");

    // RTP: caller -> rtpengine -> callee, and back; each side hears it from rtpengine.
    let src = rtp_flows(&caller, loopback(to_caller), &callee, 5);
    assert_eq!(
        src,
        loopback(to_callee),
        "the callee hears rtpengine's offered port"
    );
    let src = rtp_flows(&callee, loopback(to_callee), &caller, 5);
    assert_eq!(
        src,
        loopback(to_caller),
        "the caller hears rtpengine's answered port"
    );

    // Query shows the call, both tags and the packets.
    let q = a.query(&Bytes::from_static(call.as_bytes())).await.unwrap();
    let tags = q.dict("tags").expect("query has tags");
    assert!(
        tags.get("caller-tag").is_some() && tags.get("callee-tag").is_some(),
        "{q:?}"
    );
    let packets = q
        .dict("totals")
        .and_then(|t| t.dict("RTP"))
        .and_then(|r| r.int("packets"))
        .expect("totals.RTP.packets");
    assert!(packets >= 10, "rtpengine counted {packets} RTP packets");

    // Delete, then the call is gone.
    a.delete(&ids(call, Some("callee-tag"))).await.unwrap();
    match a.query(&Bytes::from_static(call.as_bytes())).await {
        Err(MediaError::Refused { reason, .. }) => assert_eq!(reason, "Unknown call-id"),
        other => panic!("query after delete: {other:?}"),
    }
    // And RTP no longer flows.
    caller
        .send_to(&rtp_packet(99), loopback(to_caller))
        .unwrap();
    callee
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 2048];
    assert!(
        callee.recv_from(&mut buf).is_err(),
        "RTP relayed after delete"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webrtc_profile_gives_the_browser_ice_dtls_and_savpf_and_the_pbx_plain_rtp() {
    if !require_tool("rtpengine") {
        return;
    }
    let dir = TempDir::new("media-webrtc");
    let rtp = Rtpengine::start(&dir);
    let a = anchor(&[rtp.ng_name()], 1000).await;

    // A PBX calls a browser: the offer towards the browser is WebRTC.
    let call = "media-webrtc-1@127.0.0.1";
    let offer = a
        .offer(
            &ids(call, None),
            Tags::AsIs,
            plain_sdp("192.0.2.1", free_port()),
            BROWSER,
        )
        .await
        .unwrap();
    let offer = text(&offer).to_owned();
    assert!(
        line(&offer, "m=").contains(" UDP/TLS/RTP/SAVPF "),
        "{offer}"
    );
    assert!(
        offer.contains("a=fingerprint:sha-256 "),
        "no DTLS fingerprint:\n{offer}"
    );
    assert!(offer.contains("a=setup:actpass"), "{offer}");
    assert!(
        offer.contains("a=ice-ufrag:") && offer.contains("a=ice-pwd:"),
        "{offer}"
    );
    let cand = line(&offer, "a=candidate:");
    assert!(
        cand.contains(" 127.0.0.1 ") && cand.contains(" typ host"),
        "{cand}"
    );
    assert!(offer.contains("a=rtcp-mux"), "{offer}");
    assert!(
        !offer.contains("a=crypto:"),
        "SDES is off towards browsers:\n{offer}"
    );
    assert_eq!(line(&offer, "o="), "o=- 4711 1 IN IP4 127.0.0.1");
    a.delete(&ids(call, None)).await.unwrap();

    // A browser calls a PBX: the offer towards the PBX is plain RTP, no ICE, no DTLS.
    let call = "media-webrtc-2@127.0.0.1";
    let offer = a
        .offer(
            &ids(call, None),
            Tags::AsIs,
            browser_sdp(free_port()),
            PLAIN,
        )
        .await
        .unwrap();
    let offer = text(&offer).to_owned();
    assert!(line(&offer, "m=").contains(" RTP/AVP "), "{offer}");
    for gone in [
        "a=candidate",
        "a=ice-ufrag",
        "a=fingerprint",
        "a=setup",
        "a=crypto",
    ] {
        assert!(!offer.contains(gone), "{gone} towards the PBX:\n{offer}");
    }
    assert!(
        offer.contains("a=rtcp:"),
        "separate RTCP towards the PBX:\n{offer}"
    );
    // The PBX answers; the browser gets DTLS with ICE. The DTLS role is rtpengine's choice
    // (active or passive, never actpass in an answer): see media/profile.rs.
    let answer = a
        .answer(
            &ids(call, Some("pbx")),
            Tags::AsIs,
            plain_sdp("192.0.2.9", free_port()),
            BROWSER,
        )
        .await
        .unwrap();
    let answer = text(&answer).to_owned();
    assert!(line(&answer, "m=").contains("RTP/SAVPF"), "{answer}");
    assert!(
        answer.contains("a=setup:active") || answer.contains("a=setup:passive"),
        "a DTLS role (active or passive) in the answer:\n{answer}"
    );
    assert!(
        answer.contains("a=fingerprint:") && answer.contains("a=candidate:"),
        "{answer}"
    );
    a.delete(&ids(call, Some("pbx"))).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_rewrites_only_the_sdp_part_of_a_multipart_body_and_leaves_other_bodies() {
    if !require_tool("rtpengine") {
        return;
    }
    let dir = TempDir::new("media-multipart");
    let rtp = Rtpengine::start(&dir);
    let a = anchor(&[rtp.ng_name()], 1000).await;
    let call = "media-multipart-1@127.0.0.1";
    let sdp = plain_sdp("192.0.2.1", free_port());
    let isup = "--b1\r\nContent-Type: application/isup;version=itu-t92+\r\nContent-Disposition: signal;handling=optional\r\n\r\n\x01\x10\x60\x01\r\n";
    let body = format!(
        "{isup}--b1\r\nContent-Type: application/sdp\r\n\r\n{}\r\n--b1--\r\n",
        text(&sdp)
    );
    let out = a
        .process(
            Step::Offer(Tags::AsIs),
            &ids(call, None),
            Some(b"multipart/mixed;boundary=b1"),
            body.as_bytes(),
            PLAIN,
        )
        .await
        .unwrap();
    let Processed::Body(new) = out else {
        panic!("{out:?}")
    };
    let new = text(&new);
    assert!(new.starts_with(isup), "the ISUP part is byte-exact:\n{new}");
    assert!(new.ends_with("\r\n--b1--\r\n"));
    assert!(rtp.ports().contains(&media_port(new)), "{new}");
    assert!(new.contains("o=- 4711 1 IN IP4 127.0.0.1"));

    // A body that is not SDP is never touched, and nothing reaches rtpengine.
    let other = "media-multipart-2@127.0.0.1";
    let out = a
        .process(
            Step::Offer(Tags::AsIs),
            &ids(other, None),
            Some(b"application/isup"),
            b"\x01\x02",
            PLAIN,
        )
        .await
        .unwrap();
    assert_eq!(out, Processed::Unchanged);
    assert!(matches!(
        a.query(&Bytes::from_static(other.as_bytes())).await,
        Err(MediaError::Refused { .. })
    ));
    assert_eq!(
        a.process(Step::Delete, &ids(call, None), None, b"", PLAIN)
            .await
            .unwrap(),
        Processed::Deleted
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_offer_is_400_and_never_reaches_rtpengine_and_errors_map_to_488_or_500() {
    if !require_tool("rtpengine") {
        return;
    }
    let dir = TempDir::new("media-errors");
    let rtp = Rtpengine::start(&dir);
    let a = anchor(&[rtp.ng_name()], 1000).await;
    let call = "media-bad-1@127.0.0.1";
    let bad = Bytes::from_static(
        b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nm=audio port RTP/AVP 0\r\n",
    );
    let e = a
        .offer(&ids(call, None), Tags::AsIs, bad, PLAIN)
        .await
        .unwrap_err();
    assert_eq!(
        e.answer(a.policy()),
        Answer::Reply {
            status: 400,
            reason: "Malformed SDP: line 5: m= port \"port\" is not a number".into(),
            retry_after: None
        }
    );
    match a.query(&Bytes::from_static(call.as_bytes())).await {
        Err(MediaError::Refused { reason, .. }) => assert_eq!(reason, "Unknown call-id"),
        other => panic!("the malformed offer reached rtpengine: {other:?}"),
    }
    // An answer for a call rtpengine does not know: its error, with its reason, is a 500.
    let e = a
        .answer(
            &ids("media-unknown@127.0.0.1", Some("t")),
            Tags::AsIs,
            plain_sdp("192.0.2.1", 4000),
            PLAIN,
        )
        .await
        .unwrap_err();
    assert_eq!(
        e.answer(a.policy()),
        Answer::Reply {
            status: 500,
            reason: "Media Relay Error (Unknown call-id)".into(),
            retry_after: None
        }
    );
    // An SDP our check lets through (RFC 8866 allows a host name in c=) but rtpengine cannot
    // parse: 488 with rtpengine's reason.
    let fqdn = Bytes::from_static(b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 media.example.com\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n");
    let e = a
        .offer(&ids("media-bad-2@127.0.0.1", None), Tags::AsIs, fqdn, PLAIN)
        .await
        .unwrap_err();
    assert_eq!(
        e.answer(a.policy()),
        Answer::Reply {
            status: 488,
            reason: "Not Acceptable Here (Failed to parse SDP)".into(),
            retry_after: None
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selector_skips_an_unreachable_rtpengine_and_says_none_reachable_when_all_are_down() {
    if !require_tool("rtpengine") {
        return;
    }
    let dir = TempDir::new("media-select");
    let mut rtp = Rtpengine::start(&dir);
    // Nothing listens there.
    let dead = loopback(free_port()).to_string();
    let a = anchor(&[dead.clone(), rtp.ng_name()], 400).await;
    let engines = a.pool().engines();
    assert!(!engines[0].is_up(), "{dead} must be down");
    assert!(engines[1].is_up());
    for i in 0..40 {
        let cid = format!("select-{i}@127.0.0.1");
        assert_eq!(
            a.pool().select(cid.as_bytes()).unwrap().name(),
            rtp.ng_name()
        );
    }
    let call = "media-select-1@127.0.0.1";
    a.offer(
        &ids(call, None),
        Tags::AsIs,
        plain_sdp("192.0.2.1", free_port()),
        PLAIN,
    )
    .await
    .unwrap();
    a.delete(&ids(call, None)).await.unwrap();

    rtp.kill();
    a.pool().ping_all().await;
    let e = a
        .offer(
            &ids("media-select-2@127.0.0.1", None),
            Tags::AsIs,
            plain_sdp("192.0.2.1", 4000),
            PLAIN,
        )
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "no rtpengine reachable (of 2 configured)");
    assert_eq!(
        e.answer(a.policy()),
        Answer::Reply {
            status: 503,
            reason: "Media Relay Unavailable".into(),
            retry_after: Some(9)
        }
    );
    assert_eq!(e.answer(FailurePolicy::PassThrough), Answer::PassThrough);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtpengine_killed_mid_dialog_delete_fails_with_a_timeout_and_the_engine_goes_down() {
    if !require_tool("rtpengine") {
        return;
    }
    let dir = TempDir::new("media-kill");
    let mut rtp = Rtpengine::start(&dir);
    let a = anchor(&[rtp.ng_name()], 600).await;
    let call = "media-kill-1@127.0.0.1";
    a.offer(
        &ids(call, None),
        Tags::AsIs,
        plain_sdp("192.0.2.1", free_port()),
        PLAIN,
    )
    .await
    .unwrap();
    a.answer(
        &ids(call, Some("b")),
        Tags::AsIs,
        plain_sdp("192.0.2.2", free_port()),
        PLAIN,
    )
    .await
    .unwrap();
    let addr = rtp.ng_addr();
    rtp.kill();
    let t0 = Instant::now();
    let e = a.delete(&ids(call, Some("b"))).await.unwrap_err();
    let took = t0.elapsed();
    assert!(
        matches!(
            &e,
            MediaError::Ng(NgError::Timeout {
                command: "delete",
                ..
            })
        ),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        format!("rtpengine {addr}: no reply to delete within 600 ms")
    );
    assert!(took < Duration::from_secs(3), "delete took {took:?}");
    assert!(
        !a.pool().engines()[0].is_up(),
        "a timeout marks the engine down"
    );
    // The next call does not wait for another timeout.
    let t0 = Instant::now();
    let e = a
        .offer(
            &ids("media-kill-2@127.0.0.1", None),
            Tags::AsIs,
            plain_sdp("192.0.2.1", 4000),
            PLAIN,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, MediaError::NoneReachable(_)), "{e}");
    assert!(t0.elapsed() < Duration::from_millis(100));
}
