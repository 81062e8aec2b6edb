//! Cost of one `Dispatcher::select` per algorithm (`cargo bench -p kubesbc-sbc --bench
//! dispatch_select`). A plain timing loop, no harness: it prints nanoseconds per call.

use std::hint::black_box;
use std::time::Instant;

use kubesbc_crds::config::{Algorithm, DestinationConfig, DispatcherConfig, DispatcherSetConfig};
use sbc::dispatch::{Dispatcher, SelectKey};

fn main() {
    const N: u32 = 2_000_000;
    let key = SelectKey {
        call_id: b"a84b4c76e66710@pc33.atlanta.com",
        from_uri: b"sip:alice@example.com;transport=tcp",
        to_uri: b"sip:bob@10.0.0.1:5080",
        request_uri: b"sip:1234@sbc.example.com:5060;transport=udp",
        auth_username: Some(b"alice"),
    };
    for alg in Algorithm::ALL {
        let destinations = (0..8)
            .map(|i| DestinationConfig {
                uri: format!("sip:127.0.0.1:{}", 5071 + i),
                weight: Some(12),
                rweight: Some(10 + i),
                ..Default::default()
            })
            .collect();
        let cfg = DispatcherConfig {
            dialog_timeout_secs: kubesbc_crds::policy::default_dialog_timeout_secs(),
            default_set: 1,
            sets: vec![DispatcherSetConfig {
                id: 1,
                algorithm: alg,
                destinations,
                probing: Default::default(),
                failover: Default::default(),
                service: None,
            }],
        };
        let d = Dispatcher::new(&cfg).expect("valid");
        let start = Instant::now();
        for _ in 0..N {
            black_box(d.select(1, black_box(&key), &[]));
        }
        let ns = start.elapsed().as_nanos() as f64 / f64::from(N);
        println!("{:>2} {:<20} {ns:>7.1} ns/select", alg.number(), alg.name());
    }
}
