//! A real browser calls through the sbc and a real rtpengine: Debian's chromium (headless, a
//! fake microphone), driven by playwright-core from `tests/js/browser-call.cjs`, loads a JsSIP
//! page served on loopback, registers over WebSocket and calls a backend in this test that
//! speaks plain RTP (PCMU, 20 ms packets). rtpengine (userspace, `--table=-1`) terminates ICE
//! and DTLS-SRTP towards the browser and relays plain RTP to the backend.
//!
//! What is asserted is what a user and the backend see: the page's call is confirmed; the
//! browser's RTCPeerConnection stats show RTP received and sent after DTLS connected over a
//! loopback ICE pair (so media crossed rtpengine both ways); the backend counted the browser's
//! packets; rtpengine's `query` knows the call while it runs and not after the BYE; a hang-up
//! from the page reaches the backend as a BYE, and the backend's BYE ends the call in the page.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kubesbc_e2e::node::{self, ClientRun, spawn_client};
use kubesbc_e2e::proxy::Proxy;
use kubesbc_e2e::rtpengine::Rtpengine;
use kubesbc_e2e::{LOOPBACK, TempDir, free_port, loopback, require_tool, sbc_only, wait_for};
use sbc::media::client::{NgClient, Timing};
use sbc::media::pool::Pool;
use sbc::media::profile::Profiles;
use sbc::media::{Anchor, FailurePolicy};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(5);
/// How long the page may take from launch to its call's end (the script's own limit is 45 s).
const CLIENT_LIMIT: Duration = Duration::from_secs(50);
const DOMAIN: &str = "example.com";

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

fn response(req: &str, code: u16, sdp: Option<&str>, me: SocketAddr) -> Vec<u8> {
    let mut s = format!("SIP/2.0 {code} OK\r\n");
    for v in header(req, "Via") {
        s.push_str(&format!("Via: {v}\r\n"));
    }
    for v in header(req, "Record-Route") {
        s.push_str(&format!("Record-Route: {v}\r\n"));
    }
    let to = header(req, "To")[0];
    let to = if to.contains("tag=") {
        to.to_owned()
    } else {
        format!("{to};tag=uas")
    };
    s.push_str(&format!(
        "From: {}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {}\r\n",
        header(req, "From")[0],
        header(req, "Call-ID")[0],
        header(req, "CSeq")[0]
    ));
    if req.starts_with("REGISTER ") {
        // A registrar's 200 lists the binding with its lifetime.
        for c in header(req, "Contact") {
            s.push_str(&format!("Contact: {c};expires=600\r\n"));
        }
    } else {
        s.push_str(&format!("Contact: <sip:uas@{me}>\r\n"));
    }
    match sdp {
        Some(b) => s.push_str(&format!(
            "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        )),
        None => s.push_str("Content-Length: 0\r\n\r\n"),
    }
    s.into_bytes()
}

/// The address and port of the first audio stream of an SDP.
fn sdp_target(sdp: &str) -> Option<SocketAddr> {
    let ip = sdp
        .lines()
        .find_map(|l| l.strip_prefix("c=IN IP4 "))?
        .trim()
        .parse()
        .ok()?;
    let port = sdp
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))?
        .split(' ')
        .next()?
        .parse()
        .ok()?;
    Some(SocketAddr::new(ip, port))
}

/// One PCMU packet (20 ms of silence) of the backend's own stream.
fn rtp_packet(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 0x00];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&0x0bac_0e4du32.to_be_bytes());
    p.extend(std::iter::repeat_n(0xff, 160));
    p
}

