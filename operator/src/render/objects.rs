//! The Kubernetes objects that run a cluster: workload, Services, RBAC, PDB, HPA.

use super::*;

/// Renders the configuration and every object the cluster owns.
pub fn render(inputs: Inputs<'_>) -> Result<Rendered, RenderError> {
    let cluster = inputs.cluster;
    if cluster.spec.host_network && cluster.spec.autoscaling.is_some() {
        // The CRD's CEL rule refuses this; an object stored before that rule is refused here.
        return Err(err(
            cluster,
            "InvalidSpec",
            "spec.autoscaling",
            "cannot be used with spec.hostNetwork: host-network pods run as a DaemonSet, one per node",
        ));
    }
    let config = render_config(inputs)?;
    let yaml = config.to_yaml();
    let config_hash = fnv1a(yaml.as_bytes());
    let owner = cluster.controller_owner_ref(&()).ok_or_else(|| {
        err(
            cluster,
            "RenderFailed",
            "metadata.uid",
            "the SbcCluster has no uid yet",
        )
    })?;
    let objects = Objects {
        cluster,
        owner,
        labels: labels(cluster),
        ns: cluster.namespace().unwrap_or_default(),
        name: cluster.name_any(),
    };
    Ok(Rendered {
        config_map: objects.config_map(&yaml, &config_hash)?,
        workload: objects.workload(
            &config,
            &mounted_secrets(cluster, inputs.access_lists),
            &startup_secrets_hash(
                cluster,
                &mounted_secrets(cluster, inputs.access_lists),
                inputs.lookups,
            ),
            &inputs.lookups.defaults,
        )?,
        services: objects.services()?,
        admin_service: objects.admin_service(&config)?,
        service_account: objects.typed(json!({}), "ServiceAccount", &pod_identity(cluster))?,
        role: objects.role()?,
        role_binding: objects.role_binding()?,
        pdb: if cluster.spec.host_network {
            None
        } else {
            Some(objects.pdb()?)
        },
        hpa: objects.hpa()?,
        network_policy: match &inputs.lookups.defaults.network_policy {
            Some(peers) if !cluster.spec.host_network => {
                Some(objects.network_policy(peers, config.admin.address.port())?)
            }
            _ => None,
        },
        config,
        config_hash,
    })
}

struct Objects<'a> {
    cluster: &'a SbcCluster,
    owner: OwnerReference,
    labels: BTreeMap<String, String>,
    ns: String,
    name: String,
}

