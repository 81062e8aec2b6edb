//! The renderer, driven by the example resources in `examples/`.

use std::collections::{BTreeMap, BTreeSet};

use kubesbc_crds::config::{Algorithm, SbcConfig};
use kubesbc_crds::{AccessList, DispatcherSet, SbcCluster, TenantThrottle};
use kubesbc_operator::render::{self, Inputs, Lookups, RenderError};

fn example<T: serde::de::DeserializeOwned + kube::Resource>(file: &str) -> T {
    let path = format!("{}/../examples/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("example exists");
    let mut obj: T = serde_saphyr::from_str(&text).expect("example parses");
    obj.meta_mut().namespace = Some("voip".into());
    obj.meta_mut().uid = Some(format!("uid-{file}"));
    obj.meta_mut().generation = Some(1);
    obj
}

struct World {
    cluster: SbcCluster,
    sets: Vec<DispatcherSet>,
    throttles: Vec<TenantThrottle>,
    acls: Vec<AccessList>,
    lookups: Lookups,
}

/// The Deployment of a rendering without hostNetwork.
fn deployment(r: &render::Rendered) -> &k8s_openapi::api::apps::v1::Deployment {
    match &r.workload {
        render::Workload::Deployment(d) => d,
        render::Workload::DaemonSet(_) => panic!("a DaemonSet where a Deployment was expected"),
    }
}

impl World {
    fn new() -> World {
        let mut lookups = Lookups::default();
        lookups.secrets.insert(
            ("voip".into(), "company-signature".into()),
            BTreeSet::from(["signature".to_owned()]),
        );
        lookups.services.insert(
            ("voip".into(), "asterisk".into()),
            vec!["sip".into(), "sip-tcp".into()],
        );
        World {
            cluster: example("sbccluster.yaml"),
            sets: vec![
                example("dispatcherset.yaml"),
                example("dispatcherset-static.yaml"),
            ],
            throttles: vec![example("tenantthrottle.yaml")],
            acls: vec![example("accesslist.yaml")],
            lookups,
        }
    }

    fn inputs(&self) -> Inputs<'_> {
        Inputs {
            cluster: &self.cluster,
            dispatcher_sets: &self.sets,
            throttles: &self.throttles,
            access_lists: &self.acls,
            lookups: &self.lookups,
        }
    }
}

/// Why the example world, changed by `edit`, does not render.
fn refusal(edit: impl FnOnce(&mut World)) -> RenderError {
    let mut w = World::new();
    edit(&mut w);
    render::render(w.inputs()).expect_err("the changed world is refused")
}

#[test]
fn examples_render_a_config_the_sbc_accepts() {
    let w = World::new();
    let r = render::render(w.inputs()).expect("renders");
    let yaml = r.config_map.data.as_ref().expect("data")["sbc.yaml"].clone();
    let parsed = SbcConfig::from_yaml(&yaml).expect("the sbc reads what the operator writes");
    assert_eq!(parsed, r.config);

    let sets = &parsed.dispatcher.sets;
    assert_eq!(sets.iter().map(|s| s.id).collect::<Vec<_>>(), [1, 2]);
    let svc = sets[0].service.as_ref().expect("service source");
    assert_eq!(svc.namespace.as_deref(), Some("voip"));
    assert_eq!((svc.name.as_str(), svc.port.as_str()), ("asterisk", "sip"));
    assert!(sets[0].destinations.is_empty());
    assert_eq!(sets[1].algorithm, Algorithm::Weight);
    assert_eq!(sets[1].destinations[0].weight, Some(70));
    assert_eq!(parsed.dispatcher.default_set, 1);
    assert_eq!(
        parsed.dispatcher.dialog_timeout_secs,
        4 * 3600,
        "the default"
    );

    let acl = &parsed.access_lists[0];
    assert_eq!(acl.name, "voip/edge-guard");
    let header = &acl.rules[2].required_headers[0];
    assert_eq!(header.name, "X-Company-Signature");
    assert_eq!(header.value, None);
    assert_eq!(
        header.value_file.as_deref(),
        Some("/etc/kubesbc/secrets/company-signature/signature")
    );
    assert_eq!(acl.flood.as_ref().map(|f| f.requests), Some(50));
    assert_eq!(parsed.throttles[0].tenants["acme"].burst, Some(100));
    assert_eq!(parsed.throttles[0].response.code, 429);
    assert_eq!(parsed.listeners.len(), 3);
    // The ws listener's path reaches the sbc (an upgrade elsewhere gets 404).
    assert_eq!(parsed.listeners[2].path.as_deref(), Some("/ws"));
    assert_eq!(parsed.admin.address.port(), 9090);
}

#[test]
fn the_dialog_timeout_of_the_call_load_reaches_the_sbc_config() {
    let mut w = World::new();
    w.cluster.spec.dialog_timeout_secs = Some(900);
    let r = render::render(w.inputs()).expect("renders");
    let yaml = r.config_map.data.as_ref().expect("data")["sbc.yaml"].clone();
    let parsed = SbcConfig::from_yaml(&yaml).expect("the sbc reads what the operator writes");
    assert_eq!(parsed.dispatcher.dialog_timeout_secs, 900);
}

