//! Selection tests. Expected indexes are Kamailio's: `ds_get_hash` values were computed
//! with Kamailio's C function compiled standalone (see `hash.rs`), and the destination
//! order follows `add_dest2list` + `reindex_dests` (priority descending, equal priorities
//! in reverse file order).

use std::collections::HashMap;

use super::*;
use kubesbc_crds::config::{Algorithm, DestinationConfig, DispatcherConfig, DispatcherSetConfig};

const A: &str = "sip:127.0.0.1:5071";
const B: &str = "sip:127.0.0.1:5072";
const C: &str = "sip:127.0.0.1:5073";
const D: &str = "sip:127.0.0.1:5074";

fn dc(uri: &str) -> DestinationConfig {
    DestinationConfig {
        uri: uri.into(),
        ..Default::default()
    }
}

/// A priority dispatcher over `(uri, priority)` destinations, in file order.
fn prioritized(dests: &[(&str, i32)]) -> Dispatcher {
    let dests = dests
        .iter()
        .map(|(uri, priority)| DestinationConfig {
            priority: *priority,
            ..dc(uri)
        })
        .collect();
    dispatcher(Algorithm::Priority, dests)
}

/// The URIs of set 1 in the order the dispatcher keeps them.
fn listed_uris(d: &Dispatcher) -> Vec<String> {
    d.snapshot()[0]
        .destinations
        .iter()
        .map(|x| x.uri.clone())
        .collect()
}

fn set(id: u32, algorithm: Algorithm, destinations: Vec<DestinationConfig>) -> DispatcherSetConfig {
    DispatcherSetConfig {
        id,
        algorithm,
        destinations,
        probing: Default::default(),
        failover: Default::default(),
        service: None,
    }
}

fn dispatcher(algorithm: Algorithm, destinations: Vec<DestinationConfig>) -> Dispatcher {
    let cfg = DispatcherConfig {
        dialog_timeout_secs: kubesbc_crds::policy::default_dialog_timeout_secs(),
        default_set: 1,
        sets: vec![set(1, algorithm, destinations)],
    };
    Dispatcher::new(&cfg).expect("valid dispatcher")
}

fn abcd(algorithm: Algorithm) -> Dispatcher {
    dispatcher(algorithm, vec![dc(A), dc(B), dc(C), dc(D)])
}

/// A Call-ID whose Kamailio hash picks index 2 of four (B).
const ATLANTA: &[u8] = b"a84b4c76e66710@pc33.atlanta.com";

/// A selection key with only a Call-ID.
fn call_id_key(call_id: &[u8]) -> SelectKey<'_> {
    SelectKey {
        call_id,
        ..Default::default()
    }
}

/// A selection key with only a digest username.
fn auth_key(username: &[u8]) -> SelectKey<'_> {
    SelectKey {
        auth_username: Some(username),
        ..Default::default()
    }
}

fn pick(d: &Dispatcher, key: &SelectKey<'_>, tried: &[usize]) -> Option<String> {
    d.select(1, key, tried).map(|s| s.dest.uri.clone())
}

fn dest(d: &Dispatcher, uri: &str) -> Arc<Destination> {
    let t = d.table();
    Arc::clone(
        t.set(1)
            .unwrap()
            .destinations()
            .iter()
            .find(|x| x.uri == uri)
            .expect("destination"),
    )
}

fn counts(d: &Dispatcher, n: usize) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for _ in 0..n {
        let uri = pick(d, &SelectKey::default(), &[]).expect("a destination");
        *m.entry(uri).or_default() += 1;
    }
    m
}

fn count(m: &HashMap<String, usize>, uri: &str) -> usize {
    m.get(uri).copied().unwrap_or(0)
}

#[test]
fn destinations_are_in_kamailio_order() {
    let d = prioritized(&[(A, 0), (B, 10), (C, 5), (D, 10)]);
    assert_eq!(listed_uris(&d), vec![D, B, C, A]);
    assert_eq!(
        listed_uris(&abcd(Algorithm::RoundRobin)),
        vec![D, C, B, A],
        "equal priorities: last listed first"
    );
}

