//! The sbc configuration of a cluster, rendered from the cluster and what it selects.

use super::*;

/// Renders one DispatcherSet into a config set, checking its Service reference.
pub fn render_set(
    ds: &DispatcherSet,
    lookups: &Lookups,
) -> Result<DispatcherSetConfig, RenderError> {
    let spec = &ds.spec;
    let service = match &spec.destinations.service {
        None => None,
        Some(s) => {
            let own = ds.namespace().unwrap_or_default();
            let ns = s.namespace.clone().unwrap_or_else(|| own.clone());
            // The sbc pods' Role is in the cluster's namespace: they could not watch another
            // namespace's EndpointSlices, and one namespace must not make the operator read
            // Services of another.
            if ns != own {
                return Err(err(
                    ds,
                    "CrossNamespaceService",
                    "spec.destinations.service.namespace",
                    format!(
                        "Service {ns}/{} is in another namespace: a DispatcherSet may only name Services in its own namespace ({own})",
                        s.name
                    ),
                ));
            }
            let ports = lookups
                .services
                .get(&(ns.clone(), s.name.clone()))
                .ok_or_else(|| {
                    err(
                        ds,
                        "ServiceNotFound",
                        "spec.destinations.service.name",
                        format!("Service {ns}/{} does not exist", s.name),
                    )
                })?;
            if !ports.contains(&s.port) {
                return Err(err(
                    ds,
                    "ServicePortNotFound",
                    "spec.destinations.service.port",
                    format!(
                        "Service {ns}/{} has no port named {:?} (it has: {})",
                        s.name,
                        s.port,
                        ports.join(", ")
                    ),
                ));
            }
            Some(ServiceSource {
                namespace: Some(ns),
                ..s.clone()
            })
        }
    };
    let set = DispatcherSetConfig {
        id: spec.set_id,
        algorithm: spec.algorithm,
        destinations: spec.destinations.static_.clone().unwrap_or_default(),
        service,
        probing: spec.probing.clone(),
        failover: spec.failover.clone(),
    };
    set.validate("spec").map_err(|e| match e {
        kubesbc_crds::config::ConfigError::Field { path, message } => err(
            ds,
            "InvalidDispatcherSet",
            path.replacen("spec.destinations[", "spec.destinations.static[", 1),
            message,
        ),
        other => internal(ds, "spec", other),
    })?;
    Ok(set)
}

/// Renders one AccessList, resolving the Secrets of its required headers.
pub fn render_access_list(
    acl: &AccessList,
    lookups: &Lookups,
) -> Result<AccessListConfig, RenderError> {
    let mut rules = Vec::with_capacity(acl.spec.rules.len());
    for (i, r) in acl.spec.rules.iter().enumerate() {
        let mut required = Vec::with_capacity(r.required_headers.len());
        for (j, h) in r.required_headers.iter().enumerate() {
            let field = format!("spec.rules[{i}].requiredHeaders[{j}].secretKeyRef");
            let file = secret_file(
                acl,
                lookups,
                &field,
                &h.secret_key_ref.name,
                &h.secret_key_ref.key,
            )?;
            required.push(HeaderValue {
                name: h.name.clone(),
                value: None,
                value_file: Some(file),
            });
        }
        rules.push(AccessRule {
            action: r.action,
            sources: r.sources.clone(),
            user_agents: r.user_agents.clone(),
            from_domains: r.from_domains.clone(),
            required_headers: required,
            methods: r.methods.clone(),
            response_code: r.response_code(),
        });
    }
    let out = AccessListConfig {
        name: format!("{}/{}", acl.namespace().unwrap_or_default(), acl.name_any()),
        rules,
        default_action: acl.spec.default_action,
        flood: acl.spec.flood.clone(),
        register_flood: acl.spec.register_flood.clone(),
        trusted: acl.spec.trusted.clone(),
        drop_scanners: acl.spec.drop_scanners,
        ban_response_code: acl.spec.ban_response_code,
    };
    out.validate("spec").map_err(|e| match e {
        kubesbc_crds::config::ConfigError::Field { path, message } => {
            err(acl, "InvalidAccessList", path, message)
        }
        other => internal(acl, "spec", other),
    })?;
    Ok(out)
}