#[test]
fn a_network_policy_opens_sip_and_keeps_the_admin_port_for_the_operator_and_prometheus() {
    let mut w = World::new();
    let r = render::render(w.inputs()).expect("renders");
    assert!(r.network_policy.is_none(), "off unless installed with it");
    w.lookups.defaults.network_policy = Some(
        serde_json::from_value(serde_json::json!({
            "operatorNamespace": "kubesbc-system",
            "operatorPodLabels": {"app.kubernetes.io/component": "operator"},
            "prometheusNamespaceSelector": {"matchLabels": {"team": "obs"}},
            "prometheusPodSelector": {},
        }))
        .expect("peers"),
    );
    w.cluster.spec.admin_port = Some(9443);
    let r = render::render(w.inputs()).expect("renders");
    let np = serde_json::to_value(r.network_policy.expect("a policy")).expect("json");
    let open = &np["spec"]["ingress"][0]["ports"];
    assert_eq!(
        open,
        &serde_json::json!([
            {"protocol": "UDP", "port": 1, "endPort": 65535},
            {"protocol": "TCP", "port": 1, "endPort": 9442},
            {"protocol": "TCP", "port": 9444, "endPort": 65535},
        ]),
        "everything but the admin port from anywhere"
    );
    let admin = &np["spec"]["ingress"][1];
    assert_eq!(
        admin["ports"],
        serde_json::json!([{"protocol": "TCP", "port": 9443}])
    );
    assert_eq!(
        admin["from"][1]["namespaceSelector"]["matchLabels"]["team"],
        "obs"
    );
    w.cluster.spec.host_network = true;
    w.cluster.spec.replicas = None;
    let r = render::render(w.inputs()).expect("renders");
    assert!(
        r.network_policy.is_none(),
        "policies do not apply to host-network pods"
    );
}

#[test]
fn objects_are_owned_labelled_and_locked_down() {
    let w = World::new();
    let r = render::render(w.inputs()).expect("renders");
    let owner = &deployment(&r)
        .metadata
        .owner_references
        .as_ref()
        .expect("owner")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("SbcCluster", "edge")
    );
    assert_eq!(owner.controller, Some(true));
    assert_eq!(r.config_map.metadata.name.as_deref(), Some("edge-config"));

    let spec = deployment(&r).spec.as_ref().expect("spec");
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.as_ref().expect("pod");
    // Suffixed: a cluster named `default` must not take the namespace's default account.
    assert_eq!(pod.service_account_name.as_deref(), Some("edge-sbc"));
    assert_eq!(pod.termination_grace_period_seconds, Some(35));
    let c = &pod.containers[0];
    let sc = c.security_context.as_ref().expect("securityContext");
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(
        sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
        Some(vec!["ALL".to_owned()])
    );
    let ports: Vec<(String, String)> = c
        .ports
        .iter()
        .flatten()
        .map(|p| {
            (
                p.name.clone().unwrap_or_default(),
                p.protocol.clone().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        [
            ("udp-5060", "UDP"),
            ("tcp-5060", "TCP"),
            ("ws-8080", "TCP"),
            ("admin", "TCP")
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
    // The signature Secret is mounted where the config says the value is.
    let mounts = c.volume_mounts.as_deref().unwrap_or_default();
    assert!(
        mounts
            .iter()
            .any(|m| m.mount_path == "/etc/kubesbc/secrets/company-signature")
    );
    let volumes = pod.volumes.as_deref().unwrap_or_default();
    assert!(
        volumes
            .iter()
            .any(|v| v.secret.as_ref().and_then(|s| s.secret_name.as_deref())
                == Some("company-signature"))
    );
    // The config hash must not be in the pod template, or every config change would roll pods.
    let template = serde_json::to_string(&spec.template).expect("json");
    assert!(!template.contains(&r.config_hash));

    // A mixed UDP/TCP LoadBalancer is one Service: one address for both protocols.
    let names: Vec<_> = r
        .services
        .iter()
        .map(|s| s.metadata.name.clone().unwrap_or_default())
        .collect();
    assert_eq!(names, ["edge"]);
    let sip = r.services[0].spec.as_ref().expect("spec");
    assert_eq!(sip.type_.as_deref(), Some("LoadBalancer"));
    assert_eq!(sip.external_traffic_policy.as_deref(), Some("Local"));
    let protocols: Vec<_> = sip
        .ports
        .iter()
        .flatten()
        .map(|p| p.protocol.clone().unwrap_or_default())
        .collect();
    assert_eq!(protocols, ["UDP", "TCP", "TCP"]);
    assert_eq!(r.admin_service.metadata.name.as_deref(), Some("edge-admin"));
    let rules = r.role.rules.as_ref().expect("rules");
    assert_eq!(
        rules[0].resource_names.as_deref(),
        Some(&["edge-config".to_owned()][..])
    );
    assert_eq!(r.role.metadata.name.as_deref(), Some("edge-sbc"));
    assert_eq!(r.role_binding.role_ref.name, "edge-sbc");
    let pdb = r.pdb.as_ref().and_then(|p| p.spec.as_ref()).expect("a PDB");
    assert!(pdb.max_unavailable.is_some());
    // A pod that is not ready (every backend down) can still be evicted: a drain never
    // waits on a broken pod.
    assert_eq!(
        pdb.unhealthy_pod_eviction_policy.as_deref(),
        Some("AlwaysAllow")
    );
    assert!(r.hpa.is_none());
}

#[test]
fn cluster_ip_lists_udp_and_tcp_ports_in_one_service() {
    let mut w = World::new();
    w.cluster.spec.service.type_ = kubesbc_crds::cluster::ServiceType::ClusterIP;
    let r = render::render(w.inputs()).expect("renders");
    assert_eq!(r.services.len(), 1);
    let ports: Vec<_> = r.services[0]
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default();
    let protos: Vec<_> = ports
        .iter()
        .map(|p| (p.port, p.protocol.clone().unwrap_or_default()))
        .collect();
    assert_eq!(
        protos,
        [
            (5060, "UDP".to_owned()),
            (5060, "TCP".to_owned()),
            (8080, "TCP".to_owned())
        ]
    );
    // ClusterIP Services cannot carry externalTrafficPolicy.
    assert_eq!(
        r.services[0]
            .spec
            .as_ref()
            .and_then(|s| s.external_traffic_policy.clone()),
        None
    );
}

#[test]
fn autoscaling_renders_an_hpa_and_leaves_replicas_to_it() {
    let mut w = World::new();
    w.cluster.spec.replicas = None;
    w.cluster.spec.autoscaling = Some(kubesbc_crds::cluster::Autoscaling {
        min_replicas: 2,
        max_replicas: 8,
        target_cpu_utilization: 60,
    });
    let r = render::render(w.inputs()).expect("renders");
    assert_eq!(deployment(&r).spec.as_ref().and_then(|s| s.replicas), None);
    let hpa = r.hpa.expect("hpa").spec.expect("spec");
    assert_eq!((hpa.min_replicas, hpa.max_replicas), (Some(2), 8));
    let down = hpa
        .behavior
        .and_then(|b| b.scale_down)
        .expect("scale-down behaviour");
    assert_eq!(down.stabilization_window_seconds, Some(600));
}

#[test]
fn rendering_is_stable_whatever_the_list_order() {
    let w = World::new();
    let a = render::render(w.inputs()).expect("renders");
    let mut w2 = World::new();
    w2.sets.reverse();
    let b = render::render(w2.inputs()).expect("renders");
    assert_eq!(a.config_hash, b.config_hash);
    assert_eq!(a.config_map.data, b.config_map.data);
}

#[test]
fn two_sets_with_one_id_are_refused_naming_the_field() {
    let e = refusal(|w| {
        w.sets[1].spec.set_id = 1;
    });
    assert_eq!(e.reason, "DuplicateSetId");
    assert_eq!(e.object, "DispatcherSet voip/carriers");
    assert_eq!(e.field, "spec.setId");
    assert_eq!(
        e.message,
        "set id 1 is also used by DispatcherSet voip/asterisk"
    );
}

#[test]
fn missing_secret_service_and_port_are_refused_naming_the_field() {
    let e = refusal(|w| {
        w.lookups.secrets.clear();
    });
    assert_eq!(
        (e.reason, e.object.as_str()),
        ("SecretNotFound", "AccessList voip/edge-guard")
    );
    assert_eq!(
        e.field,
        "spec.rules[2].requiredHeaders[0].secretKeyRef.name"
    );
    assert_eq!(e.message, "Secret voip/company-signature does not exist");

    let e = refusal(|w| {
        w.lookups.secrets.values_mut().for_each(BTreeSet::clear);
    });
    assert_eq!(e.field, "spec.rules[2].requiredHeaders[0].secretKeyRef.key");

    let e = refusal(|w| {
        w.lookups.services.clear();
    });
    assert_eq!(
        (e.reason, e.field.as_str()),
        ("ServiceNotFound", "spec.destinations.service.name")
    );

    let e = refusal(|w| {
        w.lookups
            .services
            .values_mut()
            .for_each(|p| p.retain(|n| n != "sip"));
    });
    assert_eq!(
        (e.reason, e.field.as_str()),
        ("ServicePortNotFound", "spec.destinations.service.port")
    );
    assert!(e.message.contains("it has: sip-tcp"), "{}", e.message);
}

#[test]
fn a_bad_static_uri_names_the_crd_field() {
    let e = refusal(|w| {
        if let Some(d) = w.sets[1].spec.destinations.static_.as_mut() {
            d[1].uri = "http://carrier".into();
        }
    });
    assert_eq!(e.object, "DispatcherSet voip/carriers");
    assert_eq!(e.field, "spec.destinations.static[1].uri");
}

#[test]
fn selectors_match_labels_and_expressions_and_absent_matches_nothing() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
    let labels = BTreeMap::from([("kubesbc.io/cluster".to_owned(), "edge".to_owned())]);
    assert!(!render::selects(None, &labels));
    assert!(render::selects(Some(&LabelSelector::default()), &labels));
    let by_label = LabelSelector {
        match_labels: Some(BTreeMap::from([(
            "kubesbc.io/cluster".into(),
            "core".into(),
        )])),
        ..Default::default()
    };
    assert!(!render::selects(Some(&by_label), &labels));
    let by_expr = LabelSelector {
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: "kubesbc.io/cluster".into(),
            operator: "In".into(),
            values: Some(vec!["edge".into(), "core".into()]),
        }]),
        ..Default::default()
    };
    assert!(render::selects(Some(&by_expr), &labels));
}