// Four destinations A, B, C, D with equal priority: Kamailio indexes them D=0, C=1, B=2, A=3.
#[test]
fn hash_algorithms_pick_what_kamailio_picks() {
    let cases = [
        // ds_get_hash = 2175018094, % 4 = 2
        (
            Algorithm::HashCallId,
            call_id_key(b" a84b4c76e66710@pc33.atlanta.com\r\n"),
            B,
        ),
        // ds_get_hash = 2552023384, % 4 = 0
        (Algorithm::HashCallId, call_id_key(b"call-3@host"), D),
        // ("alice", "example.com") = 1442294598, % 4 = 2
        (
            Algorithm::HashFromUri,
            SelectKey {
                from_uri: b"sip:alice@example.com;transport=tcp",
                ..Default::default()
            },
            B,
        ),
        // ("bob", "10.0.0.1:5080") = 2701604707, % 4 = 3
        (
            Algorithm::HashToUri,
            SelectKey {
                to_uri: b"sip:bob@10.0.0.1:5080;user=phone",
                ..Default::default()
            },
            A,
        ),
        // ("1234", "sbc.example.com"): the default port is not hashed = 2632154839, % 4 = 3
        (
            Algorithm::HashRequestUri,
            SelectKey {
                request_uri: b"sip:1234@sbc.example.com:5060;transport=udp",
                ..Default::default()
            },
            A,
        ),
        // "alice" = 1834153949, % 4 = 1
        (Algorithm::HashAuthUsername, auth_key(b"alice"), C),
    ];
    for (alg, key, want) in &cases {
        let (alg, want) = (*alg, *want);
        let d = abcd(alg);
        assert_eq!(pick(&d, key, &[]).as_deref(), Some(want), "{alg}");
        // Stable across requests and across a rebuilt dispatcher (a restart).
        assert_eq!(pick(&d, key, &[]).as_deref(), Some(want), "{alg} again");
        let rebuilt = abcd(alg);
        assert_eq!(
            pick(&rebuilt, key, &[]).as_deref(),
            Some(want),
            "{alg} rebuilt"
        );
    }
}

#[test]
fn hash_skips_down_destinations_to_the_next_index() {
    let d = abcd(Algorithm::HashCallId);
    let key = call_id_key(ATLANTA);
    dest(&d, B).set_inactive(); // index 2, the hashed one
    assert_eq!(pick(&d, &key, &[]).as_deref(), Some(A), "index 3");
    dest(&d, A).set_inactive();
    assert_eq!(pick(&d, &key, &[]).as_deref(), Some(D), "wraps to index 0");
}

#[test]
fn failover_follows_kamailio_order_and_ends_in_none() {
    let d = abcd(Algorithm::HashCallId);
    let key = call_id_key(ATLANTA);
    let first = d.select(1, &key, &[]).unwrap();
    assert_eq!((first.index, first.dest.uri.as_str()), (2, B));
    let mut tried = vec![first.index];
    let mut order = vec![];
    while let Some(s) = d.select(1, &key, &tried) {
        order.push(s.dest.uri.clone());
        tried.push(s.index);
    }
    assert_eq!(
        order,
        vec![A, D, C],
        "after the first choice, then wrapping"
    );

    dest(&d, D).set_inactive();
    assert_eq!(
        pick(&d, &key, &[2, 3]).as_deref(),
        Some(C),
        "down ones are skipped"
    );
}

#[test]
fn round_robin_cycles_and_steps_over_down_destinations() {
    let d = abcd(Algorithm::RoundRobin);
    let seq: Vec<String> = (0..5)
        .map(|_| pick(&d, &SelectKey::default(), &[]).unwrap())
        .collect();
    assert_eq!(seq, vec![D, C, B, A, D]);
    dest(&d, C).set_inactive();
    // Cursor at 1 (C): C is down, B is used and the cursor moves past it, as Kamailio does.
    let seq: Vec<String> = (0..4)
        .map(|_| pick(&d, &SelectKey::default(), &[]).unwrap())
        .collect();
    assert_eq!(seq, vec![B, A, D, B]);
    // Failover attempts do not move the cursor.
    assert_eq!(pick(&d, &SelectKey::default(), &[2]).as_deref(), Some(A));
    assert_eq!(pick(&d, &SelectKey::default(), &[]).as_deref(), Some(A));
}

#[test]
fn round_robin_spreads_evenly() {
    let d = abcd(Algorithm::RoundRobin);
    let m = counts(&d, 400);
    for u in [A, B, C, D] {
        assert_eq!(count(&m, u), 100, "{u}");
    }
}

