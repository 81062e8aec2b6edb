//! The Redis store on a real three-master Redis Cluster: calls that merge several slots are
//! split and answered in order, listings see every master, and hash-tagged decisions run.

use super::super::memory::contract;
use super::*;

/// Three cluster-enabled redis-servers joined by `redis-cli --cluster create`, killed on
/// drop; None (with a loud line) when the binaries are missing outside CI.
struct Cluster(Vec<std::process::Child>, Vec<u16>, std::path::PathBuf);

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.2);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn cluster() -> Option<Cluster> {
    let dir = std::env::temp_dir().join(format!("kubesbc-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let mut c = Cluster(Vec::new(), Vec::new(), dir.clone());
    for i in 0..3 {
        let port = free_port();
        let conf = dir.join(format!("nodes{i}.conf"));
        let extra: [&std::ffi::OsStr; 4] = [
            "--cluster-enabled".as_ref(),
            "yes".as_ref(),
            "--cluster-config-file".as_ref(),
            conf.as_os_str(),
        ];
        c.0.push(super::tests::spawn_redis(port, &extra)?);
        c.1.push(port);
    }
    for port in &c.1 {
        let up = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            std::net::TcpStream::connect(("127.0.0.1", *port)).is_ok()
        });
        assert!(up, "redis-server did not listen on {port}");
    }
    let out = std::process::Command::new("redis-cli")
        .arg("--cluster")
        .arg("create")
        .args(c.1.iter().map(|p| format!("127.0.0.1:{p}")))
        .arg("--cluster-yes")
        .output()
        .expect("redis-cli");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    for port in &c.1 {
        let ok = (0..200).any(|_| {
            std::thread::sleep(Duration::from_millis(50));
            std::process::Command::new("redis-cli")
                .args(["-p", &port.to_string(), "CLUSTER", "INFO"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
        });
        assert!(ok, "cluster not ok on {port}");
    }
    Some(c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_on_a_three_master_cluster() {
    let Some(c) = cluster() else { return };
    let r = Registry::new();
    let urls: Vec<String> =
        c.1.iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect();
    let s = RedisStore::connect(
        &Target::Cluster(urls),
        "t1:",
        Duration::from_millis(1000),
        &r,
    )
    .unwrap();
    let w = Duration::from_secs(30);
    s.ping().await.unwrap();
    // Keys of many slots: a batch is split by slot and answered in order; the listing that
    // follows it runs on every master.
    contract::batch_runs_operations_in_order_each_on_its_own(&s).await;
    assert_eq!(s.incr_by("calls", 5, w).await.unwrap(), 5);
    s.hash_set(
        "subscriber:alice",
        vec![("ha1".into(), Bytes::from_static(b"abc"))],
        Some(w),
    )
    .await
    .unwrap();
    assert_eq!(s.hash_get_all("subscriber:alice").await.unwrap().len(), 1);

    // Flood decisions of several sources in one sync: one script per slot.
    let ips = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"];
    let keys: Vec<(String, String)> = ips
        .iter()
        .map(|ip| (format!("flood:{{{ip}}}"), format!("ban:{{{ip}}}")))
        .collect();
    let hits: Vec<FloodHit> = keys
        .iter()
        .map(|(c, b)| FloodHit {
            counter_key: c,
            ban_key: b,
            limit: 2,
            window: w,
            ban_ttl: w,
            ban_value: Bytes::from_static(b"flood"),
            hits: 3,
        })
        .collect();
    let out = s.flood_sync(&hits).await.unwrap();
    assert!(
        out.iter()
            .all(|o| matches!(o, FloodOutcome::Banned { new: true, .. })),
        "{out:?}"
    );
    let bans = s.list_prefix_ttl("ban:", 10).await.unwrap();
    let banned: Vec<&str> = bans.iter().map(|l| l.key.as_str()).collect();
    assert_eq!(
        banned,
        [
            "ban:{10.0.0.1}",
            "ban:{10.0.0.2}",
            "ban:{10.0.0.3}",
            "ban:{10.0.0.4}"
        ]
    );

    // Calls of two throttles released together: the script reads the counter the dialog
    // key names, on the dialog key's slot.
    let mut dialogs = Vec::new();
    for name in ["a", "b"] {
        let counter = crate::store::keys::throttle_window("", name, "cc", "t=x", 7);
        let dialog = crate::store::keys::throttle_dialog("", name, b"call-1");
        s.incr_by(&counter, 2, Duration::from_secs(100))
            .await
            .unwrap();
        s.set_ex(
            &dialog,
            Bytes::from_static(b"7|t=x"),
            Duration::from_secs(100),
        )
        .await
        .unwrap();
        dialogs.push((
            dialog,
            crate::store::keys::throttle_calls("", name),
            counter,
        ));
    }
    let releases: Vec<DialogRelease> = dialogs
        .iter()
        .map(|(d, p, _)| DialogRelease {
            dialog_key: d,
            counter_prefix: p,
            bucket_ms: 1000,
            timeout_ms: 4000,
            now_ms: 9000,
        })
        .collect();
    assert_eq!(s.release_dialogs(&releases).await.unwrap(), [true, true]);
    assert_eq!(s.release_dialogs(&releases).await.unwrap(), [false, false]);
    for (_, _, counter) in &dialogs {
        assert_eq!(s.get(counter).await.unwrap().as_deref(), Some(&b"1"[..]));
    }
}
