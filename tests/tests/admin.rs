//! The admin endpoint (sbc only): `/healthz`, `/readyz`, `/metrics`, `/dispatcher`, and
//! `sbc ctl dispatcher list` printing each destination's flags.

use std::net::SocketAddr;
use std::time::Duration;

use kubesbc_e2e::{Proxy, TempDir, Testbed, free_port, http, require_tool, sbc_only, wait_for};

#[test]
fn admin_endpoint_reports_health_readiness_metrics_and_destinations() {
    if !sbc_only() || !require_tool("sipp") {
        return;
    }
    let dir = TempDir::new("admin");
    let bed = Testbed::builder(&dir)
        .backend("uas", "uas.xml")
        .dead_destination()
        .start();
    let (proxy, live, dead) = (&bed.proxy, &bed.dests[0], &bed.dests[1]);
    let admin = proxy.admin();
    let get = |path: &str| {
        http::get(admin, path, Duration::from_secs(2))
            .unwrap_or_else(|| panic!("GET {path} on {admin}: no HTTP answer"))
    };
    assert_eq!(get("/healthz").status, 200);
    let ready = wait_for(Duration::from_secs(10), || {
        (get("/readyz").status == 200).then_some(())
    });
    assert!(ready.is_some(), "/readyz not 200 with a live destination");

    proxy.wait_destination(&live.uri, true, Duration::from_secs(10));
    proxy.wait_destination(&dead.uri, false, Duration::from_secs(10));
    let listing = proxy.dispatcher_listing();
    assert!(
        listing.contains(&live.uri) && listing.contains(&dead.uri),
        "sbc ctl dispatcher list:\n{listing}"
    );

    let metrics = get("/metrics");
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.body.contains("# TYPE"),
        "/metrics is not Prometheus text:\n{}",
        metrics.body
    );
    let ds = get("/dispatcher");
    assert_eq!(ds.status, 200);
    let body = ds.body.trim_start();
    assert!(
        (body.starts_with('{') || body.starts_with('['))
            && body.contains(&live.uri)
            && body.contains(&dead.uri),
        "/dispatcher is not JSON naming both destinations:\n{}",
        ds.body
    );
}

/// `--admin-ip` (what the operator passes in hostNetwork mode, with the pod IP): the admin
/// endpoint answers on that IP and on loopback (for `sbc ctl` inside the pod, and lifting
/// bans, which only loopback may), at the configured port, and on no other address.
#[test]
fn admin_ip_binds_the_admin_endpoint_to_that_address_and_loopback_only() {
    if !sbc_only() {
        return;
    }
    let dir = TempDir::new("admin-ip");
    let sip = free_port();
    let port = free_port();
    let configured = SocketAddr::from(([127, 0, 0, 2], port));
    let pod_ip = SocketAddr::from(([127, 0, 0, 3], port));
    let local = SocketAddr::from(([127, 0, 0, 1], port));
    let args: Vec<String> = [
        "--listen",
        &format!("udp:127.0.0.1:{sip}"),
        "--admin",
        &configured.to_string(),
        "--admin-ip",
        "127.0.0.3",
    ]
    .map(str::to_owned)
    .to_vec();
    // Waits for /healthz on the pod IP.
    let _proxy = Proxy::start_sbc(&dir, &args, sip, pod_ip);
    for addr in [pod_ip, local] {
        let health = http::get(addr, "/healthz", Duration::from_secs(2));
        assert_eq!(health.map(|r| r.status), Some(200), "/healthz on {addr}");
    }
    assert!(
        http::get(configured, "/healthz", Duration::from_millis(500)).is_none(),
        "the admin endpoint also answers on {configured}"
    );
}