/// Renders one TenantThrottle.
pub fn render_throttle(tt: &TenantThrottle) -> Result<ThrottleConfig, RenderError> {
    let s = &tt.spec;
    let out = ThrottleConfig {
        name: format!("{}/{}", tt.namespace().unwrap_or_default(), tt.name_any()),
        header: s.header.clone(),
        tenants: s.tenants.clone(),
        default: s.default.clone(),
        methods: s.methods.clone(),
        response: s.response.clone(),
        missing_tenant: s.missing_tenant,
        dialog_timeout_secs: s.dialog_timeout_secs,
    };
    out.validate("spec").map_err(|e| match e {
        kubesbc_crds::config::ConfigError::Field { path, message } => {
            err(tt, "InvalidTenantThrottle", path, message)
        }
        other => internal(tt, "spec", other),
    })?;
    Ok(out)
}

/// What a listener without `advertise` advertises: the LoadBalancer Service's address, once
/// the cloud gave it one (an IPv6 address in brackets, as SIP writes it).
fn load_balancer_advertise(cluster: &SbcCluster, lookups: &Lookups) -> Option<String> {
    if cluster.spec.service.type_ != kubesbc_crds::cluster::ServiceType::LoadBalancer {
        return None;
    }
    let host = lookups.load_balancer.as_deref()?.trim();
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == ';') {
        return None;
    }
    Some(if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    })
}

/// The first address in a Service's `status.loadBalancer.ingress` (IP, else hostname).
pub fn load_balancer_address(svc: &Service) -> Option<String> {
    let ingress = svc
        .status
        .as_ref()?
        .load_balancer
        .as_ref()?
        .ingress
        .as_ref()?;
    ingress
        .iter()
        .find_map(|i| i.ip.clone().or_else(|| i.hostname.clone()))
}

/// Name of the ServiceAccount, Role and RoleBinding of a cluster's pods: suffixed, so that a
/// cluster named `default` never touches the namespace's `default` ServiceAccount.
pub fn pod_identity(cluster: &SbcCluster) -> String {
    format!("{}-sbc", cluster.name_any())
}

