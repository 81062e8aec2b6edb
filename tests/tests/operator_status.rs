//! The operator's real `/dispatcher` probe against a real sbc: one live backend (a sipp UAS
//! answering OPTIONS) and one dead port give "1 up / 2 total", as the SbcCluster and
//! DispatcherSet status would show it.

use std::time::Duration;

use kubesbc_e2e::{
    DispatcherDest, Proxy, ProxyOptions, Sipp, SippTransport, TempDir, free_port, require_tool,
    sbc_only, scenario,
};
use kubesbc_operator::destinations::{self, Count, DestinationProbe, HttpProbe};

#[test]
fn the_operator_probe_counts_one_of_two_destinations_up() {
    if !sbc_only() || !require_tool("sipp") {
        return;
    }
    let dir = TempDir::new("operator-status");
    let live_port = free_port();
    let _uas = Sipp::uas(
        &dir,
        "uas",
        &scenario("uas.xml"),
        live_port,
        SippTransport::Udp,
    );
    let live = DispatcherDest::local(live_port, false);
    let dead = DispatcherDest::local(free_port(), false);
    let proxy = Proxy::start(
        &dir,
        &ProxyOptions {
            destinations: vec![live.clone(), dead.clone()],
            ..ProxyOptions::default()
        },
    );
    // Probing has settled: the live one answers OPTIONS, the dead one is marked down.
    proxy.wait_destination(&live.uri, true, Duration::from_secs(10));
    proxy.wait_destination(&dead.uri, false, Duration::from_secs(10));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let admin = proxy.admin();
    let view = rt
        .block_on(HttpProbe.probe(admin))
        .unwrap_or_else(|e| panic!("GET /dispatcher on {admin}: {e}"));
    let set = view
        .sets
        .get(&1)
        .unwrap_or_else(|| panic!("set 1 missing from {view:?}"));
    assert_eq!(set.get(&live.uri), Some(&true), "{view:?}");
    assert_eq!(set.get(&dead.uri), Some(&false), "{view:?}");
    assert_eq!(
        destinations::aggregate(&[view])[&1],
        Count { up: 1, total: 2 }
    );

    // Through the whole observation path as a reconcile runs it, with one more pod address
    // that answers nothing: the sbc's view is the count, the silent pod is left out.
    let silent = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let obs = rt.block_on(destinations::observe(&HttpProbe, &[admin, silent]));
    assert_eq!((obs.asked, obs.answered), (2, 1));
    assert_eq!(destinations::sum(&obs.sets, [1]), Count { up: 1, total: 2 });
}