impl Objects<'_> {
    fn meta(&self, name: &str) -> serde_json::Value {
        json!({
            "name": name,
            "namespace": self.ns,
            "labels": self.labels,
            "ownerReferences": [self.owner],
        })
    }

    /// Builds a typed object from JSON so that a typo fails the tests instead of the API call.
    fn typed<T: serde::de::DeserializeOwned + Resource<DynamicType = ()>>(
        &self,
        mut body: serde_json::Value,
        what: &str,
        name: &str,
    ) -> Result<T, RenderError> {
        if let Some(map) = body.as_object_mut() {
            map.insert("apiVersion".into(), T::api_version(&()).into());
            map.insert("kind".into(), T::kind(&()).into());
            map.insert("metadata".into(), self.meta(name));
        }
        serde_json::from_value(body).map_err(|e| internal(self.cluster, what, e))
    }

    fn config_map(&self, yaml: &str, hash: &str) -> Result<ConfigMap, RenderError> {
        let mut cm: ConfigMap = self.typed(
            json!({"data": {CONFIG_KEY: yaml}}),
            "ConfigMap",
            &config_map_name(self.cluster),
        )?;
        cm.metadata.annotations = Some(BTreeMap::from([(
            "kubesbc.io/config-hash".to_owned(),
            hash.to_owned(),
        )]));
        Ok(cm)
    }

    fn workload(
        &self,
        config: &SbcConfig,
        secrets: &BTreeSet<String>,
        startup_secrets: &str,
        defaults: &PodDefaults,
    ) -> Result<Workload, RenderError> {
        let spec = &self.cluster.spec;
        let template_meta = self.template_meta(startup_secrets);
        let admin_port = i32::from(config.admin.address.port());
        let mut ports: Vec<serde_json::Value> = spec
            .listeners
            .iter()
            .map(|l| {
                json!({
                    "name": port_name(l.transport, l.port),
                    "containerPort": l.port,
                    "protocol": protocol(l.transport),
                })
            })
            .collect();
        ports.push(json!({"name": "admin", "containerPort": admin_port, "protocol": "TCP"}));
        let low_port = spec.listeners.iter().any(|l| l.port < 1024) || admin_port < 1024;
        let mut caps = json!({"drop": ["ALL"]});
        if low_port {
            caps["add"] = json!(["NET_BIND_SERVICE"]);
        }
        let mut mounts = vec![json!({"name": "config", "mountPath": CONFIG_DIR, "readOnly": true})];
        let mut volumes = vec![json!({
            "name": "config",
            "configMap": {"name": config_map_name(self.cluster)},
        })];
        for (i, name) in secrets.iter().enumerate() {
            // Volume names must be DNS labels; Secret names may be longer, so number them.
            let volume = format!("secret-{i}");
            mounts.push(json!({"name": volume, "mountPath": secret_dir(name), "readOnly": true}));
            volumes.push(
                json!({"name": volume, "secret": {"secretName": name, "defaultMode": 0o440}}),
            );
        }
        if let Some(tls) = &spec.tls {
            mounts.push(json!({"name": "tls", "mountPath": TLS_DIR, "readOnly": true}));
            volumes.push(json!({"name": "tls", "secret": {"secretName": tls.secret_name}}));
        }
        let mut container = json!({
            "name": "sbc",
            "image": spec.image.clone().or_else(|| defaults.image.clone()).unwrap_or_else(|| kubesbc_crds::cluster::DEFAULT_IMAGE.to_owned()),
            // The sbc watches its ConfigMap through the API, so a change takes effect within a
            // second; the kubelet refreshes a mounted one only about once a minute.
            "args": ["--configmap", format!("$(POD_NAMESPACE)/{}", config_map_name(self.cluster))],
            "env": [
                {"name": "KUBESBC_CONFIGMAP", "value": config_map_name(self.cluster)},
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            ],
            "ports": ports,
            "readinessProbe": {"httpGet": {"path": "/readyz", "port": "admin"}, "periodSeconds": 2},
            "livenessProbe": {"httpGet": {"path": "/healthz", "port": "admin"}, "periodSeconds": 10, "failureThreshold": 3},
            "volumeMounts": mounts,
            "securityContext": {
                "runAsNonRoot": true,
                "readOnlyRootFilesystem": true,
                "allowPrivilegeEscalation": false,
                "capabilities": caps,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
        });
        if let Some(policy) = spec
            .image_pull_policy
            .map(|p| p.as_str().to_owned())
            .or_else(|| defaults.pull_policy.clone())
        {
            container["imagePullPolicy"] = json!(policy);
        }
        container["resources"] = match &spec.resources {
            Some(res) => serde_json::to_value(res)
                .map_err(|e| internal(self.cluster, "spec.resources", e))?,
            None => default_resources(),
        };
        // Calls can last hours: the pod gets the drain grace period plus time to exit.
        let grace = config.drain.grace_period_secs.saturating_add(5);
        let mut pod = json!({
            "serviceAccountName": pod_identity(self.cluster),
            "terminationGracePeriodSeconds": grace,
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532},
            "containers": [container],
            "volumes": volumes,
        });
        self.place(&mut pod, defaults)?;
        if spec.host_network {
            pod["hostNetwork"] = json!(true);
            // The pod's network is the node's: the admin endpoint (with its write endpoints)
            // binds the pod IP, which is the node's IP the kubelet probes, instead of every
            // interface of the node. Kubernetes expands $(POD_IP) from the env above.
            if let Some(args) = pod["containers"][0]["args"].as_array_mut() {
                args.push(json!("--admin-ip"));
                args.push(json!("$(POD_IP)"));
            }
            // Without it a host-network pod resolves with the node's resolv.conf and cannot
            // reach the API server or Redis by their Service names.
            pod["dnsPolicy"] = json!("ClusterFirstWithHostNet");
            // One pod per node; a surge pod could not bind the SIP ports its predecessor
            // holds on the node's network, so a rollout replaces them one node at a time.
            let body = json!({
                "spec": {
                    "selector": {"matchLabels": pod_selector(self.cluster)},
                    "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}},
                    "template": {"metadata": template_meta, "spec": pod},
                }
            });
            return self
                .typed(body, "DaemonSet", &self.name)
                .map(|d| Workload::DaemonSet(Box::new(d)));
        }
        let mut body = json!({
            "spec": {
                "selector": {"matchLabels": pod_selector(self.cluster)},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                "template": {"metadata": template_meta, "spec": pod},
            }
        });
        // With autoscaling the HPA owns the replica count; leaving it out keeps SSA from
        // fighting it.
        if spec.autoscaling.is_none() {
            body["spec"]["replicas"] = json!(spec.replicas.unwrap_or(2));
        }
        self.typed(body, "Deployment", &self.name)
            .map(|d| Workload::Deployment(Box::new(d)))
    }

    /// Labels (the cluster's win over `podLabels`) and annotations of the pod template.
    fn template_meta(&self, startup_secrets: &str) -> serde_json::Value {
        let placement = &self.cluster.spec.placement;
        let mut labels = placement.pod_labels.clone();
        labels.extend(self.labels.clone());
        let mut annotations = placement.pod_annotations.clone();
        if !startup_secrets.is_empty() {
            annotations.insert(STARTUP_SECRETS.to_owned(), startup_secrets.to_owned());
        }
        if annotations.is_empty() {
            json!({"labels": labels})
        } else {
            json!({"labels": labels, "annotations": annotations})
        }
    }

    /// The placement fields of the spec, and the default spread across nodes.
    fn place(
        &self,
        pod: &mut serde_json::Value,
        defaults: &PodDefaults,
    ) -> Result<(), RenderError> {
        let p = &self.cluster.spec.placement;
        let cluster = self.cluster;
        let to = |v: &dyn erased_json::ToJson, field: &str| {
            v.to_json().map_err(|e| internal(cluster, field, e))
        };
        if !p.node_selector.is_empty() {
            pod["nodeSelector"] = to(&p.node_selector, "spec.nodeSelector")?;
        }
        if !p.tolerations.is_empty() {
            pod["tolerations"] = to(&p.tolerations, "spec.tolerations")?;
        }
        if let Some(a) = &p.affinity {
            pod["affinity"] = to(a, "spec.affinity")?;
        }
        if let Some(c) = &p.priority_class_name {
            pod["priorityClassName"] = json!(c);
        }
        let secrets: Vec<serde_json::Value> = if p.image_pull_secrets.is_empty() {
            defaults
                .pull_secrets
                .iter()
                .map(|n| json!({"name": n}))
                .collect()
        } else {
            p.image_pull_secrets
                .iter()
                .map(|r| json!({"name": r.name}))
                .collect()
        };
        if !secrets.is_empty() {
            pod["imagePullSecrets"] = json!(secrets);
        }
        // A DaemonSet already runs one pod per node.
        if !self.cluster.spec.host_network {
            pod["topologySpreadConstraints"] = if p.topology_spread_constraints.is_empty() {
                json!([{
                    "maxSkew": 1,
                    "topologyKey": "kubernetes.io/hostname",
                    "whenUnsatisfiable": "ScheduleAnyway",
                    "labelSelector": {"matchLabels": pod_selector(self.cluster)},
                }])
            } else {
                to(
                    &p.topology_spread_constraints,
                    "spec.topologySpreadConstraints",
                )?
            };
        }
        Ok(())
    }

    fn services(&self) -> Result<Vec<Service>, RenderError> {
        let spec = &self.cluster.spec;
        let exposed = spec.service.type_ != kubesbc_crds::cluster::ServiceType::ClusterIP;
        let port = |l: &kubesbc_crds::cluster::ListenerSpec| {
            let mut p = json!({
                "name": port_name(l.transport, l.port),
                "port": l.port,
                "targetPort": port_name(l.transport, l.port),
                "protocol": protocol(l.transport),
            });
            if let Some(np) = l.node_port.filter(|_| exposed) {
                p["nodePort"] = json!(np);
            }
            p
        };
        // One Service for UDP and TCP alike: a mixed-protocol LoadBalancer (GA since
        // Kubernetes 1.26) gives both one address, which SIP needs (a client reaching the sbc
        // over UDP is told, in Record-Route, to come back over TCP to the same host).
        let groups: Vec<(String, Vec<serde_json::Value>)> =
            vec![(self.name.clone(), spec.listeners.iter().map(port).collect())];
        groups
            .into_iter()
            .map(|(name, ports)| {
                let mut svc_spec = json!({
                    "type": spec.service.type_.as_str(),
                    "selector": pod_selector(self.cluster),
                    "ports": ports,
                });
                if let Some(p) = spec.service.external_traffic_policy
                    && spec.service.type_ != kubesbc_crds::cluster::ServiceType::ClusterIP
                {
                    svc_spec["externalTrafficPolicy"] = json!(match p {
                        kubesbc_crds::cluster::TrafficPolicy::Cluster => "Cluster",
                        kubesbc_crds::cluster::TrafficPolicy::Local => "Local",
                    });
                }
                let mut svc: Service = self.typed(json!({"spec": svc_spec}), "Service", &name)?;
                if !spec.service.annotations.is_empty() {
                    svc.metadata.annotations = Some(spec.service.annotations.clone());
                }
                Ok(svc)
            })
            .collect()
    }

    fn admin_service(&self, config: &SbcConfig) -> Result<Service, RenderError> {
        self.typed(
            json!({"spec": {
                "type": "ClusterIP",
                "selector": pod_selector(self.cluster),
                "ports": [{"name": "admin", "port": config.admin.address.port(), "targetPort": "admin", "protocol": "TCP"}],
            }}),
            "Service",
            &format!("{}-admin", self.name),
        )
    }

    fn role(&self) -> Result<Role, RenderError> {
        self.typed(
            json!({"rules": [
                {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [config_map_name(self.cluster)], "verbs": ["get", "list", "watch"]},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]},
                {"apiGroups": [""], "resources": ["services"], "verbs": ["get"]},
            ]}),
            "Role",
            &pod_identity(self.cluster),
        )
    }

    fn role_binding(&self) -> Result<RoleBinding, RenderError> {
        self.typed(
            json!({
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": pod_identity(self.cluster)},
                "subjects": [{"kind": "ServiceAccount", "name": pod_identity(self.cluster), "namespace": self.ns}],
            }),
            "RoleBinding",
            &pod_identity(self.cluster),
        )
    }

    fn pdb(&self) -> Result<PodDisruptionBudget, RenderError> {
        self.typed(
            // AlwaysAllow: a pod that is not ready (every backend down, or stuck) can still be
            // evicted, so a node drain is never blocked by the budget of a broken pod.
            json!({"spec": {
                "maxUnavailable": 1,
                "unhealthyPodEvictionPolicy": "AlwaysAllow",
                "selector": {"matchLabels": pod_selector(self.cluster)},
            }}),
            "PodDisruptionBudget",
            &self.name,
        )
    }

    /// Every UDP port and every TCP port but the admin one from anywhere (SIP, WebSocket,
    /// and the replicas forwarding to each other); the admin port from the operator's pods
    /// and Prometheus only.
    fn network_policy(
        &self,
        peers: &PolicyPeers,
        admin: u16,
    ) -> Result<NetworkPolicy, RenderError> {
        let mut open = vec![json!({"protocol": "UDP", "port": 1, "endPort": 65535})];
        if admin > 1 {
            open.push(json!({"protocol": "TCP", "port": 1, "endPort": admin - 1}));
        }
        if admin < 65535 {
            open.push(json!({"protocol": "TCP", "port": admin + 1, "endPort": 65535}));
        }
        self.typed(
            json!({"spec": {
                "podSelector": {"matchLabels": pod_selector(self.cluster)},
                "policyTypes": ["Ingress"],
                "ingress": [
                    {"ports": open},
                    {
                        "from": [
                            {
                                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": peers.operator_namespace}},
                                "podSelector": {"matchLabels": peers.operator_pod_labels},
                            },
                            {
                                "namespaceSelector": peers.prometheus_namespace_selector,
                                "podSelector": peers.prometheus_pod_selector,
                            },
                        ],
                        "ports": [{"protocol": "TCP", "port": admin}],
                    },
                ],
            }}),
            "NetworkPolicy",
            &self.name,
        )
    }

    fn hpa(&self) -> Result<Option<HorizontalPodAutoscaler>, RenderError> {
        // A DaemonSet runs one pod per node: nothing to scale.
        let Some(a) = &self.cluster.spec.autoscaling else {
            return Ok(None);
        };
        if self.cluster.spec.host_network {
            return Ok(None);
        }
        self.typed(
            json!({"spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": self.name},
                "minReplicas": a.min_replicas,
                "maxReplicas": a.max_replicas,
                "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": a.target_cpu_utilization}}}],
                // Calls last long and a removed pod drains them: scale down slowly, one pod
                // at a time.
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 600, "policies": [{"type": "Pods", "value": 1, "periodSeconds": 300}]}},
            }}),
            "HorizontalPodAutoscaler",
            &self.name,
        )
        .map(Some)
    }
}
mod erased_json {
    /// Object-safe `serde_json::to_value`, so one closure converts fields of any type.
    pub trait ToJson {
        fn to_json(&self) -> Result<serde_json::Value, serde_json::Error>;
    }

    impl<T: serde::Serialize> ToJson for T {
        fn to_json(&self) -> Result<serde_json::Value, serde_json::Error> {
            serde_json::to_value(self)
        }
    }
}