/// The label selector of a cluster's pods, as the `scale` subresource reports it.
pub fn pod_selector_string(cluster: &SbcCluster) -> String {
    pod_selector(cluster)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Resources of the sbc container when the spec sets none.
pub fn default_resources() -> serde_json::Value {
    json!({"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}})
}

/// Renders the sbc configuration of a cluster (validated with [`SbcConfig::validate`]).
pub fn render_config(inputs: Inputs<'_>) -> Result<SbcConfig, RenderError> {
    let cluster = inputs.cluster;
    let spec = &cluster.spec;
    // The name becomes Service names (`<name>-admin`, DNS-1035 labels of at most 63
    // characters) and a label value.
    let name = cluster.name_any();
    let dns1035 = name.len() <= MAX_NAME
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !dns1035 {
        return Err(err(
            cluster,
            "InvalidName",
            "metadata.name",
            format!(
                "{name:?} must be at most {MAX_NAME} lower-case letters, digits and '-', starting with a letter (it names Services)"
            ),
        ));
    }
    let listeners = spec
        .listeners
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let port = u16::try_from(l.port).map_err(|_| {
                err(
                    cluster,
                    "InvalidListener",
                    format!("spec.listeners[{i}].port"),
                    format!("{} is not a port", l.port),
                )
            })?;
            Ok(Listener {
                transport: l.transport,
                address: std::net::SocketAddr::from(([0, 0, 0, 0], port)),
                advertise: l
                    .advertise
                    .clone()
                    .or_else(|| load_balancer_advertise(cluster, inputs.lookups)),
                path: l.path.clone(),
                allowed_origins: l.allowed_origins.clone(),
            })
        })
        .collect::<Result<Vec<_>, RenderError>>()?;

    // Sets in set-id order so the rendered document (and its hash) is stable.
    let mut sets: Vec<(&DispatcherSet, DispatcherSetConfig)> = Vec::new();
    for ds in inputs.dispatcher_sets {
        let set = render_set(ds, inputs.lookups)?;
        if let Some((other, _)) = sets.iter().find(|(_, s)| s.id == set.id) {
            let (first, second) = if other.name_any() <= ds.name_any() {
                (*other, ds)
            } else {
                (ds, *other)
            };
            return Err(err(
                second,
                "DuplicateSetId",
                "spec.setId",
                format!("set id {} is also used by {}", set.id, id(first)),
            ));
        }
        sets.push((ds, set));
    }
    sets.sort_by_key(|(_, s)| s.id);
    let sets: Vec<DispatcherSetConfig> = sets.into_iter().map(|(_, s)| s).collect();
    let default_set = spec
        .default_set
        .or_else(|| sets.iter().map(|s| s.id).find(|id| *id == 1))
        .or_else(|| sets.first().map(|s| s.id))
        .unwrap_or(1);
    if !sets.is_empty() && !sets.iter().any(|s| s.id == default_set) {
        return Err(err(
            cluster,
            "DefaultSetNotFound",
            "spec.defaultSet",
            format!("no selected DispatcherSet has set id {default_set}"),
        ));
    }
    let set_ids: Vec<u32> = sets.iter().map(|s| s.id).collect();
    spec.routing
        .validate("spec.routing", &set_ids)
        .map_err(|e| match e {
            kubesbc_crds::config::ConfigError::Field { path, message } => {
                err(cluster, "InvalidRouting", path, message)
            }
            other => internal(cluster, "spec.routing", other),
        })?;

    let mut access_lists: Vec<AccessListConfig> = inputs
        .access_lists
        .iter()
        .map(|a| render_access_list(a, inputs.lookups))
        .collect::<Result<_, _>>()?;
    access_lists.sort_by(|a, b| a.name.cmp(&b.name));
    let mut throttles: Vec<ThrottleConfig> = inputs
        .throttles
        .iter()
        .map(render_throttle)
        .collect::<Result<_, _>>()?;
    throttles.sort_by(|a, b| a.name.cmp(&b.name));

    let store = match &spec.redis {
        None => None,
        Some(r) => {
            let url_file = secret_file(
                cluster,
                inputs.lookups,
                "spec.redis.urlSecretRef",
                &r.url_secret_ref.name,
                &r.url_secret_ref.key,
            )?;
            let prefix = r.key_prefix.clone().unwrap_or_else(|| {
                format!(
                    "{}/{}:",
                    cluster.namespace().unwrap_or_default(),
                    cluster.name_any()
                )
            });
            // The full URL stays in the Secret (the pods read `urlFile`); the ConfigMap shows
            // where it points, without the password.
            let url = inputs
                .lookups
                .redis_url
                .as_deref()
                .map(|u| without_password(u.trim()))
                .unwrap_or_default();
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(err(
                    cluster,
                    "InvalidRedisUrl",
                    "spec.redis.urlSecretRef",
                    format!(
                        "key {:?} of Secret {} does not hold a redis:// or rediss:// URL",
                        r.url_secret_ref.key, r.url_secret_ref.name
                    ),
                ));
            }
            let mut store: StoreConfig = serde_json::from_value(json!({"url": url}))
                .map_err(|e| internal(cluster, "spec.redis", e))?;
            store.url_file = Some(url_file);
            store.key_prefix = Some(prefix);
            if let Some(t) = r.timeout_ms {
                store.timeout_ms = t;
            }
            store.mode = r.mode.unwrap_or_default();
            store.sentinel = r.sentinel.clone();
            // The URL comes from the Secret: its errors are the Secret reference's.
            store.validate("spec.redis").map_err(|e| match e {
                kubesbc_crds::config::ConfigError::Field { path, message } => {
                    let path = if path == "spec.redis.url" {
                        "spec.redis.urlSecretRef".to_owned()
                    } else {
                        path
                    };
                    err(cluster, "InvalidRedis", path, message)
                }
                other => internal(cluster, "spec.redis", other),
            })?;
            Some(store)
        }
    };
    let auth = match &spec.auth {
        None => None,
        Some(a) => {
            // The key stays in its Secret: the pods read `nonceSecretFile`.
            let key_file = secret_file(
                cluster,
                inputs.lookups,
                "spec.auth.nonceSecretRef",
                &a.nonce_secret_ref.name,
                &a.nonce_secret_ref.key,
            )?;
            Some(AuthConfig {
                realm: a.realm.clone(),
                methods: a.methods.clone(),
                trusted_sources: a.trusted_sources.clone(),
                nonce_secret: String::new(),
                nonce_secret_file: Some(key_file),
                nonce_lifetime_secs: a.nonce_lifetime_secs,
                algorithms: a.algorithms.clone(),
                subscriber_prefix: default_subscriber_prefix(),
                credentials_key: a.credentials_key.clone(),
                failure_block: a.failure_block.clone(),
                check_identity: true,
            })
        }
    };
    // spec.rtpengine: the engines the sbc anchors media with (defaults for the rest of the
    // media section); empty: media is not anchored.
    let media = if spec.rtpengine.is_empty() {
        None
    } else {
        let m = kubesbc_crds::policy::MediaConfig {
            rtpengine: spec.rtpengine.clone(),
            ..Default::default()
        };
        m.validate("spec").map_err(|e| match e {
            kubesbc_crds::config::ConfigError::Field { path, message } => {
                err(cluster, "InvalidMedia", path, message)
            }
            other => internal(cluster, "spec.rtpengine", other),
        })?;
        Some(m)
    };
    let admin_port = spec.admin_port.unwrap_or(DEFAULT_ADMIN_PORT);
    let mut relay = spec.relay.clone().unwrap_or_default();
    // spec.relay.inside without an address: the Service the operator creates for the pods
    // (its cluster DNS name), the port when every listener shares one.
    if let Some(inside) = &mut relay.inside
        && inside.address.is_none()
    {
        let ns = cluster.namespace().unwrap_or_default();
        let mut a = format!("{name}.{ns}.svc.cluster.local");
        if let Some(first) = listeners.first()
            && listeners
                .iter()
                .all(|l| l.address.port() == first.address.port())
        {
            a.push_str(&format!(":{}", first.address.port()));
        }
        inside.address = Some(a);
    }
    topology_keys(cluster, inputs.lookups, &mut relay)?;
    let config = SbcConfig {
        listeners,
        dispatcher: DispatcherConfig {
            default_set,
            sets,
            dialog_timeout_secs: spec
                .dialog_timeout_secs
                .unwrap_or_else(kubesbc_crds::policy::default_dialog_timeout_secs),
        },
        routing: spec.routing.clone(),
        admin: AdminConfig {
            address: std::net::SocketAddr::from(([0, 0, 0, 0], admin_port)),
        },
        limits: spec.limits.clone().unwrap_or_default(),
        relay,
        drain: spec.drain.clone().unwrap_or_default(),
        store,
        access_lists,
        throttles,
        auth,
        media,
        tls: spec.tls.as_ref().map(|_| TlsConfig {
            cert_file: format!("{TLS_DIR}/tls.crt"),
            key_file: format!("{TLS_DIR}/tls.key"),
            ..TlsConfig::default()
        }),
        scanners: Default::default(),
        backend_tls: None,
        // The records' Redis stream defaults to the store's URL (mounted from the Secret).
        observability: spec.observability.clone(),
    };
    config.validate().map_err(|e| {
        let (field, message) = match e {
            kubesbc_crds::config::ConfigError::Field { path, message } => (path, message),
            other => ("sbc.yaml".to_owned(), other.to_string()),
        };
        // spec.relay is rendered as is: its errors are the spec's.
        let field = if field.starts_with("relay.") {
            format!("spec.{field}")
        } else {
            format!("sbc.yaml {field}")
        };
        err(cluster, "InvalidConfig", field, message)
    })?;
    Ok(config)
}

