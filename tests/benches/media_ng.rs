//! ng round trips against a real rtpengine: each call is offer + answer + delete through
//! `sbc::media::Anchor` (SDP validation, flags, bencode, one UDP socket demultiplexed by
//! cookie), no RTP. Reports calls and ng round trips per second, mean latency, and CPU per
//! call of the client (this process) and of rtpengine, from the kernel's per-thread run time
//! (`/proc/<pid>/task/*/schedstat`, nanoseconds).
//!
//! `cargo bench -p kubesbc-e2e --bench media_ng [-- CALLS CONCURRENCY]` (defaults 3000 and
//! 1, then the same at 16). Needs `rtpengine` (scripts/install-deps.sh). The client runs on a
//! tokio current-thread runtime, so its CPU is one thread's; rtpengine runs 2 worker threads.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kubesbc_crds::config::Transport;
use kubesbc_e2e::rtpengine::Rtpengine;
use kubesbc_e2e::{TempDir, require_tool};
use sbc::media::client::{NgClient, Timing};
use sbc::media::exchange::Tags;
use sbc::media::pool::Pool;
use sbc::media::profile::{Leg, Profiles};
use sbc::media::{Anchor, DialogIds, FailurePolicy};

/// CPU nanoseconds of every thread of process `pid` (`self` for this one).
fn cpu_ns(pid: &str) -> u64 {
    let dir = Path::new("/proc").join(pid).join("task");
    let Ok(tasks) = std::fs::read_dir(&dir) else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn sdp(port: u16) -> Bytes {
    Bytes::from(format!(
        "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
    ))
}

const LEG: Leg = Leg {
    transport: Transport::Udp,
    webrtc: false,
};

async fn call(a: &Anchor, n: usize) {
    let mut ids = DialogIds {
        call_id: Bytes::from(format!("bench-{n}@127.0.0.1")),
        from_tag: Bytes::from_static(b"caller"),
        to_tag: None,
    };
    a.offer(&ids, Tags::AsIs, sdp(40_000), LEG)
        .await
        .expect("offer");
    ids.to_tag = Some(Bytes::from_static(b"callee"));
    a.answer(&ids, Tags::AsIs, sdp(40_002), LEG)
        .await
        .expect("answer");
    a.delete(&ids).await.expect("delete");
}

fn run(rtp: &Rtpengine, calls: usize, concurrency: usize, first: usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let rtp_pid = rtp.pid().expect("rtpengine runs").to_string();
    rt.block_on(async {
        let client = NgClient::bind(
            "127.0.0.1:0".parse().unwrap(),
            Timing {
                timeout: Duration::from_secs(2),
                retransmit: Duration::from_millis(500),
            },
        )
        .await
        .expect("bind");
        let pool = Pool::new(&[rtp.ng_name()], client).await;
        pool.ping_all().await;
        let a = Anchor::from_parts(pool, Profiles::default(), FailurePolicy::default());
        // Warm up (rtpengine's first calls allocate).
        for i in 0..50 {
            call(&a, first + calls + i).await;
        }
        let (c0, r0, t0) = (cpu_ns("self"), cpu_ns(&rtp_pid), Instant::now());
        let per = calls / concurrency;
        let workers = (0..concurrency).map(|w| {
            let a = a.clone();
            async move {
                for i in 0..per {
                    call(&a, first + w * per + i).await;
                }
            }
        });
        futures_join(workers).await;
        let wall = t0.elapsed();
        let (c1, r1) = (cpu_ns("self"), cpu_ns(&rtp_pid));
        let done = per * concurrency;
        let secs = wall.as_secs_f64();
        println!(
            "concurrency {concurrency:>3}: {done} calls in {secs:.2} s = {:.0} calls/s, {:.0} ng round trips/s, \
             {:.0} us per round trip (wall, mean); CPU per call: client {:.1} us, rtpengine {:.1} us",
            done as f64 / secs,
            3.0 * done as f64 / secs,
            secs * 1e6 / (3.0 * done as f64) * concurrency as f64,
            (c1 - c0) as f64 / 1e3 / done as f64,
            (r1 - r0) as f64 / 1e3 / done as f64,
        );
    });
}

/// Runs the futures concurrently on this thread and waits for all of them.
async fn futures_join<F: std::future::Future<Output = ()> + 'static>(fs: impl Iterator<Item = F>) {
    tokio::task::LocalSet::new()
        .run_until(async move {
            let handles: Vec<_> = fs.map(tokio::task::spawn_local).collect();
            for h in handles {
                h.await.expect("worker");
            }
        })
        .await;
}

fn main() {
    if !require_tool("rtpengine") {
        return;
    }
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let calls = args.first().and_then(|a| a.parse().ok()).unwrap_or(3000);
    let dir = TempDir::new("bench-media");
    let rtp = Rtpengine::start(&dir);
    println!(
        "media_ng: offer + answer + delete per call against rtpengine {} (userspace, loopback); \
         the machine may be shared with other work: compare runs of one sitting only",
        rtp.ng_name()
    );
    match args.get(1).and_then(|a| a.parse().ok()) {
        Some(c) => run(&rtp, calls, c, 0),
        None => {
            run(&rtp, calls, 1, 0);
            run(&rtp, calls, 16, 1_000_000);
        }
    }
}