#[test]
fn node_ports_are_kept_for_node_port_services_only() {
    let mut w = World::new();
    w.cluster.spec.service.type_ = kubesbc_crds::cluster::ServiceType::NodePort;
    w.cluster.spec.listeners[0].node_port = Some(30060);
    w.cluster.spec.listeners[1].node_port = Some(30060);
    assert_eq!(node_ports(&w), [Some(30060), Some(30060), None]);

    w.cluster.spec.service.type_ = kubesbc_crds::cluster::ServiceType::ClusterIP;
    assert!(node_ports(&w).iter().all(Option::is_none));
}

/// The node port of each port of the first rendered Service.
fn node_ports(w: &World) -> Vec<Option<i32>> {
    let r = render::render(w.inputs()).expect("renders");
    r.services[0]
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default()
        .iter()
        .map(|p| p.node_port)
        .collect()
}

#[test]
fn host_network_runs_a_daemon_set_one_pod_per_node() {
    let mut w = World::new();
    w.cluster.spec.host_network = true;
    w.cluster.spec.replicas = None;
    let r = render::render(w.inputs()).expect("renders");
    let render::Workload::DaemonSet(ds) = &r.workload else {
        panic!("hostNetwork renders a DaemonSet, got {:?}", r.workload);
    };
    assert_eq!(ds.metadata.name.as_deref(), Some("edge"));
    let spec = ds.spec.as_ref().expect("spec");
    let strategy = spec.update_strategy.as_ref().expect("updateStrategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let rolling = strategy.rolling_update.as_ref().expect("rollingUpdate");
    assert_eq!(
        rolling.max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );
    let pod = spec.template.spec.as_ref().expect("pod");
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
    // No PDB: maxUnavailable needs a scale the DaemonSet does not have, so it would
    // protect nothing, and minAvailable cannot follow the number of nodes.
    assert!(r.pdb.is_none());
    assert!(spec.selector.match_labels.is_some());
    assert!(r.hpa.is_none());
    assert_eq!(r.workload.pod_spec(), Some(pod));
}

/// The container's args, and whether its probes name a host (they must not: the kubelet
/// then probes the pod IP, which is where the admin endpoint listens).
fn args_and_probe_hosts(pod: &k8s_openapi::api::core::v1::PodSpec) -> (Vec<String>, bool) {
    let c = &pod.containers[0];
    let hosts = [&c.readiness_probe, &c.liveness_probe]
        .into_iter()
        .flatten()
        .any(|p| p.http_get.as_ref().is_some_and(|h| h.host.is_some()));
    (c.args.clone().unwrap_or_default(), hosts)
}

#[test]
fn host_network_binds_the_admin_endpoint_to_the_pod_ip_not_every_node_interface() {
    let mut w = World::new();
    w.cluster.spec.host_network = true;
    w.cluster.spec.replicas = None;
    let r = render::render(w.inputs()).expect("renders");
    let pod = r.workload.pod_spec().expect("pod");
    let (args, probe_hosts) = args_and_probe_hosts(pod);
    let at = args
        .iter()
        .position(|a| a == "--admin-ip")
        .expect("--admin-ip");
    assert_eq!(args.get(at + 1).map(String::as_str), Some("$(POD_IP)"));
    // $(POD_IP) expands only from a variable the container defines: status.podIP, which is
    // the node's IP under hostNetwork.
    let env = pod.containers[0].env.clone().unwrap_or_default();
    let pod_ip = env.iter().find(|e| e.name == "POD_IP").expect("POD_IP");
    let field = pod_ip
        .value_from
        .as_ref()
        .and_then(|v| v.field_ref.as_ref())
        .map(|f| f.field_path.as_str());
    assert_eq!(field, Some("status.podIP"));
    assert!(!probe_hosts, "probes must target the pod IP");

    // On the pod network the pod's only interfaces are its own: all of them stay bound, so
    // `kubectl exec ... sbc ctl` reaches 127.0.0.1.
    let w = World::new();
    let r = render::render(w.inputs()).expect("renders");
    let (args, probe_hosts) = args_and_probe_hosts(r.workload.pod_spec().expect("pod"));
    assert!(!args.iter().any(|a| a == "--admin-ip"), "{args:?}");
    assert!(!probe_hosts);
}

#[test]
fn autoscaling_with_host_network_is_refused_naming_the_field() {
    let mut w = World::new();
    w.cluster.spec.host_network = true;
    w.cluster.spec.replicas = None;
    w.cluster.spec.autoscaling = Some(kubesbc_crds::cluster::Autoscaling {
        min_replicas: 2,
        max_replicas: 4,
        target_cpu_utilization: 70,
    });
    let e = render::render(w.inputs()).unwrap_err();
    assert_eq!(
        (e.reason, e.field.as_str()),
        ("InvalidSpec", "spec.autoscaling")
    );
    assert!(e.message.contains("hostNetwork"), "{e}");
}

#[test]
fn rtpengine_is_rendered_into_the_media_section_and_a_bad_address_is_named() {
    let mut w = World::new();
    w.cluster.spec.rtpengine = vec!["rtpengine.media.svc:2223".into(), "10.0.0.9:2223".into()];
    let out = render::render(w.inputs()).unwrap();
    let media = out.config.media.expect("a media section");
    assert_eq!(
        media.rtpengine,
        ["rtpengine.media.svc:2223", "10.0.0.9:2223"]
    );
    assert_eq!(
        media.when_unreachable,
        kubesbc_crds::policy::MediaUnreachable::Reject
    );
    w.cluster.spec.rtpengine = vec!["10.0.0.9:2223".into(), "10.0.0.9:2223".into()];
    let e = render::render(w.inputs()).unwrap_err();
    assert_eq!(
        (e.reason, e.field.as_str()),
        ("InvalidMedia", "spec.rtpengine[1]")
    );
    assert!(e.message.contains("listed twice"), "{e}");
}

#[test]
fn redis_url_stays_in_its_secret_and_the_config_shows_it_without_password() {
    let mut w = World::new();
    w.cluster.spec.redis = Some(kubesbc_crds::cluster::RedisSpec {
        url_secret_ref: kubesbc_crds::SecretKeyRef {
            name: "redis".into(),
            key: "url".into(),
        },
        key_prefix: None,
        timeout_ms: None,
        mode: None,
        sentinel: None,
    });
    let e = render::render(w.inputs()).unwrap_err();
    assert_eq!(
        (e.reason, e.field.as_str()),
        ("SecretNotFound", "spec.redis.urlSecretRef.name")
    );

    w.lookups.secrets.insert(
        ("voip".into(), "redis".into()),
        BTreeSet::from(["url".to_owned()]),
    );
    w.lookups.redis_url = Some("redis://:hunter2@redis.voip.svc:6379/0\n".into());
    let r = render::render(w.inputs()).expect("renders");
    let store = r.config.store.as_ref().expect("store");
    assert_eq!(store.url, "redis://redis.voip.svc:6379/0");
    assert_eq!(
        store.url_file.as_deref(),
        Some("/etc/kubesbc/secrets/redis/url")
    );
    assert_eq!(store.key_prefix.as_deref(), Some("voip/edge:"));
    let yaml = &r.config_map.data.as_ref().expect("data")["sbc.yaml"];
    assert!(!yaml.contains("hunter2"), "{yaml}");

    w.lookups.redis_url = Some("http://redis".into());
    let e = render::render(w.inputs()).unwrap_err();
    assert_eq!(
        (e.reason, e.field.as_str()),
        ("InvalidRedisUrl", "spec.redis.urlSecretRef")
    );
}

#[test]
fn redis_sentinel_and_cluster_modes_are_rendered_and_checked_against_the_url() {
    use kubesbc_crds::store::{SentinelConfig, StoreMode};
    let mut w = World::new();
    w.cluster.spec.redis = Some(kubesbc_crds::cluster::RedisSpec {
        url_secret_ref: kubesbc_crds::SecretKeyRef {
            name: "redis".into(),
            key: "url".into(),
        },
        key_prefix: None,
        timeout_ms: None,
        mode: Some(StoreMode::Sentinel),
        sentinel: Some(SentinelConfig {
            master_name: "mymaster".into(),
            auth_sentinels: false,
        }),
    });
    w.lookups.secrets.insert(
        ("voip".into(), "redis".into()),
        BTreeSet::from(["url".to_owned()]),
    );
    w.lookups.redis_url = Some("redis://:hunter2@s0:26379,s1:26379,s2:26379/0".into());
    let r = render::render(w.inputs()).expect("renders");
    let store = r.config.store.as_ref().expect("store");
    assert_eq!(store.url, "redis://s0:26379,s1:26379,s2:26379/0");
    assert_eq!(store.mode, StoreMode::Sentinel);
    assert_eq!(store.sentinel.as_ref().unwrap().master_name, "mymaster");
    let yaml = &r.config_map.data.as_ref().expect("data")["sbc.yaml"];
    assert!(!yaml.contains("hunter2"), "{yaml}");
    assert!(yaml.contains("mode: sentinel"), "{yaml}");

    let redis = w.cluster.spec.redis.as_mut().unwrap();
    redis.sentinel = None;
    let e = render::render(w.inputs()).unwrap_err();
    assert_eq!(
        (e.reason, e.field.as_str()),
        ("InvalidRedis", "spec.redis.sentinel")
    );

    let redis = w.cluster.spec.redis.as_mut().unwrap();
    redis.mode = Some(StoreMode::Cluster);
    w.lookups.redis_url = Some("redis://:pw@n0:6379,n1:6379/2".into());
    let e = render::render(w.inputs()).unwrap_err();
    assert_eq!(
        (e.reason, e.field.as_str()),
        ("InvalidRedis", "spec.redis.urlSecretRef")
    );
    assert!(e.message.contains("database 2"), "{e}");

    let redis = w.cluster.spec.redis.as_mut().unwrap();
    redis.mode = None;
    w.lookups.redis_url = Some("redis://n0:6379,n1:6379".into());
    let e = render::render(w.inputs()).unwrap_err();
    assert_eq!(
        (e.reason, e.field.as_str()),
        ("InvalidRedis", "spec.redis.urlSecretRef")
    );
    assert!(e.message.contains("2 hosts"), "{e}");
}

#[test]
fn passwords_are_cut_from_redis_urls() {
    assert_eq!(
        render::without_password("redis://:pw@h:6379/0"),
        "redis://h:6379/0"
    );
    assert_eq!(render::without_password("rediss://u:p@w@h"), "rediss://h");
    assert_eq!(render::without_password("redis://h:6379"), "redis://h:6379");
    assert_eq!(render::without_password("garbage"), "");
}

#[test]
fn cluster_names_that_cannot_name_services_are_refused() {
    for bad in ["9lives", &"a".repeat(58)] {
        let e = refusal(|w| {
            w.cluster.metadata.name = Some(bad.to_owned());
        });
        assert_eq!(
            (e.reason, e.field.as_str()),
            ("InvalidName", "metadata.name"),
            "{bad}"
        );
    }
    let mut w = World::new();
    w.cluster.metadata.name = Some("a".repeat(57));
    assert!(render::render(w.inputs()).is_ok());
}

#[test]
fn access_list_and_throttle_settings_reach_the_sbc_config() {
    let mut w = World::new();
    w.acls[0].spec.ban_response_code = Some(503);
    w.throttles[0].spec.missing_tenant = kubesbc_crds::policy::MissingTenant::Reject;
    let r = render::render(w.inputs()).expect("renders");
    let parsed = SbcConfig::from_yaml(&r.config.to_yaml()).expect("the sbc reads it");
    let acl = &parsed.access_lists[0];
    assert_eq!(acl.trusted, ["192.0.2.0/24"]);
    assert!(acl.drop_scanners);
    assert_eq!(acl.ban_response_code, Some(503));
    let tt = &parsed.throttles[0];
    assert_eq!(
        tt.missing_tenant,
        kubesbc_crds::policy::MissingTenant::Reject
    );
    assert_eq!(tt.dialog_timeout_secs, 7200);

    // Left out of the resources, the sbc's own defaults apply.
    let w = World::new();
    let mut plain = w.throttles[0].clone();
    let text = serde_json::to_value(&plain.spec).expect("json");
    let mut spec = text.as_object().expect("object").clone();
    spec.remove("missingTenant");
    spec.remove("dialogTimeoutSecs");
    plain.spec = serde_json::from_value(spec.into()).expect("spec without them");
    let t = render::render_throttle(&plain).expect("renders");
    assert_eq!(
        t.missing_tenant,
        kubesbc_crds::policy::MissingTenant::Default
    );
    assert_eq!(t.dialog_timeout_secs, 4 * 3600);
}

#[test]
fn a_trusted_entry_that_is_not_a_cidr_is_refused_naming_the_field() {
    let mut w = World::new();
    w.acls[0].spec.trusted = vec!["10.0.0.0/8".into(), "carrier.example.com".into()];
    let e = render::render(w.inputs()).unwrap_err();
    assert_eq!(
        (e.reason, e.field.as_str()),
        ("InvalidAccessList", "spec.trusted[1]")
    );
}

fn host_world() -> World {
    let mut w = World::new();
    w.cluster = example("hostnetwork/sbccluster.yaml");
    for (secret, key) in [("sbc-auth", "nonce-key"), ("redis-url", "url")] {
        w.lookups.secrets.insert(
            ("voip".into(), secret.into()),
            BTreeSet::from([key.to_owned()]),
        );
    }
    w.lookups.redis_url = Some("redis://:pw@redis.voip.svc:6379/0".into());
    w
}

#[test]
fn auth_renders_with_its_nonce_key_read_from_a_mounted_secret() {
    let w = host_world();
    let r = render::render(w.inputs()).expect("renders");
    let yaml = &r.config_map.data.as_ref().expect("data")["sbc.yaml"];
    let parsed = SbcConfig::from_yaml(yaml).expect("the sbc reads what the operator writes");
    let auth = parsed.auth.as_ref().expect("auth section");
    assert_eq!(auth.realm.as_deref(), Some("sip.example.com"));
    assert_eq!(auth.nonce_secret, "", "the key never sits in the ConfigMap");
    assert!(!yaml.contains("nonceSecret:"), "{yaml}");
    assert_eq!(
        auth.nonce_secret_file.as_deref(),
        Some("/etc/kubesbc/secrets/sbc-auth/nonce-key")
    );
    assert_eq!(auth.trusted_sources, ["10.0.0.0/8"]);
    assert_eq!(auth.failure_block.as_ref().map(|b| b.max_failures), Some(5));
    assert_eq!(
        auth.methods.get("INVITE"),
        Some(&kubesbc_crds::policy::Challenge::Proxy)
    );
    assert_eq!(parsed.store.as_ref().map(|s| s.timeout_ms), Some(200));

    // The pods mount the Secret where the config says the key is.
    let pod = r.workload.pod_spec().expect("pod");
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) == Some("sbc-auth"))
        .expect("sbc-auth volume");
    let mount = pod.containers[0]
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == volume.name)
        .expect("mounted");
    assert_eq!(mount.mount_path, "/etc/kubesbc/secrets/sbc-auth");

    // A missing Secret or key is refused naming the field.
    let mut w = host_world();
    w.lookups
        .secrets
        .remove(&("voip".into(), "sbc-auth".into()));
    let e = render::render(w.inputs()).unwrap_err();
    assert_eq!(
        (e.reason, e.field.as_str()),
        ("SecretNotFound", "spec.auth.nonceSecretRef.name")
    );
    let mut w = host_world();
    w.lookups.secrets.insert(
        ("voip".into(), "sbc-auth".into()),
        BTreeSet::from(["other".to_owned()]),
    );
    let e = render::render(w.inputs()).unwrap_err();
    assert_eq!(
        (e.reason, e.field.as_str()),
        ("SecretKeyNotFound", "spec.auth.nonceSecretRef.key")
    );
}