/// `spec.relay.topology`'s keys: from `spec.topologyKeySecretRef`, mounted in every pod
/// (`keyFile` names a file the pods do not have). Hiding needs them: with a key per pod, a
/// replica could not restore what another hid, nor a pod what it hid before a restart.
fn topology_keys(
    cluster: &SbcCluster,
    lookups: &Lookups,
    relay: &mut kubesbc_crds::config::RelayConfig,
) -> Result<(), RenderError> {
    let field = "spec.topologyKeySecretRef";
    let secret = cluster.spec.topology_key_secret_ref.as_ref();
    let Some(t) = &mut relay.topology else {
        return match secret {
            Some(_) => Err(err(
                cluster,
                "InvalidTopology",
                field,
                "set without spec.relay.topology: there is nothing for the keys to sign",
            )),
            None => Ok(()),
        };
    };
    if t.key_file.is_some() {
        return Err(err(
            cluster,
            "InvalidTopology",
            "spec.relay.topology.keyFile",
            "a file in the pod, which an SbcCluster cannot provide: put the keys in a Secret and name it in spec.topologyKeySecretRef",
        ));
    }
    match secret {
        Some(k) => {
            t.key_file = Some(secret_file(cluster, lookups, field, &k.name, &k.key)?);
            Ok(())
        }
        None if t.hide => Err(err(
            cluster,
            "InvalidTopology",
            field,
            "required with spec.relay.topology.hide: every replica must verify the values another hid",
        )),
        None => Ok(()),
    }
}