#[test]
fn auth_username_without_credentials_falls_back_to_round_robin() {
    let d = abcd(Algorithm::HashAuthUsername);
    let none = SelectKey::default();
    let empty = auth_key(b"  ");
    assert_eq!(pick(&d, &none, &[]).as_deref(), Some(D));
    assert_eq!(pick(&d, &empty, &[]).as_deref(), Some(C));
    assert_eq!(pick(&d, &none, &[]).as_deref(), Some(B));
}

#[test]
fn random_uses_every_up_destination_and_never_a_down_one() {
    let d = abcd(Algorithm::Random);
    dest(&d, A).set_inactive();
    let m = counts(&d, 600);
    assert_eq!(count(&m, A), 0);
    for u in [B, C, D] {
        assert!(count(&m, u) > 100, "{u}: {m:?}");
    }
}

#[test]
fn priority_takes_the_highest_up_destination() {
    let d = prioritized(&[(A, 0), (B, 10), (C, 5)]);
    let key = SelectKey::default();
    assert_eq!(pick(&d, &key, &[]).as_deref(), Some(B));
    assert_eq!(pick(&d, &key, &[]).as_deref(), Some(B));
    assert_eq!(pick(&d, &key, &[0]).as_deref(), Some(C));
    assert_eq!(pick(&d, &key, &[0, 1]).as_deref(), Some(A));
    dest(&d, B).set_inactive();
    assert_eq!(pick(&d, &key, &[]).as_deref(), Some(C));
}

#[test]
fn weight_gives_each_destination_its_share_of_every_hundred() {
    let w = |uri: &str, weight: u32| DestinationConfig {
        weight: Some(weight),
        ..dc(uri)
    };
    let d = dispatcher(Algorithm::Weight, vec![w(A, 20), w(B, 80)]);
    let m = counts(&d, 300);
    assert_eq!((count(&m, A), count(&m, B)), (60, 240));

    // Sum below 100: the rest goes to the last destination in Kamailio's order (A).
    let d = dispatcher(Algorithm::Weight, vec![w(A, 30), w(B, 50)]);
    let m = counts(&d, 100);
    assert_eq!((count(&m, A), count(&m, B)), (50, 50));

    // Sum above 100: filled in order (B first), the excess is cut.
    let d = dispatcher(Algorithm::Weight, vec![w(A, 70), w(B, 70)]);
    let m = counts(&d, 100);
    assert_eq!((count(&m, A), count(&m, B)), (30, 70));

    // No weight on index 0 (the last listed): Kamailio ignores weights, all go to index 0.
    let d = dispatcher(Algorithm::Weight, vec![w(A, 50), dc(B)]);
    let m = counts(&d, 50);
    assert_eq!(count(&m, B), 50);

    // A down destination's share moves to the next index.
    let d = dispatcher(Algorithm::Weight, vec![w(A, 20), w(B, 80)]);
    dest(&d, B).set_inactive();
    assert_eq!(count(&counts(&d, 100), A), 100);
}

#[test]
fn relative_weight_spreads_over_active_destinations() {
    let rw = |uri: &str, w: u32| DestinationConfig {
        rweight: Some(w),
        ..dc(uri)
    };
    // Kamailio order C, B, A; sum 150: C 33, B 50, A 16 + the 1 left over (last filled).
    let d = dispatcher(
        Algorithm::RelativeWeight,
        vec![rw(A, 25), rw(B, 75), rw(C, 50)],
    );
    let m = counts(&d, 200);
    assert_eq!((count(&m, A), count(&m, B), count(&m, C)), (34, 100, 66));

    // B goes down: the table is rebuilt over C and A (66 + 33, A takes the rest).
    dest(&d, B).set_inactive();
    let m = counts(&d, 100);
    assert_eq!((count(&m, A), count(&m, B), count(&m, C)), (34, 0, 66));

    // B comes back.
    dest(&d, B).record_probe(true, &Default::default());
    let m = counts(&d, 100);
    assert_eq!((count(&m, A), count(&m, B), count(&m, C)), (17, 50, 33));
}