#[test]
fn the_sbc_reads_the_nonce_key_from_the_file_the_config_names() {
    let w = host_world();
    let mut config = render::render_config(w.inputs()).expect("renders");
    let dir = std::env::temp_dir().join(format!("kubesbc-render-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("nonce-key");
    std::fs::write(&file, "0123456789abcdef0123456789abcdef\n").expect("write key");
    let auth = config.auth.as_mut().expect("auth");
    auth.nonce_secret_file = Some(file.display().to_string());
    let mut short = config.clone();
    config.read_secret_files().expect("key read");
    assert_eq!(
        config.auth.as_ref().map(|a| a.nonce_secret.as_str()),
        Some("0123456789abcdef0123456789abcdef")
    );

    std::fs::write(&file, "too-short\n").expect("write key");
    let e = short.read_secret_files().unwrap_err().to_string();
    assert!(e.starts_with("auth.nonceSecretFile: "), "{e}");
    assert!(e.ends_with("the key must be at least 16 characters"), "{e}");
    std::fs::remove_dir_all(&dir).expect("clean up");
    let e = short.read_secret_files().unwrap_err().to_string();
    assert!(e.starts_with("auth.nonceSecretFile: "), "{e}");
}

#[test]
fn replica_counts_come_from_the_deployment_or_the_daemon_set() {
    use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
    let dep: Deployment = serde_json::from_value(serde_json::json!({
        "spec": {"replicas": 3, "selector": {}, "template": {}},
        "status": {"replicas": 3, "readyReplicas": 2},
    }))
    .expect("deployment");
    let c = render::deployment_counts(&dep);
    assert_eq!((c.desired, c.current, c.ready), (3, 3, 2));
    assert!(!c.all_ready());

    let ds: DaemonSet = serde_json::from_value(serde_json::json!({
        "spec": {"selector": {}, "template": {}},
        "status": {"desiredNumberScheduled": 4, "currentNumberScheduled": 4, "numberReady": 4,
                   "updatedNumberScheduled": 4, "numberMisscheduled": 0},
    }))
    .expect("daemonset");
    let c = render::Workload::DaemonSet(Box::new(ds)).counts();
    assert_eq!((c.desired, c.current, c.ready), (4, 4, 4));
    assert!(c.all_ready());

    // Mid-rollout (one node still runs the old template) it is not ready, all pods ready or
    // not; nor before its controller saw the current spec.
    let rolling: DaemonSet = serde_json::from_value(serde_json::json!({
        "spec": {"selector": {}, "template": {}},
        "status": {"desiredNumberScheduled": 4, "currentNumberScheduled": 4, "numberReady": 4,
                   "updatedNumberScheduled": 3, "numberMisscheduled": 0},
    }))
    .expect("daemonset");
    assert!(!render::daemon_set_counts(&rolling).all_ready());
    let unseen: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"generation": 5},
        "spec": {"replicas": 2, "selector": {}, "template": {}},
        "status": {"replicas": 2, "readyReplicas": 2, "updatedReplicas": 2, "observedGeneration": 4},
    }))
    .expect("deployment");
    assert!(!render::deployment_counts(&unseen).all_ready());

    // A DaemonSet with no node to run on is not ready.
    let none: DaemonSet = serde_json::from_value(serde_json::json!({
        "spec": {"selector": {}, "template": {}}}))
    .expect("daemonset");
    assert!(!render::daemon_set_counts(&none).all_ready());
}

