//! Tests of `admin/ctl`.

use super::*;
use crate::admin::tests::{sample_sets, start, start_with};
use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Top,
}

#[derive(clap::Subcommand)]
enum Top {
    Ctl(CtlArgs),
}

fn parse(args: &[&str]) -> CtlArgs {
    let Top::Ctl(a) = Cli::try_parse_from(args).unwrap().cmd;
    a
}

const EXPECTED: &str = "\
NRSETS: 1
SET:
    ID: 1
    ALGORITHM: round-robin
    TARGETS:
        DEST:
            URI: sip:127.0.0.1:5080
            FLAGS: AP
            PRIORITY: 0
            ATTRS: weight=50;duid=a
            STATE: active
            ACTIVE_CALLS: 2
            TARGET: udp:127.0.0.1:5080
        DEST:
            URI: sip:127.0.0.1:5082;transport=tcp
            FLAGS: IP
            PRIORITY: 5
            STATE: inactive
            ACTIVE_CALLS: 0
            DESCRIPTION: backup
            TARGET: tcp:127.0.0.1:5082
            COUNTERS: REQUESTS 7 FAILURES 3 PROBES_FAILED 2 PROBES_ANSWERED 0
";

#[test]
fn listing_has_kamcmd_shape() {
    let mut out = Vec::new();
    write_dispatcher_list(
        &mut out,
        &DispatcherSnapshot {
            sets: sample_sets(),
        },
    )
    .unwrap();
    assert_eq!(String::from_utf8(out).unwrap(), EXPECTED);

    let mut out = Vec::new();
    write_dispatcher_list(&mut out, &DispatcherSnapshot::default()).unwrap();
    assert_eq!(String::from_utf8(out).unwrap(), "NRSETS: 0\n");
}

#[test]
fn control_characters_are_escaped() {
    let mut sets = sample_sets();
    sets[0].destinations[0].uri = "sip:a\x1b[2J".into();
    let mut out = Vec::new();
    write_dispatcher_list(&mut out, &DispatcherSnapshot { sets }).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(!text.contains('\x1b'));
    assert!(text.contains("URI: sip:a\\u{1b}[2J"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_lists_and_removes_bans() {
    use crate::store::{MemoryStore, Store};
    let store: std::sync::Arc<dyn Store> = std::sync::Arc::new(MemoryStore::new(100));
    store
        .set_ex(
            "ban:{192.0.2.7}",
            bytes::Bytes::from_static(b"flood"),
            Duration::from_secs(120),
        )
        .await
        .unwrap();
    let srv = start_with(Vec::new(), Some(store)).await;
    let admin = srv.addr.to_string();
    let (list, removed, again, after) = tokio::task::spawn_blocking(move || {
        let run = |args: &[&str]| {
            let mut out = Vec::new();
            let r = run_to(&parse(args), &mut out);
            (r, String::from_utf8(out).unwrap())
        };
        let list = run(&["sbc", "ctl", "--admin", &admin, "bans", "list"]).1;
        let removed = run(&[
            "sbc",
            "ctl",
            "--admin",
            &admin,
            "bans",
            "remove",
            "192.0.2.7",
        ]);
        let again = run(&[
            "sbc",
            "ctl",
            "--admin",
            &admin,
            "bans",
            "remove",
            "192.0.2.7",
        ]);
        let after = run(&["sbc", "ctl", "--admin", &admin, "bans", "list"]).1;
        (list, removed, again, after)
    })
    .await
    .unwrap();
    assert!(list.starts_with("BANS: 1\n192.0.2.7 "), "{list}");
    assert!(list.contains("REASON flood"), "{list}");
    assert!(removed.0.is_ok());
    assert_eq!(removed.1, "ban of 192.0.2.7 lifted\n");
    assert_eq!(again.0.unwrap_err().to_string(), "192.0.2.7 is not banned");
    assert_eq!(after, "BANS: 0\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_lists_the_dispatcher_of_a_running_server() {
    let srv = start(sample_sets()).await;
    let admin = srv.addr.to_string();
    let (text, json) = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        run_to(
            &parse(&["sbc", "ctl", "dispatcher", "list", "--admin", &admin]),
            &mut out,
        )
        .unwrap();
        let mut raw = Vec::new();
        run_to(
            &parse(&[
                "sbc",
                "ctl",
                "--admin",
                &admin,
                "dispatcher",
                "list",
                "--json",
            ]),
            &mut raw,
        )
        .unwrap();
        (String::from_utf8(out).unwrap(), raw)
    })
    .await
    .unwrap();
    assert_eq!(text, EXPECTED);
    let snap: DispatcherSnapshot = serde_json::from_slice(&json).unwrap();
    assert_eq!(snap.sets, sample_sets());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_health_prints_readiness_and_fails_when_not_ready() {
    let srv = start(sample_sets()).await;
    let admin = srv.addr.to_string();
    let args = parse(&["sbc", "ctl", "health", "--admin", &admin]);
    let a = args.clone();
    let (out, res) = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        let res = run_to(&a, &mut out);
        (String::from_utf8(out).unwrap(), res)
    })
    .await
    .unwrap();
    assert_eq!(out, "not ready: listeners not bound\n");
    assert!(
        matches!(&res, Err(CtlError::NotReady(r)) if r == "listeners not bound"),
        "{res:?}"
    );

    srv.health.set_listeners_bound(true);
    let (out, res) = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        let res = run_to(&args, &mut out);
        (String::from_utf8(out).unwrap(), res)
    })
    .await
    .unwrap();
    assert_eq!(out, "ready\n");
    assert!(res.is_ok());
}

#[test]
fn unreachable_endpoint_is_a_clear_error() {
    // Bind then drop a listener: nothing listens on that loopback port any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let admin = format!("127.0.0.1:{port}");
    let err = run_to(
        &parse(&["sbc", "ctl", "health", "--admin", &admin, "--timeout", "1"]),
        &mut Vec::new(),
    )
    .unwrap_err();
    assert!(matches!(err, CtlError::Connect { .. }), "{err:?}");
    assert!(err.to_string().contains(&admin));
}

#[test]
fn a_non_http_answer_is_a_bad_response() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = listener.local_addr().unwrap().to_string();
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf);
        s.write_all(b"SIP/2.0 200 OK\r\n\r\n").unwrap();
    });
    let err = run_to(
        &parse(&["sbc", "ctl", "health", "--admin", &admin, "--timeout", "2"]),
        &mut Vec::new(),
    )
    .unwrap_err();
    server.join().unwrap();
    assert!(matches!(err, CtlError::BadResponse { .. }), "{err:?}");
    assert!(err.to_string().contains(&admin), "{err}");
}