#[test]
fn call_load_prefers_fewest_calls_and_respects_maxload() {
    let ml = |uri: &str, max: Option<u32>| DestinationConfig {
        maxload: max,
        ..dc(uri)
    };
    // Kamailio order: C(max 1), B(no max), A(max 2).
    let d = dispatcher(
        Algorithm::CallLoad,
        vec![ml(A, Some(2)), ml(B, None), ml(C, Some(1))],
    );
    let key = SelectKey::default();
    let mut seq = vec![];
    for _ in 0..6 {
        let s = d.select(1, &key, &[]).unwrap();
        s.dest.call_started();
        seq.push(s.dest.uri.clone());
    }
    // C fills at 1, ties go to the lower index, A fills at 2, then only B is left.
    assert_eq!(seq, vec![C, B, A, B, A, B]);
    dest(&d, C).call_ended();
    assert_eq!(pick(&d, &key, &[]).as_deref(), Some(C));
    // Failover skips full destinations: after C (0), B (1); A (2) is full.
    assert_eq!(pick(&d, &key, &[0, 1]), None);
    assert_eq!(dest(&d, B).active_calls(), 3);

    let full = dispatcher(Algorithm::CallLoad, vec![ml(A, Some(1))]);
    full.select(1, &key, &[]).unwrap().dest.call_started();
    assert_eq!(
        full.select(1, &key, &[]).map(|s| s.index),
        None,
        "every destination full"
    );
}

#[test]
fn no_destination_up_means_none_without_panic_routing() {
    for alg in Algorithm::ALL {
        let mut cfg = DispatcherConfig {
            dialog_timeout_secs: kubesbc_crds::policy::default_dialog_timeout_secs(),
            default_set: 1,
            sets: vec![set(1, alg, vec![dc(A), dc(B), dc(C), dc(D)])],
        };
        cfg.sets[0].failover.panic_routing = false;
        let d = Dispatcher::new(&cfg).unwrap();
        for u in [A, B, C, D] {
            dest(&d, u).set_inactive();
        }
        let key = SelectKey {
            call_id: b"x",
            auth_username: Some(b"u"),
            ..Default::default()
        };
        assert!(d.select(1, &key, &[]).is_none(), "{alg}");
        let d = abcd(alg);
        assert!(
            d.select(1, &key, &[0, 1, 2, 3]).is_none(),
            "{alg}: all tried"
        );
        assert!(d.select(9, &key, &[]).is_none(), "{alg}: unknown set");
    }
    let empty = dispatcher(Algorithm::RoundRobin, vec![]);
    assert!(empty.select(1, &SelectKey::default(), &[]).is_none());
}

#[test]
fn disabled_and_inactive_flags_from_the_list_are_honoured() {
    let d = dispatcher(
        Algorithm::RoundRobin,
        vec![
            DestinationConfig {
                flags: flags::DISABLED,
                ..dc(A)
            },
            DestinationConfig {
                flags: flags::INACTIVE,
                ..dc(B)
            },
            dc(C),
        ],
    );
    let m = counts(&d, 10);
    assert_eq!(count(&m, C), 10);
}

#[test]
fn update_keeps_state_of_unchanged_uris() {
    let d = abcd(Algorithm::RoundRobin);
    dest(&d, A).set_inactive();
    let old_b = dest(&d, B);
    old_b.call_started();
    old_b.call_started();
    let sent = old_b.requests_sent();

    let cfg = DispatcherConfig {
        dialog_timeout_secs: kubesbc_crds::policy::default_dialog_timeout_secs(),
        default_set: 1,
        sets: vec![set(
            1,
            Algorithm::Weight,
            vec![
                dc(A),
                DestinationConfig {
                    weight: Some(40),
                    ..dc(B)
                },
                dc("sip:127.0.0.1:5075"),
                DestinationConfig {
                    flags: flags::DISABLED,
                    ..dc(D)
                },
            ],
        )],
    };
    d.update(&cfg).unwrap();
    assert_eq!(d.table().set(1).unwrap().algorithm(), Algorithm::Weight);
    assert!(!dest(&d, A).is_up(), "still down after the update");
    let new_b = dest(&d, B);
    assert!(
        !Arc::ptr_eq(&old_b, &new_b),
        "rebuilt with the new attributes"
    );
    assert_eq!(new_b.config.weight, Some(40));
    assert_eq!(new_b.active_calls(), 2);
    assert_eq!(new_b.requests_sent(), sent);
    // A call that started before the update ends on the old handle: the count follows.
    old_b.call_ended();
    assert_eq!(new_b.active_calls(), 1);
    assert_eq!(
        dest(&d, D).state(),
        DestState::Disabled,
        "new admin flags apply"
    );
    assert!(
        d.table()
            .set(1)
            .unwrap()
            .destinations()
            .iter()
            .all(|x| x.uri != C)
    );

    // An invalid update is refused and the current sets stay.
    let mut bad = cfg.clone();
    bad.sets[0].destinations[0].weight = Some(500);
    let err = d.update(&bad).unwrap_err();
    assert_eq!(
        err.to_string(),
        "dispatcher.sets[0].destinations[0].weight: 500 is out of range 0..=100"
    );
    assert_eq!(dest(&d, B).config.weight, Some(40));
}