/// The callee: a UAS on loopback UDP that answers REGISTER (a registrar's 200), INVITE (200
/// with a plain RTP/AVP PCMU answer) and BYE; once answered it sends 50 RTP packets a second
/// to the address rtpengine offered and counts the packets that arrive.
struct Backend {
    addr: SocketAddr,
    sip: Arc<UdpSocket>,
    got: Arc<Mutex<Vec<String>>>,
    rtp_in: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Backend {
    fn start() -> Backend {
        let sip = Arc::new(UdpSocket::bind((LOOPBACK, 0)).unwrap());
        sip.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let rtp = UdpSocket::bind((LOOPBACK, 0)).unwrap();
        rtp.set_read_timeout(Some(Duration::from_millis(5)))
            .unwrap();
        let addr = sip.local_addr().unwrap();
        let answer = format!(
            "v=0\r\no=- 4711 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
             m=audio {} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=ptime:20\r\na=sendrecv\r\n",
            rtp.local_addr().unwrap().port()
        );
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let target: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(None));
        let rtp_in = Arc::new(AtomicU64::new(0));
        let signalling = {
            let (sock, got, stop, target) =
                (sip.clone(), got.clone(), stop.clone(), target.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, src)) = sock.recv_from(&mut buf) else {
                        continue;
                    };
                    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let method = msg.split(' ').next().unwrap_or("").to_owned();
                    if method != "OPTIONS" {
                        got.lock().unwrap().push(msg.clone());
                    }
                    let send = |b: Vec<u8>| {
                        let _ = sock.send_to(&b, src);
                    };
                    match method.as_str() {
                        "SIP/2.0" | "ACK" => {}
                        "INVITE" => {
                            *target.lock().unwrap() = sdp_target(body(&msg));
                            send(response(&msg, 200, Some(&answer), addr));
                        }
                        "BYE" => {
                            *target.lock().unwrap() = None;
                            send(response(&msg, 200, None, addr));
                        }
                        _ => send(response(&msg, 200, None, addr)),
                    }
                }
            })
        };
        let media = {
            let (stop, rtp_in) = (stop.clone(), rtp_in.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                let (mut seq, mut next) = (0u16, Instant::now());
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, _)) = rtp.recv_from(&mut buf)
                        && n >= 12
                        && buf[0] >> 6 == 2
                    {
                        rtp_in.fetch_add(1, Ordering::Relaxed);
                    }
                    let to = *target.lock().unwrap();
                    if let Some(to) = to
                        && Instant::now() >= next
                    {
                        seq = seq.wrapping_add(1);
                        let _ = rtp.send_to(&rtp_packet(seq), to);
                        next += Duration::from_millis(20);
                    }
                }
            })
        };
        Backend {
            addr,
            sip,
            got,
            rtp_in,
            stop,
            threads: vec![signalling, media],
        }
    }

    fn messages(&self, start: &str) -> Vec<String> {
        let g = self.got.lock().unwrap();
        g.iter().filter(|m| m.starts_with(start)).cloned().collect()
    }

    fn wait_message(&self, start: &str) -> String {
        wait_for(WAIT, || self.messages(start).pop())
            .unwrap_or_else(|| panic!("the backend got no {start:?}"))
    }

    /// Hangs up the call `invite` set up: a BYE along its Record-Route (through `sbc`) to its
    /// Contact. Returns the status of the BYE's final response.
    fn hang_up(&self, invite: &str, sbc: SocketAddr) -> u16 {
        let contact = header(invite, "Contact")[0];
        let uri = contact
            .split_once('<')
            .and_then(|(_, r)| r.split_once('>'))
            .map_or(contact, |(u, _)| u);
        let mut bye = format!(
            "BYE {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK-bye-{};rport\r\n\
             Max-Forwards: 70\r\n",
            self.addr,
            kubesbc_e2e::sip::token()
        );
        for r in header(invite, "Record-Route") {
            bye.push_str(&format!("Route: {r}\r\n"));
        }
        bye.push_str(&format!(
            "From: {};tag=uas\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
            header(invite, "To")[0],
            header(invite, "From")[0],
            header(invite, "Call-ID")[0]
        ));
        self.sip.send_to(bye.as_bytes(), sbc).unwrap();
        let reply = wait_for(WAIT, || {
            self.messages("SIP/2.0 ").into_iter().find(|m| {
                header(m, "CSeq")
                    .first()
                    .is_some_and(|c| c.ends_with("BYE"))
                    && !m.starts_with("SIP/2.0 1")
            })
        })
        .expect("a final response to the backend's BYE");
        reply[8..11].parse().unwrap()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The sbc with a udp listener (towards the backend) and a ws one (the page's), dispatching to
/// the backend and anchoring media through `ng`.
fn config(sip: u16, ws: u16, admin: u16, backend: SocketAddr, ng: &str) -> String {
    format!(
        "listeners:\n  - {{transport: udp, address: \"127.0.0.1:{sip}\"}}\n\
         \x20 - {{transport: ws, address: \"127.0.0.1:{ws}\"}}\n\
         admin:\n  address: \"127.0.0.1:{admin}\"\n\
         dispatcher:\n  sets:\n    - id: 1\n      destinations: [{{uri: \"sip:{backend}\"}}]\n\
         media:\n  rtpengine: [\"{ng}\"]\n  pingIntervalMs: 500\n  timeoutMs: 1000\n  retransmitMs: 200\n"
    )
}

struct Bed {
    dir: TempDir,
    rtpengine: Rtpengine,
    sbc: Proxy,
    ws: SocketAddr,
    backend: Backend,
    rt: tokio::runtime::Runtime,
    anchor: Anchor,
}

fn tools() -> bool {
    sbc_only()
        && require_tool("rtpengine")
        && require_tool("chromium")
        && require_tool("unshare")
        && require_tool("ip")
        && node::tools()
}

/// Set in the re-executed test process, which runs inside its own network namespace.
const NETNS_ENV: &str = "KUBESBC_E2E_BROWSER_NETNS";

/// Runs the test `name` in a network namespace of its own whose only interface is loopback,
/// and returns `false` (the caller returns) once it passed there; inside it, returns `true`.
///
/// Why: chromium's ICE gathers on every interface and probes rtpengine's loopback candidate
/// from this host's other addresses too, and may pick such a pair; rtpengine then answers to
/// that address. In a namespace with nothing but `lo` every packet of the test (SIP, ICE,
/// DTLS, RTP) has loopback at both ends. `unshare --user --map-root-user --net` needs no
/// privilege where unprivileged user namespaces are allowed (Debian's default).
fn in_loopback_netns(name: &str) -> bool {
    if std::env::var_os(NETNS_ENV).is_some() {
        return true;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = std::process::Command::new("unshare")
        .args(["--user", "--map-root-user", "--net", "--", "sh", "-c"])
        .arg("ip link set lo up && exec \"$0\" \"$@\"")
        .arg(&exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(NETNS_ENV, "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run unshare: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(
        out.status.success() && text.contains("1 passed"),
        "{name} in a loopback-only network namespace: {}",
        out.status
    );
    false
}

impl Bed {
    /// The scene, inside the test's own network namespace (`None`: the test is done, it
    /// passed there, or was skipped for a missing tool).
    fn start(label: &str, test: &str) -> Option<Bed> {
        if !tools() || !in_loopback_netns(test) {
            return None;
        }
        let dir = TempDir::new(label);
        let rtpengine = Rtpengine::start(&dir);
        let backend = Backend::start();
        let (sip, ws, admin) = (free_port(), free_port(), free_port());
        let cfg = dir.write(
            "sbc.yaml",
            &config(sip, ws, admin, backend.addr, &rtpengine.ng_name()),
        );
        let args = vec!["--config".to_owned(), cfg.to_str().unwrap().to_owned()];
        let sbc = Proxy::start_sbc(&dir, &args, sip, loopback(admin));
        // The test's own ng client, to ask rtpengine about the call.
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
            dir,
            rtpengine,
            sbc,
            ws: loopback(ws),
            backend,
            rt,
            anchor,
        })
    }

    /// Whether rtpengine knows the call.
    fn known(&self, call_id: &str) -> bool {
        let id = Bytes::from(call_id.to_owned());
        self.rt.block_on(self.anchor.query(&id)).is_ok()
    }

    fn browser(&self, user: &str, hangup: &str) -> node::RunningClient {
        let url = format!("ws://{}", self.ws);
        let target = format!("sip:bob@{DOMAIN}");
        spawn_client(
            &self.dir,
            user,
            "browser-call.cjs",
            &[&url, DOMAIN, user, &target, hangup],
            None,
        )
    }

    /// While the call runs: the backend was offered plain RTP by rtpengine, and rtpengine
    /// knows the call. Returns the INVITE.
    fn assert_call_anchored(&self) -> String {
        let invite = self.backend.wait_message("INVITE ");
        let offer = body(&invite);
        assert!(
            offer.contains("m=audio") && offer.contains(" RTP/AVP "),
            "{offer}"
        );
        for gone in ["SAVPF", "a=ice-", "a=candidate", "a=fingerprint"] {
            assert!(
                !offer.contains(gone),
                "{gone} reached the backend:\n{offer}"
            );
        }
        let port = sdp_target(offer)
            .expect("an audio address in the offer")
            .port();
        assert!(
            self.rtpengine.ports().contains(&port),
            "the backend is offered rtpengine's port, not the browser's:\n{offer}"
        );
        let call_id = header(&invite, "Call-ID")[0];
        assert!(self.known(call_id), "rtpengine's query knows the call");
        invite
    }

    /// The backend got a stream of RTP from the browser (through rtpengine, decrypted).
    fn assert_backend_got_rtp(&self) {
        let rtp = wait_for(WAIT, || {
            let n = self.backend.rtp_in.load(Ordering::Relaxed);
            (n >= 50).then_some(n)
        });
        assert!(
            rtp.is_some(),
            "the backend got {} RTP packets from the browser",
            self.backend.rtp_in.load(Ordering::Relaxed)
        );
    }

    fn assert_deleted(&self, invite: &str) {
        let call_id = header(invite, "Call-ID")[0];
        assert!(
            wait_for(WAIT, || (!self.known(call_id)).then_some(())).is_some(),
            "rtpengine still knows the call after the BYE"
        );
    }
}

/// The `RESULT` line the script printed last.
fn result(run: &ClientRun) -> Value {
    let line = run
        .output
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("no RESULT line; output:\n{}", run.output));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("RESULT is not JSON ({e}): {line}"))
}