/// The pod template's `kubesbc.io/startup-secrets` annotation.
fn startup_secrets(r: &render::Rendered) -> Option<String> {
    let meta = match &r.workload {
        render::Workload::Deployment(d) => d.spec.as_ref()?.template.metadata.clone(),
        render::Workload::DaemonSet(d) => d.spec.as_ref()?.template.metadata.clone(),
    };
    meta?.annotations?.get(render::STARTUP_SECRETS).cloned()
}

#[test]
fn rotating_any_mounted_secret_rolls_the_pods() {
    let mut w = host_world();
    for s in ["sbc-auth", "redis-url", "company-signature"] {
        w.lookups
            .secret_hashes
            .insert(("voip".into(), s.into()), format!("{s}-v1"));
    }
    let first = startup_secrets(&render::render(w.inputs()).expect("renders"))
        .expect("the pods mount Secrets");
    // The same data renders the same template: no rollout.
    assert_eq!(
        startup_secrets(&render::render(w.inputs()).expect("renders")).as_deref(),
        Some(first.as_str())
    );
    // Each rotated Secret rolls the pods: the sbc reads a required header's value when it
    // loads a configuration, and the kubelet refreshes the mounted file only about once a
    // minute, so only a new pod is sure to use the new value.
    for s in ["sbc-auth", "redis-url", "company-signature"] {
        let mut rotated = host_world();
        rotated.lookups.secret_hashes = w.lookups.secret_hashes.clone();
        rotated
            .lookups
            .secret_hashes
            .insert(("voip".into(), s.into()), format!("{s}-v2"));
        let after = startup_secrets(&render::render(rotated.inputs()).expect("renders"));
        assert!(
            after.is_some() && after.as_deref() != Some(first.as_str()),
            "{s} rotated: {after:?} vs {first}"
        );
    }
    // A cluster mounting none has no annotation (its template never changes for Secrets).
    let mut plain = World::new();
    plain.acls.clear();
    assert_eq!(
        startup_secrets(&render::render(plain.inputs()).expect("renders")),
        None
    );
}