#[test]
fn bad_configurations_are_refused() {
    let cfg = DispatcherConfig {
        dialog_timeout_secs: kubesbc_crds::policy::default_dialog_timeout_secs(),
        default_set: 1,
        sets: vec![
            set(1, Algorithm::RoundRobin, vec![]),
            set(1, Algorithm::RoundRobin, vec![]),
        ],
    };
    assert_eq!(
        Dispatcher::new(&cfg)
            .err()
            .map(|e| e.to_string())
            .as_deref(),
        Some("dispatcher.sets[1].id: set id 1 is used twice")
    );
    let cfg = DispatcherConfig {
        dialog_timeout_secs: kubesbc_crds::policy::default_dialog_timeout_secs(),
        default_set: 1,
        sets: vec![set(
            7,
            Algorithm::RoundRobin,
            vec![dc("sip:no-such-host.invalid")],
        )],
    };
    // A host that does not resolve is not a bad configuration: the destination is down.
    let d = Dispatcher::new(&cfg).expect("an unresolvable host does not fail the build");
    let t = d.table();
    let x = &t.set(7).unwrap().destinations()[0];
    assert!(!x.is_up() && !x.is_probed() && !x.is_panic_eligible());
    assert!(
        x.unresolved_reason()
            .unwrap()
            .contains("cannot resolve host")
    );
    assert_eq!(d.snapshot()[0].destinations[0].target, "udp:unresolved");
    assert_eq!(
        d.snapshot()[0].destinations[0].state,
        kubesbc_crds::listing::DestinationState::Inactive
    );
    assert!(d.select(7, &SelectKey::default(), &[]).is_none());
}

