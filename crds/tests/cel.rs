//! The CRDs' `x-kubernetes-validations` (CEL) rules, evaluated locally with kube-cel the way
//! the API server evaluates them on `kubectl apply`.

use serde_json::{Value, json};

fn schema(kind: &str) -> Value {
    let crd = kubesbc_crds::all_crds()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .expect("kind exists");
    let v = serde_json::to_value(crd).expect("json");
    v["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

fn example(file: &str) -> Value {
    let path = format!("{}/../examples/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(path).expect("example exists");
    serde_saphyr::from_str(&text).expect("example parses")
}

/// The messages of the rules `obj` breaks.
fn broken(kind: &str, obj: &Value) -> Vec<String> {
    match kube_cel::validate(&schema(kind), obj, None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.into_vec().into_iter().map(|e| e.message).collect(),
    }
}

#[test]
fn every_rule_compiles_within_the_cost_budget() {
    for kind in [
        "SbcCluster",
        "DispatcherSet",
        "TenantThrottle",
        "AccessList",
    ] {
        let compiled = kube_cel::compile_schema(&schema(kind));
        // Compilation errors, and rules whose estimated cost (or unbounded lists) would make
        // the API server refuse the CRD.
        fn errors(c: &kube_cel::CompiledSchema, out: &mut Vec<String>) {
            out.extend(c.compilation_errors().iter().map(|e| e.to_string()));
            for rule in c.validations.iter().flatten() {
                out.extend(
                    kube_cel::estimate_rule_cost(&rule.rule.rule, c)
                        .into_iter()
                        .map(|w| format!("{}: {}", w.rule, w.message)),
                );
            }
            c.properties.values().for_each(|p| errors(p, out));
            if let Some(i) = &c.items {
                errors(i, out);
            }
            if let Some(a) = &c.additional_properties {
                errors(a, out);
            }
        }
        let mut out = Vec::new();
        errors(&compiled, &mut out);
        assert!(out.is_empty(), "{kind}: {out:?}");
    }
}

#[test]
fn the_examples_pass_every_rule() {
    for (kind, file) in [
        ("SbcCluster", "sbccluster.yaml"),
        ("DispatcherSet", "dispatcherset.yaml"),
        ("DispatcherSet", "dispatcherset-static.yaml"),
        ("TenantThrottle", "tenantthrottle.yaml"),
        ("AccessList", "accesslist.yaml"),
    ] {
        assert_eq!(broken(kind, &example(file)), Vec::<String>::new(), "{file}");
    }
}

#[test]
fn sbc_cluster_cross_field_rules() {
    let base = example("sbccluster.yaml");

    let mut both = base.clone();
    both["spec"]["autoscaling"] = json!({"minReplicas": 2, "maxReplicas": 4});
    both["spec"]["resources"] = json!({"requests": {"cpu": "100m"}});
    assert_eq!(
        broken("SbcCluster", &both),
        ["set spec.replicas or spec.autoscaling, not both"]
    );

    let mut inverted = base.clone();
    inverted["spec"]
        .as_object_mut()
        .expect("spec")
        .remove("replicas");
    inverted["spec"]["autoscaling"] = json!({"minReplicas": 5, "maxReplicas": 2});
    inverted["spec"]["resources"] = json!({"requests": {"cpu": "100m"}});
    assert_eq!(
        broken("SbcCluster", &inverted),
        ["autoscaling.minReplicas must not exceed autoscaling.maxReplicas"]
    );

    // An HPA on CPU utilisation needs CPU requests to measure against.
    let mut unmeasured = inverted.clone();
    unmeasured["spec"]["autoscaling"] = json!({"minReplicas": 2, "maxReplicas": 4});
    for resources in [
        json!(null),
        json!({"limits": {"cpu": "1"}}),
        json!({"requests": {"memory": "1Gi"}}),
    ] {
        if resources.is_null() {
            unmeasured["spec"]
                .as_object_mut()
                .expect("spec")
                .remove("resources");
        } else {
            unmeasured["spec"]["resources"] = resources;
        }
        assert_eq!(
            broken("SbcCluster", &unmeasured),
            [
                "spec.autoscaling needs spec.resources.requests.cpu: the HPA scales on CPU utilisation of the requests"
            ]
        );
    }
    unmeasured["spec"]["resources"] = json!({"requests": {"cpu": "250m"}});
    assert!(broken("SbcCluster", &unmeasured).is_empty());

    let mut tls = base.clone();
    tls["spec"]["listeners"] = json!([{"transport": "tls", "port": 5061}]);
    assert_eq!(
        broken("SbcCluster", &tls),
        ["tls and wss listeners need spec.tls"]
    );
    tls["spec"]["tls"] = json!({"secretName": "sbc-cert"});
    assert!(broken("SbcCluster", &tls).is_empty());

    // path and allowedOrigins belong to WebSocket listeners.
    let mut ws = base.clone();
    ws["spec"]["listeners"] = json!([
        {"transport": "ws", "port": 8080, "path": "/ws", "allowedOrigins": ["https://app.example.com"]}
    ]);
    assert!(broken("SbcCluster", &ws).is_empty());
    ws["spec"]["listeners"] = json!([
        {"transport": "udp", "port": 5060, "path": "/ws", "allowedOrigins": ["https://app.example.com"]}
    ]);
    assert_eq!(
        broken("SbcCluster", &ws),
        [
            "only ws and wss listeners take a path",
            "only ws and wss listeners take allowedOrigins"
        ]
    );

    let mut twice = base;
    twice["spec"]["listeners"] =
        json!([{"transport": "udp", "port": 5060}, {"transport": "udp", "port": 5060}]);
    assert_eq!(
        broken("SbcCluster", &twice),
        ["spec.listeners: a transport and port pair is listed twice"]
    );
}

#[test]
fn dispatcher_set_needs_exactly_one_destination_source() {
    let mut both = example("dispatcherset.yaml");
    both["spec"]["destinations"]["static"] = json!([{"uri": "sip:10.0.0.1"}]);
    let msg = ["set exactly one of destinations.service and destinations.static"];
    assert_eq!(broken("DispatcherSet", &both), msg);
    let mut neither = example("dispatcherset.yaml");
    neither["spec"]["destinations"] = json!({});
    assert_eq!(broken("DispatcherSet", &neither), msg);
}

#[test]
fn throttle_burst_needs_a_rate_at_least_as_large() {
    let mut t = example("tenantthrottle.yaml");
    t["spec"]["default"] = json!({"burst": 10});
    assert_eq!(
        broken("TenantThrottle", &t),
        ["burst needs requestsPerSecond and must be at least requestsPerSecond"]
    );
    t["spec"]["default"] = json!({"requestsPerSecond": 20, "burst": 10});
    assert_eq!(broken("TenantThrottle", &t).len(), 1);
}

#[test]
fn response_code_only_on_deny_rules() {
    let mut a = example("accesslist.yaml");
    a["spec"]["rules"][1]["responseCode"] = json!(403);
    assert_eq!(
        broken("AccessList", &a),
        ["responseCode only applies to deny rules"]
    );
}

#[test]
fn the_host_network_example_passes_every_rule() {
    assert_eq!(
        broken("SbcCluster", &example("hostnetwork/sbccluster.yaml")),
        Vec::<String>::new()
    );
}

#[test]
fn host_network_excludes_replicas_and_autoscaling() {
    let host = example("hostnetwork/sbccluster.yaml");
    let mut scaled = host.clone();
    scaled["spec"]["autoscaling"] = json!({"minReplicas": 2, "maxReplicas": 4});
    scaled["spec"]["resources"] = json!({"requests": {"cpu": "100m"}});
    assert_eq!(
        broken("SbcCluster", &scaled),
        [
            "spec.autoscaling cannot be used with spec.hostNetwork: host-network pods run as a DaemonSet, one per node"
        ]
    );
    let mut counted = host.clone();
    counted["spec"]["replicas"] = json!(3);
    assert_eq!(
        broken("SbcCluster", &counted),
        [
            "spec.replicas cannot be used with spec.hostNetwork: host-network pods run as a DaemonSet, one per node"
        ]
    );
    // Without hostNetwork both are fine again (one at a time).
    counted["spec"]["hostNetwork"] = json!(false);
    assert!(broken("SbcCluster", &counted).is_empty());
}

#[test]
fn auth_methods_must_be_sip_methods() {
    let mut host = example("hostnetwork/sbccluster.yaml");
    host["spec"]["auth"]["methods"] = json!({"invite": "proxy"});
    assert_eq!(
        broken("SbcCluster", &host),
        ["spec.auth.methods: keys must be upper-case SIP methods such as INVITE"]
    );
}

#[test]
fn ban_response_code_needs_a_flood_limit() {
    let mut a = example("accesslist.yaml");
    a["spec"]["banResponseCode"] = json!(503);
    assert!(broken("AccessList", &a).is_empty());
    let spec = a["spec"].as_object_mut().expect("spec");
    spec.remove("flood");
    spec.remove("registerFlood");
    assert_eq!(
        broken("AccessList", &a),
        ["banResponseCode needs flood or registerFlood: nothing bans a source otherwise"]
    );
}
