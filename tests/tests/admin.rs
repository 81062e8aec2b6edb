//! The admin endpoint (sbc only): `/healthz`, `/readyz`, `/metrics`, `/dispatcher`, and
//! `sbc ctl dispatcher list` printing each destination's flags.

use std::time::Duration;

use kubesbc_e2e::{TempDir, Testbed, http, require_tool, sbc_only, wait_for};

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