#[test]
fn an_unresolved_host_comes_up_when_it_resolves() {
    use std::sync::atomic::AtomicBool;
    let resolves = Arc::new(AtomicBool::new(false));
    let r = resolves.clone();
    let resolver: Resolver = Arc::new(move |host: &str, port: u16| {
        if r.load(Ordering::Relaxed) && host == "pbx.example.test" {
            Ok(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        } else {
            Err(format!("cannot resolve host {host:?}"))
        }
    });
    let cfg = DispatcherConfig {
        dialog_timeout_secs: kubesbc_crds::policy::default_dialog_timeout_secs(),
        default_set: 1,
        sets: vec![set(
            1,
            Algorithm::RoundRobin,
            vec![dc("sip:pbx.example.test:5099"), dc(A)],
        )],
    };
    let d = Dispatcher::with_resolver(&cfg, resolver).unwrap();
    assert!(d.table().has_unresolved());
    dest(&d, A).request_failed();
    assert_eq!(d.resolve_again(), 0, "still unresolvable");
    for _ in 0..4 {
        assert_eq!(pick(&d, &SelectKey::default(), &[]).as_deref(), Some(A));
    }
    resolves.store(true, Ordering::Relaxed);
    assert_eq!(d.resolve_again(), 1);
    assert!(!d.table().has_unresolved());
    let pbx = dest(&d, "sip:pbx.example.test:5099");
    assert!(pbx.is_up());
    assert_eq!(pbx.target.addr, "127.0.0.1:5099".parse().unwrap());
    assert_eq!(dest(&d, A).failures(), 1, "the others keep their state");
    let picked: Vec<_> = (0..4)
        .filter_map(|_| pick(&d, &SelectKey::default(), &[]))
        .collect();
    assert!(
        picked.iter().any(|u| u == "sip:pbx.example.test:5099"),
        "{picked:?}"
    );
}

#[test]
fn panic_routing_tries_down_destinations_in_order_but_never_disabled_ones() {
    let mut cfg = DispatcherConfig {
        dialog_timeout_secs: kubesbc_crds::policy::default_dialog_timeout_secs(),
        default_set: 1,
        sets: vec![set(1, Algorithm::RoundRobin, vec![dc(A), dc(B), dc(C)])],
    };
    cfg.sets[0].destinations[2].flags = flags::DISABLED;
    let d = Dispatcher::new(&cfg).unwrap();
    for u in [A, B] {
        dest(&d, u).set_inactive();
    }
    let key = SelectKey::default();
    // Kamailio order: C (index 0, disabled), B (1), A (2).
    let first = d.select(1, &key, &[]).expect("panic routing");
    assert_eq!(first.dest.uri, B);
    let next = d.select(1, &key, &[first.index]).expect("next in order");
    assert_eq!(next.dest.uri, A);
    assert!(
        d.select(1, &key, &[first.index, next.index]).is_none(),
        "the disabled one is never tried"
    );
    assert_eq!(d.table().set(1).unwrap().panic_selections(), 2);
    // One destination up again: normal selection, no panic.
    dest(&d, A).record_probe(true, &Default::default());
    for _ in 0..3 {
        assert_eq!(pick(&d, &key, &[]).as_deref(), Some(A));
    }
    assert_eq!(d.table().set(1).unwrap().panic_selections(), 2);
}

#[test]
fn snapshot_lists_flags_like_kamcmd() {
    let mut cfg = DispatcherConfig {
        dialog_timeout_secs: kubesbc_crds::policy::default_dialog_timeout_secs(),
        default_set: 1,
        sets: vec![
            set(
                2,
                Algorithm::Weight,
                vec![
                    DestinationConfig {
                        weight: Some(50),
                        duid: Some("b".into()),
                        description: Some("two".into()),
                        ..dc(B)
                    },
                    DestinationConfig {
                        flags: flags::DISABLED,
                        ..dc(A)
                    },
                    DestinationConfig {
                        flags: flags::NOPING,
                        ..dc(C)
                    },
                ],
            ),
            set(1, Algorithm::RoundRobin, vec![dc(D)]),
        ],
    };
    cfg.sets[1].probing.enabled = false;
    let d = Dispatcher::new(&cfg).unwrap();
    let t = d.table();
    let b = t
        .set(2)
        .unwrap()
        .destinations()
        .iter()
        .find(|x| x.uri == B)
        .unwrap();
    b.request_failed();
    b.set_inactive();
    d.select(1, &SelectKey::default(), &[])
        .unwrap()
        .dest
        .call_started();

    let snap = d.snapshot();
    assert_eq!(snap.iter().map(|s| s.id).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(snap[0].destinations[0].flags, "AX", "set 1 does not probe");
    assert_eq!(snap[0].destinations[0].active_calls, 1);
    assert_eq!(
        snap[0].destinations[0]
            .counters
            .as_ref()
            .map(|c| c.requests),
        Some(1)
    );
    let s2: Vec<(&str, &str)> = snap[1]
        .destinations
        .iter()
        .map(|x| (x.uri.as_str(), x.flags.as_str()))
        .collect();
    assert_eq!(s2, vec![(C, "AN"), (A, "DX"), (B, "IP")]);
    let bs = &snap[1].destinations[2];
    assert_eq!(bs.attrs, "duid=b;weight=50");
    assert_eq!(bs.state, kubesbc_crds::listing::DestinationState::Inactive);
    assert_eq!(bs.counters.as_ref().map(|c| c.failures), Some(1));
    assert_eq!(bs.target, "udp:127.0.0.1:5072");
    assert_eq!(snap[1].algorithm, "weight");

    let json = serde_json::to_value(&snap).unwrap();
    assert_eq!(json[1]["algorithm"], "weight");
    assert_eq!(json[1]["destinations"][2]["active_calls"], 0);
    assert_eq!(json[1]["destinations"][2]["description"], "two");
    let back: Vec<kubesbc_crds::listing::SetSnapshot> = serde_json::from_value(json).unwrap();
    assert_eq!(back, snap);
}