/// The browser's stats when media flowed: RTP both ways, DTLS connected, SRTP in use, a
/// loopback pair towards rtpengine's port range.
fn assert_browser_media(bed: &Bed, run: &ClientRun) {
    let r = result(run);
    let s = &r["stats"];
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    assert!(
        n(&s["inbound"]["packets"]) > 0 && n(&s["inbound"]["bytes"]) > 0,
        "the browser received no RTP: {r}\n{}",
        run.output
    );
    assert!(
        n(&s["outbound"]["packets"]) > 0 && n(&s["outbound"]["bytes"]) > 0,
        "the browser sent no RTP: {r}"
    );
    assert_eq!(s["dtlsState"], "connected", "{r}");
    assert!(
        s["srtpCipher"].as_str().is_some_and(|c| !c.is_empty()),
        "{r}"
    );
    assert_eq!(s["inboundCodec"], "audio/PCMU", "the backend's codec: {r}");
    let remote: SocketAddr = s["pair"]["remote"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no selected ICE pair: {r}"));
    assert!(
        remote.ip().is_loopback() && bed.rtpengine.ports().contains(&remote.port()),
        "the browser's media goes to rtpengine: {r}"
    );
    let local: SocketAddr = s["pair"]["local"].as_str().unwrap().parse().unwrap();
    assert!(local.ip().is_loopback(), "{r}");
}

/// The page calls, media flows both ways through rtpengine, the page hangs up: the backend
/// gets the BYE and rtpengine forgets the call.
#[test]
fn a_browser_calls_through_rtpengine_media_flows_and_its_hang_up_reaches_the_backend() {
    let Some(bed) = Bed::start(
        "browser-hangs-up",
        "a_browser_calls_through_rtpengine_media_flows_and_its_hang_up_reaches_the_backend",
    ) else {
        return;
    };
    let page = bed.browser("alice", "browser");
    page.wait_event("registered", Duration::from_secs(20));
    let invite = bed.assert_call_anchored();
    let run = page.wait(CLIENT_LIMIT);
    assert_browser_media(&bed, &run);
    run.assert_events(&["registered", "confirmed", "media", "ended local Terminated"]);
    bed.assert_backend_got_rtp();
    let bye = bed.backend.wait_message("BYE ");
    assert_eq!(
        header(&bye, "Call-ID"),
        header(&invite, "Call-ID"),
        "the BYE ends the browser's call"
    );
    bed.assert_deleted(&invite);
}

/// The backend hangs up a browser call with media flowing: the page sees the call end by the
/// remote side, the BYE got 200, and rtpengine forgets the call.
#[test]
fn a_backend_hangs_up_a_browser_call_and_the_page_sees_it_end() {
    let Some(bed) = Bed::start(
        "backend-hangs-up",
        "a_backend_hangs_up_a_browser_call_and_the_page_sees_it_end",
    ) else {
        return;
    };
    let page = bed.browser("carol", "backend");
    page.wait_event("registered", Duration::from_secs(20));
    let invite = bed.assert_call_anchored();
    page.wait_event("media", Duration::from_secs(20));
    bed.assert_backend_got_rtp();
    assert_eq!(bed.backend.hang_up(&invite, bed.sbc.sip_addr()), 200);
    let run = page.wait(CLIENT_LIMIT);
    assert_browser_media(&bed, &run);
    run.assert_events(&[
        "registered",
        "confirmed",
        "media",
        "ended remote Terminated",
    ]);
    bed.assert_deleted(&invite);
}