#[test]
fn secret_data_hash_follows_the_data_only() {
    let a = std::collections::BTreeMap::from([("k".to_owned(), b"v1".to_vec())]);
    let b = std::collections::BTreeMap::from([("k".to_owned(), b"v2".to_vec())]);
    let hash = |m: &std::collections::BTreeMap<String, Vec<u8>>| {
        render::secret_data_hash(m.iter().map(|(k, v)| (k, v.as_slice())))
    };
    assert_eq!(hash(&a), hash(&a.clone()));
    assert_ne!(hash(&a), hash(&b));
    // Keys and values do not run into each other.
    let c = std::collections::BTreeMap::from([("kv".to_owned(), b"1".to_vec())]);
    assert_ne!(hash(&a), hash(&c));
}

#[test]
fn observability_is_rendered_as_is_and_a_bad_collector_is_refused_naming_the_field() {
    let mut w = World::new();
    let obs: kubesbc_crds::observe::ObservabilityConfig = serde_saphyr::from_str(
        "hep:\n  collectors: [\"udp:10.0.0.5:9060\"]\n  captureId: 9\nrecords:\n  redis: {}\n",
    )
    .expect("observability parses");
    w.cluster.spec.observability = Some(obs.clone());
    let r = render::render(w.inputs()).expect("renders");
    let yaml = r.config_map.data.as_ref().expect("data")["sbc.yaml"].clone();
    let parsed = SbcConfig::from_yaml(&yaml).expect("the sbc reads what the operator writes");
    assert_eq!(parsed.observability, Some(obs));
    assert!(yaml.contains("captureId: 9"), "{yaml}");

    let e = refusal(|w| {
        w.cluster.spec.observability =
            serde_saphyr::from_str("hep:\n  collectors: [\"sctp:10.0.0.5:9060\"]\n").ok();
    });
    assert_eq!(e.field, "sbc.yaml observability.hep.collectors[0]");
}

#[test]
fn relay_inside_gets_the_sbc_service_address_and_its_networks() {
    let mut w = World::new();
    let mut relay = kubesbc_crds::config::RelayConfig {
        inside: Some(kubesbc_crds::config::InsideConfig {
            address: None,
            networks: vec!["10.0.0.0/8".into()],
        }),
        ..Default::default()
    };
    w.cluster.spec.relay = Some(relay.clone());
    // The example's listeners use 5060 and 8080: each keeps its own port.
    let out = render::render(w.inputs()).unwrap();
    let inside = out.config.relay.inside.expect("an inside");
    assert_eq!(
        inside.address.as_deref(),
        Some("edge.voip.svc.cluster.local")
    );
    assert_eq!(inside.networks, ["10.0.0.0/8"]);
    w.cluster.spec.listeners.retain(|l| l.port == 5060);
    let out = render::render(w.inputs()).unwrap();
    let inside = out.config.relay.inside.expect("an inside");
    assert_eq!(
        inside.address.as_deref(),
        Some("edge.voip.svc.cluster.local:5060")
    );
    relay.inside = Some(kubesbc_crds::config::InsideConfig {
        address: None,
        networks: vec!["10.0.0.0/33".into()],
    });
    w.cluster.spec.relay = Some(relay);
    let e = render::render(w.inputs()).unwrap_err();
    assert_eq!(
        (e.reason, e.field.as_str()),
        ("InvalidConfig", "spec.relay.inside.networks[0]")
    );
}

#[test]
fn topology_hiding_takes_its_keys_from_a_secret_every_pod_mounts() {
    let mut w = World::new();
    w.lookups.secrets.insert(
        ("voip".into(), "topology-keys".into()),
        BTreeSet::from(["keys".to_owned()]),
    );
    let relay: kubesbc_crds::config::RelayConfig = serde_saphyr::from_str(
        "inside: {networks: [\"10.0.0.0/8\"]}\ntopology: {hide: true, callIdPrefix: \"CF-\"}\n",
    )
    .expect("relay parses");
    w.cluster.spec.relay = Some(relay);
    w.cluster.spec.topology_key_secret_ref = Some(kubesbc_crds::status::SecretKeyRef {
        name: "topology-keys".into(),
        key: "keys".into(),
    });
    let out = render::render(w.inputs()).expect("renders");
    let t = out.config.relay.topology.clone().expect("topology");
    let file = t.key_file.expect("a key file");
    assert!(file.ends_with("/keys"), "{file}");
    let mounts = serde_json::to_string(&deployment(&out).spec).expect("json");
    let dir = file.trim_end_matches("/keys");
    assert!(
        mounts.contains(&format!("\"mountPath\":\"{dir}\"")),
        "the pods mount {dir}"
    );
    assert!(
        mounts.contains("\"secretName\":\"topology-keys\""),
        "the Secret is a volume"
    );

    // Hiding without the Secret: each pod would sign with a key of its own.
    let mut no_secret = w.cluster.clone();
    no_secret.spec.topology_key_secret_ref = None;
    let e = render_cluster(&w, no_secret);
    assert_eq!(
        (e.reason, e.field.as_str()),
        ("InvalidTopology", "spec.topologyKeySecretRef")
    );
    assert!(
        e.message.contains("required with spec.relay.topology.hide"),
        "{}",
        e.message
    );
    // keyFile names a file no pod has.
    let mut key_file = w.cluster.clone();
    if let Some(t) = key_file
        .spec
        .relay
        .as_mut()
        .and_then(|r| r.topology.as_mut())
    {
        t.key_file = Some("/etc/keys".into());
    }
    let e = render_cluster(&w, key_file);
    assert_eq!(
        (e.reason, e.field.as_str()),
        ("InvalidTopology", "spec.relay.topology.keyFile")
    );
    // The Secret with nothing to sign.
    let mut unused = w.cluster.clone();
    if let Some(r) = unused.spec.relay.as_mut() {
        r.topology = None;
    }
    let e = render_cluster(&w, unused);
    assert_eq!(
        (e.reason, e.field.as_str()),
        ("InvalidTopology", "spec.topologyKeySecretRef")
    );
    // A Secret that is not there.
    let mut missing = w.cluster.clone();
    missing.spec.topology_key_secret_ref = Some(kubesbc_crds::status::SecretKeyRef {
        name: "nope".into(),
        key: "keys".into(),
    });
    let e = render_cluster(&w, missing);
    assert_eq!(
        (e.reason, e.field.as_str()),
        ("SecretNotFound", "spec.topologyKeySecretRef.name")
    );
}

/// Why `cluster`, in the world `w` otherwise, does not render.
fn render_cluster(w: &World, cluster: SbcCluster) -> RenderError {
    let inputs = Inputs {
        cluster: &cluster,
        ..w.inputs()
    };
    render::render(inputs).expect_err("refused")
}

#[test]
fn placement_fields_reach_the_pods_and_defaults_fill_what_the_spec_leaves_out() {
    // The example sets no placement and no resources: the defaults.
    let w = World::new();
    let r = render::render(w.inputs()).expect("renders");
    let pod = serde_json::to_value(&deployment(&r).spec).expect("json")["template"]["spec"].clone();
    assert_eq!(
        pod["topologySpreadConstraints"][0]["topologyKey"], "kubernetes.io/hostname",
        "pods spread across nodes by default: {pod}"
    );
    assert_eq!(pod["topologySpreadConstraints"][0]["maxSkew"], 1);
    let sbc = &pod["containers"][0];
    assert_eq!(sbc["resources"]["requests"]["cpu"], "100m", "{sbc}");
    assert_eq!(sbc["resources"]["limits"]["memory"], "512Mi", "{sbc}");
    for absent in [
        "nodeSelector",
        "tolerations",
        "affinity",
        "priorityClassName",
    ] {
        assert!(
            pod.get(absent).is_none(),
            "{absent} without a spec field: {pod}"
        );
    }

    // Every field set: each reaches the pod template as written.
    let mut w = World::new();
    w.cluster.spec.placement = serde_saphyr::from_str(
        r#"
nodeSelector: {voice: "edge"}
tolerations: [{key: voice, operator: Exists, effect: NoSchedule}]
affinity:
  nodeAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      nodeSelectorTerms: [{matchExpressions: [{key: zone, operator: In, values: [a]}]}]
topologySpreadConstraints:
  - {maxSkew: 2, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: DoNotSchedule}
priorityClassName: voice-critical
podLabels: {team: voice, app.kubernetes.io/name: not-kubesbc}
podAnnotations: {example.com/owner: voice}
imagePullSecrets: [{name: regcred}]
"#,
    )
    .expect("placement parses");
    let r = render::render(w.inputs()).expect("renders");
    let spec = serde_json::to_value(&deployment(&r).spec).expect("json");
    let (meta, pod) = (&spec["template"]["metadata"], &spec["template"]["spec"]);
    assert_eq!(pod["nodeSelector"]["voice"], "edge", "{pod}");
    assert_eq!(pod["tolerations"][0]["key"], "voice");
    assert_eq!(
        pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
            [0]["matchExpressions"][0]["key"],
        "zone"
    );
    assert_eq!(
        pod["topologySpreadConstraints"],
        serde_json::json!([{"maxSkew": 2, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule"}]),
        "the spec's spread replaces the default"
    );
    assert_eq!(pod["priorityClassName"], "voice-critical");
    assert_eq!(
        pod["imagePullSecrets"],
        serde_json::json!([{"name": "regcred"}])
    );
    assert_eq!(meta["labels"]["team"], "voice");
    assert_eq!(
        meta["labels"]["app.kubernetes.io/name"], "kubesbc",
        "the operator's labels win: the Service selects the pods by them"
    );
    assert_eq!(meta["annotations"]["example.com/owner"], "voice");
}
